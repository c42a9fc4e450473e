//! The only broker down for 30 s under a running consumer, on an Apache Kafka broker of the
//! test's own (the shared one must stay up for the tests beside): a few clear log lines, not a
//! warning per reconnection; the errors counted in the metrics; the outage on `/health/live`,
//! which stays 200; nothing lost once the broker is back.
//!
//! Built and run only when named (`cargo test --test broker_outage`, `test = false` in
//! Cargo.toml). It needs Java and Kafka's jars (`scripts/kafka.sh`), and fails when no broker
//! of its own can start: it never passes without a real broker.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, FailurePolicy, metric_names};
use support::{
    Ledger, OwnBroker, Recorder, SCENARIO_TIMEOUT, audit, capture_everything, everything_logged,
    free_addr, get, group, wait_until,
};

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// The most lines the framework may log at `warn` and above for the whole outage. Seen: that
/// the cluster is unreachable, librdkafka's session timeout (the member left the group), the
/// summary after 30 s, and as the broker comes back, a librdkafka line that repeats one of
/// the start (the dead-letter producer's "coordinator load in progress"); one more such line
/// is allowed.
const MOST_WARNINGS: usize = 5;

/// A logged line's level and target, from `LEVEL target: message`.
fn level_and_target(line: &str) -> (&str, &str) {
    let (level, rest) = line.split_once(' ').unwrap_or((line, ""));
    let (target, _) = rest.split_once(": ").unwrap_or((rest, ""));
    (level, target)
}

/// The framework's lines (the rdkafka crate's too, which a client with rdkafka's default
/// context would log under its own target, and librdkafka's under rdkafka's default).
fn is_framework(line: &str) -> bool {
    let (_, target) = level_and_target(line);
    target.starts_with("kafka_actors") || target.starts_with("rdkafka") || target == "librdkafka"
}

fn at_warn_or_above(line: &str) -> bool {
    matches!(level_and_target(line).0, "WARN" | "ERROR")
}

/// The samples of `name` for `group` on `/metrics`, by their other labels.
fn samples(addr: SocketAddr, name: &str, group: &str) -> Vec<(String, f64)> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let group_label = format!("group=\"{group}\"");
    body.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{')?;
            (metric == name && labels.contains(&group_label))
                .then(|| Some((labels.to_owned(), value.parse().ok()?)))?
        })
        .collect()
}

fn cluster_unreachable_seconds(addr: SocketAddr, group: &str) -> Option<f64> {
    samples(addr, metric_names::UNREACHABLE, group)
        .into_iter()
        .find(|(labels, _)| labels.contains("broker=\"all\""))
        .map(|(_, seconds)| seconds)
}

#[test]
fn a_thirty_second_outage_is_a_few_log_lines_and_loses_nothing() {
    capture_everything();
    let broker = OwnBroker::start();
    let group = group("outage");
    // Every client of the test's own is dropped before the outage: only the system's clients
    // are connected while the broker is down, so every line of it is the framework's.
    let (topic, end_before) = {
        let cluster = broker.cluster();
        assert!(cluster.is_real_broker());
        let topic = cluster.topic("outage", 4);
        // The dead-letter producer is a client of the system too, and reports the outage.
        cluster.create_topic(&format!("{topic}.dlq"), 1);
        let end_offsets = cluster.produce(&topic, 1_000);
        (topic, end_offsets)
    };
    let addr = free_addr();
    let config = broker
        .cluster()
        .config(&topic, &group)
        .failure_policy(FailurePolicy::retry(3).then_dead_letter())
        .http_addr(addr.to_string())
        .build()
        .unwrap();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until(
        "the first 1000 messages are processed and committed",
        SCENARIO_TIMEOUT,
        || {
            audit(&ledger.entries(), &end_before).lost == 0
                && broker.cluster().committed_offsets(&group, &topic) == end_before
        },
    );
    assert_eq!(cluster_unreachable_seconds(addr, &group), Some(0.0));

    let from = everything_logged().len();
    broker.stop();
    let stopped = Instant::now();
    // The outage lasts its 30 s whatever happens; meanwhile the endpoint is asked once a
    // second whether the system is alive and what it knows of the outage.
    let mut longest_outage = 0.0f64;
    let mut shown = None;
    while stopped.elapsed() < OUTAGE {
        let (status, body) = get(addr, "/health/live");
        assert_eq!(status, 200, "librdkafka retries: alive all along: {body}");
        if body.contains("\"broker\":\"all\"") {
            shown = Some(body);
        }
        if let Some(seconds) = cluster_unreachable_seconds(addr, &group) {
            longest_outage = longest_outage.max(seconds);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let shown = shown.expect("/health/live showed the cluster unreachable");
    eprintln!("/health/live during the outage: {shown}");
    assert!(
        longest_outage >= 20.0,
        "{} reached only {longest_outage} s",
        metric_names::UNREACHABLE
    );

    broker.resume();
    let resumed = Instant::now();
    let end_after = broker.cluster().produce(&topic, 500);
    wait_until(
        "the 500 messages after the outage are processed",
        SCENARIO_TIMEOUT,
        || audit(&ledger.entries(), &end_after).lost == 0,
    );
    wait_until(
        "the framework says the cluster is back",
        SCENARIO_TIMEOUT,
        || {
            everything_logged()[from..]
                .iter()
                .any(|line| line.contains("is reachable again"))
        },
    );
    eprintln!(
        "caught up {:.1?} after the broker resumed",
        resumed.elapsed()
    );
    wait_until("the outage gauge is back to 0", SCENARIO_TIMEOUT, || {
        cluster_unreachable_seconds(addr, &group) == Some(0.0)
    });
    let (status, body) = get(addr, "/health/live");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"unreachable\":[]"), "{body}");
    let errors: f64 = samples(addr, metric_names::LIBRDKAFKA_ERRORS, &group)
        .iter()
        .map(|(_, count)| count)
        .sum();
    let to = everything_logged().len();
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    let outcome = audit(&ledger.entries(), &end_after);
    assert_eq!(outcome.lost, 0, "{outcome:?}");
    // A member that lost its partitions meanwhile (under the consumer protocol, the restarted
    // broker may fence it after it processed the messages of after the outage) has its
    // commits refused, and the next owner repeats what finished since the last commit: at
    // most those 500. Without a loss, nothing repeats.
    let lost_partitions = everything_logged()[from..]
        .iter()
        .any(|line| line.contains("kafka_actors::actors::fetcher: lost "));
    let repeats_allowed = if lost_partitions { 500 } else { 0 };
    assert!(
        outcome.duplicated <= repeats_allowed,
        "{outcome:?} (partitions lost meanwhile: {lost_partitions})"
    );

    let outage_lines: Vec<String> = everything_logged()[from..to]
        .iter()
        .filter(|line| {
            is_framework(line) && !line.starts_with("DEBUG") && !line.starts_with("TRACE")
        })
        .cloned()
        .collect();
    eprintln!(
        "The framework's lines at info and above, from the broker's stop until it caught up:"
    );
    for line in &outage_lines {
        eprintln!("  {line}");
    }
    let warnings: Vec<&String> = outage_lines
        .iter()
        .filter(|line| at_warn_or_above(line))
        .collect();
    eprintln!(
        "{} lines at warn and above; {errors} errors counted in {}",
        warnings.len(),
        metric_names::LIBRDKAFKA_ERRORS
    );
    assert!(
        warnings.len() <= MOST_WARNINGS,
        "{} lines at warn and above: {warnings:#?}",
        warnings.len()
    );
    assert!(
        warnings.iter().all(|line| !line.starts_with("ERROR")),
        "an outage librdkafka rides out loses nothing: no error: {warnings:#?}"
    );
    assert!(
        errors >= 10.0 && errors > warnings.len() as f64,
        "the errors are counted, not logged: {errors}"
    );
}
