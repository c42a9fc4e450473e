//! The OffsetTracker: the only actor that decides what is committed.
//!
//! It learns from the Fetcher what was assigned, revoked and taken, and from the processors
//! what finished or was given up; it keeps an [`OffsetBook`] of it, commits the book's commit
//! points periodically and, at shutdown, once more on request. The commits themselves are
//! executed by the Fetcher, the only owner of the consumer. It also watches for partitions
//! that stopped moving (`crate::stall`) and says where the message they wait for is.
//!
//! The messages it handles, and the [`TrackerInbox`] through which the others send them, are
//! defined with the rest of the protocol in `actors::messages`; the handlers are here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;

use crate::actors::messages::{
    Assigned, Attach, Commit, CommitMode, CommitNow, CommitPointsOf, Committed, Completions,
    Fetched, FinalCommitFailure, HighWatermarks, Locate, Others, ProcessorHandle, Report, Revoked,
    TrackerInbox, TrackerReport, Unsettled,
};
use crate::flow::AssignedPartition;
use crate::instruments::PartitionProgress;
use crate::metrics::SystemMetrics;
use crate::native::CommitFailure;
use crate::offsets::{AssignmentId, CommitPoint, Completion, OffsetBook, Position, TopicPartition};
use crate::report::Abandoned;
use crate::stall::{PartitionState, Stall, StallWatch};
use crate::stop::StopHandle;

/// How often partitions are checked for stalls, and their lag is measured.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the final commit waits before it tries again while the group rebalances.
const FINAL_COMMIT_RETRY: Duration = Duration::from_millis(100);

pub(crate) struct OffsetTracker {
    book: OffsetBook,
    /// The Fetcher and the processors, once they run.
    others: Option<Others>,
    commit_interval: Duration,
    committed: BTreeMap<TopicPartition, i64>,
    metrics: Arc<SystemMetrics>,
    /// The figures of every partition this member held.
    progress: HashMap<TopicPartition, PartitionProgress>,
    /// The high watermarks the Fetcher last reported.
    high_watermarks: HashMap<TopicPartition, i64>,
    stalls: Option<StallWatch>,
    stop: StopHandle,
    /// The commit points a final commit left uncommitted because the group was rebalancing,
    /// until a later commit (the close's revocation) covers them.
    unsettled: Vec<CommitPoint>,
    /// Each current assignment's partition as the Fetcher holds it, to publish its commit
    /// point to (the Fetcher keeps a partition within the commit window of it).
    held: HashMap<AssignmentId, Arc<AssignedPartition>>,
}

impl OffsetTracker {
    pub(crate) fn new(
        commit_interval: Duration,
        stall_timeout: Option<Duration>,
        metrics: Arc<SystemMetrics>,
        stop: StopHandle,
    ) -> Self {
        OffsetTracker {
            book: OffsetBook::default(),
            others: None,
            commit_interval,
            committed: BTreeMap::new(),
            metrics,
            progress: HashMap::new(),
            high_watermarks: HashMap::new(),
            stalls: stall_timeout.map(StallWatch::new),
            stop,
            unsettled: Vec::new(),
            held: HashMap::new(),
        }
    }

    /// The inbox through which the Fetcher and the processors address a started tracker.
    pub(crate) fn inbox(tracker: &Addr<OffsetTracker>) -> TrackerInbox {
        TrackerInbox {
            assigned: tracker.clone().recipient(),
            revoked: tracker.clone().recipient(),
            fetched: tracker.clone().recipient(),
            completions: tracker.clone().recipient(),
            commit_points_of: tracker.clone().recipient(),
            committed: tracker.clone().recipient(),
        }
    }

    /// Publishes the commit points of the assignments `positions` belong to.
    fn publish_commit_points(&self, positions: &[Position]) {
        for run in positions.chunk_by(|a, b| a.assignment == b.assignment) {
            let assignment = run[0].assignment;
            if let (Some(held), Some(point)) = (
                self.held.get(&assignment),
                self.book.commit_point_of(assignment),
            ) {
                held.set_commit_floor(point);
            }
        }
    }

    /// Sends the book's commit points to the Fetcher. A periodic commit's acknowledgement
    /// comes later, as [`Committed`]; a final one's comes back here.
    fn commit(&mut self, mode: CommitMode) -> ResponseActFuture<Self, Result<(), CommitFailure>> {
        let points = self.book.uncommitted();
        let Some(fetcher) = self
            .others
            .as_ref()
            .map(|others| others.fetcher.commit.clone())
        else {
            return Box::pin(fut::ready(Err(CommitFailure::Other(
                "no consumer to commit with".to_owned(),
            ))));
        };
        if points.is_empty() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(
            async move { fetcher.send(Commit { points, mode }).await }
                .into_actor(self)
                .map(move |result, tracker, _| {
                    let sent = result.map_err(|error| {
                        CommitFailure::Other(format!("commit not delivered: {error}"))
                    })??;
                    if let CommitMode::Final(_) = mode {
                        tracker.acknowledged(sent);
                    }
                    Ok(())
                }),
        )
    }

    /// The final commit, until `deadline`. A group that is rebalancing refuses commits for a
    /// moment (the embedded cluster for the whole rebalance, Kafka while it completes one):
    /// the commit is tried again meanwhile, as the Fetcher keeps serving the group's events so
    /// that the rebalance can complete. A revocation in between commits its own partitions.
    /// Still refused at the deadline, or unanswered (behind a rebalance, the coordinator holds
    /// a member's requests), what it could not commit is kept as unsettled, for the close's
    /// revocation to commit.
    fn final_commit(
        &mut self,
        deadline: Instant,
    ) -> ResponseActFuture<Self, Result<(), FinalCommitFailure>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        Box::pin(self.commit(CommitMode::Final(remaining)).then(
            move |result, tracker, _| -> ResponseActFuture<Self, Result<(), FinalCommitFailure>> {
                match result {
                    Err(CommitFailure::Rebalancing)
                        if Instant::now() + FINAL_COMMIT_RETRY < deadline =>
                    {
                        log::info!("final commit refused while the group rebalances; retrying");
                        Box::pin(
                            tokio::time::sleep(FINAL_COMMIT_RETRY)
                                .into_actor(tracker)
                                .then(move |(), tracker, _| tracker.final_commit(deadline)),
                        )
                    }
                    Err(failure @ (CommitFailure::Rebalancing | CommitFailure::Unanswered(_))) => {
                        tracker.unsettled = tracker.book.uncommitted();
                        log::info!(
                            "final commit {failure}: {} partitions are left to the close's \
                             revocation",
                            tracker.unsettled.len()
                        );
                        Box::pin(fut::ready(Err(FinalCommitFailure::Rebalancing)))
                    }
                    other => Box::pin(fut::ready(
                        other.map_err(|error| FinalCommitFailure::Other(error.to_string())),
                    )),
                }
            },
        ))
    }

    fn acknowledged(&mut self, points: Vec<CommitPoint>) {
        for point in points {
            self.unsettled.retain(|unsettled| {
                unsettled.partition != point.partition || unsettled.offset > point.offset
            });
            self.book.committed(&point);
            self.committed.insert(point.partition, point.offset);
        }
        self.publish_progress();
    }

    /// Asks the Fetcher for the partitions' high watermarks, then publishes their lag.
    fn measure_lag(&mut self, ctx: &mut Context<Self>) {
        let Some(others) = &self.others else {
            return;
        };
        let asked = others.fetcher.high_watermarks.send(HighWatermarks);
        ctx.spawn(asked.into_actor(self).map(|answer, tracker, _| {
            if let Ok(high_watermarks) = answer {
                tracker.high_watermarks.extend(high_watermarks);
                tracker.publish_progress();
            }
        }));
    }

    /// Sets every held partition's lag and incomplete offsets.
    fn publish_progress(&mut self) {
        for (_, partition, offsets) in self.book.assignments() {
            let progress = progress_of(&mut self.progress, &self.metrics, partition);
            progress
                .incomplete
                .set(offsets.finished_beyond_count() as f64);
            let Some(&high) = self.high_watermarks.get(partition) else {
                continue;
            };
            if let Some(committed) = offsets.committed_or_start() {
                progress.consumer_lag.set((high - committed).max(0) as f64);
            }
            if let Some(processed) = offsets.commit_point() {
                progress
                    .processing_lag
                    .set((high - processed).max(0) as f64);
            }
        }
    }

    /// Looks for partitions that stopped moving, and reports where each one's first
    /// unfinished message is. Not while the system stops: a drain is not a stall.
    fn check_stalls(&mut self, ctx: &mut Context<Self>) {
        if self.stop.is_stopping() {
            return;
        }
        let Some(watch) = self.stalls.as_mut() else {
            return;
        };
        let now = Instant::now();
        let held = &self.held;
        // A partition paused on request waits on purpose: not a stall.
        let paused = |assignment: &AssignmentId| {
            held.get(assignment)
                .is_some_and(|held| held.is_paused_on_request())
        };
        let partitions = self
            .book
            .assignments()
            .map(|(assignment, partition, offsets)| PartitionState {
                partition,
                assignment,
                commit_point: offsets.commit_point(),
                has_work: offsets.in_flight() > 0 && !paused(&assignment),
            });
        let stalls = watch.check(now, partitions);
        self.metrics.stalls(stalls.len(), watch.stalled());
        if stalls.is_empty() {
            return;
        }
        for stall in &stalls {
            progress_of(&mut self.progress, &self.metrics, &stall.partition)
                .stalls
                .increment(1);
        }
        let Some(others) = &self.others else {
            for stall in stalls {
                log::warn!("{stall}");
            }
            return;
        };
        for stall in stalls {
            ctx.spawn(
                report_stall(
                    stall,
                    others.fetcher.locate.clone(),
                    others.processors.clone(),
                )
                .into_actor(self),
            );
        }
    }
}

/// The figures of a partition's progress, made the first time they are needed.
fn progress_of<'a>(
    progress: &'a mut HashMap<TopicPartition, PartitionProgress>,
    metrics: &SystemMetrics,
    partition: &TopicPartition,
) -> &'a PartitionProgress {
    progress
        .entry(partition.clone())
        .or_insert_with(|| metrics.instruments.partition_progress(partition))
}

/// Asks the Fetcher and the processors where the message a stalled partition waits for is,
/// and logs it.
async fn report_stall(stall: Stall, fetcher: Recipient<Locate>, processors: Vec<ProcessorHandle>) {
    let position = Position {
        assignment: stall.assignment,
        offset: stall.offset,
    };
    let answers = join_all(processors.iter().map(|p| p.locate(position)));
    let answers = tokio::time::timeout(Duration::from_secs(5), answers).await;
    let from_processors = answers.ok().into_iter().flatten().flatten().next();
    let sighting = match from_processors {
        Some(sighting) => Some(sighting),
        None => fetcher.send(Locate(position)).await.ok().flatten(),
    };
    match sighting {
        Some(sighting) => log::warn!(
            "stalled: {stall}: the message at offset {} is {}",
            stall.offset,
            sighting.describe(Instant::now())
        ),
        None => log::warn!(
            "stalled: {stall}: the message at offset {} is held nowhere (a bug: please report \
             it)",
            stall.offset
        ),
    }
}

impl Actor for OffsetTracker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.commit_interval, |tracker, ctx| {
            ctx.spawn(tracker.commit(CommitMode::Periodic).map(|result, _, _| {
                if let Err(error) = result {
                    log::warn!("periodic commit failed (retried at the next interval): {error}");
                }
            }));
        });
        ctx.run_interval(CHECK_INTERVAL, |tracker, ctx| {
            tracker.check_stalls(ctx);
            tracker.measure_lag(ctx);
        });
    }
}

impl Handler<Attach> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Attach(others): Attach, _: &mut Self::Context) {
        self.others = Some(others);
    }
}

impl Handler<Assigned> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Assigned(partitions): Assigned, _: &mut Self::Context) {
        for (held, start) in partitions {
            self.book
                .assign(held.partition.clone(), held.assignment, start);
            self.held.insert(held.assignment, held);
        }
        // A new assignment of a partition ends its earlier one.
        let book = &self.book;
        self.held.retain(|assignment, _| book.holds(*assignment));
    }
}

impl Handler<Revoked> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Revoked(partitions): Revoked, _: &mut Self::Context) {
        for partition in partitions {
            if let Some(progress) = self.progress.get(&partition) {
                progress.clear();
            }
            self.high_watermarks.remove(&partition);
            let in_flight = self.book.revoke(&partition).map_or(0, |o| o.in_flight());
            let book = &self.book;
            self.held.retain(|assignment, _| book.holds(*assignment));
            if in_flight > 0 {
                log::info!(
                    "{partition} revoked with {in_flight} messages unfinished: left to the \
                     next owner"
                );
            }
        }
    }
}

impl Handler<Fetched> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, fetched: Fetched, _: &mut Self::Context) {
        let refused = self.book.dispatched(&fetched.positions);
        if refused > 0 {
            log::debug!("{refused} messages not tracked (fenced or behind their partition)");
        }
        self.book.finished(&fetched.finished_earlier, |_, _| {});
        self.publish_commit_points(&fetched.positions);
    }
}

impl Handler<Completions> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, completions: Completions, _: &mut Self::Context) {
        self.metrics.finished(completions.finished.len());
        let mut fenced = 0;
        self.book.finished(
            &completions.finished,
            |position, completion| match completion {
                Completion::Recorded => {}
                Completion::Fenced => fenced += 1,
                Completion::Unknown => log::warn!(
                    "offset {} reported finished but was not in flight",
                    position.offset
                ),
            },
        );
        if fenced > 0 {
            log::debug!("{fenced} messages finished after their partition was revoked: fenced");
        }
        self.book.released(&completions.released);
        self.publish_commit_points(&completions.finished);
    }
}

impl Handler<CommitPointsOf> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, request: CommitPointsOf, _: &mut Self::Context) {
        let points = request
            .assignments
            .iter()
            .filter_map(|assignment| self.book.uncommitted_of(*assignment))
            .collect();
        // The callback may have stopped waiting; then nobody needs the answer.
        let _ = request.reply.send(points);
    }
}

impl Handler<Committed> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Committed(points): Committed, _: &mut Self::Context) {
        self.acknowledged(points);
    }
}

impl Handler<CommitNow> for OffsetTracker {
    type Result = ResponseActFuture<Self, Result<(), FinalCommitFailure>>;

    fn handle(&mut self, CommitNow { timeout }: CommitNow, _: &mut Self::Context) -> Self::Result {
        self.final_commit(Instant::now() + timeout)
    }
}

impl Handler<Unsettled> for OffsetTracker {
    type Result = MessageResult<Unsettled>;

    fn handle(&mut self, _: Unsettled, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.unsettled.clone())
    }
}

impl Handler<Report> for OffsetTracker {
    type Result = MessageResult<Report>;

    fn handle(&mut self, _: Report, _: &mut Self::Context) -> Self::Result {
        let abandoned = self
            .book
            .partitions()
            .into_iter()
            .filter_map(|(partition, offsets)| {
                offsets.first_unfinished().map(|first_offset| Abandoned {
                    partition: partition.clone(),
                    first_offset,
                    messages: offsets.in_flight(),
                })
            })
            .collect();
        let released = self
            .book
            .partitions()
            .values()
            .map(|offsets| offsets.released_count() as u64)
            .sum();
        MessageResult(TrackerReport {
            committed: self.committed.clone(),
            abandoned,
            released,
        })
    }
}
