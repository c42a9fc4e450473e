//! Revocations, in one process with two members: a revocation waits only for the revoked
//! partitions' own work (never for another partition's long message), and a second stop
//! request abandons a revocation that waits.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, Message, OrderingMode, Processor};
use support::{Cluster, Ledger, SCENARIO_TIMEOUT, audit, captured_logs, group, wait_until};

/// Records what it processes; takes `long` over the first message of `long_topic`.
struct Worker {
    ledger: Ledger,
    long_topic: Option<String>,
    long: Duration,
    in_long: Arc<AtomicUsize>,
}

impl Processor for Worker {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if self.long_topic.as_deref() == Some(message.topic()) && message.offset() == 0 {
            self.in_long.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.long).await;
            return Ok(());
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

#[test]
fn a_revocation_does_not_wait_for_another_partitions_long_message() {
    let cluster = Cluster::start();
    // Member A reads both topics; member B only the second, so only partitions of the second
    // ever move, and A's long message on the first is never revoked.
    let long_topic = cluster.topic("long", 1);
    let topic = cluster.topic("moving", 2);
    let group = group("not-waiting");
    cluster.produce(&topic, 100);
    let (ledger_a, ledger_b) = (Ledger::default(), Ledger::default());
    let in_long = Arc::new(AtomicUsize::new(0));
    let config = |topics: &[&str]| {
        // Unordered: any processor with room takes the moving partitions' messages, so none
        // waits behind the long one for its turn (in partition order it might, by routing).
        let config = cluster
            .config(topics[0], &group)
            .ordering(OrderingMode::Unordered)
            .processors(3)
            .rebalance_drain_timeout(Duration::from_secs(90))
            .shutdown_timeout(Duration::from_secs(3));
        let mut config = support::classic(
            config,
            &[("partition.assignment.strategy", "cooperative-sticky")],
        );
        for topic in &topics[1..] {
            config = config.topic(*topic);
        }
        config.build().unwrap()
    };
    let (ledger, long_topic_name, flag) = (ledger_a.clone(), long_topic.clone(), in_long.clone());
    let member_a = ConsumerSystem::spawn(config(&[&topic, &long_topic]), move || Worker {
        ledger: ledger.clone(),
        long_topic: Some(long_topic_name.clone()),
        long: Duration::from_secs(120),
        in_long: flag.clone(),
    })
    .unwrap();
    wait_until("A has read the topic", SCENARIO_TIMEOUT, || {
        ledger_a.len() == 100
    });
    // Only then the long message, so that nothing of the moving topic waits behind it yet.
    cluster.produce(&long_topic, 1);
    wait_until("A works on the long message", SCENARIO_TIMEOUT, || {
        in_long.load(Ordering::SeqCst) > 0
    });

    // Messages keep coming, so that B has something to read once a partition is its own.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (brokers, topic, producing) = (cluster.brokers(), topic.clone(), producing.clone());
        std::thread::spawn(move || {
            while producing.load(Ordering::SeqCst) {
                let records = (0..10).map(|i| (format!("k{i}"), "more"));
                kafka_actors::testkit::produce(&brokers, &topic, records).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let joined = Instant::now();
    let ledger = ledger_b.clone();
    let member_b = ConsumerSystem::spawn(config(&[&topic]), move || Worker {
        ledger: ledger.clone(),
        long_topic: None,
        long: Duration::ZERO,
        in_long: Arc::default(),
    })
    .unwrap();
    wait_until(
        "B processes messages of a partition it took over",
        SCENARIO_TIMEOUT,
        || ledger_b.len() > 0,
    );
    let handover = joined.elapsed();
    // A cooperative rebalance takes two rounds, and the embedded cluster waits seconds for
    // members in each; a revocation that waited for the long message would take the whole
    // drain timeout (90 s).
    assert!(handover < Duration::from_secs(45), "B waited {handover:?}");
    producing.store(false, Ordering::SeqCst);
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    member_b.stop();
    let report = member_b.join().unwrap();
    assert!(report.is_clean(), "{report}");
    // A is still on its long message: abandon it. A third member finishes the topic.
    member_a.stop_now();
    member_a.join().unwrap();
    let ledger_c = Ledger::default();
    let ledger = ledger_c.clone();
    // The same assignor: the embedded cluster aborts on a group whose members disagree.
    let config = support::classic(
        cluster.config(&topic, &group),
        &[("partition.assignment.strategy", "cooperative-sticky")],
    )
    .build()
    .unwrap();
    let member_c = ConsumerSystem::spawn(config, move || Worker {
        ledger: ledger.clone(),
        long_topic: None,
        long: Duration::ZERO,
        in_long: Arc::default(),
    })
    .unwrap();
    let all = || {
        let mut all = ledger_a.entries();
        all.extend(ledger_b.entries());
        all.extend(ledger_c.entries());
        all
    };
    wait_until(
        "the third member finished the topic",
        SCENARIO_TIMEOUT,
        || audit(&all(), &end_offsets).lost == 0,
    );
    member_c.stop();
    assert!(member_c.join().unwrap().is_clean());
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    // The embedded cluster refuses commits while the group rebalances, so there the next
    // owner repeats what A finished meanwhile; Kafka takes them.
    if cluster.is_real_broker() {
        assert_eq!(audit(&all(), &end_offsets).duplicated, 0);
    }
}

#[test]
fn a_second_stop_request_cuts_short_a_revocation_that_waits() {
    let cluster = Cluster::start();
    // Two partitions, each starting with a long message: whichever one B's arrival moves (the
    // consumer protocol moves one, eager assignors both), A's revocation waits for it.
    let topic = cluster.topic("revoking-stop", 2);
    let group = group("revoking-stop");
    let ends = cluster.produce(&topic, 20);
    assert!(ends.values().all(|end| *end > 0), "{ends:?}");
    let in_long = Arc::new(AtomicUsize::new(0));
    // Per partition, the two partitions of a topic go to two consecutive processors of the
    // pool, so both long messages run at once. (Unordered hands messages round-robin, message
    // by message: when the first partition's count was a multiple of the pool's size, the
    // second's long message went to the processor busy with the first's, and waited behind it
    // for the 10 minutes: CI, 2026-12-05.)
    let config = cluster
        .config(&topic, &group)
        .ordering(OrderingMode::PerPartition)
        .processors(2)
        .rebalance_drain_timeout(Duration::from_secs(600))
        .shutdown_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let (topic_name, flag) = (topic.clone(), in_long.clone());
    let member_a = ConsumerSystem::spawn(config.clone(), move || Worker {
        ledger: Ledger::default(),
        long_topic: Some(topic_name.clone()),
        // Far longer than any wait of the test's, however loaded the machine: the long
        // messages must still run when the stop comes.
        long: Duration::from_secs(600),
        in_long: flag.clone(),
    })
    .unwrap();
    wait_until("A works on both long messages", SCENARIO_TIMEOUT, || {
        in_long.load(Ordering::SeqCst) == 2
    });
    // B joins: A must revoke a partition, and waits for its long message.
    let member_b = ConsumerSystem::spawn(config, || Worker {
        ledger: Ledger::default(),
        long_topic: None,
        long: Duration::ZERO,
        in_long: Arc::default(),
    })
    .unwrap();
    wait_until("A's revocation waits", SCENARIO_TIMEOUT, || {
        captured_logs().iter().any(|line| {
            line.contains("partitions: ") && line.contains("revoking") && line.contains(&topic)
        })
    });
    let stopping = Instant::now();
    member_a.stop();
    member_a.stop_now();
    let report = member_a.join().unwrap();
    let took = stopping.elapsed();
    // The long messages would hold the revocation (and the drain) for 10 minutes.
    assert!(took < Duration::from_secs(15), "took {took:?}\n{report}");
    // What was cut short is abandoned, not committed: the long messages at offset 0 of both
    // partitions (revoked, or held at the stop) stay uncommitted, and the report says so.
    assert!(
        report
            .errors
            .iter()
            .any(|error| error.contains("Drain: abandoned on request")),
        "{report}"
    );
    assert!(
        report.abandoned.iter().all(|a| a.first_offset == 0),
        "{report}"
    );
    assert!(
        report.committed.values().all(|offset| *offset == 0),
        "a long message was committed though it never finished: {report}"
    );
    member_b.stop();
    member_b.join().unwrap();
}

/// A batch processor whose work never awaits (a synchronous database call, CPU work): each
/// batch blocks its thread for 200 ms. Records batches and hooks in order, and what it
/// processed in a ledger.
#[derive(Clone, Default)]
struct Blocking {
    events: Arc<std::sync::Mutex<Vec<&'static str>>>,
    ledger: Ledger,
}

impl kafka_actors::BatchProcessor for Blocking {
    const PARTITION_HOOKS: bool = true;

    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(200));
        for message in batch {
            self.ledger.record(message.partition(), message.offset());
        }
        self.events.lock().unwrap().push("batch");
        Ok(())
    }

    async fn on_assigned(
        &mut self,
        partitions: &[kafka_actors::TopicPartition],
    ) -> anyhow::Result<kafka_actors::StoredPositions> {
        if !partitions.is_empty() {
            self.events.lock().unwrap().push("assigned");
        }
        Ok(Vec::new())
    }

    async fn on_revoked(&mut self, _: &[kafka_actors::TopicPartition]) -> anyhow::Result<()> {
        self.events.lock().unwrap().push("revoked");
        Ok(())
    }
}

#[test]
fn a_processor_whose_work_never_awaits_runs_a_rebalances_hooks_after_its_batch_in_progress() {
    support::capture_logs();
    let cluster = Cluster::start();
    let topic = cluster.topic("blocking", 2);
    let group = group("blocking");
    let end_offsets = cluster.produce(&topic, 70);
    let config = || {
        // Cooperative: member A keeps a partition whose queued batches go on running.
        let config = support::classic(
            cluster.config(&topic, &group),
            &[("partition.assignment.strategy", "cooperative-sticky")],
        );
        config
            .processors(1)
            .batch_size(1, 1 << 20)
            // A queue of work at hand, so that batches run back to back.
            .prefetch(64, Duration::from_secs(60))
            .rebalance_drain_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let ledger = Ledger::default();
    let first = Blocking {
        ledger: ledger.clone(),
        ..Blocking::default()
    };
    let factory = first.clone();
    let member_a = ConsumerSystem::spawn_batch(config(), move || factory.clone()).unwrap();
    let batches = |events: &[&str]| events.iter().filter(|e| **e == "batch").count();
    wait_until("member A runs batches", SCENARIO_TIMEOUT, || {
        batches(&first.events.lock().unwrap()) >= 2
    });
    let second = Blocking {
        ledger: ledger.clone(),
        ..Blocking::default()
    };
    let factory = second.clone();
    let joined_at = first.events.lock().unwrap().len();
    let member_b = ConsumerSystem::spawn_batch(config(), move || factory.clone()).unwrap();
    wait_until(
        "member B was assigned a partition",
        SCENARIO_TIMEOUT,
        || second.events.lock().unwrap().contains(&"assigned"),
    );
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    member_b.stop();
    member_a.stop();
    let (report_a, report_b) = (member_a.join().unwrap(), member_b.join().unwrap());
    assert!(report_a.is_clean(), "{report_a}");
    assert!(report_b.is_clean(), "{report_b}");
    // The rebalance waited for no more than the batch in progress: its hooks answered and
    // the revoked partition's work was done within the rebalance_drain_timeout (2 s, ten
    // batches), where reading commands every 32 batches took 6 s.
    let late: Vec<String> = captured_logs()
        .into_iter()
        .filter(|line| {
            // The other tests here share the log; their revocations name their own topics.
            line.contains(&topic)
                && (line.contains("did not answer") || line.contains("still unfinished"))
        })
        .collect();
    assert!(late.is_empty(), "{late:#?}");
    let events = first.events.lock().unwrap().clone();
    assert!(
        events[joined_at..].contains(&"revoked"),
        "member A was told of a revocation: {events:?}"
    );
}
