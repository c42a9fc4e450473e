//! Property tests of filling and filing batches in every ordering mode, against scripted
//! messages: a message's successful run comes after those of every earlier message of its
//! lane.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

/// What a message does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Succeeds,
    /// Fails its first attempts (named failed in its batch, or failing it when alone).
    FailsTimes(u32),
    /// Fails every attempt, marked permanent.
    Permanent,
    /// Fails any batch of several messages it is in, as a whole; alone it fails.
    PoisonsBatches,
}

impl Script {
    fn is_innocent(self) -> bool {
        self == Script::Succeeds
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TestLane {
    Partition(u8, u32),
    Key(u8, u32, u8),
    Message(usize),
}

/// A message of partition `partition` (under its `epoch`-th assignment) with key `key`.
#[derive(Debug)]
struct TestMessage {
    id: usize,
    partition: u8,
    epoch: u32,
    key: u8,
    ordering: crate::OrderingMode,
    suspect: bool,
    size: usize,
}

impl Laned for TestMessage {
    type Lane = TestLane;
    fn lane(&self) -> TestLane {
        match self.ordering {
            crate::OrderingMode::PerPartition => TestLane::Partition(self.partition, self.epoch),
            crate::OrderingMode::PerKey => TestLane::Key(self.partition, self.epoch, self.key),
            _ => TestLane::Message(self.id),
        }
    }
}

impl Batchable for TestMessage {
    type BatchKey = (u8, u32);
    fn batch_key(&self) -> Option<(u8, u32)> {
        match self.ordering {
            crate::OrderingMode::Unordered => None,
            _ => Some((self.partition, self.epoch)),
        }
    }
    fn size(&self) -> usize {
        self.size
    }
    fn is_suspect(&self) -> bool {
        self.suspect
    }
    fn suspect(&mut self) {
        self.suspect = true;
    }
}

/// How each message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Processed,
    Skipped,
    DeadLettered,
    Released,
}

impl Fate {
    fn finished(self) -> bool {
        self != Fate::Released
    }
}

/// The record of a run: fates, attempts charged, and the lane-order check.
#[derive(Default)]
struct Record {
    lanes: HashMap<usize, TestLane>,
    /// Messages in arrival order per lane.
    order: HashMap<TestLane, Vec<usize>>,
    fates: BTreeMap<usize, Fate>,
    charged: HashMap<usize, u32>,
    dead_letters: Vec<usize>,
    stopping: bool,
    /// Pairs the user's batch outcome itself put out of order (none here: the scripts
    /// name every later message of a failed one's lane).
    violations: Vec<String>,
}

impl Record {
    fn end(&mut self, id: usize, fate: Fate) {
        if let Some(earlier) = self.fates.insert(id, fate) {
            self.violations
                .push(format!("message {id} ended twice: {earlier:?}, {fate:?}"));
        }
        if fate == Fate::Processed {
            let lane = self.lanes[&id];
            for earlier in self.order[&lane].iter().take_while(|e| **e != id) {
                if !self.fates.get(earlier).is_some_and(|f| f.finished()) {
                    self.violations.push(format!(
                        "message {id} succeeded before message {earlier} of its lane \
                         finished ({:?})",
                        self.fates.get(earlier)
                    ));
                }
            }
        }
    }

    fn charge(&mut self, id: usize, attempts: u32) {
        let charged = self.charged.entry(id).or_default();
        *charged = (*charged).max(attempts);
    }
}

impl Filing<TestMessage> for Record {
    fn processed(&mut self, message: TestMessage) {
        self.end(message.id, Fate::Processed);
    }
    fn retrying(&mut self, message: &TestMessage, retry: Retry<'_>) {
        self.charge(message.id, retry.attempts);
    }
    fn not_retried(&mut self, message: &TestMessage, attempts: u32, _: &str, _: &str) {
        self.charge(message.id, attempts);
    }
    fn skipped(&mut self, message: TestMessage, attempts: u32, _: &str) {
        self.charge(message.id, attempts);
        self.end(message.id, Fate::Skipped);
    }
    fn dead_letter(&mut self, message: TestMessage, attempts: u32, _: &str) {
        self.charge(message.id, attempts);
        self.dead_letters.push(message.id);
        // Held by the caller until settled: kept aside by the test, by id.
        DEAD_LETTERS.with(|letters| letters.borrow_mut().push(message));
    }
    fn stopping(&mut self, message: &TestMessage, attempts: u32, _: &str) {
        self.charge(message.id, attempts);
        self.stopping = true;
    }
    fn released(&mut self, message: TestMessage) {
        self.end(message.id, Fate::Released);
    }
}

thread_local! {
    static DEAD_LETTERS: std::cell::RefCell<Vec<TestMessage>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

#[derive(Debug, Clone)]
enum Step {
    /// Messages arrive: (partition, key, script).
    Arrive(Vec<(u8, u8, Script)>),
    /// A batch of up to this many runs; its failures are named one by one, or from the
    /// first failed message on (`from_index`).
    Run {
        size: usize,
        from_index: bool,
    },
    Wait(u64),
    /// A partition is revoked: its lanes are given up, and it comes back under a new
    /// assignment.
    Revoke(u8),
}

fn script() -> impl Strategy<Value = Script> {
    prop_oneof![
        8 => Just(Script::Succeeds),
        3 => (1u32..4).prop_map(Script::FailsTimes),
        1 => Just(Script::Permanent),
        1 => Just(Script::PoisonsBatches),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop::collection::vec((0u8..2, 0u8..3, script()), 1..8).prop_map(Step::Arrive),
        6 => (1usize..6, any::<bool>()).prop_map(|(size, from_index)| Step::Run { size, from_index }),
        2 => (0u64..400).prop_map(Step::Wait),
        1 => (0u8..2).prop_map(Step::Revoke),
    ]
}

fn policy() -> impl Strategy<Value = FailurePolicy> {
    (1u32..4, 0u8..3).prop_map(|(attempts, then)| {
        let policy = FailurePolicy::retry(attempts)
            .backoff(Duration::from_millis(10), Duration::from_millis(100));
        match then {
            0 => policy.then_skip(),
            1 => policy.then_dead_letter(),
            _ => policy.then_stop(),
        }
    })
}

/// Runs one batch: how it ends, decided by its messages' scripts and runs.
fn attempt(
    batch: &Batch<TestMessage>,
    scripts: &[Script],
    runs: &mut HashMap<usize, u32>,
    from_index: bool,
) -> Result<(), Option<BatchFailures>> {
    let messages = &batch.messages;
    for message in messages {
        *runs.entry(message.id).or_default() += 1;
    }
    let fails = |message: &TestMessage| match scripts[message.id] {
        Script::Succeeds => false,
        Script::FailsTimes(times) => runs[&message.id] <= times,
        Script::Permanent | Script::PoisonsBatches => true,
    };
    if messages.len() > 1
        && messages
            .iter()
            .any(|m| scripts[m.id] == Script::PoisonsBatches)
    {
        return Err(None);
    }
    if messages.len() == 1 {
        return if fails(&messages[0]) {
            Err(None)
        } else {
            Ok(())
        };
    }
    let Some(first) = messages.iter().position(fails) else {
        return Ok(());
    };
    if from_index {
        return Err(Some(BatchFailures::from_index(
            first,
            anyhow::anyhow!("failed"),
        )));
    }
    // Each failed message is named, and so is every later message of its lane, so that
    // the lane keeps its order.
    let mut failures = BatchFailures::new();
    let mut failed_lanes = HashSet::new();
    for (index, message) in messages.iter().enumerate() {
        if fails(message) || failed_lanes.contains(&message.lane()) {
            failed_lanes.insert(message.lane());
            let error = anyhow::anyhow!("failed");
            let error = match scripts[message.id] {
                Script::Permanent => error.context(crate::Permanent),
                _ => error,
            };
            failures.fail(index, error);
        }
    }
    Err(Some(failures))
}

fn run_in(
    ordering: crate::OrderingMode,
    steps: Vec<Step>,
    policy: FailurePolicy,
) -> Result<(), TestCaseError> {
    DEAD_LETTERS.with(|letters| letters.borrow_mut().clear());
    let start = Instant::now();
    let mut now = start;
    let mut queue: WorkQueue<TestMessage> = WorkQueue::default();
    let mut batch = Batch::default();
    let mut record = Record::default();
    let mut scripts = Vec::new();
    let mut runs = HashMap::new();
    let mut epochs = [0u32; 2];
    let settle = |queue: &mut WorkQueue<TestMessage>, record: &mut Record| {
        // Dead letters are acknowledged: finished.
        for message in DEAD_LETTERS.with(|letters| std::mem::take(&mut *letters.borrow_mut())) {
            queue.finished(&message);
            record.end(message.id, Fate::DeadLettered);
        }
    };
    let mut run = |queue: &mut WorkQueue<TestMessage>,
                   record: &mut Record,
                   scripts: &[Script],
                   now: Instant,
                   size: usize,
                   from_index: bool,
                   draining: bool| {
        let Some(item) = queue.next(now) else {
            return false;
        };
        batch.start(item);
        batch.fill(
            queue,
            BatchLimit {
                messages: size,
                bytes: usize::MAX,
                linger: Duration::ZERO,
            },
        );
        let failures;
        let ended = match attempt(&batch, scripts, &mut runs, from_index) {
            Ok(()) => Ended::Finished,
            Err(None) => Ended::Failed {
                error: "the batch failed",
                advice: Advice::Backoff,
            },
            Err(Some(named)) => {
                failures = named;
                Ended::Partial(&failures)
            }
        };
        let cannot_wait = |_: &TestMessage| draining.then_some("the system is stopping");
        file(queue, &mut batch, ended, &policy, now, cannot_wait, record);
        true
    };
    for step in steps {
        match step {
            Step::Arrive(messages) => {
                let mut arriving = Vec::new();
                for (partition, key, script) in messages {
                    let message = TestMessage {
                        id: scripts.len(),
                        partition,
                        epoch: epochs[usize::from(partition)],
                        key,
                        ordering,
                        suspect: false,
                        size: 1,
                    };
                    scripts.push(script);
                    record.lanes.insert(message.id, message.lane());
                    record
                        .order
                        .entry(message.lane())
                        .or_default()
                        .push(message.id);
                    arriving.push(message);
                }
                queue.push(arriving);
            }
            Step::Run { size, from_index } => {
                run(
                    &mut queue,
                    &mut record,
                    &scripts,
                    now,
                    size,
                    from_index,
                    false,
                );
                settle(&mut queue, &mut record);
            }
            Step::Wait(millis) => now += Duration::from_millis(millis),
            Step::Revoke(partition) => {
                let epoch = epochs[usize::from(partition)];
                let revoked = |lane: &TestLane| match lane {
                    TestLane::Partition(p, e) | TestLane::Key(p, e, _) => {
                        (*p, *e) == (partition, epoch)
                    }
                    TestLane::Message(_) => false,
                };
                for message in queue.give_up(revoked) {
                    record.end(message.id, Fate::Released);
                }
                epochs[usize::from(partition)] += 1;
            }
        }
    }
    // The drain: parked lanes are given up, the rest runs, and failures cannot wait.
    for message in queue.give_up(|_| true) {
        record.end(message.id, Fate::Released);
    }
    while run(&mut queue, &mut record, &scripts, now, 3, false, true) {
        settle(&mut queue, &mut record);
        for message in queue.give_up(|_| true) {
            record.end(message.id, Fate::Released);
        }
    }
    prop_assert!(queue.is_empty());
    prop_assert!(record.violations.is_empty(), "{:?}", record.violations);
    prop_assert_eq!(
        record.fates.len(),
        scripts.len(),
        "every message ended once"
    );
    for (id, script) in scripts.iter().enumerate() {
        if script.is_innocent() {
            prop_assert_eq!(
                record.charged.get(&id).copied().unwrap_or(0),
                0,
                "innocent message {} was charged an attempt",
                id
            );
            prop_assert!(
                matches!(record.fates[&id], Fate::Processed | Fate::Released),
                "innocent message {} ended {:?}",
                id,
                record.fates[&id]
            );
        }
    }
    // Given up means given up for the rest of its lane.
    for (lane, ids) in &record.order {
        if let Some(first) = ids.iter().position(|id| record.fates[id] == Fate::Released) {
            for later in &ids[first..] {
                prop_assert_eq!(
                    record.fates[later],
                    Fate::Released,
                    "lane {:?}: message {} ended after an earlier one was given up",
                    lane,
                    later
                );
            }
        }
    }
    Ok(())
}

proptest! {
    /// For any interleaving of arrivals, batches (any size, failing as a whole, naming
    /// failed messages, or failing from one on), retries, revocations and a final drain,
    /// in every ordering mode: every message ends exactly once, a message succeeds only
    /// after every earlier message of its lane finished, a given-up lane runs nothing
    /// more, and no message that never failed itself is charged an attempt.
    #[test]
    fn batches_keep_lane_order_end_each_message_once_and_charge_only_the_guilty(
        steps in prop::collection::vec(step(), 1..100),
        policy in policy(),
        ordering in prop_oneof![
            Just(crate::OrderingMode::PerPartition),
            Just(crate::OrderingMode::PerKey),
            Just(crate::OrderingMode::Unordered),
        ],
    ) {
        run_in(ordering, steps, policy)?;
    }
}

/// A message of `partition` of `size` bytes, per partition.
fn sized(id: usize, partition: u8, size: usize) -> TestMessage {
    TestMessage {
        id,
        partition,
        epoch: 0,
        key: 0,
        ordering: crate::OrderingMode::PerPartition,
        suspect: false,
        size,
    }
}

/// Fills a batch started with the first of `messages` within 10 messages and 10 bytes;
/// returns whether it is complete and how many it holds.
fn fill_from(messages: Vec<TestMessage>) -> (bool, usize) {
    let mut queue = WorkQueue::default();
    queue.push(messages);
    let mut batch = Batch::default();
    batch.start(queue.next(Instant::now()).expect("a message"));
    let limit = BatchLimit {
        messages: 10,
        bytes: 10,
        linger: Duration::from_secs(60),
    };
    let complete = batch.fill(&mut queue, limit);
    (complete, batch.messages.len())
}

#[test]
fn a_batch_waits_for_more_only_when_nothing_it_cannot_take_waits() {
    assert_eq!(
        fill_from(vec![sized(0, 0, 1), sized(1, 0, 1)]),
        (false, 2),
        "room for more, nothing else waiting: it may linger"
    );
    assert_eq!(
        fill_from(vec![sized(0, 0, 1), sized(1, 1, 1), sized(2, 0, 1)]),
        (true, 2),
        "another partition's message waits: it runs now"
    );
    assert_eq!(
        fill_from(vec![sized(0, 0, 4), sized(1, 0, 4), sized(2, 0, 4)]),
        (true, 2),
        "the next message would pass the byte limit: it runs now, without it"
    );
}
