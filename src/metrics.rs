//! Live figures of a running system, for dashboards and tests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::client_trouble::ClientTrouble;
use crate::flow::Load;
use crate::health::Health;
use crate::instruments::{GroupInstruments, PartitionInstruments};

/// A snapshot of a running system's figures, from
/// [`RunningSystem::metrics`](crate::RunningSystem::metrics). Counters count from the start of
/// the system; the in-flight figures are what was fetched and is not done with yet (waiting in
/// the fetcher for a processor, held or run by one, or finished and not reported yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Messages fetched and not yet done with.
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
    /// Of the messages in flight, those waiting in the fetcher until a processor has room.
    pub waiting_messages: usize,
    /// Partitions paused now: their in-flight work reached a limit, or their next message is
    /// past the commit window (20,000 offsets past the partition's commit point), or a pause
    /// was asked for (`paused_on_request`), or the system stops.
    pub paused_partitions: usize,
    /// How many times a partition was paused (in-flight limits, commit window).
    pub pauses: u64,
    /// Partitions paused now on request: by processing code
    /// ([`PartitionControl`](crate::PartitionControl)) or by the application
    /// ([`RunningSystem::pause`](crate::RunningSystem::pause)). Counted in
    /// `paused_partitions` too.
    pub paused_on_request: usize,
    /// Seeks carried out, asked for by processing code
    /// ([`PartitionControl::seek`](crate::PartitionControl::seek)).
    pub seeks: u64,
    /// How many times partitions were assigned to this member (once per rebalance that gave
    /// it partitions).
    pub assignments: u64,
    /// Partitions assigned to this member now.
    pub assigned_partitions: usize,
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
    /// How many times a partition with work was found not to move for longer than the
    /// [`stall_timeout`](crate::ConsumerConfigBuilder::stall_timeout) (each is logged at
    /// `warn` with what it waits for).
    pub stalls: u64,
    /// Partitions stalled now.
    pub stalled_partitions: usize,
}

/// The counters behind [`Metrics`], shared by the actors, and the same figures through the
/// `metrics` facade: each method updates both.
#[derive(Debug)]
pub(crate) struct SystemMetrics {
    in_flight_messages: AtomicUsize,
    in_flight_bytes: AtomicUsize,
    waiting: AtomicUsize,
    paused_partitions: AtomicUsize,
    paused_on_request: AtomicUsize,
    seeks: AtomicU64,
    peak_messages: AtomicUsize,
    peak_bytes: AtomicUsize,
    peak_partition_messages: AtomicUsize,
    peak_partition_bytes: AtomicUsize,
    pauses: AtomicU64,
    assignments: AtomicU64,
    revocations: AtomicU64,
    lost_assignments: AtomicU64,
    /// Messages done with for good: processed, skipped or dead-lettered.
    finished: AtomicU64,
    retries: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    processor_restarts: AtomicU64,
    stalls: AtomicU64,
    stalled_partitions: AtomicUsize,
    assigned_partitions: AtomicUsize,
    pub(crate) instruments: GroupInstruments,
    pub(crate) health: Health,
    /// What the system's clients report about the cluster: logged sparingly, counted.
    pub(crate) trouble: ClientTrouble,
}

impl SystemMetrics {
    pub(crate) fn new(group: &str) -> Self {
        let instruments = GroupInstruments::new(group);
        SystemMetrics {
            in_flight_messages: AtomicUsize::default(),
            in_flight_bytes: AtomicUsize::default(),
            waiting: AtomicUsize::default(),
            paused_partitions: AtomicUsize::default(),
            paused_on_request: AtomicUsize::default(),
            seeks: AtomicU64::default(),
            peak_messages: AtomicUsize::default(),
            peak_bytes: AtomicUsize::default(),
            peak_partition_messages: AtomicUsize::default(),
            peak_partition_bytes: AtomicUsize::default(),
            pauses: AtomicU64::default(),
            assignments: AtomicU64::default(),
            revocations: AtomicU64::default(),
            lost_assignments: AtomicU64::default(),
            finished: AtomicU64::default(),
            retries: AtomicU64::default(),
            skipped: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            processor_restarts: AtomicU64::default(),
            stalls: AtomicU64::default(),
            stalled_partitions: AtomicUsize::default(),
            assigned_partitions: AtomicUsize::default(),
            trouble: ClientTrouble::new(instruments.clone()),
            instruments,
            health: Health::default(),
        }
    }

    /// The Fetcher's figures after a round: what is in flight, what waits in it, what is paused
    /// (of it, on request).
    pub(crate) fn set_flow(
        &self,
        in_flight: Load,
        waiting: usize,
        paused: usize,
        paused_on_request: usize,
    ) {
        self.in_flight_messages
            .store(in_flight.messages, Ordering::Relaxed);
        self.in_flight_bytes
            .store(in_flight.bytes, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
        self.paused_partitions.store(paused, Ordering::Relaxed);
        self.paused_on_request
            .store(paused_on_request, Ordering::Relaxed);
        let instruments = &self.instruments;
        instruments.in_flight.set(in_flight.messages as f64);
        instruments.bytes_in_flight.set(in_flight.bytes as f64);
        instruments.waiting.set(waiting as f64);
        instruments.paused.set(paused as f64);
        instruments.paused_on_request.set(paused_on_request as f64);
    }

    /// A seek asked for by processing code was carried out.
    pub(crate) fn sought(&self) {
        self.seeks.fetch_add(1, Ordering::Relaxed);
        self.instruments.seeks.increment(1);
    }

    /// Records the most a partition had in flight in a round, and the total after it.
    pub(crate) fn record_peaks(&self, partition: Load, total: Load) {
        self.peak_partition_messages
            .fetch_max(partition.messages, Ordering::Relaxed);
        self.peak_partition_bytes
            .fetch_max(partition.bytes, Ordering::Relaxed);
        self.peak_messages
            .fetch_max(total.messages, Ordering::Relaxed);
        self.peak_bytes.fetch_max(total.bytes, Ordering::Relaxed);
    }

    /// `partitions` were paused because their in-flight work reached a limit.
    pub(crate) fn paused(&self, partitions: usize) {
        self.pauses.fetch_add(partitions as u64, Ordering::Relaxed);
        self.instruments.pauses.increment(partitions as u64);
    }

    /// A rebalance assigned partitions; `now` are assigned in all.
    pub(crate) fn assigned(&self, now: usize) {
        self.assignments.fetch_add(1, Ordering::Relaxed);
        self.instruments.assignments.increment(1);
        self.set_assigned(now);
    }

    /// A rebalance revoked (or took, when `lost`) partitions; `now` are assigned in all.
    pub(crate) fn revoked(&self, lost: bool, now: usize) {
        if lost {
            self.lost_assignments.fetch_add(1, Ordering::Relaxed);
            self.instruments.lost_assignments.increment(1);
        }
        self.revocations.fetch_add(1, Ordering::Relaxed);
        self.instruments.revocations.increment(1);
        self.set_assigned(now);
    }

    fn set_assigned(&self, partitions: usize) {
        self.assigned_partitions
            .store(partitions, Ordering::Relaxed);
        self.instruments.assigned.set(partitions as f64);
    }

    /// Partitions assigned now.
    pub(crate) fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }

    /// Partitions stalled now.
    pub(crate) fn stalled_partitions(&self) -> usize {
        self.stalled_partitions.load(Ordering::Relaxed)
    }

    /// Messages done with for good, as the tracker hears of them.
    pub(crate) fn finished(&self, messages: usize) {
        self.finished.fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self, partition: &PartitionInstruments) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        partition.retries.increment(1);
    }

    pub(crate) fn skipped(&self, partition: &PartitionInstruments) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        partition.skipped.increment(1);
    }

    pub(crate) fn dead_lettered(&self, partition: &PartitionInstruments) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        partition.dead_lettered.increment(1);
    }

    pub(crate) fn processor_restarted(&self) {
        self.processor_restarts.fetch_add(1, Ordering::Relaxed);
        self.instruments.processor_restarts.increment(1);
    }

    /// After a stall check: `new` partitions have just stalled, `now` are stalled in all.
    pub(crate) fn stalls(&self, new: usize, now: usize) {
        self.stalls.fetch_add(new as u64, Ordering::Relaxed);
        self.stalled_partitions.store(now, Ordering::Relaxed);
        self.instruments.stalled.set(now as f64);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let skipped = self.skipped.load(Ordering::Relaxed);
        let dead_lettered = self.dead_lettered.load(Ordering::Relaxed);
        let finished = self.finished.load(Ordering::Relaxed);
        Metrics {
            in_flight_messages: self.in_flight_messages.load(Ordering::Relaxed),
            in_flight_bytes: self.in_flight_bytes.load(Ordering::Relaxed),
            waiting_messages: self.waiting.load(Ordering::Relaxed),
            peak_in_flight_messages: self.peak_messages.load(Ordering::Relaxed),
            peak_in_flight_bytes: self.peak_bytes.load(Ordering::Relaxed),
            peak_partition_in_flight_messages: self.peak_partition_messages.load(Ordering::Relaxed),
            peak_partition_in_flight_bytes: self.peak_partition_bytes.load(Ordering::Relaxed),
            paused_partitions: self.paused_partitions.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            paused_on_request: self.paused_on_request.load(Ordering::Relaxed),
            seeks: self.seeks.load(Ordering::Relaxed),
            assignments: self.assignments.load(Ordering::Relaxed),
            assigned_partitions: self.assigned_partitions.load(Ordering::Relaxed),
            revocations: self.revocations.load(Ordering::Relaxed),
            lost_assignments: self.lost_assignments.load(Ordering::Relaxed),
            // Skipped and dead-lettered messages are finished too (their offsets may be
            // committed), and counted before they are reported finished.
            processed: finished.saturating_sub(skipped + dead_lettered),
            retries: self.retries.load(Ordering::Relaxed),
            skipped,
            dead_lettered,
            processor_restarts: self.processor_restarts.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            stalled_partitions: self.stalled_partitions.load(Ordering::Relaxed),
        }
    }
}
