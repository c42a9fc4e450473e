//! The testkit as a user would test a processor with it: no cluster, the framework's own
//! ordering and failure-policy code, virtual time; and the embedded integration run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::testkit::{self, Control, Fate, MessageBuilder, TestRun};
use kafka_actors::{
    BatchFailures, BatchProcessor, FailurePolicy, Message, OrderingMode, Permanent, Processor,
    RetryAfter, TopicPartition, dead_letter_headers,
};

/// Fails on payloads that say so: "fail N" fails its first N attempts, "poison" fails for
/// good, "panic" panics once, "throttled" asks twice to be retried after 30 s, then 60 s.
#[derive(Clone, Default)]
struct Scripted {
    attempts: Arc<Mutex<Vec<(i32, i64)>>>,
}

impl Processor for Scripted {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let at = (message.partition(), message.offset());
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(at);
            attempts.iter().filter(|a| **a == at).count()
        };
        match message.payload_str().unwrap_or_default() {
            "poison" => Err(anyhow::anyhow!("malformed").context(Permanent)),
            "throttled" if attempt <= 2 => Err(anyhow::anyhow!("429")
                .context(RetryAfter(Duration::from_secs(30 * attempt as u64)))),
            "panic" if attempt == 1 => panic!("a bug"),
            text => match text.strip_prefix("fail ").map(|n| n.parse::<usize>()) {
                Some(Ok(times)) if attempt <= times => anyhow::bail!("unavailable"),
                _ => Ok(()),
            },
        }
    }
}

fn message(partition: i32, payload: &str) -> MessageBuilder {
    MessageBuilder::new("orders")
        .partition(partition)
        .payload(payload)
}

#[test]
fn retries_follow_the_policys_backoffs_in_virtual_time_and_hold_back_only_their_partition() {
    let policy = FailurePolicy::retry(4)
        .backoff(Duration::from_secs(10), Duration::from_secs(60))
        .jitter(0.0);
    let started = Instant::now();
    let outcome = TestRun::new().failure_policy(policy).process(
        Scripted::default,
        [message(0, "fail 2"), message(0, "ok"), message(1, "ok")],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "backoffs are virtual"
    );
    let retried = outcome.of(0, 0);
    assert_eq!(retried.fate, Fate::Processed);
    assert_eq!(retried.attempts, 3);
    assert_eq!(
        retried.backoffs,
        [Duration::from_secs(10), Duration::from_secs(20)]
    );
    // Partition 1 went on while partition 0 waited; partition 0's next message waited.
    assert_eq!(outcome.runs, [(0, 0), (1, 0), (0, 0), (0, 0), (0, 1)]);
    assert_eq!(outcome.with_fate(|f| *f == Fate::Processed).len(), 3);
    assert_eq!(outcome.stop_requested, None);
}

#[test]
fn an_error_naming_its_wait_is_retried_after_it_in_virtual_time_within_the_attempts() {
    let policy = |attempts| {
        FailurePolicy::retry(attempts)
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .then_skip()
    };
    let outcome = TestRun::new().failure_policy(policy(3)).process(
        Scripted::default,
        [message(0, "throttled"), message(1, "ok")],
    );
    let throttled = outcome.of(0, 0);
    assert_eq!(throttled.fate, Fate::Processed);
    assert_eq!(throttled.attempts, 3);
    // The waits asked for, longer than the policy's maximum backoff, kept as they are.
    assert_eq!(
        throttled.backoffs,
        [Duration::from_secs(30), Duration::from_secs(60)]
    );
    // With two attempts, the second request to wait uses them up.
    let outcome = TestRun::new()
        .failure_policy(policy(2))
        .process(Scripted::default, [message(0, "throttled")]);
    assert_eq!(outcome.of(0, 0).fate, Fate::Skipped);
    assert_eq!(outcome.of(0, 0).backoffs, [Duration::from_secs(30)]);
}

/// Pauses its partition on "busy" payloads, seeks back on "rewind".
struct Controlling;

impl Processor for Controlling {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let control = message.partition_control();
        match message.payload_str().unwrap_or_default() {
            "busy" => control.pause_for(Duration::from_secs(5))?,
            "rewind" => control.seek(0)?,
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn the_controls_a_processor_asks_for_are_recorded_not_carried_out() {
    let outcome = TestRun::new().process(
        || Controlling,
        [
            message(0, "ok"),
            message(0, "busy"),
            message(1, "rewind"),
            message(0, "ok"),
        ],
    );
    assert_eq!(
        outcome.controls,
        [
            (
                TopicPartition::new("orders", 0),
                Control::Pause(Some(Duration::from_secs(5)))
            ),
            (TopicPartition::new("orders", 1), Control::Seek(0)),
        ]
    );
    // Every message ran: a run reads no partition, so nothing is paused or replayed.
    assert_eq!(outcome.with_fate(|f| *f == Fate::Processed).len(), 4);
}

#[test]
fn per_key_a_failed_message_holds_back_only_its_key() {
    let outcome = TestRun::new()
        .ordering(OrderingMode::PerKey)
        .failure_policy(FailurePolicy::retry(2).jitter(0.0))
        .process(
            Scripted::default,
            [
                message(0, "fail 1").key("a"),
                message(0, "ok").key("a"),
                message(0, "ok").key("b"),
            ],
        );
    assert_eq!(outcome.runs, [(0, 0), (0, 2), (0, 0), (0, 1)]);
}

#[test]
fn a_permanent_failure_goes_to_the_dead_letter_topic_with_its_headers() {
    let outcome = TestRun::new()
        .failure_policy(FailurePolicy::retry(5).then_dead_letter_to("orders.poison"))
        .process(
            Scripted::default,
            [message(3, "poison")
                .key("k")
                .header("tenant", "acme")
                .timestamp(1_700_000_000_000)],
        );
    let poison = outcome.of(3, 0);
    assert_eq!(poison.attempts, 1, "a permanent failure is not retried");
    let Fate::DeadLettered { topic, headers } = &poison.fate else {
        panic!("{poison:?}");
    };
    assert_eq!(topic, "orders.poison");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("tenant"), Some("acme"));
    assert_eq!(header(dead_letter_headers::ORIGINAL_TOPIC), Some("orders"));
    assert_eq!(header(dead_letter_headers::ORIGINAL_PARTITION), Some("3"));
    assert_eq!(header(dead_letter_headers::ORIGINAL_OFFSET), Some("0"));
    assert_eq!(header(dead_letter_headers::ATTEMPTS), Some("1"));
    assert_eq!(
        header(dead_letter_headers::ORIGINAL_TIMESTAMP),
        Some("1700000000000")
    );
    assert!(
        header(dead_letter_headers::ERROR)
            .unwrap()
            .contains("malformed")
    );
}

#[test]
fn exhausted_attempts_skip_or_request_a_stop_and_a_panic_replaces_the_processor() {
    let skipped = TestRun::new()
        .failure_policy(FailurePolicy::retry(2).then_skip())
        .process(Scripted::default, [message(0, "fail 9"), message(0, "ok")]);
    assert_eq!(skipped.of(0, 0).fate, Fate::Skipped);
    assert_eq!(skipped.of(0, 1).fate, Fate::Processed);

    let stopped = TestRun::new()
        .failure_policy(FailurePolicy::retry(2))
        .process(Scripted::default, [message(0, "fail 9"), message(0, "ok")]);
    assert!(
        stopped
            .stop_requested
            .as_deref()
            .unwrap()
            .contains("orders/0@0"),
        "{stopped:?}"
    );
    assert_eq!(stopped.of(0, 0).fate, Fate::Unfinished);
    assert_eq!(stopped.of(0, 1).fate, Fate::Unfinished);

    let scripted = Scripted::default();
    let panicked = TestRun::new().process(move || scripted.clone(), [message(0, "panic")]);
    assert_eq!(panicked.processor_restarts, 1);
    assert_eq!(panicked.of(0, 0).fate, Fate::Processed);
    assert_eq!(panicked.of(0, 0).attempts, 2);
}

/// Stores batches; a batch holding "poison" fails as a whole, "refuse" fails alone.
#[derive(Default)]
struct Sink;

impl BatchProcessor for Sink {
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        if batch.iter().any(|m| m.payload_str() == Some("poison")) {
            anyhow::bail!("the insert failed");
        }
        let mut failures = BatchFailures::new();
        for (index, message) in batch.iter().enumerate() {
            if message.payload_str() == Some("refuse") {
                failures.fail(index, anyhow::anyhow!("constraint").context(Permanent));
            }
        }
        failures.into_result()
    }
}

#[test]
fn batches_isolate_a_poison_message_and_fail_only_what_they_name() {
    let messages = (0..6).map(|i| {
        let payload = match i {
            2 => "poison",
            4 => "refuse",
            _ => "ok",
        };
        message(0, payload)
    });
    let outcome = TestRun::new()
        .batch_size(10, 1 << 20)
        .failure_policy(FailurePolicy::retry(2).jitter(0.0).then_dead_letter())
        .process_batches(|| Sink, messages.chain([message(1, "ok")]));
    // One batch per partition, then the failed partition's lane from its first message alone.
    assert_eq!(
        outcome.batches[0],
        [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]
    );
    assert_eq!(outcome.batches[1], [(1, 0)]);
    assert_eq!(
        outcome.with_fate(|f| matches!(f, Fate::DeadLettered { .. })),
        [(0, 2), (0, 4)]
    );
    assert_eq!(
        outcome.with_fate(|f| *f == Fate::Processed),
        [(0, 0), (0, 1), (0, 3), (0, 5), (1, 0)]
    );
    // In the batch, then alone twice (the policy's two attempts).
    assert_eq!(outcome.of(0, 2).attempts, 3);
    assert_eq!(
        outcome.of(0, 3).attempts,
        2,
        "an innocent one: in the batch, then alone"
    );
}

#[test]
fn an_integration_run_on_the_embedded_cluster_returns_the_report() {
    let records = (0..300).map(|i| (format!("k{i}"), if i == 7 { "poison" } else { "ok" }));
    let report = testkit::run_embedded_batches(
        "testkit-orders",
        3,
        records,
        |config| {
            config
                .batch_size(50, 1 << 20)
                .failure_policy(FailurePolicy::retry(2).then_dead_letter())
        },
        || Sink,
    )
    .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (report.processed, report.dead_lettered),
        (299, 1),
        "{report}"
    );
}

/// Counts each message's runs, and decides a batch's outcome from its offsets and those counts.
struct Script<F>(Arc<Mutex<std::collections::HashMap<i64, u32>>>, F);

impl<F> BatchProcessor for Script<F>
where
    F: Fn(&[i64], &std::collections::HashMap<i64, u32>) -> anyhow::Result<()> + 'static,
{
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        let offsets: Vec<i64> = batch.iter().map(Message::offset).collect();
        let mut runs = self.0.lock().unwrap();
        for offset in &offsets {
            *runs.entry(*offset).or_default() += 1;
        }
        (self.1)(&offsets, &runs)
    }
}

/// Whether each message's successful run came after those of every earlier message of its
/// key: the batches' runs, read in order, against the fates.
fn key_order_kept(outcome: &testkit::Outcome, keys: &[&str]) -> Result<(), String> {
    let processed: std::collections::BTreeSet<i64> = outcome
        .with_fate(|f| *f == Fate::Processed)
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();
    // The last run of a processed message is its successful one (nothing runs after success).
    let mut last_run = std::collections::HashMap::new();
    for (index, (_, offset)) in outcome.runs.iter().enumerate() {
        last_run.insert(*offset, index);
    }
    for (later, later_key) in keys.iter().enumerate() {
        for (earlier, earlier_key) in keys.iter().enumerate().take(later) {
            let (earlier, later) = (earlier as i64, later as i64);
            if earlier_key == later_key
                && processed.contains(&earlier)
                && processed.contains(&later)
                && last_run[&later] < last_run[&earlier]
            {
                return Err(format!(
                    "offset {later} of key {later_key} succeeded before offset {earlier}: \
                     batches {:?}",
                    outcome.batches
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn per_key_a_batch_never_takes_a_message_past_an_earlier_one_of_its_key_left_behind() {
    // Offsets 0-3 with keys X, X, D, X. Any batch holding offset 0 fails as a whole the
    // first time; offset 2 fails its first attempt alone. Batches must never take offset 3
    // while offset 1, of the same key, waits.
    let keys = ["X", "X", "D", "X"];
    let runs = Arc::default();
    let script = |offsets: &[i64], runs: &std::collections::HashMap<i64, u32>| {
        if offsets.contains(&0) && runs[&0] == 1 {
            anyhow::bail!("the batch with offset 0 fails");
        }
        let mut failures = BatchFailures::new();
        if let Some(index) = offsets.iter().position(|o| *o == 2)
            && runs[&2] == 1
        {
            failures.fail(index, anyhow::anyhow!("offset 2 fails once"));
        }
        failures.into_result()
    };
    let outcome = TestRun::new()
        .ordering(OrderingMode::PerKey)
        .batch_size(2, 1 << 20)
        .failure_policy(FailurePolicy::retry(3).jitter(0.0))
        .process_batches(
            {
                let runs: Arc<Mutex<_>> = Arc::clone(&runs);
                move || Script(runs.clone(), script)
            },
            keys.iter()
                .map(|key| MessageBuilder::new("orders").key(key).payload("x")),
        );
    assert_eq!(
        outcome.with_fate(|f| *f == Fate::Processed).len(),
        4,
        "{outcome:?}"
    );
    key_order_kept(&outcome, &keys).unwrap();
}

#[test]
fn a_batch_failing_as_a_whole_charges_no_attempt_to_a_retried_message_that_did_not_cause_it() {
    // Offsets: 0 key B, 1 key A (m0), 2 key B (q1). The first batch fails all three alone
    // (0 and 1 each charged an attempt; 2 waits behind 0). Offset 0's retry succeeds, which
    // frees 2; offset 1's retry then takes 2 into its batch, and 2 fails any batch it is in as
    // a whole. Offset 1 did not cause that: with two attempts and then a skip, it must still
    // end processed.
    let keys = ["B", "A", "B"];
    let runs = Arc::default();
    let script = |offsets: &[i64], runs: &std::collections::HashMap<i64, u32>| {
        if runs[&offsets[0]] == 1 && offsets.len() == 3 {
            let mut failures = BatchFailures::new();
            for index in 0..3 {
                failures.fail(index, anyhow::anyhow!("refused the first time"));
            }
            return failures.into_result();
        }
        if offsets.contains(&2) {
            anyhow::bail!("offset 2 fails every batch it is in");
        }
        Ok(())
    };
    let outcome = TestRun::new()
        .ordering(OrderingMode::PerKey)
        .batch_size(3, 1 << 20)
        .failure_policy(FailurePolicy::retry(2).jitter(0.0).then_skip())
        .process_batches(
            {
                let runs: Arc<Mutex<_>> = Arc::clone(&runs);
                move || Script(runs.clone(), script)
            },
            keys.iter()
                .map(|key| MessageBuilder::new("orders").key(key).payload("x")),
        );
    assert!(
        outcome.batches.contains(&vec![(0, 1), (0, 2)]),
        "offset 1's retry took offset 2: {:?}",
        outcome.batches
    );
    assert_eq!(outcome.of(0, 1).fate, Fate::Processed, "{outcome:?}");
    assert_eq!(outcome.of(0, 0).fate, Fate::Processed);
    assert_eq!(outcome.of(0, 2).fate, Fate::Skipped);
}

/// The scripts of the differential runs: one partition's payloads, by offset.
fn scripts() -> Vec<(String, String)> {
    let payloads = [
        "ok", "fail 1", "ok", "poison", "ok", "panic", "fail 2", "ok", "fail 5", "ok", "ok",
        "poison", "fail 1", "panic", "ok", "ok",
    ];
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| (format!("key-{}", i % 3), (*payload).to_owned()))
        .collect()
}

/// What became of each offset, as the processor saw it: attempts in order, and the offsets
/// whose last attempt succeeded.
fn seen(attempts: &[(i32, i64)], succeeded: &[(i32, i64)]) -> (Vec<i64>, Vec<i64>) {
    (
        attempts.iter().map(|(_, offset)| *offset).collect(),
        succeeded.iter().map(|(_, offset)| *offset).collect(),
    )
}

/// The offsets of each key, in the order of `offsets`.
fn by_key(offsets: &[i64]) -> std::collections::BTreeMap<i64, Vec<i64>> {
    let mut lanes = std::collections::BTreeMap::new();
    for offset in offsets {
        lanes
            .entry(offset % 3)
            .or_insert_with(Vec::new)
            .push(*offset);
    }
    lanes
}

/// Records which attempts succeeded, beside [`Scripted`]'s record of every attempt.
#[derive(Clone, Default)]
struct Observed {
    scripted: Scripted,
    succeeded: Arc<Mutex<Vec<(i32, i64)>>>,
}

impl Processor for Observed {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.scripted.process(message).await?;
        let at = (message.partition(), message.offset());
        self.succeeded.lock().unwrap().push(at);
        Ok(())
    }
}

impl BatchProcessor for Observed {
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        for (index, message) in batch.iter().enumerate() {
            let attempt = self.scripted.process(message).await;
            // What came before a failure finished: the batch fails from its index.
            let mut succeeded = self.succeeded.lock().unwrap();
            match attempt {
                Ok(()) => succeeded.push((message.partition(), message.offset())),
                Err(error) => return Err(BatchFailures::from_index(index, error).into()),
            }
        }
        Ok(())
    }
}

/// Runs the scripts through `TestRun` and through a real system on the embedded cluster (one
/// partition, one processor, the same policy), and returns what each processor saw:
/// `(attempts, successes)` by offset, and each run's dead-lettered offsets.
fn both_ways(ordering: OrderingMode, batches: bool) -> [(Vec<i64>, Vec<i64>, Vec<i64>); 2] {
    let policy = FailurePolicy::retry(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .jitter(0.0)
        .then_dead_letter();
    let run = TestRun::new()
        .ordering(ordering)
        .batch_size(4, 1 << 20)
        .failure_policy(policy.clone());
    let messages = scripts()
        .into_iter()
        .map(|(key, payload)| MessageBuilder::new("orders").key(key).payload(payload));
    let in_test_run = Observed::default();
    let factory = {
        let observed = in_test_run.clone();
        move || observed.clone()
    };
    let outcome = match batches {
        false => run.process(factory, messages),
        true => run.process_batches(factory, messages),
    };
    let dead_in_test_run = outcome
        .with_fate(|fate| matches!(fate, Fate::DeadLettered { .. }))
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();

    let embedded = Observed::default();
    let factory = {
        let observed = embedded.clone();
        move || observed.clone()
    };
    let configure = |config: kafka_actors::ConsumerConfigBuilder| {
        config
            .processors(1)
            .ordering(ordering)
            .batch_size(4, 1 << 20)
            .batch_linger(Duration::from_millis(50))
            .failure_policy(policy)
    };
    let report = match batches {
        false => testkit::run_embedded("differential", 1, scripts(), configure, factory),
        true => testkit::run_embedded_batches("differential", 1, scripts(), configure, factory),
    }
    .unwrap();
    assert!(report.is_clean(), "{report}");
    let (attempts, succeeded) = seen(
        &embedded.scripted.attempts.lock().unwrap(),
        &embedded.succeeded.lock().unwrap(),
    );
    // Whatever did not succeed went to the dead-letter topic (the report counts them).
    let dead_embedded: Vec<i64> = (0..scripts().len() as i64)
        .filter(|offset| !succeeded.contains(offset))
        .collect();
    assert_eq!(
        report.dead_lettered as usize,
        dead_embedded.len(),
        "{report}"
    );
    let (test_attempts, test_succeeded) = seen(
        &in_test_run.scripted.attempts.lock().unwrap(),
        &in_test_run.succeeded.lock().unwrap(),
    );
    [
        (test_attempts, test_succeeded, dead_in_test_run),
        (attempts, succeeded, dead_embedded),
    ]
}

#[test]
fn a_test_run_and_an_embedded_run_agree_per_partition() {
    let [test_run, embedded] = both_ways(OrderingMode::PerPartition, false);
    // One lane: the very same attempts, in the same order.
    assert_eq!(test_run, embedded);
}

#[test]
fn a_test_run_and_an_embedded_run_agree_per_key() {
    let [test_run, embedded] = both_ways(OrderingMode::PerKey, false);
    // Each key's attempts and successes in the same order; the same dead letters.
    assert_eq!(by_key(&test_run.0), by_key(&embedded.0));
    assert_eq!(by_key(&test_run.1), by_key(&embedded.1));
    assert_eq!(test_run.2, embedded.2);
}

#[test]
fn a_test_run_and_an_embedded_run_agree_on_batches() {
    let [test_run, embedded] = both_ways(OrderingMode::PerPartition, true);
    // Batches fill with what is at hand, which differs: the same fates, and successes in the
    // same (offset) order.
    assert_eq!(test_run.1, embedded.1);
    assert_eq!(test_run.2, embedded.2);
}

/// The testkit as a `#[tokio::test]` calls it: the blocking forms work inside a runtime
/// (they panicked there before: tokio refuses to block on a runtime within one), and the
/// async forms, run on the test's own task, give the same outcomes.
#[tokio::test]
async fn inside_tokio_test_the_blocking_and_the_awaited_runs_agree() {
    let messages = || [message(0, "fail 1"), message(0, "ok"), message(1, "ok")];
    let run = TestRun::new().failure_policy(FailurePolicy::retry(3).jitter(0.0));
    let blocking = run.process(Scripted::default, messages());
    let awaited = run.process_async(Scripted::default, messages()).await;
    assert_eq!(blocking, awaited);
    assert_eq!(awaited.of(0, 0).fate, Fate::Processed);
    assert_eq!(awaited.of(0, 0).attempts, 2);
    assert_eq!(awaited.of(1, 0).fate, Fate::Processed);

    let batches = || [message(0, "ok"), message(0, "ok"), message(1, "ok")];
    let blocking = run.process_batches(Sink::default, batches());
    let awaited = run.process_batches_async(Sink::default, batches()).await;
    assert_eq!(blocking, awaited);
    assert_eq!(awaited.batches, [vec![(0, 0), (0, 1)], vec![(1, 0)]]);
}
