//! A stop that arrives while the group rebalances, because a member joins or because one
//! leaves, under the classic protocol's eager and cooperative-sticky assignors and under the
//! consumer protocol (KIP-848): it ends in about a second plus the message in progress,
//! nothing is lost, and the report is clean.
//!
//! Each round starts a member A, lets it work, then sets off the rebalance and stops A as soon
//! as its rebalance is under way (A revoked partitions to the member that joins; the member
//! that left is gone), while a producer keeps streaming. A's own rebalance events tell
//! whether the stop came before the rebalance assigned A its partitions again: at least half
//! the rounds must land inside. A last member finishes the topic; the audit then finds every
//! message processed.
//!
//! The embedded cluster is stricter than Kafka in two ways, so there the test asks less:
//! it refuses every commit while a rebalance is in progress (a stop may then end with its
//! final commit undone, and the next owner repeat messages: the report says so), and it
//! holds a member's join, and every request of the member behind it, until the rebalance
//! completes, up to a session timeout (3 s here), and the close waits for it behind the
//! final commit's retries: a stop may take a few times that.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerConfigBuilder, ConsumerSystem, GroupProtocol, RunningSystem};
use support::{Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, group, wait_until};

/// Waits, polling every millisecond, until `done` holds: a stop must come right after the
/// event, before the rebalance it began completes.
fn wait_closely(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Partitions of the topic.
const PARTITIONS: usize = 6;
/// Rounds per scenario: each sets off one rebalance at a stop.
const ROUNDS: usize = 4;
/// The bound on a stop on Kafka: about a second plus the message in progress (at most 2 ms
/// here), with room for a loaded machine.
const STOP_BOUND: Duration = Duration::from_secs(4);
/// On the embedded cluster: its holds of a rebalancing member's requests (up to the session
/// timeout, 3 s, each) on top.
const EMBEDDED_STOP_BOUND: Duration = Duration::from_secs(12);

#[derive(Clone, Copy, Debug)]
enum Rebalance {
    /// A member joins just before the stop.
    Join,
    /// Another member leaves just before the stop.
    Leave,
}

fn scenario(name: &str, protocol: GroupProtocol, assignor: Option<&str>, rebalance: Rebalance) {
    let cluster = Cluster::start();
    let topic = cluster.topic(name, PARTITIONS as i32);
    let group = group(name);
    cluster.produce(&topic, 600);
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (brokers, topic, producing) = (cluster.brokers(), topic.clone(), producing.clone());
        std::thread::spawn(move || {
            let mut batch = 0;
            while producing.load(Ordering::SeqCst) {
                let records = (0..20).map(|i| (format!("k{batch}-{i}"), "streamed"));
                kafka_actors::testkit::produce(&brokers, &topic, records).unwrap();
                batch += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let config = || -> ConsumerConfigBuilder {
        let config = cluster
            .config_under(protocol, &topic, &group)
            .shutdown_timeout(Duration::from_secs(20));
        let config = match std::env::var("DEBUG_CGRP") {
            Ok(_) => config.kafka_option("debug", "cgrp"),
            Err(_) => config,
        };
        let config = match assignor {
            Some(assignor) => config.kafka_option("partition.assignment.strategy", assignor),
            None => config,
        };
        // The embedded cluster holds a rebalancing member's requests up to a session timeout.
        match (cluster.is_real_broker(), protocol) {
            (false, GroupProtocol::Classic) => config
                .kafka_option("session.timeout.ms", "3000")
                .kafka_option("heartbeat.interval.ms", "300"),
            _ => config,
        }
    };
    let ledger = Ledger::default();
    let start = |ledger: &Ledger| -> RunningSystem {
        let recorder = ledger.clone();
        ConsumerSystem::spawn(config().build().unwrap(), move || Recorder {
            delay_ms: Some(0..2),
            ..Recorder::new(&recorder)
        })
        .unwrap()
    };

    let mut took = Vec::new();
    // Whether each round's stop landed inside A's rebalance, by A's own rebalance events.
    let mut inside = Vec::new();
    for round in 0..ROUNDS {
        let before = ledger.len();
        let member_a = start(&ledger);
        wait_until("A processes messages", SCENARIO_TIMEOUT, || {
            ledger.len() > before + 50
        });
        let settled = member_a.metrics();
        // Whether the rebalance is still under way when A is asked to stop: by the members'
        // own rebalance events (a joining member not yet assigned anything; A not yet given
        // the partitions of the member that left).
        let (other, under_way) = match rebalance {
            Rebalance::Join => {
                let member_b = start(&ledger);
                // A's rebalance began: it revokes (eagerly all, else what moves to B).
                wait_closely("A revokes partitions", || {
                    member_a.metrics().revocations > settled.revocations
                });
                let under_way = member_b.metrics().assigned_partitions == 0;
                (member_b, under_way)
            }
            Rebalance::Leave => {
                let member_b = start(&ledger);
                let seen = ledger.len();
                wait_until("both members process messages", SCENARIO_TIMEOUT, || {
                    ledger.len() > seen + 50 && member_b.metrics().processed > 0
                });
                member_b.stop();
                // B left: the group rebalances, and A is to take B's partitions.
                wait_closely("B left", || member_b.is_finished());
                let under_way = member_a.metrics().assigned_partitions < PARTITIONS;
                (member_b, under_way)
            }
        };
        let stopping = Instant::now();
        member_a.stop();
        inside.push(under_way);
        let report = member_a.join().unwrap();
        let stop = stopping.elapsed();
        took.push(stop);
        let bound = match cluster.is_real_broker() {
            true => STOP_BOUND,
            false => EMBEDDED_STOP_BOUND,
        };
        assert!(
            stop < bound,
            "round {round}: the stop took {stop:?}\n{report}"
        );
        let only_the_commit_refused = report.abandoned.is_empty()
            && !report.errors.is_empty()
            && report
                .errors
                .iter()
                .all(|error| error.starts_with("Commit: refused"));
        assert!(
            report.is_clean() || (!cluster.is_real_broker() && only_the_commit_refused),
            "round {round}:\n{report}"
        );
        // Joined now, or stopping since before A: either way, gone before the next round.
        other.stop();
        let report = other.join().unwrap();
        assert!(
            report.is_clean(),
            "round {round}, the other member:\n{report}"
        );
    }
    eprintln!("{name}: stops while the rebalance was under way: {inside:?}");
    assert!(
        inside.iter().filter(|inside| **inside).count() >= ROUNDS / 2,
        "{name}: too few stops landed inside a rebalance to prove anything: {inside:?}"
    );
    producing.store(false, Ordering::SeqCst);
    producer.join().unwrap();

    let end_offsets = cluster.end_offsets(&topic);
    let last = start(&ledger);
    wait_until(
        "the last member finishes the topic",
        SCENARIO_TIMEOUT,
        || audit(&ledger.entries(), &end_offsets).lost == 0,
    );
    last.stop();
    let report = last.join().unwrap();
    assert!(report.is_clean(), "{report}");
    let audit = audit(&ledger.entries(), &end_offsets);
    assert_eq!(audit.lost, 0);
    eprintln!(
        "{name}: stops took {took:?}; {} duplicates of {} messages",
        audit.duplicated,
        end_offsets.values().sum::<i64>()
    );
    // Kafka takes the commits of a revocation; the embedded cluster refuses them while the
    // group rebalances, so there the next owner repeats what finished meanwhile.
    if cluster.is_real_broker() {
        assert_eq!(audit.duplicated, 0, "{name}");
    }
}

#[test]
fn a_stop_while_a_member_joins_eager() {
    scenario(
        "stop-join-eager",
        GroupProtocol::Classic,
        Some("range"),
        Rebalance::Join,
    );
}

#[test]
fn a_stop_while_a_member_leaves_eager() {
    scenario(
        "stop-leave-eager",
        GroupProtocol::Classic,
        Some("range"),
        Rebalance::Leave,
    );
}

#[test]
fn a_stop_while_a_member_joins_cooperative() {
    scenario(
        "stop-join-cooperative",
        GroupProtocol::Classic,
        Some("cooperative-sticky"),
        Rebalance::Join,
    );
}

#[test]
fn a_stop_while_a_member_leaves_cooperative() {
    scenario(
        "stop-leave-cooperative",
        GroupProtocol::Classic,
        Some("cooperative-sticky"),
        Rebalance::Leave,
    );
}

#[test]
fn a_stop_while_a_member_joins_consumer_protocol() {
    scenario(
        "stop-join-consumer",
        GroupProtocol::Consumer,
        None,
        Rebalance::Join,
    );
}

#[test]
fn a_stop_while_a_member_leaves_consumer_protocol() {
    scenario(
        "stop-leave-consumer",
        GroupProtocol::Consumer,
        None,
        Rebalance::Leave,
    );
}
