//! Quickstart: a consumer service in one file.
//!
//! With no `KAFKA_BROKERS` set, it starts an in-process Kafka cluster, creates a topic with
//! four partitions, produces demo orders into it, processes them in parallel (one processor
//! per partition at a time, in offset order), and stops gracefully once it has processed
//! them all, printing the shutdown report. Ctrl-C stops it earlier, just as gracefully: the
//! report then shows that every processed message was committed, so a restart would
//! continue exactly where this run stopped (the at-least-once and graceful-shutdown
//! guarantees).
//!
//! Against a real cluster:
//! `KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPICS=orders KAFKA_GROUP=quickstart cargo run --example quickstart`
//! runs until Ctrl-C, or until `STOP_AFTER` messages were processed. Every setting can come
//! from the environment (`ConsumerConfigBuilder::apply_env`); with `HTTP_ADDR=127.0.0.1:9464`
//! it serves Prometheus metrics on `/metrics` and health on `/health/live` and
//! `/health/ready`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, Processor};

/// Sums the order amounts it sees. One instance per processor actor, so it needs no lock.
struct OrderTotals {
    processed: Arc<AtomicU64>,
    amount_cents: u64,
    unrecognized: u64,
}

impl Processor for OrderTotals {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        // Demo orders read `order-<n>,<cents>`; other topics' messages are counted, not summed.
        let amount = message
            .payload_str()
            .and_then(|order| order.rsplit_once(','))
            .and_then(|(_, cents)| cents.parse::<u64>().ok());
        match amount {
            Some(cents) => self.amount_cents += cents,
            None => self.unrecognized += 1,
        }
        // Stands in for real work: a database write, an HTTP call.
        tokio::time::sleep(Duration::from_micros(200)).await;
        self.processed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        log::info!(
            "processor summed {} cents of orders ({} messages were not orders)",
            self.amount_cents,
            self.unrecognized
        );
        Ok(())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    // Keep the embedded cluster alive for the whole run.
    let mut embedded = None;
    let (brokers, topic, stop_after) = match env("KAFKA_BROKERS") {
        Some(brokers) => {
            let stop_after = env("STOP_AFTER").map(|n| n.parse()).transpose()?;
            (brokers, "quickstart".to_owned(), stop_after)
        }
        None => {
            let cluster = EmbeddedCluster::start()?;
            let brokers = cluster.bootstrap_servers();
            let count: u64 = env("MESSAGES").map_or(Ok(20_000), |n| n.parse())?;
            cluster.create_topic("orders", 4)?;
            let orders = (0..count).map(|i| {
                (
                    format!("customer-{}", i % 100),
                    format!("order-{i},{}", i % 1000),
                )
            });
            testkit::produce(&brokers, "orders", orders)?;
            println!("embedded cluster on {brokers}: produced {count} orders to topic `orders`");
            embedded = Some(cluster);
            (brokers, "orders".to_owned(), Some(count))
        }
    };

    // Defaults in code; the environment (KAFKA_GROUP, KAFKA_TOPICS, HTTP_ADDR, ...) overrides.
    let config = ConsumerConfig::builder()
        .brokers(brokers)
        .group_id("quickstart")
        .topic(topic)
        .processors(4)
        .shutdown_timeout(Duration::from_secs(10))
        .apply_env()?
        .build()?;

    let processed = Arc::new(AtomicU64::new(0));
    let counter = processed.clone();
    let system = ConsumerSystem::spawn(config, move || OrderTotals {
        processed: counter.clone(),
        amount_cents: 0,
        unrecognized: 0,
    })?;

    let started = Instant::now();
    let mut last_print = Instant::now();
    while !system.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let count = processed.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_secs(1) {
            let rate = count as f64 / started.elapsed().as_secs_f64();
            println!("processed {count} messages ({rate:.0}/s)");
            last_print = Instant::now();
        }
        if stop_after.is_some_and(|limit| count >= limit) {
            system.stop();
            break;
        }
    }
    let report = system.join()?;
    println!("\n{report}");
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
