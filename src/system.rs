//! Running a consumer system: on the caller's thread, or on a thread of its own.

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::actors::supervisor::{Supervisor, stop_arbiters};
use crate::control::{Action, ControlError, Controls, Target};
use crate::health::Stage;
use crate::metrics::SystemMetrics;
use crate::route::{Route, RouteSet};
use crate::stop::listen_for_signals;
use crate::work::{Batches, One};
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
/// # Using it from an async application
///
/// [`start`](ConsumerSystem::start) blocks its thread until the system stopped. From
/// `#[tokio::main]` or `#[actix::main]`, await [`run`](ConsumerSystem::run) (or
/// [`run_until`](ConsumerSystem::run_until), which also stops when a future of yours
/// completes, as axum's `with_graceful_shutdown`); the actors run on threads of their own and
/// nothing blocks the caller's runtime:
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
///     // Stops on SIGINT or SIGTERM (signal handling is on by default), or an hour from now.
///     let shutdown = tokio::time::sleep(std::time::Duration::from_secs(3600));
///     let report = ConsumerSystem::run_until(config, || Noop, shutdown).await?;
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
        run(config, one(factory), StopHandle::new(), None)
    }

    /// As [`start`](Self::start), with [`BatchProcessor`]s: each is handed batches of
    /// messages (see [`ConsumerConfigBuilder::batch_size`](crate::ConsumerConfigBuilder::batch_size)).
    pub fn start_batch<B, F>(config: ConsumerConfig, factory: F) -> Result<ShutdownReport>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        run(config, batches(factory), StopHandle::new(), None)
    }

    /// As [`start`](Self::start), awaited: the system runs on threads of its own until it has
    /// stopped (a signal, or a failure that stops it), and the caller's runtime is never
    /// blocked. Dropping the future asks the system for a graceful stop and does not wait for
    /// it: a clean stop (drain, final commit, leaving the group) is awaiting the future to its
    /// report.
    pub async fn run<P, F>(config: ConsumerConfig, factory: F) -> Result<ShutdownReport>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        run_until(config, one(factory), std::future::pending()).await
    }

    /// As [`run`](Self::run), and also stops gracefully when `shutdown` completes (a
    /// `CancellationToken`'s `cancelled()`, a channel, a timer: any future). Signals are still
    /// handled unless [`handle_signals`](crate::ConsumerConfigBuilder::handle_signals) is off.
    /// In a `select!` with other work, stop through `shutdown` and keep awaiting this future,
    /// rather than dropping it.
    pub async fn run_until<P, F>(
        config: ConsumerConfig,
        factory: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        run_until(config, one(factory), shutdown).await
    }

    /// As [`run`](Self::run), with [`BatchProcessor`]s.
    pub async fn run_batch<B, F>(config: ConsumerConfig, factory: F) -> Result<ShutdownReport>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        run_until(config, batches(factory), std::future::pending()).await
    }

    /// As [`run_until`](Self::run_until), with [`BatchProcessor`]s.
    pub async fn run_batch_until<B, F>(
        config: ConsumerConfig,
        factory: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        run_until(config, batches(factory), shutdown).await
    }

    /// Runs a system of several [`Route`]s, awaited as [`run`](Self::run): one group and one
    /// Fetcher read every route's topics, and each topic's messages go to its route's
    /// processors, under its route's failure policy. The configuration names no topic: the
    /// routes do.
    pub async fn run_routes(
        config: ConsumerConfig,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<ShutdownReport> {
        let routes = RouteSet::given(routes.into_iter().collect());
        run_until(config, routes, std::future::pending()).await
    }

    /// As [`run_routes`](Self::run_routes), stopped also when `shutdown` completes (see
    /// [`run_until`](Self::run_until)).
    pub async fn run_routes_until(
        config: ConsumerConfig,
        routes: impl IntoIterator<Item = Route>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport> {
        let routes = RouteSet::given(routes.into_iter().collect());
        run_until(config, routes, shutdown).await
    }

    /// As [`run_routes`](Self::run_routes), on the calling thread (see [`start`](Self::start)).
    pub fn start_routes(
        config: ConsumerConfig,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<ShutdownReport> {
        let routes = RouteSet::given(routes.into_iter().collect());
        run(config, routes, StopHandle::new(), None)
    }

    /// As [`run_routes`](Self::run_routes), on a thread of its own (see [`spawn`](Self::spawn)).
    pub fn spawn_routes(
        config: ConsumerConfig,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<RunningSystem> {
        let routes = RouteSet::given(routes.into_iter().collect());
        futures::executor::block_on(spawn_work(config, routes))
    }

    /// As [`spawn_routes`](Self::spawn_routes), awaited (see [`spawn_async`](Self::spawn_async)).
    pub async fn spawn_routes_async(
        config: ConsumerConfig,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<RunningSystem> {
        let routes = RouteSet::given(routes.into_iter().collect());
        spawn_work(config, routes).await
    }

    /// As [`spawn`](Self::spawn), with [`BatchProcessor`]s.
    pub fn spawn_batch<B, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        futures::executor::block_on(spawn_work(config, batches(factory)))
    }

    /// Starts a system on a thread of its own and returns once it runs (or failed to start),
    /// blocking the calling thread meanwhile (from async code, use
    /// [`spawn_async`](Self::spawn_async)). Stop it with [`RunningSystem::stop`] and collect
    /// its report with [`RunningSystem::join`], or await it.
    pub fn spawn<P, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        futures::executor::block_on(spawn_work(config, one(factory)))
    }

    /// As [`spawn`](Self::spawn), awaited: the caller's runtime is not blocked while the
    /// system starts (which waits for the brokers, at most the startup timeout).
    pub async fn spawn_async<P, F>(config: ConsumerConfig, factory: F) -> Result<RunningSystem>
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        spawn_work(config, one(factory)).await
    }

    /// As [`spawn_async`](Self::spawn_async), with [`BatchProcessor`]s.
    pub async fn spawn_batch_async<B, F>(
        config: ConsumerConfig,
        factory: F,
    ) -> Result<RunningSystem>
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        spawn_work(config, batches(factory)).await
    }
}

/// The one route of a system of `Processor`s from `factory`, over the configuration's topics.
fn one<P, F>(factory: F) -> RouteSet
where
    P: Processor,
    F: Fn() -> P + Send + Sync + 'static,
{
    RouteSet::single(Route::of(Vec::new(), move || One(factory())))
}

/// As [`one`], with `BatchProcessor`s.
fn batches<B, F>(factory: F) -> RouteSet
where
    B: BatchProcessor,
    F: Fn() -> B + Send + Sync + 'static,
{
    RouteSet::single(Route::of(Vec::new(), move || Batches(factory())))
}

/// The outcome of a system's thread, which sends it when the system has stopped (or failed
/// to start); a dropped sender means the thread panicked.
type Ending = oneshot::Receiver<Result<ShutdownReport>>;

/// Runs a system on a thread of its own, `started` told once it runs; the thread sends its
/// outcome when it ends.
fn run_on_thread(
    config: ConsumerConfig,
    routes: RouteSet,
    stop: StopHandle,
    started: Option<oneshot::Sender<Handles>>,
) -> Result<(JoinHandle<()>, Ending)> {
    let (ending_tx, ending) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("kafka-actors-system".to_owned())
        .spawn(move || {
            let _ = ending_tx.send(run(config, routes, stop, started));
        })
        .map_err(|error| Error::Runtime(format!("could not start a thread: {error}")))?;
    Ok((thread, ending))
}

/// Asks for a graceful stop when dropped (a stop after the system stopped does nothing).
struct StopOnDrop(StopHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn thread_panicked() -> Error {
    Error::Runtime("the system's thread panicked".to_owned())
}

/// Runs a system until it stops or `shutdown` completes, without blocking; see
/// [`ConsumerSystem::run_until`].
async fn run_until(
    config: ConsumerConfig,
    routes: RouteSet,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport> {
    let stop = StopHandle::new();
    let (_thread, ending) = run_on_thread(config, routes, stop.clone(), None)?;
    // A caller that drops this future no longer waits for the report: the system stops.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let mut ending = std::pin::pin!(ending);
    tokio::select! {
        ended = &mut ending => return ended.map_err(|_| thread_panicked())?,
        () = shutdown => stop.stop(),
    }
    ending.await.map_err(|_| thread_panicked())?
}

/// Starts a system on a thread of its own and waits, without blocking, until it runs; see
/// [`ConsumerSystem::spawn`].
async fn spawn_work(config: ConsumerConfig, routes: RouteSet) -> Result<RunningSystem> {
    let stop = StopHandle::new();
    let (started_tx, started_rx) = oneshot::channel();
    let (thread, ending) = run_on_thread(config, routes, stop.clone(), Some(started_tx))?;
    match started_rx.await {
        Ok(Handles { metrics, controls }) => Ok(RunningSystem {
            stop,
            thread,
            ending,
            metrics,
            controls,
        }),
        // The thread ended before it started the system: its outcome says why.
        Err(_) => match ending.await {
            Ok(Err(error)) => Err(error),
            Ok(Ok(_)) => Err(Error::Runtime(
                "the system stopped before it started".to_owned(),
            )),
            Err(_) => Err(thread_panicked()),
        },
    }
}

/// A system started with [`ConsumerSystem::spawn`].
#[derive(Debug)]
pub struct RunningSystem {
    stop: StopHandle,
    thread: JoinHandle<()>,
    ending: Ending,
    metrics: Arc<SystemMetrics>,
    controls: Controls,
}

/// What a spawned system's thread hands back once the system runs.
struct Handles {
    metrics: Arc<SystemMetrics>,
    controls: Controls,
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

    /// Pauses every partition this member holds, and those it is assigned later, until
    /// [`resume`](Self::resume): nothing more is fetched nor handed out; the messages the
    /// processors hold still run and are committed; the group membership, commits and
    /// rebalances go on. Carried out by the Fetcher within a few milliseconds; a stop while
    /// paused is a stop as any other. Pauses of partitions asked for by processing code
    /// ([`PartitionControl`](crate::PartitionControl)) are kept apart: each ends by itself.
    pub fn pause(&self) -> std::result::Result<(), ControlError> {
        let pause = Action::Pause { lasting: None };
        self.controls.ask(Target::System, pause)
    }

    /// Ends a [`pause`](Self::pause): partitions resume from the first message not taken,
    /// except those paused by processing code.
    pub fn resume(&self) -> std::result::Result<(), ControlError> {
        self.controls.ask(Target::System, Action::Resume)
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

    /// Waits until the system has stopped and returns its report, blocking the thread. Does
    /// not ask it to stop. From async code, await [`stopped`](Self::stopped).
    pub fn join(mut self) -> Result<ShutdownReport> {
        self.thread.join().map_err(|_| thread_panicked())?;
        self.ending.try_recv().map_err(|_| thread_panicked())?
    }

    /// Waits, without blocking, until the system has stopped and returns its report. Does not
    /// ask it to stop.
    pub async fn stopped(self) -> Result<ShutdownReport> {
        self.ending.await.map_err(|_| thread_panicked())?
    }
}

/// `system.await` is [`stopped`](RunningSystem::stopped): the report, once the system has
/// stopped, without blocking.
impl std::future::IntoFuture for RunningSystem {
    type Output = Result<ShutdownReport>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.stopped())
    }
}

fn run(
    config: ConsumerConfig,
    routes: RouteSet,
    stop: StopHandle,
    started: Option<oneshot::Sender<Handles>>,
) -> Result<ShutdownReport> {
    routes.check(&config)?;
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
        let running = Supervisor::start(config, routes, stop, metrics.clone()).await?;
        metrics.health.enter(Stage::Running);
        if let Some(started) = started {
            let _ = started.send(Handles {
                metrics: running.metrics.clone(),
                controls: running.controls.clone(),
            });
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
