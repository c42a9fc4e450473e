//! Live figures of a running system, for dashboards and tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::flow::{InFlight, Load};

/// A snapshot of a running system's figures, from
/// [`RunningSystem::metrics`](crate::RunningSystem::metrics). Counters count from the start of
/// the system; the in-flight figures are what is dispatched to processors and not yet done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Messages dispatched to processors and not yet done with.
    pub in_flight_messages: usize,
    /// Bytes (keys plus payloads) of the messages in flight.
    pub in_flight_bytes: usize,
    /// The most messages that were in flight at once.
    pub peak_in_flight_messages: usize,
    /// The most bytes that were in flight at once.
    pub peak_in_flight_bytes: usize,
    /// The most messages one partition had in flight at once.
    pub peak_partition_in_flight_messages: usize,
    /// The most bytes one partition had in flight at once.
    pub peak_partition_in_flight_bytes: usize,
    /// Partitions paused now because their in-flight work reached a limit.
    pub paused_partitions: usize,
    /// How many times a partition was paused because its in-flight work reached a limit.
    pub pauses: u64,
    /// How many times partitions were assigned to this member (once per rebalance that gave
    /// it partitions).
    pub assignments: u64,
    /// How many times partitions were revoked from this member.
    pub revocations: u64,
    /// How many of those revocations were losses (the session expired or the coordinator
    /// fenced this member): nothing was committed for those partitions.
    pub lost_assignments: u64,
    /// Messages processed successfully.
    pub processed: u64,
    /// Failed attempts followed by a retry.
    pub retries: u64,
    /// Messages skipped after their attempts were used up.
    pub skipped: u64,
    /// Messages produced to the dead-letter topic.
    pub dead_lettered: u64,
    /// Processors replaced with a fresh instance after a panic.
    pub processor_restarts: u64,
}

/// The counters behind [`Metrics`], shared by the actors.
#[derive(Debug, Default)]
pub(crate) struct SystemMetrics {
    pub(crate) in_flight: Arc<InFlight>,
    peak_messages: AtomicUsize,
    peak_bytes: AtomicUsize,
    peak_partition_messages: AtomicUsize,
    peak_partition_bytes: AtomicUsize,
    pub(crate) paused_partitions: AtomicUsize,
    pub(crate) pauses: AtomicU64,
    pub(crate) assignments: AtomicU64,
    pub(crate) revocations: AtomicU64,
    pub(crate) lost_assignments: AtomicU64,
    /// Messages done with for good: processed, skipped or dead-lettered.
    pub(crate) finished: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) processor_restarts: AtomicU64,
}

impl SystemMetrics {
    /// Records a partition's load and the total load just after a dispatch.
    pub(crate) fn record_peaks(&self, partition: Load, total: Load) {
        self.peak_partition_messages
            .fetch_max(partition.messages, Ordering::Relaxed);
        self.peak_partition_bytes
            .fetch_max(partition.bytes, Ordering::Relaxed);
        self.peak_messages
            .fetch_max(total.messages, Ordering::Relaxed);
        self.peak_bytes.fetch_max(total.bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let in_flight = self.in_flight.load();
        let skipped = self.skipped.load(Ordering::Relaxed);
        let dead_lettered = self.dead_lettered.load(Ordering::Relaxed);
        let finished = self.finished.load(Ordering::Relaxed);
        Metrics {
            in_flight_messages: in_flight.messages,
            in_flight_bytes: in_flight.bytes,
            peak_in_flight_messages: self.peak_messages.load(Ordering::Relaxed),
            peak_in_flight_bytes: self.peak_bytes.load(Ordering::Relaxed),
            peak_partition_in_flight_messages: self.peak_partition_messages.load(Ordering::Relaxed),
            peak_partition_in_flight_bytes: self.peak_partition_bytes.load(Ordering::Relaxed),
            paused_partitions: self.paused_partitions.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            assignments: self.assignments.load(Ordering::Relaxed),
            revocations: self.revocations.load(Ordering::Relaxed),
            lost_assignments: self.lost_assignments.load(Ordering::Relaxed),
            // Skipped and dead-lettered messages are finished too (their offsets may be
            // committed), and counted before they are reported finished.
            processed: finished.saturating_sub(skipped + dead_lettered),
            retries: self.retries.load(Ordering::Relaxed),
            skipped,
            dead_lettered,
            processor_restarts: self.processor_restarts.load(Ordering::Relaxed),
        }
    }
}
