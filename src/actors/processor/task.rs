//! The task's loop, `ProcessorTask::run`: the one place where batches run, one at a time, each
//! filled, run to its end and filed before the next; and what follows a batch (the rebuild
//! after a panic, the dead letters).

use std::time::Instant;

use tracing::Instrument;

use super::LOG_TARGET;
use super::filer::Filer;
use super::instance::{Attempt, Instance, drop_quietly};
use super::state::TaskState;
use crate::batch::{Batch, Ended, file};
use crate::lanes::Item;
use crate::message::Message;
use crate::report::StopReason;
use crate::trace;
use crate::work::Work;

/// How often inbox commands are looked at while messages run back to back.
const INBOX_EVERY: u32 = 32;

/// A processor task: the user's processor, the batch in progress, and everything else.
pub(super) struct ProcessorTask<W> {
    /// Borrowed by the attempt in progress, and by nothing else.
    pub(super) instance: Instance<W>,
    /// The batch in progress (one message for a `Processor`); empty between batches. Kept to
    /// spare an allocation per batch.
    pub(super) batch: Batch<Message>,
    /// Everything else: changed between attempts and by commands accepted during one.
    pub(super) state: TaskState<W>,
}

impl<W: Work> ProcessorTask<W> {
    pub(super) async fn run(&mut self) {
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
            Attempt::Failed { error, advice, .. } => {
                if self.batch.len() > 1 {
                    log::warn!(
                        target: LOG_TARGET,
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
                    advice: *advice,
                }
            }
            Attempt::Partial(failures) => {
                if let Some(index) = failures.highest_index().filter(|&i| i >= self.batch.len()) {
                    log::warn!(
                        target: LOG_TARGET,
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
        // A retry waits its backoff from the end of the failed attempt (not `state.clock()`,
        // which reads the clock only when something is parked already).
        let now = ended;
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
    /// them, and not at all when other messages wait to run (a retry that came due among
    /// them), when a stop, a revocation or a hook waits for this processor, or when nothing
    /// more can come (the processor holds all its credit allows).
    async fn fill(&mut self) {
        let limit = self.state.shared.batch;
        let deadline = Instant::now() + limit.linger;
        loop {
            let complete = self.batch.fill(&mut self.state.work, limit);
            let state = &mut self.state;
            if complete
                || state.hurry
                || state.draining
                || state.stop.is_some()
                || state.shared.abandon.is_cancelled()
                || Instant::now() >= deadline
            {
                return;
            }
            if state.count_started() > 0 {
                // What was taken made room: the Fetcher may hand out more while this batch
                // waits, not only once the queue is down to half.
                state.shared.fetcher_wakeup.notify_one();
            }
            // A retry that came due waits to run too.
            let retry_at = state.work.next_retry_at();
            if retry_at.is_some_and(|at| at <= Instant::now()) {
                return;
            }
            if state.credit.available() == 0 {
                // The Fetcher hands out nothing more until something starts: what may still
                // come has been sent already, or this batch runs as it is.
                if state.accept_waiting() {
                    continue;
                }
                return;
            }
            state
                .linger_until(retry_at.map_or(deadline, |at| at.min(deadline)))
                .await;
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
            target: LOG_TARGET,
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
                    target: LOG_TARGET,
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
            log::error!(target: LOG_TARGET, "{place}: no dead-letter producer; stopping");
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
                log::warn!(
                    target: LOG_TARGET,
                    "{place}: sent to {topic} after {attempts} attempts: {error}"
                );
                state
                    .shared
                    .metrics
                    .dead_lettered(&message.assigned().instruments);
                state.work.finished(&message);
                state.reports.finished(message, None);
            }
            Some(Err(dead_letter_error)) => {
                log::error!(target: LOG_TARGET, "{place}: {dead_letter_error}; stopping");
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
        Some("its partition was revoked, or sought")
    } else {
        None
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
