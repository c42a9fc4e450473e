//! The Supervisor: starts the other actors, waits for a stop request and runs the shutdown
//! phases under one deadline.
//!
//! Startup order: the OffsetTracker, then the consumer (the brokers and topics are checked
//! before any user code runs), then the processors (their `on_start` hooks), then the Fetcher,
//! which subscribes. Shutdown order: stop fetching, drain the processors' mailboxes, run their
//! `on_stop` hooks, commit synchronously, close the consumer (leaving the group).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};

use crate::actors::fetcher::{FetchContext, Fetcher, Revocation};
use crate::actors::messages::{
    Attach, Close, Closed, CommitNow, FinalCommitFailure, Others, ProcessorHandle, Report,
    StopFetching, Unsettled,
};
use crate::actors::offset_tracker::OffsetTracker;
use crate::actors::processor::{self, ProcessorShared};
use crate::client_trouble;
use crate::config::ConsumerConfig;
use crate::dead_letter::DeadLetters;
use crate::failure::Exhausted;
use crate::flow::{BatchLimit, FlowSettings, PrefetchLimit};
use crate::health::Stage;
use crate::instruments::GroupInstruments;
use crate::metrics::SystemMetrics;
use crate::report::{Phase, PhaseReport, ShutdownReport, StopReason};
use crate::stop::{Abandon, StopHandle, StopRequest, abandon_requested, stop_requested};
use crate::trouble::Trouble;
use crate::work::Work;
use crate::{Error, Result};

/// The least the final commit and the close get, even when the drain used up the deadline:
/// skipping the commit would turn finished work into duplicates.
const FINAL_STEP_FLOOR: Duration = Duration::from_millis(500);
/// The most of the shutdown timeout kept back from the drain for the later phases.
const MAX_RESERVE: Duration = Duration::from_secs(5);
/// How long the close waits for the group's answer to its leave once everything is committed.
/// A close takes about 100 ms; longer, the coordinator holds the leave behind a rebalance.
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);
/// How often the Supervisor checks that its actors are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long one metadata request at start waits, before the start looks at why it failed.
const METADATA_ATTEMPT: Duration = Duration::from_millis(500);
/// The most events served after a metadata request at start failed: librdkafka's lines and
/// errors of half a second of reconnections.
const EVENTS_PER_ATTEMPT: usize = 64;

/// A started system: what `ConsumerSystem` needs to wait for it and clean up after it.
pub(crate) struct Started {
    pub(crate) report: oneshot::Receiver<ShutdownReport>,
    pub(crate) arbiters: Vec<Arbiter>,
    pub(crate) metrics: Arc<SystemMetrics>,
}

pub(crate) struct Supervisor {
    /// Taken when the stop request arrives: a system shuts down once.
    shutdown: Option<ShutdownPlan>,
    report_to: Option<oneshot::Sender<ShutdownReport>>,
    /// The actors whose death stops the system.
    watched: Option<(Addr<Fetcher>, Addr<OffsetTracker>, StopHandle)>,
    metrics: Arc<SystemMetrics>,
}

impl Supervisor {
    /// Starts every actor of a system. Fails, having released what it started, when the
    /// brokers or topics cannot be reached or a processor fails to start.
    pub(crate) async fn start<W, F>(
        config: ConsumerConfig,
        factory: F,
        stop: StopHandle,
        metrics: Arc<SystemMetrics>,
    ) -> Result<Started>
    where
        W: Work,
        F: Fn() -> W + Send + Sync + 'static,
    {
        let tracker = OffsetTracker::new(
            config.commit_interval,
            config.stall_timeout,
            metrics.clone(),
            stop.clone(),
        )
        .start();
        let tracker_inbox = OffsetTracker::inbox(&tracker);
        let flow = FlowSettings {
            ordering: config.ordering,
            partition_limit: config.partition_limit,
            total_limit: config.total_limit,
            read_headers: config.read_headers,
        };
        let consumer: BaseConsumer<FetchContext> = config
            .client_config()
            .set_log_level(client_trouble::librdkafka_log_level())
            .create_with_context(FetchContext::new(
                tracker_inbox.clone(),
                metrics.clone(),
                config.processors,
                flow,
                config.group_id.clone(),
            ))?;
        let consumer = check_cluster(consumer, &config).await?;

        let mut arbiters = Vec::new();
        let workers = (0..config.worker_threads)
            .map(|_| Arbiter::try_new().map_err(|error| Error::Runtime(error.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let abandon = Abandon::default();
        let dead_letters = match config.failure_policy.exhausted() {
            Exhausted::DeadLetter { topic } => Some(DeadLetters::new(
                &config.brokers,
                topic.clone(),
                &config.dead_letter_client_options(),
                metrics.clone(),
            )?),
            _ => None,
        };
        let fetcher_wakeup = Arc::new(Notify::new());
        let batch = if W::BATCHES {
            config.batch
        } else {
            BatchLimit::ONE
        };
        let shared = ProcessorShared {
            factory: Arc::new(factory),
            tracker: tracker_inbox.completions.clone(),
            stop: stop.clone(),
            abandon: abandon.clone(),
            metrics: metrics.clone(),
            policy: config.failure_policy.clone(),
            dead_letters,
            prefetch: PrefetchLimit {
                // A batch processor holds at least a batch.
                messages: config.prefetch.messages.max(batch.messages),
                ..config.prefetch
            },
            batch,
            fetcher_wakeup: fetcher_wakeup.clone(),
        };
        let (processors, starts): (Vec<ProcessorHandle>, Vec<_>) = (0..config.processors)
            .map(|index| {
                processor::spawn(
                    index,
                    shared.clone(),
                    &workers[index % workers.len()].handle(),
                )
            })
            .unzip();
        arbiters.extend(workers);

        let starts = join_all(starts).await;
        let mut failed_start = None;
        let mut started = Vec::new();
        for (index, result) in starts.into_iter().enumerate() {
            match result {
                Ok(Ok(())) => started.push(&processors[index]),
                Ok(Err(source)) => {
                    failed_start.get_or_insert(Error::ProcessorStart {
                        processor: index,
                        source,
                    });
                }
                Err(_) => {
                    failed_start.get_or_insert(Error::Runtime(format!(
                        "processor {index} vanished before it started"
                    )));
                }
            }
        }
        if let Some(error) = failed_start {
            // Release what the processors that did start opened; the others opened nothing.
            let budget = config.shutdown_timeout;
            let stops = join_all(started.iter().map(|p| p.stop(budget)));
            let _ = timeout(budget, stops).await;
            stop_arbiters(arbiters);
            return Err(error);
        }

        consumer.context().set_revocation(Revocation {
            processors: processors.clone(),
            drain_timeout: config.rebalance_drain_timeout,
            hooks: W::PARTITION_HOOKS,
            stop: stop.clone(),
        });
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let fetch_arbiter =
            Arbiter::try_new().map_err(|error| Error::Runtime(error.to_string()))?;
        let fetcher_stop = stop.clone();
        let fetcher_tracker = tracker_inbox;
        let fetcher_processors = processors.clone();
        let fetcher = Fetcher::start_in_arbiter(&fetch_arbiter.handle(), move |_| {
            Fetcher::new(
                consumer,
                fetcher_tracker,
                fetcher_processors,
                fetcher_stop,
                fetcher_wakeup,
            )
        });
        arbiters.push(fetch_arbiter);
        tracker.do_send(Attach(Others {
            fetcher: Fetcher::inbox(&fetcher),
            processors: processors.clone(),
        }));

        let (report_to, report) = oneshot::channel();
        log::info!(
            "started: group {} on {}, topics {:?}, {} processors on {} threads",
            config.group_id,
            config.brokers,
            config.topics,
            config.processors,
            config.worker_threads
        );
        let shutdown = ShutdownPlan {
            metrics: metrics.clone(),
            timeout: config.shutdown_timeout,
            requests: stop.subscribe(),
            abandon,
            tracker: tracker.clone(),
            fetcher: fetcher.clone(),
            processors,
        };
        Supervisor {
            shutdown: Some(shutdown),
            report_to: Some(report_to),
            watched: Some((fetcher, tracker, stop)),
            metrics: metrics.clone(),
        }
        .start();
        Ok(Started {
            report,
            arbiters,
            metrics,
        })
    }
}

/// Fails fast, with the setting at fault, when the brokers do not answer or a topic is missing.
async fn check_cluster(
    consumer: BaseConsumer<FetchContext>,
    config: &ConsumerConfig,
) -> Result<BaseConsumer<FetchContext>> {
    let (brokers, topics, wait) = (
        config.brokers.clone(),
        config.topics.clone(),
        config.startup_timeout,
    );
    let dead_letter_topics: Vec<String> = match config.failure_policy.exhausted() {
        Exhausted::DeadLetter { topic: Some(topic) } => vec![topic.clone()],
        Exhausted::DeadLetter { topic: None } => {
            topics.iter().map(|topic| format!("{topic}.dlq")).collect()
        }
        _ => Vec::new(),
    };
    // Fetching metadata blocks; keep it off the system's thread.
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + wait;
        let metadata = loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            match consumer.fetch_metadata(None, remaining.min(METADATA_ATTEMPT)) {
                Ok(metadata) => break metadata,
                Err(source) => {
                    // librdkafka reports why as events: serve them, so that the context
                    // learns it; refused credentials and failed TLS never heal by waiting.
                    // Its log lines come through the same queue, and a poll that serves one
                    // returns nothing, as one that finds the queue empty does: stopping
                    // there served one line per attempt, and under load the lines of its
                    // reconnections kept a TLS failure's event waiting past the startup
                    // timeout. So every poll of the bound is made.
                    for _ in 0..EVENTS_PER_ATTEMPT {
                        let _ = consumer.poll(Duration::ZERO);
                    }
                    let reported = consumer.context().take_reported();
                    match reported.map(|r| (r.trouble, r.reason)) {
                        Some((Trouble::Authentication, reason)) => {
                            return Err(Error::Authentication { brokers, reason });
                        }
                        Some((Trouble::Tls, reason)) => {
                            return Err(Error::Tls { brokers, reason });
                        }
                        _ => {}
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::BrokersUnreachable {
                            brokers,
                            timeout: wait,
                            source,
                        });
                    }
                }
            }
        };
        for topic in &topics {
            if metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none())
            {
                continue;
            }
            // A listing of every topic leaves out those this client may not see: asked for by
            // name, the broker says whether the topic is missing or refused. (Consumers never
            // ask brokers to create topics, so asking cannot create one.)
            let remaining = deadline
                .saturating_duration_since(std::time::Instant::now())
                .max(METADATA_ATTEMPT);
            let refused = consumer
                .fetch_metadata(Some(topic), remaining)
                .is_ok_and(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.error().map(RDKafkaErrorCode::from)
                            == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                    })
                });
            return Err(if refused {
                Error::NotAuthorized {
                    resource: format!("READ on topic `{topic}`"),
                    brokers,
                }
            } else {
                Error::TopicNotFound {
                    topic: topic.clone(),
                    brokers,
                }
            });
        }
        for topic in &dead_letter_topics {
            if !metadata.topics().iter().any(|t| t.name() == topic) {
                log::warn!(
                    "the dead-letter topic {topic} does not exist: unless the brokers create \
                     topics on demand, dead letters will fail and stop the system"
                );
            }
        }
        drop(metadata);
        Ok(consumer)
    })
    .await
    .map_err(|error| Error::Runtime(format!("metadata check failed: {error}")))?
}

pub(crate) fn stop_arbiters(arbiters: Vec<Arbiter>) {
    // Not joined: a processor that blocks its thread must not block the return of `start`.
    for arbiter in arbiters {
        arbiter.stop();
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(shutdown) = self.shutdown.take() else {
            return;
        };
        let mut requests = shutdown.requests.clone();
        ctx.spawn(
            async move {
                let reason = stop_requested(&mut requests).await;
                shutdown.run(reason).await
            }
            .into_actor(self)
            .map(|report, supervisor, ctx| {
                if let Some(report_to) = supervisor.report_to.take() {
                    let _ = report_to.send(report);
                }
                ctx.stop();
            }),
        );
        // An actor that dies (a bug of the framework) must not leave the system running
        // without it: stop, and say which one. Not once a stop began: the close ends the
        // Fetcher on purpose, and the phases report an actor that vanishes.
        ctx.run_interval(LIVENESS_INTERVAL, |supervisor, _| {
            let Some((fetcher, tracker, stop)) = &supervisor.watched else {
                return;
            };
            if stop.is_stopping() {
                supervisor.watched = None;
                return;
            }
            let dead = if !fetcher.connected() {
                "the fetcher died"
            } else if !tracker.connected() {
                "the offset tracker died"
            } else {
                return;
            };
            log::error!("internal failure: {dead}; stopping");
            supervisor.metrics.health.failed(dead.to_owned());
            stop.request_graceful(StopReason::InternalFailure(dead.to_owned()));
            supervisor.watched = None;
        });
    }
}

/// The shutdown phases and what they act on.
struct ShutdownPlan {
    metrics: Arc<SystemMetrics>,
    timeout: Duration,
    requests: watch::Receiver<StopRequest>,
    abandon: Abandon,
    tracker: Addr<OffsetTracker>,
    fetcher: Addr<Fetcher>,
    processors: Vec<ProcessorHandle>,
}

/// Records the phases of one shutdown as they complete.
struct PhaseLog {
    phases: Vec<PhaseReport>,
    errors: Vec<String>,
    instruments: GroupInstruments,
}

impl PhaseLog {
    fn record(&mut self, phase: Phase, started: Instant, outcome: Result<(), String>) {
        let took = started.elapsed();
        self.instruments.shutdown_phase(phase.name(), took);
        let completed = outcome.is_ok();
        match outcome {
            Ok(()) => log::info!("shutdown: {phase:?} took {took:?}"),
            Err(error) => {
                log::warn!("shutdown: {phase:?} incomplete after {took:?}: {error}");
                self.errors.push(format!("{phase:?}: {error}"));
            }
        }
        self.phases.push(PhaseReport {
            phase,
            took,
            completed,
            note: None,
        });
    }

    /// Adds how `phase` completed; marks it completed (and forgets its error) if it was not.
    fn settle(&mut self, phase: Phase, note: String) {
        log::info!("shutdown: {phase:?}: {note}");
        if let Some(report) = self.phases.iter_mut().find(|report| report.phase == phase) {
            if !report.completed {
                let name = format!("{phase:?}: ");
                self.errors.retain(|error| !error.starts_with(&name));
            }
            report.completed = true;
            report.note = Some(note);
        }
    }
}

impl ShutdownPlan {
    /// Waits for `phase` until `deadline`. A second stop request meanwhile abandons the
    /// drain (the processors drop what they hold at once) and the wait goes on for what is
    /// left of the phase, now short. Returns the phase's output, or `None` at the deadline.
    async fn wait<F: Future>(&mut self, phase: F, deadline: Instant) -> Option<F::Output> {
        let mut phase = std::pin::pin!(phase);
        if !self.abandon.is_cancelled() {
            tokio::select! {
                output = &mut phase => return Some(output),
                () = sleep_until(deadline) => return None,
                () = abandon_requested(&mut self.requests) => {
                    log::warn!("abandoning the drain on request");
                    self.abandon.cancel();
                }
            }
        }
        tokio::select! {
            output = phase => Some(output),
            () = sleep_until(deadline) => None,
        }
    }

    /// Runs the phases. The drain gets the shutdown timeout less a reserve (a quarter of it, at
    /// most 5 s) for the stop hooks, the final commit and the close; the hooks get half of the
    /// reserve; the commit and the close get what is left, but never less than a floor.
    async fn run(mut self, reason: StopReason) -> ShutdownReport {
        let begun = Instant::now();
        if let StopReason::InternalFailure(what) = &reason {
            self.metrics.health.failed(what.clone());
        }
        self.metrics.health.enter(Stage::Stopping);
        let deadline = begun + self.timeout;
        let reserve = (self.timeout / 4).min(MAX_RESERVE);
        let mut log = PhaseLog {
            phases: Vec::new(),
            errors: Vec::new(),
            instruments: self.metrics.instruments.clone(),
        };
        log::info!("stopping ({reason}) within {:?}", self.timeout);

        let started = Instant::now();
        let fetcher = self.fetcher.clone();
        let outcome = match self
            .wait(fetcher.send(StopFetching), deadline - reserve)
            .await
        {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(format!("the fetcher vanished: {error}")),
            None => Err("the fetcher did not answer".to_owned()),
        };
        log.record(Phase::StopFetching, started, outcome);

        let started = Instant::now();
        let processors = self.processors.clone();
        let drains = join_all(processors.iter().map(ProcessorHandle::drain));
        let drained = self.wait(drains, deadline - reserve).await;
        let outcome = match drained {
            _ if self.abandon.is_cancelled() => Err("abandoned on request".to_owned()),
            None => {
                self.abandon.cancel();
                Err(format!(
                    "what the processors held did not finish within {:?}; abandoned",
                    (deadline - reserve).saturating_duration_since(started)
                ))
            }
            Some(results) => all_ok(results),
        };
        log.record(Phase::Drain, started, outcome);

        let started = Instant::now();
        let budget = (deadline - reserve / 2).saturating_duration_since(started);
        let stops = join_all(processors.iter().map(|p| p.stop(budget)));
        let outcome = match timeout(budget + FINAL_STEP_FLOOR, stops).await {
            Ok(results) => all_ok(results),
            Err(_) => Err("the stop hooks did not finish in time".to_owned()),
        };
        log.record(Phase::StopProcessors, started, outcome);

        let started = Instant::now();
        let budget = (deadline - reserve / 4)
            .saturating_duration_since(started)
            .max(FINAL_STEP_FLOOR);
        let commit = self.tracker.send(CommitNow { timeout: budget });
        let (outcome, refused_while_rebalancing) =
            match timeout(budget + FINAL_STEP_FLOOR, commit).await {
                Ok(Ok(Ok(()))) => (Ok(()), false),
                Ok(Ok(Err(failure @ FinalCommitFailure::Rebalancing))) => {
                    (Err(failure.to_string()), true)
                }
                Ok(Ok(Err(failure))) => (Err(failure.to_string()), false),
                Ok(Err(error)) => (Err(format!("the offset tracker vanished: {error}")), false),
                Err(_) => (
                    Err(format!("the commit did not finish within {budget:?}")),
                    false,
                ),
            };
        let committed = outcome.is_ok();
        log.record(Phase::Commit, started, outcome);

        let tracked = self.tracker.send(Report).await;

        let started = Instant::now();
        let budget = deadline
            .saturating_duration_since(started)
            .max(FINAL_STEP_FLOOR);
        // With everything committed, only the leave is at stake: it is not waited for long.
        let patience = committed.then_some(CLOSE_PATIENCE);
        let close = self.fetcher.send(Close { budget, patience });
        let (outcome, closed) = match timeout(budget + FINAL_STEP_FLOOR, close).await {
            Ok(Ok(Ok(closed))) => (Ok(()), Some(closed)),
            Ok(Ok(Err(error))) => (Err(error), None),
            Ok(Err(error)) => (Err(format!("the fetcher vanished: {error}")), None),
            Err(_) => (
                Err(format!("the consumer did not close within {budget:?}")),
                None,
            ),
        };
        log.record(Phase::Close, started, outcome);
        if closed == Some(Closed::LeavingInBackground) {
            log.settle(
                Phase::Close,
                format!(
                    "everything was committed and the leave sent; its answer had not come after \
                     {CLOSE_PATIENCE:?} (a coordinator holds a member's requests behind a \
                     rebalance in progress): the close completes in the background"
                ),
            );
        }
        if refused_while_rebalancing {
            match self.tracker.send(Unsettled).await {
                Ok(unsettled) if unsettled.is_empty() => log.settle(
                    Phase::Commit,
                    "refused or unanswered while the group rebalanced; the close's revocation \
                     committed the same offsets"
                        .to_owned(),
                ),
                Ok(unsettled) => log::warn!(
                    "{} partitions left uncommitted by the final commit: the next owner \
                     repeats what finished since their last commit",
                    unsettled.len()
                ),
                Err(error) => log
                    .errors
                    .push(format!("the offset tracker vanished: {error}")),
            }
        }

        // What the close's revocation committed counts too (the book forgot the partitions by
        // then: what was abandoned comes from before the close).
        let committed_at_close = self.tracker.send(Report).await.map(|late| late.committed);
        let figures = self.metrics.snapshot();
        let processed = figures.processed;
        let (committed, abandoned, released) = match tracked {
            Ok(tracked) => (
                committed_at_close.unwrap_or(tracked.committed),
                tracked.abandoned,
                tracked.released,
            ),
            Err(error) => {
                log.errors
                    .push(format!("the offset tracker vanished: {error}"));
                Default::default()
            }
        };
        log::info!(
            "stopped in {:?}: {processed} messages processed",
            begun.elapsed()
        );
        ShutdownReport {
            reason,
            processed,
            retries: figures.retries,
            skipped: figures.skipped,
            dead_lettered: figures.dead_lettered,
            processor_restarts: figures.processor_restarts,
            committed,
            abandoned,
            released,
            phases: log.phases,
            errors: log.errors,
        }
    }
}

/// One error listing every failure, or `Ok` when there was none.
fn all_ok(results: Vec<Result<(), String>>) -> Result<(), String> {
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
