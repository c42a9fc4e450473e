//! Dead letters: a consumer that meets messages it cannot process and never loses one.
//!
//! A payment service reads `<account>,<cents>` records. A flaky downstream service fails some
//! calls (transient: retried with backoff until it succeeds); some records are malformed
//! (permanent: retrying cannot help). The failure policy retries the first kind and sends the
//! second kind to the dead-letter topic `payments.dlq`, with headers naming the original
//! topic, partition, offset, timestamp, the error and the attempts. A malformed record's
//! offset is committed only once the dead-letter topic acknowledged it, so nothing is lost,
//! and a retry holds back only the messages of its own partition.
//!
//! With no `KAFKA_BROKERS` set, it starts an in-process Kafka cluster, writes 1,000 payments
//! of which 10 are malformed, processes them, prints the dead letters it reads back, and
//! stops. Against a real cluster (create `payments` and `payments.dlq` first):
//! `KAFKA_BROKERS=127.0.0.1:9092 cargo run --example dead_letter` runs until Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{
    ConsumerConfig, ConsumerSystem, FailurePolicy, Message, Permanent, Processor,
    dead_letter_headers,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};

struct Payments {
    /// Calls to the downstream service, to make every seventh one fail.
    calls: Arc<AtomicU64>,
}

impl Processor for Payments {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        // A record that does not parse will never parse: mark the error permanent.
        let text = message.payload_str().ok_or(Permanent)?;
        let (account, cents) = text
            .split_once(',')
            .ok_or_else(|| anyhow::anyhow!("no comma in {text:?}").context(Permanent))?;
        let cents: u64 = cents
            .parse()
            .map_err(|error| anyhow::Error::new(error).context(Permanent))?;
        // The downstream call: fails now and then, and succeeds when retried.
        tokio::time::sleep(Duration::from_micros(500)).await;
        if self.calls.fetch_add(1, Ordering::Relaxed) % 7 == 3 {
            anyhow::bail!("payment service unavailable");
        }
        log::debug!("charged {account} {cents} cents");
        Ok(())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Reads `count` dead letters and prints where each came from and why.
fn print_dead_letters(brokers: &str, count: usize) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["payments.dlq"])?;
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read < count {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {read} of {count} dead letters arrived"
        );
        // A poll returns early, empty, when it served the group join instead.
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        println!(
            "dead letter {:?} from {}/{}@{} after {} attempt(s): {}",
            message
                .payload()
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            header(dead_letter_headers::ORIGINAL_TOPIC),
            header(dead_letter_headers::ORIGINAL_PARTITION),
            header(dead_letter_headers::ORIGINAL_OFFSET),
            header(dead_letter_headers::ATTEMPTS),
            header(dead_letter_headers::ERROR),
        );
        read += 1;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut embedded = None;
    let (brokers, expected) = match env("KAFKA_BROKERS") {
        Some(brokers) => (brokers, None),
        None => {
            let cluster = EmbeddedCluster::start()?;
            let brokers = cluster.bootstrap_servers();
            cluster.create_topic("payments", 4)?;
            cluster.create_topic("payments.dlq", 1)?;
            let payments = (0..1000).map(|i| {
                let payload = match i % 100 {
                    42 => format!("account-{i} forty-two cents"),
                    _ => format!("account-{},{}", i % 50, i * 10),
                };
                (format!("account-{}", i % 50), payload)
            });
            testkit::produce(&brokers, "payments", payments)?;
            println!("embedded cluster on {brokers}: 1000 payments, 10 malformed");
            embedded = Some(cluster);
            (brokers, Some(1000))
        }
    };

    let config = ConsumerConfig::builder()
        .brokers(&brokers)
        .group_id("payments")
        .topic("payments")
        .failure_policy(
            FailurePolicy::retry(5)
                .backoff(Duration::from_millis(50), Duration::from_secs(5))
                .then_dead_letter(),
        )
        .apply_env()?
        .build()?;
    let calls = Arc::new(AtomicU64::new(0));
    let system = ConsumerSystem::spawn(config, move || Payments {
        calls: calls.clone(),
    })?;
    while !system.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let metrics = system.metrics();
        if expected.is_some_and(|n| metrics.processed + metrics.dead_lettered >= n) {
            system.stop();
        }
    }
    let report = system.join()?;
    println!("\n{report}");
    if embedded.is_some() {
        print_dead_letters(&brokers, report.dead_lettered as usize)?;
    }
    drop(embedded);
    // An unclean stop (a failure stopped it, or work was abandoned) is an error exit, so that
    // a supervisor restarts the service and alerts someone.
    anyhow::ensure!(
        report.is_clean(),
        "the system did not stop cleanly: {}",
        report.reason
    );
    Ok(())
}
