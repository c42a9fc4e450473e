//! A processor: one long-lived task that owns the user's [`Processor`](crate::Processor) and
//! runs the messages handed to it, one at a time, under the failure policy.
//!
//! **Exactly one work item runs at a time, and the user's processor is never shared**: the
//! task's loop takes the next item from its [`WorkQueue`](crate::lanes::WorkQueue) (a retry
//! that came due, else the oldest message whose lane is not parked), runs it to its end, files
//! the outcome, and only then takes the next. New messages, commands and timers are only
//! *accepted* meanwhile (they change the queue, never the processor). That loop,
//! `ProcessorTask::run` in `task.rs`, is the one place that enforces it.
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
//! both are defined with the rest of the protocol in `actors::messages`. Here: what the
//! processors share and how a task starts; one concern a file besides: `task.rs` (the loop),
//! `instance.rs` (the user's processor, inside `catch_unwind`), `state.rs` (the queue and the
//! commands), `filer.rs` (what a batch's outcome does), `reports.rs` (completions to the
//! tracker), `speed.rs` (the prefetch).

use std::sync::Arc;

use actix::{ArbiterHandle, Recipient};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::actors::messages::{Command, Completions, ProcessorHandle};
use crate::batch::Batch;
use crate::dead_letter::DeadLetters;
use crate::failure::FailurePolicy;
use crate::flow::{BatchLimit, Credit, PrefetchLimit};
use crate::metrics::SystemMetrics;
use crate::report::StopReason;
use crate::stop::{Abandon, StopHandle};
use crate::work::Work;

mod filer;
mod instance;
mod reports;
mod speed;
mod state;
mod task;

pub(crate) use instance::{Attempt, Instance};
use state::TaskState;
use task::ProcessorTask;

/// The target of every line a processor logs, whichever of its files writes it: one target
/// for the actor, which log filters name.
const LOG_TARGET: &str = module_path!();

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

impl ProcessorShared<()> {
    /// What a route's processors share: this, with the route's factory.
    pub(crate) fn with_factory<W>(
        self,
        factory: Arc<dyn Fn() -> W + Send + Sync>,
    ) -> ProcessorShared<W> {
        ProcessorShared {
            factory,
            tracker: self.tracker,
            stop: self.stop,
            abandon: self.abandon,
            metrics: self.metrics,
            policy: self.policy,
            dead_letters: self.dead_letters,
            prefetch: self.prefetch,
            batch: self.batch,
            fetcher_wakeup: self.fetcher_wakeup,
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

#[cfg(test)]
mod tests;
