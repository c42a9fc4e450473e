//! Key-ordered parallelism: more processors at work than there are partitions.
//!
//! A ledger service applies account updates. Updates of one account must be applied in the
//! order they were written; updates of different accounts need not wait for each other. With
//! [`OrderingMode::PerKey`] the framework keeps each key's messages in offset order and runs
//! different keys in parallel across the pool, even within one partition, and the commit
//! points still never pass an unfinished message (at-least-once holds in every mode).
//!
//! With no `KAFKA_BROKERS` set, it starts an in-process Kafka cluster with a one-partition
//! topic, writes 2,000 updates for 200 accounts, applies them with 64 processors (each
//! update waits 5 ms, like a database write), checks that every account saw its updates in
//! order, and stops. One partition in partition order would need 2,000 × 5 ms = 10 s; per key
//! it takes a fraction of that. Against a real cluster:
//! `KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPICS=accounts cargo run --example key_ordered`
//! (payloads `<sequence>`, keyed by account) runs until Ctrl-C.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, OrderingMode, Processor};

/// The last sequence number applied per account, shared by the pool. A real service would
/// keep this in its database.
type Balances = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

struct ApplyUpdate {
    applied: Balances,
}

impl Processor for ApplyUpdate {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let account = message.key().unwrap_or_default().to_vec();
        let sequence: u64 = message
            .payload_str()
            .ok_or_else(|| anyhow::anyhow!("payload is not text"))?
            .trim()
            .parse()?;
        // Stands in for the database write.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut applied = self.applied.lock().expect("no processor panics holding it");
        let previous = applied.insert(account.clone(), sequence);
        // Per-key order means each account's updates arrive one after another.
        if let Some(previous) = previous {
            anyhow::ensure!(
                previous < sequence,
                "{} applied update {sequence} after {previous}",
                String::from_utf8_lossy(&account)
            );
        }
        Ok(())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut embedded = None;
    let (brokers, topic, expected) = match env("KAFKA_BROKERS") {
        Some(brokers) => (brokers, "accounts".to_owned(), None),
        None => {
            let cluster = EmbeddedCluster::start()?;
            let brokers = cluster.bootstrap_servers();
            cluster.create_topic("accounts", 1)?;
            let updates =
                (0..2000u64).map(|i| (format!("account-{}", i % 200), (i / 200).to_string()));
            testkit::produce(&brokers, "accounts", updates)?;
            println!("embedded cluster on {brokers}: 2000 updates of 200 accounts, 1 partition");
            embedded = Some(cluster);
            (brokers, "accounts".to_owned(), Some(2000))
        }
    };

    let config = ConsumerConfig::builder()
        .brokers(brokers)
        .group_id("key-ordered")
        .topic(topic)
        .ordering(OrderingMode::PerKey)
        .processors(64)
        .apply_env()?
        .build()?;
    let applied = Balances::default();
    let shared = applied.clone();
    let system = ConsumerSystem::spawn(config, move || ApplyUpdate {
        applied: shared.clone(),
    })?;

    let started = Instant::now();
    while !system.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let processed = system.metrics().processed;
        if expected.is_some_and(|expected| processed >= expected) {
            println!(
                "applied {processed} updates to {} accounts in {:.2} s, each account in order",
                applied.lock().expect("not poisoned").len(),
                started.elapsed().as_secs_f64()
            );
            system.stop();
            break;
        }
    }
    let report = system.join()?;
    println!("\n{report}");
    drop(embedded);
    anyhow::ensure!(
        report.is_clean(),
        "the system did not stop cleanly: {}",
        report.reason
    );
    Ok(())
}
