//! The system inside an async application, as `#[tokio::main]` code holds it: awaited to its
//! report, stopped by a future of the application's, its `RunningSystem` awaited. On both
//! backends.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_actors::{ConsumerSystem, StopReason};
use support::{Audit, Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, commit_points, group};

/// Waits, without blocking the runtime, until the ledger holds every message below the end
/// offsets.
async fn until_all_processed(ledger: &Ledger, end_offsets: &BTreeMap<i32, i64>) {
    tokio::time::timeout(SCENARIO_TIMEOUT, async {
        while audit(&ledger.entries(), end_offsets).lost > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every message processed within the scenario timeout");
}

#[tokio::test]
async fn an_awaited_system_stops_when_the_applications_future_completes() {
    let cluster = Cluster::start();
    let topic = cluster.topic("async-run", 3);
    let group = group("async-run");
    let end_offsets = cluster.produce(&topic, 600);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .handle_signals(false)
        .build()
        .unwrap();
    let (shut_down, shutdown) = tokio::sync::oneshot::channel::<()>();
    let watcher = ledger.clone();
    let watched = end_offsets.clone();
    // The application's side: once everything is processed, it asks for the stop.
    let application = async move {
        until_all_processed(&watcher, &watched).await;
        shut_down.send(()).unwrap();
    };
    let system = ConsumerSystem::run_until(config, move || Recorder::new(&recorder), async {
        let _ = shutdown.await;
    });
    // Both on this one task of a current-thread runtime: the system never blocks it.
    let (report, ()) = tokio::time::timeout(SCENARIO_TIMEOUT * 2, async {
        tokio::join!(system, application)
    })
    .await
    .expect("the system stopped within the timeout");
    let report = report.unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.reason, StopReason::Requested);
    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

/// A stop mid-stream, from the application's future: the group commits exactly what was
/// processed (the longest processed run of each partition), nothing past it.
#[tokio::test]
async fn a_shutdown_mid_stream_commits_exactly_what_was_processed() {
    let cluster = Cluster::start();
    let topic = cluster.topic("async-mid-stream", 3);
    let group = group("async-mid-stream");
    cluster.produce(&topic, 3000);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let watcher = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .handle_signals(false)
        .build()
        .unwrap();
    let system = ConsumerSystem::run_until(
        config,
        move || Recorder {
            delay_ms: Some(0..2),
            ..Recorder::new(&recorder)
        },
        async move {
            while watcher.len() < 300 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    );
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, system)
        .await
        .expect("the stop within the scenario timeout")
        .unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.reason, StopReason::Requested);
    let entries = ledger.entries();
    assert!(
        entries.len() < 3000,
        "stopped mid-stream: {}",
        entries.len()
    );
    assert_eq!(audit(&entries, &BTreeMap::new()).duplicated, 0);
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        commit_points(&entries),
        "the group committed what was processed"
    );
}

#[tokio::test]
async fn a_spawned_system_is_awaited_to_its_report() {
    let cluster = Cluster::start();
    let topic = cluster.topic("async-stopped", 2);
    let group = group("async-stopped");
    let end_offsets = cluster.produce(&topic, 300);
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .handle_signals(false)
        .build()
        .unwrap();
    // Started without blocking this test's single thread: a ticker on the same task goes on
    // while the system starts.
    let started = std::cell::Cell::new(false);
    let ticks_while_starting = std::cell::Cell::new(0);
    let ticker = async {
        while !started.get() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            ticks_while_starting.set(ticks_while_starting.get() + 1);
        }
    };
    let start = async {
        let system = ConsumerSystem::spawn_async(config, move || Recorder::new(&recorder)).await;
        started.set(true);
        system
    };
    let (system, ()) = tokio::join!(start, ticker);
    let system = system.unwrap();
    assert!(
        ticks_while_starting.get() > 0,
        "the start blocked the runtime"
    );
    until_all_processed(&ledger, &end_offsets).await;
    system.stop();
    // A `RunningSystem` is awaited as it is (`IntoFuture`), as `stopped()` is.
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async move { system.await })
        .await
        .expect("the report within the scenario timeout")
        .unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.processed, 300);
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}
