//! Helpers for examples and tests: unit-testing a processor without a cluster
//! ([`TestRun`], [`MessageBuilder`]), an in-process Kafka cluster and a simple producer, and
//! a whole system run on it ([`run_embedded`]).
//!
//! [`EmbeddedCluster`] wraps librdkafka's mock cluster, which speaks the real Kafka protocol
//! on localhost ports: produce, consumer groups and offset commits work as with a broker, so
//! a [`ConsumerSystem`](crate::ConsumerSystem) runs against it unchanged. It differs from a
//! real broker in two ways that matter to tests: a member that leaves its group is forgotten
//! only when its session times out, so use a short `session.timeout.ms` when a second
//! member of the same group follows the first; and each partition keeps only about the last
//! 5 MB of messages (older ones are dropped, as retention would drop them), so keep what a
//! test produces per partition below that.

use std::time::Duration;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::{Error, Result};

mod run;

pub use run::{Control, Fate, MessageBuilder, MessageOutcome, Outcome, TestRun};

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
        Self::with_brokers(1)
    }

    /// Starts a cluster of `brokers` brokers (ids 1 to `brokers`), for fault injection that
    /// takes one of them down.
    pub fn with_brokers(brokers: i32) -> Result<Self> {
        Ok(EmbeddedCluster {
            mock: MockCluster::new(brokers)?,
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

/// Counts the records librdkafka failed to deliver, keeping the first error.
#[derive(Default)]
struct DeliveryReport {
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| error.clone());
        }
    }
}

/// Produces `(key, payload)` records to `topic` on `brokers` and waits until every one is
/// acknowledged; fails if any could not be delivered. Records with the same key go to the
/// same partition.
pub fn produce<K, V>(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = (K, V)>,
) -> Result<usize>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let producer: ThreadedProducer<DeliveryReport> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(DeliveryReport::default())?;
    let mut produced = 0;
    for (key, payload) in records {
        let mut record = BaseRecord::to(topic)
            .key(key.as_ref())
            .payload(payload.as_ref());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: let librdkafka deliver some, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(Error::Kafka(error)),
            }
        }
        produced += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    let report = producer.context();
    let failed = report.failed.load(Ordering::Relaxed);
    if let Some(error) = report
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        log::error!("{failed} of {produced} records to {topic} were not delivered: {error}");
        return Err(Error::Kafka(error));
    }
    Ok(produced)
}

/// The longest [`run_embedded`] waits for the messages to finish.
const EMBEDDED_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// An integration test in a few lines: starts an [`EmbeddedCluster`], creates `topic` with
/// `partitions` (and `<topic>.dlq`, for a dead-letter policy), produces `records`, runs a
/// system of processors made by `factory` until every record finished (processed, skipped
/// or dead-lettered), stops it gracefully and returns its report. `configure` adjusts the
/// configuration (brokers, topic and group are set).
///
/// Fails when the system does not start, or does not finish the records within 60 s (it is
/// stopped, and the error says how far it got). If the system stops on its own (the failure
/// policy's `then_stop`), its report is returned at once.
///
/// ```
/// use kafka_actors::{Message, Processor, testkit};
///
/// struct Count;
///
/// impl Processor for Count {
///     async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
///         Ok(())
///     }
/// }
///
/// let records = (0..100).map(|i| (format!("key-{i}"), format!("order {i}")));
/// let report = testkit::run_embedded("orders", 2, records, |config| config, || Count)?;
/// assert!(report.is_clean());
/// assert_eq!(report.processed, 100);
/// # Ok::<(), kafka_actors::Error>(())
/// ```
pub fn run_embedded<P, F, K, V>(
    topic: &str,
    partitions: i32,
    records: impl IntoIterator<Item = (K, V)>,
    configure: impl FnOnce(crate::ConsumerConfigBuilder) -> crate::ConsumerConfigBuilder,
    factory: F,
) -> Result<crate::ShutdownReport>
where
    P: crate::Processor,
    F: Fn() -> P + Send + Sync + 'static,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    embedded_run(topic, partitions, records, configure, |config| {
        crate::ConsumerSystem::spawn(config, factory)
    })
}

/// [`run_embedded`] for a [`BatchProcessor`](crate::BatchProcessor).
pub fn run_embedded_batches<B, F, K, V>(
    topic: &str,
    partitions: i32,
    records: impl IntoIterator<Item = (K, V)>,
    configure: impl FnOnce(crate::ConsumerConfigBuilder) -> crate::ConsumerConfigBuilder,
    factory: F,
) -> Result<crate::ShutdownReport>
where
    B: crate::BatchProcessor,
    F: Fn() -> B + Send + Sync + 'static,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    embedded_run(topic, partitions, records, configure, |config| {
        crate::ConsumerSystem::spawn_batch(config, factory)
    })
}

fn embedded_run<K, V>(
    topic: &str,
    partitions: i32,
    records: impl IntoIterator<Item = (K, V)>,
    configure: impl FnOnce(crate::ConsumerConfigBuilder) -> crate::ConsumerConfigBuilder,
    spawn: impl FnOnce(crate::ConsumerConfig) -> Result<crate::RunningSystem>,
) -> Result<crate::ShutdownReport>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let cluster = EmbeddedCluster::start()?;
    cluster.create_topic(topic, partitions)?;
    cluster.create_topic(&format!("{topic}.dlq"), 1)?;
    let brokers = cluster.bootstrap_servers();
    let count = produce(&brokers, topic, records)? as u64;
    let config = crate::ConsumerConfig::builder()
        .brokers(&brokers)
        .topic(topic)
        .group_id(format!("{topic}-testkit"))
        .handle_signals(false);
    let system = spawn(configure(config).build()?)?;
    let deadline = std::time::Instant::now() + EMBEDDED_RUN_TIMEOUT;
    let finished = || {
        let metrics = system.metrics();
        metrics.processed + metrics.skipped + metrics.dead_lettered
    };
    while finished() < count && !system.is_finished() {
        if std::time::Instant::now() > deadline {
            let done = finished();
            system.stop();
            let report = system.join()?;
            return Err(Error::Runtime(format!(
                "{done} of {count} messages finished within {EMBEDDED_RUN_TIMEOUT:?}; the \
                 system stopped: {report}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    system.stop();
    system.join()
}
