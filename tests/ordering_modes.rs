//! The three ordering modes on one partition and a pool of processors: per partition runs one
//! message at a time; per key keeps each key's messages in offset order while different keys
//! run in parallel; unordered runs everything in parallel. Each processes every message once
//! and commits to the end.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_actors::{ConsumerSystem, Message, OrderingMode, Processor};
use rand::Rng;
use support::{Audit, Cluster, SCENARIO_TIMEOUT, audit, group, wait_until};

/// What every processor of a run saw: `(key, sequence number, offset)` in the order they
/// finished, and the most messages in progress at once.
#[derive(Clone, Default)]
struct Observations {
    processed: Arc<Mutex<Vec<(String, usize, i64)>>>,
    in_progress: Arc<AtomicUsize>,
    most_in_progress: Arc<AtomicUsize>,
}

impl Observations {
    fn processed(&self) -> Vec<(String, usize, i64)> {
        self.processed.lock().unwrap().clone()
    }
}

/// Takes 1 to 3 ms a message, like a call to another service.
struct Observer(Observations);

impl Processor for Observer {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let observations = &self.0;
        let now = observations.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        observations
            .most_in_progress
            .fetch_max(now, Ordering::SeqCst);
        let delay = rand::rng().random_range(1..4);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let (key, sequence) = message
            .payload_str()
            .and_then(|payload| payload.split_once(':'))
            .ok_or_else(|| anyhow::anyhow!("payload is not key:sequence"))?;
        observations.processed.lock().unwrap().push((
            key.to_owned(),
            sequence.parse()?,
            message.offset(),
        ));
        observations.in_progress.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Produces `keys` keys with `per_key` messages each, interleaved, to a one-partition topic,
/// processes them all in `mode` with 8 processors, and returns what the processors saw.
fn run(name: &str, mode: OrderingMode, keys: usize, per_key: usize) -> Observations {
    let cluster = Cluster::start();
    let topic = cluster.topic(name, 1);
    let records =
        (0..per_key).flat_map(|sequence| (0..keys).map(move |k| (format!("key-{k}"), sequence)));
    let end_offsets = cluster.produce_records(
        &topic,
        records.map(|(key, sequence)| (key.clone(), format!("{key}:{sequence}"))),
    );
    let group = group(name);
    let config = cluster
        .config(&topic, &group)
        .processors(8)
        .ordering(mode)
        .build()
        .unwrap();
    let observations = Observations::default();
    let shared = observations.clone();
    let system = ConsumerSystem::spawn(config, move || Observer(shared.clone())).unwrap();
    let ledger = || -> Vec<(i32, i64)> {
        observations
            .processed()
            .iter()
            .map(|&(_, _, offset)| (0, offset))
            .collect()
    };
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        audit(&ledger(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    observations
}

/// For each key, the sequence numbers in the order they finished.
fn sequences_per_key(processed: &[(String, usize, i64)]) -> BTreeMap<String, Vec<usize>> {
    let mut sequences: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, sequence, _) in processed {
        sequences.entry(key.clone()).or_default().push(*sequence);
    }
    sequences
}

#[test]
fn per_key_keeps_each_keys_order_and_runs_keys_in_parallel() {
    let observations = run("ordering-per-key", OrderingMode::PerKey, 20, 40);

    let sequences = sequences_per_key(&observations.processed());
    assert_eq!(sequences.len(), 20);
    for (key, sequence) in &sequences {
        let in_order: Vec<usize> = (0..40).collect();
        assert_eq!(sequence, &in_order, "{key} was processed out of order");
    }
    let most = observations.most_in_progress.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "one partition's keys never ran in parallel (at most {most} at once)"
    );
}

#[test]
fn per_partition_runs_one_partition_one_message_at_a_time() {
    let observations = run("ordering-per-partition", OrderingMode::PerPartition, 20, 10);

    let offsets: Vec<i64> = observations
        .processed()
        .iter()
        .map(|&(_, _, offset)| offset)
        .collect();
    let in_order: Vec<i64> = (0..200).collect();
    assert_eq!(offsets, in_order);
    assert_eq!(observations.most_in_progress.load(Ordering::SeqCst), 1);
}

#[test]
fn unordered_runs_everything_in_parallel_and_processes_each_message_once() {
    let observations = run("ordering-unordered", OrderingMode::Unordered, 1, 400);

    let most = observations.most_in_progress.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "one key's messages never ran in parallel (at most {most} at once)"
    );
    // One key, yet finished out of order: nothing serialised them.
    let sequence = &sequences_per_key(&observations.processed())["key-0"];
    assert!(sequence.windows(2).any(|pair| pair[0] > pair[1]));
}
