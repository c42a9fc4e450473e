//! What only a real Apache Kafka broker can show: its own tooling agrees with the framework on
//! committed offsets, and a graceful exit leaves the group at once.
//!
//! Built and run only when named (`cargo test --test real_broker`, `test = false` in
//! Cargo.toml), with `KAFKA_BROKERS` set (as `.ci/run` does after `scripts/kafka.sh start`);
//! fails when no real broker answers. Some tests start brokers of their own
//! (`support::OwnBroker`) to stop and corrupt.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, Message, Processor};
use support::controls::{Jump, run_seeks, split_into_runs};
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
    assert!(
        entries.iter().all(|(_, offset)| *offset < 50),
        "{entries:?}"
    );
    let committed = cluster.committed_offsets(&group, &topic);
    assert_eq!(committed, support::commit_points(&entries), "{report}");
    assert!(
        committed.get(&0).is_some_and(|offset| *offset <= 50),
        "{committed:?}"
    );
}

/// One member of a group as Kafka's consumer-group command describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DescribedMember {
    consumer_id: String,
    instance: String,
    assignment: String,
}

/// Runs Kafka's consumer-group command with `args` on `group`; its standard output.
fn group_command(brokers: &str, group: &str, args: &[&str]) -> String {
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
        .args(args)
        .output()
        .expect("run Kafka's consumer-group command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The group's members, by Kafka's consumer-group command (`--members --verbose`).
fn members_described_by_kafka_tools(brokers: &str, group: &str) -> Vec<DescribedMember> {
    // Columns: GROUP CONSUMER-ID GROUP-INSTANCE-ID HOST CLIENT-ID #PARTITIONS CURRENT-EPOCH
    // CURRENT-ASSIGNMENT ...
    let mut members: Vec<DescribedMember> =
        group_command(brokers, group, &["--members", "--verbose"])
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() >= 8 && fields[0] == group)
            .map(|fields| DescribedMember {
                consumer_id: fields[1].to_owned(),
                instance: fields[2].to_owned(),
                assignment: fields[7].to_owned(),
            })
            .collect();
    members.sort_by(|a, b| a.instance.cmp(&b.instance));
    members
}

/// The group's epoch under the consumer protocol, by Kafka's consumer-group command (`--state
/// --verbose`); `-` under the classic protocol, whose generation the command does not show.
fn group_epoch_described_by_kafka_tools(brokers: &str, group: &str) -> String {
    // Columns: GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE GROUP-EPOCH ...
    group_command(brokers, group, &["--state", "--verbose"])
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[0] == group)
        .map(|fields| fields[6].to_owned())
        .expect("the group's state line")
}

#[test]
fn a_static_member_restarting_within_its_session_causes_no_rebalance() {
    let cluster = real_broker();
    let topic = cluster.topic("static-restart", 4);
    let group = group("static-restart");
    cluster.produce(&topic, 2_000);
    let brokers = cluster.brokers();
    // Member A is static; member B, dynamic, reads beside it all along and would be
    // rebalanced if A's restart rebalanced the group.
    let config = |instance: Option<&str>| {
        let config = support::classic(
            cluster.config(&topic, &group),
            &[
                ("session.timeout.ms", "30000"),
                ("heartbeat.interval.ms", "1000"),
            ],
        );
        match instance {
            Some(instance) => config.kafka_option("group.instance.id", instance),
            None => config,
        }
        .build()
        .unwrap()
    };
    let instance = format!("static-{}", std::process::id());
    let ledger = Ledger::default();
    let start = |instance: Option<&str>| {
        let recorder = ledger.clone();
        ConsumerSystem::spawn(config(instance), move || Recorder {
            delay_ms: Some(1..2),
            ..Recorder::new(&recorder)
        })
        .unwrap()
    };
    let member_a = start(Some(&instance));
    let member_b = start(None);
    wait_until("both members hold partitions", SCENARIO_TIMEOUT, || {
        member_a.metrics().assigned_partitions == 2 && member_b.metrics().assigned_partitions == 2
    });
    let before = members_described_by_kafka_tools(&brokers, &group);
    let epoch_before = group_epoch_described_by_kafka_tools(&brokers, &group);
    let a_before = before
        .iter()
        .find(|m| m.instance == instance)
        .cloned()
        .expect("A is a member");
    // B's own count of rebalances once the group has settled (the describes above take seconds):
    // which member joined first decides whether B already saw a revocation while the two
    // members shared the partitions out.
    let b_before = member_b.metrics();

    member_a.stop();
    assert!(member_a.join().unwrap().is_clean());
    // A did not leave: the group still counts it, with its partitions.
    let while_away = members_described_by_kafka_tools(&brokers, &group);
    assert_eq!(while_away, before, "the static member left the group");

    let member_a = start(Some(&instance));
    cluster.produce(&topic, 200);
    wait_until("A processes again", SCENARIO_TIMEOUT, || {
        member_a.metrics().processed > 0
    });
    let after = members_described_by_kafka_tools(&brokers, &group);
    let a_after = after
        .iter()
        .find(|m| m.instance == instance)
        .cloned()
        .expect("A is a member");
    // The same partitions, the same group epoch (consumer protocol), and no rebalance for B.
    assert_eq!(
        a_after.assignment, a_before.assignment,
        "{before:?} {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        group_epoch_described_by_kafka_tools(&brokers, &group),
        epoch_before
    );
    let b = member_b.metrics();
    assert_eq!(
        (b.assignments, b.revocations, b.lost_assignments),
        (
            b_before.assignments,
            b_before.revocations,
            b_before.lost_assignments
        ),
        "B was rebalanced: {b:?}"
    );
    assert_eq!(member_a.metrics().assignments, 1);
    member_a.stop();
    member_b.stop();
    assert!(member_a.join().unwrap().is_clean());
    assert!(member_b.join().unwrap().is_clean());
}

#[test]
fn two_members_with_the_same_instance_id_one_is_fenced_as_the_protocol_says() {
    let cluster = real_broker();
    let topic = cluster.topic("static-twice", 2);
    let group = group("static-twice");
    cluster.produce(&topic, 500);
    let instance = format!("twice-{}", std::process::id());
    let config = || {
        cluster
            .config(&topic, &group)
            .kafka_option("group.instance.id", &instance)
            .build()
            .unwrap()
    };
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let older = ConsumerSystem::spawn(config(), move || Recorder::new(&recorder)).unwrap();
    wait_until("the first member processes", SCENARIO_TIMEOUT, || {
        older.metrics().processed > 0
    });
    let recorder = ledger.clone();
    let newcomer = ConsumerSystem::spawn(config(), move || Recorder::new(&recorder));
    // Classic: the newcomer fences the older member (a fatal error for it); consumer
    // protocol: the newcomer is refused and the older member keeps its partitions.
    let newcomer = newcomer.expect("the second member starts");
    let (fenced, survivor) = match support::group_protocol() {
        kafka_actors::GroupProtocol::Consumer => (newcomer, older),
        _ => (older, newcomer),
    };
    wait_until("one member is fenced and stops", SCENARIO_TIMEOUT, || {
        fenced.is_finished()
    });
    let report = fenced.join().unwrap();
    assert!(
        matches!(report.reason, kafka_actors::StopReason::ConsumerFailed(_)),
        "{report}"
    );
    assert!(
        report
            .reason
            .to_string()
            .to_lowercase()
            .contains("instance"),
        "the reason names the instance id: {report}"
    );
    assert!(!survivor.is_finished());
    let report = {
        survivor.stop();
        survivor.join().unwrap()
    };
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_frozen_member_that_lost_its_partitions_commits_nothing_when_it_wakes() {
    let cluster = real_broker();
    let topic = cluster.topic("frozen", 4);
    let group = group("frozen");
    let brokers = cluster.brokers();
    // A stream all along.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (brokers, topic, producing) = (brokers.clone(), topic.clone(), producing.clone());
        std::thread::spawn(move || {
            while producing.load(std::sync::atomic::Ordering::SeqCst) {
                let records = (0..40).map(|i| (format!("k{i}"), "streamed"));
                kafka_actors::testkit::produce(&brokers, &topic, records).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // A is a process of its own, to freeze; B reads beside it in this one.
    let directory = tempfile::tempdir().unwrap();
    let ledger_a = directory.path().join("a.ledger");
    let member_a = support::LedgerProcess::start(&cluster, &topic, &group, &ledger_a, 1, "");
    wait_until("A processes", SCENARIO_TIMEOUT, || {
        support::read_ledger(&ledger_a).len() > 200
    });
    let ledger_b = Ledger::default();
    let recorder = ledger_b.clone();
    let member_b =
        ConsumerSystem::spawn(cluster.config(&topic, &group).build().unwrap(), move || {
            Recorder::new(&recorder)
        })
        .unwrap();
    wait_until("both members process", SCENARIO_TIMEOUT, || {
        member_b.metrics().processed > 100
    });

    member_a.send(support::Signal::SIGSTOP);
    // Past A's session: the group moves on, and B takes every partition.
    wait_until("B holds every partition", SCENARIO_TIMEOUT, || {
        member_b.metrics().assigned_partitions == 4
    });
    let frozen_at = support::read_ledger(&ledger_a);
    wait_until("B committed past where A stopped", SCENARIO_TIMEOUT, || {
        let committed = offsets_described_by_kafka_tools(&brokers, &group, &topic);
        frozen_at
            .iter()
            .all(|(partition, offset)| committed.get(partition).is_some_and(|c| *c > *offset + 1))
    });
    let mut seen = vec![offsets_described_by_kafka_tools(&brokers, &group, &topic)];
    member_a.send(support::Signal::SIGCONT);
    // A wakes with commits of partitions it no longer holds in hand: none may land, so the
    // committed offsets, as Kafka's tool reads them while A runs, never move back.
    let woke = Instant::now();
    while woke.elapsed() < Duration::from_secs(12) {
        seen.push(offsets_described_by_kafka_tools(&brokers, &group, &topic));
    }
    for pair in seen.windows(2) {
        for (partition, earlier) in &pair[0] {
            let later = pair[1].get(partition).copied().unwrap_or(0);
            assert!(
                later >= *earlier,
                "partition {partition}'s committed offset moved back from {earlier} to \
                 {later}: a commit of the frozen member landed ({seen:?})"
            );
        }
    }
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    let all = || {
        let mut all = support::read_ledger(&ledger_a);
        all.extend(ledger_b.entries());
        all
    };
    wait_until("everything was processed", SCENARIO_TIMEOUT, || {
        support::audit(&all(), &end_offsets).lost == 0
    });
    member_b.stop();
    assert!(member_b.join().unwrap().is_clean());
    let (status, output) = member_a.terminate();
    assert!(status.success(), "{output}");
    assert_eq!(support::audit(&all(), &end_offsets).lost, 0);
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

/// A seek to a time goes to the first message of that time or later (librdkafka's mock
/// cluster answers every lookup by time with "none", so this needs a real broker).
#[test]
fn a_seek_to_a_time_goes_to_the_first_message_of_that_time() {
    let cluster = real_broker();
    let held = 6;
    let (ledger, end) = run_seeks(
        &cluster,
        "seek-time",
        held,
        vec![(150, Jump::ToTimeOf(120))],
    );
    let timestamp_of = |offset: i64| ledger.iter().find(|(o, _)| *o == offset).unwrap().1;
    // Several messages may share a millisecond: the first whose time is that of 120 or later.
    let by_time = (0..=120)
        .find(|&o| timestamp_of(o) >= timestamp_of(120))
        .unwrap();
    let offsets: Vec<i64> = ledger.iter().map(|(o, _)| *o).collect();
    let runs = split_into_runs(&offsets);
    // The seek takes effect once the broker named the offset, on a connection of its own
    // (made at the first lookup): the partition goes on meanwhile, from 151 to wherever it
    // is then, so only the start of the replay is exact.
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].0, 0);
    assert!(runs[0].1 >= 150, "{runs:?}");
    assert_eq!(runs[1], (by_time, end - 1), "{runs:?}");
}
