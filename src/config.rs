//! Configuration: a builder that validates its input before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::flow::InFlightLimit;
use crate::flow::{BatchLimit, PrefetchLimit};
use crate::{Error, FailurePolicy, OrderingMode, Result};

/// librdkafka properties the framework sets itself; a user value would break its guarantees
/// or duplicate a builder method.
const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "is set with `brokers(..)`"),
    ("group.id", "is set with `group_id(..)`"),
    (
        "enable.auto.commit",
        "is always false: the framework commits only finished offsets",
    ),
    (
        "enable.auto.offset.store",
        "is always false: the framework decides what is committed",
    ),
    ("group.protocol", "is set with `group_protocol(..)`"),
];

/// librdkafka properties of the classic protocol that the consumer protocol refuses: the
/// broker decides them (`group.consumer.*` settings on the broker).
const CLASSIC_ONLY_PROPERTIES: &[&str] = &[
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// librdkafka properties of the consumer protocol only.
const CONSUMER_ONLY_PROPERTIES: &[&str] = &["group.remote.assignor"];

/// How the members of a consumer group agree on who reads which partition.
///
/// - [`Classic`](GroupProtocol::Classic), the default: a member (the group's leader) assigns
///   the partitions with the assignor of `partition.assignment.strategy` (librdkafka's
///   default: range, then round-robin, both eager: every rebalance revokes every partition;
///   `cooperative-sticky` moves only the partitions that change hands). Session and
///   heartbeat times are the client's (`session.timeout.ms`, `heartbeat.interval.ms`). Any
///   Kafka version.
/// - [`Consumer`](GroupProtocol::Consumer): the next-generation protocol of KIP-848 (Kafka
///   4.0 and later): the broker assigns (`group.remote.assignor`: `uniform` or `range`), every
///   rebalance is incremental and no member stops for another's join. The broker decides
///   session and heartbeat times (`group.consumer.session.timeout.ms` and
///   `group.consumer.heartbeat.interval.ms` on the broker), so the client refuses the classic
///   settings and `build()` names them. Commits carry the member's epoch: a commit from an
///   epoch the broker has moved past is refused, and a fenced member's partitions are lost
///   (nothing of them is committed later, as with any lost assignment). Static membership
///   (`group.instance.id`) differs too: a second member with the same id is refused and the
///   first keeps the partitions, where the classic protocol fences the first.
///
/// Pick `Consumer` on Kafka 4.x for groups that rebalance often (autoscaling, rolling
/// deploys); stay on `Classic` for older brokers and where the tests you rely on were run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// The classic protocol (the default).
    #[default]
    Classic,
    /// KIP-848's consumer protocol.
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// Whether a librdkafka property holds a secret, whose value is never printed: a password, a
/// secret or passphrase, a private key, or the OAUTHBEARER configuration.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "passphrase",
        "private.key",
        "key.pem",
        "ssl_key",
    ]
    .iter()
    .any(|part| key.contains(part))
        || key == "sasl.oauthbearer.config"
}

/// Whether a librdkafka property says how to reach and authenticate with the brokers: the
/// dead-letter producer takes these from the consumer's properties.
fn is_connection_setting(key: &str) -> bool {
    [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "enable.ssl.",
        "enable.sasl.",
    ]
    .iter()
    .any(|prefix| key.starts_with(prefix))
        || matches!(key, "broker.address.family" | "client.dns.lookup")
}

/// Properties as `Debug` shows them: secret values replaced.
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_secret(key) { "[redacted]" } else { value };
                (key, shown)
            }))
            .finish()
    }
}

/// The address to serve HTTP on: an IP address and a port (a host name would resolve to
/// several).
fn parse_http_addr(addr: &str) -> Result<SocketAddr> {
    if !cfg!(feature = "http") {
        return Err(Error::config(
            "http_addr",
            "needs the crate's `http` feature, which this build leaves out",
        ));
    }
    addr.trim().parse().map_err(|_| {
        Error::config(
            "http_addr",
            format!("is {addr:?}, which is not an IP address and port such as 0.0.0.0:9464"),
        )
    })
}

/// librdkafka's defaults for the properties the validation reasons about.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_millis(45_000);
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_millis(300_000);

/// The default in-flight limits: generous enough that a fast processor never waits on them,
/// small enough that a slow one cannot pile up more than a few tens of megabytes.
const DEFAULT_PARTITION_LIMIT: InFlightLimit = InFlightLimit {
    messages: 10_000,
    bytes: 16 << 20,
};
const DEFAULT_TOTAL_LIMIT: InFlightLimit = InFlightLimit {
    messages: 100_000,
    bytes: 64 << 20,
};
/// What a processor holds beyond the message in progress: enough that a fast processor never
/// waits for the fetcher, little enough that a stop or a revocation waits for a few
/// milliseconds of work.
const DEFAULT_PREFETCH: PrefetchLimit = PrefetchLimit {
    messages: 8_192,
    work: Duration::from_millis(10),
};
/// A batch of a `BatchProcessor`: large enough that a round trip per batch is cheap next to
/// its rows, small enough that a transaction stays short.
pub(crate) const DEFAULT_BATCH: BatchLimit = BatchLimit {
    messages: 500,
    bytes: 1 << 20,
    linger: Duration::from_millis(100),
};
/// Below a 30 s Kubernetes grace period, with room for a preStop hook.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Far above the poll interval (a healthy loop runs at least every few milliseconds), below
/// Kubernetes' usual liveness budget (3 failures, 10 s apart).
const DEFAULT_POLL_TTL: Duration = Duration::from_secs(20);

/// A validated configuration for a [`ConsumerSystem`](crate::ConsumerSystem).
///
/// Build one with [`ConsumerConfig::builder`]. Its `Debug` output never shows the value of a
/// secret librdkafka property (a password, a secret, a private key): see
/// [`ConsumerConfigBuilder::kafka_option`].
#[derive(Clone)]
pub struct ConsumerConfig {
    pub(crate) brokers: String,
    pub(crate) group_id: String,
    pub(crate) topics: Vec<String>,
    pub(crate) processors: usize,
    pub(crate) worker_threads: usize,
    pub(crate) ordering: OrderingMode,
    pub(crate) partition_limit: InFlightLimit,
    pub(crate) total_limit: InFlightLimit,
    pub(crate) prefetch: PrefetchLimit,
    pub(crate) batch: BatchLimit,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) dead_letter_options: BTreeMap<String, String>,
    pub(crate) commit_interval: Duration,
    pub(crate) rebalance_drain_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) stall_timeout: Option<Duration>,
    pub(crate) handle_signals: bool,
    pub(crate) read_headers: bool,
    pub(crate) http_addr: Option<SocketAddr>,
    pub(crate) poll_ttl: Duration,
    pub(crate) group_protocol: GroupProtocol,
    pub(crate) kafka_options: BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
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
            .field("warnings", &self.warnings)
            .finish()
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

impl ConsumerConfig {
    /// The librdkafka properties of the dead-letter producer: the consumer's connection
    /// settings (security protocol, SASL, TLS), then the ones set with
    /// [`dead_letter_option`](ConsumerConfigBuilder::dead_letter_option) over them.
    pub(crate) fn dead_letter_client_options(&self) -> BTreeMap<String, String> {
        let mut options: BTreeMap<String, String> = self
            .kafka_options
            .iter()
            .filter(|(key, _)| is_connection_setting(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        options.extend(self.dead_letter_options.clone());
        options
    }

    /// Starts a builder with the defaults.
    pub fn builder() -> ConsumerConfigBuilder {
        ConsumerConfigBuilder::default()
    }

    /// Settings that are valid but contradict each other; each was logged at `warn` by
    /// [`build`](ConsumerConfigBuilder::build).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The librdkafka configuration of the consumer: the user's properties over the framework's
    /// defaults, and the framework's own settings over both.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka's default (1000 ms) idles a consumer for a second whenever its prefetch
            // queue fills; measured in BENCHMARKS.md, it costs the framework most of its speed.
            .set("fetch.queue.backoff.ms", "10")
            // Records are checked against their batch's CRC, as Kafka's Java consumer does by
            // default (librdkafka's default is off): a corrupt batch stops the system
            // (`StopReason::Unreadable`) instead of being processed.
            .set("check.crcs", "true");
        for (key, value) in &self.kafka_options {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("group.protocol", self.group_protocol.name());
        config
    }

    fn duration_option(&self, key: &str) -> Result<Option<Duration>> {
        self.kafka_options
            .get(key)
            .map(|value| {
                value
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        Error::config(
                            key,
                            format!("must be a number of milliseconds, got {value:?}"),
                        )
                    })
            })
            .transpose()
    }
}

/// Builds a [`ConsumerConfig`]. `brokers`, `group_id` and at least one topic are required;
/// everything else has a default. Its `Debug` output never shows the value of a secret
/// librdkafka property.
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
    brokers: String,
    group_id: String,
    topics: Vec<String>,
    processors: usize,
    worker_threads: Option<usize>,
    ordering: OrderingMode,
    pub(crate) partition_limit: InFlightLimit,
    pub(crate) total_limit: InFlightLimit,
    pub(crate) prefetch: PrefetchLimit,
    pub(crate) batch: BatchLimit,
    /// Whether `batch_size` was called: the default batch shrinks to fit the in-flight limit.
    batch_size_set: bool,
    failure_policy: FailurePolicy,
    dead_letter_options: BTreeMap<String, String>,
    commit_interval: Duration,
    rebalance_drain_timeout: Duration,
    shutdown_timeout: Duration,
    startup_timeout: Duration,
    stall_timeout: Option<Duration>,
    handle_signals: bool,
    read_headers: bool,
    http_addr: Option<String>,
    poll_ttl: Duration,
    group_protocol: GroupProtocol,
    kafka_options: BTreeMap<String, String>,
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

    /// Adds a topic to subscribe to. At least one is required.
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
    /// processors than assigned partitions add nothing; in the other modes they do.
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
    /// processor on one partition ran 28 % slower). The rest of what was fetched waits in the fetcher (counted in the in-flight
    /// limits), so a stop or a revocation waits only for what processors hold: about `work`
    /// plus the slowest message in progress, whatever the backlog. Larger values smooth out
    /// processors whose message times vary a lot; smaller ones make stops shorter.
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
    /// 100 ms; zero runs what is at hand at once). It never waits while a stop, a revocation
    /// or a partition hook waits for it.
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.batch.linger = linger;
        self
    }

    /// How many threads the processors are spread over (default: the number of CPUs, at most
    /// the number of processors). Processors are async, so I/O-bound work needs few threads.
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
    /// failing with [`Error::BrokersUnreachable`].
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
    /// [`Error::Http`].
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

    /// Validates the settings. Fails with [`Error::Config`] naming the first setting at fault;
    /// logs a warning for each pair of settings that contradict each other.
    pub fn build(mut self) -> Result<ConsumerConfig> {
        if self.brokers.trim().is_empty() {
            return Err(Error::config(
                "brokers",
                "is required: the bootstrap servers, e.g. \"127.0.0.1:9092\"",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(Error::config("group_id", "is required"));
        }
        if self.topics.is_empty() {
            return Err(Error::config("topics", "needs at least one topic"));
        }
        if let Some(topic) = self.topics.iter().find(|t| !is_valid_topic_name(t)) {
            return Err(Error::config(
                "topics",
                format!(
                    "contains {topic:?}, which is not a topic name (1 to 249 of [a-zA-Z0-9._-])"
                ),
            ));
        }
        if self.processors == 0 {
            return Err(Error::config("processors", "must be at least 1"));
        }
        if self.worker_threads == Some(0) {
            return Err(Error::config("worker_threads", "must be at least 1"));
        }
        for (setting, limit) in [
            ("max_in_flight_per_partition", self.partition_limit),
            ("max_in_flight", self.total_limit),
        ] {
            if limit.messages == 0 || limit.bytes == 0 {
                return Err(Error::config(
                    setting,
                    "must allow at least one message and one byte",
                ));
            }
        }
        if self.prefetch.messages == 0 || self.prefetch.work.is_zero() {
            return Err(Error::config(
                "prefetch",
                "must allow at least one message and some work",
            ));
        }
        if self.batch.messages == 0 || self.batch.bytes == 0 {
            return Err(Error::config(
                "batch_size",
                "must allow at least one message and one byte",
            ));
        }
        if !self.batch_size_set {
            self.batch.messages = self.batch.messages.min(self.partition_limit.messages);
        } else if self.batch.messages > self.partition_limit.messages {
            return Err(Error::config(
                "batch_size",
                format!(
                    "allows {} messages, more than max_in_flight_per_partition's {}: a batch \
                     of one partition could never fill",
                    self.batch.messages, self.partition_limit.messages
                ),
            ));
        }
        if self.stall_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(Error::config(
                "stall_timeout",
                "must be longer than zero (None turns stall detection off)",
            ));
        }
        for (setting, value) in [
            ("commit_interval", self.commit_interval),
            ("rebalance_drain_timeout", self.rebalance_drain_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("startup_timeout", self.startup_timeout),
            ("poll_ttl", self.poll_ttl),
        ] {
            if value.is_zero() {
                return Err(Error::config(setting, "must be longer than zero"));
            }
        }
        let http_addr = self.http_addr.as_deref().map(parse_http_addr).transpose()?;
        if cfg!(not(feature = "http")) && http_addr.is_some() {
            return Err(Error::config(
                "http_addr",
                "needs the `http` feature, which this build leaves out: nothing would serve it",
            ));
        }
        self.failure_policy
            .validate()
            .map_err(|reason| Error::config("failure_policy", reason))?;
        for (key, reason) in RESERVED_PROPERTIES {
            if self.kafka_options.contains_key(*key) {
                return Err(Error::config(*key, *reason));
            }
        }
        let (refused, reason) = match self.group_protocol {
            GroupProtocol::Consumer => (
                CLASSIC_ONLY_PROPERTIES,
                "is refused by the consumer group protocol (KIP-848): the broker decides it \
                 (group.consumer.* settings on the broker)",
            ),
            GroupProtocol::Classic => (
                CONSUMER_ONLY_PROPERTIES,
                "belongs to the consumer group protocol: set group_protocol(GroupProtocol::Consumer)",
            ),
        };
        if let Some(key) = refused
            .iter()
            .find(|key| self.kafka_options.contains_key(**key))
        {
            return Err(Error::config(*key, reason));
        }

        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut config = ConsumerConfig {
            worker_threads: self.worker_threads.unwrap_or(cpus).min(self.processors),
            brokers: self.brokers,
            group_id: self.group_id,
            topics: self.topics,
            processors: self.processors,
            ordering: self.ordering,
            partition_limit: self.partition_limit,
            total_limit: self.total_limit,
            prefetch: self.prefetch,
            batch: self.batch,
            failure_policy: self.failure_policy,
            dead_letter_options: self.dead_letter_options,
            commit_interval: self.commit_interval,
            rebalance_drain_timeout: self.rebalance_drain_timeout,
            shutdown_timeout: self.shutdown_timeout,
            startup_timeout: self.startup_timeout,
            stall_timeout: self.stall_timeout,
            handle_signals: self.handle_signals,
            read_headers: self.read_headers,
            http_addr,
            poll_ttl: self.poll_ttl,
            group_protocol: self.group_protocol,
            kafka_options: self.kafka_options,
            warnings: Vec::new(),
        };
        // librdkafka checks every property name and value when it builds its configuration.
        config
            .client_config()
            .create_native_config()
            .map_err(|error| match error {
                // librdkafka's description may quote the value: not for a secret.
                KafkaError::ClientConfig(_, _, key, _) if is_secret(&key) => Error::config(
                    key,
                    "has a value librdkafka refuses (not shown: it is secret)",
                ),
                KafkaError::ClientConfig(_, description, key, _) => Error::config(key, description),
                other => Error::Kafka(other),
            })?;
        config.warnings = contradictions(&config)?;
        for warning in &config.warnings {
            log::warn!("{warning}");
        }
        Ok(config)
    }
}

/// Settings that are each valid but work against each other.
fn contradictions(config: &ConsumerConfig) -> Result<Vec<String>> {
    let session_timeout = config
        .duration_option("session.timeout.ms")?
        .unwrap_or(DEFAULT_SESSION_TIMEOUT);
    let max_poll_interval = config
        .duration_option("max.poll.interval.ms")?
        .unwrap_or(DEFAULT_MAX_POLL_INTERVAL);
    let shutdown = config.shutdown_timeout;
    let mut warnings = Vec::new();
    if shutdown > max_poll_interval {
        warnings.push(format!(
            "shutdown_timeout ({shutdown:?}) is longer than max.poll.interval.ms \
             ({max_poll_interval:?}): a long drain could outlast the group membership"
        ));
    }
    if config.kafka_options.contains_key("group.instance.id") && shutdown >= session_timeout {
        warnings.push(format!(
            "shutdown_timeout ({shutdown:?}) is not below session.timeout.ms \
             ({session_timeout:?}) with static membership (group.instance.id): the broker may \
             hand this member's partitions to another member while it still drains them"
        ));
    }
    if config.rebalance_drain_timeout >= max_poll_interval {
        warnings.push(format!(
            "rebalance_drain_timeout ({:?}) is not shorter than max.poll.interval.ms \
             ({max_poll_interval:?}): a slow revocation could get this member thrown out of \
             the group",
            config.rebalance_drain_timeout
        ));
    }
    if config.commit_interval > shutdown.max(session_timeout) {
        warnings.push(format!(
            "commit_interval ({:?}) is longer than both shutdown_timeout and \
             session.timeout.ms: a crash redelivers up to a whole interval of messages",
            config.commit_interval
        ));
    }
    Ok(warnings)
}

fn is_valid_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests;
