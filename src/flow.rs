//! Backpressure: how much work may be in flight, and when a partition must pause or may resume.
//!
//! A message is *in flight* from the moment the Fetcher takes it from librdkafka until the
//! OffsetTracker was told its fate (finished or given up), or it was dropped: while it waits
//! in the Fetcher for a processor, while a processor holds it, runs it or parks it for a retry.
//! The Fetcher adds a round's messages to the counts before it creates them; each message
//! releases itself when it is dropped, so no path can leak a count. The Fetcher pauses a
//! partition the moment its count reaches a limit, so **in-flight work never exceeds a limit
//! by more than one message's bytes**: librdkafka drops what it had queued for a partition
//! when it is paused and fetches it again after the resume.
//!
//! The settings of that flow live here too: [`FlowSettings`] (how the Fetcher makes messages,
//! spreads them and bounds their work), a processor's [`PrefetchLimit`] and a batch's
//! [`BatchLimit`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::control::Controls;
use crate::instruments::PartitionInstruments;
use crate::offsets::{AssignmentId, TopicPartition};
use crate::routing::OrderingMode;

/// How much may be in flight: messages and bytes (keys plus payloads). Used per partition and
/// for the whole system, see
/// [`ConsumerConfigBuilder::max_in_flight`](crate::ConsumerConfigBuilder::max_in_flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlightLimit {
    /// The most messages in flight.
    pub(crate) messages: usize,
    /// The most bytes of keys and payloads in flight. A single message larger than this is
    /// still dispatched, alone.
    pub(crate) bytes: usize,
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

    /// Each count less `other`'s, at least 0.
    pub(crate) fn minus(self, other: Load) -> Load {
        Load {
            messages: self.messages.saturating_sub(other.messages),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }

    /// The larger of each count.
    pub(crate) fn max(self, other: Load) -> Load {
        Load {
            messages: self.messages.max(other.messages),
            bytes: self.bytes.max(other.bytes),
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

    /// Releases what `load` counted: called for each message once, by its `Drop` or, for
    /// many at once, by [`Message::release_in_flight`](crate::message::Message::release_in_flight),
    /// so whatever path a message leaves by (finished, given up, skipped, dropped by a dying
    /// task), its count is returned exactly once.
    pub(crate) fn release(&self, load: Load) {
        self.bytes.fetch_sub(load.bytes, Ordering::Release);
        let before = self.messages.fetch_sub(load.messages, Ordering::Release);
        debug_assert!(
            before >= load.messages,
            "a message was released that was never counted"
        );
    }
}

/// A partition under one assignment, as the messages fetched under it carry it: its name, its
/// assignment id, what it has in flight, and whether it was revoked.
#[derive(Debug)]
pub(crate) struct AssignedPartition {
    pub(crate) partition: TopicPartition,
    pub(crate) assignment: AssignmentId,
    pub(crate) in_flight: InFlight,
    /// Its figures, recorded by whoever handles its messages.
    pub(crate) instruments: PartitionInstruments,
    /// Set when the partition is revoked or lost: processors drop what they hold of it and
    /// have not started, and retry nothing of it.
    fenced: AtomicBool,
    /// Its commit point as the OffsetTracker last computed it (`i64::MIN` before it did): the
    /// Fetcher takes no message [`COMMIT_WINDOW`](crate::offsets::COMMIT_WINDOW) or more past
    /// it. It only grows, so a stale value only pauses the partition early.
    commit_floor: AtomicI64,
    /// The line to the Fetcher, for the partition's controls.
    pub(crate) controls: Controls,
    /// The assignment a rebalance gave this member, which seeks carry on under new
    /// assignments: controls name it, so that they follow the partition through seeks and
    /// end with the membership of it.
    pub(crate) lineage: AssignmentId,
    /// Paused on request (set by the Fetcher's routes): the work it holds waits on purpose, so
    /// it is not a stall.
    paused_on_request: AtomicBool,
}

impl AssignedPartition {
    pub(crate) fn new(
        partition: TopicPartition,
        assignment: AssignmentId,
        instruments: PartitionInstruments,
        controls: Controls,
    ) -> Arc<Self> {
        Arc::new(AssignedPartition {
            partition,
            assignment,
            in_flight: InFlight::default(),
            instruments,
            controls,
            lineage: assignment,
            paused_on_request: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            commit_floor: AtomicI64::new(i64::MIN),
        })
    }

    /// The partition under a new assignment of the same lineage (a seek).
    pub(crate) fn successor(&self, assignment: AssignmentId) -> Arc<Self> {
        Arc::new(AssignedPartition {
            partition: self.partition.clone(),
            assignment,
            in_flight: InFlight::default(),
            instruments: self.instruments.clone(),
            controls: self.controls.clone(),
            lineage: self.lineage,
            paused_on_request: AtomicBool::new(self.is_paused_on_request()),
            fenced: AtomicBool::new(false),
            commit_floor: AtomicI64::new(i64::MIN),
        })
    }

    pub(crate) fn set_paused_on_request(&self, paused: bool) {
        self.paused_on_request.store(paused, Ordering::Relaxed);
    }

    pub(crate) fn is_paused_on_request(&self) -> bool {
        self.paused_on_request.load(Ordering::Relaxed)
    }

    /// The tracker's latest commit point, if it computed one.
    pub(crate) fn commit_floor(&self) -> Option<i64> {
        Some(self.commit_floor.load(Ordering::Relaxed)).filter(|floor| *floor != i64::MIN)
    }

    /// Publishes the tracker's commit point.
    pub(crate) fn set_commit_floor(&self, point: i64) {
        self.commit_floor.fetch_max(point, Ordering::Relaxed);
    }

    pub(crate) fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }
}

/// How the Fetcher makes messages, spreads them and bounds the work in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowSettings {
    pub(crate) ordering: OrderingMode,
    pub(crate) partition_limit: InFlightLimit,
    pub(crate) total_limit: InFlightLimit,
    /// Whether messages carry their headers ([`read_headers`](crate::ConsumerConfigBuilder::read_headers)).
    pub(crate) read_headers: bool,
}

/// How much a processor may hold beyond the message in progress: at most `messages`, and no
/// more than it is measured to finish in `work`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrefetchLimit {
    pub(crate) messages: usize,
    pub(crate) work: Duration,
}

/// How large a batch of a [`BatchProcessor`](crate::BatchProcessor) grows: at most
/// `messages` and `bytes` of keys and payloads (a batch always takes its first message), and
/// it waits at most `linger` for more to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimit {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    pub(crate) linger: Duration,
}

impl BatchLimit {
    /// A `Processor`'s: one message, no waiting.
    pub(crate) const ONE: BatchLimit = BatchLimit {
        messages: 1,
        bytes: usize::MAX,
        linger: Duration::ZERO,
    };
}

/// How many messages a processor may be handed beyond what it has started: its *prefetch*,
/// and what it holds of it. The Fetcher hands out messages within the prefetch and keeps the
/// rest; the processor sets the prefetch from its measured speed, so that what it holds takes
/// little time to finish (a stop or a revocation waits for it). On a cache line of its own:
/// the processor writes it once per message.
#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct Credit {
    /// Handed to the processor and not started yet.
    queued: AtomicUsize,
    prefetch: AtomicUsize,
}

impl Credit {
    pub(crate) fn new(prefetch: usize) -> Self {
        Credit {
            queued: AtomicUsize::new(0),
            prefetch: AtomicUsize::new(prefetch.max(1)),
        }
    }

    /// How many more messages the processor may be handed now.
    pub(crate) fn available(&self) -> usize {
        self.prefetch
            .load(Ordering::Relaxed)
            .saturating_sub(self.queued.load(Ordering::Acquire))
    }

    /// The Fetcher handed `count` messages (before sending them).
    pub(crate) fn handed(&self, count: usize) {
        self.queued.fetch_add(count, Ordering::Relaxed);
    }

    /// The processor started `count` handed messages. Returns whether the Fetcher should be
    /// told that there is room: when what is queued fell to half the prefetch, so that the
    /// next messages arrive before the queue runs dry, or to nothing.
    pub(crate) fn started(&self, count: usize) -> bool {
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(count))
            })
            .unwrap_or_else(|queued| queued);
        let after = before.saturating_sub(count);
        let low_water = self.prefetch.load(Ordering::Relaxed) / 2;
        (before > low_water && after <= low_water) || (before > 0 && after == 0)
    }

    /// The processor measured its speed: sets the prefetch. Returns whether it grew (the
    /// Fetcher may hand out more now).
    pub(crate) fn set_prefetch(&self, prefetch: usize) -> bool {
        let prefetch = prefetch.max(1);
        self.prefetch.swap(prefetch, Ordering::Relaxed) < prefetch
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
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
    fn credit_asks_for_more_at_half_the_prefetch_and_when_empty() {
        let credit = Credit::new(4);
        assert_eq!(credit.available(), 4);
        credit.handed(4);
        assert_eq!(credit.available(), 0);
        assert!(!credit.started(1), "3 left of 4");
        assert!(credit.started(1), "2 left: half");
        assert!(!credit.started(1));
        assert!(credit.started(1), "empty");
        assert_eq!(credit.available(), 4);
        credit.handed(4);
        assert!(credit.started(3), "from 4 to 1 passes half");
        assert_eq!(credit.available(), 3);
        assert!(credit.started(1));
        assert!(credit.set_prefetch(8));
        assert!(!credit.set_prefetch(2));
        assert_eq!(credit.available(), 2);
    }
}
