//! The OffsetTracker: the only actor that decides what is committed.
//!
//! It learns from the Fetcher what was assigned, revoked and dispatched, and from the
//! processors what finished; it keeps an [`OffsetBook`] of it, commits the book's commit points
//! periodically and, at shutdown, once more on request. The commits themselves are executed by
//! the Fetcher, the only owner of the consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::fetcher::{Commit, Fetcher};
use crate::metrics::SystemMetrics;
use crate::offsets::{AssignmentId, CommitPoint, Completion, OffsetBook, Position, TopicPartition};
use crate::report::Abandoned;

pub(crate) struct OffsetTracker {
    book: OffsetBook,
    fetcher: Option<Addr<Fetcher>>,
    commit_interval: Duration,
    /// A periodic commit is waiting for the Fetcher; the next tick skips rather than piles up.
    committing: bool,
    committed: BTreeMap<TopicPartition, i64>,
    metrics: Arc<SystemMetrics>,
}

impl OffsetTracker {
    pub(crate) fn new(commit_interval: Duration, metrics: Arc<SystemMetrics>) -> Self {
        OffsetTracker {
            book: OffsetBook::default(),
            fetcher: None,
            commit_interval,
            committing: false,
            committed: BTreeMap::new(),
            metrics,
        }
    }

    /// Sends the book's commit points to the Fetcher and records what Kafka acknowledged.
    fn commit(&mut self) -> ResponseActFuture<Self, Result<(), String>> {
        let positions = self.book.uncommitted();
        let Some(fetcher) = self.fetcher.clone() else {
            return Box::pin(fut::ready(Err("no consumer to commit with".to_owned())));
        };
        if positions.is_empty() {
            return Box::pin(fut::ready(Ok(())));
        }
        self.committing = true;
        Box::pin(
            async move { fetcher.send(Commit(positions)).await }
                .into_actor(self)
                .map(|result, tracker, _| {
                    tracker.committing = false;
                    let committed =
                        result.map_err(|error| format!("commit not delivered: {error}"))??;
                    for point in committed {
                        tracker.book.committed(&point);
                        tracker.committed.insert(point.partition, point.offset);
                    }
                    Ok(())
                }),
        )
    }
}

impl Actor for OffsetTracker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.commit_interval, |tracker, ctx| {
            if tracker.committing {
                return;
            }
            ctx.spawn(tracker.commit().map(|result, _, _| {
                if let Err(error) = result {
                    log::warn!("periodic commit failed (retried at the next interval): {error}");
                }
            }));
        });
    }
}

/// The Fetcher's handle on the consumer, once it runs.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AttachFetcher(pub(crate) Addr<Fetcher>);

impl Handler<AttachFetcher> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, AttachFetcher(fetcher): AttachFetcher, _: &mut Self::Context) {
        self.fetcher = Some(fetcher);
    }
}

/// Partitions newly assigned to this member, each under a new assignment id.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Assigned(pub(crate) Vec<(TopicPartition, AssignmentId)>);

impl Handler<Assigned> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Assigned(partitions): Assigned, _: &mut Self::Context) {
        for (partition, assignment) in partitions {
            self.book.assign(partition, assignment);
        }
    }
}

/// Partitions this member no longer holds. Their unfinished messages are fenced: whatever
/// finishes later is never committed by this member.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Revoked(pub(crate) Vec<TopicPartition>);

impl Handler<Revoked> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Revoked(partitions): Revoked, _: &mut Self::Context) {
        for partition in partitions {
            let in_flight = self.book.revoke(&partition).map_or(0, |o| o.in_flight());
            if in_flight > 0 {
                log::info!(
                    "{partition} revoked with {in_flight} messages unfinished: left to the \
                     next owner"
                );
            }
        }
    }
}

/// Messages the Fetcher handed to processors. Sent before the processors receive them, so a
/// completion never arrives before its dispatch.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Dispatched(pub(crate) Vec<Position>);

impl Handler<Dispatched> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Dispatched(positions): Dispatched, _: &mut Self::Context) {
        let refused = self.book.dispatched(&positions);
        if refused > 0 {
            log::debug!("{refused} dispatches not tracked (fenced or behind their partition)");
        }
    }
}

/// Messages whose processing finished successfully.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Finished(pub(crate) Vec<Position>);

impl Handler<Finished> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Finished(positions): Finished, _: &mut Self::Context) {
        self.metrics
            .finished
            .fetch_add(positions.len() as u64, Ordering::Relaxed);
        let mut fenced = 0;
        self.book
            .finished(&positions, |position, completion| match completion {
                Completion::Recorded => {}
                Completion::Fenced => fenced += 1,
                Completion::Unknown => log::warn!(
                    "offset {} reported finished but was not in flight",
                    position.offset
                ),
            });
        if fenced > 0 {
            log::debug!("{fenced} messages finished after their partition was revoked: fenced");
        }
    }
}

/// Asks for the commit points of partitions being revoked. Sent from inside the rebalance
/// callback, where the Fetcher's thread waits for the answer on `reply`: this actor never
/// needs that thread to answer.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CommitPointsOf {
    pub(crate) assignments: Vec<AssignmentId>,
    pub(crate) reply: std::sync::mpsc::Sender<Vec<CommitPoint>>,
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

/// Commit points the Fetcher committed itself, on revocation.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Committed(pub(crate) Vec<CommitPoint>);

impl Handler<Committed> for OffsetTracker {
    type Result = ();

    fn handle(&mut self, Committed(points): Committed, _: &mut Self::Context) {
        for point in points {
            self.book.committed(&point);
            self.committed.insert(point.partition, point.offset);
        }
    }
}

/// Commits every commit point now (the final commit of a shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct CommitNow;

impl Handler<CommitNow> for OffsetTracker {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, _: CommitNow, _: &mut Self::Context) -> Self::Result {
        self.commit()
    }
}

/// What the tracker knows, for the shutdown report.
#[derive(Debug)]
pub(crate) struct TrackerReport {
    pub(crate) committed: BTreeMap<TopicPartition, i64>,
    pub(crate) abandoned: Vec<Abandoned>,
}

#[derive(Message)]
#[rtype(result = "TrackerReport")]
pub(crate) struct Report;

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
        MessageResult(TrackerReport {
            committed: self.committed.clone(),
            abandoned,
        })
    }
}
