//! Helpers for examples and tests: an in-process Kafka cluster and a simple producer.
//!
//! [`EmbeddedCluster`] wraps librdkafka's mock cluster, which speaks the real Kafka protocol
//! on localhost ports: produce, consumer groups and offset commits work as with a broker, so
//! a [`ConsumerSystem`](crate::ConsumerSystem) runs against it unchanged. It differs from a
//! real broker in one way that matters to tests: a member that leaves its group is forgotten
//! only when its session times out, so use a short `session.timeout.ms` when a second
//! member of the same group follows the first.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::{Error, Result};

/// An in-process Kafka cluster on localhost, for examples and tests. Stops when dropped.
pub struct EmbeddedCluster {
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap_servers", &self.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedCluster {
    /// Starts a cluster of one broker.
    pub fn start() -> Result<Self> {
        Ok(EmbeddedCluster {
            mock: MockCluster::new(1)?,
        })
    }

    /// The `host:port` list to pass to [`brokers`](crate::ConsumerConfigBuilder::brokers).
    pub fn bootstrap_servers(&self) -> String {
        self.mock.bootstrap_servers()
    }

    /// Creates a topic.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.mock
            .create_topic(topic, partitions, 1)
            .map_err(Error::Kafka)
    }

    /// The mock cluster itself, for fault injection (broker down, request errors, latency).
    pub fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.mock
    }
}

/// Produces `(key, payload)` records to `topic` on `brokers` and waits until every one is
/// acknowledged. Records with the same key go to the same partition.
pub fn produce<K, V>(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = (K, V)>,
) -> Result<usize>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?;
    let mut produced = 0;
    for (key, payload) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(key.as_ref())
            .payload(payload.as_ref());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: let librdkafka deliver some, then retry.
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(Error::Kafka(error)),
            }
        }
        produced += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(produced)
}
