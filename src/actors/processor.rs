//! A processor: one long-lived task that owns the user's [`Processor`] and runs the messages
//! handed to it, one at a time, under the failure policy.
//!
//! **Exactly one work item runs at a time, and the user's processor is never shared**: the
//! task's loop takes the next item from its [`WorkQueue`] (a retry that came due, else the
//! oldest message whose lane is not parked), runs it to its end, files the outcome, and only
//! then takes the next. New messages, commands and timers are only *accepted* meanwhile (they
//! change the queue, never the processor). This is the one place that enforces it.
//!
//! Every call into user code (the factory, `on_start`, `process`, `on_stop`, and dropping the
//! processor) runs inside `catch_unwind`. A panic in `process` counts as a failed attempt and
//! the processor is rebuilt in place with the factory; the queue, parked lanes and retries are
//! the task's, so nothing is lost with it. Should the task die anyway (a bug of ours), its
//! [`DeathWatch`] stops the system with a reason that names it, and every message it held
//! releases its in-flight count as it is dropped.
//!
//! What a processor holds is short: the Fetcher hands out messages only within the
//! processor's [`Credit`], which the processor sets from its measured speed (a few
//! milliseconds of work), so a stop or a revocation waits for little.
//!
//! The others reach the task through its [`ProcessorHandle`], which sends it [`Command`]s;
//! both are defined with the rest of the protocol in `actors::messages`.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{ArbiterHandle, Recipient};
use futures::FutureExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::Instrument;

use crate::actors::messages::{Command, Completions, Hook, ProcessorHandle};
use crate::batch::{Batch, Ended, Filing, Retry, file};
use crate::dead_letter::DeadLetters;
use crate::failure::{FailurePolicy, is_permanent};
use crate::fault::{self, Fault};
use crate::flow::{BatchLimit, Credit, PrefetchLimit};
use crate::lanes::{Item, WorkQueue};
use crate::message::Message;
use crate::metrics::SystemMetrics;
use crate::offsets::Position;
use crate::processor::BatchFailures;
use crate::report::StopReason;
use crate::stall::Sighting;
use crate::stop::{Abandon, StopHandle};
use crate::trace;
use crate::work::Work;

/// The longest a finished message waits before the tracker hears of it (it stays in flight
/// until then). Completions are reported in batches to keep the hot path cheap.
const REPORT_INTERVAL: Duration = Duration::from_millis(50);
/// Completions reported at once at most; a fast processor reports every this many messages.
const REPORT_BATCH: usize = 256;
/// Of a report's messages, how many at most go into the duration histograms, evenly spread
/// (all of them when there are no more). Exporters pay per sample (Prometheus' reads the clock
/// for each one): timing every message of a fast consumer cost it about a tenth of its
/// throughput; a sample of a few per cent costs nothing measurable and keeps the shape.
const TIMED_PER_REPORT: usize = 16;
/// How many messages a speed measurement spans at most.
const MEASURE_EVERY: u32 = 256;
/// How often inbox commands are looked at while messages run back to back.
const INBOX_EVERY: u32 = 32;
/// How long batches run back to back at most before the inbox is looked at: a rebalance's
/// hooks and drain, and a stop, wait for no more than one batch past it.
const INBOX_AGE: Duration = Duration::from_millis(1);

/// What every processor of a system shares.
pub(crate) struct ProcessorShared<W> {
    pub(crate) factory: Arc<dyn Fn() -> W + Send + Sync>,
    /// The OffsetTracker, which hears what finished and what was given up.
    pub(crate) tracker: Recipient<Completions>,
    pub(crate) stop: StopHandle,
    /// Cancelled when the drain is abandoned: the message in progress is dropped unfinished
    /// and the queued ones too.
    pub(crate) abandon: Abandon,
    pub(crate) metrics: Arc<SystemMetrics>,
    pub(crate) policy: FailurePolicy,
    pub(crate) dead_letters: Option<DeadLetters>,
    pub(crate) prefetch: PrefetchLimit,
    /// How large a batch grows: [`BatchLimit::ONE`] for a `Processor`.
    pub(crate) batch: BatchLimit,
    /// Wakes the Fetcher when a processor has room for more.
    pub(crate) fetcher_wakeup: Arc<Notify>,
}

impl<W> Clone for ProcessorShared<W> {
    fn clone(&self) -> Self {
        ProcessorShared {
            factory: self.factory.clone(),
            tracker: self.tracker.clone(),
            stop: self.stop.clone(),
            abandon: self.abandon.clone(),
            metrics: self.metrics.clone(),
            policy: self.policy.clone(),
            dead_letters: self.dead_letters.clone(),
            prefetch: self.prefetch,
            batch: self.batch,
            fetcher_wakeup: self.fetcher_wakeup.clone(),
        }
    }
}

/// Starts processor `index` on `arbiter`: the task makes its processor with the factory and
/// runs `on_start`; the receiver answers with the outcome, and the task then runs until it is
/// told to stop.
pub(crate) fn spawn<W: Work>(
    index: usize,
    shared: ProcessorShared<W>,
    arbiter: &ArbiterHandle,
) -> (ProcessorHandle, oneshot::Receiver<anyhow::Result<()>>) {
    // A batch can fill from the start.
    let credit = Arc::new(Credit::new(shared.batch.messages));
    let (processor, commands) = ProcessorHandle::new(index, credit.clone());
    let (started, start_result) = oneshot::channel();
    let spawned = arbiter.spawn_fn(move || {
        // On the arbiter's thread: the processor and its futures never leave it.
        actix::spawn(run(index, shared, commands, credit, started));
    });
    if !spawned {
        log::error!("processor {index}: its thread is gone");
    }
    (processor, start_result)
}

async fn run<W: Work>(
    index: usize,
    shared: ProcessorShared<W>,
    commands: mpsc::UnboundedReceiver<Command>,
    credit: Arc<Credit>,
    started: oneshot::Sender<anyhow::Result<()>>,
) {
    let _watch = DeathWatch {
        index,
        stop: shared.stop.clone(),
    };
    let instance = match Instance::start(&shared.factory).await {
        Ok(instance) => {
            let _ = started.send(Ok(()));
            instance
        }
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let mut task = ProcessorTask {
        instance,
        batch: Batch::default(),
        state: TaskState::new(index, shared, commands, credit),
    };
    task.run().await;
}

/// Stops the system if the task dies by a panic of the framework's own code: user code
/// cannot panic through the task (it runs inside `catch_unwind`).
struct DeathWatch {
    index: usize,
    stop: StopHandle,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!(
                "internal failure: processor {} died (see the panic above); stopping",
                self.index
            );
            self.stop
                .request_graceful(StopReason::InternalFailure(format!(
                    "processor {} died",
                    self.index
                )));
        }
    }
}

/// The user's processor, or nothing once it could not be rebuilt after a panic.
pub(crate) enum Instance<W> {
    Ready(Box<W>),
    Broken,
}

/// How one attempt at a batch ended.
pub(crate) enum Attempt {
    Finished,
    /// Every message of the batch failed.
    Failed {
        error: String,
        permanent: bool,
        panicked: bool,
    },
    /// Some messages failed: the others finished.
    Partial(BatchFailures),
    /// The processor is broken: nothing can run.
    Broken,
}

impl<W: Work> Instance<W> {
    /// Makes a processor with the factory and runs its `on_start`, catching panics in both.
    pub(crate) async fn start(factory: &Arc<dyn Fn() -> W + Send + Sync>) -> anyhow::Result<Self> {
        let processor = catch_unwind(AssertUnwindSafe(|| factory()))
            .map_err(|panic| anyhow::anyhow!("the factory panicked: {}", panic_message(&panic)))?;
        let mut processor = Box::new(processor);
        let started = AssertUnwindSafe(async { processor.on_start().await })
            .catch_unwind()
            .await;
        match started {
            Ok(Ok(())) => Ok(Instance::Ready(processor)),
            Ok(Err(error)) => {
                drop_quietly(processor);
                Err(error)
            }
            Err(panic) => {
                drop_quietly(processor);
                Err(anyhow::anyhow!(
                    "on_start panicked: {}",
                    panic_message(&panic)
                ))
            }
        }
    }

    /// Runs the user's code on `batch`, catching a panic, its synchronous part included.
    pub(crate) async fn process(&mut self, batch: &[Message]) -> Attempt {
        let Instance::Ready(processor) = self else {
            return Attempt::Broken;
        };
        let outcome = AssertUnwindSafe(async { processor.run(batch).await })
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(())) => Attempt::Finished,
            Ok(Err(error)) => match error.downcast::<BatchFailures>() {
                Ok(failures) => Attempt::Partial(failures),
                Err(error) => Attempt::Failed {
                    permanent: is_permanent(&error),
                    error: format!("{error:#}"),
                    panicked: false,
                },
            },
            Err(panic) => Attempt::Failed {
                error: format!("panicked: {}", panic_message(&panic)),
                permanent: false,
                panicked: true,
            },
        }
    }

    /// Runs a partition hook and sends its outcome; a panic in it is an error.
    async fn run_hook(&mut self, index: usize, hook: Hook) {
        let Instance::Ready(processor) = self else {
            let broken = format!("processor {index} is broken (it could not be rebuilt)");
            match hook {
                Hook::Assigned { reply, .. } => drop(reply.send(Err(broken))),
                Hook::Revoked { reply, .. } => drop(reply.send(Err(broken))),
            }
            return;
        };
        fn outcome<T>(
            name: &str,
            index: usize,
            caught: Result<anyhow::Result<T>, Box<dyn Any + Send>>,
        ) -> Result<T, String> {
            match caught {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(format!("processor {index}: {name} failed: {error:#}")),
                Err(panic) => Err(format!(
                    "processor {index}: {name} panicked: {}",
                    panic_message(&panic)
                )),
            }
        }
        match hook {
            Hook::Assigned { partitions, reply } => {
                let caught = AssertUnwindSafe(processor.on_assigned(&partitions))
                    .catch_unwind()
                    .await;
                let _ = reply.send(outcome("on_assigned", index, caught));
            }
            Hook::Revoked { partitions, reply } => {
                let caught = AssertUnwindSafe(processor.on_revoked(&partitions))
                    .catch_unwind()
                    .await;
                let _ = reply.send(outcome("on_revoked", index, caught));
            }
        }
    }

    /// Runs `on_stop` within `budget`, then drops the processor.
    async fn stop(&mut self, index: usize, budget: Duration) -> Result<(), String> {
        let Instance::Ready(processor) = std::mem::replace(self, Instance::Broken) else {
            return Ok(());
        };
        let mut processor = processor;
        let stopping = AssertUnwindSafe(async { processor.on_stop().await }).catch_unwind();
        let result = match tokio::time::timeout(budget, stopping).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("processor {index}: on_stop failed: {error:#}")),
            Ok(Err(panic)) => Err(format!(
                "processor {index}: on_stop panicked: {}",
                panic_message(&panic)
            )),
            Err(_) => Err(format!(
                "processor {index}: on_stop did not finish within {budget:?}"
            )),
        };
        drop_quietly(processor);
        result
    }
}

/// Drops a processor, catching a panic in its `Drop`.
pub(crate) fn drop_quietly<P>(processor: Box<P>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(processor))) {
        log::warn!("dropping a processor panicked: {}", panic_message(&panic));
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_owned())
}

struct ProcessorTask<W> {
    /// Borrowed by the attempt in progress, and by nothing else.
    instance: Instance<W>,
    /// The batch in progress (one message for a `Processor`); empty between batches. Kept to
    /// spare an allocation per batch.
    batch: Batch<Message>,
    /// Everything else: changed between attempts and by commands accepted during one.
    state: TaskState<W>,
}

impl<W: Work> ProcessorTask<W> {
    async fn run(&mut self) {
        let mut back_to_back: u32 = 0;
        loop {
            if back_to_back.is_multiple_of(INBOX_EVERY) || self.state.inbox_overdue() {
                self.state.look_at_inbox();
            }
            // Hooks go first: a rebalance waits for them.
            while let Some(hook) = self.state.hooks.pop_front() {
                self.instance.run_hook(self.state.index, hook).await;
            }
            if self.state.shared.abandon.is_cancelled() {
                self.state.abandon();
            }
            let now = self.state.clock();
            let next = self.state.work.next(now);
            if let Some(item) = next {
                back_to_back = back_to_back.wrapping_add(1);
                self.run_batch(item).await;
                continue;
            }
            back_to_back = 0;
            self.state.previous_end = None;
            self.state.count_started();
            self.state.idle();
            if let Some((budget, reply)) = self.state.stop.take() {
                self.state.abandon();
                let result = self.instance.stop(self.state.index, budget).await;
                self.state.reports.flush();
                let _ = reply.send(result);
                return;
            }
            if self.state.orphaned {
                // Nobody can send anything any more: the system is gone.
                self.state.abandon();
                return;
            }
            self.state.wait().await;
        }
    }

    /// Runs a batch that starts with `first` (for a `Processor`, `first` alone) and files the
    /// outcome of each of its messages.
    async fn run_batch(&mut self, first: Item<Message>) {
        if self.state.dies {
            panic!(
                "injected fault (KAFKA_ACTORS_TEST_FAULT): processor {} dies",
                self.state.index
            );
        }
        self.batch.start(first);
        if W::BATCHES {
            self.fill().await;
        }
        self.drop_fenced();
        if self.batch.is_empty() {
            return;
        }
        let state = &mut self.state;
        // What waited for this processor is served by this batch's end; what comes while it
        // runs makes the next batch hurry.
        state.hurry = false;
        for _ in 0..self.batch.len() {
            if state.speed.started(&state.credit, state.shared.prefetch) {
                state.shared.fetcher_wakeup.notify_one();
            }
        }
        let messages = &self.batch.messages;
        let span = match messages.as_slice() {
            [message] => trace::message_span(message, self.batch.failed[0] + 1),
            batch => trace::batch_span(batch),
        };
        let started = self.state.previous_end.take().unwrap_or_else(Instant::now);
        let attempt = self
            .state
            .serve_process(messages, self.instance.process(messages).instrument(span))
            .await;
        let ended = Instant::now();
        self.state.last_batch_end = ended;
        let took = ended - started;
        let Some(attempt) = attempt else {
            // Abandoned: dropped unfinished, and not reported, so they show as abandoned.
            self.batch = Batch::default();
            return;
        };
        let ended_as = match &attempt {
            Attempt::Finished => {
                // Only now does the next attempt start: after a failure, the policy's work (a
                // dead letter's production) is not the next message's.
                self.state.previous_end = Some(ended);
                Ended::Finished
            }
            Attempt::Broken => Ended::Broken,
            Attempt::Failed {
                error, permanent, ..
            } => {
                if self.batch.len() > 1 {
                    log::warn!(
                        "{}: a batch of {} messages failed as a whole, so each runs alone \
                         after the backoff (no attempt counted): {error}",
                        describe(&self.batch.messages),
                        self.batch.len()
                    );
                }
                for message in &self.batch.messages {
                    let instruments = &message.assigned().instruments;
                    instruments.processing_duration.record(took);
                }
                Ended::Failed {
                    error,
                    permanent: *permanent,
                }
            }
            Attempt::Partial(failures) => {
                if let Some(index) = failures.highest_index().filter(|&i| i >= self.batch.len()) {
                    log::warn!(
                        "{}: the batch's failures name message {index} of a batch of {}: \
                         ignored (a bug in the processor)",
                        describe(&self.batch.messages),
                        self.batch.len()
                    );
                }
                Ended::Partial(failures)
            }
        };
        let state = &mut self.state;
        let now = state.clock();
        let stopping = state.draining || state.shared.abandon.is_cancelled();
        let mut filer = Filer {
            reports: &mut state.reports,
            shared: &state.shared,
            took,
            dead_letters: Vec::new(),
        };
        file(
            &mut state.work,
            &mut self.batch,
            ended_as,
            &state.shared.policy,
            now,
            |message| cannot_wait(stopping, message),
            &mut filer,
        );
        let dead_letters = filer.dead_letters;
        if let Attempt::Failed { panicked: true, .. } = attempt {
            self.rebuild().await;
        }
        for (message, attempts, error) in dead_letters {
            self.dead_letter(message, attempts, error).await;
        }
    }

    /// Takes more messages into the batch, up to its limits; waits at most the linger for
    /// them, and not at all when a stop, a revocation or a hook waits for this processor.
    async fn fill(&mut self) {
        let limit = self.state.shared.batch;
        let deadline = Instant::now() + limit.linger;
        loop {
            let full = self.batch.fill(&mut self.state.work, limit);
            let state = &mut self.state;
            if full
                || state.hurry
                || state.draining
                || state.stop.is_some()
                || state.shared.abandon.is_cancelled()
                || Instant::now() >= deadline
            {
                return;
            }
            // What was taken made room: the Fetcher may hand out more meanwhile.
            state.count_started();
            state.linger_until(deadline).await;
        }
    }

    /// Drops the messages of fenced partitions from the batch, with their lanes: nothing of a
    /// fenced partition can be committed, and its next owner processes them.
    fn drop_fenced(&mut self) {
        let fenced = self.batch.remove(|message| message.assigned().is_fenced());
        for message in fenced {
            let assignment = message.assigned().assignment;
            drop(message);
            drop(
                self.state
                    .work
                    .give_up(|lane| lane.assignment() == assignment),
            );
        }
        self.state.count_started();
    }

    /// Replaces the processor after a panic: it may have been left inconsistent.
    async fn rebuild(&mut self) {
        let state = &mut self.state;
        state.shared.metrics.processor_restarted();
        log::warn!(
            "processor {} panicked: replacing it with a fresh one",
            state.index
        );
        if let Instance::Ready(old) = std::mem::replace(&mut self.instance, Instance::Broken) {
            drop_quietly(old);
        }
        let factory = state.shared.factory.clone();
        match state.serve_while(Instance::start(&factory)).await {
            Some(Ok(instance)) => self.instance = instance,
            Some(Err(error)) => {
                log::error!(
                    "processor {}: the replacement failed to start: {error:#}",
                    state.index
                );
                state
                    .shared
                    .stop
                    .request_graceful(StopReason::ProcessorRestartFailed {
                        processor: state.index,
                        error: format!("{error:#}"),
                    });
            }
            None => {}
        }
    }

    /// Produces a message whose attempts are used up to the dead-letter topic; its lane is
    /// held meanwhile. Finished once the topic acknowledged it; otherwise the system stops on
    /// it (parked for good).
    async fn dead_letter(&mut self, message: Message, attempts: u32, error: String) {
        let state = &mut self.state;
        let place = format!("{}@{}", message.topic_partition(), message.offset());
        let Some(dead_letters) = state.shared.dead_letters.clone() else {
            // The Supervisor makes a producer for every dead-letter policy.
            log::error!("{place}: no dead-letter producer; stopping");
            state
                .shared
                .stop
                .request_graceful(StopReason::InternalFailure(
                    "a dead-letter policy without a producer".to_owned(),
                ));
            state.work.park(message, attempts, None);
            return;
        };
        let produced = state
            .serve_while(dead_letters.send(&message, &error, attempts))
            .await;
        match produced {
            Some(Ok(topic)) => {
                log::warn!("{place}: sent to {topic} after {attempts} attempts: {error}");
                state
                    .shared
                    .metrics
                    .dead_lettered(&message.assigned().instruments);
                state.work.finished(&message);
                state.reports.finished(message, None);
            }
            Some(Err(dead_letter_error)) => {
                log::error!("{place}: {dead_letter_error}; stopping");
                state
                    .shared
                    .stop
                    .request_graceful(StopReason::DeadLetterFailed {
                        partition: message.topic_partition().clone(),
                        offset: message.offset(),
                        error: dead_letter_error,
                    });
                state.work.park(message, attempts, None);
            }
            // Abandoned: dropped unfinished.
            None => drop(message),
        }
    }
}

/// Why a failed message cannot wait for a retry, if it cannot.
fn cannot_wait(stopping: bool, message: &Message) -> Option<&'static str> {
    if stopping {
        Some("the system is stopping")
    } else if message.assigned().is_fenced() {
        Some("its partition was revoked")
    } else {
        None
    }
}

/// Where a message is, for log lines.
fn place(message: &Message) -> String {
    format!("{}@{}", message.topic_partition(), message.offset())
}

/// What the filing of a batch does in the task: reports, logs, figures, and the dead letters
/// to produce once it is done.
struct Filer<'a, W> {
    reports: &'a mut Reports,
    shared: &'a ProcessorShared<W>,
    /// How long the attempt took.
    took: Duration,
    dead_letters: Vec<(Message, u32, String)>,
}

impl<W> Filing<Message> for Filer<'_, W> {
    fn processed(&mut self, message: Message) {
        self.reports.finished(message, Some(self.took));
    }

    fn retrying(&mut self, message: &Message, retry: Retry<'_>) {
        let Retry {
            attempts,
            backoff,
            error,
            isolating,
        } = retry;
        if isolating {
            log::debug!("{}: runs alone in {backoff:?}", place(message));
        } else {
            log::warn!(
                "{}: attempt {attempts} failed, retrying in {backoff:?}: {error}",
                place(message)
            );
        }
        self.shared.metrics.retried(&message.assigned().instruments);
    }

    fn not_retried(&mut self, message: &Message, attempts: u32, error: &str, why: &'static str) {
        log::info!(
            "{}: attempt {attempts} failed ({error}); not retried: {why}",
            place(message)
        );
    }

    fn skipped(&mut self, message: Message, attempts: u32, error: &str) {
        log::warn!(
            "{}: skipped after {attempts} attempts: {error}",
            place(&message)
        );
        self.shared.metrics.skipped(&message.assigned().instruments);
        self.reports.finished(message, None);
    }

    fn dead_letter(&mut self, message: Message, attempts: u32, error: &str) {
        self.dead_letters
            .push((message, attempts, error.to_owned()));
    }

    fn stopping(&mut self, message: &Message, attempts: u32, error: &str) {
        log::error!(
            "{}: failed after {attempts} attempts: {error}; stopping",
            place(message)
        );
        self.shared
            .stop
            .request_graceful(StopReason::ProcessingFailed {
                partition: message.topic_partition().clone(),
                offset: message.offset(),
                error: format!("{error} (after {attempts} attempts)"),
            });
    }

    fn released(&mut self, message: Message) {
        self.reports.released(message);
    }
}

/// Finished messages and messages given up, until they are reported to the tracker: they
/// stay in flight until then, so that a revocation that waits for a partition's in-flight
/// work to reach zero also waits for its completions.
struct Reports {
    tracker: Recipient<Completions>,
    /// Finished and not reported yet.
    done: Vec<Done>,
    /// Given up unfinished on purpose and not reported yet.
    released: Vec<Message>,
    /// When the oldest unreported completion was added.
    unreported_since: Option<Instant>,
}

/// A finished message waiting to be reported, and how long its successful attempt took.
struct Done {
    message: Message,
    took: Option<Duration>,
}

impl Reports {
    /// Records a finished message, with how long its attempt took when it was processed
    /// successfully (`None`: skipped or dead-lettered). Its figures are recorded with the
    /// report (its durations if it is among the report's `TIMED_PER_REPORT`).
    fn finished(&mut self, message: Message, took: Option<Duration>) {
        self.note_unreported();
        self.done.push(Done { message, took });
        if self.done.len() + self.released.len() >= REPORT_BATCH {
            self.flush();
        }
    }

    /// Records a message given up unfinished, on purpose: reported as released, never
    /// committed.
    fn released(&mut self, message: Message) {
        self.note_unreported();
        self.released.push(message);
    }

    fn is_empty(&self) -> bool {
        self.unreported_since.is_none()
    }

    fn note_unreported(&mut self) {
        if self.unreported_since.is_none() {
            self.unreported_since = Some(Instant::now());
        }
    }

    /// When the oldest completion is due to be reported.
    fn due_at(&self) -> Option<tokio::time::Instant> {
        self.unreported_since
            .map(|since| tokio::time::Instant::from_std(since + REPORT_INTERVAL))
    }

    /// Reports completions that waited for [`REPORT_INTERVAL`]: messages that run back to
    /// back without ever waiting never reach the select that reports on time.
    fn flush_if_due(&mut self) {
        if self
            .unreported_since
            .is_some_and(|since| since.elapsed() >= REPORT_INTERVAL)
        {
            self.flush();
        }
    }

    /// Tells the tracker what finished and what was given up, then lets go of the messages:
    /// only then do they leave the in-flight counts.
    fn flush(&mut self) {
        self.unreported_since = None;
        if self.done.is_empty() && self.released.is_empty() {
            return;
        }
        // Done with as the tracker hears of it (at most REPORT_INTERVAL after it finished).
        let now = unix_millis();
        let stride = (self.done.len() / TIMED_PER_REPORT).max(1);
        let finished = self
            .done
            .iter()
            .enumerate()
            .map(|(index, Done { message, took })| {
                let instruments = &message.assigned().instruments;
                let timed = index % stride == 0;
                if let Some(took) = took {
                    instruments.processed.increment(1);
                    if timed {
                        instruments.processing_duration.record(*took);
                    }
                }
                if let (true, Some(timestamp)) = (timed, message.timestamp()) {
                    let latency = now.saturating_sub(timestamp).max(0) as f64 / 1000.0;
                    instruments.end_to_end_latency.record(latency);
                }
                message.position()
            })
            .collect();
        let released = self.released.iter().map(Message::position).collect();
        self.tracker.do_send(Completions { finished, released });
        self.done.clear();
        self.released.clear();
    }
}

/// A processor's speed, measured over runs of messages processed back to back, and the
/// prefetch it implies.
#[derive(Default)]
struct Speed {
    /// The least prefetch: a batch processor's batch size, so that a batch can fill.
    floor: usize,
    run_started: Option<Instant>,
    run_length: u32,
    /// Smoothed nanoseconds per message.
    nanos_per_message: Option<f64>,
}

impl Speed {
    fn started(&mut self, credit: &Credit, limit: PrefetchLimit) -> bool {
        match self.run_started {
            None => self.run_started = Some(Instant::now()),
            Some(_) if self.run_length >= MEASURE_EVERY => return self.measure(credit, limit),
            Some(_) => {}
        }
        self.run_length += 1;
        false
    }

    /// Ends the run in progress (the queue ran dry, or it is long enough) and sets the
    /// prefetch from it. Returns whether the prefetch grew.
    fn measure(&mut self, credit: &Credit, limit: PrefetchLimit) -> bool {
        let Some(started) = self.run_started.take() else {
            return false;
        };
        let length = std::mem::take(&mut self.run_length);
        if length == 0 {
            return false;
        }
        let nanos = started.elapsed().as_nanos() as f64 / f64::from(length);
        let smoothed = match self.nanos_per_message {
            Some(previous) => previous * 0.75 + nanos * 0.25,
            None => nanos,
        };
        self.nanos_per_message = Some(smoothed);
        let by_work = limit.work.as_nanos() as f64 / smoothed.max(1.0);
        let prefetch =
            (by_work as usize).clamp(self.floor.clamp(1, limit.messages), limit.messages.max(1));
        credit.set_prefetch(prefetch)
    }
}

/// Everything of a processor task but the user's processor and the batch in progress.
struct TaskState<P> {
    index: usize,
    shared: ProcessorShared<P>,
    commands: mpsc::UnboundedReceiver<Command>,
    credit: Arc<Credit>,
    work: WorkQueue<Message>,
    reports: Reports,
    /// The batch in progress and when it started, once it waited (most work finishes at its
    /// first poll, and nothing can ask where a message is before it waits).
    running: Vec<Position>,
    running_since: Option<Instant>,
    /// Partition hooks to run before the next batch.
    hooks: VecDeque<Hook>,
    /// Something waits for this processor (a stop, a revocation, a hook): a batch filling up
    /// stops lingering.
    hurry: bool,
    /// A drain was asked for: parked lanes are given up and nothing waits for a retry.
    draining: bool,
    drains: Vec<oneshot::Sender<()>>,
    stop: Option<(Duration, oneshot::Sender<Result<(), String>>)>,
    /// Every sender is gone.
    orphaned: bool,
    speed: Speed,
    /// A moment to pass as "now" when no lane is parked (then time does not matter).
    epoch: Instant,
    /// When the previous attempt ended, while messages run back to back: the next attempt
    /// starts then, which spares a clock read per message.
    previous_end: Option<Instant>,
    /// When the last batch ended, and when the inbox was last looked at: a processor whose
    /// batches never wait still reads its commands at least every [`INBOX_AGE`].
    last_batch_end: Instant,
    last_inbox_look: Instant,
    /// A test build's injected fault: the task dies at its first message.
    dies: bool,
}

impl<P> TaskState<P> {
    fn new(
        index: usize,
        shared: ProcessorShared<P>,
        commands: mpsc::UnboundedReceiver<Command>,
        credit: Arc<Credit>,
    ) -> Self {
        let floor = shared.batch.messages;
        let now = Instant::now();
        TaskState {
            index,
            reports: Reports {
                tracker: shared.tracker.clone(),
                done: Vec::new(),
                released: Vec::new(),
                unreported_since: None,
            },
            shared,
            commands,
            credit,
            work: WorkQueue::default(),
            running: Vec::new(),
            running_since: None,
            hooks: VecDeque::new(),
            hurry: false,
            draining: false,
            drains: Vec::new(),
            stop: None,
            orphaned: false,
            speed: Speed {
                floor,
                ..Speed::default()
            },
            epoch: now,
            previous_end: None,
            last_batch_end: now,
            last_inbox_look: now,
            dies: fault::injected(Fault::ProcessorDies),
        }
    }

    /// Whether batches ran back to back for longer than [`INBOX_AGE`] since the inbox was
    /// last looked at (batches whose work never waits, such as a synchronous database call).
    fn inbox_overdue(&self) -> bool {
        self.last_batch_end
            .saturating_duration_since(self.last_inbox_look)
            >= INBOX_AGE
    }

    /// Accepts the commands waiting, reports what is due and tells the credit what started.
    fn look_at_inbox(&mut self) {
        self.last_inbox_look = self.last_batch_end;
        self.accept_waiting();
        self.reports.flush_if_due();
        // The credit is shared with the Fetcher's thread: written once in a while, not per
        // message (it then overstates what is queued, which only hands out less).
        self.count_started();
    }

    /// Now, read from the clock only when a retry may be due.
    fn clock(&self) -> Instant {
        if self.work.has_parked() {
            Instant::now()
        } else {
            self.epoch
        }
    }

    /// Tells the credit about messages that left the ready queue, and the Fetcher when that
    /// made room.
    fn count_started(&mut self) {
        let started = self.work.take_started();
        if started > 0 && self.credit.started(started) {
            self.shared.fetcher_wakeup.notify_one();
        }
    }

    /// Accepts every command waiting, without waiting.
    fn accept_waiting(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.accept(command),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.orphaned = true;
                    return;
                }
            }
        }
    }

    fn accept(&mut self, command: Command) {
        self.hurry |= !matches!(command, Command::Work(_) | Command::Locate { .. });
        match command {
            Command::Work(messages) if self.draining => {
                // Handed out after the drain began (a Fetcher late to stop fetching): not
                // started, so left for the next reader, in order after what was finished.
                log::debug!(
                    "processor {}: {} messages handed out while draining are left for the \
                     next reader",
                    self.index,
                    messages.len()
                );
                if self.credit.started(messages.len()) {
                    self.shared.fetcher_wakeup.notify_one();
                }
                for message in messages {
                    self.reports.released(message);
                }
            }
            Command::Work(messages) => self.work.push(messages),
            Command::Hook(hook) => self.hooks.push_back(hook),
            Command::Forget(assignments) => {
                // Retries of a revoked partition cannot be waited for, and what is fenced
                // already is skipped: dropped at once, unreported (the tracker forgets them).
                let given_up = self
                    .work
                    .give_up(|lane| assignments.contains(&lane.assignment()));
                let fenced = self.work.remove(|message| {
                    assignments.contains(&message.assigned().assignment)
                        && message.assigned().is_fenced()
                });
                self.count_started();
                drop((given_up, fenced));
            }
            Command::Drain(reply) => {
                if !self.draining {
                    self.draining = true;
                    let given_up = self.work.give_up(|_| true);
                    self.count_started();
                    if !given_up.is_empty() {
                        log::warn!(
                            "processor {}: stopping with {} messages waiting for a retry; they \
                             are not committed and are delivered again after the restart",
                            self.index,
                            given_up.len()
                        );
                    }
                    for message in given_up {
                        self.reports.released(message);
                    }
                }
                self.drains.push(reply);
            }
            Command::Stop { budget, reply } => self.stop = Some((budget, reply)),
            Command::Locate { position, reply } => {
                let _ = reply.send(self.locate(position));
            }
        }
    }

    fn locate(&self, position: Position) -> Option<Sighting> {
        if let Some(since) = self.running_since
            && self.running.contains(&position)
        {
            return Some(Sighting::InProgress {
                processor: self.index,
                since,
            });
        }
        self.work
            .locate(|message| message.position() == position)
            .map(|whereabouts| Sighting::Held {
                processor: self.index,
                whereabouts,
            })
    }

    /// Nothing can run now: report, measure, and answer the drains once nothing is held.
    fn idle(&mut self) {
        if self.draining && self.work.has_parked() {
            // Parked for good while draining (the system stops on a message): given up.
            let given_up = self.work.give_up(|_| true);
            self.count_started();
            for message in given_up {
                self.reports.released(message);
            }
        }
        let reported = !self.reports.is_empty();
        self.reports.flush();
        // What was reported left the in-flight counts: the Fetcher may resume a partition.
        let grew = self.speed.measure(&self.credit, self.shared.prefetch);
        if reported || grew {
            self.shared.fetcher_wakeup.notify_one();
        }
        if self.draining && self.work.is_empty() {
            for reply in self.drains.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Drops everything held unfinished, unreported: the drain was abandoned.
    fn abandon(&mut self) {
        let held = self.work.take_all();
        self.count_started();
        drop(held);
        self.reports.flush();
    }

    /// Waits for a command, a retry coming due, or the abandonment of the drain.
    async fn wait(&mut self) {
        let retry_at = self
            .work
            .next_retry_at()
            .map(tokio::time::Instant::from_std);
        let abandon = self.shared.abandon.clone();
        tokio::select! {
            biased;
            () = abandon.cancelled(), if !abandon.is_cancelled() => {}
            command = self.commands.recv() => match command {
                Some(command) => self.accept(command),
                None => self.orphaned = true,
            },
            () = sleep_until_some(retry_at) => {}
        }
    }

    /// Waits, while a batch fills, for a command (new messages among them), the abandonment
    /// of the drain, or `deadline`; reports completions on time meanwhile.
    async fn linger_until(&mut self, deadline: Instant) {
        let abandon = self.shared.abandon.clone();
        let report_at = self.reports.due_at();
        tokio::select! {
            biased;
            () = abandon.cancelled() => {}
            command = self.commands.recv(), if !self.orphaned => match command {
                Some(command) => self.accept(command),
                None => self.orphaned = true,
            },
            () = sleep_until_some(report_at) => self.reports.flush(),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
        }
    }

    /// Runs a batch's user code as [`serve_while`](Self::serve_while) does, and records
    /// the message as in progress while it waits.
    async fn serve_process<F: Future>(&mut self, batch: &[Message], work: F) -> Option<F::Output> {
        let mut work = pin!(work);
        // Most work finishes at its first poll: then no clock is read (nothing can ask where
        // the message is before it waits).
        if let Poll::Ready(output) = futures::poll!(work.as_mut()) {
            return Some(output);
        }
        self.running.extend(batch.iter().map(Message::position));
        self.running_since = Some(Instant::now());
        let output = self.serve_while(work).await;
        self.running.clear();
        self.running_since = None;
        output
    }

    /// Runs `work` to its end while accepting commands and reporting completions on time.
    /// `None` when the drain was abandoned meanwhile (`work` is dropped unfinished).
    async fn serve_while<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = pin!(work);
        // Most work finishes at its first poll; only work that waits needs the select.
        if let Poll::Ready(output) = futures::poll!(work.as_mut()) {
            return Some(output);
        }
        let abandon = self.shared.abandon.clone();
        let mut abandoned = pin!(abandon.cancelled());
        loop {
            let report_at = self.reports.due_at();
            tokio::select! {
                biased;
                () = &mut abandoned => return None,
                output = &mut work => return Some(output),
                command = self.commands.recv(), if !self.orphaned => match command {
                    Some(command) => self.accept(command),
                    None => self.orphaned = true,
                },
                () = sleep_until_some(report_at) => self.reports.flush(),
            }
        }
    }
}

/// Where a batch is, for log lines: its first message, and its last when there are more.
fn describe(batch: &[Message]) -> String {
    let place = |message: &Message| format!("{}@{}", message.topic_partition(), message.offset());
    match batch {
        [] => "an empty batch".to_owned(),
        [only] => place(only),
        [first, .., last] => format!("{}..{}", place(first), place(last)),
    }
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
