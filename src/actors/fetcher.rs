//! The Fetcher: the only owner of the rdkafka consumer.
//!
//! It runs on an arbiter (a thread) of its own, because `poll` blocks and because librdkafka
//! runs the rebalance callbacks inside `poll`: a callback may wait for other actors, and those
//! never need this thread. It polls in batches, stamps each message with the id of its
//! partition's current assignment, records the batch with the OffsetTracker and only then
//! hands the messages to the processors their partitions are routed to. Commits, pausing and
//! closing all happen here, between two polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::actors::offset_tracker::{Assigned, Dispatched, OffsetTracker, Revoked};
use crate::actors::processor::Process;
use crate::message::Message;
use crate::offsets::{AssignmentId, CommitPoint, TopicPartition};
use crate::report::StopReason;
use crate::routing::Router;
use crate::stop::StopHandle;

/// How long one poll waits for a message: also the longest a command (commit, stop) waits for
/// the poll in progress to return.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// The most messages dispatched per poll round.
const MAX_BATCH: usize = 1024;

/// The consumer's callbacks. They run on the Fetcher's thread, inside `poll`.
pub(crate) struct FetchContext {
    tracker: Addr<OffsetTracker>,
    /// The partitions this member holds, each with the id of its current assignment.
    assignment: Mutex<HashMap<TopicPartition, AssignmentId>>,
    /// Bumped on every change of `assignment`, so the Fetcher knows to rebuild its routes.
    generation: AtomicU64,
    next_assignment: AtomicU64,
}

impl FetchContext {
    pub(crate) fn new(tracker: Addr<OffsetTracker>) -> Self {
        FetchContext {
            tracker,
            assignment: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            next_assignment: AtomicU64::new(1),
        }
    }

    fn assignment(&self) -> MutexGuard<'_, HashMap<TopicPartition, AssignmentId>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.assignment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for FetchContext {}

impl ConsumerContext for FetchContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned: Vec<(TopicPartition, AssignmentId)> = partitions
                    .elements()
                    .iter()
                    .map(|p| {
                        let id = self.next_assignment.fetch_add(1, Ordering::Relaxed);
                        (
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
                self.assignment().extend(assigned.iter().cloned());
                self.generation.fetch_add(1, Ordering::Release);
                self.tracker.do_send(Assigned(assigned));
            }
            Rebalance::Revoke(partitions) => {
                let revoked: Vec<TopicPartition> = partitions
                    .elements()
                    .iter()
                    .map(|p| TopicPartition::new(p.topic(), p.partition()))
                    .collect();
                log::info!(
                    "revoked {} partitions: {}",
                    revoked.len(),
                    names(partitions)
                );
                let mut assignment = self.assignment();
                for partition in &revoked {
                    assignment.remove(partition);
                }
                drop(assignment);
                self.generation.fetch_add(1, Ordering::Release);
                self.tracker.do_send(Revoked(revoked));
            }
            Rebalance::Error(error) => log::warn!("rebalance failed: {error}"),
        }
    }
}

/// Where the messages of one assigned partition go.
struct Route {
    partition: TopicPartition,
    assignment: AssignmentId,
    processor: usize,
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
    /// The index in `table` of the route of a partition.
    fn lookup(&mut self, context: &FetchContext, topic: &str, partition: i32) -> Option<usize> {
        let generation = context.generation.load(Ordering::Acquire);
        if self.generation != Some(generation) {
            self.table = context
                .assignment()
                .iter()
                .map(|(p, assignment)| Route {
                    processor: self.router.processor_for(p.topic(), p.partition()),
                    partition: p.clone(),
                    assignment: *assignment,
                })
                .collect();
            self.generation = Some(generation);
        }
        let matches = |route: &Route| {
            route.partition.partition() == partition && route.partition.topic() == topic
        };
        if !self.table.get(self.last).is_some_and(matches) {
            self.last = self.table.iter().position(matches)?;
        }
        Some(self.last)
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

pub(crate) struct Fetcher {
    /// `None` once closed.
    consumer: Option<BaseConsumer<FetchContext>>,
    tracker: Addr<OffsetTracker>,
    processors: Vec<Recipient<Process>>,
    routes: Routes,
    stop: StopHandle,
    state: State,
}

impl Fetcher {
    pub(crate) fn new(
        consumer: BaseConsumer<FetchContext>,
        tracker: Addr<OffsetTracker>,
        processors: Vec<Recipient<Process>>,
        stop: StopHandle,
    ) -> Self {
        Fetcher {
            routes: Routes {
                router: Router::new(processors.len()),
                table: Vec::new(),
                generation: None,
                last: 0,
            },
            consumer: Some(consumer),
            tracker,
            processors,
            stop,
            state: State::Fetching,
        }
    }

    /// Polls up to a batch of messages and dispatches them: the tracker hears of each message
    /// before any processor can finish it.
    fn fetch(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        // First poll the round, so that each processor's messages can share one buffer.
        let mut polled = Vec::new();
        let mut buffer_sizes = vec![0; self.processors.len()];
        let mut error = None;
        for round in 0..MAX_BATCH {
            let timeout = if round == 0 {
                POLL_TIMEOUT
            } else {
                Duration::ZERO
            };
            let message = match consumer.poll(timeout) {
                None => break,
                Some(Err(kafka_error)) => {
                    error = Some(kafka_error);
                    break;
                }
                Some(Ok(message)) => message,
            };
            let context = consumer.context();
            let Some(route) = self
                .routes
                .lookup(context, message.topic(), message.partition())
            else {
                log::debug!(
                    "dropped {}/{}@{}: not assigned",
                    message.topic(),
                    message.partition(),
                    message.offset()
                );
                continue;
            };
            buffer_sizes[self.routes.table[route].processor] += Message::buffer_len(&message);
            polled.push((message, route));
        }
        if !polled.is_empty() {
            let mut buffers: Vec<BytesMut> = buffer_sizes
                .into_iter()
                .map(BytesMut::with_capacity)
                .collect();
            for (message, route) in &polled {
                Message::copy_into(message, &mut buffers[self.routes.table[*route].processor]);
            }
            let mut buffers: Vec<Bytes> = buffers.into_iter().map(BytesMut::freeze).collect();
            let mut starts = vec![0; buffers.len()];
            let mut batches: Vec<Vec<Message>> = Vec::new();
            batches.resize_with(self.processors.len(), Vec::new);
            let mut dispatched = Vec::with_capacity(polled.len());
            for (message, route) in &polled {
                let route = &self.routes.table[*route];
                let (start, length) = (starts[route.processor], Message::buffer_len(message));
                starts[route.processor] += length;
                let bytes = buffers[route.processor].slice(start..start + length);
                let message =
                    Message::from_kafka(message, route.partition.clone(), route.assignment, bytes);
                dispatched.push(message.position());
                batches[route.processor].push(message);
            }
            drop(polled);
            buffers.clear();
            self.tracker.do_send(Dispatched(dispatched));
            for (processor, batch) in self.processors.iter().zip(batches) {
                if !batch.is_empty() {
                    processor.do_send(Process(batch));
                }
            }
        }
        if let Some(error) = error {
            self.poll_failed(error);
        }
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
                .filter(|p| assignment.get(&p.partition) == Some(&p.assignment))
                .collect()
        };
        if held.is_empty() {
            return Ok(held);
        }
        let mut offsets = TopicPartitionList::new();
        for point in &held {
            offsets
                .add_partition_offset(
                    point.partition.topic(),
                    point.partition.partition(),
                    Offset::Offset(point.offset),
                )
                .map_err(|error| error.to_string())?;
        }
        let started = Instant::now();
        consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|error| error.to_string())?;
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
