//! What only a real Apache Kafka broker can show: its own tooling agrees with the framework on
//! committed offsets, and a graceful exit leaves the group at once.
//!
//! Built only with `--features real-broker-tests` and run with `KAFKA_BROKERS` set (as
//! `.ci/run` does after `scripts/kafka.sh start`); fails when no real broker answers.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, Message, Processor};
use support::{Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, group, wait_until};

fn real_broker() -> Cluster {
    let cluster = Cluster::start();
    assert!(
        cluster.is_real_broker(),
        "these tests need a real broker: set KAFKA_BROKERS (scripts/kafka.sh start runs one)"
    );
    cluster
}

/// The group's committed offsets as Kafka's own consumer-group command describes them.
fn offsets_described_by_kafka_tools(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let output = Command::new("bash")
        .args([
            script,
            "run-class",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        ])
        .args([
            "--bootstrap-server",
            brokers,
            "--describe",
            "--group",
            group,
        ])
        .output()
        .expect("run Kafka's consumer-group command");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Columns: GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 5 && fields[1] == topic)
        .map(|fields| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
        .collect()
}

#[test]
fn kafkas_consumer_group_command_sees_the_offsets_the_report_committed() {
    let cluster = real_broker();
    let topic = cluster.topic("cross-check", 4);
    let group = group("cross-check");
    let end_offsets = cluster.produce(&topic, 1_000);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster.config(&topic, &group).build().unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("all 1000 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 1_000
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");

    let reported: BTreeMap<i32, i64> = report
        .committed
        .iter()
        .map(|(partition, offset)| (partition.partition(), *offset))
        .collect();
    let described = offsets_described_by_kafka_tools(&cluster.brokers(), &group, &topic);
    assert_eq!(described, reported);
    assert_eq!(described, end_offsets);
}

/// Notes when it processed its first message.
struct FirstMessageClock(Arc<Mutex<Option<Instant>>>);

impl Processor for FirstMessageClock {
    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        self.0.lock().unwrap().get_or_insert_with(Instant::now);
        Ok(())
    }
}

#[test]
fn the_next_instance_gets_its_first_message_within_seconds_of_a_graceful_exit() {
    let cluster = real_broker();
    let topic = cluster.topic("handover", 4);
    let group = group("handover");
    cluster.produce(&topic, 500);
    // Kafka's default session: had the first instance not left the group, the second would
    // wait 45 s for the broker to expire it.
    // (Under the consumer protocol, the broker's session: 6 s in scripts/kafka.sh.)
    let config = || {
        support::classic(
            cluster.config(&topic, &group),
            &[
                ("session.timeout.ms", "45000"),
                ("heartbeat.interval.ms", "3000"),
            ],
        )
        .build()
        .unwrap()
    };

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let first = ConsumerSystem::spawn(config(), move || Recorder::new(&recorder)).unwrap();
    wait_until(
        "the first instance processed everything",
        SCENARIO_TIMEOUT,
        || ledger.len() >= 500,
    );
    first.stop();
    first.join().unwrap();
    let exited = Instant::now();

    cluster.produce(&topic, 100);
    let first_message = Arc::new(Mutex::new(None));
    let clock = first_message.clone();
    let second = ConsumerSystem::spawn(config(), move || FirstMessageClock(clock.clone())).unwrap();
    wait_until(
        "the second instance gets a message",
        SCENARIO_TIMEOUT,
        || first_message.lock().unwrap().is_some(),
    );
    let handover = first_message.lock().unwrap().unwrap() - exited;
    second.stop();
    second.join().unwrap();

    eprintln!(
        "handover: the next instance's first message came {handover:?} after the previous one exited"
    );
    assert!(
        handover < Duration::from_secs(10),
        "took {handover:?}: the group was not left cleanly"
    );
}

#[test]
fn a_corrupt_record_batch_stops_the_system_as_unreadable_and_nothing_at_or_past_it_commits() {
    // A broker of the test's own, to stop and corrupt: one partition, one record per batch.
    let broker = support::OwnBroker::start();
    let cluster = broker.cluster();
    let topic = cluster.topic("corrupt", 1);
    let group = group("corrupt");
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("linger.ms", "0")
        .set("compression.type", "none")
        .create()
        .unwrap();
    for offset in 0..100 {
        let payload = format!("record-{offset:03}");
        producer
            .send(rdkafka::producer::BaseRecord::<(), _>::to(&topic).payload(&payload))
            .unwrap();
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    }
    drop(producer);
    // Flip one byte of record 50's payload in the log segment, with the broker stopped.
    broker.stop();
    let segment = broker
        .partition_dir(&topic, 0)
        .join("00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(10)
        .position(|window| window == b"record-050")
        .expect("record 50 in the segment");
    bytes[at + 9] = b'X';
    std::fs::write(&segment, bytes).unwrap();
    broker.resume();

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    // CRC checks are on by default.
    let config = cluster.config(&topic, &group).build().unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();
    match &report.reason {
        kafka_actors::StopReason::Unreadable {
            partition, offset, ..
        } => {
            assert_eq!((partition.partition(), *offset), (0, 50), "{report}");
        }
        other => panic!("stopped for another reason: {other}\n{report}"),
    }
    // Nothing at or past it was processed or committed; what was processed before it (the
    // stop leaves what waited in the fetcher for the next reader) was committed.
    let entries = ledger.entries();
    assert!(entries.iter().all(|(_, offset)| *offset < 50), "{entries:?}");
    let committed = cluster.committed_offsets(&group, &topic);
    assert_eq!(committed, support::commit_points(&entries), "{report}");
    assert!(committed.get(&0).is_some_and(|offset| *offset <= 50), "{committed:?}");
}
