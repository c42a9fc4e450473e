//! Faults injected into the embedded cluster while a system processes a stream: offset-commit
//! errors, heartbeat errors that force a rebalance or take the assignment away, and the group
//! coordinator going down and coming back. The system recovers, nothing is lost, and the
//! committed offsets end at the end of the topic.
//!
//! These run on the embedded cluster whatever `KAFKA_BROKERS` says: only it injects faults.

mod support;

use std::time::Duration;

use kafka_actors::{ConsumerSystem, GroupProtocol, Metrics, ShutdownReport};
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::{Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, group, wait_until};

const MESSAGES: usize = 4_000;

/// Runs a system over a fresh topic, calls `inject` once a quarter of the stream is processed,
/// waits for everything, stops, and checks that nothing was lost and everything committed.
/// Returns the figures seen before the stop and the report.
fn survive(
    cluster: &Cluster,
    name: &str,
    inject: impl FnOnce(&Cluster, &str),
) -> (Metrics, ShutdownReport) {
    survive_under(support::group_protocol(), cluster, name, inject)
}

/// [`survive`] under the given group protocol.
fn survive_under(
    protocol: GroupProtocol,
    cluster: &Cluster,
    name: &str,
    inject: impl FnOnce(&Cluster, &str),
) -> (Metrics, ShutdownReport) {
    let topic = cluster.topic(name, 4);
    let end_offsets = cluster.produce(&topic, MESSAGES);
    let group = group(name);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config_under(protocol, &topic, &group)
        .processors(4)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(1..3),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "a quarter of the stream was processed",
        SCENARIO_TIMEOUT,
        || ledger.len() >= MESSAGES / 4,
    );
    inject(cluster, &group);
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    let metrics = system.metrics();
    system.stop();
    let report = system.join().unwrap();
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(audit(&ledger.entries(), &end_offsets).lost, 0);
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    eprintln!(
        "{name}: {} duplicates, {} assignments",
        audit(&ledger.entries(), &end_offsets).duplicated,
        metrics.assignments
    );
    (metrics, report)
}

#[test]
fn offset_commit_errors_are_retried_and_the_final_commit_is_right() {
    let cluster = Cluster::embedded(1);
    survive(&cluster, "commit-errors", |cluster, _| {
        cluster.mock().request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        );
    });
}

#[test]
fn commits_refused_for_a_stale_or_fenced_epoch_under_the_consumer_protocol() {
    // A stale epoch is a rebalance in progress: retried. A fenced epoch means the member's
    // partitions are lost: nothing of that commit lands, and later commits (of the partitions
    // as assigned again) bring the committed offsets to the end.
    let cluster = Cluster::embedded(1);
    survive_under(
        GroupProtocol::Consumer,
        &cluster,
        "commit-epochs",
        |cluster, _| {
            cluster.mock().request_errors(
                RDKafkaApiKey::OffsetCommit,
                &[
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_STALE_MEMBER_EPOCH,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_MEMBER_EPOCH,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_STALE_MEMBER_EPOCH,
                ],
            );
        },
    );
}

#[test]
fn a_heartbeat_error_forces_a_rebalance_that_the_member_survives() {
    let cluster = Cluster::embedded(1);
    // The classic protocol's Heartbeat: the consumer protocol has a heartbeat of its own.
    let (metrics, _) = survive_under(
        GroupProtocol::Classic,
        &cluster,
        "heartbeat-rebalance",
        |cluster, _| {
            cluster.mock().request_errors(
                RDKafkaApiKey::Heartbeat,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
            );
        },
    );
    assert!(
        metrics.assignments >= 2,
        "no rebalance happened: {metrics:?}"
    );
}

#[test]
fn a_lost_assignment_commits_nothing_for_it_and_the_member_rejoins() {
    // No periodic commit: nothing is committed before the loss, so if the loss committed
    // nothing either, the member starts its new assignment from the beginning and processes
    // again everything it finished before the loss.
    let cluster = Cluster::embedded(1);
    let topic = cluster.topic("heartbeat-fenced", 4);
    let end_offsets = cluster.produce(&topic, MESSAGES);
    let group = group("heartbeat-fenced");
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config_under(GroupProtocol::Classic, &topic, &group)
        .processors(4)
        .commit_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(1..3),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "a quarter of the stream was processed",
        SCENARIO_TIMEOUT,
        || ledger.len() >= MESSAGES / 4,
    );
    let before_the_loss = ledger.len();
    // The coordinator no longer knows this member: its assignment is lost.
    cluster.mock().request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
    );
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    let metrics = system.metrics();
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(
        metrics.lost_assignments >= 1,
        "no assignment was lost: {metrics:?}"
    );
    assert!(
        metrics.assignments >= 2,
        "the member did not rejoin: {metrics:?}"
    );
    let duplicated = audit(&ledger.entries(), &end_offsets).duplicated;
    assert!(
        duplicated >= before_the_loss,
        "{duplicated} repeated, fewer than the {before_the_loss} finished before the loss: \
         something of the lost assignment was committed"
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    // Nor did the member try: a loss goes straight to the next assignment, with no
    // revocation drain and commit in between (the partitions may be another member's).
    let logs = support::captured_logs();
    let lost = logs
        .iter()
        .position(|line| line.contains("lost ") && line.contains(&topic))
        .expect("the loss was logged");
    let next = logs[lost..]
        .iter()
        .position(|line| line.contains("assigned ") && line.contains(&topic))
        .map_or(logs.len(), |at| lost + at);
    let committed: Vec<&String> = logs[lost..next]
        .iter()
        .filter(|line| line.contains("revocation of") && line.contains(&topic))
        .collect();
    assert!(committed.is_empty(), "{committed:#?}");
}

#[test]
fn the_coordinator_going_down_and_up_loses_nothing() {
    // Three brokers: the group's coordinator moves to broker 3, which then goes away for
    // 3 s, taking the partitions it leads with it. The periodic commits sent meanwhile are
    // held up: one that landed after the final commit would move the committed offsets back
    // (it did, one run in three, before commits went one at a time).
    let cluster = Cluster::embedded(3);
    survive(&cluster, "coordinator-down", |cluster, group| {
        let mock = cluster.mock();
        mock.coordinator(MockCoordinator::Group(group.to_owned()), 3)
            .expect("move the coordinator");
        mock.broker_down(3).expect("take the coordinator down");
        std::thread::sleep(Duration::from_secs(3));
        mock.broker_up(3).expect("bring the coordinator back");
    });
}

#[test]
fn processing_goes_on_while_the_group_coordinator_is_unreachable() {
    // Partitions led by broker 1, the group's coordinator on broker 2, which goes away: the
    // periodic commits cannot complete meanwhile, and must not hold up the Fetcher, which
    // must keep handing out messages (processors hold only a few) and resuming partitions.
    let cluster = Cluster::embedded(2);
    let topic = cluster.topic("coordinator-away", 2);
    let group = group("coordinator-away");
    let mock = cluster.mock();
    for partition in 0..2 {
        mock.partition_leader(&topic, partition, Some(1))
            .expect("lead the partitions from broker 1");
    }
    mock.coordinator(MockCoordinator::Group(group.clone()), 2)
        .expect("coordinate the group from broker 2");
    let end_offsets = cluster.produce(&topic, 6_000);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .processors(2)
        .commit_interval(Duration::from_millis(200))
        .max_in_flight_per_partition(500, 1 << 20)
        .max_in_flight(1_000, 1 << 20)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(1..2),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until("500 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 500
    });
    mock.broker_down(2).expect("take the coordinator away");
    let before = ledger.len();
    wait_until(
        "1,000 more messages are processed while the coordinator is away",
        Duration::from_secs(4),
        || ledger.len() >= before + 1_000,
    );
    mock.broker_up(2).expect("bring the coordinator back");
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}
