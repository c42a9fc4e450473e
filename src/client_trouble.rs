//! What librdkafka reports while it works, from every client of a system (the consumer and the
//! dead-letter producer): its errors and its own log lines go through one [`RepeatLimiter`]
//! (a broker outage is a few lines, not a warning per reconnection), are counted by kind in
//! the metrics, and the outages in progress show on `/health/live`.
//!
//! The clients' contexts call in here from the threads that poll them (librdkafka's log lines
//! come as events of the same queues, as rdkafka sets `log.queue`): the consumer's from the
//! Fetcher's thread (and the threads that check the cluster at start and close the consumer),
//! the dead-letter producer's from rdkafka's polling thread. The Fetcher's rounds, at least
//! every 100 ms, call [`ClientTrouble::tick`] for the summaries and the ends of outages.
//!
//! Lines about errors and outages have this module's target, `kafka_actors::client_trouble`;
//! librdkafka's own lines have [`LIBRDKAFKA_TARGET`].

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use log::Level;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::instruments::GroupInstruments;
use crate::offsets::TopicPartition;
use crate::repeats::{Key, Notice, Occurrence, RepeatLimiter};
use crate::trouble::Trouble;

/// The target of librdkafka's own log lines, as the framework passes them on.
pub(crate) const LIBRDKAFKA_TARGET: &str = "kafka_actors::librdkafka";
/// The `kind` of an error that has no error code.
const UNKNOWN_KIND: &str = "Unknown";

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ClientTrouble {
    state: Mutex<State>,
    instruments: GroupInstruments,
}

#[derive(Debug, Default)]
struct State {
    limiter: RepeatLimiter,
    /// The outages whose gauge was last set above 0.
    gauged: BTreeSet<Key>,
}

/// An outage in progress, as `/health/live` shows it.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutageView {
    /// `all` (every broker is down), or a broker's `host:port`.
    pub(crate) broker: String,
    pub(crate) since: SystemTime,
    pub(crate) seconds: f64,
    pub(crate) errors: u64,
    pub(crate) latest: String,
}

impl ClientTrouble {
    pub(crate) fn new(instruments: GroupInstruments) -> Self {
        ClientTrouble {
            state: Mutex::new(State::default()),
            instruments,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays usable after a panic elsewhere: at worst a count is off.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An error librdkafka reported (`ClientContext::error`): counted, and logged as the
    /// limiter lets it through; a transient one at `warn`, the rest at `error`.
    pub(crate) fn error(&self, error: &KafkaError, trouble: Trouble, reason: &str) {
        let code = error.rdkafka_error_code();
        let kind = code.map_or_else(|| UNKNOWN_KIND.to_owned(), |code| format!("{code:?}"));
        self.instruments.librdkafka_error(&kind);
        let key = key_of_error(code, &kind, reason);
        let (text, level) = match (&key, trouble) {
            (Key::Cluster | Key::Broker(_), _) => (format!("{reason} ({kind})"), Level::Warn),
            (_, Trouble::Transient) => (
                format!("{error} (librdkafka retries): {reason}"),
                Level::Warn,
            ),
            _ => (format!("{error}: {reason}"), Level::Error),
        };
        self.occurred(key, &kind, &text, level);
    }

    /// An error librdkafka returned in place of a partition's records, which it retries.
    pub(crate) fn record_error(&self, partition: &TopicPartition, code: RDKafkaErrorCode) {
        let kind = format!("{code:?}");
        self.instruments.librdkafka_error(&kind);
        let text = format!("fetching {partition} failed (librdkafka retries): {code}");
        let key = Key::Error {
            kind: kind.clone(),
            broker: None,
        };
        self.occurred(key, &kind, &text, Level::Warn);
    }

    /// One of librdkafka's log lines (`ClientContext::log`), at the level [`level_of`] gives
    /// it; from `info` up through the limiter.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let level = level_of(level, facility);
        if level > Level::Info {
            log::log!(target: LIBRDKAFKA_TARGET, level, "{facility} {message}");
            return;
        }
        let key = Key::LogLine {
            facility: facility.to_owned(),
            broker: broker_of(without_thread(message)),
        };
        self.occurred(key, facility, &format!("{facility} {message}"), level);
    }

    /// A broker answered: a commit was acknowledged, or partitions were assigned.
    pub(crate) fn sign_of_life(&self) {
        self.state().limiter.sign_of_life(Instant::now());
    }

    /// Logs the summaries and ends that are due, and sets the outage gauges.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let notices = {
            let mut state = self.state();
            let notices = state.limiter.tick(now);
            let outages = state.limiter.outages();
            let open: BTreeSet<Key> = outages.iter().map(|outage| outage.key.clone()).collect();
            for outage in &outages {
                let seconds = now.saturating_duration_since(outage.since).as_secs_f64();
                self.instruments
                    .unreachable(&broker_label(&outage.key))
                    .set(seconds);
            }
            for over in state.gauged.difference(&open) {
                self.instruments.unreachable(&broker_label(over)).set(0.0);
            }
            state.gauged = open;
            notices
        };
        log_notices(notices, now);
    }

    /// The outages in progress.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn outages(&self) -> Vec<OutageView> {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        self.state()
            .limiter
            .outages()
            .into_iter()
            .map(|outage| {
                let lasted = now.saturating_duration_since(outage.since);
                OutageView {
                    broker: broker_label(&outage.key),
                    since: wall_now.checked_sub(lasted).unwrap_or(wall_now),
                    seconds: lasted.as_secs_f64(),
                    errors: outage.errors,
                    latest: outage.latest,
                }
            })
            .collect()
    }

    fn occurred(&self, key: Key, kind: &str, text: &str, level: Level) {
        let now = Instant::now();
        let occurrence = Occurrence { kind, text, level };
        let began = self.state().limiter.occurred(key, occurrence, now);
        log_notices(began, now);
    }
}

/// Logs outside the lock: a logger may take its time.
fn log_notices(notices: impl IntoIterator<Item = Notice>, now: Instant) {
    let wall_now = SystemTime::now();
    for notice in notices {
        let target = match notice.key() {
            Key::LogLine { .. } => LIBRDKAFKA_TARGET,
            _ => module_path!(),
        };
        log::log!(target: target, notice.level(), "{}", notice.render(now, wall_now));
    }
}

/// The `broker` label of an outage's gauge.
fn broker_label(key: &Key) -> String {
    match key {
        Key::Broker(address) => address.clone(),
        _ => "all".to_owned(),
    }
}

/// What an error is about. Every broker down is the cluster's outage; a broker that cannot be
/// connected to, resolved or that does not answer, one of that broker.
fn key_of_error(code: Option<RDKafkaErrorCode>, kind: &str, reason: &str) -> Key {
    let broker = broker_of(reason);
    match (code, broker) {
        (Some(RDKafkaErrorCode::AllBrokersDown), _) => Key::Cluster,
        (
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut,
            ),
            Some(broker),
        ) => Key::Broker(broker),
        (_, broker) => Key::Error {
            kind: kind.to_owned(),
            broker,
        },
    }
}

/// The broker a reason starts with, as `host:port`. librdkafka names a broker
/// `[protocol://]host:port/id` (`/bootstrap` before its id is known) and a logical one (the
/// group coordinator) `GroupCoordinator: host:port`, and starts what it says about one with
/// that name and a colon. The bootstrap entry, the broker it turns out to be and the
/// coordinator's connection to it are one address, so one outage.
fn broker_of(reason: &str) -> Option<String> {
    let (name, rest) = reason.split_once(": ")?;
    let name = name.split_once("://").map_or(name, |(_, rest)| rest);
    if let Some((address, id)) = name.rsplit_once('/')
        && (id == "bootstrap" || is_number(id))
        && is_address(address)
    {
        return Some(address.to_owned());
    }
    let is_logical = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric());
    let (address, _) = rest.split_once(": ")?;
    (is_logical && is_address(address)).then(|| address.to_owned())
}

/// `host:port`.
fn is_address(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !host.contains(' ') && is_number(port))
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A log line without the thread librdkafka prefixes it with (`[thrd:main]: `).
fn without_thread(message: &str) -> &str {
    message
        .strip_prefix("[thrd:")
        .and_then(|rest| rest.split_once("]: "))
        .map_or(message, |(_, rest)| rest)
}

/// The level of one of librdkafka's log lines. librdkafka recovers from what it logs as an
/// error (a connection refused, a request timed out): what loses work the framework learns
/// otherwise, and logs at `error` itself, so these are warnings. Its `FAIL` lines at that
/// level are a broker's failure, which librdkafka also reports as an error event, with the
/// error code: that one is logged (and counted), this one goes to `debug`.
pub(crate) fn level_of(level: RDKafkaLogLevel, facility: &str) -> Level {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error if facility == "FAIL" => Level::Debug,
        Emerg | Alert | Critical => Level::Error,
        Error | Warning => Level::Warn,
        Notice | Info => Level::Info,
        Debug => Level::Debug,
    }
}

/// The level a client asks librdkafka for: the most detail the application's logger takes
/// under [`LIBRDKAFKA_TARGET`], so that librdkafka does not format lines nobody reads, nor
/// leaves out lines someone does.
pub(crate) fn librdkafka_log_level() -> RDKafkaLogLevel {
    let enabled = |level: Level| log::log_enabled!(target: LIBRDKAFKA_TARGET, level);
    if enabled(Level::Debug) {
        RDKafkaLogLevel::Debug
    } else if enabled(Level::Info) {
        RDKafkaLogLevel::Info
    } else if enabled(Level::Warn) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Critical
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_read_from_librdkafkas_name_for_it() {
        let connect = "Connect to ipv4#127.0.0.1:9092 failed: Connection refused";
        for (reason, broker) in [
            ("127.0.0.1:9092/1: Disconnected", Some("127.0.0.1:9092")),
            ("127.0.0.1:9092/bootstrap: Connect", Some("127.0.0.1:9092")),
            (
                "sasl_ssl://kafka-2:9094/2: Disconnected",
                Some("kafka-2:9094"),
            ),
            ("[::1]:9092/3: Disconnected", Some("[::1]:9092")),
            ("1/1 brokers are down", None),
            (
                "GroupCoordinator: 127.0.0.1:9092: Connect",
                Some("127.0.0.1:9092"),
            ),
            ("GroupCoordinator: Disconnected", None),
            ("Consumer group: a reason: of two parts", None),
            ("Local: Broker transport failure", None),
            (connect, None),
        ] {
            assert_eq!(broker_of(reason).as_deref(), broker, "{reason}");
        }
        assert_eq!(
            broker_of(without_thread(
                "[thrd:127.0.0.1:9092/1]: 127.0.0.1:9092/1: Connect"
            )),
            Some("127.0.0.1:9092".to_owned())
        );
        assert_eq!(without_thread("no thread: here"), "no thread: here");
    }

    #[test]
    fn every_broker_down_is_the_clusters_outage_and_a_failed_connection_a_brokers() {
        let key = |code, reason| key_of_error(Some(code), &format!("{code:?}"), reason);
        assert_eq!(
            key(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
            Key::Cluster
        );
        let refused = "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed";
        assert_eq!(
            key(RDKafkaErrorCode::BrokerTransportFailure, refused),
            Key::Broker("127.0.0.1:9092".to_owned())
        );
        assert_eq!(
            key(
                RDKafkaErrorCode::Resolve,
                "b1:9092/bootstrap: Failed to resolve"
            ),
            Key::Broker("b1:9092".to_owned())
        );
        assert_eq!(
            key(
                RDKafkaErrorCode::BrokerTransportFailure,
                "GroupCoordinator: 127.0.0.1:9092: Connect to ipv4#127.0.0.1:9092 failed"
            ),
            Key::Broker("127.0.0.1:9092".to_owned()),
            "the coordinator's connection"
        );
        assert_eq!(
            key(
                RDKafkaErrorCode::BrokerTransportFailure,
                "GroupCoordinator: down"
            ),
            Key::Error {
                kind: "BrokerTransportFailure".to_owned(),
                broker: None
            }
        );
        assert_eq!(
            key(RDKafkaErrorCode::SSL, "b1:9093/1: SSL handshake failed"),
            Key::Error {
                kind: "SSL".to_owned(),
                broker: Some("b1:9093".to_owned())
            },
            "a refused handshake is no outage: it stays an error"
        );
    }

    #[test]
    fn a_transient_connection_error_is_not_an_error() {
        assert_eq!(level_of(RDKafkaLogLevel::Error, "FAIL"), Level::Debug);
        assert_eq!(level_of(RDKafkaLogLevel::Error, "REQTMOUT"), Level::Warn);
        assert_eq!(level_of(RDKafkaLogLevel::Warning, "SESSTMOUT"), Level::Warn);
        assert_eq!(level_of(RDKafkaLogLevel::Critical, "ASSIGN"), Level::Error);
        assert_eq!(level_of(RDKafkaLogLevel::Notice, "CONFWARN"), Level::Info);
        assert_eq!(level_of(RDKafkaLogLevel::Info, "FAIL"), Level::Info);
        assert_eq!(level_of(RDKafkaLogLevel::Debug, "FETCH"), Level::Debug);
    }
}
