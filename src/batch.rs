//! A batch: filled from a processor's work queue, run, and filed back into it.
//!
//! Pure synchronous code, the one place that decides what follows from a batch's outcome: the
//! processor task (`actors/processor/task.rs`) and the testkit's `TestRun` both call it, so a
//! user's `TestRun` test sees what production does. A `Processor` runs batches of one message.
//!
//! Two rules hold, property-tested in every ordering mode (`batch/tests.rs`):
//!
//! - **A batch is a run of its lanes' order.** It starts with the queue's next item and takes,
//!   in arrival order, messages of lanes not parked (of the same partition and assignment in
//!   the ordered modes), never one past an earlier message of its lane that it left behind
//!   (a suspect, or a message of another batch key). So a message's successful run always
//!   comes after those of the earlier messages of its lane, however batches fail, retry and
//!   stop (unless the user's `BatchFailures` names an earlier message failed and a later one
//!   of its lane finished: then the user processed the later one).
//! - **Only the message that failed is charged an attempt.** When a batch of several messages
//!   fails as a whole, which one failed it is unknown: none is charged; each lane's first
//!   message waits for the backoff, the rest of the lane behind it, and every message of the
//!   batch is marked *suspect* and runs alone from then on, so the culprit is found and
//!   charged by itself. Only a lane's first failure in a batch is charged: a later message of
//!   the lane that did not finish waits behind it (or, the first one skipped, goes back to the
//!   queue), charged nothing.
//!
//! Filing happens in batch order; messages that must wait behind an earlier one of their lane
//! go behind it; messages that were not processed go back ahead of everything that arrived
//! later; and lanes that cannot wait for a retry (the system stops, the partition was revoked)
//! are given up last, with everything of them in the queue, so that nothing of a given-up lane
//! runs after it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::failure::{self, Advice, AfterFailure, Exhausted, FailurePolicy};
use crate::flow::BatchLimit;
use crate::lanes::{Item, Laned, Take, WorkQueue};
use crate::processor::{BatchFailures, BatchOutcome};

/// What a batch needs to know of a message besides its lane.
pub(crate) trait Batchable: Laned {
    /// Which messages may share a batch.
    type BatchKey: PartialEq;
    /// Messages with equal keys may share a batch; `None` shares with any.
    fn batch_key(&self) -> Option<Self::BatchKey>;
    /// What counts in a batch's byte limit.
    fn size(&self) -> usize;
    /// It was in a batch that failed as a whole: it runs alone.
    fn is_suspect(&self) -> bool;
    fn suspect(&mut self);
}

/// A batch being filled or run: its messages and the attempts each failed before. Kept
/// between batches to spare allocations.
#[derive(Debug)]
pub(crate) struct Batch<M> {
    pub(crate) messages: Vec<M>,
    pub(crate) failed: Vec<u32>,
    bytes: usize,
}

impl<M> Default for Batch<M> {
    fn default() -> Self {
        Batch {
            messages: Vec::new(),
            failed: Vec::new(),
            bytes: 0,
        }
    }
}

impl<M: Batchable> Batch<M> {
    /// Starts a batch with the queue's next item.
    pub(crate) fn start(&mut self, item: Item<M>) {
        debug_assert!(self.messages.is_empty(), "a batch starts empty");
        self.bytes = item.message.size();
        self.messages.push(item.message);
        self.failed.push(item.failed_attempts);
    }

    /// Takes more messages from `queue` within `limit`. Returns whether the batch is complete:
    /// full (a suspect runs alone: its batch is full at once), or messages it cannot take
    /// wait to run (another partition's, a suspect, one that would pass the byte limit): a
    /// processor runs one batch at a time, so waiting for this one to fill would hold them
    /// up.
    pub(crate) fn fill(&mut self, queue: &mut WorkQueue<M>, limit: BatchLimit) -> bool {
        let Some(first) = self.messages.first() else {
            return true;
        };
        if first.is_suspect() {
            return true;
        }
        let key = first.batch_key();
        let mut others_wait = false;
        if self.messages.len() < limit.messages && self.bytes < limit.bytes {
            let mut room = limit.messages - self.messages.len();
            let bytes = &mut self.bytes;
            queue.take_more(&mut self.messages, |message| {
                if room == 0 || bytes.saturating_add(message.size()) > limit.bytes {
                    others_wait = true;
                    return Take::Full;
                }
                if message.is_suspect() || (key.is_some() && message.batch_key() != key) {
                    others_wait = true;
                    return Take::Skip;
                }
                room -= 1;
                *bytes += message.size();
                Take::Yes
            });
            self.failed.resize(self.messages.len(), 0);
        }
        others_wait || self.messages.len() >= limit.messages || self.bytes >= limit.bytes
    }

    /// Takes out the messages `which` selects, with the attempts they failed before.
    pub(crate) fn remove(&mut self, which: impl Fn(&M) -> bool) -> Vec<M> {
        if !self.messages.iter().any(&which) {
            return Vec::new();
        }
        let mut removed = Vec::new();
        let messages = std::mem::take(&mut self.messages);
        let failed = std::mem::take(&mut self.failed);
        for (message, failed) in messages.into_iter().zip(failed) {
            if which(&message) {
                self.bytes -= message.size();
                removed.push(message);
            } else {
                self.messages.push(message);
                self.failed.push(failed);
            }
        }
        removed
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
}

/// How an attempt at a batch ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended<'a> {
    /// Every message succeeded.
    Finished,
    /// The batch failed as a whole (an error or a panic).
    Failed { error: &'a str, advice: Advice },
    /// Some messages failed, or were not processed; the rest succeeded.
    Partial(&'a BatchFailures),
    /// The processor is broken (it could not be rebuilt): nothing can run.
    Broken,
}

/// A failed message that is tried again later.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry<'a> {
    /// The attempts counted against it.
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) error: &'a str,
    /// Its batch failed as a whole: no attempt was counted, and it runs alone.
    pub(crate) isolating: bool,
}

/// What the filing of a batch tells its caller, message by message.
pub(crate) trait Filing<M> {
    /// It succeeded: finished.
    fn processed(&mut self, message: M);
    /// It waits for a retry (its lane parked).
    fn retrying(&mut self, message: &M, retry: Retry<'_>);
    /// It failed and cannot wait for a retry (`why`): its lane is given up.
    fn not_retried(&mut self, message: &M, attempts: u32, error: &str, why: &'static str);
    /// Its attempts are used up and it is skipped: finished.
    fn skipped(&mut self, message: M, attempts: u32, error: &str);
    /// Its attempts are used up and it goes to the dead-letter topic. Its lane is held until
    /// the caller settles it: [`WorkQueue::finished`] once the topic acknowledged it, else
    /// [`WorkQueue::park`] for good (the system stops on it).
    fn dead_letter(&mut self, message: M, attempts: u32, error: &str);
    /// Its attempts are used up and the system stops on it: it is parked for good.
    fn stopping(&mut self, message: &M, attempts: u32, error: &str);
    /// Given up unfinished on purpose, with its lane: never committed, read again by the next
    /// reader.
    fn released(&mut self, message: M);
}

/// What holds a lane back for the rest of a batch's filing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// An earlier message of the lane is parked (failed, or its dead letter on its way).
    Parked,
    /// An earlier message of the lane was not processed and goes back to the queue.
    PutBack,
}

/// Files each message of `batch` by how its attempt `ended`, under `policy`, at `now`:
/// finished, parked for a retry, put back, given up, dead-lettered or stopped on (see the
/// module documentation). `cannot_wait` says why a failed message cannot wait for a retry, if
/// it cannot. Leaves `batch` empty.
pub(crate) fn file<M: Batchable>(
    queue: &mut WorkQueue<M>,
    batch: &mut Batch<M>,
    ended: Ended<'_>,
    policy: &FailurePolicy,
    now: Instant,
    cannot_wait: impl Fn(&M) -> Option<&'static str>,
    filing: &mut impl Filing<M>,
) {
    let isolating = matches!(ended, Ended::Failed { .. }) && batch.len() > 1;
    let mut blocked: HashMap<M::Lane, Blocked> = HashMap::new();
    let mut put_back = Vec::new();
    let mut give_up = Vec::new();
    batch.bytes = 0;
    let messages = batch.messages.drain(..).zip(batch.failed.drain(..));
    for (index, (mut message, failed)) in messages.enumerate() {
        let outcome = match ended {
            Ended::Finished => BatchOutcome::Finished,
            Ended::Partial(failures) => failures.outcome(index),
            Ended::Failed { .. } | Ended::Broken => BatchOutcome::NotProcessed,
        };
        if isolating {
            message.suspect();
        }
        let lane = message.lane();
        // Behind an earlier message of its lane that did not finish, it waits for that one,
        // charged nothing; unless the batch says it finished (the user processed it).
        if !matches!(outcome, BatchOutcome::Finished) {
            match blocked.get(&lane) {
                Some(Blocked::Parked) => {
                    queue.wait_behind(message);
                    continue;
                }
                Some(Blocked::PutBack) => {
                    put_back.push(message);
                    continue;
                }
                None => {}
            }
        }
        let (error, advice) = match (ended, outcome) {
            (_, BatchOutcome::Finished) => {
                queue.finished(&message);
                filing.processed(message);
                continue;
            }
            (Ended::Broken, _) => {
                queue.park(message, failed, None);
                blocked.insert(lane.clone(), Blocked::Parked);
                give_up.push(lane);
                continue;
            }
            (Ended::Failed { error, advice }, _) => (error.to_owned(), advice),
            (_, BatchOutcome::Failed(error)) => (format!("{error:#}"), failure::advice(error)),
            (_, BatchOutcome::NotProcessed) => {
                blocked.insert(lane, Blocked::PutBack);
                put_back.push(message);
                continue;
            }
        };
        blocked.insert(lane.clone(), Blocked::Parked);
        let (attempts, after) = match isolating {
            // Which message failed the batch is unknown: none is charged.
            true => (
                failed,
                AfterFailure::RetryAfter(policy.isolation_backoff(failed, advice)),
            ),
            false => (failed + 1, policy.after_failure(failed + 1, advice)),
        };
        match after {
            AfterFailure::RetryAfter(backoff) => match cannot_wait(&message) {
                Some(why) => {
                    filing.not_retried(&message, attempts, &error, why);
                    queue.park(message, attempts, None);
                    give_up.push(lane);
                }
                None => {
                    let retry = Retry {
                        attempts,
                        backoff,
                        error: &error,
                        isolating,
                    };
                    filing.retrying(&message, retry);
                    queue.park(message, attempts, Some(now + backoff));
                }
            },
            AfterFailure::GiveUp => match policy.exhausted() {
                Exhausted::Skip => {
                    // Later messages of its lane that the batch failed run again, uncharged.
                    blocked.insert(lane, Blocked::PutBack);
                    queue.finished(&message);
                    filing.skipped(message, attempts, &error);
                }
                Exhausted::DeadLetter { .. } => {
                    queue.hold(&message);
                    filing.dead_letter(message, attempts, &error);
                }
                Exhausted::Stop => {
                    filing.stopping(&message, attempts, &error);
                    queue.park(message, attempts, None);
                }
            },
        }
    }
    queue.requeue(put_back);
    if !give_up.is_empty() {
        for message in queue.give_up(|lane| give_up.contains(lane)) {
            filing.released(message);
        }
    }
}

#[cfg(test)]
mod tests;
