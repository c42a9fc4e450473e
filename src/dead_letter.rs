//! Dead letters: messages whose attempts were used up, produced to a topic with headers that
//! say where they came from and why they failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};

use crate::client_trouble;
use crate::message::Message;
use crate::metrics::SystemMetrics;
use crate::trouble::Trouble;
use crate::{Error, Result};

/// The headers a dead letter carries besides the original message's own.
pub mod headers {
    /// The topic the message was read from.
    pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
    /// The partition it was read from, in decimal.
    pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
    /// Its offset, in decimal.
    pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
    /// Its timestamp in milliseconds since the Unix epoch, in decimal (absent if it had none).
    pub const ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";
    /// The error of the last attempt.
    pub const ERROR: &str = "dlq.error";
    /// How many attempts were made, in decimal.
    pub const ATTEMPTS: &str = "dlq.attempts";
}

/// How long the dead-letter producer tries to deliver a message before it gives up
/// (`message.timeout.ms`), unless set with
/// [`dead_letter_option`](crate::ConsumerConfigBuilder::dead_letter_option).
const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer of one system's dead letters, shared by its processors.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer<DeadLetterContext>,
    /// `None`: `<topic>.dlq` after each message's topic.
    topic: Option<String>,
}

impl DeadLetters {
    pub(crate) fn new(
        brokers: &str,
        topic: Option<String>,
        options: &BTreeMap<String, String>,
        metrics: Arc<SystemMetrics>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config.set_log_level(client_trouble::librdkafka_log_level());
        config
            .set(
                "message.timeout.ms",
                DEFAULT_DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            // Acknowledged by every in-sync replica, and never written twice by a retry.
            .set("enable.idempotence", "true");
        for (key, value) in options {
            config.set(key, value);
        }
        config.set("bootstrap.servers", brokers);
        let context = DeadLetterContext {
            metrics,
            echoes: Mutex::default(),
        };
        let producer = config.create_with_context(context).map_err(Error::Kafka)?;
        Ok(DeadLetters { producer, topic })
    }

    /// The dead-letter topic for messages of `topic`.
    pub(crate) fn topic_for(&self, topic: &str) -> String {
        topic_of(self.topic.as_deref(), topic)
    }

    /// Produces `message` (its key, payload and headers) to the dead-letter topic with its
    /// provenance, and waits for the acknowledgement. Returns the topic, or why it failed.
    pub(crate) async fn send(
        &self,
        message: &Message,
        error: &str,
        attempts: u32,
    ) -> std::result::Result<String, String> {
        let topic = self.topic_for(message.topic());
        let mut headers = OwnedHeaders::new();
        for (key, value) in message.headers() {
            headers = headers.insert(Header { key, value });
        }
        for (key, value) in provenance(message, error, attempts) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => Ok(topic),
            Err((error, _)) => Err(format!("could not produce to {topic}: {error}")),
        }
    }
}

/// The dead-letter producer's callbacks: librdkafka's errors and log lines go where the
/// consumer's go, so that an outage is one story whichever client tells it. (rdkafka's default
/// context would log every error at `error` under its own target.)
pub(crate) struct DeadLetterContext {
    metrics: Arc<SystemMetrics>,
    echoes: Mutex<Echoes>,
}

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.metrics.trouble.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let echo = self
            .echoes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_echo(&error, reason);
        if !echo {
            self.metrics
                .trouble
                .error(&error, Trouble::of(&error), reason);
        }
    }
}

/// rdkafka 0.39 hands each of a producer's error events to `ClientContext::error` twice in a
/// row (once as the client polls the event, once more as the producer handles it), which would
/// count every error twice. The second call is the one that repeats the first at once; should
/// a later rdkafka call once, an identical error that follows another at once is taken for an
/// echo: a repeat missed in the count, nothing more.
#[derive(Debug, Default)]
struct Echoes {
    /// The error last taken in, whose echo is expected next.
    awaited: Option<(KafkaError, String)>,
}

impl Echoes {
    fn is_echo(&mut self, error: &KafkaError, reason: &str) -> bool {
        match self.awaited.take() {
            Some((awaited, awaited_reason)) if &awaited == error && awaited_reason == reason => {
                true
            }
            _ => {
                self.awaited = Some((error.clone(), reason.to_owned()));
                false
            }
        }
    }
}

/// The headers a dead letter gets besides the message's own: where it came from, why and
/// after how many attempts it failed.
pub(crate) fn provenance(
    message: &Message,
    error: &str,
    attempts: u32,
) -> Vec<(&'static str, String)> {
    let mut provenance = vec![
        (headers::ORIGINAL_TOPIC, message.topic().to_owned()),
        (headers::ORIGINAL_PARTITION, message.partition().to_string()),
        (headers::ORIGINAL_OFFSET, message.offset().to_string()),
        (headers::ERROR, error.to_owned()),
        (headers::ATTEMPTS, attempts.to_string()),
    ];
    if let Some(timestamp) = message.timestamp() {
        provenance.push((headers::ORIGINAL_TIMESTAMP, timestamp.to_string()));
    }
    provenance
}

/// The dead-letter topic of messages of `topic` under `policy`'s exhausted action.
pub(crate) fn topic_of(configured: Option<&str>, topic: &str) -> String {
    configured.map_or_else(|| format!("{topic}.dlq"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn an_error_handed_over_twice_at_once_counts_once() {
        let mut echoes = Echoes::default();
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let refused = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        let calls = [
            (&down, "1/1 brokers are down"),
            (&down, "1/1 brokers are down"),
            (&down, "1/1 brokers are down"),
            (&down, "1/1 brokers are down"),
            (&refused, "b1:9092/1: refused"),
            (&refused, "b1:9092/1: refused"),
            (&down, "2/2 brokers are down"),
            (&down, "2/2 brokers are down"),
        ];
        let taken: Vec<bool> = calls
            .into_iter()
            .map(|(error, reason)| !echoes.is_echo(error, reason))
            .collect();
        assert_eq!(
            taken,
            [true, false, true, false, true, false, true, false],
            "every other call is the echo"
        );
    }
}
