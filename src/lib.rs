//! An actor-based Kafka consumer framework: implement one trait, [`Processor`], run it with
//! [`ConsumerSystem`], and the framework does the hard parts: polling, parallel processing in
//! partition or key order, exact offset tracking and commits, safe rebalances (commit on
//! revoke, fencing), retries and dead letters, bounded memory, and a graceful shutdown that
//! loses nothing and duplicates nothing. It is built on [actix](https://docs.rs/actix) actors
//! and [rdkafka](https://docs.rs/rdkafka) (librdkafka, built from source with TLS, SASL and
//! every compression codec).
//!
//! ```no_run
//! use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, Processor};
//!
//! struct SaveOrder;
//!
//! impl Processor for SaveOrder {
//!     async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
//!         println!("order {}: {}", message.offset(), message.payload_str().unwrap_or_default());
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let config = ConsumerConfig::builder()
//!         .brokers("127.0.0.1:9092")
//!         .group_id("order-service")
//!         .topic("orders")
//!         .build()?;
//!     // Runs until SIGINT or SIGTERM, then drains, commits, leaves the group and returns.
//!     let report = ConsumerSystem::run(config, || SaveOrder).await?;
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! The system's actors run on threads of their own, so the caller's runtime is never blocked
//! (`cargo add kafka-actors anyhow` and `cargo add tokio --features macros,rt-multi-thread`;
//! a current-thread runtime works as well). Without an async runtime,
//! [`ConsumerSystem::start`] runs a system on the calling thread until it stopped.
//!
//! # The main items
//!
//! - [`Processor`]: your code, one message per call, with `on_start`, `on_stop` and the
//!   partition hooks `on_assigned` and `on_revoked`. [`BatchProcessor`] takes a batch of
//!   messages per call (for a database sink, say) and reports failures per message with
//!   [`BatchFailures`]. A processor's futures need not be `Send`: each lives on one thread.
//! - [`ConsumerSystem`]: runs a pool of processors until a signal, a stop request or a
//!   failure, then shuts down gracefully and returns a [`ShutdownReport`]:
//!   [`run`](ConsumerSystem::run) and [`run_until`](ConsumerSystem::run_until) awaited,
//!   [`start`](ConsumerSystem::start) blocking, [`spawn`](ConsumerSystem::spawn) (or
//!   [`spawn_async`](ConsumerSystem::spawn_async)) on a thread of its own, returning a
//!   [`RunningSystem`] to stop, pause, resume, watch ([`RunningSystem::metrics`]) and join or
//!   await.
//! - [`ConsumerConfig`]: brokers, group, topics and every setting, through
//!   [`ConsumerConfig::builder`] or from the environment ([`ConsumerConfig::from_env`]);
//!   [`OrderingMode`] (per partition, per key, unordered) and [`GroupProtocol`] (classic or
//!   KIP-848's consumer protocol) among them.
//! - [`FailurePolicy`]: retries with backoff when `process` fails or panics, then stop, skip or
//!   a dead-letter topic (its headers are named in [`dead_letter_headers`]). An error carrying
//!   [`Permanent`] skips the retries; one carrying [`RetryAfter`] names its own wait.
//! - [`Route`]: several topics (or `^` patterns) in one system, each read by processors of
//!   its own type and number, under a failure policy of its own
//!   ([`ConsumerSystem::run_routes`]).
//! - [`PartitionControl`], from [`Message::partition_control`]: processing code pauses,
//!   resumes or seeks its message's partition.
//! - [`testkit`]: a processor's unit tests without a cluster
//!   ([`TestRun`](testkit::TestRun), [`MessageBuilder`](testkit::MessageBuilder)), and whole
//!   systems on librdkafka's in-process cluster ([`run_embedded`](testkit::run_embedded)).
//! - [`Metrics`]: a running system's live figures; [`metric_names`]: the names of the figures
//!   recorded through the [`metrics`](https://docs.rs/metrics) facade (Prometheus on
//!   `/metrics`, with health endpoints, with the `http` feature and
//!   [`http_addr`](ConsumerConfigBuilder::http_addr)).
//! - [`ShutdownReport`]: what a system did and why it stopped ([`StopReason`]), what it
//!   committed, and what it left unfinished.
//!
//! # Guarantees
//!
//! - **At-least-once.** An offset is committed only after its message and every earlier
//!   message of its partition finished (processed, or skipped or dead-lettered by the
//!   [`FailurePolicy`]). After a graceful stop everything processed is committed: a restart
//!   loses nothing and repeats nothing. After a crash, what was processed since the last
//!   periodic commit is delivered again.
//! - **Ordering.** By default each partition is processed in offset order, partitions in
//!   parallel; per key and unordered processing are [`OrderingMode`]s. A commit never passes
//!   an unfinished message.
//! - **Bounded memory.** The work in flight is bounded per partition and in total; polling
//!   goes on while partitions are paused, so slow processing never causes a rebalance.
//! - **Bounded graceful shutdown.** On SIGINT, SIGTERM or [`RunningSystem::stop`], fetching
//!   stops, processors finish the few messages they hold, `on_stop` runs, finished offsets
//!   are committed and the consumer leaves the group, all within one deadline
//!   ([`shutdown_timeout`](ConsumerConfigBuilder::shutdown_timeout)); what is left
//!   unfinished is not committed and is listed in the report.
//! - **Safe rebalances.** Revoked partitions' work finishes and is committed before they
//!   move; a lost assignment commits nothing, and late results of an old assignment are
//!   never committed.
//! - **No silent failure.** A panic in your code never takes the framework down; a failing
//!   framework part stops the system with an unclean report; a stalled partition is logged
//!   and counted.
//!
//! # Further reading
//!
//! The [README] has the quick start (an in-process cluster, no broker needed), every
//! guarantee in full, configuration and environment variables, failures and dead letters,
//! batches and exactly-once sinks, memory bounds, secured clusters, the metrics table, logging
//! and benchmark figures. Also in the repository: [running on Kubernetes][kubernetes], [the
//! test broker script][kafka], [development and CI][development], [benchmarks][BENCHMARKS],
//! [architecture][ARCHITECTURE], and the [examples].
//!
//! [README]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/README.md
//! [kubernetes]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/docs/kubernetes.md
//! [kafka]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/docs/kafka.md
//! [development]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/docs/development.md
//! [BENCHMARKS]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/BENCHMARKS.md
//! [ARCHITECTURE]: https://github.com/kafka-actors/kafka-actors/blob/HEAD/ARCHITECTURE.md
//! [examples]: https://github.com/kafka-actors/kafka-actors/tree/HEAD/examples
//!
//! # Features
//!
//! `vendored-openssl` (default: TLS and SASL with OpenSSL built from source),
//! `system-openssl` (the system's OpenSSL instead), `http` (default: Prometheus `/metrics`
//! and the health endpoints), `opentelemetry` (message spans join the trace of a
//! `traceparent` header), `gssapi` (Kerberos) and `oidc` (OAUTHBEARER tokens from an OIDC
//! endpoint). No public item depends on a feature.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod actors;
mod batch;
mod client_trouble;
mod commits;
mod config;
mod control;
mod dead_letter;
mod env;
mod error;
mod failure;
mod fault;
mod flow;
mod health;
#[cfg(feature = "http")]
mod http;
mod instruments;
mod lanes;
mod message;
pub mod metric_names;
mod metrics;
mod native;
mod offsets;
mod processor;
mod repeats;
mod report;
mod route;
mod routes;
mod routing;
mod stall;
mod stop;
mod system;
pub mod testkit;
mod trace;
mod trouble;
mod work;

pub use config::{ConsumerConfig, ConsumerConfigBuilder, GroupProtocol};
pub use control::{ControlError, PartitionControl};
pub use dead_letter::headers as dead_letter_headers;
pub use error::{Error, Result};
pub use failure::{Exhausted, FailurePolicy, Permanent, RetryAfter};
pub use message::Message;
pub use metrics::Metrics;
pub use offsets::TopicPartition;
pub use processor::{BatchFailures, BatchProcessor, Processor, StoredPositions};
pub use report::{Abandoned, Phase, PhaseReport, ShutdownReport, StopReason};
pub use route::Route;
pub use routing::OrderingMode;
pub use stop::StopHandle;
pub use system::{ConsumerSystem, RunningSystem};

// The README's Rust code blocks, run as doctests (the README itself is written for GitHub and
// crates.io; the crate's front page on docs.rs is the documentation above).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
