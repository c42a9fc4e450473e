//! Graceful shutdown: stop fetching, drain within the deadline, commit exactly what finished,
//! leave the group. A restart then loses nothing and duplicates nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, Message, OrderingMode, Phase, Processor, StopReason};
use support::{
    Audit, Cluster, Ledger, LedgerProcess, Recorder, SCENARIO_TIMEOUT, audit, captured_logs, group,
    read_ledger, wait_until,
};

/// Produces `count` more messages in batches of 100, one batch every 50 ms.
fn keep_producing(cluster: &Cluster, topic: &str, count: usize) -> std::thread::JoinHandle<()> {
    let (brokers, topic) = (cluster.brokers(), topic.to_owned());
    std::thread::spawn(move || {
        for batch in 0..count / 100 {
            let records = (0..100).map(|i| (format!("late-{batch}-{i}"), "late"));
            kafka_actors::testkit::produce(&brokers, &topic, records).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn stop_mid_stream_then_restart_loses_and_duplicates_nothing() {
    let cluster = Cluster::start();
    let topic = cluster.topic("mid-stream", 4);
    let group = group("mid-stream");
    cluster.produce(&topic, 1_000);

    // Messages keep arriving while the system stops: what is fetched after the stop request
    // must be left for the next run, not dropped.
    let producer = keep_producing(&cluster, &topic, 2_000);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster.config(&topic, &group).build().unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(0..2),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until("500 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 500
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    let first_run = ledger.len();
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    assert!(
        first_run < 3_000,
        "stopped mid-stream, after {first_run} of 3000"
    );
    assert_eq!(audit(&ledger.entries(), &end_offsets).duplicated, 0);

    let config = cluster.config(&topic, &group);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}

#[test]
fn a_hung_processor_is_abandoned_at_the_deadline_and_redelivered_after_restart() {
    let cluster = Cluster::start();
    let topic = cluster.topic("hung", 4);
    let group = group("hung");
    let end_offsets = cluster.produce(&topic, 400);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let shutdown_timeout = Duration::from_secs(4);
    let config = cluster
        .config(&topic, &group)
        .shutdown_timeout(shutdown_timeout)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        hang_at: Some((1, 20)),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "the other partitions are processed",
        SCENARIO_TIMEOUT,
        || {
            let done = ledger.entries();
            [0, 2, 3].iter().all(|p| {
                done.iter().filter(|(partition, _)| partition == p).count() as i64 == end_offsets[p]
            })
        },
    );
    let stopping = Instant::now();
    system.stop();
    let report = system.join().unwrap();
    let took = stopping.elapsed();

    // Generous bound: catches a hang, not slowness.
    assert!(
        took < shutdown_timeout + Duration::from_secs(3),
        "took {took:?}\n{report}"
    );
    let drain = report
        .phases
        .iter()
        .find(|p| p.phase == Phase::Drain)
        .unwrap();
    assert!(!drain.completed, "{report}");
    let abandoned = report
        .abandoned
        .iter()
        .find(|a| a.partition.partition() == 1);
    assert_eq!(abandoned.map(|a| a.first_offset), Some(20), "{report}");
    let committed = cluster.committed_offsets(&group, &topic);
    assert_eq!(
        committed.get(&1),
        Some(&20),
        "the hung message is not committed"
    );
    assert!(!ledger.entries().contains(&(1, 20)));

    let config = cluster.config(&topic, &group);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}

#[test]
fn a_second_stop_request_abandons_the_drain_and_commits_what_finished() {
    let cluster = Cluster::start();
    let topic = cluster.topic("second-signal", 2);
    let group = group("second-signal");
    let end_offsets = cluster.produce(&topic, 2_000);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .shutdown_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // The message at 1/50 never finishes, so work is in progress when the stop comes whatever
    // the timing: a drain would wait for it up to the 60 s deadline.
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(5..6),
        hang_at: Some((1, 50)),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "100 messages are processed, 1/50 is in progress",
        SCENARIO_TIMEOUT,
        || ledger.len() >= 100 && ledger.entries().contains(&(1, 49)),
    );
    let stopping = Instant::now();
    system.stop();
    system.stop_now();
    let report = system.join().unwrap();

    // Draining the rest would take seconds; abandoning takes no time at all.
    assert!(stopping.elapsed() < Duration::from_secs(10), "{report}");
    assert_eq!(report.reason, StopReason::Requested);
    let abandoned = report
        .abandoned
        .iter()
        .find(|a| a.partition.partition() == 1);
    assert_eq!(abandoned.map(|a| a.first_offset), Some(50), "{report}");
    assert_eq!(audit(&ledger.entries(), &end_offsets).duplicated, 0);
    let committed = cluster.committed_offsets(&group, &topic);
    assert_eq!(
        committed,
        support::commit_points(&ledger.entries()),
        "{report}"
    );
}

/// Counts its lifecycle calls, and refuses to start when told to.
struct Hooks {
    started: Arc<AtomicUsize>,
    stopped: Arc<AtomicUsize>,
    processed_before_start: Arc<AtomicUsize>,
    fail_start: bool,
    running: bool,
}

impl Processor for Hooks {
    async fn on_start(&mut self) -> anyhow::Result<()> {
        if self.fail_start {
            anyhow::bail!("database unreachable");
        }
        self.running = true;
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        if !self.running {
            self.processed_before_start.fetch_add(1, Ordering::SeqCst);
        }
        // A moment of work: the stream is still flowing when the test stops it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        self.running = false;
        self.stopped.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn every_processor_starts_before_its_first_message_and_stops_once_after_its_last() {
    let cluster = Cluster::start();
    let topic = cluster.topic("hooks", 3);
    let group = group("hooks");
    cluster.produce(&topic, 3_000);
    let counters: [Arc<AtomicUsize>; 3] = Default::default();
    let [started, stopped, early] = counters.clone();
    let config = cluster
        .config(&topic, &group)
        .processors(3)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Hooks {
        started: started.clone(),
        stopped: stopped.clone(),
        processed_before_start: early.clone(),
        fail_start: false,
        running: false,
    })
    .unwrap();
    assert_eq!(
        counters[0].load(Ordering::SeqCst),
        3,
        "all started before spawn returns"
    );
    wait_until("messages are processed", SCENARIO_TIMEOUT, || {
        system.metrics().processed >= 300
    });
    // Mid-stream: the drain finishes what the processors hold, then each one's on_stop runs.
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(report.processed < 3_000, "stopped mid-stream: {report}");
    assert_eq!(counters[1].load(Ordering::SeqCst), 3, "each stopped once");
    assert_eq!(
        counters[2].load(Ordering::SeqCst),
        0,
        "a message ran before on_start or after on_stop"
    );
}

/// Slow work; one message waits at a gate the test opens; and in `on_stop`, a note of what
/// had been processed and what the group had committed by then.
#[derive(Clone)]
struct Noting {
    ledger: Ledger,
    gate_at: i64,
    gate: Arc<std::sync::atomic::AtomicBool>,
    at_gate: Arc<std::sync::atomic::AtomicBool>,
    brokers: String,
    group: String,
    topic: String,
    notes: Arc<std::sync::Mutex<Vec<Note>>>,
}

/// What `on_stop` saw: how many messages were processed, and the group's committed offsets.
type Note = (usize, std::collections::BTreeMap<i32, i64>);

impl Processor for Noting {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if message.offset() == self.gate_at {
            self.at_gate.store(true, Ordering::SeqCst);
            while !self.gate.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        let committed = support::committed_offsets_of(&self.brokers, &self.group, &self.topic, 1);
        let processed = self.ledger.len();
        self.notes.lock().unwrap().push((processed, committed));
        Ok(())
    }
}

#[test]
fn on_stop_runs_after_the_drain_and_before_the_final_commit() {
    let cluster = Cluster::start();
    let topic = cluster.topic("on-stop-order", 1);
    let group = group("on-stop-order");
    cluster.produce(&topic, 500);
    let noting = Noting {
        ledger: Ledger::default(),
        gate_at: 100,
        gate: Arc::default(),
        at_gate: Arc::default(),
        brokers: cluster.brokers(),
        group: group.clone(),
        topic: topic.clone(),
        notes: Arc::default(),
    };
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        // No periodic commit: whatever is committed is the stop's.
        .commit_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    let factory = noting.clone();
    let system = ConsumerSystem::spawn(config, move || factory.clone()).unwrap();
    wait_until("offset 100 is in progress", SCENARIO_TIMEOUT, || {
        noting.at_gate.load(Ordering::SeqCst)
    });
    let processed_at_request = noting.ledger.len();
    system.stop();
    // The drain finishes the message in progress: only then may on_stop run.
    wait_until("the stop began", SCENARIO_TIMEOUT, || {
        captured_logs()
            .iter()
            .any(|line| line.contains("stopping (stop requested)"))
    });
    noting.gate.store(true, Ordering::SeqCst);
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");

    let notes = noting.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 1, "on_stop ran once: {notes:?}");
    let (processed_at_stop, committed_at_stop) = &notes[0];
    let processed = noting.ledger.entries();
    // After the drain: it finished the message in progress, and nothing ran after on_stop.
    assert!(
        *processed_at_stop > processed_at_request,
        "on_stop ran before the drain finished offset 100: {processed_at_stop} processed, \
         {processed_at_request} when the stop was asked for"
    );
    assert_eq!(
        *processed_at_stop,
        processed.len(),
        "a message ran after on_stop"
    );
    // Before the final commit: nothing was committed when on_stop ran, everything after.
    assert!(committed_at_stop.is_empty(), "{committed_at_stop:?}");
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        support::commit_points(&processed),
        "{report}"
    );
}

#[test]
fn a_processor_that_fails_to_start_fails_the_start_with_its_error() {
    let cluster = Cluster::start();
    let topic = cluster.topic("bad-start", 1);
    let counters: [Arc<AtomicUsize>; 3] = Default::default();
    let [started, stopped, early] = counters.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let config = cluster
        .config(&topic, &group("bad-start"))
        .processors(3)
        .build()
        .unwrap();
    let error = ConsumerSystem::spawn(config, move || Hooks {
        started: started.clone(),
        stopped: stopped.clone(),
        processed_before_start: early.clone(),
        // One processor of the pool cannot start.
        fail_start: next.fetch_add(1, Ordering::SeqCst) == 1,
        running: false,
    })
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("failed to start: database unreachable"),
        "{message}"
    );
    assert_eq!(counters[0].load(Ordering::SeqCst), 2);
    assert_eq!(
        counters[1].load(Ordering::SeqCst),
        2,
        "only the ones that started are stopped"
    );
}

/// Runs the `ledger` example as a child process against the test's cluster.
#[test]
fn sigterm_stops_a_child_process_gracefully_and_a_restart_continues_exactly() {
    let cluster = Cluster::start();
    let topic = cluster.topic("sigterm", 4);
    let group = group("sigterm");
    cluster.produce(&topic, 1_000);
    let directory = tempfile::tempdir().unwrap();
    let ledger = directory.path().join("ledger.txt");

    let child = LedgerProcess::start(&cluster, &topic, &group, &ledger, 2, "");
    wait_until("the child processed 100 messages", SCENARIO_TIMEOUT, || {
        read_ledger(&ledger).len() >= 100
    });
    // Keep messages coming, so that the stream is still flowing when the signal arrives.
    let producer = keep_producing(&cluster, &topic, 3_000);
    wait_until("the child processed 600 messages", SCENARIO_TIMEOUT, || {
        read_ledger(&ledger).len() >= 600
    });
    let (status, output) = child.terminate();
    assert!(status.success(), "exit status {status}\n{output}");
    assert!(output.contains("stopped: SIGTERM received"), "{output}");
    assert!(output.contains("abandoned: none"), "{output}");
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    let first_run = read_ledger(&ledger);
    assert!(
        first_run.len() < 4_000,
        "stopped mid-stream, after {}",
        first_run.len()
    );
    assert_eq!(audit(&first_run, &end_offsets).duplicated, 0);
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        support::commit_points(&first_run)
    );

    let child = LedgerProcess::start(&cluster, &topic, &group, &ledger, 0, "");
    wait_until(
        "the restarted child processed the rest",
        SCENARIO_TIMEOUT,
        || audit(&read_ledger(&ledger), &end_offsets).lost == 0,
    );
    let (status, output) = child.terminate();
    assert!(status.success(), "exit status {status}\n{output}");
    assert_eq!(
        audit(&read_ledger(&ledger), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

/// A stop with a deep backlog of slow work: what processors hold finishes, what waits in the
/// fetcher is left for the next reader, so the stop takes milliseconds, not the backlog's
/// minutes; a restart then processes the rest exactly once.
fn stop_with_a_deep_backlog(ordering: OrderingMode) {
    let cluster = Cluster::start();
    let name = format!("deep-backlog-{ordering:?}").to_lowercase();
    let topic = cluster.topic(&name, 4);
    let group = group(&name);
    // 20,000 messages of 3 ms each: a minute of work for four processors.
    let end_offsets = cluster.produce(&topic, 20_000);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .ordering(ordering)
        .processors(4)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(3..4),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until("300 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 300
    });
    let backlog = system.metrics().in_flight_messages;
    let stopping = Instant::now();
    system.stop();
    let report = system.join().unwrap();
    let took = stopping.elapsed();

    // Generous: catches a drain of the backlog (tens of seconds), not slowness.
    assert!(took < Duration::from_secs(5), "took {took:?}\n{report}");
    assert!(report.is_clean(), "{report}");
    assert!(
        report.released > 0 && backlog > 100,
        "a backlog of {backlog} was fetched and {} left for the next reader\n{report}",
        report.released
    );
    let first_run = ledger.entries();
    assert!(first_run.len() < 5_000, "{} processed", first_run.len());
    assert_eq!(audit(&first_run, &end_offsets).duplicated, 0);
    // The committed offsets are where each partition's processed run from 0 ends.
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        support::commit_points(&first_run),
        "{report}"
    );

    let config = cluster.config(&topic, &group).ordering(ordering);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}

#[test]
fn a_stop_with_a_deep_backlog_is_short_per_partition() {
    stop_with_a_deep_backlog(OrderingMode::PerPartition);
}

#[test]
fn a_stop_with_a_deep_backlog_is_short_per_key() {
    stop_with_a_deep_backlog(OrderingMode::PerKey);
}

#[test]
fn a_stop_with_a_deep_backlog_is_short_unordered() {
    stop_with_a_deep_backlog(OrderingMode::Unordered);
}

/// Fails every tenth message (its retry far away); records the rest.
struct FailsEveryTenth(Ledger);

impl Processor for FailsEveryTenth {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if message.offset() % 10 == 0 {
            anyhow::bail!("offset {} waits a minute for its retry", message.offset());
        }
        self.0.record(message.partition(), message.offset());
        Ok(())
    }
}

#[test]
fn a_stop_with_thousands_of_retry_gaps_leaves_only_the_gaps_to_the_restart() {
    // Unordered, one partition: every tenth message fails and waits a minute for its retry,
    // the others finish. The stop gives the retries up, leaving 2,000 gaps below finished
    // offsets; the restart must process the gaps and nothing else.
    let cluster = Cluster::start();
    let topic = cluster.topic("retry-gaps", 1);
    let group = group("retry-gaps");
    let end_offsets = cluster.produce(&topic, 20_000);
    let ledger = Ledger::default();
    let config = || {
        cluster
            .config(&topic, &group)
            .ordering(OrderingMode::Unordered)
            .processors(4)
    };
    let recorder = ledger.clone();
    let system = ConsumerSystem::spawn(
        config()
            .failure_policy(
                kafka_actors::FailurePolicy::retry(3)
                    .backoff(Duration::from_secs(60), Duration::from_secs(60)),
            )
            .build()
            .unwrap(),
        move || FailsEveryTenth(recorder.clone()),
    )
    .unwrap();
    wait_until(
        "every message but the failing ones finished",
        SCENARIO_TIMEOUT,
        || ledger.len() >= 18_000,
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(ledger.len(), 18_000);
    support::restart_and_finish(&cluster, config(), &ledger, &topic, &group, &end_offsets);
}
