//! Unit and property tests of the `WorkQueue`: arrival order, parked lanes and their
//! retries, and putting back what a batch did not run.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// A message: its lane and its sequence number within all messages pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TestMessage {
    lane: u16,
    id: usize,
}

impl Laned for TestMessage {
    type Lane = u16;
    fn lane(&self) -> u16 {
        self.lane
    }
}

fn message(lane: u16, id: usize) -> TestMessage {
    TestMessage { lane, id }
}

/// Takes a batch of up to `size` messages of the first item's lane.
fn batch(queue: &mut WorkQueue<TestMessage>, now: Instant, size: usize) -> Vec<TestMessage> {
    let Some(first) = queue.next(now) else {
        return Vec::new();
    };
    let lane = first.message.lane;
    let mut batch = vec![first.message];
    let mut room = size - 1;
    queue.take_more(&mut batch, |message| match message.lane {
        _ if room == 0 => Take::Full,
        l if l == lane => {
            room -= 1;
            Take::Yes
        }
        _ => Take::Skip,
    });
    batch
}

#[test]
fn a_batch_takes_its_lanes_messages_in_order_and_leaves_the_others_in_place() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([
        message(1, 0),
        message(2, 1),
        message(1, 2),
        message(2, 3),
        message(1, 4),
    ]);
    let ids = |batch: Vec<TestMessage>| batch.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(batch(&mut queue, now, 10)), [0, 2, 4]);
    assert_eq!(queue.take_started(), 3);
    assert_eq!(ids(batch(&mut queue, now, 10)), [1, 3]);
    assert!(queue.next(now).is_none());
}

#[test]
fn a_batch_stops_when_full() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push((0..6).map(|id| message(1, id)));
    let taken = batch(&mut queue, now, 3);
    assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(queue.next(now).unwrap().message.id, 3);
}

#[test]
fn a_failed_batch_parks_its_first_message_and_queues_the_rest_of_the_lane_behind_it() {
    let start = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(1, 1), message(1, 2)]);
    let taken = batch(&mut queue, start, 10);
    queue.push([message(1, 3)]);
    let retry_at = start + Duration::from_secs(1);
    for failed in taken {
        queue.park(failed, 1, Some(retry_at));
    }
    assert!(queue.next(start).is_none(), "the lane waits for its retry");
    let retry = queue.next(retry_at).unwrap();
    assert_eq!((retry.message.id, retry.failed_attempts), (0, 1));
    queue.finished(&retry.message);
    let rest: Vec<_> = std::iter::from_fn(|| queue.next(retry_at))
        .map(|item| (item.message.id, item.failed_attempts))
        .collect();
    assert_eq!(
        rest,
        [(1, 0), (2, 0), (3, 0)],
        "in order, no attempt counted"
    );
}

#[test]
fn messages_not_run_go_back_ahead_of_later_ones_and_behind_a_parked_lane() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(1, 1), message(2, 2), message(1, 3)]);
    let first = queue.next(now).unwrap().message;
    let second = queue.next(now).unwrap().message;
    let third = queue.next(now).unwrap().message;
    // Lane 2's message failed; lane 1's were not run.
    queue.park(third, 1, None);
    queue.requeue(vec![first, second]);
    let order: Vec<_> = std::iter::from_fn(|| queue.next(now))
        .map(|item| item.message.id)
        .collect();
    assert_eq!(order, [0, 1, 3]);
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(1, 1), message(1, 2)]);
    let head = queue.next(now).unwrap().message;
    let not_run = queue.next(now).unwrap().message;
    queue.park(head, 1, Some(now));
    queue.requeue(vec![not_run]);
    let order: Vec<_> = std::iter::from_fn(|| queue.next(now))
        .map(|item| item.message.id)
        .collect();
    assert_eq!(order, [0], "the lane's retry first, the rest behind it");
}

#[test]
fn a_failed_message_holds_back_its_lane_and_only_its_lane() {
    let start = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(1, 1), message(2, 2)]);
    let first = queue.next(start).unwrap();
    assert_eq!(first.message.id, 0);
    queue.park(first.message, 1, Some(start + Duration::from_secs(1)));
    // Lane 1 waits; lane 2 goes on.
    assert_eq!(queue.next(start).unwrap().message.id, 2);
    assert!(queue.next(start).is_none());
    assert_eq!(queue.next_retry_at(), Some(start + Duration::from_secs(1)));
    // The retry comes due, succeeds, and the lane's next message follows.
    let retry = queue.next(start + Duration::from_secs(1)).unwrap();
    assert_eq!((retry.message.id, retry.failed_attempts), (0, 1));
    queue.finished(&retry.message);
    assert_eq!(queue.next(start).unwrap().message.id, 1);
    assert!(queue.is_empty());
}

#[test]
fn giving_up_a_lane_also_gives_up_its_messages_not_started() {
    let start = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0)]);
    let first = queue.next(start).unwrap();
    queue.park(first.message, 1, Some(start));
    queue.push([message(1, 1), message(2, 2), message(1, 3)]);
    let given_up: Vec<usize> = queue.give_up(|_| true).iter().map(|m| m.id).collect();
    assert_eq!(given_up, [0, 1, 3]);
    assert_eq!(queue.next(start).unwrap().message.id, 2);
    assert!(queue.is_empty());
}

#[test]
fn removing_takes_only_messages_not_started_and_counts_them_started() {
    let start = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(2, 1), message(1, 2)]);
    let first = queue.next(start).unwrap();
    assert_eq!(queue.take_started(), 1);
    queue.finished(&first.message);
    let removed: Vec<usize> = queue.remove(|m| m.lane == 1).iter().map(|m| m.id).collect();
    assert_eq!(removed, [2]);
    assert_eq!(queue.take_started(), 1);
    assert_eq!(queue.next(start).unwrap().message.id, 1);
    assert!(queue.is_empty());
}

#[test]
fn a_lane_parked_for_good_is_never_retried() {
    let start = Instant::now();
    let mut queue = WorkQueue::default();
    queue.push([message(1, 0), message(1, 1)]);
    let first = queue.next(start).unwrap();
    queue.park(first.message, 3, None);
    assert!(queue.next(start + Duration::from_secs(3600)).is_none());
    assert_eq!(queue.next_retry_at(), None);
    assert_eq!(
        queue.locate(|m| m.id == 1),
        Some(Whereabouts::BehindRetry { retry_at: None })
    );
}

/// One step of a processor's life, as the property test drives it.
#[derive(Debug, Clone)]
enum Step {
    /// Messages of these lanes arrive.
    Arrive(Vec<u8>),
    /// The next item runs and ends so.
    Run(Outcome),
    /// Time passes.
    Wait(u64),
    /// A lane's partition is revoked: its parked lane is given up, and later messages of
    /// the partition belong to a new assignment, so to new lanes.
    GiveUp(u8),
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeds,
    /// Fails and is retried after this many milliseconds.
    Retried(u64),
    /// Fails for good and is skipped or dead-lettered: done with.
    Skipped,
    /// Fails for good and the system stops on it: parked for good.
    Stops,
}

fn step() -> impl Strategy<Value = Step> {
    let outcome = prop_oneof![
        6 => Just(Outcome::Succeeds),
        2 => (1u64..50).prop_map(Outcome::Retried),
        1 => Just(Outcome::Skipped),
        1 => Just(Outcome::Stops),
    ];
    prop_oneof![
        3 => prop::collection::vec(0u8..4, 1..6).prop_map(Step::Arrive),
        6 => outcome.prop_map(Step::Run),
        2 => (0u64..60).prop_map(Step::Wait),
        1 => (0u8..4).prop_map(Step::GiveUp),
    ]
}

/// The fate of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Finished,
    GivenUp,
}

proptest! {
    /// For any interleaving of arrivals, successes, failures, retries, give-ups and a final
    /// drain: every message ends exactly once, a lane's messages start in arrival order and
    /// never while an earlier one of the lane is unfinished, and nothing waits forever.
    #[test]
    fn every_message_ends_once_in_lane_order_and_nothing_waits_forever(
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut queue = WorkQueue::default();
        let mut pushed: Vec<TestMessage> = Vec::new();
        let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
        // Lanes are `base + 4 * assignment`: a revocation starts a new assignment.
        let mut assignment = [0u16; 4];
        let end = |id: usize, fate: Fate, fates: &mut BTreeMap<usize, Fate>| {
            let previous = fates.insert(id, fate);
            assert!(previous.is_none(), "message {id} ended twice");
        };
        // Checks that `item` may start: every earlier message of its lane has ended, and
        // none of them was given up (a given-up lane takes its later messages with it).
        let may_start = |item: &TestMessage, pushed: &[TestMessage], fates: &BTreeMap<usize, Fate>| {
            for earlier in pushed.iter().filter(|m| m.lane == item.lane && m.id < item.id) {
                assert_eq!(
                    fates.get(&earlier.id),
                    Some(&Fate::Finished),
                    "message {} started before message {} of its lane finished",
                    item.id,
                    earlier.id
                );
            }
        };
        let mut stopping = false;
        for step in steps {
            match step {
                Step::Arrive(lanes) => {
                    let mut messages = Vec::new();
                    for base in lanes {
                        let lane = u16::from(base) + 4 * assignment[usize::from(base)];
                        let message = message(lane, pushed.len());
                        pushed.push(message);
                        messages.push(message);
                    }
                    queue.push(messages);
                }
                Step::Run(outcome) => {
                    let Some(item) = queue.next(now) else { continue };
                    may_start(&item.message, &pushed, &fates);
                    match outcome {
                        Outcome::Succeeds | Outcome::Skipped => {
                            queue.finished(&item.message);
                            end(item.message.id, Fate::Finished, &mut fates);
                        }
                        Outcome::Retried(after) => queue.park(
                            item.message,
                            item.failed_attempts + 1,
                            Some(now + Duration::from_millis(after)),
                        ),
                        Outcome::Stops => {
                            stopping = true;
                            queue.park(item.message, item.failed_attempts + 1, None);
                        }
                    }
                }
                Step::Wait(millis) => now += Duration::from_millis(millis),
                Step::GiveUp(base) => {
                    let lane = u16::from(base) + 4 * assignment[usize::from(base)];
                    for message in queue.give_up(|l| *l == lane) {
                        end(message.id, Fate::GivenUp, &mut fates);
                    }
                    assignment[usize::from(base)] += 1;
                }
            }
            // Nothing waits forever: every parked lane has a retry time no earlier than
            // the one the processor sleeps until, unless the system stops on it.
            let next_retry = queue.next_retry_at();
            for parked in queue.parked.values() {
                prop_assert!(parked.head.is_some(), "a lane's retry never came back");
                match parked.retry_at {
                    Some(at) => prop_assert!(next_retry.is_some_and(|next| next <= at)),
                    None => prop_assert!(stopping, "a lane is parked without a retry"),
                }
            }
        }
        // The drain: parked lanes are given up, the rest runs (and succeeds).
        for message in queue.give_up(|_| true) {
            end(message.id, Fate::GivenUp, &mut fates);
        }
        while let Some(item) = queue.next(now) {
            may_start(&item.message, &pushed, &fates);
            queue.finished(&item.message);
            end(item.message.id, Fate::Finished, &mut fates);
        }
        prop_assert!(queue.is_empty());
        prop_assert_eq!(queue.take_started(), pushed.len(), "every message left the queue once");
        prop_assert_eq!(fates.len(), pushed.len(), "some message never ended");
        // Given up means given up for the rest of its lane.
        for message in &pushed {
            if fates[&message.id] == Fate::GivenUp {
                for later in pushed.iter().filter(|m| m.lane == message.lane && m.id > message.id) {
                    prop_assert_eq!(
                        fates[&later.id],
                        Fate::GivenUp,
                        "message {} of a given-up lane ran after {} was given up",
                        later.id,
                        message.id
                    );
                }
            }
        }
    }
}
