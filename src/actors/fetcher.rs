//! The Fetcher: the only owner of the rdkafka consumer.
//!
//! It runs on an arbiter (a thread) of its own, because librdkafka runs the rebalance
//! callbacks inside `poll`, and a revocation waits there for the processors, which never need
//! this thread. Each round it serves the consumer's events, resumes partitions that drained,
//! takes a batch of messages from the fetch queue into the partitions' backlogs (`Routes`),
//! tells the OffsetTracker what it took, and hands out what the processors have room for.
//! Between rounds it waits on one [`Notify`], woken by librdkafka (messages, events, commit
//! results) and by processors (room for more), so commands are handled at once and an idle
//! Fetcher costs nothing. Commits, pausing and closing happen here too, between rounds.
//!
//! The messages it handles, and the [`FetcherInbox`] through which the OffsetTracker sends
//! them, are defined with the rest of the protocol in `actors::messages`; the handlers are
//! here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::actors::messages::{
    Assigned, Close, Closed, Commit, CommitMode, CommitPointsOf, Completions, Fetched,
    FetcherInbox, HighWatermarks, Hook, Locate, ProcessorHandle, Revoked, StopFetching,
    TrackerInbox,
};
use crate::commits::CommitLine;
use crate::fault::{self, Fault};
use crate::flow::{AssignedPartition, FlowSettings};
use crate::metrics::SystemMetrics;
use crate::native::{self, CommitFailure, CommitQueue, FetchQueue, QueueWakeup};
use crate::offsets::{AssignmentId, CommitPoint, Start, TopicPartition, decode_finished};
use crate::report::StopReason;
use crate::routes::Routes;
use crate::stall::Sighting;
use crate::stop::StopHandle;
use crate::trouble::{Reported, Resource, Trouble};

/// The longest the Fetcher waits between two rounds when nothing wakes it: keeps the consumer
/// polled and the figures fresh.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The most messages taken per round.
const MAX_BATCH: usize = 1024;
/// The most consumer events served per round; more wait for the next, at once.
const MAX_EVENTS: usize = 16;
/// The least a revocation's commit gets, even when the drain used up its timeout: skipping
/// it would make the next owner repeat everything finished since the last periodic commit.
const REVOCATION_COMMIT_FLOOR: Duration = Duration::from_secs(1);
/// How long the close waits for the answer of a commit on its way.
const SETTLE_BEFORE_CLOSE: Duration = Duration::from_secs(5);
/// How long an assignment waits for the committed offsets' metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// The consumer's callbacks and what they share with the Fetcher. The callbacks run on the
/// Fetcher's thread, inside `poll`, or on the thread that closes the consumer.
pub(crate) struct FetchContext {
    tracker: TrackerInbox,
    metrics: Arc<SystemMetrics>,
    /// The partitions this member holds, with their backlogs.
    routes: Mutex<Routes>,
    next_assignment: AtomicU64,
    /// Set when the Fetcher stops taking messages: partitions assigned later stay paused.
    stopping: AtomicBool,
    /// Set when an `on_assigned` hook failed: the partitions' positions are unknown, so they
    /// stay paused while the system stops.
    hook_failed: AtomicBool,
    /// What a revocation drains and whom it tells; set once the processors exist.
    revocation: OnceLock<Revocation>,
    /// Where the assigned partitions' messages go; set once the consumer exists, taken
    /// (destroyed) before the consumer is closed.
    fetch_queue: Mutex<Option<FetchQueue>>,
    /// The commits, sent one at a time; set once the consumer exists, taken (destroyed) once
    /// it is closed.
    commit_line: Mutex<Option<CommitLine>>,
    /// The consumer group, to name it when the brokers refuse it.
    group_id: String,
    /// The last error librdkafka reported, with its explanation; a refusal (credentials, TLS,
    /// ACLs) stays until it is taken.
    reported: Mutex<Option<Reported>>,
}

/// What the revocation callback needs besides the consumer.
pub(crate) struct Revocation {
    /// The processors, told to give up retries of revoked partitions.
    pub(crate) processors: Vec<ProcessorHandle>,
    /// The longest the callback waits for the revoked partitions' messages, and for the
    /// processors' partition hooks.
    pub(crate) drain_timeout: Duration,
    /// Whether the processors' partition hooks are run.
    pub(crate) hooks: bool,
    /// Stops the system when an `on_assigned` hook fails.
    pub(crate) stop: StopHandle,
}

impl FetchContext {
    pub(crate) fn new(
        tracker: TrackerInbox,
        metrics: Arc<SystemMetrics>,
        processors: usize,
        flow: FlowSettings,
        group_id: String,
    ) -> Self {
        FetchContext {
            tracker,
            metrics,
            routes: Mutex::new(Routes::new(processors, flow)),
            next_assignment: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            hook_failed: AtomicBool::new(false),
            revocation: OnceLock::new(),
            fetch_queue: Mutex::new(None),
            commit_line: Mutex::new(None),
            group_id,
            reported: Mutex::new(None),
        }
    }

    /// The last error librdkafka reported, taken.
    pub(crate) fn take_reported(&self) -> Option<Reported> {
        self.reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// What the brokers refused, for a stop reason: the operation and resource, and why.
    fn refusal(&self, trouble: Trouble, detail: String) -> Option<StopReason> {
        let resource = match trouble {
            Trouble::Authentication => "the credentials (SASL authentication)".to_owned(),
            Trouble::NotAuthorized(Resource::Group) => {
                format!("READ on group `{}`", self.group_id)
            }
            Trouble::NotAuthorized(Resource::Topic) => "READ on a subscribed topic".to_owned(),
            Trouble::NotAuthorized(Resource::Cluster) => "an operation on the cluster".to_owned(),
            Trouble::Transient | Trouble::Tls | Trouble::Unreadable => return None,
        };
        Some(StopReason::NotAuthorized {
            resource,
            error: detail,
        })
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panic while holding this lock is a bug that stops the system (the Fetcher's
        // death is watched); the routes stay usable for the shutdown.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fetch_queue(&self) -> MutexGuard<'_, Option<FetchQueue>> {
        self.fetch_queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn commit_line(&self) -> MutexGuard<'_, Option<CommitLine>> {
        self.commit_line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits synchronously, after the commit on its way; see [`CommitLine::commit`].
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        points: Vec<CommitPoint>,
        timeout: Duration,
    ) -> Result<(), CommitFailure> {
        if let Some(line) = self.commit_line().as_mut() {
            return line.commit(consumer, points, timeout);
        }
        // The consumer is closing (its revocation commits what the final commit left), and the
        // line, settled before the close, is gone: a line of its own, destroyed before the
        // consumer is.
        let queue = CommitQueue::new(consumer, Arc::new(Notify::new()));
        let instruments = self.metrics.instruments.clone();
        let tracker = self.tracker.committed.clone();
        CommitLine::new(queue, tracker, instruments).commit(consumer, points, timeout)
    }

    /// Runs a partition hook on the processors `partitions` may go to, and waits for every
    /// answer until `deadline`. Inside the rebalance callback: the processors run on other
    /// threads and answer over a `std` channel.
    fn run_hooks<T>(
        &self,
        partitions: &[TopicPartition],
        deadline: Instant,
        hook: impl Fn(Vec<TopicPartition>, std::sync::mpsc::Sender<Result<T, String>>) -> Hook,
    ) -> Result<Vec<T>, String> {
        let Some(revocation) = self.revocation.get() else {
            return Ok(Vec::new());
        };
        let mut by_processor: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        {
            let routes = self.routes();
            for partition in partitions {
                for index in routes.processors_of(partition) {
                    by_processor
                        .entry(index)
                        .or_default()
                        .push(partition.clone());
                }
            }
        }
        let (reply, answers) = std::sync::mpsc::channel();
        let mut asked = 0;
        for (index, partitions) in by_processor {
            let told = revocation
                .processors
                .get(index)
                .is_some_and(|processor| processor.hook(hook(partitions, reply.clone())));
            match told {
                true => asked += 1,
                // The processors ended with the system's stop (the close revokes what is
                // left): their `on_stop` ran in place of the hooks.
                false if self.stopping.load(Ordering::Acquire) => {}
                false => return Err(format!("processor {index} is gone")),
            }
        }
        drop(reply);
        let mut answered = Vec::with_capacity(asked);
        while answered.len() < asked {
            match answers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(answer)) => answered.push(answer),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(format!(
                        "{} of {asked} processors did not answer within the \
                         rebalance_drain_timeout ({:?})",
                        asked - answered.len(),
                        revocation.drain_timeout
                    ));
                }
            }
        }
        Ok(answered)
    }

    /// Asks the processors for the positions they stored of newly assigned partitions and
    /// sets them in the assignment, before librdkafka starts fetching. The lowest position a
    /// processor stored for a partition wins. On a failure nothing of the assignment is read:
    /// the system stops.
    fn start_at_stored_positions(&self, assignment: &TopicPartitionList) {
        let Some(revocation) = self.revocation.get().filter(|r| r.hooks) else {
            return;
        };
        let partitions = partitions_of(assignment);
        let deadline = Instant::now() + revocation.drain_timeout;
        let answers = self.run_hooks(&partitions, deadline, |partitions, reply| Hook::Assigned {
            partitions,
            reply,
        });
        let answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                log::error!("on_assigned: {error}; the new partitions stay paused; stopping");
                self.hook_failed.store(true, Ordering::Release);
                revocation
                    .stop
                    .request_graceful(StopReason::PartitionHookFailed(error));
                return;
            }
        };
        let mut lowest: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for (partition, offset) in answers.into_iter().flatten() {
            let entry = lowest.entry(partition).or_insert(offset);
            *entry = (*entry).min(offset);
        }
        for (partition, offset) in lowest {
            if offset < 0 {
                log::warn!("on_assigned: {partition} at {offset} is not a position; ignored");
            } else if native::start_at(assignment, &partition, offset) {
                log::info!("{partition}: starting at the stored position {offset}");
            } else {
                log::warn!("on_assigned: {partition} is not in the assignment; ignored");
            }
        }
    }

    /// Tells the processors that partitions are revoked, once their messages are done with,
    /// and waits for them until `deadline`.
    fn tell_revoked(&self, revoked: &[Arc<AssignedPartition>], deadline: Instant) {
        if !self.revocation.get().is_some_and(|r| r.hooks) {
            return;
        }
        let partitions: Vec<TopicPartition> = revoked.iter().map(|p| p.partition.clone()).collect();
        let told = self.run_hooks(&partitions, deadline, |partitions, reply| Hook::Revoked {
            partitions,
            reply,
        });
        if let Err(error) = told {
            let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
            log::warn!("on_revoked of {}: {error}", names.join(", "));
        }
    }

    /// Completes the context once the processors exist (before the first poll).
    pub(crate) fn set_revocation(&self, revocation: Revocation) {
        if self.revocation.set(revocation).is_err() {
            log::error!("the revocation settings were set twice; keeping the first");
        }
    }

    /// Takes partitions out of the assignment. On a graceful revocation, waits (bounded by the
    /// drain timeout) until processors finished or gave up what they hold of them and
    /// reported it, and commits their commit points synchronously; on a loss, commits
    /// nothing, since the partitions may already belong to another member.
    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        which: impl Fn(&TopicPartition) -> bool,
        lost: bool,
    ) {
        let revoked = self.routes().revoke(which);
        if revoked.is_empty() {
            return;
        }
        self.metrics.health.revoking(true);
        // Processors drop what they hold of the partitions and have not started, so that the
        // revocation waits only for the messages in progress, never behind another
        // partition's long message. Where that leaves a gap below a finished message (per key
        // or unordered), the commit records what finished beyond it, and the next owner
        // processes only the gap.
        for partition in &revoked {
            partition.fence();
        }
        let assignments: Vec<AssignmentId> = revoked.iter().map(|p| p.assignment).collect();
        if let Some(revocation) = self.revocation.get() {
            for processor in &revocation.processors {
                processor.forget(assignments.clone());
            }
        }
        if !lost {
            self.drain_and_commit(consumer, &revoked);
        }
        self.metrics.revoked(lost, self.routes().held());
        self.metrics.health.revoking(false);
        self.tracker.revoked.do_send(Revoked(
            revoked.iter().map(|p| p.partition.clone()).collect(),
        ));
    }

    /// Waits until nothing of the revoked partitions is in flight: their backlogs were
    /// dropped, and processors finish the message in progress, drop what they hold and have
    /// not started, give up retries, and report before they let go of a message. Then their commit
    /// points are final: commits them. Runs inside `poll`; what it waits for (processors, the
    /// tracker) runs on other threads, so it cannot deadlock.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, revoked: &[Arc<AssignedPartition>]) {
        let started = Instant::now();
        let Some(revocation) = self.revocation.get() else {
            return;
        };
        let deadline = started + revocation.drain_timeout;
        let in_flight = || -> usize { revoked.iter().map(|p| p.in_flight.load().messages).sum() };
        // Processors finish between one and a few messages per partition; a short sleep
        // between looks costs nothing next to that.
        while in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = in_flight();
        let names: Vec<String> = revoked.iter().map(|p| p.partition.to_string()).collect();
        let names = names.join(", ");
        self.tell_revoked(revoked, deadline);
        let (reply, answer) = mpsc::channel();
        let assignments = revoked.iter().map(|p| p.assignment).collect();
        self.tracker
            .commit_points_of
            .do_send(CommitPointsOf { assignments, reply });
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(REVOCATION_COMMIT_FLOOR);
        let points = match answer.recv_timeout(wait) {
            Ok(points) => points,
            Err(_) => {
                log::warn!(
                    "revocation of {names}: the offset tracker did not answer; nothing committed"
                );
                return;
            }
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(REVOCATION_COMMIT_FLOOR);
        let count = points.len();
        let committed = self.commit(consumer, points, wait);
        if let Err(error) = &committed {
            log::warn!(
                "revocation of {names}: commit failed ({error}); the next owner repeats what \
                 finished since the last commit"
            );
        }
        log::info!(
            "revocation of {names} drained in {:?}: {} partitions committed{}",
            started.elapsed(),
            if committed.is_ok() { count } else { 0 },
            match left {
                0 => String::new(),
                left => format!(
                    ", {left} messages still unfinished after {:?} (the next owner repeats \
                     them)",
                    revocation.drain_timeout
                ),
            }
        );
    }
}

impl ClientContext for FetchContext {
    /// librdkafka's log lines: through the same limiter as its errors, at levels that say
    /// what they mean for the system (`client_trouble::level_of`).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.metrics.trouble.log(level, facility, message);
    }

    /// librdkafka's errors, with their explanation: logged (a repeat within the summary
    /// interval only counted) and kept for whoever acts on them (the start, which fails fast
    /// on refused credentials or TLS, and the Fetcher).
    fn error(&self, error: KafkaError, reason: &str) {
        let trouble = Trouble::of(&error);
        self.metrics.trouble.error(&error, trouble, reason);
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A refusal is not overwritten by the transient errors that follow it ("all brokers
        // are down", after an authentication failure closed the connection).
        if trouble != Trouble::Transient
            || reported
                .as_ref()
                .is_none_or(|earlier| earlier.trouble == Trouble::Transient)
        {
            *reported = Some(Reported {
                trouble,
                reason: reason.to_owned(),
            });
        }
    }
}

impl ConsumerContext for FetchContext {
    /// On revocation: stop handing out the revoked partitions, wait for what processors hold
    /// of them, commit their commit points, and only then let librdkafka release them. When
    /// the assignment was lost (the session expired, the coordinator fenced this member) the
    /// partitions may already belong to another member: nothing is committed for them.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let lost = consumer.assignment_lost();
                log::info!(
                    "{} {} partitions: {}",
                    if lost { "lost" } else { "revoking" },
                    partitions.count(),
                    names(partitions)
                );
                let revoked = partitions_of(partitions);
                self.revoke(consumer, |p| revoked.contains(p), lost);
            }
            // librdkafka unassigns everything after a rebalance error: as good as lost.
            Rebalance::Error(error) => {
                log::warn!("rebalance failed ({error}): giving up every partition");
                self.revoke(consumer, |_| true, true);
            }
            Rebalance::Assign(partitions) => {
                // Before librdkafka starts fetching them: then their messages never reach
                // the consumer's own queue.
                if let Some(queue) = self.fetch_queue().as_ref() {
                    queue.route(consumer, partitions);
                }
                self.start_at_stored_positions(partitions);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        let assigned: Vec<Arc<AssignedPartition>> = partitions
            .elements()
            .iter()
            .map(|p| {
                let id = self.next_assignment.fetch_add(1, Ordering::Relaxed);
                let partition = TopicPartition::new(p.topic(), p.partition());
                let instruments = self.metrics.instruments.partition(&partition);
                AssignedPartition::new(partition, AssignmentId(id), instruments)
            })
            .collect();
        log::info!(
            "assigned {} partitions: {}",
            assigned.len(),
            names(partitions)
        );
        // Only an answering coordinator assigns partitions.
        self.metrics.trouble.sign_of_life();
        // librdkafka keeps a partition paused across a revocation; a new assignment starts
        // unpaused unless the system is stopping.
        let stopping =
            self.stopping.load(Ordering::Acquire) || self.hook_failed.load(Ordering::Acquire);
        let paused = if stopping {
            consumer.pause(partitions)
        } else {
            consumer.resume(partitions)
        };
        if let Err(error) = paused {
            log::warn!("could not set the pause of new partitions: {error}");
        }
        let mut earlier = finished_earlier(consumer, partitions);
        let stored = stored_starts(partitions);
        // The tracker hears of the assignment before anything taken under it, with where it
        // starts: at a position a processor stored (committed as it is, even if nothing more
        // is taken), or at the committed offset with what the previous reader finished beyond
        // it (this member's commits carry it on until they pass it).
        self.tracker.assigned.do_send(Assigned(
            assigned
                .iter()
                .map(|a| {
                    let start = match stored.get(&a.partition) {
                        Some(&position) => Start::Stored(position),
                        None => Start::Committed {
                            inherited: earlier.get(&a.partition).cloned().unwrap_or_default(),
                        },
                    };
                    (a.clone(), start)
                })
                .collect(),
        ));
        let assigned = assigned
            .into_iter()
            .map(|a| {
                let finished = earlier.remove(&a.partition).unwrap_or_default();
                (a, finished)
            })
            .collect();
        let mut routes = self.routes();
        routes.assign(assigned, stopping);
        self.metrics.assigned(routes.held());
    }
}

/// The partitions of a list librdkafka handed over.
fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|p| TopicPartition::new(p.topic(), p.partition()))
        .collect()
}

/// The positions processors stored, which `start_at_stored_positions` wrote into the
/// assignment: the partitions with an offset of their own. (The others, read from the group's
/// committed offset, have none.)
fn stored_starts(partitions: &TopicPartitionList) -> HashMap<TopicPartition, i64> {
    partitions
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(position) => Some((
                TopicPartition::new(element.topic(), element.partition()),
                position,
            )),
            _ => None,
        })
        .collect()
}

/// The offsets beyond each partition's committed offset that its previous reader finished,
/// as that commit's metadata records them: they are skipped, not processed again. Waits for
/// the group coordinator at most a few seconds; without an answer, nothing is skipped (the
/// next reader repeats them, as any consumer would).
fn finished_earlier(
    consumer: &BaseConsumer<FetchContext>,
    partitions: &TopicPartitionList,
) -> HashMap<TopicPartition, Vec<i64>> {
    // Partitions that start at a position a processor stored: the store is their truth.
    let mut from_the_group = TopicPartitionList::new();
    for element in partitions.elements() {
        if element.offset() == Offset::Invalid {
            from_the_group.add_partition(element.topic(), element.partition());
        }
    }
    if from_the_group.count() == 0 {
        return HashMap::new();
    }
    let committed = match consumer.committed_offsets(from_the_group, COMMITTED_TIMEOUT) {
        Ok(committed) => committed,
        Err(error) => {
            log::warn!(
                "could not read the committed offsets of {} ({error}): messages the previous \
                 reader finished beyond them are processed again",
                names(partitions)
            );
            return HashMap::new();
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|element| {
            let Offset::Offset(committed) = element.offset() else {
                return None;
            };
            let finished = decode_finished(committed, element.metadata());
            (!finished.is_empty()).then(|| {
                log::info!(
                    "{}/{}: skipping {} messages beyond offset {committed} that the previous \
                     reader finished",
                    element.topic(),
                    element.partition(),
                    finished.len()
                );
                (
                    TopicPartition::new(element.topic(), element.partition()),
                    finished,
                )
            })
        })
        .collect()
}

fn names(partitions: &TopicPartitionList) -> String {
    let names: Vec<String> = partitions
        .elements()
        .iter()
        .map(|p| format!("{}/{}", p.topic(), p.partition()))
        .collect();
    names.join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fetching,
    /// Stopping: partitions are paused, backlogs dropped, nothing more is taken.
    Stopped,
    Closed,
}

pub(crate) struct Fetcher {
    /// `None` once closed.
    consumer: Option<BaseConsumer<FetchContext>>,
    /// Wakes the Fetcher on the consumer's events; dropped before the consumer is closed.
    events: Option<QueueWakeup>,
    tracker: TrackerInbox,
    processors: Vec<ProcessorHandle>,
    metrics: Arc<SystemMetrics>,
    stop: StopHandle,
    state: State,
    wakeup: Arc<Notify>,
    /// A test build's injected fault: the Fetcher dies at its first message.
    dies: bool,
}

impl Fetcher {
    pub(crate) fn new(
        consumer: BaseConsumer<FetchContext>,
        tracker: TrackerInbox,
        processors: Vec<ProcessorHandle>,
        stop: StopHandle,
        wakeup: Arc<Notify>,
    ) -> Self {
        let context = consumer.context();
        *context.fetch_queue() = Some(FetchQueue::new(&consumer, wakeup.clone()));
        *context.commit_line() = Some(CommitLine::new(
            CommitQueue::new(&consumer, wakeup.clone()),
            tracker.committed.clone(),
            context.metrics.instruments.clone(),
        ));
        Fetcher {
            metrics: context.metrics.clone(),
            events: QueueWakeup::consumer_events(&consumer, wakeup.clone()),
            consumer: Some(consumer),
            tracker,
            processors,
            stop,
            state: State::Fetching,
            wakeup,
            dies: fault::injected(Fault::FetcherDies),
        }
    }

    /// The inbox through which the OffsetTracker addresses a started Fetcher.
    pub(crate) fn inbox(fetcher: &Addr<Fetcher>) -> FetcherInbox {
        FetcherInbox {
            commit: fetcher.clone().recipient(),
            high_watermarks: fetcher.clone().recipient(),
            locate: fetcher.clone().recipient(),
        }
    }

    /// One round: serves events, resumes drained partitions, takes a batch of messages,
    /// tells the tracker, hands out what processors have room for. Returns whether it made
    /// progress (then the next round follows at once).
    fn round(&mut self) -> bool {
        let mut progress = self.serve_events();
        let Some(consumer) = &self.consumer else {
            return false;
        };
        let context = consumer.context();
        if let Some(line) = context.commit_line().as_mut() {
            line.collect();
            if line.take_acknowledged() {
                // Only an answering coordinator acknowledges a commit.
                self.metrics.trouble.sign_of_life();
            }
        }
        let mut routes = context.routes();
        if self.state == State::Fetching {
            resume(consumer, routes.resumable());
            let mut taken = {
                let queue = context.fetch_queue();
                let Some(queue) = queue.as_ref() else {
                    return false;
                };
                let records = queue.take(MAX_BATCH);
                progress |= !records.is_empty();
                routes.take(records)
            };
            if !taken.to_pause.is_empty() {
                pause(consumer, &taken.to_pause, &self.metrics);
            }
            if !taken.errors.is_empty() {
                record_errors(consumer, &self.stop, std::mem::take(&mut taken.errors));
            }
            let total = routes.total();
            self.metrics.record_peaks(taken.partition_peak, total);
            if self.dies && !taken.positions.is_empty() {
                panic!("injected fault (KAFKA_ACTORS_TEST_FAULT): the fetcher dies");
            }
            if !taken.positions.is_empty() {
                // Before any processor can finish one of them.
                self.tracker.fetched.do_send(Fetched {
                    positions: taken.positions,
                    finished_earlier: taken.finished_earlier,
                });
            }
            let mut credits: Vec<usize> = self
                .processors
                .iter()
                .map(|p| p.credit.available())
                .collect();
            let batches = routes.hand_out(&mut credits);
            for (processor, batch) in self.processors.iter().zip(batches) {
                if !batch.is_empty() {
                    progress = true;
                    processor.hand(batch);
                }
            }
        }
        self.metrics
            .set_flow(routes.total(), routes.waiting(), routes.paused());
        self.metrics.health.round();
        self.metrics.trouble.tick();
        progress
    }

    /// Serves the consumer's own queue: rebalances and errors come through it, and their
    /// callbacks run inside this poll. Returns whether events are still waiting.
    fn serve_events(&mut self) -> bool {
        let Some(consumer) = &self.consumer else {
            return false;
        };
        let waiting = || self.events.as_ref().map_or(0, QueueWakeup::waiting);
        for _ in 0..MAX_EVENTS {
            match consumer.poll(Duration::ZERO) {
                None => {}
                Some(Ok(message)) => fetch_again(consumer, &message),
                Some(Err(error)) => poll_failed(consumer, &self.stop, error),
            }
            if waiting() == 0 {
                return false;
            }
        }
        true
    }

    /// Waits for a wakeup (or the poll interval), then runs the next round.
    fn schedule(&self, ctx: &mut Context<Self>, progress: bool) {
        if progress {
            ctx.notify(PollRound);
            return;
        }
        let wakeup = self.wakeup.clone();
        ctx.spawn(
            async move {
                let _ = tokio::time::timeout(POLL_INTERVAL, wakeup.notified()).await;
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.notify(PollRound)),
        );
    }

    /// Drops the events' wakeup and hands the consumer to a thread that closes it.
    fn close(&mut self) -> Option<mpsc::Receiver<()>> {
        self.events = None;
        self.consumer.take().map(close_in_background)
    }
}

/// librdkafka reports most errors (a broker down, a timeout) and recovers from them itself (the
/// context logged them); a fatal error ends the consumer, and a refusal (credentials, ACLs)
/// never heals, so both stop the system.
fn poll_failed(consumer: &BaseConsumer<FetchContext>, stop: &StopHandle, error: KafkaError) {
    if let Some((_, reason)) = consumer.client().fatal_error() {
        log::error!("consumer failed fatally: {reason}");
        stop.request_graceful(StopReason::ConsumerFailed(reason));
        return;
    }
    let context = consumer.context();
    let detail = context
        .take_reported()
        .map_or_else(|| error.to_string(), |reported| reported.reason);
    if let Some(refusal) = context.refusal(Trouble::of(&error), detail) {
        log::error!("{refusal}; stopping");
        stop.request_graceful(refusal);
    }
}

/// Acts on errors librdkafka returned in place of records: an ACL that refuses a topic, or
/// records that cannot be read, stop the system (the partition stays uncommitted, nothing is
/// skipped); the rest librdkafka retries.
fn record_errors(
    consumer: &BaseConsumer<FetchContext>,
    stop: &StopHandle,
    errors: Vec<(TopicPartition, i64, RDKafkaErrorCode)>,
) {
    for (partition, offset, code) in errors {
        let trouble = Trouble::of_code(code);
        if trouble.is_retried() {
            consumer
                .context()
                .metrics
                .trouble
                .record_error(&partition, code);
            continue;
        }
        // The Routes hold the partition: nothing past the record is taken.
        let reason = match trouble {
            Trouble::Transient | Trouble::Tls => continue,
            Trouble::Unreadable => StopReason::Unreadable {
                partition,
                offset,
                error: code.to_string(),
            },
            Trouble::NotAuthorized(Resource::Topic) => StopReason::NotAuthorized {
                resource: format!("READ on topic `{}`", partition.topic()),
                error: code.to_string(),
            },
            trouble => match consumer.context().refusal(trouble, code.to_string()) {
                Some(reason) => reason,
                None => continue,
            },
        };
        log::error!("{reason}; stopping");
        stop.request_graceful(reason);
    }
}

/// Resumes partitions, each from the first message not taken. Left alone, librdkafka would
/// resume after the last message it returned, which may be past the last one taken (a batch
/// is returned whole), and its broker thread would start fetching only at its next wake-up,
/// up to a second later when every partition was paused. A seek to the next message does
/// both right: it sets the position and makes the partition fetchable at once.
fn resume(consumer: &BaseConsumer<FetchContext>, partitions: Vec<(TopicPartition, Option<i64>)>) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, _) in &partitions {
        list.add_partition(partition.topic(), partition.partition());
    }
    match consumer.resume(&list) {
        Ok(()) => log::debug!("resumed {}", names(&list)),
        Err(error) => log::warn!("could not resume {}: {error}", names(&list)),
    }
    for (partition, offset) in partitions {
        if let Some(offset) = offset {
            seek(consumer, &partition, offset);
        }
    }
}

/// Pauses partitions that reached an in-flight limit. librdkafka drops what it had fetched
/// for them and fetches it again after the resume, so nothing more of theirs is taken
/// meanwhile.
fn pause(
    consumer: &BaseConsumer<FetchContext>,
    partitions: &[TopicPartition],
    metrics: &SystemMetrics,
) {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(partition.topic(), partition.partition());
    }
    match consumer.pause(&list) {
        Ok(()) => log::debug!("paused {}", names(&list)),
        Err(error) => log::warn!("could not pause {}: {error}", names(&list)),
    }
    metrics.paused(partitions.len());
}

/// Sets where librdkafka fetches a partition from next; what it fetched before is dropped.
/// Asynchronous, and ordered after any pause or resume.
fn seek(consumer: &BaseConsumer<FetchContext>, partition: &TopicPartition, offset: i64) {
    let sought = consumer.seek(
        partition.topic(),
        partition.partition(),
        Offset::Offset(offset),
        Duration::ZERO,
    );
    if let Err(error) = sought {
        log::error!("could not seek {partition} to {offset}: {error}");
    }
}

/// A message that came through the consumer's own queue, which only happens to a partition
/// assigned without the rebalance callback routing it: route it and fetch the message again
/// through the fetch queue, where it is taken in order with the rest.
fn fetch_again(consumer: &BaseConsumer<FetchContext>, message: &BorrowedMessage<'_>) {
    log::warn!(
        "{}/{}@{} came through the consumer's queue: fetching it again",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let mut partition = TopicPartitionList::new();
    partition.add_partition(message.topic(), message.partition());
    if let Some(queue) = consumer.context().fetch_queue().as_ref() {
        queue.route(consumer, &partition);
    }
    seek(
        consumer,
        &TopicPartition::new(message.topic(), message.partition()),
        message.offset(),
    );
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(PollRound);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.close();
    }
}

/// Closes and drops the consumer on a thread of its own, and returns a receiver that answers
/// once that is done. rdkafka's `Drop` closes the consumer (serving the revocation callback
/// and leaving the group) and polls until it is closed, with no bound: a thread of its own
/// keeps that from blocking the shutdown, which waits only as long as its budget allows.
fn close_in_background(consumer: BaseConsumer<FetchContext>) -> mpsc::Receiver<()> {
    // The fetch queue goes first: it must not outlive the consumer. What the partitions still
    // forward to it is dropped untaken.
    drop(consumer.context().fetch_queue().take());
    let (closed_tx, closed_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-consumer-close".to_owned())
        .spawn(move || {
            // The commit line's queue must not outlive the consumer either. The commit on its
            // way is answered first, so that the close's revocation commit comes after it.
            let line = consumer.context().commit_line().take();
            if let Some(mut line) = line
                && !line.settle(SETTLE_BEFORE_CLOSE)
            {
                log::warn!(
                    "a commit was still unanswered after {SETTLE_BEFORE_CLOSE:?}; closing anyway"
                );
            }
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(error) = spawned {
        log::error!("could not start a thread to close the consumer: {error}");
    }
    closed_rx
}

/// One round of the Fetcher; it schedules the next one, so that commands sent to the Fetcher
/// are handled between two rounds.
#[derive(Message)]
#[rtype(result = "()")]
struct PollRound;

impl Handler<PollRound> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: PollRound, ctx: &mut Self::Context) {
        if self.state == State::Closed {
            return;
        }
        let progress = self.round();
        self.schedule(ctx, progress);
    }
}

impl Handler<Commit> for Fetcher {
    type Result = Result<Vec<CommitPoint>, CommitFailure>;

    fn handle(&mut self, Commit { points, mode }: Commit, _: &mut Self::Context) -> Self::Result {
        let closed = || CommitFailure::Other("the consumer is closed".to_owned());
        let consumer = self
            .consumer
            .as_ref()
            .filter(|_| self.state != State::Closed)
            .ok_or_else(closed)?;
        let held: Vec<CommitPoint> = {
            let routes = consumer.context().routes();
            points
                .into_iter()
                .filter(|p| routes.assignment_of(&p.partition) == Some(p.assignment))
                .collect()
        };
        match mode {
            CommitMode::Periodic => {
                let mut line = consumer.context().commit_line();
                line.as_mut()
                    .ok_or_else(closed)?
                    .send_periodic(consumer, held)
            }
            CommitMode::Final(timeout) => {
                consumer.context().commit(consumer, held.clone(), timeout)?;
                Ok(held)
            }
        }
    }
}

impl Handler<StopFetching> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: StopFetching, _: &mut Self::Context) {
        if self.state != State::Fetching {
            return;
        }
        self.state = State::Stopped;
        let Some(consumer) = &self.consumer else {
            return;
        };
        consumer.context().stopping.store(true, Ordering::Release);
        let mut routes = consumer.context().routes();
        routes.pause_all();
        match consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = consumer.pause(&assignment) {
                    log::warn!("could not pause partitions while stopping: {error}");
                }
            }
            Err(error) => log::warn!("could not read the assignment while stopping: {error}"),
        }
        let released = routes.drop_backlogs();
        if !released.is_empty() {
            log::info!(
                "stopping: {} messages fetched but not started are left for the next reader",
                released.len()
            );
            self.tracker.completions.do_send(Completions {
                finished: Vec::new(),
                released,
            });
        }
        self.metrics
            .set_flow(routes.total(), routes.waiting(), routes.paused());
    }
}

impl Handler<Locate> for Fetcher {
    type Result = Option<Sighting>;

    fn handle(&mut self, Locate(position): Locate, _: &mut Self::Context) -> Self::Result {
        let routes = self.consumer.as_ref()?.context().routes();
        routes.locate(position, |processor| {
            self.processors
                .get(processor)
                .map_or(0, |p| p.credit.queued())
        })
    }
}

impl Handler<HighWatermarks> for Fetcher {
    type Result = MessageResult<HighWatermarks>;

    fn handle(&mut self, _: HighWatermarks, _: &mut Self::Context) -> Self::Result {
        let Some(consumer) = self.consumer.as_ref() else {
            return MessageResult(Vec::new());
        };
        let held = consumer.context().routes().partitions();
        MessageResult(
            held.into_iter()
                .filter_map(|partition| {
                    let high = native::high_watermark(consumer, &partition)?;
                    Some((partition, high))
                })
                .collect(),
        )
    }
}

impl Handler<Close> for Fetcher {
    type Result = Result<Closed, String>;

    fn handle(&mut self, close: Close, ctx: &mut Self::Context) -> Self::Result {
        self.state = State::Closed;
        ctx.stop();
        let closing = self.close().ok_or("the consumer was closed already")?;
        let Close { budget, patience } = close;
        let wait = patience.map_or(budget, |patience| patience.min(budget));
        match closing.recv_timeout(wait) {
            Ok(()) => Ok(Closed::Done),
            Err(_) if wait < budget => Ok(Closed::LeavingInBackground),
            Err(_) => Err(format!("the consumer did not close within {budget:?}")),
        }
    }
}
