//! The Supervisor: starts the other actors, waits for a stop request and runs the shutdown
//! phases under one deadline.
//!
//! Startup order: the OffsetTracker, then the consumer (the brokers and topics are checked
//! before any user code runs), then the processors (their `on_start` hooks), then the Fetcher,
//! which subscribes. Shutdown order: stop fetching, drain the processors' mailboxes, run their
//! `on_stop` hooks, commit synchronously, close the consumer (leaving the group).
//!
//! Here: the start, which wires the actors, and the watch that they live. The start's check of
//! the cluster is in `cluster_check.rs`, the shutdown phases (`ShutdownPlan`) in `shutdown.rs`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{Notify, oneshot};
use tokio::time::timeout;

use crate::actors::fetcher::{ControlDesk, FetchContext, Fetcher, Revocation, TimeLookups};
use crate::actors::messages::{Attach, Others, ProcessorHandle};
use crate::actors::offset_tracker::OffsetTracker;
use crate::actors::processor::ProcessorShared;
use crate::client_trouble;
use crate::config::ConsumerConfig;
use crate::control::Controls;
use crate::dead_letter::DeadLetters;
use crate::failure::Exhausted;
use crate::flow::FlowSettings;
use crate::metrics::SystemMetrics;
use crate::report::{ShutdownReport, StopReason};
use crate::route::RouteSet;
use crate::routing::Router;
use crate::stop::{Abandon, StopHandle, stop_requested};
use crate::{Error, Result};

mod cluster_check;
mod shutdown;

use cluster_check::check_cluster;
use shutdown::ShutdownPlan;

/// The target of every line the Supervisor logs, whichever of its files writes it: one target
/// for the actor, which log filters name.
const LOG_TARGET: &str = module_path!();

/// How often the Supervisor checks that its actors are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);

/// A started system: what `ConsumerSystem` needs to wait for it and clean up after it.
pub(crate) struct Started {
    pub(crate) report: oneshot::Receiver<ShutdownReport>,
    pub(crate) arbiters: Vec<Arbiter>,
    pub(crate) metrics: Arc<SystemMetrics>,
    /// The line on which the application pauses and resumes the system.
    pub(crate) controls: Controls,
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
    pub(crate) async fn start(
        config: ConsumerConfig,
        routes: RouteSet,
        stop: StopHandle,
        metrics: Arc<SystemMetrics>,
    ) -> Result<Started> {
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
        let fetcher_wakeup = Arc::new(Notify::new());
        let (controls, requests) = Controls::new(fetcher_wakeup.clone());
        let consumer: BaseConsumer<FetchContext> = config
            .client_config()
            .set_log_level(client_trouble::librdkafka_log_level())
            .create_with_context(FetchContext::new(
                tracker_inbox.clone(),
                metrics.clone(),
                Router::with_pools(routes.pools(&config)),
                flow,
                config.group_id.clone(),
                controls.clone(),
            ))?;
        let consumer = check_cluster(consumer, &config, routes.named_topics(&config)).await?;

        // Every route's dead-letter producer before any processor starts: nothing to release
        // when one cannot be made.
        let dead_letters = routes
            .routes
            .iter()
            .map(|route| match route.policy(&config).exhausted() {
                Exhausted::DeadLetter { topic } => DeadLetters::new(
                    &config.brokers,
                    topic.clone(),
                    &config.dead_letter_client_options(),
                    metrics.clone(),
                )
                .map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut arbiters = Vec::new();
        // At most one thread per processor of every route.
        let threads = config.worker_threads.min(routes.processors(&config));
        let workers = (0..threads)
            .map(|_| Arbiter::try_new().map_err(|error| Error::Runtime(error.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let abandon = Abandon::default();
        // Each route's processors, one after another, each with its route's policy.
        let mut processors: Vec<ProcessorHandle> = Vec::new();
        let mut starts = Vec::new();
        for (route, dead_letters) in routes.routes.iter().zip(dead_letters) {
            let policy = route.policy(&config);
            let shared = ProcessorShared {
                factory: Arc::new(|| ()),
                tracker: tracker_inbox.completions.clone(),
                stop: stop.clone(),
                abandon: abandon.clone(),
                metrics: metrics.clone(),
                policy: policy.clone(),
                dead_letters,
                prefetch: config.prefetch,
                batch: config.batch,
                fetcher_wakeup: fetcher_wakeup.clone(),
            };
            for _ in 0..route.processor_count(&config) {
                let index = processors.len();
                let (processor, start) = route.pool().spawn(
                    index,
                    shared.clone(),
                    &workers[index % workers.len()].handle(),
                );
                processors.push(processor);
                starts.push(start);
            }
        }
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
        consumer.context().set_revocation(Revocation {
            processors: processors.clone(),
            drain_timeout: config.rebalance_drain_timeout,
            hooks: routes.hooks(),
            stop: stop.clone(),
        });
        let subscriptions = routes.subscriptions(&config);
        if failed_start.is_none()
            && let Err(error) = consumer.subscribe(&subscriptions)
        {
            failed_start = Some(error.into());
        }
        if let Some(error) = failed_start {
            // Release what the processors that did start opened; the others opened nothing.
            let budget = config.shutdown_timeout;
            let stops = join_all(started.iter().map(|p| p.stop(budget)));
            let _ = timeout(budget, stops).await;
            stop_arbiters(arbiters);
            return Err(error);
        }

        let fetch_arbiter =
            Arbiter::try_new().map_err(|error| Error::Runtime(error.to_string()))?;
        let fetcher_controls = ControlDesk {
            requests,
            lookups: TimeLookups::new(
                config
                    .client_config()
                    .set_log_level(client_trouble::librdkafka_log_level())
                    .clone(),
                metrics.clone(),
            ),
        };
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
                fetcher_controls,
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
            subscriptions,
            processors.len(),
            threads
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
            controls,
        })
    }
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
