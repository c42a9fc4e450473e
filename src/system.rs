//! Running a consumer system: on the caller's thread, or on a thread of its own.

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::actors::supervisor::{Supervisor, stop_arbiters};
use crate::health::Stage;
use crate::metrics::SystemMetrics;
use crate::stop::listen_for_signals;
use crate::work::{Batches, One, Work};
use crate::{
    BatchProcessor, ConsumerConfig, Error, Metrics, Processor, Result, ShutdownReport, StopHandle,
};

/// Runs a consumer system: a Supervisor, a Fetcher, a pool of processors and an
/// OffsetTracker, as actors on threads of their own.
///
/// A system runs until it is asked to stop (SIGINT or SIGTERM, a [`StopHandle`], or a
/// processing failure), then shuts down gracefully within the configured
/// [`shutdown_timeout`](crate::ConsumerConfigBuilder::shutdown_timeout) and returns a
/// [`ShutdownReport`].
///
/// # Using it from an async `main`
///
/// [`start`](ConsumerSystem::start) blocks and runs its own actix runtime, so it cannot be
/// called from inside another runtime's task. From `#[tokio::main]` or `#[actix::main]`, use
/// [`spawn`](ConsumerSystem::spawn), or run `start` on a blocking thread:
///
/// ```no_run
/// # use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, Processor};
/// # struct Noop;
/// # impl Processor for Noop {
/// #     async fn process(&mut self, _: &Message) -> anyhow::Result<()> { Ok(()) }
/// # }
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> anyhow::Result<()> {
///     let config = ConsumerConfig::builder()
///         .brokers("127.0.0.1:9092")
///         .group_id("billing")
///         .topic("orders")
///         .build()?;
///     let report = tokio::task::spawn_blocking(move || ConsumerSystem::start(config, || Noop))
///         .await??;
///     println!("{report}");
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct ConsumerSystem;

impl ConsumerSystem {
    /// Runs a system on the calling thread until it has stopped, and returns its report.
    ///
    /// `factory` creates each processor of the pool, on the thread that processor runs on.
    /// With signal handling on (the default), SIGINT and SIGTERM stop the system: the first
    /// gracefully, a second one by abandoning the drain.
    ///
    /// Fails at start when the brokers cannot be reached within the startup timeout, a topic
    /// does not exist, or a processor's `on_start` fails.
    pub fn start<P, F>(config: ConsumerConfig, factory: F) -> Result<ShutdownReport>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        run(config, move || One(factory()), StopHandle::new(), None)
    }

    /// As [`start`](Self::start), with [`BatchProcessor`]s: each is handed batches of
    /// messages (see [`ConsumerConfigBuilder::batch_size`](crate::ConsumerConfigBuilder::batch_size)).
    pub fn start_batch<B, F>(config: ConsumerConfig, factory: F) -> Result<ShutdownReport>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        run(config, move || Batches(factory()), StopHandle::new(), None)
    }

    /// As [`spawn`](Self::spawn), with [`BatchProcessor`]s.
    pub fn spawn_batch<B, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        spawn_work(config, move || Batches(factory()))
    }

    /// Starts a system on a thread of its own and returns once it runs (or failed to start).
    /// Stop it with [`RunningSystem::stop`] and collect its report with
    /// [`RunningSystem::join`].
    pub fn spawn<P, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        spawn_work(config, move || One(factory()))
    }
}

/// Starts a system on a thread of its own; see [`ConsumerSystem::spawn`].
fn spawn_work<W, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
where
    W: Work,
    F: Fn() -> W + Send + Sync + 'static,
{
    {
        let stop = StopHandle::new();
        let (started_tx, started_rx) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-actors-system".to_owned())
            .spawn(move || run(config, factory, thread_stop, Some(started_tx)))
            .map_err(|error| Error::Runtime(format!("could not start a thread: {error}")))?;
        match started_rx.recv() {
            Ok(metrics) => Ok(RunningSystem {
                stop,
                thread,
                metrics,
            }),
            // The thread ended before it started the system: its result says why.
            Err(mpsc::RecvError) => match thread.join() {
                Ok(Err(error)) => Err(error),
                Ok(Ok(_)) => Err(Error::Runtime(
                    "the system stopped before it started".to_owned(),
                )),
                Err(_) => Err(Error::Runtime("the system's thread panicked".to_owned())),
            },
        }
    }
}

/// A system started with [`ConsumerSystem::spawn`].
#[derive(Debug)]
pub struct RunningSystem {
    stop: StopHandle,
    thread: JoinHandle<Result<ShutdownReport>>,
    metrics: Arc<SystemMetrics>,
}

impl RunningSystem {
    /// Asks for a graceful stop; does not wait. See [`StopHandle::stop`].
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Asks to abandon the drain; does not wait. See [`StopHandle::stop_now`].
    pub fn stop_now(&self) {
        self.stop.stop_now();
    }

    /// A handle to stop the system from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The system's figures now: work in flight and its peaks, pauses, rebalances, messages
    /// processed.
    pub fn metrics(&self) -> Metrics {
        self.metrics.snapshot()
    }

    /// Whether the system has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the system has stopped and returns its report. Does not ask it to stop.
    pub fn join(self) -> Result<ShutdownReport> {
        self.thread
            .join()
            .map_err(|_| Error::Runtime("the system's thread panicked".to_owned()))?
    }
}

fn run<W, F>(
    config: ConsumerConfig,
    factory: F,
    stop: StopHandle,
    started: Option<mpsc::Sender<Arc<SystemMetrics>>>,
) -> Result<ShutdownReport>
where
    W: Work,
    F: Fn() -> W + Send + Sync + 'static,
{
    // The recorder first: the figures' handles are bound to the recorder installed when they
    // are made.
    #[cfg(feature = "http")]
    if config.http_addr.is_some() {
        crate::http::prometheus();
    }
    let metrics = Arc::new(SystemMetrics::new(&config.group_id));
    #[cfg(feature = "http")]
    let _server = match config.http_addr {
        Some(addr) => Some(crate::http::HttpServer::start(
            addr,
            metrics.clone(),
            config.poll_ttl,
        )?),
        None => None,
    };
    let system = actix::System::new();
    let running_metrics = metrics.clone();
    let outcome: Result<_> = system.block_on(async move {
        let metrics = running_metrics;
        let signals =
            match config.handle_signals {
                true => Some(listen_for_signals(stop.clone()).map_err(|error| {
                    Error::Runtime(format!("cannot listen for signals: {error}"))
                })?),
                false => None,
            };
        let running = Supervisor::start(config, factory, stop, metrics.clone()).await?;
        metrics.health.enter(Stage::Running);
        if let Some(started) = started {
            let _ = started.send(running.metrics.clone());
        }
        let report = running.report.await;
        if let Some(signals) = signals {
            signals.abort();
        }
        let report = report.map_err(|_| Error::Runtime("the supervisor vanished".to_owned()))?;
        Ok((report, running.arbiters))
    });
    let (report, arbiters) = outcome?;
    stop_arbiters(arbiters);
    metrics.health.enter(Stage::Stopped);
    Ok(report)
}
