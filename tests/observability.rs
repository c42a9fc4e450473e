//! What an operator sees: the Prometheus figures on `/metrics` against an independent ledger,
//! and the health endpoints through a run, a stall, a drain and a bad start.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kafka_actors::{ConsumerSystem, Error, Message, Processor, metric_names};
use support::{
    Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, free_addr, get, group, wait_until,
};

/// The samples of `name` for `group` on `/metrics`, by their other labels.
fn samples(addr: SocketAddr, name: &str, group: &str) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let group_label = format!("group=\"{group}\"");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name || !labels.contains(&group_label) {
                return None;
            }
            Some((labels.trim_end_matches('}').to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sum(addr: SocketAddr, name: &str, group: &str) -> f64 {
    samples(addr, name, group).values().sum()
}

#[test]
fn metrics_on_the_endpoint_agree_with_an_independent_ledger() {
    let cluster = Cluster::start();
    let topic = cluster.topic("scraped", 4);
    let group = group("scraped");
    let end_offsets = cluster.produce(&topic, 2_000);
    let produced: i64 = end_offsets.values().sum();

    let addr = free_addr();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .commit_interval(Duration::from_millis(200))
        .http_addr(addr.to_string())
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();

    // During the run: ready and alive, and the figures reach the ledger's.
    wait_until("every message is processed", SCENARIO_TIMEOUT, || {
        ledger.len() as i64 == produced
    });
    assert_eq!(get(addr, "/health/live").0, 200);
    let (status, body) = get(addr, "/health/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"partitions\":4"), "{body}");
    wait_until(
        "the scraped figures show every message processed and committed",
        SCENARIO_TIMEOUT,
        || {
            sum(addr, metric_names::MESSAGES_PROCESSED, &group) == produced as f64
                && samples(addr, metric_names::CONSUMER_LAG, &group).len() == 4
                && sum(addr, metric_names::CONSUMER_LAG, &group) == 0.0
                && sum(addr, metric_names::PROCESSING_LAG, &group) == 0.0
                && sum(addr, metric_names::MESSAGES_IN_FLIGHT, &group) == 0.0
        },
    );
    let processed = samples(addr, metric_names::MESSAGES_PROCESSED, &group);
    let done = audit(&ledger.entries(), &end_offsets);
    assert_eq!(done.duplicated, 0);
    for (partition, end) in &end_offsets {
        let label = format!("partition=\"{partition}\"");
        let scraped = processed
            .iter()
            .find(|(labels, _)| labels.contains(&label))
            .map(|(_, value)| *value);
        assert_eq!(scraped, Some(*end as f64), "partition {partition}");
    }
    assert!(sum(addr, metric_names::COMMITS_SUCCEEDED, &group) >= 1.0);
    assert_eq!(sum(addr, metric_names::ASSIGNED_PARTITIONS, &group), 4.0);
    // The duration histograms take a sample of each report's messages, the same ones.
    let timed = sum(
        addr,
        &format!("{}_count", metric_names::PROCESSING_DURATION),
        &group,
    );
    assert!(timed >= 1.0 && timed <= produced as f64, "{timed}");
    let latencies = format!("{}_count", metric_names::END_TO_END_LATENCY);
    assert_eq!(sum(addr, &latencies, &group), timed);
    let latency_sum = format!("{}_sum", metric_names::END_TO_END_LATENCY);
    assert!(sum(addr, &latency_sum, &group) > 0.0);

    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");

    // The server stops with the system; the recorder (one per process) keeps the figures:
    // a second system in this process serves them, the shutdown's phases included.
    let second = free_addr();
    let idle_group = format!("{group}-idle");
    let config = cluster
        .config(&topic, &idle_group)
        .http_addr(second.to_string())
        .build()
        .unwrap();
    let idle = ConsumerSystem::spawn(config, move || Recorder::new(&Ledger::default())).unwrap();
    let phases = samples(second, metric_names::SHUTDOWN_PHASE_DURATION, &group);
    for phase in ["StopFetching", "Drain", "StopProcessors", "Commit", "Close"] {
        assert!(
            phases.keys().any(|labels| labels.contains(phase)),
            "{phase} in {phases:?}"
        );
    }
    idle.stop();
    idle.join().unwrap();
}

/// Records messages, but the one at `hang_at` waits until `release` is set.
struct Holding {
    ledger: Ledger,
    hang_at: (i32, i64),
    release: Arc<AtomicBool>,
}

impl Processor for Holding {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if (message.partition(), message.offset()) == self.hang_at {
            while !self.release.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

#[test]
fn liveness_turns_down_while_a_partition_stalls_and_up_when_it_moves() {
    let cluster = Cluster::start();
    let topic = cluster.topic("stalling", 2);
    let group = group("stalling");
    cluster.produce(&topic, 200);

    let addr = free_addr();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let release = Arc::new(AtomicBool::new(false));
    let released = release.clone();
    let config = cluster
        .config(&topic, &group)
        .stall_timeout(Some(Duration::from_secs(1)))
        .http_addr(addr.to_string())
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Holding {
        ledger: recorder.clone(),
        hang_at: (0, 5),
        release: released.clone(),
    })
    .unwrap();

    wait_until(
        "the liveness check reports the stall",
        SCENARIO_TIMEOUT,
        || {
            let (status, body) = get(addr, "/health/live");
            status == 503 && body.contains("stalled")
        },
    );
    assert_eq!(
        sum(addr, metric_names::STALLED_PARTITIONS, &group),
        1.0,
        "one partition waits for the held message"
    );
    assert!(sum(addr, metric_names::STALLS, &group) >= 1.0);
    release.store(true, Ordering::Release);
    wait_until("the liveness check recovers", SCENARIO_TIMEOUT, || {
        get(addr, "/health/live").0 == 200
    });
    assert_eq!(sum(addr, metric_names::STALLED_PARTITIONS, &group), 0.0);

    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_drain_is_alive_but_not_ready() {
    let cluster = Cluster::start();
    let topic = cluster.topic("draining", 2);
    let group = group("draining");
    cluster.produce(&topic, 100);

    let addr = free_addr();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let release = Arc::new(AtomicBool::new(false));
    let released = release.clone();
    let config = cluster
        .config(&topic, &group)
        .http_addr(addr.to_string())
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Holding {
        ledger: recorder.clone(),
        hang_at: (1, 10),
        release: released.clone(),
    })
    .unwrap();
    wait_until("the held message is in progress", SCENARIO_TIMEOUT, || {
        ledger.entries().contains(&(1, 9))
    });
    assert_eq!(get(addr, "/health/ready").0, 200);

    // The drain waits for the held message: stopping on purpose is alive, and not ready.
    system.stop();
    wait_until(
        "readiness turns down for the drain",
        SCENARIO_TIMEOUT,
        || {
            let (status, body) = get(addr, "/health/ready");
            status == 503 && body.contains("stopping")
        },
    );
    let (status, body) = get(addr, "/health/live");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("stopping"), "{body}");
    assert!(!system.is_finished());

    release.store(true, Ordering::Release);
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(ledger.entries().contains(&(1, 10)));
}

#[test]
fn a_port_in_use_fails_the_start_with_a_clear_error() {
    let cluster = Cluster::start();
    let topic = cluster.topic("port-in-use", 1);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = cluster
        .config(&topic, &group("port-in-use"))
        .http_addr(addr.to_string())
        .build()
        .unwrap();
    let error = ConsumerSystem::spawn(config, || Recorder::new(&Ledger::default())).unwrap_err();
    assert!(
        matches!(&error, Error::Http { addr: refused, .. } if *refused == addr),
        "{error}"
    );
    assert!(error.to_string().contains(&addr.to_string()), "{error}");

    let error = cluster
        .config(&topic, &group("port-in-use"))
        .http_addr("127.0.0.1")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("http_addr"), "{error}");
}
