//! The Fetcher: the only owner of the rdkafka consumer.
//!
//! It runs on an arbiter (a thread) of its own, because its polls block and because librdkafka
//! runs the rebalance callbacks inside `poll`: a callback may wait for other actors, and those
//! never need this thread. Each round it polls the consumer's queue for events, takes a batch
//! of messages from the fetch queue (`crate::fetch_queue`), stamps each message with the id of
//! its partition's current assignment, records the batch with the OffsetTracker and only then
//! hands the messages to the processors their partitions are routed to. Commits, pausing and
//! closing all happen here, between two rounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::actors::offset_tracker::{
    Assigned, CommitPointsOf, Committed, Dispatched, OffsetTracker, Revoked,
};
use crate::actors::processor::{ForgetPartitions, Process};
use crate::fetch_queue::{FetchQueue, FetchedMessage};
use crate::flow::{AssignedPartition, InFlightLimit, Load};
use crate::message::Message;
use crate::metrics::SystemMetrics;
use crate::offsets::{AssignmentId, CommitPoint, TopicPartition};
use crate::report::StopReason;
use crate::revocation::RevocationBarrier;
use crate::routing::{OrderingMode, Router};
use crate::stop::StopHandle;

/// How long one poll waits for a message: also the longest a command (commit, stop) waits for
/// the poll in progress to return.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// The most messages dispatched per poll round.
const MAX_BATCH: usize = 1024;
/// The least a revocation's commit gets, even when the drain used up its timeout: skipping
/// it would make the next owner repeat everything finished since the last periodic commit.
const REVOCATION_COMMIT_FLOOR: Duration = Duration::from_secs(1);

/// The consumer's callbacks. They run on the Fetcher's thread, inside `poll`.
pub(crate) struct FetchContext {
    tracker: Addr<OffsetTracker>,
    metrics: Arc<SystemMetrics>,
    /// The partitions this member holds, each under its current assignment.
    assignment: Mutex<HashMap<TopicPartition, Arc<AssignedPartition>>>,
    /// Bumped on every change of `assignment`, so the Fetcher knows to rebuild its routes.
    generation: AtomicU64,
    next_assignment: AtomicU64,
    /// Set when the Fetcher stops dispatching: partitions assigned later stay paused.
    stopping: AtomicBool,
    /// What a revocation drains and whom it tells; set once the processors exist.
    revocation: OnceLock<Revocation>,
    /// Where the assigned partitions' messages go; set once the consumer exists, taken
    /// (destroyed) before the consumer is closed.
    fetch_queue: Mutex<Option<FetchQueue>>,
}

/// What the revocation callback needs besides the consumer.
pub(crate) struct Revocation {
    /// The processors, told to give up retries of revoked partitions.
    pub(crate) processors: Vec<Recipient<ForgetPartitions>>,
    /// The longest the callback waits for the revoked partitions' messages in progress.
    pub(crate) drain_timeout: Duration,
    pub(crate) barrier: Arc<RevocationBarrier>,
}

impl FetchContext {
    pub(crate) fn new(tracker: Addr<OffsetTracker>, metrics: Arc<SystemMetrics>) -> Self {
        FetchContext {
            tracker,
            metrics,
            assignment: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            next_assignment: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            revocation: OnceLock::new(),
            fetch_queue: Mutex::new(None),
        }
    }

    /// Whether this member holds any partition: a round waits for events while it holds
    /// none, and for messages while it holds some.
    fn holds_partitions(&self) -> bool {
        !self.assignment().is_empty()
    }

    fn fetch_queue(&self) -> MutexGuard<'_, Option<FetchQueue>> {
        // Nothing panics while holding this lock but a read into it: recover it.
        self.fetch_queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Completes the context once the processors exist (before the first poll).
    pub(crate) fn set_revocation(&self, revocation: Revocation) {
        if self.revocation.set(revocation).is_err() {
            log::error!("the revocation settings were set twice; keeping the first");
        }
    }

    /// Takes partitions out of the assignment: nothing more of them is dispatched, and what
    /// the poll round in progress fetched of them is dropped. Returns them as they were held.
    fn take_out(&self, partitions: &TopicPartitionList) -> Vec<Arc<AssignedPartition>> {
        let mut assignment = self.assignment();
        let taken: Vec<Arc<AssignedPartition>> = partitions
            .elements()
            .iter()
            .filter_map(|p| assignment.remove(&TopicPartition::new(p.topic(), p.partition())))
            .collect();
        drop(assignment);
        self.generation.fetch_add(1, Ordering::Release);
        taken
    }

    /// Marks partitions revoked: processors skip their queued messages from now on and give up
    /// their retries, since nothing more of them can be committed by this member.
    fn fence(&self, revoked: &[Arc<AssignedPartition>]) {
        for partition in revoked {
            partition.revoke();
        }
        if let Some(revocation) = self.revocation.get() {
            let assignments: Vec<AssignmentId> = revoked.iter().map(|p| p.assignment).collect();
            for processor in &revocation.processors {
                processor.do_send(ForgetPartitions(assignments.clone()));
            }
        }
    }

    /// Lets the revoked partitions' messages in progress finish (bounded by the drain timeout)
    /// and commits their commit points synchronously, before the rebalance goes on. Messages
    /// queued but not started are skipped: nothing of them was done, so the next owner reads
    /// them without repeating anything. Runs on the Fetcher's thread, inside `poll`; what it
    /// waits for (processors, the tracker) runs on other threads, so it cannot deadlock.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, revoked: &[Arc<AssignedPartition>]) {
        let started = Instant::now();
        let Some(revocation) = self.revocation.get() else {
            return;
        };
        let assignments: Vec<AssignmentId> = revoked.iter().map(|p| p.assignment).collect();
        // Also while the system stops: a rebalance can come during its drain, and then only
        // this wait makes the commit cover what the processors are finishing. (When the
        // close itself revokes, the processors are idle and the wait ends at once.)
        let drain_timeout = revocation.drain_timeout;
        let deadline = started + drain_timeout;
        let epoch = revocation.barrier.raise();
        // Processors pass the barrier between two messages, at least every message; a short
        // sleep between looks costs nothing next to that.
        while revocation.barrier.not_passed(epoch) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = revocation.barrier.not_passed(epoch);
        let (reply, answer) = mpsc::channel();
        self.tracker.do_send(CommitPointsOf { assignments, reply });
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(REVOCATION_COMMIT_FLOOR);
        let points = match answer.recv_timeout(wait) {
            Ok(points) => points,
            Err(_) => {
                log::warn!("revocation: the offset tracker did not answer; nothing committed");
                return;
            }
        };
        let committed = commit(consumer, &points);
        match &committed {
            Ok(()) => self.tracker.do_send(Committed(points.clone())),
            Err(error) => log::warn!(
                "revocation: commit failed ({error}); the next owner repeats what finished \
                 since the last commit"
            ),
        }
        log::info!(
            "revocation drained in {:?}: {} partitions committed{}",
            started.elapsed(),
            if committed.is_ok() { points.len() } else { 0 },
            match left {
                0 => String::new(),
                left => format!(
                    ", {left} processors still busy with a revoked partition after \
                     {drain_timeout:?} (the next owner repeats their messages)"
                ),
            }
        );
    }

    fn assignment(&self) -> MutexGuard<'_, HashMap<TopicPartition, Arc<AssignedPartition>>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.assignment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for FetchContext {}

impl ConsumerContext for FetchContext {
    /// On revocation: stop dispatching the revoked partitions, wait for their in-flight
    /// messages, commit their commit points, and only then let librdkafka release them. When
    /// the assignment was lost (the session expired, the coordinator fenced this member) the
    /// partitions may already belong to another member: nothing is committed for them.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let taken = match rebalance {
            Rebalance::Revoke(partitions) => {
                let lost = consumer.assignment_lost();
                log::info!(
                    "{} {} partitions: {}",
                    if lost { "lost" } else { "revoking" },
                    partitions.count(),
                    names(partitions)
                );
                Some((self.take_out(partitions), lost))
            }
            // librdkafka unassigns everything after a rebalance error: as good as lost.
            Rebalance::Error(error) => {
                log::warn!("rebalance failed ({error}): giving up every partition");
                let all = self.assignment().drain().map(|(_, p)| p).collect();
                self.generation.fetch_add(1, Ordering::Release);
                Some((all, true))
            }
            Rebalance::Assign(partitions) => {
                // Before librdkafka starts fetching them: then their messages never reach
                // the consumer's own queue.
                if let Some(queue) = self.fetch_queue().as_ref() {
                    queue.route(consumer, partitions);
                }
                None
            }
        };
        let Some((revoked, lost)) = taken else {
            return;
        };
        if revoked.is_empty() {
            return;
        }
        self.fence(&revoked);
        if lost {
            self.metrics
                .lost_assignments
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.drain_and_commit(consumer, &revoked);
        }
        self.metrics.revocations.fetch_add(1, Ordering::Relaxed);
        self.tracker.do_send(Revoked(
            revoked.iter().map(|p| p.partition.clone()).collect(),
        ));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned: Vec<Arc<AssignedPartition>> = partitions
                    .elements()
                    .iter()
                    .map(|p| {
                        let id = self.next_assignment.fetch_add(1, Ordering::Relaxed);
                        AssignedPartition::new(
                            TopicPartition::new(p.topic(), p.partition()),
                            AssignmentId(id),
                        )
                    })
                    .collect();
                log::info!(
                    "assigned {} partitions: {}",
                    assigned.len(),
                    names(partitions)
                );
                // librdkafka keeps a partition paused across a revocation; a new assignment
                // starts unpaused unless the system is stopping.
                let paused = if self.stopping.load(Ordering::Acquire) {
                    consumer.pause(partitions)
                } else {
                    consumer.resume(partitions)
                };
                if let Err(error) = paused {
                    log::warn!("could not set the pause of new partitions: {error}");
                }
                self.tracker.do_send(Assigned(
                    assigned
                        .iter()
                        .map(|a| (a.partition.clone(), a.assignment))
                        .collect(),
                ));
                self.assignment()
                    .extend(assigned.into_iter().map(|a| (a.partition.clone(), a)));
                self.generation.fetch_add(1, Ordering::Release);
                self.metrics.assignments.fetch_add(1, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) | Rebalance::Error(_) => {}
        }
    }
}

/// Where the messages of one assigned partition go, and its flow control.
struct Route {
    assigned: Arc<AssignedPartition>,
    /// The partition's processor, for messages routed by partition.
    processor: usize,
    /// What the partition had in flight when the round first reached it: read once per round,
    /// not per message, since processors keep writing that cache line. It only overstates
    /// (processors only release meanwhile), so the limits still hold.
    before_round: Load,
    /// Dispatched in the poll round in progress, not yet added to `assigned.in_flight`.
    round: Load,
    /// Paused because its in-flight work (or the system's) reached a limit.
    paused: bool,
    /// Where the partition resumes: the offset after the last message dispatched, or the
    /// first one librdkafka returned but the Fetcher did not dispatch (it had just paused
    /// the partition in the middle of a batch).
    next_offset: Option<i64>,
}

impl Route {
    /// Counts a message dispatched this round; returns what the partition has in flight now,
    /// at most.
    fn dispatch(&mut self, bytes: usize) -> Load {
        if self.round.messages == 0 {
            self.before_round = self.assigned.in_flight.load();
        }
        self.round.add(bytes);
        self.before_round.plus(self.round)
    }

    /// Adds this round's dispatches to the partition's in-flight count; returns the new count.
    fn end_round(&mut self) -> Load {
        let round = std::mem::take(&mut self.round);
        self.assigned.in_flight.add(round);
        self.assigned.in_flight.load()
    }
}

/// The Fetcher's copy of the assignment, with each partition's processor: looked up per
/// message without hashing or locking, and rebuilt only when the assignment changed.
struct Routes {
    router: Router,
    table: Vec<Route>,
    generation: Option<u64>,
    /// The route of the previous message: messages come in runs of one partition.
    last: usize,
}

impl Routes {
    /// The index in `table` of the route of a partition. Indices are valid until the next
    /// lookup: a rebalance inside `poll` rebuilds the table.
    fn lookup(&mut self, context: &FetchContext, topic: &str, partition: i32) -> Option<usize> {
        let generation = context.generation.load(Ordering::Acquire);
        if self.generation != Some(generation) {
            self.rebuild(context);
            self.generation = Some(generation);
        }
        let matches = |route: &Route| {
            route.assigned.partition.partition() == partition
                && route.assigned.partition.topic() == topic
        };
        if !self.table.get(self.last).is_some_and(matches) {
            self.last = self.table.iter().position(matches)?;
        }
        Some(self.last)
    }

    /// Rebuilds the table from the assignment. Partitions held on under the same assignment
    /// keep their pause and position; the round's dispatches so far are counted first, so
    /// none is lost.
    fn rebuild(&mut self, context: &FetchContext) {
        let mut previous = std::mem::take(&mut self.table);
        for route in &mut previous {
            route.end_round();
        }
        self.table = context
            .assignment()
            .values()
            .map(|assigned| {
                let kept = previous
                    .iter()
                    .find(|r| r.assigned.assignment == assigned.assignment);
                Route {
                    processor: self
                        .router
                        .processor_for(assigned.partition.topic(), assigned.partition.partition()),
                    paused: kept.is_some_and(|r| r.paused),
                    next_offset: kept.and_then(|r| r.next_offset),
                    assigned: assigned.clone(),
                    before_round: Load::default(),
                    round: Load::default(),
                }
            })
            .collect();
    }
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
    /// Stopping: partitions are paused and anything still polled is dropped undispatched.
    Stopped,
    Closed,
}

/// How the Fetcher spreads messages and bounds the work in flight.
pub(crate) struct FlowSettings {
    pub(crate) ordering: OrderingMode,
    pub(crate) partition_limit: InFlightLimit,
    pub(crate) total_limit: InFlightLimit,
}

pub(crate) struct Fetcher {
    /// `None` once closed.
    consumer: Option<BaseConsumer<FetchContext>>,
    tracker: Addr<OffsetTracker>,
    processors: Vec<Recipient<Process>>,
    routes: Routes,
    flow: FlowSettings,
    metrics: Arc<SystemMetrics>,
    /// The processor the next unordered message goes to.
    next_processor: usize,
    stop: StopHandle,
    state: State,
}

impl Fetcher {
    pub(crate) fn new(
        consumer: BaseConsumer<FetchContext>,
        tracker: Addr<OffsetTracker>,
        processors: Vec<Recipient<Process>>,
        flow: FlowSettings,
        stop: StopHandle,
    ) -> Self {
        *consumer.context().fetch_queue() = Some(FetchQueue::new(&consumer));
        Fetcher {
            routes: Routes {
                router: Router::new(processors.len()),
                table: Vec::new(),
                generation: None,
                last: 0,
            },
            metrics: consumer.context().metrics.clone(),
            consumer: Some(consumer),
            tracker,
            processors,
            flow,
            next_processor: 0,
            stop,
            state: State::Fetching,
        }
    }

    /// Polls events, then takes up to a batch of messages and dispatches them: the tracker
    /// hears of each message before any processor can finish it. A partition is paused the
    /// moment its in-flight work reaches its limit, and every partition when the system's does.
    fn fetch(&mut self) {
        self.resume_drained();
        self.poll_events();
        let Fetcher {
            consumer: Some(consumer),
            routes,
            flow,
            metrics,
            processors,
            tracker,
            next_processor,
            ..
        } = self
        else {
            return;
        };
        let total_before = metrics.in_flight.load();
        // Rebalance callbacks ran in `poll_events`, before the round; none runs during it.
        let mut round_total = Load::default();
        let queue = consumer.context().fetch_queue();
        let Some(queue) = queue.as_ref() else {
            return;
        };
        // The round's messages, so that each processor's can share one buffer.
        let wait = if consumer.context().holds_partitions() {
            POLL_TIMEOUT
        } else {
            Duration::ZERO
        };
        let fetched = queue.consume(wait, MAX_BATCH);
        let mut polled = Vec::with_capacity(fetched.len());
        let mut buffer_sizes = vec![0; processors.len()];
        for message in fetched {
            if let Some(failure) = message.error() {
                log::warn!(
                    "fetching {}/{} failed (librdkafka retries): {failure}",
                    message.topic(),
                    message.partition()
                );
                continue;
            }
            let Some(route) =
                routes.lookup(consumer.context(), message.topic(), message.partition())
            else {
                log::debug!(
                    "dropped {}/{}@{}: not assigned",
                    message.topic(),
                    message.partition(),
                    message.offset()
                );
                continue;
            };
            let route = &mut routes.table[route];
            if route.paused {
                // Paused during this round, after librdkafka returned the message: the resume
                // fetches it again (see `resume_drained`).
                route.next_offset.get_or_insert(message.offset());
                continue;
            }
            route.next_offset = Some(message.offset() + 1);
            let processor = match flow.ordering {
                OrderingMode::PerPartition => route.processor,
                OrderingMode::PerKey => message
                    .key()
                    .map_or(route.processor, |key| routes.router.processor_for_key(key)),
                OrderingMode::Unordered => {
                    *next_processor = (*next_processor + 1) % processors.len();
                    *next_processor
                }
            };
            let bytes = Message::buffer_len(&message);
            buffer_sizes[processor] += bytes;
            round_total.add(bytes);
            let load = route.dispatch(bytes);
            polled.push((message, route.assigned.clone(), processor));
            if !route.paused && flow.partition_limit.is_reached_by(load) {
                pause(consumer, std::slice::from_mut(route), metrics);
            }
            if flow
                .total_limit
                .is_reached_by(total_before.plus(round_total))
            {
                pause(consumer, &mut routes.table, metrics);
            }
        }
        if round_total.messages > 0 {
            metrics.in_flight.add(round_total);
            let total = metrics.in_flight.load();
            for route in &mut routes.table {
                if route.round.messages > 0 {
                    metrics.record_peaks(route.end_round(), total);
                }
            }
            if !polled.is_empty() {
                dispatch(polled, buffer_sizes, tracker, processors);
            }
        }
        if metrics.paused_partitions.load(Ordering::Relaxed) > 0 {
            // A rebalance may have taken paused partitions away.
            let paused = routes.table.iter().filter(|r| r.paused).count();
            metrics.paused_partitions.store(paused, Ordering::Relaxed);
        }
    }

    /// Polls the consumer's own queue: rebalances, commit results and errors come through it,
    /// and their callbacks run inside this poll. It waits there only while nothing is
    /// assigned: otherwise the round waits on the fetch queue, and an event waits for the
    /// round (up to `POLL_TIMEOUT` when no message comes).
    fn poll_events(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let timeout = if consumer.context().holds_partitions() {
            Duration::ZERO
        } else {
            POLL_TIMEOUT
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(message)) => fetch_again(consumer, &message),
            Some(Err(error)) => self.poll_failed(error),
        }
    }

    /// Resumes the paused partitions whose in-flight work, and the system's, fell to the
    /// low-water mark.
    fn resume_drained(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        if self.metrics.paused_partitions.load(Ordering::Relaxed) == 0 {
            return;
        }
        if !self
            .flow
            .total_limit
            .is_drained_by(self.metrics.in_flight.load())
        {
            return;
        }
        let mut resumed = TopicPartitionList::new();
        let mut positions = Vec::new();
        for route in &mut self.routes.table {
            if route.paused
                && self
                    .flow
                    .partition_limit
                    .is_drained_by(route.assigned.in_flight.load())
            {
                route.paused = false;
                let partition = &route.assigned.partition;
                resumed.add_partition(partition.topic(), partition.partition());
                positions.extend(route.next_offset.map(|offset| (partition, offset)));
            }
        }
        if resumed.count() == 0 {
            return;
        }
        match consumer.resume(&resumed) {
            Ok(()) => log::debug!("resumed {}", names(&resumed)),
            Err(error) => log::warn!("could not resume {}: {error}", names(&resumed)),
        }
        // Left alone, librdkafka would resume after the last message it returned, which may
        // be past the last one dispatched (a batch is taken whole), and its broker thread
        // would start fetching only at its next wake-up, up to a second later when every
        // partition was paused. A seek to the next message to dispatch does both right: it
        // sets the position and makes the partition fetchable at once.
        for (partition, offset) in positions {
            seek(consumer, partition, offset);
        }
        self.metrics
            .paused_partitions
            .fetch_sub(resumed.count(), Ordering::Relaxed);
    }

    /// librdkafka reports most errors (a broker down, a timeout) and recovers from them itself;
    /// only a fatal error ends the consumer.
    fn poll_failed(&mut self, error: KafkaError) {
        let fatal = self
            .consumer
            .as_ref()
            .and_then(|consumer| consumer.client().fatal_error());
        match fatal {
            Some((_, reason)) => {
                log::error!("consumer failed fatally: {reason}");
                self.stop
                    .request_graceful(StopReason::ConsumerFailed(reason));
            }
            None => log::warn!("consumer error (librdkafka retries): {error}"),
        }
    }

    /// Polls while stopping, to keep serving the group, and drops what arrives: it was never
    /// dispatched, so it is not committed and will be read again.
    fn poll_without_dispatching(&mut self) {
        if let Some(Some(Ok(message))) = self.consumer.as_ref().map(|c| c.poll(POLL_TIMEOUT)) {
            log::debug!(
                "stopping: left {}/{}@{} for the next reader",
                message.topic(),
                message.partition(),
                message.offset()
            );
        }
    }
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
/// through the fetch queue, where it is dispatched in order with the rest.
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

/// Commits commit points synchronously.
fn commit(consumer: &BaseConsumer<FetchContext>, points: &[CommitPoint]) -> Result<(), String> {
    if points.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for point in points {
        offsets
            .add_partition_offset(
                point.partition.topic(),
                point.partition.partition(),
                Offset::Offset(point.offset),
            )
            .map_err(|error| error.to_string())?;
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .map_err(|error| error.to_string())
}

/// Copies each processor's messages into one buffer and sends them, after telling the tracker.
fn dispatch(
    polled: Vec<(FetchedMessage<'_>, Arc<AssignedPartition>, usize)>,
    buffer_sizes: Vec<usize>,
    tracker: &Addr<OffsetTracker>,
    processors: &[Recipient<Process>],
) {
    let mut buffers: Vec<BytesMut> = buffer_sizes
        .into_iter()
        .map(BytesMut::with_capacity)
        .collect();
    for (message, _, processor) in &polled {
        Message::copy_into(message, &mut buffers[*processor]);
    }
    let mut buffers: Vec<Bytes> = buffers.into_iter().map(BytesMut::freeze).collect();
    let mut starts = vec![0; buffers.len()];
    let mut batches: Vec<Vec<Message>> = Vec::new();
    batches.resize_with(processors.len(), Vec::new);
    let mut dispatched = Vec::with_capacity(polled.len());
    for (message, assigned, processor) in polled {
        let (start, length) = (starts[processor], Message::buffer_len(&message));
        starts[processor] += length;
        let bytes = buffers[processor].slice(start..start + length);
        let message = Message::from_kafka(&message, assigned, bytes);
        dispatched.push(message.position());
        batches[processor].push(message);
    }
    buffers.clear();
    tracker.do_send(Dispatched(dispatched));
    for (processor, batch) in processors.iter().zip(batches) {
        if !batch.is_empty() {
            processor.do_send(Process(batch));
        }
    }
}

/// Pauses the routes not paused yet. librdkafka drops what it had fetched for them and fetches
/// it again after the resume, so nothing more of theirs is polled meanwhile.
fn pause(consumer: &BaseConsumer<FetchContext>, routes: &mut [Route], metrics: &SystemMetrics) {
    let mut paused = TopicPartitionList::new();
    for route in routes.iter_mut().filter(|r| !r.paused) {
        route.paused = true;
        let partition = &route.assigned.partition;
        paused.add_partition(partition.topic(), partition.partition());
    }
    if paused.count() == 0 {
        return;
    }
    match consumer.pause(&paused) {
        Ok(()) => log::debug!("paused {}: in-flight limit reached", names(&paused)),
        Err(error) => log::warn!("could not pause {}: {error}", names(&paused)),
    }
    metrics
        .pauses
        .fetch_add(paused.count() as u64, Ordering::Relaxed);
    metrics
        .paused_partitions
        .fetch_add(paused.count(), Ordering::Relaxed);
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(PollRound);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(consumer) = self.consumer.take() {
            close_in_background(consumer);
        }
    }
}

/// Closes and drops the consumer on a thread of its own, and returns a receiver that answers
/// once that is done. rdkafka's `Drop` closes the consumer (serving the revocation callback
/// and leaving the group) and polls until it is closed, with no bound: a thread of its own
/// keeps that from blocking the shutdown, which waits only as long as its budget allows.
fn close_in_background(consumer: BaseConsumer<FetchContext>) -> mpsc::Receiver<()> {
    // The fetch queue goes first: it must not outlive the consumer. What the partitions still
    // forward to it is dropped undispatched.
    drop(consumer.context().fetch_queue().take());
    let (closed_tx, closed_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-consumer-close".to_owned())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(error) = spawned {
        log::error!("could not start a thread to close the consumer: {error}");
    }
    closed_rx
}

/// One round of the poll loop; it schedules the next one, so that commands sent to the Fetcher
/// are handled between two rounds.
#[derive(Message)]
#[rtype(result = "()")]
struct PollRound;

impl Handler<PollRound> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: PollRound, ctx: &mut Self::Context) {
        match self.state {
            State::Fetching => self.fetch(),
            State::Stopped => self.poll_without_dispatching(),
            State::Closed => return,
        }
        ctx.notify(PollRound);
    }
}

/// Commits the given commit points, synchronously, for the partitions still held under the
/// same assignment; the others are fenced. Returns the commit points committed.
#[derive(Message)]
#[rtype(result = "Result<Vec<CommitPoint>, String>")]
pub(crate) struct Commit(pub(crate) Vec<CommitPoint>);

impl Handler<Commit> for Fetcher {
    type Result = Result<Vec<CommitPoint>, String>;

    fn handle(&mut self, Commit(points): Commit, _: &mut Self::Context) -> Self::Result {
        let consumer = self
            .consumer
            .as_ref()
            .filter(|_| self.state != State::Closed)
            .ok_or("the consumer is closed")?;
        let held: Vec<CommitPoint> = {
            let assignment = consumer.context().assignment();
            points
                .into_iter()
                .filter(|p| {
                    assignment
                        .get(&p.partition)
                        .is_some_and(|a| a.assignment == p.assignment)
                })
                .collect()
        };
        if held.is_empty() {
            return Ok(held);
        }
        let started = Instant::now();
        commit(consumer, &held)?;
        log::debug!(
            "committed {} partitions in {:?}",
            held.len(),
            started.elapsed()
        );
        Ok(held)
    }
}

/// Stops dispatching: pauses every assigned partition and keeps polling without dispatching.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopFetching;

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
        match consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = consumer.pause(&assignment) {
                    log::warn!("could not pause partitions while stopping: {error}");
                }
            }
            Err(error) => log::warn!("could not read the assignment while stopping: {error}"),
        }
    }
}

/// Closes the consumer, which revokes its partitions and leaves the group, within `budget`.
/// Returns whether the close completed.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct Close {
    pub(crate) budget: Duration,
}

impl Handler<Close> for Fetcher {
    type Result = Result<(), String>;

    fn handle(&mut self, Close { budget }: Close, ctx: &mut Self::Context) -> Self::Result {
        self.state = State::Closed;
        ctx.stop();
        let consumer = self
            .consumer
            .take()
            .ok_or("the consumer was closed already")?;
        close_in_background(consumer)
            .recv_timeout(budget)
            .map_err(|_| format!("the consumer did not close within {budget:?}"))
    }
}
