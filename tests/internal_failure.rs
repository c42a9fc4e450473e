//! What the README promises when a part of the framework itself fails, and when a stop is
//! asked for twice, proven on the `ledger` example as a child process (as an operator runs
//! it): a framework actor that dies (a fault a debug build injects: `KAFKA_ACTORS_TEST_FAULT`)
//! stops the system with `StopReason::InternalFailure` naming it, an unclean report, and a
//! non-zero exit; a second SIGTERM abandons the drain at once, and the report says what it
//! abandoned. On both backends.

mod support;

use std::time::{Duration, Instant};

use support::{Cluster, LedgerProcess, SCENARIO_TIMEOUT, Signal, group, read_ledger, wait_until};

/// Runs the ledger example with `fault` injected, until it exits by itself; returns its exit
/// status, its report, and what it processed and committed.
fn dies(fault: &str) -> (std::process::ExitStatus, String, usize, i64) {
    let cluster = Cluster::start();
    let topic = cluster.topic(&format!("dies-{fault}"), 2);
    let group = group(&format!("dies-{fault}"));
    cluster.produce(&topic, 100);
    let directory = tempfile::tempdir().unwrap();
    let ledger = directory.path().join("ledger");
    let mut env = support::test_session_env("");
    env.extend([
        ("LEDGER_FILE".to_owned(), ledger.display().to_string()),
        ("KAFKA_ACTORS_TEST_FAULT".to_owned(), fault.to_owned()),
    ]);
    let process = LedgerProcess::start_example("ledger", &cluster, &topic, &group, env);
    let (status, output) = process.exit_by_itself();
    let committed = cluster.committed_offsets(&group, &topic).values().sum();
    (status, output, read_ledger(&ledger).len(), committed)
}

#[test]
fn a_fetcher_that_dies_stops_the_system_uncleanly_and_the_example_exits_with_an_error() {
    let (status, report, processed, committed) = dies("fetcher");
    assert!(!status.success(), "exit status {status}\n{report}");
    assert!(
        report.contains("stopped: internal failure: the fetcher died"),
        "{report}"
    );
    // It died as it took its first messages: none was handed out, none committed.
    assert_eq!((processed, committed), (0, 0), "{report}");
}

#[test]
fn a_processor_task_that_dies_stops_the_system_uncleanly_and_the_example_exits_with_an_error() {
    let (status, report, processed, committed) = dies("processor");
    assert!(!status.success(), "exit status {status}\n{report}");
    assert!(
        report.contains("stopped: internal failure: processor") && report.contains("died"),
        "{report}"
    );
    // Each died at its first message: nothing ran, nothing was committed.
    assert_eq!((processed, committed), (0, 0), "{report}");
}

#[test]
fn a_second_sigterm_abandons_the_drain_at_once_and_the_report_says_what_it_abandoned() {
    let cluster = Cluster::start();
    let topic = cluster.topic("second-signal", 1);
    let group = group("second-signal");
    cluster.produce(&topic, 200);
    let directory = tempfile::tempdir().unwrap();
    let ledger = directory.path().join("ledger");
    let http = support::free_addr();
    let mut env = support::test_session_env("");
    env.extend([
        ("LEDGER_FILE".to_owned(), ledger.display().to_string()),
        ("HTTP_ADDR".to_owned(), http.to_string()),
        // Each message takes a minute: the drain would wait for the one in progress, and for
        // what the processor holds.
        ("PROCESS_DELAY_MS".to_owned(), "60000".to_owned()),
        ("KAFKA_SHUTDOWN_TIMEOUT".to_owned(), "5m".to_owned()),
    ]);
    let process = LedgerProcess::start_example("ledger", &cluster, &topic, &group, env);
    wait_until("a message is in progress", SCENARIO_TIMEOUT, || {
        let Some((_, metrics)) = support::try_get(http, "/metrics") else {
            return false;
        };
        metrics.lines().any(|line| {
            line.starts_with("kafka_actors_messages_in_flight{") && !line.ends_with(" 0")
        })
    });
    process.send(Signal::SIGTERM);
    wait_until("the drain began", SCENARIO_TIMEOUT, || {
        support::get(http, "/health/live")
            .1
            .contains("\"stopping\"")
    });
    // The second signal cuts the drain short.
    let second = Instant::now();
    process.send(Signal::SIGTERM);
    let (status, report) = process.exit_by_itself();
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the exit took {took:?} after the second signal (the drain would take minutes)\n{report}"
    );
    assert!(read_ledger(&ledger).is_empty(), "no message finished");
    assert!(
        !status.success(),
        "an abandoned drain is not clean\n{report}"
    );
    assert!(
        report.contains("abandoned (delivered again on restart)"),
        "{report}"
    );
    assert!(
        report.contains("Drain") && report.contains("(incomplete)"),
        "{report}"
    );
    let abandoned: usize = report
        .lines()
        .filter_map(|line| {
            line.split_once(": ")?
                .1
                .split(" messages from offset")
                .next()
        })
        .filter_map(|count| count.trim().parse::<usize>().ok())
        .sum();
    assert!(
        abandoned >= 1,
        "the drain held {abandoned} messages\n{report}"
    );
    // What finished is committed; what was abandoned is not.
    let finished = read_ledger(&ledger).len() as i64;
    let committed = cluster.committed_offsets(&group, &topic);
    assert_eq!(
        committed.get(&0).copied().unwrap_or(0),
        finished,
        "{report}"
    );
}
