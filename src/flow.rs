//! Backpressure: how much work may be in flight, and when a partition must pause or may resume.
//!
//! A message is *in flight* from the moment the Fetcher dispatches it until its processor is
//! done with it (finished, skipped, dead-lettered or dropped). The Fetcher adds to the counts
//! when it dispatches; processors release what they are done with, a batch at a time. The
//! Fetcher pauses a partition the moment its count reaches a limit, so **in-flight work never
//! exceeds a limit by more than one message's bytes**: librdkafka drops what it had queued
//! for a partition when it is paused and fetches it again after the resume.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::offsets::{AssignmentId, TopicPartition};

/// How much may be in flight: messages and bytes (keys plus payloads). Used per partition and
/// for the whole system, see
/// [`ConsumerConfigBuilder::max_in_flight`](crate::ConsumerConfigBuilder::max_in_flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightLimit {
    /// The most messages in flight.
    pub messages: usize,
    /// The most bytes of keys and payloads in flight. A single message larger than this is
    /// still dispatched, alone.
    pub bytes: usize,
}

impl InFlightLimit {
    /// Whether `load` has reached the limit: nothing more may be dispatched.
    pub(crate) fn is_reached_by(&self, load: Load) -> bool {
        load.messages >= self.messages || load.bytes >= self.bytes
    }

    /// Whether `load` is at or below the low-water mark, half the limit: a paused partition
    /// may resume. Half, so that a resumed partition has room for a whole fetch before it
    /// pauses again, rather than flapping at the limit.
    pub(crate) fn is_drained_by(&self, load: Load) -> bool {
        load.messages <= self.messages / 2 && load.bytes <= self.bytes / 2
    }
}

/// An amount of in-flight work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl Load {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    pub(crate) fn plus(self, other: Load) -> Load {
        Load {
            messages: self.messages + other.messages,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Work in flight, counted by the Fetcher and released by the processors. On a cache line of
/// its own: the reference count next to it in an [`AssignedPartition`] changes with every
/// message.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl InFlight {
    /// Acquire pairs with the release in [`release`](Self::release): whoever sees a count
    /// drop also sees what the processor did before (its completions sent to the tracker).
    pub(crate) fn load(&self) -> Load {
        Load {
            messages: self.messages.load(Ordering::Acquire),
            bytes: self.bytes.load(Ordering::Acquire),
        }
    }

    pub(crate) fn add(&self, load: Load) {
        self.messages.fetch_add(load.messages, Ordering::Relaxed);
        self.bytes.fetch_add(load.bytes, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, load: Load) {
        self.bytes.fetch_sub(load.bytes, Ordering::Release);
        self.messages.fetch_sub(load.messages, Ordering::Release);
    }
}

/// A partition under one assignment, as the messages fetched under it carry it: its name, its
/// assignment id, what it has in flight, and whether it was revoked.
#[derive(Debug)]
pub(crate) struct AssignedPartition {
    pub(crate) partition: TopicPartition,
    pub(crate) assignment: AssignmentId,
    pub(crate) in_flight: InFlight,
    /// Set once the revocation drain is over: processors skip what is left of the partition,
    /// since nothing of it can be committed any more.
    revoked: AtomicBool,
}

impl AssignedPartition {
    pub(crate) fn new(partition: TopicPartition, assignment: AssignmentId) -> Arc<Self> {
        Arc::new(AssignedPartition {
            partition,
            assignment,
            in_flight: InFlight::default(),
            revoked: AtomicBool::new(false),
        })
    }

    /// Sequentially consistent, paired with the processors' check: see `revocation.rs`.
    pub(crate) fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }
}

/// What a processor is done with but has not released yet: released in one step per batch or
/// report, because an atomic update per message would cost more than a fast processor's work.
pub(crate) struct Releases {
    total: Arc<InFlight>,
    /// Per partition, in the order met; a batch holds few partitions.
    pending: Vec<(Arc<AssignedPartition>, Load)>,
}

impl Releases {
    pub(crate) fn new(total: Arc<InFlight>) -> Self {
        Releases {
            total,
            pending: Vec::new(),
        }
    }

    /// Records that the processor is done with a message of `partition` holding `bytes`.
    pub(crate) fn add(&mut self, partition: &Arc<AssignedPartition>, bytes: usize) {
        match self.pending.last_mut() {
            Some((last, load)) if Arc::ptr_eq(last, partition) => load.add(bytes),
            _ => match self
                .pending
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(p, partition))
            {
                Some((_, load)) => load.add(bytes),
                None => {
                    let mut load = Load::default();
                    load.add(bytes);
                    self.pending.push((partition.clone(), load));
                }
            },
        }
    }

    /// Releases everything recorded so far.
    pub(crate) fn flush(&mut self) {
        let mut total = Load::default();
        for (partition, load) in self.pending.drain(..) {
            partition.in_flight.release(load);
            total = total.plus(load);
        }
        if total.messages > 0 {
            self.total.release(total);
        }
    }
}

impl Drop for Releases {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: InFlightLimit = InFlightLimit {
        messages: 10,
        bytes: 1000,
    };

    fn load(messages: usize, bytes: usize) -> Load {
        Load { messages, bytes }
    }

    #[test]
    fn either_count_reaching_its_limit_reaches_the_limit() {
        assert!(!LIMIT.is_reached_by(load(9, 999)));
        assert!(LIMIT.is_reached_by(load(10, 0)));
        assert!(LIMIT.is_reached_by(load(1, 1000)));
    }

    #[test]
    fn a_partition_resumes_only_when_both_counts_are_at_half() {
        assert!(LIMIT.is_drained_by(load(5, 500)));
        assert!(!LIMIT.is_drained_by(load(6, 0)));
        assert!(!LIMIT.is_drained_by(load(0, 501)));
    }

    #[test]
    fn releases_return_what_was_added_per_partition_and_in_total() {
        let total = Arc::new(InFlight::default());
        let a = AssignedPartition::new(TopicPartition::new("t", 0), AssignmentId(1));
        let b = AssignedPartition::new(TopicPartition::new("t", 1), AssignmentId(2));
        for (partition, bytes) in [(&a, 10), (&a, 20), (&b, 5)] {
            partition.in_flight.add(load(1, bytes));
            total.add(load(1, bytes));
        }
        let mut releases = Releases::new(total.clone());
        releases.add(&a, 10);
        releases.add(&b, 5);
        releases.add(&a, 20);
        assert_eq!(total.load(), load(3, 35), "nothing released before a flush");
        releases.flush();
        assert_eq!(a.in_flight.load(), load(0, 0));
        assert_eq!(b.in_flight.load(), load(0, 0));
        assert_eq!(total.load(), load(0, 0));
    }

    #[test]
    fn dropping_releases_flushes_them() {
        let total = Arc::new(InFlight::default());
        let a = AssignedPartition::new(TopicPartition::new("t", 0), AssignmentId(1));
        a.in_flight.add(load(1, 7));
        total.add(load(1, 7));
        let mut releases = Releases::new(total.clone());
        releases.add(&a, 7);
        drop(releases);
        assert_eq!(total.load(), load(0, 0));
    }
}
