//! A processor's work queue: the messages handed to it, in arrival order, and the *lanes*
//! parked for a retry.
//!
//! A lane is what must be processed one message after another (`routing::Lane`: a partition,
//! a key within a partition, or a lone message). When a message fails and is to be retried,
//! its lane is parked: the message waits for its retry time and every later message of the
//! lane waits behind it, while other lanes go on. Items come out one at a time: a retry that
//! came due first, else the oldest message whose lane is not parked.
//!
//! Pure synchronous code: time is passed in, so the scheduling is tested without a clock or a
//! runtime (see the property test at the bottom). The processor task is its only user.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Instant;

/// What the work queue needs to know of a message: its lane.
pub(crate) trait Laned {
    /// The lane type: equal lanes must be processed in order.
    type Lane: Clone + Eq + Hash;
    fn lane(&self) -> Self::Lane;
}

/// A message to run now, with the attempts that already failed (0 for a first attempt).
#[derive(Debug)]
pub(crate) struct Item<M> {
    pub(crate) message: M,
    pub(crate) failed_attempts: u32,
}

/// What [`WorkQueue::take_more`] does with a message it comes to.
pub(crate) enum Take {
    /// Into the batch.
    Yes,
    /// Not for this batch: it keeps its place.
    Skip,
    /// The batch is full: nothing more is taken.
    Full,
}

/// A parked lane: its first message failed; the lane's later messages wait behind it.
#[derive(Debug)]
struct Parked<M> {
    /// The failed message and its failed attempts; `None` while it is out of the queue (its
    /// retry runs, or its dead letter is on its way).
    head: Option<(M, u32)>,
    /// When the head is retried; `None` when it is never retried (the system stops on it).
    retry_at: Option<Instant>,
    behind: VecDeque<M>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct WorkQueue<M: Laned> {
    /// Messages of lanes that were parked and are free again, in arrival order: they come
    /// before `ready`, since they arrived earlier.
    unparked: VecDeque<M>,
    /// Messages not started yet, in arrival order. Messages of parked lanes (here and in
    /// `unparked`) are moved behind their lane when they reach the front.
    ready: VecDeque<M>,
    parked: HashMap<M::Lane, Parked<M>>,
    /// Retry times, earliest first. An entry is stale (and skipped) once its lane was given
    /// up or rescheduled; `sequence` keeps equal times apart without comparing lanes.
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    retry_lanes: HashMap<u64, M::Lane>,
    sequence: u64,
    /// Messages that left `ready` for the first time (to run, to wait behind their lane, or
    /// given up) since [`take_started`](WorkQueue::take_started) was last called.
    started: usize,
}

impl<M: Laned> Default for WorkQueue<M> {
    fn default() -> Self {
        WorkQueue {
            unparked: VecDeque::new(),
            ready: VecDeque::new(),
            parked: HashMap::new(),
            retries: BinaryHeap::new(),
            retry_lanes: HashMap::new(),
            sequence: 0,
            started: 0,
        }
    }
}

impl<M: Laned> WorkQueue<M> {
    /// Adds messages that arrived, in order.
    pub(crate) fn push(&mut self, messages: impl IntoIterator<Item = M>) {
        self.ready.extend(messages);
    }

    /// The next item to run at `now`: a retry that came due, else the oldest message whose
    /// lane is not parked. `None` when nothing can run before [`next_retry_at`](Self::next_retry_at).
    pub(crate) fn next(&mut self, now: Instant) -> Option<Item<M>> {
        if let Some(item) = self.due_retry(now) {
            return Some(item);
        }
        loop {
            let message = match self.unparked.pop_front() {
                Some(message) => message,
                None => {
                    let message = self.ready.pop_front()?;
                    self.started += 1;
                    message
                }
            };
            if !self.parked.is_empty()
                && let Some(parked) = self.parked.get_mut(&message.lane())
            {
                parked.behind.push_back(message);
                continue;
            }
            return Some(Item {
                message,
                failed_attempts: 0,
            });
        }
    }

    fn due_retry(&mut self, now: Instant) -> Option<Item<M>> {
        while let Some(Reverse((at, sequence))) = self.retries.peek().copied() {
            if at > now {
                return None;
            }
            self.retries.pop();
            let Some(lane) = self.retry_lanes.remove(&sequence) else {
                continue;
            };
            let Some(parked) = self.parked.get_mut(&lane) else {
                continue;
            };
            if parked.retry_at != Some(at) {
                continue;
            }
            parked.retry_at = None;
            if let Some((message, failed_attempts)) = parked.head.take() {
                return Some(Item {
                    message,
                    failed_attempts,
                });
            }
        }
        None
    }

    /// The earliest time a parked lane is retried, if any is.
    pub(crate) fn next_retry_at(&mut self) -> Option<Instant> {
        // Drop stale entries so that the answer is a real retry.
        while let Some(Reverse((at, sequence))) = self.retries.peek().copied() {
            let live = self
                .retry_lanes
                .get(&sequence)
                .and_then(|lane| self.parked.get(lane))
                .is_some_and(|parked| parked.retry_at == Some(at) && parked.head.is_some());
            if live {
                return Some(at);
            }
            self.retries.pop();
            self.retry_lanes.remove(&sequence);
        }
        None
    }

    /// The item's message is done with for good (it succeeded, or was skipped or
    /// dead-lettered): its lane, if parked, is free again and the messages behind it come
    /// next, before anything that arrived later.
    pub(crate) fn finished(&mut self, message: &M) {
        let lane = message.lane();
        if self
            .parked
            .get(&lane)
            .is_some_and(|parked| parked.head.is_none())
            && let Some(parked) = self.parked.remove(&lane)
        {
            for message in parked.behind.into_iter().rev() {
                self.unparked.push_front(message);
            }
        }
    }

    /// Takes more messages to run with one already taken (a batch): in arrival order, those
    /// of lanes not parked that `choose` takes, until it says the batch is full. The others
    /// keep their places, and so does every later message of a lane one was left of: **a
    /// batch never takes a message past an earlier one of its lane left behind**.
    pub(crate) fn take_more(&mut self, into: &mut Vec<M>, mut choose: impl FnMut(&M) -> Take) {
        let parked = &self.parked;
        let mut left_behind: HashSet<M::Lane> = HashSet::new();
        let mut full = false;
        for (queue, counted) in [(&mut self.unparked, false), (&mut self.ready, true)] {
            if full {
                break;
            }
            let mut kept = VecDeque::with_capacity(queue.len());
            while let Some(message) = queue.pop_front() {
                let held_back = (!parked.is_empty() || !left_behind.is_empty()) && {
                    let lane = message.lane();
                    parked.contains_key(&lane) || left_behind.contains(&lane)
                };
                if held_back {
                    kept.push_back(message);
                    continue;
                }
                match choose(&message) {
                    Take::Yes => {
                        self.started += usize::from(counted);
                        into.push(message);
                    }
                    Take::Skip => {
                        left_behind.insert(message.lane());
                        kept.push_back(message);
                    }
                    Take::Full => {
                        kept.push_back(message);
                        full = true;
                        break;
                    }
                }
            }
            kept.extend(queue.drain(..));
            *queue = kept;
        }
    }

    /// Puts back messages that were taken and not run (a batch that stopped before them), in
    /// order, ahead of everything that arrived after them: behind their lane's failed message
    /// if it is parked.
    pub(crate) fn requeue(&mut self, messages: Vec<M>) {
        let mut front = Vec::new();
        for message in messages {
            match self.parked.get_mut(&message.lane()) {
                Some(parked) => parked.behind.push_back(message),
                None => front.push(message),
            }
        }
        for message in front.into_iter().rev() {
            self.unparked.push_front(message);
        }
    }

    /// Puts a message that ran behind its lane's parked message (which failed, or whose dead
    /// letter is on its way, earlier in the same batch): it waits for that one, without an
    /// attempt of its own counted.
    pub(crate) fn wait_behind(&mut self, message: M) {
        match self.parked.get_mut(&message.lane()) {
            Some(parked) => parked.behind.push_back(message),
            None => self.requeue(vec![message]),
        }
    }

    /// Holds a message's lane while the message is out of the queue (its dead letter is on
    /// its way): later messages of the lane wait behind it until it is
    /// [`finished`](Self::finished), or [`park`](Self::park)ed again.
    pub(crate) fn hold(&mut self, message: &M) {
        self.parked.entry(message.lane()).or_insert_with(|| Parked {
            head: None,
            retry_at: None,
            behind: VecDeque::new(),
        });
    }

    /// The item's message failed its `failed_attempts`-th attempt and waits: its lane is
    /// parked until `retry_at`, or for good when `retry_at` is `None`. When an earlier message
    /// of the lane failed already (in the same batch), it waits behind that one instead.
    pub(crate) fn park(&mut self, message: M, failed_attempts: u32, retry_at: Option<Instant>) {
        let lane = message.lane();
        let parked = match self.parked.entry(lane.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Parked {
                head: None,
                retry_at: None,
                behind: VecDeque::new(),
            }),
        };
        if parked.head.is_some() {
            // A later message of a lane whose earlier message of the same batch failed: it
            // waits behind that one, without an attempt of its own counted.
            parked.behind.push_back(message);
            return;
        }
        parked.head = Some((message, failed_attempts));
        parked.retry_at = retry_at;
        if let Some(at) = retry_at {
            self.sequence += 1;
            self.retries.push(Reverse((at, self.sequence)));
            self.retry_lanes.insert(self.sequence, lane);
        }
    }

    /// Gives up the parked lanes `which` selects: their messages, and the messages of those
    /// lanes not started yet, are returned in order and will not run. A lane whose retry is
    /// running is given up too; that message's outcome is the caller's.
    pub(crate) fn give_up(&mut self, which: impl Fn(&M::Lane) -> bool) -> Vec<M> {
        let lanes: HashSet<M::Lane> = self.parked.keys().filter(|l| which(l)).cloned().collect();
        if lanes.is_empty() {
            return Vec::new();
        }
        let mut given_up = Vec::new();
        for lane in &lanes {
            if let Some(parked) = self.parked.remove(lane) {
                given_up.extend(parked.head.map(|(message, _)| message));
                given_up.extend(parked.behind);
            }
        }
        let (unparked, returned) = take_lanes(std::mem::take(&mut self.unparked), &lanes);
        self.unparked = unparked;
        given_up.extend(returned);
        let (ready, fresh) = take_lanes(std::mem::take(&mut self.ready), &lanes);
        self.ready = ready;
        self.started += fresh.len();
        given_up.extend(fresh);
        given_up
    }

    /// Removes the messages `which` selects that are not started and not behind a parked
    /// lane (give those up with [`give_up`](Self::give_up)). Returns them in order.
    pub(crate) fn remove(&mut self, which: impl Fn(&M) -> bool) -> Vec<M> {
        let mut removed = Vec::new();
        for (queue, counted) in [(&mut self.unparked, false), (&mut self.ready, true)] {
            let mut kept = VecDeque::with_capacity(queue.len());
            for message in queue.drain(..) {
                if which(&message) {
                    self.started += usize::from(counted);
                    removed.push(message);
                } else {
                    kept.push_back(message);
                }
            }
            *queue = kept;
        }
        removed
    }

    /// Takes every message out: not started, parked, and waiting behind a parked one.
    pub(crate) fn take_all(&mut self) -> Vec<M> {
        self.started += self.ready.len();
        let mut all: Vec<M> = self.unparked.drain(..).collect();
        all.extend(self.ready.drain(..));
        for (_, parked) in self.parked.drain() {
            all.extend(parked.head.map(|(message, _)| message));
            all.extend(parked.behind);
        }
        self.retries.clear();
        self.retry_lanes.clear();
        all
    }

    /// How many messages left the ready queue since the last call: the processor's credit
    /// counts messages handed to it and not started.
    pub(crate) fn take_started(&mut self) -> usize {
        std::mem::take(&mut self.started)
    }

    /// Whether any lane is parked.
    pub(crate) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Whether nothing is queued or parked.
    pub(crate) fn is_empty(&self) -> bool {
        self.unparked.is_empty() && self.ready.is_empty() && self.parked.is_empty()
    }

    /// Where a message is: not started (with how many are ahead of it), or parked.
    pub(crate) fn locate(&self, is_it: impl Fn(&M) -> bool) -> Option<Whereabouts> {
        if let Some(ahead) = self.unparked.iter().chain(&self.ready).position(&is_it) {
            return Some(Whereabouts::Queued { ahead });
        }
        self.parked.values().find_map(|parked| {
            if parked.head.as_ref().is_some_and(|(m, _)| is_it(m)) {
                Some(Whereabouts::WaitingForRetry {
                    retry_at: parked.retry_at,
                })
            } else if parked.behind.iter().any(&is_it) {
                Some(Whereabouts::BehindRetry {
                    retry_at: parked.retry_at,
                })
            } else {
                None
            }
        })
    }
}

/// Splits `queue` into the messages not of `lanes` (kept, in order) and those of `lanes`.
fn take_lanes<M: Laned>(queue: VecDeque<M>, lanes: &HashSet<M::Lane>) -> (VecDeque<M>, Vec<M>) {
    let mut kept = VecDeque::with_capacity(queue.len());
    let mut taken = Vec::new();
    for message in queue {
        if lanes.contains(&message.lane()) {
            taken.push(message);
        } else {
            kept.push_back(message);
        }
    }
    (kept, taken)
}

/// Where a message waits in a work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whereabouts {
    /// Not started; `ahead` messages come before it.
    Queued { ahead: usize },
    /// It failed and waits for its retry (`None`: it is never retried).
    WaitingForRetry { retry_at: Option<Instant> },
    /// An earlier message of its lane waits for a retry.
    BehindRetry { retry_at: Option<Instant> },
}

#[cfg(test)]
mod tests {
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
}
