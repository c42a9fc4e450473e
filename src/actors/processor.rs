//! A processor actor: runs the user's [`Processor`] on the messages routed to it, one at a
//! time, applies the failure policy, and reports each finished message to the OffsetTracker.
//!
//! A failed message is retried after a backoff without holding up anything but its *lane*:
//! the messages that must stay behind it (its partition; its key in per-key mode; nothing in
//! unordered mode). The lane is parked with its messages while the rest flows, and a timer
//! retries it. A panic also replaces the user's processor with a fresh one: the actor stops
//! and its actix `Supervisor` restarts it, keeping its mailbox and its parked lanes.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::Processor;
use crate::actors::offset_tracker::{Finished, OffsetTracker};
use crate::dead_letter::DeadLetters;
use crate::failure::{AfterFailure, Exhausted, FailurePolicy, is_permanent};
use crate::flow::Releases;
use crate::message::Message;
use crate::metrics::SystemMetrics;
use crate::offsets::{AssignmentId, Position};
use crate::report::StopReason;
use crate::revocation::RevocationBarrier;
use crate::routing::{Lane, OrderingMode};
use crate::stop::StopHandle;

/// The longest a finished message waits before the tracker hears of it. Completions are
/// reported in batches to keep the hot path cheap; this bounds how stale a periodic commit is.
const REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// What every processor of a system shares.
pub(crate) struct ProcessorShared<P> {
    pub(crate) factory: Arc<dyn Fn() -> P + Send + Sync>,
    pub(crate) tracker: Addr<OffsetTracker>,
    pub(crate) stop: StopHandle,
    /// Cancelled when the drain is abandoned: the message in progress is dropped unfinished
    /// and the queued ones are skipped.
    pub(crate) abandon: CancellationToken,
    pub(crate) metrics: Arc<SystemMetrics>,
    pub(crate) policy: FailurePolicy,
    pub(crate) dead_letters: Option<DeadLetters>,
    pub(crate) ordering: OrderingMode,
    pub(crate) barrier: Arc<RevocationBarrier>,
}

impl<P> Clone for ProcessorShared<P> {
    fn clone(&self) -> Self {
        ProcessorShared {
            factory: self.factory.clone(),
            tracker: self.tracker.clone(),
            stop: self.stop.clone(),
            abandon: self.abandon.clone(),
            metrics: self.metrics.clone(),
            policy: self.policy.clone(),
            dead_letters: self.dead_letters.clone(),
            ordering: self.ordering,
            barrier: self.barrier.clone(),
        }
    }
}

/// A lane waiting: its first message failed and waits for a retry (or for nothing, once its
/// attempts are used up and the system stops), and the lane's later messages wait behind it.
struct ParkedLane {
    /// The failed attempts of the first message.
    attempts: u32,
    /// When the first message is retried; `None` when it is not retried.
    retry_at: Option<Instant>,
    messages: VecDeque<Message>,
}

pub(crate) struct ProcessorActor<P: Processor> {
    index: usize,
    /// Lent to the future that runs a batch, and back between batches. Boxed because an actor
    /// must be `Unpin` and user processors need not be.
    processor: Option<Box<P>>,
    shared: ProcessorShared<P>,
    /// Messages not yet processed when the processor panicked, processed first after the
    /// restart.
    backlog: Vec<Message>,
    parked: HashMap<Lane, ParkedLane>,
    /// Set once the drain started: parked lanes are given up and nothing is retried.
    draining: bool,
    /// Set when a restarted processor's `on_start` failed: nothing more is processed.
    broken: bool,
    restarts: u64,
}

impl<P: Processor> ProcessorActor<P> {
    pub(crate) fn new(index: usize, shared: ProcessorShared<P>) -> Self {
        ProcessorActor {
            index,
            processor: Some(Box::new((shared.factory)())),
            shared,
            backlog: Vec::new(),
            parked: HashMap::new(),
            draining: false,
            broken: false,
            restarts: 0,
        }
    }

    /// Runs the processor's `on_start` and gives the processor back to the actor.
    fn on_start(&mut self) -> impl ActorFuture<Self, Output = anyhow::Result<()>> + 'static {
        let mut processor = self.lend_processor();
        async move {
            let result = processor.on_start().await;
            (processor, result)
        }
        .into_actor(self)
        .map(|(processor, result), actor: &mut Self, _| {
            actor.processor = Some(processor);
            result
        })
    }

    fn lend_processor(&mut self) -> Box<P> {
        self.processor
            .take()
            .expect("a processor actor handles one message at a time")
    }

    /// Processes `messages` (after `first_attempts` failed attempts of the first one) and
    /// then files what the batch left: parked lanes, a backlog after a panic, a stop.
    fn run(&mut self, messages: Vec<Message>, first_attempts: u32) -> AtomicResponse<Self, ()> {
        let mut releases = Releases::new(self.shared.metrics.in_flight.clone());
        if self.broken || self.shared.abandon.is_cancelled() || messages.is_empty() {
            for message in &messages {
                releases.add(message.assigned(), message.in_flight_bytes());
            }
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let batch = Batch {
            index: self.index,
            processor: self.lend_processor(),
            shared: self.shared.clone(),
            releases,
            parked: self.parked.keys().cloned().collect(),
            outcome: BatchOutcome::default(),
        };
        AtomicResponse::new(Box::pin(
            batch.run(messages, first_attempts).into_actor(self).map(
                |(processor, outcome), actor, ctx| {
                    actor.processor = Some(processor);
                    actor.file(outcome, ctx);
                },
            ),
        ))
    }

    fn file(&mut self, outcome: BatchOutcome, ctx: &mut Context<Self>) {
        for (lane, message) in outcome.held {
            match self.parked.get_mut(&lane) {
                Some(parked) => parked.messages.push_back(message),
                // Batches run one at a time, so a lane parked when one started is still
                // parked when it ends; should that ever change, process the message next.
                None => self.backlog.push(message),
            }
        }
        for (lane, parked) in outcome.parked {
            if let Some(retry_at) = parked.retry_at {
                ctx.notify_later(RetryLane(lane.clone()), retry_at - Instant::now());
            }
            self.parked.insert(lane, parked);
        }
        if let Some(reason) = outcome.stop {
            log::error!("processor {}: {reason}; stopping", self.index);
            self.shared.stop.request_graceful(reason);
        }
        if let Some(remaining) = outcome.panicked {
            self.backlog = remaining;
            // The processor may be left inconsistent by the panic: the supervisor restarts
            // this actor (see `restarting`) with a fresh one.
            ctx.stop();
        }
    }

    /// Gives up every parked lane: its messages stay unfinished, so they are not committed
    /// and are delivered again after the restart.
    fn give_up_parked(&mut self) {
        let given_up = self.give_up_lanes(|_| true);
        if given_up > 0 {
            log::warn!(
                "processor {}: stopping with {given_up} messages waiting for a retry; they \
                 are not committed and are delivered again after the restart",
                self.index
            );
        }
    }

    /// Drops the parked lanes `which` selects, releasing their messages from the in-flight
    /// counts unfinished. Returns how many messages were dropped.
    fn give_up_lanes(&mut self, which: impl Fn(&Lane) -> bool) -> usize {
        let mut releases = Releases::new(self.shared.metrics.in_flight.clone());
        let mut given_up = 0;
        self.parked.retain(|lane, parked| {
            if !which(lane) {
                return true;
            }
            for message in &parked.messages {
                releases.add(message.assigned(), message.in_flight_bytes());
            }
            given_up += parked.messages.len();
            false
        });
        given_up
    }
}

impl<P: Processor> Actor for ProcessorActor<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.restarts == 0 {
            // The first `on_start` runs on the Supervisor's request, so a failure fails the
            // start of the system.
            return;
        }
        ctx.wait(self.on_start().map(|result, actor, ctx| {
            if let Err(error) = result {
                actor.broken = true;
                actor
                    .shared
                    .stop
                    .request_graceful(StopReason::ProcessorRestartFailed {
                        processor: actor.index,
                        error: format!("{error:#}"),
                    });
                return;
            }
            // Timers do not survive a restart: arm them again.
            let now = Instant::now();
            for (lane, parked) in &actor.parked {
                if let Some(retry_at) = parked.retry_at {
                    ctx.notify_later(
                        RetryLane(lane.clone()),
                        retry_at.saturating_duration_since(now),
                    );
                }
            }
            if !actor.backlog.is_empty() {
                ctx.notify(Process(Vec::new()));
            }
        }));
    }
}

impl<P: Processor> actix::Supervised for ProcessorActor<P> {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.restarts += 1;
        self.shared
            .metrics
            .processor_restarts
            .fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "processor {} panicked: restarting it with a fresh processor",
            self.index
        );
        self.processor = Some(Box::new((self.shared.factory)()));
    }
}

/// Runs the processor's [`on_start`](Processor::on_start) hook.
#[derive(Message)]
#[rtype(result = "anyhow::Result<()>")]
pub(crate) struct StartProcessor;

impl<P: Processor> Handler<StartProcessor> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, anyhow::Result<()>>;

    fn handle(&mut self, _: StartProcessor, _: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.on_start()))
    }
}

/// Messages to process, in offset order per partition.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Process(pub(crate) Vec<Message>);

impl<P: Processor> Handler<Process> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, Process(messages): Process, _: &mut Self::Context) -> Self::Result {
        let messages = if self.backlog.is_empty() {
            messages
        } else {
            let mut backlog = std::mem::take(&mut self.backlog);
            backlog.extend(messages);
            backlog
        };
        self.run(messages, 0)
    }
}

/// Retries a parked lane: its first message, then the messages behind it.
#[derive(Message)]
#[rtype(result = "()")]
struct RetryLane(Lane);

impl<P: Processor> Handler<RetryLane> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, RetryLane(lane): RetryLane, _: &mut Self::Context) -> Self::Result {
        let parked = match self.parked.remove(&lane) {
            Some(parked) if !self.draining && parked.retry_at.is_some() => parked,
            Some(parked) => {
                self.parked.insert(lane, parked);
                return AtomicResponse::new(Box::pin(fut::ready(())));
            }
            None => return AtomicResponse::new(Box::pin(fut::ready(()))),
        };
        self.run(parked.messages.into(), parked.attempts)
    }
}

/// Partitions revoked from this member: their lanes waiting for a retry are given up, since
/// nothing of theirs can be committed any more and the rebalance waits for their in-flight
/// count.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ForgetPartitions(pub(crate) Vec<AssignmentId>);

impl<P: Processor> Handler<ForgetPartitions> for ProcessorActor<P> {
    type Result = ();

    fn handle(&mut self, ForgetPartitions(assignments): ForgetPartitions, _: &mut Self::Context) {
        self.give_up_lanes(|lane| assignments.contains(&lane.assignment()));
    }
}

/// What a batch left to file.
#[derive(Default)]
struct BatchOutcome {
    /// Lanes whose first message failed, to park.
    parked: Vec<(Lane, ParkedLane)>,
    /// Messages of lanes parked before the batch, to queue behind them.
    held: Vec<(Lane, Message)>,
    /// Set when the processor panicked: the messages it did not get to.
    panicked: Option<Vec<Message>>,
    stop: Option<StopReason>,
}

/// One run of the processor over a batch of messages.
struct Batch<P> {
    index: usize,
    processor: Box<P>,
    shared: ProcessorShared<P>,
    releases: Releases,
    /// The lanes parked when the batch started.
    parked: Vec<Lane>,
    outcome: BatchOutcome,
}

/// How one message's processing ended.
enum Attempt {
    Finished,
    Failed {
        error: String,
        permanent: bool,
        panicked: bool,
    },
    Abandoned,
}

impl<P: Processor> Batch<P> {
    /// Processes messages one by one until done or abandoned, reporting finished ones to the
    /// tracker at least every [`REPORT_INTERVAL`] and always before returning. Every message
    /// is released from the in-flight counts once done with; parked ones stay in flight.
    async fn run(mut self, messages: Vec<Message>, first_attempts: u32) -> (Box<P>, BatchOutcome) {
        let abandon = self.shared.abandon.clone();
        let mut finished: Vec<Position> = Vec::with_capacity(messages.len());
        // Made once per batch: registering a timer or a cancellation waiter per message would
        // cost more than a fast processor's whole work.
        let mut abandoned = pin!(abandon.cancelled());
        let mut report_timer = pin!(sleep_until(Instant::now() + REPORT_INTERVAL));
        let mut attempts = first_attempts;
        let barrier = self.shared.barrier.clone();
        let mut epoch = barrier.begin(self.index);
        let mut messages = messages.into_iter();
        while let Some(message) = messages.next() {
            // A revocation waits until no processor works on a revoked partition and every
            // completion before that reached the tracker: report, then pass its barrier.
            if barrier.epoch() != epoch {
                epoch = barrier.epoch();
                report(&self.shared.tracker, &mut self.releases, &mut finished);
                barrier.pass(self.index, epoch);
            }
            // What is left of a revoked partition cannot be committed: its next owner
            // processes it.
            if message.assigned().is_revoked() {
                self.release(&message);
                continue;
            }
            if !self.parked.is_empty() || !self.outcome.parked.is_empty() {
                let lane = message.lane(self.shared.ordering);
                if self.parked.contains(&lane) {
                    self.outcome.held.push((lane, message));
                    continue;
                }
                if let Some((_, parked)) = self.outcome.parked.iter_mut().find(|(l, _)| *l == lane)
                {
                    parked.messages.push_back(message);
                    continue;
                }
            }
            if abandon.is_cancelled() {
                self.release(&message);
                break;
            }
            let attempt = {
                let mut processing =
                    pin!(AssertUnwindSafe(self.processor.process(&message)).catch_unwind());
                // Most processors finish at the first poll; only those that wait need the
                // select.
                let outcome = match futures::poll!(processing.as_mut()) {
                    Poll::Ready(outcome) => Some(outcome),
                    Poll::Pending => loop {
                        tokio::select! {
                            biased;
                            () = &mut abandoned => break None,
                            outcome = &mut processing => break Some(outcome),
                            () = &mut report_timer, if !finished.is_empty() => {
                                report(&self.shared.tracker, &mut self.releases, &mut finished);
                                report_timer.as_mut().reset(Instant::now() + REPORT_INTERVAL);
                            }
                        }
                    },
                };
                match outcome {
                    None => Attempt::Abandoned,
                    Some(Ok(Ok(()))) => Attempt::Finished,
                    Some(Ok(Err(error))) => Attempt::Failed {
                        permanent: is_permanent(&error),
                        error: format!("{error:#}"),
                        panicked: false,
                    },
                    Some(Err(panic)) => Attempt::Failed {
                        error: format!("panicked: {}", panic_message(panic.as_ref())),
                        permanent: false,
                        panicked: true,
                    },
                }
            };
            let failed_attempts = std::mem::take(&mut attempts) + 1;
            match attempt {
                Attempt::Finished => {
                    finished.push(message.position());
                    self.release(&message);
                }
                Attempt::Abandoned => {
                    self.release(&message);
                    break;
                }
                Attempt::Failed {
                    error,
                    permanent,
                    panicked,
                } => {
                    let done = self
                        .failed(message, failed_attempts, error, permanent, &mut abandoned)
                        .await;
                    if let Some(message) = done {
                        finished.push(message.position());
                        self.release(&message);
                    }
                    if panicked {
                        self.outcome.panicked = Some(messages.by_ref().collect());
                        break;
                    }
                }
            }
        }
        // Whatever is left was abandoned.
        for message in messages {
            self.release(&message);
        }
        report(&self.shared.tracker, &mut self.releases, &mut finished);
        barrier.end(self.index);
        (self.processor, self.outcome)
    }

    fn release(&mut self, message: &Message) {
        self.releases
            .add(message.assigned(), message.in_flight_bytes());
    }

    /// Applies the failure policy to a message whose `attempts`-th attempt failed. Returns the
    /// message when it counts as finished (skipped or dead-lettered); otherwise its lane is
    /// parked, for a retry or for good.
    async fn failed(
        &mut self,
        message: Message,
        attempts: u32,
        error: String,
        permanent: bool,
        abandoned: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Option<Message> {
        let metrics = &self.shared.metrics;
        let lane = message.lane(self.shared.ordering);
        let place = format!("{}@{}", message.topic_partition(), message.offset());
        match self.shared.policy.after_failure(attempts, permanent) {
            AfterFailure::RetryAfter(backoff) => {
                log::warn!("{place}: attempt {attempts} failed, retrying in {backoff:?}: {error}");
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                self.park(lane, message, attempts, Some(Instant::now() + backoff));
                None
            }
            AfterFailure::GiveUp => match self.shared.policy.exhausted() {
                Exhausted::Stop => {
                    self.outcome
                        .stop
                        .get_or_insert(StopReason::ProcessingFailed {
                            partition: message.topic_partition().clone(),
                            offset: message.offset(),
                            error: format!("{error} (after {attempts} attempts)"),
                        });
                    self.park(lane, message, attempts, None);
                    None
                }
                Exhausted::Skip => {
                    log::warn!("{place}: skipped after {attempts} attempts: {error}");
                    metrics.skipped.fetch_add(1, Ordering::Relaxed);
                    Some(message)
                }
                Exhausted::DeadLetter { .. } => {
                    let dead_letters = self
                        .shared
                        .dead_letters
                        .clone()
                        .expect("a dead-letter policy has a producer");
                    let produced = tokio::select! {
                        biased;
                        () = abandoned.as_mut() => Err("abandoned by the shutdown".to_owned()),
                        produced = dead_letters.send(&message, &error, attempts) => produced,
                    };
                    match produced {
                        Ok(topic) => {
                            log::warn!(
                                "{place}: sent to {topic} after {attempts} attempts: {error}"
                            );
                            metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            Some(message)
                        }
                        Err(dlq_error) => {
                            self.outcome
                                .stop
                                .get_or_insert(StopReason::DeadLetterFailed {
                                    partition: message.topic_partition().clone(),
                                    offset: message.offset(),
                                    error: dlq_error,
                                });
                            self.park(lane, message, attempts, None);
                            None
                        }
                    }
                }
            },
        }
    }

    fn park(&mut self, lane: Lane, message: Message, attempts: u32, retry_at: Option<Instant>) {
        self.outcome.parked.push((
            lane,
            ParkedLane {
                attempts,
                retry_at,
                messages: VecDeque::from([message]),
            },
        ));
    }
}

/// Tells the tracker what finished and releases what is done with.
fn report(tracker: &Addr<OffsetTracker>, releases: &mut Releases, finished: &mut Vec<Position>) {
    if !finished.is_empty() {
        tracker.do_send(Finished(std::mem::take(finished)));
    }
    releases.flush();
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_owned())
}

/// Answers once every message queued before it was handled: the drain barrier. The Fetcher
/// stops dispatching before the barrier is sent, so nothing can queue up behind it. Lanes
/// waiting for a retry are given up: a shutdown does not wait out a backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

impl<P: Processor> Handler<Drain> for ProcessorActor<P> {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Self::Context) {
        self.draining = true;
        self.give_up_parked();
    }
}

/// Runs the processor's [`on_stop`](Processor::on_stop) hook within `budget`, then stops the
/// actor. Queued behind any batch in progress, so it runs after the drain.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct StopProcessor {
    pub(crate) budget: Duration,
}

impl<P: Processor> Handler<StopProcessor> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(
        &mut self,
        StopProcessor { budget }: StopProcessor,
        _: &mut Self::Context,
    ) -> Self::Result {
        self.draining = true;
        self.give_up_parked();
        let mut processor = self.lend_processor();
        let index = self.index;
        AtomicResponse::new(Box::pin(
            async move {
                let result = match tokio::time::timeout(budget, processor.on_stop()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(format!("processor {index}: on_stop failed: {error:#}")),
                    Err(_) => Err(format!(
                        "processor {index}: on_stop did not finish within {budget:?}"
                    )),
                };
                (processor, result)
            }
            .into_actor(self)
            .map(|(processor, result), actor, _| {
                actor.processor = Some(processor);
                // Stopped for good: the supervisor restarts an actor only when it stops
                // itself, and this one's mailbox is about to close with the system.
                result
            }),
        ))
    }
}
