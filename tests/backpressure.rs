//! Processing much slower than fetching: in-flight work stays under its limits (the fetcher
//! pauses and resumes partitions), polling goes on, so the member keeps its partitions past
//! `max.poll.interval.ms`, and nothing is lost.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerConfigBuilder, ConsumerSystem, Metrics};
use support::{Audit, Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, group, wait_until};

/// Runs slow processors over `end_offsets` worth of messages until all are processed, and
/// returns the metrics seen at the end, having checked that nothing was lost or duplicated,
/// that the member was never rebalanced and that everything was committed.
fn run_slowly(
    cluster: &Cluster,
    config: ConsumerConfigBuilder,
    topic: &str,
    group: &str,
    end_offsets: &BTreeMap<i32, i64>,
) -> Metrics {
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let max_poll_interval = Duration::from_millis(support::SESSION_TIMEOUT_MS.parse().unwrap());
    let config = config
        .processors(1)
        .kafka_option(
            "max.poll.interval.ms",
            max_poll_interval.as_millis().to_string(),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    // At least 4 ms a message, and there are at least 1500 messages on one processor: longer
    // than max.poll.interval.ms in all.
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(4..6),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), end_offsets).lost == 0
    });
    wait_until(
        "the in-flight counts returned to zero",
        SCENARIO_TIMEOUT,
        || system.metrics().in_flight_messages == 0,
    );
    let metrics = system.metrics();
    // Only polling throughout the run kept the member in its group this long.
    assert!(
        started.elapsed() > max_poll_interval,
        "the run was too short to prove anything about max.poll.interval.ms"
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        audit(&ledger.entries(), end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(&cluster.committed_offsets(group, topic), end_offsets);
    assert_eq!(metrics.in_flight_bytes, 0, "{metrics:?}");
    assert_eq!(
        (metrics.assignments, metrics.revocations),
        (1, 0),
        "the member was rebalanced while it processed slowly: {metrics:?}"
    );
    assert!(
        metrics.pauses > 0,
        "no partition was ever paused: {metrics:?}"
    );
    metrics
}

#[test]
fn message_limits_bound_in_flight_work_per_partition_and_in_total() {
    let cluster = Cluster::start();
    let topic = cluster.topic("backpressure-messages", 4);
    let end_offsets = cluster.produce(&topic, 2000);
    let group = group("backpressure-messages");
    let config = cluster
        .config(&topic, &group)
        .max_in_flight_per_partition(200, 1 << 20)
        .max_in_flight(400, 1 << 20);

    let metrics = run_slowly(&cluster, config, &topic, &group, &end_offsets);

    assert!(
        metrics.peak_partition_in_flight_messages <= 200,
        "{metrics:?}"
    );
    assert!(metrics.peak_in_flight_messages <= 400, "{metrics:?}");
    // The limits were reached, not merely respected by a trickle.
    assert!(metrics.peak_in_flight_messages >= 200, "{metrics:?}");
}

#[test]
fn a_byte_limit_bounds_in_flight_work_to_within_one_message() {
    let cluster = Cluster::start();
    let topic = cluster.topic("backpressure-bytes", 2);
    let payload = "x".repeat(1000);
    let records = (0..1500).map(|i| (format!("key-{i:05}"), payload.clone()));
    let end_offsets = cluster.produce_records(&topic, records);
    let group = group("backpressure-bytes");
    let limit = 256 * 1024;
    let config = cluster.config(&topic, &group).max_in_flight(10_000, limit);

    let metrics = run_slowly(&cluster, config, &topic, &group, &end_offsets);

    let largest_message = 1000 + "key-00000".len();
    assert!(
        metrics.peak_in_flight_bytes < limit + largest_message,
        "{metrics:?}"
    );
    assert!(metrics.peak_in_flight_bytes >= limit / 2, "{metrics:?}");
}

/// Hangs on offset 0 until told to go on; records the rest.
struct HangsOnTheFirst {
    ledger: Ledger,
    go_on: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl kafka_actors::Processor for HangsOnTheFirst {
    async fn process(&mut self, message: &kafka_actors::Message) -> anyhow::Result<()> {
        while message.offset() == 0 && !self.go_on.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

/// The value of gauge `name` in a Prometheus rendering (its first sample).
fn gauge(rendered: &str, name: &str) -> Option<f64> {
    rendered
        .lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn behind_a_stuck_message_a_partition_takes_no_more_than_its_commit_can_record() {
    // Unordered, one partition: offset 0 hangs while 60,000 messages could stream past it.
    // Whatever finishes behind it cannot be committed; the partition must stop taking
    // messages once what it would have to record passes the bound (20,000 offsets), so that
    // bookkeeping and the commit's metadata stay bounded.
    const WINDOW: usize = 20_000;
    let cluster = Cluster::start();
    let topic = cluster.topic("stuck-window", 1);
    let end_offsets = cluster.produce(&topic, 3 * WINDOW);
    let group = group("stuck-window");
    let ledger = Ledger::default();
    let go_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = support::free_addr();
    let config = cluster
        .config(&topic, &group)
        .ordering(kafka_actors::OrderingMode::Unordered)
        .processors(4)
        .http_addr(http.to_string())
        .build()
        .unwrap();
    let (recorder, release) = (ledger.clone(), go_on.clone());
    let system = ConsumerSystem::spawn(config, move || HangsOnTheFirst {
        ledger: recorder.clone(),
        go_on: release.clone(),
    })
    .unwrap();
    wait_until(
        "the partition paused, or everything but offset 0 finished",
        SCENARIO_TIMEOUT,
        || system.metrics().paused_partitions == 1 || ledger.len() == 3 * WINDOW - 1,
    );
    assert!(
        ledger.len() < WINDOW,
        "{} messages finished behind the stuck one",
        ledger.len()
    );
    wait_until(
        "the incomplete offsets gauge was published",
        SCENARIO_TIMEOUT,
        || {
            let (_, body) = support::get(http, "/metrics");
            gauge(&body, kafka_actors::metric_names::INCOMPLETE_OFFSETS)
                .is_some_and(|incomplete| incomplete >= (WINDOW / 2) as f64)
        },
    );
    let (_, body) = support::get(http, "/metrics");
    let incomplete = gauge(&body, kafka_actors::metric_names::INCOMPLETE_OFFSETS).unwrap();
    assert!(
        incomplete < WINDOW as f64,
        "{incomplete} incomplete offsets"
    );
    assert!(
        ledger.len() < WINDOW,
        "{} messages finished behind the stuck one",
        ledger.len()
    );
    go_on.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_until("everything was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

/// Runs the `ledger` example on `topic` with small buffers and in-flight limits and slow
/// work, until it processed `processed` messages (none: it just runs a few seconds); returns
/// its peak resident set in KiB, as the kernel counts it.
fn peak_rss_of_a_consumer(cluster: &Cluster, topic: &str, group: &str, processed: usize) -> u64 {
    let directory = tempfile::tempdir().unwrap();
    let ledger = directory.path().join("ledger");
    let mut env = support::test_session_env("");
    env.extend(
        [
            ("LEDGER_FILE", ledger.display().to_string()),
            ("PROCESS_DELAY_MS", "1".to_owned()),
            // librdkafka's prefetch queue and fetch size, and the in-flight limits.
            ("KAFKA_OPTION_QUEUED_MAX_MESSAGES_KBYTES", "8192".to_owned()),
            ("KAFKA_OPTION_FETCH_MAX_BYTES", "1048576".to_owned()),
            ("KAFKA_MAX_IN_FLIGHT_MESSAGES", "5000".to_owned()),
            ("KAFKA_MAX_IN_FLIGHT_BYTES", (8 << 20).to_string()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    let process = support::LedgerProcess::start_example("ledger", cluster, topic, group, env);
    let started = Instant::now();
    wait_until(
        "the consumer works through its share",
        SCENARIO_TIMEOUT,
        || match processed {
            0 => started.elapsed() > Duration::from_secs(3),
            _ => support::read_ledger(&ledger).len() >= processed,
        },
    );
    let peak = process.peak_rss_kib();
    let (status, output) = process.terminate();
    assert!(status.success(), "{output}");
    peak
}

#[test]
fn a_consumer_behind_a_backlog_holds_no_more_memory_than_its_limits_allow() {
    // README "Memory bounds": librdkafka's queue (8 MiB) + a fetch (1 MiB) + the in-flight
    // bytes (8 MiB) + per-message bookkeeping (5,000 x ~1 KB), over what the same program
    // holds with nothing to read; measured by the kernel, from outside the process, behind a
    // backlog of 80 MiB.
    let cluster = Cluster::start();
    let idle_topic = cluster.topic("memory-idle", 4);
    let idle = peak_rss_of_a_consumer(&cluster, &idle_topic, &group("memory-idle"), 0);
    let topic = cluster.topic("memory-backlog", 4);
    let payload = "x".repeat(1000);
    cluster.produce_records(
        &topic,
        (0..80_000).map(|i| (format!("key-{i}"), payload.clone())),
    );
    let loaded = peak_rss_of_a_consumer(&cluster, &topic, &group("memory-backlog"), 8_000);
    let bound_kib = (8 << 10) + (1 << 10) + (8 << 10) + 5_000;
    // Allocator slack and librdkafka's per-broker buffers on top: a quarter more.
    let allowed = idle + bound_kib * 5 / 4;
    eprintln!(
        "peak RSS: {idle} KiB idle, {loaded} KiB behind 80 MiB of backlog (allowed {allowed} KiB)"
    );
    assert!(
        loaded <= allowed,
        "{loaded} KiB behind the backlog, {idle} KiB idle: more than the limits allow"
    );
}
