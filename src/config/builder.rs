//! The builder: every setting with its default and what it does, one method each. `build()`,
//! which validates them, is in `validation.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::properties::Redacted;
use super::{
    DEFAULT_BATCH, DEFAULT_PARTITION_LIMIT, DEFAULT_POLL_TTL, DEFAULT_PREFETCH,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STALL_TIMEOUT, DEFAULT_TOTAL_LIMIT, GroupProtocol,
};
use crate::flow::{BatchLimit, InFlightLimit, PrefetchLimit};
use crate::{FailurePolicy, OrderingMode};

/// Builds a [`ConsumerConfig`](super::ConsumerConfig). `brokers`, `group_id` and at least one
/// topic are required; everything else has a default. Its `Debug` output never shows the value
/// of a secret librdkafka property.
///
/// ```
/// use std::time::Duration;
/// use kafka_actors::ConsumerConfig;
///
/// let config = ConsumerConfig::builder()
///     .brokers("127.0.0.1:9092")
///     .group_id("billing")
///     .topic("orders")
///     .processors(8)
///     .shutdown_timeout(Duration::from_secs(20))
///     .kafka_option("session.timeout.ms", "10000")
///     .build()?;
/// assert!(config.warnings().is_empty());
/// # Ok::<(), kafka_actors::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct ConsumerConfigBuilder {
    pub(super) brokers: String,
    pub(super) group_id: String,
    pub(super) topics: Vec<String>,
    pub(super) processors: usize,
    pub(super) worker_threads: Option<usize>,
    pub(super) ordering: OrderingMode,
    pub(crate) partition_limit: InFlightLimit,
    pub(crate) total_limit: InFlightLimit,
    pub(crate) prefetch: PrefetchLimit,
    pub(crate) batch: BatchLimit,
    /// Whether `batch_size` was called: the default batch shrinks to fit the in-flight limit.
    pub(super) batch_size_set: bool,
    pub(super) failure_policy: FailurePolicy,
    pub(super) dead_letter_options: BTreeMap<String, String>,
    pub(super) commit_interval: Duration,
    pub(super) rebalance_drain_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) startup_timeout: Duration,
    pub(super) stall_timeout: Option<Duration>,
    pub(super) handle_signals: bool,
    pub(super) read_headers: bool,
    pub(super) http_addr: Option<String>,
    pub(super) poll_ttl: Duration,
    pub(super) group_protocol: GroupProtocol,
    pub(super) kafka_options: BTreeMap<String, String>,
}

impl Default for ConsumerConfigBuilder {
    fn default() -> Self {
        ConsumerConfigBuilder {
            brokers: String::new(),
            group_id: String::new(),
            topics: Vec::new(),
            processors: 4,
            worker_threads: None,
            ordering: OrderingMode::PerPartition,
            partition_limit: DEFAULT_PARTITION_LIMIT,
            total_limit: DEFAULT_TOTAL_LIMIT,
            prefetch: DEFAULT_PREFETCH,
            batch: DEFAULT_BATCH,
            batch_size_set: false,
            failure_policy: FailurePolicy::default(),
            dead_letter_options: BTreeMap::new(),
            commit_interval: Duration::from_secs(5),
            rebalance_drain_timeout: Duration::from_secs(10),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            startup_timeout: Duration::from_secs(30),
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            handle_signals: true,
            read_headers: true,
            http_addr: None,
            poll_ttl: DEFAULT_POLL_TTL,
            group_protocol: GroupProtocol::Classic,
            kafka_options: BTreeMap::new(),
        }
    }
}

impl ConsumerConfigBuilder {
    /// The bootstrap servers, comma-separated `host:port` pairs. Required.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.brokers = brokers.into();
        self
    }

    /// The consumer group. Required.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = group_id.into();
        self
    }

    /// Adds a topic to subscribe to. A system started with one factory needs at least one (it
    /// refuses to start without); a system of [`Route`](crate::Route)s takes its topics from
    /// the routes and none from here.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    pub(crate) fn replace_topics(mut self, topics: Vec<String>) -> Self {
        self.topics = topics;
        self
    }

    /// Adds several topics to subscribe to.
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// How many processors run (default 4): the most messages processed at once. In
    /// [`OrderingMode::PerPartition`] each partition is handled by one processor, so more
    /// processors than assigned partitions add nothing; in the other modes they do. With
    /// [`Route`](crate::Route)s, the number of each route that does not set its own.
    pub fn processors(mut self, processors: usize) -> Self {
        self.processors = processors;
        self
    }

    /// Which messages are processed in order (default [`OrderingMode::PerPartition`]).
    pub fn ordering(mut self, ordering: OrderingMode) -> Self {
        self.ordering = ordering;
        self
    }

    /// The most work one partition may have in flight (default 10,000 messages, 16 MiB of keys
    /// and payloads). When a partition reaches it, it is paused until half of it is done.
    pub fn max_in_flight_per_partition(mut self, messages: usize, bytes: usize) -> Self {
        self.partition_limit = InFlightLimit { messages, bytes };
        self
    }

    /// The most work the whole system may have in flight (default 100,000 messages, 64 MiB of
    /// keys and payloads). When it is reached, every partition is paused until half of it is
    /// done. Polling goes on meanwhile, so slow processing never exceeds
    /// `max.poll.interval.ms`. README.md ("Memory") gives the whole memory bound.
    pub fn max_in_flight(mut self, messages: usize, bytes: usize) -> Self {
        self.total_limit = InFlightLimit { messages, bytes };
        self
    }

    /// What each processor holds beyond the message in progress (default 8,192 messages and
    /// 10 ms of work): at most `messages`, and no more than it is measured to finish in
    /// `work`. The message cap matters only for fast processors: one that takes microseconds
    /// per message needs thousands at hand to keep up with the fetcher (with 1,024 a no-op
    /// processor on one partition ran 28 % slower). A batch processor holds at least a batch.
    /// The rest of what was fetched waits in the fetcher (counted in the in-flight limits), so
    /// a stop or a revocation waits only for what processors hold: about `work` plus the
    /// slowest message in progress, whatever the backlog. Larger values smooth out processors
    /// whose message times vary a lot; smaller ones make stops shorter.
    pub fn prefetch(mut self, messages: usize, work: Duration) -> Self {
        self.prefetch = PrefetchLimit { messages, work };
        self
    }

    /// How large a batch of a [`BatchProcessor`](crate::BatchProcessor) grows (default 500
    /// messages and 1 MiB of keys and payloads; a batch always holds its first message,
    /// whatever its size). Ignored by a [`Processor`](crate::Processor). The most messages
    /// must not exceed [`max_in_flight_per_partition`](Self::max_in_flight_per_partition)'s.
    pub fn batch_size(mut self, messages: usize, bytes: usize) -> Self {
        self.batch.messages = messages;
        self.batch.bytes = bytes;
        self.batch_size_set = true;
        self
    }

    /// How long a processor waits at most for a batch to fill before it runs it (default
    /// 100 ms; zero runs what is at hand at once). It never waits while other messages wait
    /// for it (another partition's: a processor runs one batch at a time), nor while a stop,
    /// a revocation or a partition hook waits for it.
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.batch.linger = linger;
        self
    }

    /// How many threads the processors are spread over (default: the number of CPUs; at most
    /// one per processor, of every route). Processors are async, so I/O-bound work needs few threads.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
        self
    }

    /// What happens when `process` fails (default: 3 attempts, 100 ms and 200 ms apart, then
    /// stop). See [`FailurePolicy`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets a librdkafka producer property of the dead-letter producer, such as
    /// `message.timeout.ms` (default here 30 000: how long a dead letter may take to be
    /// acknowledged before the system gives up and stops). The producer takes the consumer's
    /// connection settings (`security.protocol`, `sasl.*`, `ssl.*`) unless they are set here.
    pub fn dead_letter_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.dead_letter_options.insert(key.into(), value.into());
        self
    }

    /// How often finished offsets are committed while running (default 5 s). A crash
    /// redelivers at most what finished within one interval, plus what was in flight.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// How long a revocation waits for the revoked partitions' in-flight messages before it
    /// commits what finished and lets the rebalance go on (default 10 s). The whole group waits
    /// for the slowest member's revocation, so keep it well under `max.poll.interval.ms`;
    /// what is still in flight at the timeout is processed again by the next owner.
    pub fn rebalance_drain_timeout(mut self, timeout: Duration) -> Self {
        self.rebalance_drain_timeout = timeout;
        self
    }

    /// The one deadline for a graceful shutdown (default 20 s), from the stop request to the
    /// return of [`ConsumerSystem::start`](crate::ConsumerSystem::start): finishing what the
    /// processors hold, their stop hooks, the final commit and leaving the group. Keep it
    /// below the time the platform allows before it kills the process (Kubernetes:
    /// `terminationGracePeriodSeconds`, 30 s by default, which includes any preStop hook).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a partition with work may go without its commit point moving before it is
    /// reported as stalled (default 60 s; `None` turns it off): logged at `warn` with the
    /// offset it waits at and what that message waits for (a retry, a message in progress,
    /// a full processor), and counted in [`Metrics::stalls`](crate::Metrics::stalls). Never
    /// while the system stops on purpose.
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How long to wait for the brokers and the topics' metadata at start (default 30 s) before
    /// failing with [`Error::BrokersUnreachable`](crate::Error::BrokersUnreachable).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Whether SIGINT and SIGTERM stop the system (default true): the first one gracefully,
    /// a second one abandons the drain. Turn it off when the application handles signals
    /// itself and stops the system through a [`StopHandle`](crate::StopHandle). Once
    /// installed, the handlers stay for the life of the process (tokio cannot remove them):
    /// after the system returned, these signals no longer end the process by themselves.
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Whether messages carry their Kafka headers (default true). With `false`,
    /// [`Message::headers`](crate::Message::headers) is always `None`, a dead letter carries
    /// no copy of the original headers (its provenance headers are still written), and a
    /// `traceparent` header is not followed. librdkafka parses each record's headers with an
    /// allocation of its own even when there are none: on a topic without headers, leaving
    /// them out saved about a sixth of the consumer's CPU per message in the benchmark
    /// (BENCHMARKS.md). Confluent's .NET client has the same switch
    /// (`ConsumeResultFields`), for the same reason.
    pub fn read_headers(mut self, read: bool) -> Self {
        self.read_headers = read;
        self
    }

    /// Serves HTTP on `addr` (`host:port`, for example `0.0.0.0:9464`) while the system runs,
    /// with the `http` feature (on by default): `GET /metrics` in Prometheus' text format,
    /// `GET /health/live` and `GET /health/ready` (200, or 503 with a JSON reason). The
    /// system installs a Prometheus recorder for the `metrics` facade, once per process,
    /// unless the application installed a recorder of its own (then `/metrics` says so, and
    /// the application's exporter has the figures). A port in use fails the start with
    /// [`Error::Http`](crate::Error::Http).
    pub fn http_addr(mut self, addr: impl Into<String>) -> Self {
        self.http_addr = Some(addr.into());
        self
    }

    /// How long the poll loop may go without a round before `/health/live` says the system
    /// is not alive (default 20 s). A revocation that waits for work in progress does not
    /// count: the loop waits on purpose.
    pub fn poll_ttl(mut self, ttl: Duration) -> Self {
        self.poll_ttl = ttl;
        self
    }

    /// The consumer group protocol (default [`GroupProtocol::Classic`]); see [`GroupProtocol`]
    /// for when to pick which. Under [`GroupProtocol::Consumer`], `build` refuses the classic
    /// protocol's properties (`partition.assignment.strategy`, `session.timeout.ms`,
    /// `heartbeat.interval.ms`, `group.protocol.type`), naming them; under
    /// [`GroupProtocol::Classic`], `group.remote.assignor`.
    pub fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.group_protocol = protocol;
        self
    }

    /// Sets a librdkafka consumer property, such as `session.timeout.ms`,
    /// `group.instance.id` or `auto.offset.reset` (defaults here: `auto.offset.reset=earliest`,
    /// `fetch.queue.backoff.ms=10`). See librdkafka's
    /// CONFIGURATION.md. The properties the framework owns (`bootstrap.servers`, `group.id`,
    /// `enable.auto.commit`, `enable.auto.offset.store`) are refused by `build`. The values of
    /// secret properties (any whose name says password, secret, passphrase or private key,
    /// and `sasl.oauthbearer.config`) never appear in `Debug` output, errors or logs.
    pub fn kafka_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka_options.insert(key.into(), value.into());
        self
    }
}

impl std::fmt::Debug for ConsumerConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfigBuilder")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("processors", &self.processors)
            .field("worker_threads", &self.worker_threads)
            .field("ordering", &self.ordering)
            .field("partition_limit", &self.partition_limit)
            .field("total_limit", &self.total_limit)
            .field("prefetch", &self.prefetch)
            .field("batch", &self.batch)
            .field("failure_policy", &self.failure_policy)
            .field("dead_letter_options", &Redacted(&self.dead_letter_options))
            .field("commit_interval", &self.commit_interval)
            .field("rebalance_drain_timeout", &self.rebalance_drain_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("handle_signals", &self.handle_signals)
            .field("read_headers", &self.read_headers)
            .field("http_addr", &self.http_addr)
            .field("poll_ttl", &self.poll_ttl)
            .field("group_protocol", &self.group_protocol)
            .field("kafka_options", &Redacted(&self.kafka_options))
            .finish()
    }
}
