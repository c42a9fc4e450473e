//! Configuration: a builder that validates its input before anything starts.
//!
//! Here: the validated [`ConsumerConfig`], the [`GroupProtocol`] and the defaults. The
//! builder's setters are in `builder.rs`, `build()` with its checks in `validation.rs`, and
//! the librdkafka properties the clients get in `properties.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::flow::{BatchLimit, InFlightLimit, PrefetchLimit};
use crate::{FailurePolicy, OrderingMode};

mod builder;
mod properties;
pub(crate) mod validation;

pub use builder::ConsumerConfigBuilder;
use properties::Redacted;

/// The target of the lines the configuration logs, whichever of its files writes them.
const LOG_TARGET: &str = module_path!();

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

impl ConsumerConfig {
    /// Starts a builder with the defaults.
    pub fn builder() -> ConsumerConfigBuilder {
        ConsumerConfigBuilder::default()
    }

    /// Settings that are valid but contradict each other; each was logged at `warn` by
    /// [`build`](ConsumerConfigBuilder::build).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[cfg(test)]
mod tests;
