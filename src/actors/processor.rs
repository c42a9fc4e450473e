//! A processor actor: runs the user's [`Processor`] on the messages routed to it, one at a
//! time, and reports each success to the OffsetTracker.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::Processor;
use crate::actors::offset_tracker::{Finished, OffsetTracker};
use crate::flow::{InFlight, Releases};
use crate::message::Message;
use crate::offsets::Position;
use crate::report::StopReason;
use crate::stop::StopHandle;

/// The longest a finished message waits before the tracker hears of it. Completions are
/// reported in batches to keep the hot path cheap; this bounds how stale a periodic commit is.
const REPORT_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) struct ProcessorActor<P: Processor> {
    index: usize,
    /// Lent to the future that runs a batch, and back between batches. Boxed because an actor
    /// must be `Unpin` and user processors need not be.
    processor: Option<Box<P>>,
    tracker: Addr<OffsetTracker>,
    stop: StopHandle,
    /// Cancelled when the drain is abandoned: the message in progress is dropped unfinished
    /// and the queued ones are skipped.
    abandon: CancellationToken,
    /// Set after a failure: nothing more is processed, so that no later message of the failed
    /// message's partition is processed before it.
    failed: bool,
    /// The system's in-flight count, released as messages are done with.
    in_flight: Arc<InFlight>,
}

impl<P: Processor> ProcessorActor<P> {
    pub(crate) fn new(
        index: usize,
        processor: P,
        tracker: Addr<OffsetTracker>,
        stop: StopHandle,
        abandon: CancellationToken,
        in_flight: Arc<InFlight>,
    ) -> Self {
        ProcessorActor {
            index,
            processor: Some(Box::new(processor)),
            tracker,
            stop,
            abandon,
            failed: false,
            in_flight,
        }
    }

    fn lend_processor(&mut self) -> Box<P> {
        self.processor
            .take()
            .expect("a processor actor handles one message at a time")
    }
}

impl<P: Processor> Actor for ProcessorActor<P> {
    type Context = Context<Self>;
}

/// Runs the processor's [`on_start`](Processor::on_start) hook.
#[derive(Message)]
#[rtype(result = "anyhow::Result<()>")]
pub(crate) struct StartProcessor;

impl<P: Processor> Handler<StartProcessor> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, anyhow::Result<()>>;

    fn handle(&mut self, _: StartProcessor, _: &mut Self::Context) -> Self::Result {
        let mut processor = self.lend_processor();
        AtomicResponse::new(Box::pin(
            async move {
                let result = processor.on_start().await;
                (processor, result)
            }
            .into_actor(self)
            .map(|(processor, result), actor, _| {
                actor.processor = Some(processor);
                result
            }),
        ))
    }
}

/// Messages to process, in offset order per partition.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Process(pub(crate) Vec<Message>);

/// Why a batch ended early.
enum Interruption {
    Abandoned,
    Failed(StopReason),
}

impl<P: Processor> Handler<Process> for ProcessorActor<P> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, Process(messages): Process, _: &mut Self::Context) -> Self::Result {
        let mut releases = Releases::new(self.in_flight.clone());
        if self.failed || self.abandon.is_cancelled() {
            for message in &messages {
                releases.add(message.assigned(), message.in_flight_bytes());
            }
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let processor = self.lend_processor();
        let tracker = self.tracker.clone();
        let abandon = self.abandon.clone();
        AtomicResponse::new(Box::pin(
            process_batch(processor, messages, tracker, releases, abandon)
                .into_actor(self)
                .map(|(processor, interruption), actor, _| {
                    actor.processor = Some(processor);
                    match interruption {
                        None | Some(Interruption::Abandoned) => {}
                        Some(Interruption::Failed(reason)) => {
                            log::error!("processor {}: {reason}; stopping", actor.index);
                            actor.failed = true;
                            actor.stop.request_graceful(reason);
                        }
                    }
                }),
        ))
    }
}

/// Processes messages one by one until done, abandoned or failed, reporting successes to the
/// tracker at least every [`REPORT_INTERVAL`] and always before returning. Every message is
/// released from the in-flight count as it is done with, and the unprocessed rest at the end.
async fn process_batch<P: Processor>(
    mut processor: Box<P>,
    messages: Vec<Message>,
    tracker: Addr<OffsetTracker>,
    mut releases: Releases,
    abandon: CancellationToken,
) -> (Box<P>, Option<Interruption>) {
    let mut finished: Vec<Position> = Vec::with_capacity(messages.len());
    // Made once per batch: registering a timer or a cancellation waiter per message would
    // cost more than a fast processor's whole work.
    let mut abandoned = pin!(abandon.cancelled());
    let mut report_timer = pin!(sleep_until(Instant::now() + REPORT_INTERVAL));
    let mut interruption = None;
    let mut done = 0;
    for message in &messages {
        if abandon.is_cancelled() {
            interruption = Some(Interruption::Abandoned);
            break;
        }
        let mut processing = pin!(AssertUnwindSafe(processor.process(message)).catch_unwind());
        // Most processors finish at the first poll; only those that wait need the select.
        let outcome = match futures::poll!(processing.as_mut()) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                let outcome = loop {
                    tokio::select! {
                        biased;
                        () = &mut abandoned => break None,
                        outcome = &mut processing => break Some(outcome),
                        () = &mut report_timer, if !finished.is_empty() => {
                            tracker.do_send(Finished(std::mem::take(&mut finished)));
                            releases.flush();
                            report_timer.as_mut().reset(Instant::now() + REPORT_INTERVAL);
                        }
                    }
                };
                match outcome {
                    Some(outcome) => outcome,
                    None => {
                        interruption = Some(Interruption::Abandoned);
                        break;
                    }
                }
            }
        };
        done += 1;
        releases.add(message.assigned(), message.in_flight_bytes());
        let failure = match outcome {
            Ok(Ok(())) => {
                finished.push(message.position());
                continue;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        interruption = Some(Interruption::Failed(StopReason::ProcessingFailed {
            partition: message.topic_partition().clone(),
            offset: message.offset(),
            error: failure,
        }));
        break;
    }
    if !finished.is_empty() {
        tracker.do_send(Finished(finished));
    }
    for message in &messages[done..] {
        releases.add(message.assigned(), message.in_flight_bytes());
    }
    drop(releases);
    (processor, interruption)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_owned())
}

/// Answers once every message queued before it was handled: the drain barrier. The Fetcher
/// stops dispatching before the barrier is sent, so nothing can queue up behind it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

impl<P: Processor> Handler<Drain> for ProcessorActor<P> {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Self::Context) {}
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
            .map(|(processor, result), actor, ctx| {
                actor.processor = Some(processor);
                ctx.stop();
                result
            }),
        ))
    }
}
