//! The Fetcher: the only owner of the rdkafka consumer.
//!
//! It runs on an arbiter (a thread) of its own, because librdkafka runs the rebalance
//! callbacks inside `poll`, and a revocation waits there for the processors, which never need
//! this thread. Each round it serves the consumer's events, resumes partitions that drained,
//! takes a batch of messages from the fetch queue into the partitions' backlogs (`Routes`),
//! tells the OffsetTracker what it took, and hands out what the processors have room for.
//! Between rounds it waits on one [`Notify`], woken by librdkafka (messages, events, commit
//! results), by processors (room for more) and by controls asked for (a pause, a seek), so
//! commands are handled at once and an idle Fetcher costs nothing. Commits, pausing and closing happen here too, between rounds.
//!
//! The messages it handles, and the [`FetcherInbox`] through which the OffsetTracker sends
//! them, are defined with the rest of the protocol in `actors::messages`; the handlers are
//! here, with the rounds. The rest is one concern a file: `context.rs` (the consumer's
//! [`FetchContext`], which the callbacks share with the Fetcher), `rebalance.rs` (the
//! rebalance callbacks), `controls.rs` (the pauses and seeks asked for by processing code and
//! the application) and `consumer.rs` (pausing, resuming, seeking, acting on errors,
//! closing).

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use actix::prelude::*;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::Notify;

use crate::actors::messages::{
    Close, Closed, Commit, CommitMode, Completions, Fetched, FetcherInbox, HighWatermarks, Locate,
    ProcessorHandle, StopFetching, TrackerInbox,
};
use crate::commits::CommitLine;
use crate::fault::{self, Fault};
use crate::metrics::SystemMetrics;
use crate::native::{self, CommitFailure, CommitQueue, FetchQueue, QueueWakeup};
use crate::offsets::CommitPoint;
use crate::stall::Sighting;
use crate::stop::StopHandle;

mod consumer;
mod context;
mod controls;
mod rebalance;

use consumer::{close_in_background, fetch_again, pause, poll_failed, record_errors, resume};
pub(crate) use context::{FetchContext, Revocation};
pub(crate) use controls::{ControlDesk, TimeLookups};

/// The target of every line the Fetcher logs, whichever of its files writes it: one target
/// for the actor, which log filters name (and the README shows).
const LOG_TARGET: &str = module_path!();

/// The longest the Fetcher waits between two rounds when nothing wakes it: keeps the consumer
/// polled and the figures fresh.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The most messages taken per round.
const MAX_BATCH: usize = 1024;
/// The most consumer events served per round; more wait for the next, at once.
const MAX_EVENTS: usize = 16;

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
    /// The controls asked for (`crate::control`), carried out at the start of a round.
    controls: ControlDesk,
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
        controls: ControlDesk,
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
            controls,
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
        if self.state == State::Fetching {
            self.serve_controls();
        }
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
        let mut total = None;
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
                pause(consumer, &taken.to_pause, Some(&self.metrics));
            }
            if !taken.errors.is_empty() {
                record_errors(consumer, &self.stop, std::mem::take(&mut taken.errors));
            }
            self.metrics.record_peaks(taken.partition_peak, taken.total);
            total = Some(taken.total);
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
        let total = total.unwrap_or_else(|| routes.total());
        self.metrics.set_flow(
            total,
            routes.waiting(),
            routes.paused(),
            routes.paused_on_request(),
        );
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

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(PollRound);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.close();
    }
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
                .filter(|p| routes.committable(&p.partition) == Some(p.assignment))
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
        self.metrics.set_flow(
            routes.total(),
            routes.waiting(),
            routes.paused(),
            routes.paused_on_request(),
        );
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

/// The partitions of a list, for log lines.
fn names(partitions: &TopicPartitionList) -> String {
    let names: Vec<String> = partitions
        .elements()
        .iter()
        .map(|p| format!("{}/{}", p.topic(), p.partition()))
        .collect();
    names.join(", ")
}
