//! No silent stalls: a partition that has work but whose commit point does not move for longer
//! than `stall_timeout` is logged at `warn` with the offset it waits at and what that message
//! waits for, and counted in the metrics; a stop that drains on purpose is never a stall.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kafka_actors::{ConsumerSystem, FailurePolicy, Message, Processor};
use support::{Cluster, SCENARIO_TIMEOUT, captured_logs, group, wait_until};

/// Hangs on offset 3 of partition 0 and fails offset 3 of partition 1 (retried much later);
/// or, with `slow`, takes that long over every message and says when it started one.
struct Stuck {
    slow: Option<Duration>,
    busy: Arc<AtomicBool>,
}

impl Processor for Stuck {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if let Some(slow) = self.slow {
            self.busy.store(true, Ordering::SeqCst);
            tokio::time::sleep(slow).await;
            return Ok(());
        }
        match (message.partition(), message.offset()) {
            (0, 3) => std::future::pending().await,
            (1, 3) => anyhow::bail!("downstream unavailable"),
            _ => Ok(()),
        }
    }
}

#[test]
fn a_partition_that_stops_moving_is_reported_with_what_it_waits_for() {
    let cluster = Cluster::start();
    let topic = cluster.topic("stalled", 2);
    cluster.produce(&topic, 40);
    let config = cluster
        .config(&topic, &group("stalled"))
        .processors(2)
        .stall_timeout(Some(Duration::from_secs(1)))
        .shutdown_timeout(Duration::from_secs(2))
        .failure_policy(
            FailurePolicy::retry(2).backoff(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, || Stuck {
        slow: None,
        busy: Arc::default(),
    })
    .unwrap();
    wait_until(
        "both partitions are reported stalled",
        SCENARIO_TIMEOUT,
        || system.metrics().stalled_partitions == 2,
    );
    let metrics = system.metrics();
    assert_eq!(
        metrics.stalls, 2,
        "each stall is reported once: {metrics:?}"
    );
    // The lines follow the count: where each message waits is asked of the processors first.
    let line = |partition: i32| {
        let prefix = format!("stalled: {topic}/{partition} has not moved past offset 3");
        captured_logs()
            .into_iter()
            .find(|line| line.contains(&prefix))
    };
    wait_until("both stalls are logged", SCENARIO_TIMEOUT, || {
        line(0).is_some() && line(1).is_some()
    });
    let line = |partition: i32| line(partition).unwrap();
    assert!(line(0).contains("in progress on processor"), "{}", line(0));
    assert!(line(1).contains("for a retry due in"), "{}", line(1));
    system.stop();
    system.join().unwrap();
}

#[test]
fn a_stop_that_drains_slow_work_is_not_a_stall() {
    let cluster = Cluster::start();
    let topic = cluster.topic("slow-drain", 1);
    cluster.produce(&topic, 10);
    let busy = Arc::new(AtomicBool::new(false));
    let started = busy.clone();
    let config = cluster
        .config(&topic, &group("slow-drain"))
        .stall_timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Stuck {
        slow: Some(Duration::from_millis(2_500)),
        busy: started.clone(),
    })
    .unwrap();
    wait_until("the first slow message started", SCENARIO_TIMEOUT, || {
        busy.load(Ordering::SeqCst)
    });
    system.stop();
    wait_until("the system stopped", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let metrics = system.metrics();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(report.shutdown_time() > Duration::from_secs(1), "{report}");
    assert_eq!(metrics.stalls, 0, "{metrics:?}");
    assert!(
        !captured_logs()
            .iter()
            .any(|line| line.contains(&format!("stalled: {topic}"))),
        "{:#?}",
        captured_logs()
    );
}
