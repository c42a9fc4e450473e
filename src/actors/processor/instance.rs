//! The user's processor inside the task: made with the factory, run, asked for its partition
//! hooks and stopped, every call inside `catch_unwind`, so that a panic in user code is an
//! outcome, never the task's death.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::LOG_TARGET;
use crate::actors::messages::Hook;
use crate::failure::{self, Advice};
use crate::message::Message;
use crate::processor::BatchFailures;
use crate::work::Work;

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
        advice: Advice,
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
                    advice: failure::advice(&error),
                    error: format!("{error:#}"),
                    panicked: false,
                },
            },
            Err(panic) => Attempt::Failed {
                error: format!("panicked: {}", panic_message(&panic)),
                advice: Advice::Backoff,
                panicked: true,
            },
        }
    }

    /// Runs a partition hook and sends its outcome; a panic in it is an error.
    pub(super) async fn run_hook(&mut self, index: usize, hook: Hook) {
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
    pub(super) async fn stop(&mut self, index: usize, budget: Duration) -> Result<(), String> {
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
pub(super) fn drop_quietly<P>(processor: Box<P>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(processor))) {
        log::warn!(target: LOG_TARGET, "dropping a processor panicked: {}", panic_message(&panic));
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_owned())
}
