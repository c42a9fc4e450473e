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
//! runtime (see the property test in `lanes/tests.rs`). The processor task is its only user.

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
mod tests;
