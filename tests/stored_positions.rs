//! Partitions that start at positions a processor stored (`on_assigned`): the group's committed
//! offsets follow the store, also for a partition of which nothing more is taken.
//!
//! The interleaving of issue 35: a sink stores every message of a partition and is killed before
//! its periodic commit covers the last of them; the stream is over, so the next member starts
//! the partition at its stored position, its end, and takes nothing. A commit point used to
//! exist only once something was taken, so that member committed nothing for the partition,
//! even at its graceful stop: the group's committed offset stayed behind the store for good.
//! The stored position is a commit point of its own: everything below it is finished, by the
//! processor's record. On both backends.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_actors::{BatchProcessor, ConsumerSystem, Message, StoredPositions, TopicPartition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::{Cluster, Ledger, SCENARIO_TIMEOUT, audit, group, wait_until};

/// Stores the next position of each partition with its messages (as a database transaction
/// would), and starts partitions there.
#[derive(Clone, Default)]
struct Sink {
    store: Arc<Mutex<BTreeMap<i32, i64>>>,
    ledger: Ledger,
    /// The partitions `on_assigned` was told of.
    told: Arc<Mutex<BTreeSet<i32>>>,
}

impl BatchProcessor for Sink {
    const PARTITION_HOOKS: bool = true;

    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        let mut store = self.store.lock().unwrap();
        for message in batch {
            self.ledger.record(message.partition(), message.offset());
            store.insert(message.partition(), message.offset() + 1);
        }
        Ok(())
    }

    async fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> anyhow::Result<StoredPositions> {
        let store = self.store.lock().unwrap();
        let mut told = self.told.lock().unwrap();
        Ok(partitions
            .iter()
            .inspect(|p| {
                told.insert(p.partition());
            })
            .filter_map(|p| store.get(&p.partition()).map(|&next| (p.clone(), next)))
            .collect())
    }
}

/// Commits `offsets` for the group from outside it, as the last periodic commit of a member
/// that is gone left them.
fn commit_as_the_group(cluster: &Cluster, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a client");
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).expect("commit");
}

/// A topic of four partitions with 400 messages, a group that committed a little of it, and a
/// store that holds partitions 0 and 1 to their ends, partition 2 to its middle and nothing
/// of partition 3: as a sink killed at the end of a stream leaves them. Returns the topic,
/// the group (named after `name`, one per test), the end offsets and the sink.
fn killed_at_the_end_of_the_stream(
    cluster: &Cluster,
    name: &str,
) -> (String, String, BTreeMap<i32, i64>, Sink) {
    let topic = cluster.topic(name, 4);
    let group = group(name);
    let end_offsets = cluster.produce(&topic, 400);
    commit_as_the_group(cluster, &group, &topic, &[(0, 3), (1, 0), (2, 1)]);
    let sink = Sink::default();
    sink.store.lock().unwrap().extend([
        (0, end_offsets[&0]),
        (1, end_offsets[&1]),
        (2, end_offsets[&2] / 2),
    ]);
    (topic, group, end_offsets, sink)
}

/// What the sink must process: partition 2 from its middle, partition 3 whole.
fn expected_work(end_offsets: &BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
    let mut expected: Vec<(i32, i64)> = (end_offsets[&2] / 2..end_offsets[&2])
        .map(|offset| (2, offset))
        .chain((0..end_offsets[&3]).map(|offset| (3, offset)))
        .collect();
    expected.sort_unstable();
    expected
}

#[test]
fn a_graceful_stop_commits_stored_positions_it_took_nothing_after() {
    let cluster = Cluster::start();
    let (topic, group, end_offsets, sink) =
        killed_at_the_end_of_the_stream(&cluster, "stop-commits");
    // No periodic commit: only the graceful stop commits.
    let config = cluster
        .config(&topic, &group)
        .processors(2)
        .commit_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let factory = sink.clone();
    let system = ConsumerSystem::spawn_batch(config, move || factory.clone()).unwrap();
    let expected = expected_work(&end_offsets);
    wait_until(
        "the member holds every partition and processed what the store lacks",
        SCENARIO_TIMEOUT,
        || {
            sink.told.lock().unwrap().len() == 4
                && system.metrics().assignments > 0
                && sink.ledger.len() >= expected.len()
        },
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");

    let mut processed = sink.ledger.entries();
    processed.sort_unstable();
    assert_eq!(processed, expected, "read from the stored positions, once");
    // Partitions 0 and 1 took nothing after their stored positions: committed all the same.
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    let report_committed: BTreeMap<i32, i64> = report
        .committed
        .iter()
        .map(|(partition, offset)| (partition.partition(), *offset))
        .collect();
    assert_eq!(report_committed, end_offsets, "{report}");
}

#[test]
fn the_periodic_commit_brings_the_group_to_the_stored_positions() {
    let cluster = Cluster::start();
    let (topic, group, end_offsets, sink) =
        killed_at_the_end_of_the_stream(&cluster, "periodic-commits");
    let config = cluster
        .config(&topic, &group)
        .processors(2)
        .commit_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let factory = sink.clone();
    let system = ConsumerSystem::spawn_batch(config, move || factory.clone()).unwrap();
    // While it runs, with nothing more to take: the group's lag is none.
    wait_until(
        "the group committed the stored positions and what was processed",
        SCENARIO_TIMEOUT,
        || cluster.committed_offsets(&group, &topic) == end_offsets,
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        audit(&sink.ledger.entries(), &end_offsets).duplicated,
        0,
        "nothing read twice"
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}
