//! The revocation barrier: how the rebalance callback learns that no processor is still
//! working on a revoked partition and that every completion before that point reached the
//! OffsetTracker, without waiting for the messages queued behind.
//!
//! The callback marks the revoked partitions (processors skip their messages from then on)
//! and raises the barrier's epoch. A processor *passes* the epoch when it is between two
//! messages (having sent its completions to the tracker first) or idle. Once every processor
//! passed, nothing of the revoked partitions is in progress or unreported, and their commit
//! points are final.
//!
//! The memory orderings pair the processor's "busy, then check the revoked mark" with the
//! callback's "mark revoked, then check busy" (sequentially consistent, so that at least one
//! of them sees the other), and each pass with the completions sent before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One processor's position relative to the barrier; on a cache line of its own, since each
/// processor writes its own once per message.
#[repr(align(64))]
#[derive(Debug, Default)]
struct ProcessorPosition {
    busy: AtomicBool,
    passed: AtomicU64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RevocationBarrier {
    epoch: AtomicU64,
    processors: Vec<ProcessorPosition>,
}

impl RevocationBarrier {
    pub(crate) fn new(processors: usize) -> Self {
        RevocationBarrier {
            epoch: AtomicU64::new(0),
            processors: (0..processors)
                .map(|_| ProcessorPosition::default())
                .collect(),
        }
    }

    /// Raises the epoch (after the revoked partitions were marked) and returns it.
    pub(crate) fn raise(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many processors are busy and have not passed `epoch` yet: 0 once the barrier holds.
    pub(crate) fn not_passed(&self, epoch: u64) -> usize {
        self.processors
            .iter()
            .filter(|position| {
                position.busy.load(Ordering::SeqCst)
                    && position.passed.load(Ordering::Acquire) < epoch
            })
            .count()
    }

    /// The current epoch, as a processor checks it between two messages.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// A processor starts a batch: from now on it must pass each raised epoch. Returns the
    /// epoch it starts at.
    pub(crate) fn begin(&self, processor: usize) -> u64 {
        self.processors[processor]
            .busy
            .store(true, Ordering::SeqCst);
        self.epoch.load(Ordering::SeqCst)
    }

    /// A processor passes `epoch`: it is between two messages and sent its completions.
    pub(crate) fn pass(&self, processor: usize, epoch: u64) {
        self.processors[processor]
            .passed
            .store(epoch, Ordering::Release);
    }

    /// A processor ended its batch, having sent its completions: it is idle.
    pub(crate) fn end(&self, processor: usize) {
        self.processors[processor]
            .busy
            .store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_processors_have_passed_any_epoch() {
        let barrier = RevocationBarrier::new(3);
        let epoch = barrier.raise();
        assert_eq!(barrier.not_passed(epoch), 0);
    }

    #[test]
    fn a_busy_processor_holds_the_barrier_until_it_passes_or_ends() {
        let barrier = RevocationBarrier::new(2);
        let started_at = barrier.begin(0);
        assert_eq!(started_at, 0);
        let epoch = barrier.raise();
        assert_eq!(barrier.not_passed(epoch), 1);
        assert_eq!(barrier.not_passed(epoch), 1);
        barrier.pass(0, epoch);
        assert_eq!(barrier.not_passed(epoch), 0);

        let next = barrier.raise();
        assert_eq!(barrier.not_passed(next), 1);
        barrier.end(0);
        assert_eq!(barrier.not_passed(next), 0);
    }
}
