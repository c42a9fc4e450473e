//! The HTTP server of the `http` feature, started when the configuration has an `http_addr`:
//!
//! - `GET /metrics`: the `metrics` facade's figures in Prometheus' text format, from a
//!   Prometheus recorder installed once per process (before the first system registers its
//!   figures: a handle registered earlier would record nothing);
//! - `GET /health/live` and `GET /health/ready`: [`Health`](crate::health::Health)'s verdicts,
//!   200, or 503 with a JSON reason; `/health/live` also lists the outages in progress
//!   (`unreachable`), which do not fail it.
//!
//! It runs on a thread of its own with a small runtime, so that it answers while processors
//! are busy or the Fetcher waits in a revocation. The socket is bound before the system
//! starts: an address in use fails the start.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::oneshot;

use crate::metric_names;
use crate::metrics::SystemMetrics;
use crate::{Error, Result};

/// Buckets of the duration histograms, in seconds: a message's processing takes from
/// microseconds to minutes.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];
/// How often histogram samples are folded into their buckets between scrapes, so that memory
/// stays bounded when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process's Prometheus recorder, once; `None` when the application installed a
/// recorder of its own (its exporter has the figures then).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let ours = Matcher::Prefix(metric_names::PREFIX.to_owned());
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(ours, BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    log::info!(
                        "the application has a metrics recorder of its own: /metrics leaves the figures \
                         to the application's exporter"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The server; stops when dropped.
pub(crate) struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the handlers read.
struct Served {
    metrics: Arc<SystemMetrics>,
    prometheus: Option<&'static PrometheusHandle>,
    poll_ttl: Duration,
}

impl HttpServer {
    /// Binds `addr` and serves on a thread of its own.
    pub(crate) fn start(
        addr: SocketAddr,
        metrics: Arc<SystemMetrics>,
        poll_ttl: Duration,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| Error::Http { addr, source })?;
        let served = Arc::new(Served {
            metrics,
            prometheus: prometheus(),
            poll_ttl,
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kafka-actors-http".to_owned())
            .spawn(move || serve(listener, served, stopped))
            .map_err(|error| Error::Runtime(format!("could not start a thread: {error}")))?;
        log::info!("serving /metrics, /health/live and /health/ready on http://{addr}");
        Ok(HttpServer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, served: Arc<Served>, mut stopped: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("the HTTP server could not start its runtime: {error}");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                log::error!("the HTTP server could not listen: {error}");
                return;
            }
        };
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = upkeep.tick() => {
                    if let Some(prometheus) = served.prometheus {
                        prometheus.run_upkeep();
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let served = served.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                let response = respond(&served, &request);
                                async move { Ok::<_, Infallible>(response) }
                            });
                            let connection = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            if let Err(error) = connection.await {
                                log::debug!("HTTP connection ended: {error}");
                            }
                        });
                    }
                    Err(error) => {
                        log::warn!("the HTTP server could not accept a connection: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    });
}

fn respond(served: &Served, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    let metrics = &served.metrics;
    match request.uri().path() {
        "/metrics" => match served.prometheus {
            Some(prometheus) => text(StatusCode::OK, prometheus.render()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the application installed its own metrics recorder: its exporter has the \
                 figures\n"
                    .to_owned(),
            ),
        },
        "/health/live" => {
            // An outage shows, but does not fail liveness: librdkafka reconnects by itself, and
            // a restart would not bring the brokers back.
            let unreachable = outages(metrics);
            match metrics
                .health
                .liveness(metrics.stalled_partitions(), served.poll_ttl)
            {
                Ok(stage) => body(
                    StatusCode::OK,
                    json!({ "status": "up", "stage": stage.name(), "unreachable": unreachable }),
                ),
                Err(reason) => body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "status": "down", "reason": reason, "unreachable": unreachable }),
                ),
            }
        }
        "/health/ready" => {
            let assigned = metrics.assigned_partitions();
            match metrics.health.readiness(assigned) {
                Ok(()) => body(
                    StatusCode::OK,
                    json!({ "status": "ready", "partitions": assigned }),
                ),
                Err(reason) => body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "status": "not ready", "reason": reason }),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health/live or /health/ready\n".to_owned(),
        ),
    }
}

/// The outages in progress: `broker` (`all` when every broker is down, else `host:port`),
/// `since`, `seconds`, `errors` and the `latest_error`.
fn outages(metrics: &SystemMetrics) -> serde_json::Value {
    metrics
        .trouble
        .outages()
        .into_iter()
        .map(|outage| {
            json!({
                "broker": outage.broker,
                "since": humantime::format_rfc3339_seconds(outage.since).to_string(),
                "seconds": (outage.seconds * 10.0).round() / 10.0,
                "errors": outage.errors,
                "latest_error": outage.latest,
            })
        })
        .collect()
}

fn text(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; version=0.0.4; charset=utf-8", text)
}

fn body(status: StatusCode, json: serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", format!("{json}\n"))
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
