//! Many instances in one group, as separate processes (the `ledger` example), over a stream of
//! 100,000 messages on 8 partitions: instances join and leave mid-stream and partitions move
//! between them. Each process writes a ledger of its own; together they must hold every
//! message, exactly once when every departure was graceful (revocations commit what
//! finished before partitions move), and after a SIGKILL with duplicates only from the killed
//! instance's last, uncommitted stretch.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{
    Audit, Cluster, LedgerLine, LedgerProcess, audit, group, read_ledger_lines, wait_until,
};

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 8;
/// Simulated work per message, so that the stream is still flowing when instances come and go.
const DELAY_MS: u64 = 1;
/// The ledger example commits every 5 s (the default `commit_interval`).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a whole scenario may take before a wait gives up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// A topic full of messages, a group, and a directory of per-process ledgers.
struct Scenario {
    cluster: Cluster,
    topic: String,
    group: String,
    directory: tempfile::TempDir,
    end_offsets: std::collections::BTreeMap<i32, i64>,
    options: String,
}

impl Scenario {
    fn new(name: &str, options: &str) -> Self {
        let cluster = Cluster::start();
        let topic = cluster.topic(name, PARTITIONS);
        let end_offsets = cluster.produce(&topic, MESSAGES);
        Scenario {
            group: group(name),
            topic,
            cluster,
            directory: tempfile::tempdir().unwrap(),
            end_offsets,
            options: options.to_owned(),
        }
    }

    fn ledger(&self, instance: &str) -> PathBuf {
        self.directory.path().join(format!("{instance}.ledger"))
    }

    fn start(&self, instance: &str) -> LedgerProcess {
        LedgerProcess::start(
            &self.cluster,
            &self.topic,
            &self.group,
            &self.ledger(instance),
            DELAY_MS,
            &self.options,
        )
    }

    /// Every instance's ledger lines, by instance.
    fn ledgers(&self) -> HashMap<String, Vec<LedgerLine>> {
        std::fs::read_dir(self.directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .map(|path| {
                let instance = path.file_stem().unwrap().to_string_lossy().into_owned();
                (instance, read_ledger_lines(&path))
            })
            .collect()
    }

    fn entries(&self) -> Vec<(i32, i64)> {
        self.ledgers()
            .into_values()
            .flatten()
            .map(|line| (line.partition, line.offset))
            .collect()
    }

    fn wait_for_total(&self, processed: usize) {
        wait_until(
            &format!("the group processed {processed} messages"),
            STREAM_TIMEOUT,
            || self.entries().len() >= processed,
        );
    }

    fn wait_for_everything(&self) {
        wait_until("the group processed every message", STREAM_TIMEOUT, || {
            audit(&self.entries(), &self.end_offsets).lost == 0
        });
    }

    fn stop(&self, instance: LedgerProcess) {
        let (status, output) = instance.terminate();
        assert!(status.success(), "exit status {status}\n{output}");
        assert!(output.contains("abandoned: none"), "{output}");
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The longest pause between two messages an instance finished, from `from_ms` on for
/// `window`: how long a rebalance held up the instance that stayed.
fn longest_gap(ledger: &Path, from_ms: u128, window: Duration) -> Duration {
    let mut times: Vec<u128> = read_ledger_lines(ledger)
        .into_iter()
        .map(|line| line.finished_ms)
        .filter(|&t| t >= from_ms && t <= from_ms + window.as_millis())
        .collect();
    times.sort_unstable();
    let gap = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(0);
    Duration::from_millis(gap as u64)
}

/// Instances join and leave gracefully mid-stream: A alone, then B and C join, then A and B
/// leave, and C finishes. Every message is processed exactly once. Returns the longest pause
/// of a partition that stayed with A while B joined.
fn joins_and_graceful_departures(name: &str, options: &str) -> Option<Duration> {
    let scenario = Scenario::new(name, options);
    let a = scenario.start("a");
    scenario.wait_for_total(10_000);
    let b_joined = now_ms();
    let b = scenario.start("b");
    scenario.wait_for_total(30_000);
    let c_joined = now_ms();
    let c = scenario.start("c");
    scenario.wait_for_total(50_000);
    scenario.stop(a);
    scenario.wait_for_total(70_000);
    scenario.stop(b);
    scenario.wait_for_everything();
    scenario.stop(c);

    let ledgers = scenario.ledgers();
    for instance in ["a", "b", "c"] {
        assert!(
            ledgers.get(instance).is_some_and(|lines| !lines.is_empty()),
            "instance {instance} processed nothing: the partitions never moved"
        );
    }
    let outcome = audit(&scenario.entries(), &scenario.end_offsets);
    if scenario.cluster.is_real_broker() {
        assert_eq!(
            outcome,
            Audit {
                lost: 0,
                duplicated: 0
            }
        );
    } else {
        // The embedded cluster refuses every OffsetCommit while a rebalance is in progress
        // (librdkafka's rdkafka_mock_cgrp.c, JOINING and SYNCING states), where Kafka accepts
        // commits of the current generation until the rebalance completes. So there the
        // revocation's commit fails, and the next owner repeats what the previous one
        // finished since its last periodic commit: nothing is lost, some is repeated.
        assert_eq!(outcome.lost, 0, "{outcome:?}");
        eprintln!("{name} on the embedded cluster: {outcome:?}");
    }
    assert_eq!(
        scenario
            .cluster
            .committed_offsets(&scenario.group, &scenario.topic),
        scenario.end_offsets
    );
    // How long B's arrival held up A: over all of A's partitions, and over those that stayed
    // with A (cooperative: they keep flowing through the rebalance).
    let kept = kept_partitions_gap(&ledgers, b_joined, c_joined);
    eprintln!(
        "{name}: longest pause of the instance that stayed while another joined: {:?}; of the \
         partitions it kept: {kept:?}",
        longest_gap(&scenario.ledger("a"), b_joined, Duration::from_secs(15))
    );
    kept
}

/// The longest pause of a partition that stayed with instance `a` while `b` joined at
/// `b_joined` (`a` processed it before, and again once `b` processed its first message, which
/// is after the rebalance completed; no other instance processed it from `b_joined` to
/// `until`, when the next instance joined): how long the rebalance held up partitions that did
/// not move. `None` when no partition stayed.
fn kept_partitions_gap(
    ledgers: &HashMap<String, Vec<LedgerLine>>,
    b_joined: u128,
    until: u128,
) -> Option<Duration> {
    let b_first = ledgers["b"].iter().map(|line| line.finished_ms).min()?;
    let moved: std::collections::HashSet<i32> = ledgers
        .iter()
        .filter(|(instance, _)| *instance != "a")
        .flat_map(|(_, lines)| lines.iter())
        .filter(|line| line.finished_ms >= b_joined && line.finished_ms <= until)
        .map(|line| line.partition)
        .collect();
    let mut gaps = Vec::new();
    for partition in (0..PARTITIONS).filter(|p| !moved.contains(p)) {
        let mut times: Vec<u128> = ledgers["a"]
            .iter()
            .filter(|line| line.partition == partition)
            .map(|line| line.finished_ms)
            .collect();
        times.sort_unstable();
        let (Some(before), Some(after)) = (
            times.iter().copied().filter(|t| *t < b_joined).max(),
            times.iter().copied().find(|t| *t > b_first),
        ) else {
            continue;
        };
        let span: Vec<u128> = times
            .iter()
            .copied()
            .filter(|t| *t >= before && *t <= after)
            .collect();
        gaps.extend(span.windows(2).map(|pair| pair[1] - pair[0]));
    }
    gaps.into_iter()
        .max()
        .map(|gap| Duration::from_millis(gap as u64))
}

#[test]
fn instances_join_and_leave_gracefully_without_loss_or_duplicates_eager() {
    joins_and_graceful_departures("rebalance-eager", "");
}

#[test]
fn instances_join_and_leave_gracefully_without_loss_or_duplicates_cooperative() {
    let kept = joins_and_graceful_departures(
        "rebalance-cooperative",
        "partition.assignment.strategy=cooperative-sticky",
    )
    .expect("some partitions stayed with A when B joined");
    // Partitions that do not move keep flowing: an eager rebalance holds them for as long as
    // it takes (10 s on the embedded cluster, which waits for members), a cooperative one for
    // A's revocation of the others (milliseconds). A generous bound.
    assert!(
        kept < Duration::from_secs(2),
        "a partition that stayed with A paused for {kept:?} while B joined"
    );
}

#[test]
fn a_killed_instance_duplicates_only_its_uncommitted_stretch() {
    let scenario = Scenario::new("rebalance-kill", "");
    let a = scenario.start("a");
    scenario.wait_for_total(5_000);
    let b = scenario.start("b");
    wait_until("b processed 5000 messages", STREAM_TIMEOUT, || {
        read_ledger_lines(&scenario.ledger("b")).len() >= 5_000
    });
    let killed_at = now_ms();
    b.kill();
    scenario.wait_for_everything();
    scenario.stop(a);

    let entries = scenario.entries();
    let outcome = audit(&entries, &scenario.end_offsets);
    assert_eq!(outcome.lost, 0);
    // Every duplicate is a message B finished after its last commit: at most one commit
    // interval (plus a second for the commit itself) before it was killed.
    let b_lines = read_ledger_lines(&scenario.ledger("b"));
    let b_finished: HashMap<(i32, i64), u128> = b_lines
        .iter()
        .map(|line| ((line.partition, line.offset), line.finished_ms))
        .collect();
    let mut copies: HashMap<(i32, i64), usize> = HashMap::new();
    for entry in &entries {
        *copies.entry(*entry).or_default() += 1;
    }
    let window_start = killed_at - (COMMIT_INTERVAL + Duration::from_secs(1)).as_millis();
    let mut duplicates = 0;
    for (message, count) in copies.into_iter().filter(|(_, count)| *count > 1) {
        duplicates += 1;
        if !scenario.cluster.is_real_broker() {
            // The embedded cluster also refuses the commit of A's revocation when B joins
            // (see `joins_and_graceful_departures`), so A's own work may be repeated too, by
            // B or by A itself: there only "nothing lost" holds.
            continue;
        }
        let finished = b_finished
            .get(&message)
            .unwrap_or_else(|| panic!("{message:?} was duplicated without B"));
        assert_eq!(count, 2, "{message:?} was processed {count} times");
        assert!(
            *finished >= window_start,
            "{message:?} was finished by B {} ms before the kill, long after a commit",
            killed_at.saturating_sub(*finished)
        );
    }
    let in_window = b_lines
        .iter()
        .filter(|line| line.finished_ms >= window_start)
        .count();
    if scenario.cluster.is_real_broker() {
        assert!(duplicates <= in_window);
    }
    eprintln!(
        "after SIGKILL: {duplicates} duplicates; B finished {in_window} messages in its last \
         {:?} before the kill",
        COMMIT_INTERVAL + Duration::from_secs(1)
    );
    assert_eq!(
        scenario
            .cluster
            .committed_offsets(&scenario.group, &scenario.topic),
        scenario.end_offsets
    );
}

/// Static membership: with `group.instance.id`, closing does not leave the group (librdkafka
/// sends no LeaveGroup for a static member), so the partitions wait for the same instance to
/// come back within `session.timeout.ms`; its graceful stop still committed everything, so
/// the restart continues exactly.
#[test]
fn a_static_member_restarts_where_it_stopped() {
    let cluster = Cluster::start();
    let topic = cluster.topic("static-member", 4);
    let end_offsets = cluster.produce(&topic, 2_000);
    let group = group("static-member");
    let instance = format!("instance-{}", std::process::id());
    let ledger = support::Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .kafka_option("group.instance.id", &instance)
        // Little in flight, so that the graceful stop leaves most of the stream unprocessed.
        .max_in_flight_per_partition(50, 1 << 20)
        .build()
        .unwrap();
    let system = kafka_actors::ConsumerSystem::spawn(config, move || support::Recorder {
        delay_ms: Some(1..2),
        ..support::Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "the first run processed 300 messages",
        STREAM_TIMEOUT,
        || ledger.len() >= 300,
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(ledger.len() < 2_000, "stopped mid-stream");

    let config = cluster
        .config(&topic, &group)
        .kafka_option("group.instance.id", &instance);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}
