//! Configuration from the environment, as a container platform passes it.

use std::time::Duration;

use crate::{ConsumerConfig, ConsumerConfigBuilder, Error, GroupProtocol, OrderingMode, Result};

/// The prefix of the variables that set librdkafka properties.
const KAFKA_OPTION: &str = "KAFKA_OPTION_";

impl ConsumerConfig {
    /// A configuration from the environment alone: the default builder with
    /// [`ConsumerConfigBuilder::apply_env`], validated by [`build`](ConsumerConfigBuilder::build).
    ///
    /// ```no_run
    /// // KAFKA_BROKERS=127.0.0.1:9092 KAFKA_GROUP=billing KAFKA_TOPICS=orders,refunds
    /// // KAFKA_OPTION_SESSION_TIMEOUT_MS=10000 HTTP_ADDR=0.0.0.0:9464
    /// let config = kafka_actors::ConsumerConfig::from_env()?;
    /// # Ok::<(), kafka_actors::Error>(())
    /// ```
    pub fn from_env() -> Result<ConsumerConfig> {
        ConsumerConfig::builder().apply_env()?.build()
    }
}

impl ConsumerConfigBuilder {
    /// Overrides the builder's settings with those set in the environment; unset (or empty)
    /// variables leave a setting as it is, so that code can give defaults. Fails with
    /// [`Error::Config`] naming the variable and its bad value.
    ///
    /// | variable | sets | value |
    /// |---|---|---|
    /// | `KAFKA_BROKERS` | [`brokers`](Self::brokers) | `host:port,host:port` |
    /// | `KAFKA_GROUP` | [`group_id`](Self::group_id) | a group id |
    /// | `KAFKA_TOPICS` | the topics (replacing any set before) | `orders,refunds` |
    /// | `KAFKA_PROCESSORS` | [`processors`](Self::processors) | a whole number |
    /// | `KAFKA_WORKER_THREADS` | [`worker_threads`](Self::worker_threads) | a whole number |
    /// | `KAFKA_ORDERING` | [`ordering`](Self::ordering) | `per-partition`, `per-key`, `unordered` |
    /// | `KAFKA_GROUP_PROTOCOL` | [`group_protocol`](Self::group_protocol) | `classic`, `consumer` |
    /// | `KAFKA_COMMIT_INTERVAL` | [`commit_interval`](Self::commit_interval) | a duration: `5s`, `500ms`, `1m` |
    /// | `KAFKA_SHUTDOWN_TIMEOUT` | [`shutdown_timeout`](Self::shutdown_timeout) | a duration |
    /// | `KAFKA_REBALANCE_DRAIN_TIMEOUT` | [`rebalance_drain_timeout`](Self::rebalance_drain_timeout) | a duration |
    /// | `KAFKA_STARTUP_TIMEOUT` | [`startup_timeout`](Self::startup_timeout) | a duration |
    /// | `KAFKA_STALL_TIMEOUT` | [`stall_timeout`](Self::stall_timeout) | a duration, or `off` |
    /// | `KAFKA_POLL_TTL` | [`poll_ttl`](Self::poll_ttl) | a duration |
    /// | `KAFKA_BATCH_MESSAGES`, `KAFKA_BATCH_BYTES` | [`batch_size`](Self::batch_size) | whole numbers |
    /// | `KAFKA_BATCH_LINGER` | [`batch_linger`](Self::batch_linger) | a duration |
    /// | `KAFKA_READ_HEADERS` | [`read_headers`](Self::read_headers) | `true`, `false` |
    /// | `HTTP_ADDR` | [`http_addr`](Self::http_addr) | `0.0.0.0:9464` |
    /// | `KAFKA_OPTION_<NAME>` | the librdkafka property [`kafka_option`](Self::kafka_option) | its value |
    ///
    /// `<NAME>` is the property in upper case with `_` for `.` (`__` for a `_`):
    /// `KAFKA_OPTION_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
    pub fn apply_env(self) -> Result<Self> {
        let options = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
            .filter(|(name, _)| name.starts_with(KAFKA_OPTION))
            .map(|(name, value)| {
                let value = value
                    .into_string()
                    .map_err(|_| Error::config(name.clone(), "is not valid UTF-8".to_owned()))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>>>()?;
        self.apply_vars(|name| std::env::var(name).ok(), options)
    }

    /// [`apply_env`](Self::apply_env) over any source of variables: `var` reads one, `options`
    /// are the `KAFKA_OPTION_*` ones.
    fn apply_vars(
        mut self,
        var: impl Fn(&str) -> Option<String>,
        options: Vec<(String, String)>,
    ) -> Result<Self> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if let Some(brokers) = var("KAFKA_BROKERS") {
            self = self.brokers(brokers.trim());
        }
        if let Some(group) = var("KAFKA_GROUP") {
            self = self.group_id(group.trim());
        }
        if let Some(topics) = var("KAFKA_TOPICS") {
            self = self.replace_topics(
                topics
                    .split(',')
                    .map(str::trim)
                    .filter(|topic| !topic.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        if let Some(value) = var("KAFKA_PROCESSORS") {
            self = self.processors(whole_number("KAFKA_PROCESSORS", &value)?);
        }
        if let Some(value) = var("KAFKA_WORKER_THREADS") {
            self = self.worker_threads(whole_number("KAFKA_WORKER_THREADS", &value)?);
        }
        if let Some(value) = var("KAFKA_ORDERING") {
            self = self.ordering(ordering(&value)?);
        }
        if let Some(value) = var("KAFKA_GROUP_PROTOCOL") {
            self = self.group_protocol(group_protocol(&value)?);
        }
        if let Some(value) = var("KAFKA_BATCH_MESSAGES") {
            let messages = whole_number("KAFKA_BATCH_MESSAGES", &value)?;
            let bytes = self.batch.bytes;
            self = self.batch_size(messages, bytes);
        }
        if let Some(value) = var("KAFKA_BATCH_BYTES") {
            let bytes = whole_number("KAFKA_BATCH_BYTES", &value)?;
            let messages = self.batch.messages;
            self = self.batch_size(messages, bytes);
        }
        let (mut messages, mut bytes) = (self.total_limit.messages, self.total_limit.bytes);
        if let Some(value) = var("KAFKA_MAX_IN_FLIGHT_MESSAGES") {
            messages = whole_number("KAFKA_MAX_IN_FLIGHT_MESSAGES", &value)?;
        }
        if let Some(value) = var("KAFKA_MAX_IN_FLIGHT_BYTES") {
            bytes = whole_number("KAFKA_MAX_IN_FLIGHT_BYTES", &value)?;
        }
        self = self.max_in_flight(messages, bytes);
        let limit = self.partition_limit;
        let (mut messages, mut bytes) = (limit.messages, limit.bytes);
        if let Some(value) = var("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_MESSAGES") {
            messages = whole_number("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_MESSAGES", &value)?;
        }
        if let Some(value) = var("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_BYTES") {
            bytes = whole_number("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_BYTES", &value)?;
        }
        self = self.max_in_flight_per_partition(messages, bytes);
        if let Some(value) = var("KAFKA_PREFETCH_MESSAGES") {
            let messages = whole_number("KAFKA_PREFETCH_MESSAGES", &value)?;
            let work = self.prefetch.work;
            self = self.prefetch(messages, work);
        }
        if let Some(value) = var("KAFKA_PREFETCH_WORK") {
            let work = duration("KAFKA_PREFETCH_WORK", &value)?;
            let messages = self.prefetch.messages;
            self = self.prefetch(messages, work);
        }
        type Setter = fn(ConsumerConfigBuilder, Duration) -> ConsumerConfigBuilder;
        let durations: [(&str, Setter); 6] = [
            ("KAFKA_COMMIT_INTERVAL", Self::commit_interval),
            ("KAFKA_SHUTDOWN_TIMEOUT", Self::shutdown_timeout),
            (
                "KAFKA_REBALANCE_DRAIN_TIMEOUT",
                Self::rebalance_drain_timeout,
            ),
            ("KAFKA_STARTUP_TIMEOUT", Self::startup_timeout),
            ("KAFKA_POLL_TTL", Self::poll_ttl),
            ("KAFKA_BATCH_LINGER", Self::batch_linger),
        ];
        for (name, set) in durations {
            if let Some(value) = var(name) {
                self = set(self, duration(name, &value)?);
            }
        }
        if let Some(value) = var("KAFKA_STALL_TIMEOUT") {
            let timeout = match value.trim() {
                "off" => None,
                other => Some(duration("KAFKA_STALL_TIMEOUT", other)?),
            };
            self = self.stall_timeout(timeout);
        }
        if let Some(value) = var("KAFKA_READ_HEADERS") {
            let read = match value.trim() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(Error::config(
                        "KAFKA_READ_HEADERS",
                        format!("is {other:?}; expected true or false"),
                    ));
                }
            };
            self = self.read_headers(read);
        }
        if let Some(addr) = var("HTTP_ADDR") {
            self = self.http_addr(addr.trim());
        }
        for (name, value) in options {
            let property = property_name(&name)?;
            self = self.kafka_option(property, value);
        }
        Ok(self)
    }
}

fn whole_number(name: &str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::config(name, format!("is {value:?}, not a whole number")))
}

fn duration(name: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim()).map_err(|error| {
        Error::config(
            name,
            format!("is {value:?}, not a duration such as 30s, 500ms or 1m ({error})"),
        )
    })
}

fn ordering(value: &str) -> Result<OrderingMode> {
    match value.trim() {
        "per-partition" => Ok(OrderingMode::PerPartition),
        "per-key" => Ok(OrderingMode::PerKey),
        "unordered" => Ok(OrderingMode::Unordered),
        _ => Err(Error::config(
            "KAFKA_ORDERING",
            format!("is {value:?}, not one of per-partition, per-key, unordered"),
        )),
    }
}

fn group_protocol(value: &str) -> Result<GroupProtocol> {
    match value.trim() {
        "classic" => Ok(GroupProtocol::Classic),
        "consumer" => Ok(GroupProtocol::Consumer),
        _ => Err(Error::config(
            "KAFKA_GROUP_PROTOCOL",
            format!("is {value:?}, not one of classic, consumer"),
        )),
    }
}

/// `KAFKA_OPTION_SECURITY_PROTOCOL` → `security.protocol`; `__` stands for `_`.
fn property_name(variable: &str) -> Result<String> {
    let name = &variable[KAFKA_OPTION.len()..];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::config(
            variable,
            "does not name a librdkafka property: KAFKA_OPTION_ then the property in upper \
             case with _ for . (for example KAFKA_OPTION_SECURITY_PROTOCOL)",
        ));
    }
    Ok(name
        .to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ConsumerConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let options = vars
            .iter()
            .filter(|(name, _)| name.starts_with(KAFKA_OPTION))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        ConsumerConfig::builder()
            .topic("from-code")
            .apply_vars(|name| vars.get(name).cloned(), options)?
            .build()
    }

    #[test]
    fn every_variable_reaches_its_setting() {
        let config = from(&[
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("KAFKA_GROUP", "billing"),
            ("KAFKA_TOPICS", "orders, refunds"),
            ("KAFKA_PROCESSORS", "16"),
            ("KAFKA_WORKER_THREADS", "2"),
            ("KAFKA_ORDERING", "per-key"),
            ("KAFKA_GROUP_PROTOCOL", "consumer"),
            ("KAFKA_COMMIT_INTERVAL", "2s"),
            ("KAFKA_SHUTDOWN_TIMEOUT", "25s"),
            ("KAFKA_REBALANCE_DRAIN_TIMEOUT", "500ms"),
            ("KAFKA_STARTUP_TIMEOUT", "1m"),
            ("KAFKA_STALL_TIMEOUT", "off"),
            ("KAFKA_POLL_TTL", "45s"),
            ("KAFKA_READ_HEADERS", "false"),
            ("KAFKA_PREFETCH_MESSAGES", "64"),
            ("KAFKA_PREFETCH_WORK", "250ms"),
            ("KAFKA_MAX_IN_FLIGHT_MESSAGES", "5000"),
            ("KAFKA_MAX_IN_FLIGHT_BYTES", "8388608"),
            ("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_MESSAGES", "1000"),
            ("KAFKA_MAX_IN_FLIGHT_PER_PARTITION_BYTES", "1048576"),
            ("KAFKA_OPTION_FETCH_MAX_BYTES", "1048576"),
            ("KAFKA_OPTION_CLIENT_ID", "billing-1"),
        ])
        .unwrap();
        assert_eq!(config.brokers, "127.0.0.1:9092");
        assert_eq!(config.group_id, "billing");
        assert_eq!(config.topics, ["orders", "refunds"]);
        assert_eq!(config.processors, 16);
        assert_eq!(config.worker_threads, 2);
        assert_eq!(config.ordering, OrderingMode::PerKey);
        assert_eq!(config.group_protocol, GroupProtocol::Consumer);
        assert_eq!(config.commit_interval, Duration::from_secs(2));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(config.rebalance_drain_timeout, Duration::from_millis(500));
        assert_eq!(config.startup_timeout, Duration::from_secs(60));
        assert_eq!(config.stall_timeout, None);
        assert_eq!(config.poll_ttl, Duration::from_secs(45));
        assert!(!config.read_headers);
        assert_eq!(config.prefetch.messages, 64);
        assert_eq!(config.prefetch.work, Duration::from_millis(250));
        assert_eq!(
            (config.total_limit.messages, config.total_limit.bytes),
            (5_000, 8 << 20)
        );
        assert_eq!(
            (
                config.partition_limit.messages,
                config.partition_limit.bytes
            ),
            (1_000, 1 << 20)
        );
        assert_eq!(config.kafka_options["fetch.max.bytes"], "1048576");
        assert_eq!(config.kafka_options["client.id"], "billing-1");
    }

    #[test]
    fn unset_variables_leave_what_the_code_set() {
        let config = from(&[("KAFKA_BROKERS", "b:9092"), ("KAFKA_GROUP", "g")]).unwrap();
        assert_eq!(config.topics, ["from-code"]);
        assert_eq!(config.processors, 4);
        assert!(config.read_headers);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_value() {
        let base = [("KAFKA_BROKERS", "b:9092"), ("KAFKA_GROUP", "g")];
        for (name, value, says) in [
            ("KAFKA_PROCESSORS", "many", "not a whole number"),
            ("KAFKA_ORDERING", "by-key", "not one of per-partition"),
            (
                "KAFKA_GROUP_PROTOCOL",
                "next",
                "not one of classic, consumer",
            ),
            ("KAFKA_SHUTDOWN_TIMEOUT", "20", "not a duration"),
            ("KAFKA_STALL_TIMEOUT", "never", "not a duration"),
            ("KAFKA_READ_HEADERS", "no", "expected true or false"),
            ("KAFKA_OPTION_", "x", "does not name a librdkafka property"),
            (
                "KAFKA_OPTION_SESSION-TIMEOUT",
                "x",
                "does not name a librdkafka property",
            ),
        ] {
            let mut vars = base.to_vec();
            vars.push((name, value));
            let error = from(&vars).unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
            assert!(error.contains(says), "{error}");
            if !name.starts_with(KAFKA_OPTION) {
                assert!(error.contains(&format!("{value:?}")), "{error}");
            }
        }
    }

    #[test]
    fn a_bad_http_addr_is_refused_by_build() {
        let error = from(&[
            ("KAFKA_BROKERS", "b:9092"),
            ("KAFKA_GROUP", "g"),
            ("HTTP_ADDR", "localhost"),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("http_addr"), "{error}");
        assert!(error.contains("\"localhost\""), "{error}");
    }

    #[test]
    fn property_names_map_underscores_to_dots() {
        assert_eq!(
            property_name("KAFKA_OPTION_SECURITY_PROTOCOL").unwrap(),
            "security.protocol"
        );
        assert_eq!(
            property_name("KAFKA_OPTION_SOME__ODD_NAME").unwrap(),
            "some_odd.name"
        );
    }
}
