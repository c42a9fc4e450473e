//! The failure policy: transient failures are retried without holding up other partitions,
//! permanent ones go to the dead-letter topic with their provenance, panics replace the
//! processor and are retried, a dead-letter topic that does not take messages keeps their
//! offsets uncommitted, and a shutdown does not wait out a backoff.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::{
    ConsumerSystem, FailurePolicy, Message, Permanent, Processor, RetryAfter, StopReason,
    dead_letter_headers,
};
use support::{Audit, Cluster, Ledger, SCENARIO_TIMEOUT, audit, group, wait_until};

/// How a message misbehaves, by its offset in partition 0.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Fails this many attempts, then succeeds.
    FailsTimes(usize),
    /// Panics this many attempts, then succeeds.
    PanicsTimes(usize),
    /// Fails every attempt, marked permanent.
    Poison,
    /// Fails every attempt, not marked permanent.
    AlwaysFails,
    /// Fails this many attempts asking to be retried after the wait (a rate limit's
    /// `Retry-After`), then succeeds.
    Throttled(usize, Duration),
}

/// When each attempt at a message began, by `(partition, offset)`.
type AttemptTimes = HashMap<(i32, i64), Vec<Instant>>;

/// Records what it processed; misbehaves on the messages of partition 0 named in `plan`,
/// counting attempts across restarts and noting when each began.
#[derive(Clone)]
struct Flaky {
    ledger: Ledger,
    plan: Arc<HashMap<i64, Misbehaviour>>,
    attempts: Arc<Mutex<AttemptTimes>>,
    instances: Arc<AtomicUsize>,
    /// Simulated work per message.
    work: Duration,
}

impl Flaky {
    fn new(plan: impl IntoIterator<Item = (i64, Misbehaviour)>) -> Self {
        Flaky {
            ledger: Ledger::default(),
            plan: Arc::new(plan.into_iter().collect()),
            attempts: Arc::default(),
            instances: Arc::default(),
            work: Duration::ZERO,
        }
    }

    /// A fresh processor sharing the records, as the factory makes one.
    fn instance(&self) -> Self {
        self.instances.fetch_add(1, Ordering::SeqCst);
        self.clone()
    }
}

impl Processor for Flaky {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let at = (message.partition(), message.offset());
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let attempts = attempts.entry(at).or_default();
            attempts.push(Instant::now());
            attempts.len()
        };
        let misbehaviour = match at.0 {
            0 => self.plan.get(&at.1).copied(),
            _ => None,
        };
        match misbehaviour {
            Some(Misbehaviour::FailsTimes(times)) if attempt <= times => {
                anyhow::bail!("database unavailable (attempt {attempt})")
            }
            Some(Misbehaviour::PanicsTimes(times)) if attempt <= times => {
                panic!("bug on attempt {attempt}")
            }
            Some(Misbehaviour::Poison) => {
                return Err(anyhow::anyhow!("malformed payload").context(Permanent));
            }
            Some(Misbehaviour::AlwaysFails) => anyhow::bail!("still failing"),
            Some(Misbehaviour::Throttled(times, wait)) if attempt <= times => {
                return Err(anyhow::anyhow!("rate limited").context(RetryAfter(wait)));
            }
            _ => {}
        }
        self.ledger.record(at.0, at.1);
        Ok(())
    }
}

#[test]
fn transient_failures_succeed_after_retries_without_holding_up_other_partitions() {
    let cluster = Cluster::start();
    let topic = cluster.topic("transient", 2);
    let end_offsets = cluster.produce(&topic, 200);
    let group = group("transient");
    let flaky = Flaky::new([
        (5, Misbehaviour::FailsTimes(2)),
        (6, Misbehaviour::FailsTimes(1)),
    ]);
    let config = cluster
        .config(&topic, &group)
        // One processor for both partitions: a partition waiting for a retry must not hold
        // up the other one.
        .processors(1)
        .failure_policy(
            FailurePolicy::retry(3)
                .backoff(Duration::from_millis(300), Duration::from_secs(1))
                .then_dead_letter(),
        )
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&flaky.ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!((report.retries, report.dead_lettered), (3, 0), "{report}");
    let entries = flaky.ledger.entries();
    assert_eq!(
        audit(&entries, &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    // Partition 0 stayed in offset order through the retries...
    let partition_0: Vec<i64> = entries
        .iter()
        .filter(|(p, _)| *p == 0)
        .map(|&(_, o)| o)
        .collect();
    assert!(partition_0.windows(2).all(|pair| pair[0] < pair[1]));
    // ...while partition 1 went on: all of it was processed before the retried message.
    let retried_at = entries.iter().position(|&e| e == (0, 5)).unwrap();
    let last_of_1 = entries.iter().rposition(|&(p, _)| p == 1).unwrap();
    assert!(
        last_of_1 < retried_at,
        "partition 1 waited for partition 0's retries"
    );
    // Each retry waited its backoff: 300 ms, then 600 ms, each at least 80 % of it (jitter).
    let attempts = flaky.attempts.lock().unwrap()[&(0, 5)].clone();
    let waits: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert_eq!(waits.len(), 2);
    assert!(
        waits[0] >= Duration::from_millis(240) && waits[1] >= Duration::from_millis(480),
        "retried after {waits:?}"
    );
}

/// An error that names its wait (`RetryAfter`) is retried after that wait, not the policy's
/// backoff, and still counts an attempt: used up, the policy's end follows.
#[test]
fn an_error_naming_its_wait_is_retried_no_earlier_and_its_attempts_still_count() {
    let cluster = Cluster::start();
    let topic = cluster.topic("retry-after", 2);
    let dead_letter_topic = format!("{topic}.dlq");
    cluster.create_topic(&dead_letter_topic, 1);
    let end_offsets = cluster.produce(&topic, 200);
    let group = group("retry-after");
    let wait = Duration::from_millis(1500);
    let flaky = Flaky::new([
        (5, Misbehaviour::Throttled(1, wait)),
        (
            9,
            Misbehaviour::Throttled(usize::MAX, Duration::from_millis(50)),
        ),
    ]);
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        .failure_policy(
            // Backoffs far shorter than the wait asked for.
            FailurePolicy::retry(3)
                .backoff(Duration::from_millis(10), Duration::from_millis(20))
                .then_dead_letter(),
        )
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until("every good message was processed", SCENARIO_TIMEOUT, || {
        flaky.ledger.len() == 199
    });
    wait_until(
        "the one always throttled was dead-lettered",
        SCENARIO_TIMEOUT,
        || system.metrics().dead_lettered == 1,
    );
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    // Offset 5: one retry; offset 9: three attempts, then the dead-letter topic.
    assert_eq!((report.retries, report.dead_lettered), (3, 1), "{report}");
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    let attempts = flaky.attempts.lock().unwrap().clone();
    let throttled = &attempts[&(0, 5)];
    assert_eq!(throttled.len(), 2);
    assert!(
        throttled[1] - throttled[0] >= wait,
        "retried after {:?}, asked for {wait:?}",
        throttled[1] - throttled[0]
    );
    assert_eq!(attempts[&(0, 9)].len(), 3);
    let dead_letter = &cluster.read(&dead_letter_topic, 1)[0];
    assert_eq!(
        dead_letter.headers[dead_letter_headers::ORIGINAL_OFFSET],
        "9"
    );
    assert_eq!(
        dead_letter.headers[dead_letter_headers::ERROR],
        "retry after 50ms: rate limited"
    );
    // Partition 1 went on meanwhile: all of it was done before offset 5's retry.
    let entries = flaky.ledger.entries();
    let retried_at = entries.iter().position(|&e| e == (0, 5)).unwrap();
    let last_of_1 = entries.iter().rposition(|&(p, _)| p == 1).unwrap();
    assert!(last_of_1 < retried_at, "partition 1 waited for the retry");
}

/// The reproduction of a processor lent to two futures at once: a retry came due while a batch
/// still held the processor, the actor died inside the framework and its partitions stalled
/// silently (at 417 of 4,000 messages). Retries must interleave with a live stream on one
/// processor without ever running two items at once.
#[test]
fn retries_coming_due_during_a_stream_never_break_a_processor() {
    let cluster = Cluster::start();
    let topic = cluster.topic("retry-stream", 2);
    let group = group("retry-stream");
    // Every 25th message of partition 0 fails once: many retries come due mid-stream.
    let mut flaky = Flaky::new((0..200).map(|i| (i * 25 + 10, Misbehaviour::FailsTimes(1))));
    flaky.work = Duration::from_millis(1);
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        .failure_policy(
            FailurePolicy::retry(5)
                .backoff(Duration::from_millis(20), Duration::from_millis(200))
                .then_dead_letter(),
        )
        .build()
        .unwrap();
    cluster.create_topic(&format!("{topic}.dlq"), 1);
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    // A live stream: small batches, so that batch boundaries and retry timers interleave.
    let (brokers, stream_topic) = (cluster.brokers(), topic.clone());
    let producer = std::thread::spawn(move || {
        for batch in 0..200 {
            let records = (0..20).map(|i| (format!("k{batch}-{i}"), "m"));
            kafka_actors::testkit::produce(&brokers, &stream_topic, records).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&flaky.ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.processor_restarts, 0, "{report}");
    assert!(report.retries > 10, "{report}");
    assert_eq!(
        audit(&flaky.ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

#[test]
fn permanent_failures_go_to_the_dead_letter_topic_with_provenance_and_are_committed() {
    let cluster = Cluster::start();
    let topic = cluster.topic("poison", 2);
    let dead_letter_topic = format!("{topic}.dlq");
    cluster.create_topic(&dead_letter_topic, 1);
    let end_offsets = cluster.produce(&topic, 200);
    let group = group("poison");
    let flaky = Flaky::new([
        (10, Misbehaviour::Poison),
        (20, Misbehaviour::Poison),
        (30, Misbehaviour::AlwaysFails),
    ]);
    let config = cluster
        .config(&topic, &group)
        .failure_policy(
            FailurePolicy::retry(3)
                .backoff(Duration::from_millis(50), Duration::from_millis(100))
                .then_dead_letter(),
        )
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until("every good message was processed", SCENARIO_TIMEOUT, || {
        flaky.ledger.len() == 197
    });
    wait_until("the bad ones were dead-lettered", SCENARIO_TIMEOUT, || {
        system.metrics().dead_lettered == 3
    });
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    // Permanent failures skip their retries; the other one used all three attempts.
    assert_eq!((report.dead_lettered, report.retries), (3, 2), "{report}");
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    let mut dead_letters = cluster.read(&dead_letter_topic, 3);
    dead_letters.sort_by_key(|r| r.headers[dead_letter_headers::ORIGINAL_OFFSET].clone());
    for (record, (offset, attempts, error)) in dead_letters.iter().zip([
        (10, "1", "permanent failure: malformed payload"),
        (20, "1", "permanent failure: malformed payload"),
        (30, "3", "still failing"),
    ]) {
        let headers = &record.headers;
        assert_eq!(headers[dead_letter_headers::ORIGINAL_TOPIC], topic);
        assert_eq!(headers[dead_letter_headers::ORIGINAL_PARTITION], "0");
        assert_eq!(
            headers[dead_letter_headers::ORIGINAL_OFFSET],
            offset.to_string()
        );
        assert_eq!(headers[dead_letter_headers::ATTEMPTS], attempts);
        assert_eq!(headers[dead_letter_headers::ERROR], error);
        assert!(
            headers[dead_letter_headers::ORIGINAL_TIMESTAMP]
                .parse::<i64>()
                .is_ok()
        );
        // The original key and payload, as produced (cluster.produce writes "message <i>").
        assert!(record.key.is_some());
        let payload = String::from_utf8(record.payload.clone().unwrap()).unwrap();
        assert!(payload.starts_with("message "), "{payload}");
    }
}

#[test]
fn panics_are_retried_on_a_fresh_processor_and_never_count_as_completions() {
    let cluster = Cluster::start();
    let topic = cluster.topic("panics", 2);
    let end_offsets = cluster.produce(&topic, 200);
    let group = group("panics");
    let flaky = Flaky::new([
        (7, Misbehaviour::PanicsTimes(1)),
        (8, Misbehaviour::PanicsTimes(2)),
    ]);
    let config = cluster
        .config(&topic, &group)
        .processors(2)
        .failure_policy(
            FailurePolicy::retry(3).backoff(Duration::from_millis(50), Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&flaky.ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (report.processor_restarts, report.retries),
        (3, 3),
        "{report}"
    );
    // Two processors to begin with, and one fresh one per panic.
    assert_eq!(flaky.instances.load(Ordering::SeqCst), 5);
    assert_eq!(
        audit(&flaky.ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

#[test]
fn a_dead_letter_topic_that_takes_nothing_keeps_the_message_uncommitted() {
    let cluster = Cluster::start();
    let topic = cluster.topic("unacknowledged", 1);
    let end_offsets = cluster.produce(&topic, 100);
    let group = group("unacknowledged");
    let flaky = Flaky::new([(40, Misbehaviour::Poison)]);
    let config = cluster
        .config(&topic, &group)
        .failure_policy(
            FailurePolicy::retry(3).then_dead_letter_to(cluster.unwritable_topic("unwritable")),
        )
        .dead_letter_option("message.timeout.ms", "2000")
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();

    match &report.reason {
        StopReason::DeadLetterFailed { offset, .. } => assert_eq!(*offset, 40),
        other => panic!("stopped for another reason: {other}"),
    }
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(cluster.committed_offsets(&group, &topic).get(&0), Some(&40));

    // The message comes back on the next start.
    let config = cluster.config(&topic, &group);
    support::restart_and_finish(
        &cluster,
        config,
        &flaky.ledger,
        &topic,
        &group,
        &end_offsets,
    );
}

#[test]
fn a_shutdown_does_not_wait_out_a_backoff_and_the_message_comes_back() {
    let cluster = Cluster::start();
    let topic = cluster.topic("backoff", 1);
    let end_offsets = cluster.produce(&topic, 100);
    let group = group("backoff");
    let flaky = Flaky::new([(30, Misbehaviour::AlwaysFails)]);
    let shutdown_timeout = Duration::from_secs(10);
    let config = cluster
        .config(&topic, &group)
        .shutdown_timeout(shutdown_timeout)
        .failure_policy(
            FailurePolicy::retry(5).backoff(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let factory = flaky.clone();
    let system = ConsumerSystem::spawn(config, move || factory.instance()).unwrap();
    wait_until(
        "the failed message waits for its retry",
        SCENARIO_TIMEOUT,
        || system.metrics().retries == 1 && flaky.ledger.len() == 30,
    );
    let stopping = Instant::now();
    system.stop();
    let report = system.join().unwrap();

    assert!(
        stopping.elapsed() < shutdown_timeout,
        "the shutdown waited out the backoff: {:?}",
        stopping.elapsed()
    );
    // The failed message and everything behind it were given up on purpose, not committed:
    // a clean stop, with the rest left for the next reader.
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.released, 70, "{report}");
    assert_eq!(cluster.committed_offsets(&group, &topic).get(&0), Some(&30));

    let config = cluster.config(&topic, &group);
    support::restart_and_finish(
        &cluster,
        config,
        &flaky.ledger,
        &topic,
        &group,
        &end_offsets,
    );
}

/// Panics where the old processor actor did not catch them: before `process` made its future,
/// in `on_start` of a replacement, in `on_stop`, in the factory, and in `Drop`.
struct Fragile {
    ledger: Ledger,
    /// This instance's number, from 1 in the order the factory made them.
    instance: usize,
    /// Instances from this one on panic in `on_start`.
    panic_on_start_from: usize,
    panic_on_stop: bool,
    panicked_before_future: Arc<AtomicUsize>,
    /// How often an instance panicked as it was dropped.
    drop_panics: Arc<AtomicUsize>,
}

impl Fragile {
    fn factory(
        ledger: &Ledger,
        panic_on_start_from: usize,
        panic_on_stop: bool,
    ) -> (
        impl Fn() -> Fragile + Send + Sync + 'static,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
    ) {
        let made = Arc::new(AtomicUsize::new(0));
        let panicked = Arc::new(AtomicUsize::new(0));
        let drop_panics = Arc::new(AtomicUsize::new(0));
        let (ledger, counter, panics) = (ledger.clone(), made.clone(), panicked.clone());
        let dropped = drop_panics.clone();
        let factory = move || Fragile {
            ledger: ledger.clone(),
            instance: counter.fetch_add(1, Ordering::SeqCst) + 1,
            panic_on_start_from,
            panic_on_stop,
            panicked_before_future: panics.clone(),
            drop_panics: dropped.clone(),
        };
        (factory, made, drop_panics)
    }
}

impl Processor for Fragile {
    async fn on_start(&mut self) -> anyhow::Result<()> {
        if self.instance >= self.panic_on_start_from {
            panic!("on_start of instance {} panics", self.instance);
        }
        Ok(())
    }

    // Not an `async fn`: the part before the future is made runs when `process` is called.
    #[allow(clippy::manual_async_fn)]
    fn process(
        &mut self,
        message: &Message,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> {
        if message.offset() == 5 && self.panicked_before_future.fetch_add(1, Ordering::SeqCst) == 0
        {
            panic!("panics before making its future");
        }
        let (ledger, at) = (self.ledger.clone(), (message.partition(), message.offset()));
        async move {
            ledger.record(at.0, at.1);
            Ok(())
        }
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        if self.panic_on_stop {
            panic!("on_stop panics");
        }
        Ok(())
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        // The instance replaced after a panic panics as it is dropped (the framework drops it
        // before it makes the replacement).
        let replaced = self.panicked_before_future.load(Ordering::SeqCst) > 0;
        if self.instance == 1 && replaced && !std::thread::panicking() {
            self.drop_panics.fetch_add(1, Ordering::SeqCst);
            panic!("drop of instance 1 panics");
        }
    }
}

#[test]
fn a_panic_before_the_future_and_in_drop_is_caught_and_the_message_retried() {
    let cluster = Cluster::start();
    let topic = cluster.topic("sync-panic", 1);
    let end_offsets = cluster.produce(&topic, 50);
    let group = group("sync-panic");
    let ledger = Ledger::default();
    let (factory, made, drop_panics) = Fragile::factory(&ledger, usize::MAX, false);
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        .failure_policy(
            FailurePolicy::retry(3).backoff(Duration::from_millis(10), Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, factory).unwrap();
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (report.processor_restarts, report.retries),
        (1, 1),
        "{report}"
    );
    assert_eq!(made.load(Ordering::SeqCst), 2, "one replacement");
    // The replaced instance panicked in its Drop, and the framework caught and logged it.
    assert_eq!(drop_panics.load(Ordering::SeqCst), 1);
    assert!(
        support::captured_logs()
            .iter()
            .any(|line| line.contains("dropping a processor panicked: drop of instance 1 panics")),
        "{:#?}",
        support::captured_logs()
    );
    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

#[test]
fn a_replacement_whose_on_start_panics_stops_the_system_and_keeps_the_message() {
    let cluster = Cluster::start();
    let topic = cluster.topic("restart-panic", 1);
    cluster.produce(&topic, 50);
    let group = group("restart-panic");
    let ledger = Ledger::default();
    let (factory, _, _) = Fragile::factory(&ledger, 2, false);
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, factory).unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();
    match &report.reason {
        StopReason::ProcessorRestartFailed { processor, error } => {
            assert_eq!(*processor, 0);
            assert!(error.contains("on_start panicked"), "{error}");
        }
        other => panic!("stopped for another reason: {other}\n{report}"),
    }
    assert_eq!(cluster.committed_offsets(&group, &topic).get(&0), Some(&5));
    assert!(!ledger.entries().contains(&(0, 5)));
}

#[test]
fn panics_in_the_factory_and_in_on_stop_are_reported_not_fatal() {
    let cluster = Cluster::start();
    let topic = cluster.topic("factory-panic", 1);
    let config = cluster
        .config(&topic, &group("factory-panic"))
        .build()
        .unwrap();
    let error =
        ConsumerSystem::spawn(config, || -> Fragile { panic!("the factory panics") }).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the factory panicked: the factory panics"),
        "{error}"
    );

    let ledger = Ledger::default();
    let (factory, _, _) = Fragile::factory(&ledger, usize::MAX, true);
    let config = cluster
        .config(&topic, &group("stop-panic"))
        .processors(2)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, factory).unwrap();
    system.stop();
    let report = system.join().unwrap();
    assert_eq!(report.errors.len(), 1, "{report}");
    assert!(
        report.errors[0].contains("on_stop panicked: on_stop panics"),
        "{report}"
    );
    let stop_hooks = report
        .phases
        .iter()
        .find(|p| p.phase == kafka_actors::Phase::StopProcessors)
        .unwrap();
    assert!(!stop_hooks.completed);
    // Every other phase still ran, and completed.
    use kafka_actors::Phase;
    for phase in [
        Phase::StopFetching,
        Phase::Drain,
        Phase::Commit,
        Phase::Close,
    ] {
        assert!(
            report
                .phases
                .iter()
                .any(|p| p.phase == phase && p.completed),
            "{phase:?} did not complete: {report}"
        );
    }
}
