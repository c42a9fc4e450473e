//! Dead letters: messages whose attempts were used up, produced to a topic with headers that
//! say where they came from and why they failed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::message::Message;
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
    producer: FutureProducer,
    /// `None`: `<topic>.dlq` after each message's topic.
    topic: Option<String>,
}

impl DeadLetters {
    pub(crate) fn new(
        brokers: &str,
        topic: Option<String>,
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
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
        let producer = config.create().map_err(Error::Kafka)?;
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
