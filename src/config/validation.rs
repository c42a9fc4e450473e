//! What `build()` checks before anything starts, pure and unit-tested: the required settings
//! and values that make no sense, the librdkafka properties the framework owns or the group
//! protocol refuses, librdkafka's own check of every property, and the settings that each
//! are valid but work against each other.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::error::KafkaError;

use super::properties::is_secret;
use super::{ConsumerConfig, ConsumerConfigBuilder, GroupProtocol, LOG_TARGET};
use crate::{Error, Result};

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
pub(super) const CLASSIC_ONLY_PROPERTIES: &[&str] = &[
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// librdkafka properties of the consumer protocol only.
const CONSUMER_ONLY_PROPERTIES: &[&str] = &["group.remote.assignor"];

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

impl ConsumerConfigBuilder {
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
            // At most one per processor: capped when the system starts, by the processors of
            // every route.
            worker_threads: self.worker_threads.unwrap_or(cpus),
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
            log::warn!(target: LOG_TARGET, "{warning}");
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

pub(crate) fn is_valid_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ConsumerConfig {
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
