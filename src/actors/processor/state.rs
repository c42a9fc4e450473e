//! Everything of a processor task but the user's processor and the batch in progress: its
//! queue, its reports, its speed, and the commands it accepts, between batches and while one
//! runs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::LOG_TARGET;
use super::ProcessorShared;
use super::reports::Reports;
use super::speed::Speed;
use crate::actors::messages::{Command, Hook};
use crate::fault::{self, Fault};
use crate::flow::Credit;
use crate::lanes::WorkQueue;
use crate::message::Message;
use crate::offsets::Position;
use crate::stall::Sighting;

/// How long batches run back to back at most before the inbox is looked at: a rebalance's
/// hooks and drain, and a stop, wait for no more than one batch past it.
const INBOX_AGE: Duration = Duration::from_millis(1);

/// Everything of a processor task but the user's processor and the batch in progress.
pub(super) struct TaskState<P> {
    pub(super) index: usize,
    pub(super) shared: ProcessorShared<P>,
    commands: mpsc::UnboundedReceiver<Command>,
    pub(super) credit: Arc<Credit>,
    pub(super) work: WorkQueue<Message>,
    pub(super) reports: Reports,
    /// The batch in progress and when it started, once it waited (most work finishes at its
    /// first poll, and nothing can ask where a message is before it waits).
    running: Vec<Position>,
    running_since: Option<Instant>,
    /// Partition hooks to run before the next batch.
    pub(super) hooks: VecDeque<Hook>,
    /// Something waits for this processor (a stop, a revocation, a hook): a batch filling up
    /// stops lingering.
    pub(super) hurry: bool,
    /// A drain was asked for: parked lanes are given up and nothing waits for a retry.
    pub(super) draining: bool,
    drains: Vec<oneshot::Sender<()>>,
    pub(super) stop: Option<(Duration, oneshot::Sender<Result<(), String>>)>,
    /// Every sender is gone.
    pub(super) orphaned: bool,
    pub(super) speed: Speed,
    /// A moment to pass as "now" when no lane is parked (then time does not matter).
    epoch: Instant,
    /// When the previous attempt ended, while messages run back to back: the next attempt
    /// starts then, which spares a clock read per message.
    pub(super) previous_end: Option<Instant>,
    /// When the last batch ended, and when the inbox was last looked at: a processor whose
    /// batches never wait still reads its commands at least every [`INBOX_AGE`].
    pub(super) last_batch_end: Instant,
    last_inbox_look: Instant,
    /// A test build's injected fault: the task dies at its first message.
    pub(super) dies: bool,
}

impl<P> TaskState<P> {
    pub(super) fn new(
        index: usize,
        shared: ProcessorShared<P>,
        commands: mpsc::UnboundedReceiver<Command>,
        credit: Arc<Credit>,
    ) -> Self {
        let floor = shared.batch.messages;
        let now = Instant::now();
        TaskState {
            index,
            reports: Reports::new(shared.tracker.clone()),
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
            speed: Speed::new(floor),
            epoch: now,
            previous_end: None,
            last_batch_end: now,
            last_inbox_look: now,
            dies: fault::injected(Fault::ProcessorDies),
        }
    }

    /// Whether batches ran back to back for longer than [`INBOX_AGE`] since the inbox was
    /// last looked at (batches whose work never waits, such as a synchronous database call).
    pub(super) fn inbox_overdue(&self) -> bool {
        self.last_batch_end
            .saturating_duration_since(self.last_inbox_look)
            >= INBOX_AGE
    }

    /// Accepts the commands waiting, reports what is due and tells the credit what started.
    pub(super) fn look_at_inbox(&mut self) {
        self.last_inbox_look = self.last_batch_end;
        self.accept_waiting();
        self.reports.flush_if_due();
        // The credit is shared with the Fetcher's thread: written once in a while, not per
        // message (it then overstates what is queued, which only hands out less).
        self.count_started();
    }

    /// Now, read from the clock only when a retry may be due.
    pub(super) fn clock(&self) -> Instant {
        if self.work.has_parked() {
            Instant::now()
        } else {
            self.epoch
        }
    }

    /// Tells the credit about messages that left the ready queue, and the Fetcher when that
    /// made room. Returns how many left.
    pub(super) fn count_started(&mut self) -> usize {
        let started = self.work.take_started();
        if started > 0 && self.credit.started(started) {
            self.shared.fetcher_wakeup.notify_one();
        }
        started
    }

    /// Accepts every command waiting, without waiting. Returns whether there was any.
    pub(super) fn accept_waiting(&mut self) -> bool {
        let mut accepted = false;
        loop {
            match self.commands.try_recv() {
                Ok(command) => {
                    self.accept(command);
                    accepted = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => return accepted,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.orphaned = true;
                    return accepted;
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
                    target: LOG_TARGET,
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
                            target: LOG_TARGET,
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
    pub(super) fn idle(&mut self) {
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
    pub(super) fn abandon(&mut self) {
        let held = self.work.take_all();
        self.count_started();
        drop(held);
        self.reports.flush();
    }

    /// Waits for a command, a retry coming due, or the abandonment of the drain.
    pub(super) async fn wait(&mut self) {
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
    pub(super) async fn linger_until(&mut self, deadline: Instant) {
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
    pub(super) async fn serve_process<F: Future>(
        &mut self,
        batch: &[Message],
        work: F,
    ) -> Option<F::Output> {
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
    pub(super) async fn serve_while<F: Future>(&mut self, work: F) -> Option<F::Output> {
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

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
