//! The traits users implement: [`Processor`] (one message per call) and [`BatchProcessor`]
//! (a batch per call), with the partition lifecycle hooks both share.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use crate::{Message, TopicPartition};

/// Where to start reading partitions, as a processor stored it: the offset of the next message
/// to process, per partition. Returned by `on_assigned`; see [`Processor::on_assigned`].
pub type StoredPositions = Vec<(TopicPartition, i64)>;

/// User code that processes messages, one at a time.
///
/// The framework creates a pool of processors (see
/// [`ConsumerConfigBuilder::processors`](crate::ConsumerConfigBuilder::processors)), each from
/// the factory given to [`ConsumerSystem::start`](crate::ConsumerSystem::start), and each on an
/// actor of its own. A processor receives the messages routed to it (by partition, by key or
/// in turn, see [`OrderingMode`](crate::OrderingMode)) in offset order per partition, and
/// never runs two calls at once, so it can keep `&mut self` state (a connection, a buffer)
/// without locks.
///
/// The futures need not be `Send`: a processor lives on one thread for its whole life.
///
/// # Guarantees
///
/// - A message's offset is committed only after [`process`](Processor::process) returned `Ok`
///   for it (or the [`FailurePolicy`](crate::FailurePolicy) skipped or dead-lettered it) and
///   for every earlier message of its partition (at-least-once).
/// - After a graceful stop, every message whose `process` returned `Ok` is committed, so a
///   restarted system sees none of them again. After a crash, messages that finished but were
///   not committed yet are delivered again: make processing idempotent where duplicates hurt,
///   or store the offsets with the results (see [`on_assigned`](Processor::on_assigned)).
/// - If `process` returns an error or panics, the [`FailurePolicy`](crate::FailurePolicy)
///   decides: retry after a backoff, then stop the system (the default; the message is
///   delivered again on the next start), skip it, or send it to a dead-letter topic. After a
///   panic the processor is dropped and a fresh one is made with the factory (its `on_start`
///   runs again).
pub trait Processor: 'static {
    /// Whether the framework calls [`on_assigned`](Self::on_assigned) and
    /// [`on_revoked`](Self::on_revoked) (default `false`). A rebalance waits for the hooks of
    /// the processors concerned, each after the message it is running, so they are called only
    /// when asked for.
    const PARTITION_HOOKS: bool = false;

    /// Called once when the processor's actor starts, before it receives any message: open
    /// connections here. An error stops the system from starting.
    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }

    /// Processes one message. Returning `Ok` marks it finished, so its offset may be committed.
    fn process(&mut self, message: &Message) -> impl Future<Output = anyhow::Result<()>>;

    /// Called once on every graceful stop, after the drain and before the final commit: flush
    /// buffers and release connections here. It is bounded by what is left of the shutdown
    /// timeout. An error is logged and reported; it does not change what is committed.
    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }

    /// With [`PARTITION_HOOKS`](Self::PARTITION_HOOKS): called when this member is assigned
    /// `partitions`, before any of their messages is fetched, with the partitions this
    /// processor may receive (per partition: those routed to it; per key and unordered: all).
    ///
    /// Returns the positions the processor stored itself (for example in the same database
    /// transaction as its results): each listed partition is read from there instead of from
    /// the group's committed offset. Where several processors answer for a partition, the
    /// lowest position wins, so that nothing is skipped. Everything below the position counts
    /// as finished: the position is committed to the group as it is (periodically, on
    /// revocation and at the stop) even when nothing more of the partition is taken, so that
    /// the group's committed offset does not stay behind the store. A position past the
    /// partition's end (a store that outlived its topic) makes librdkafka apply
    /// `auto.offset.reset` (by default `earliest`: the partition is read again, and the
    /// commits follow what is read). An error, or no answer within
    /// [`rebalance_drain_timeout`](crate::ConsumerConfigBuilder::rebalance_drain_timeout),
    /// stops the system: reading from the committed offsets instead could skip or repeat what
    /// the store holds.
    fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<StoredPositions>> {
        let _ = partitions;
        async { Ok(Vec::new()) }
    }

    /// With [`PARTITION_HOOKS`](Self::PARTITION_HOOKS): called when `partitions` are revoked
    /// gracefully, after every message of them in flight finished (or was given up) and before
    /// their offsets are committed and the partitions move to another member: flush
    /// per-partition state here. Not called for what a graceful stop leaves (`on_stop` is),
    /// nor when the assignment was lost (the session expired,
    /// the member was fenced): the partitions may belong to another member already, so state
    /// kept for them must be dropped, not flushed (the next `on_assigned` says which partitions
    /// are held). The rebalance waits for it at most the `rebalance_drain_timeout`; an error is
    /// logged.
    fn on_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<()>> {
        let _ = partitions;
        async { Ok(()) }
    }
}

/// User code that processes messages a batch at a time: for sinks where one round trip per
/// message is the bottleneck, or where the offsets are stored in the same transaction as the
/// results. Started with [`ConsumerSystem::start_batch`](crate::ConsumerSystem::start_batch).
///
/// A batch holds messages of one partition in offset order (per partition and per key), or of
/// any partitions (unordered), at most [`batch_size`](crate::ConsumerConfigBuilder::batch_size)
/// messages and bytes; a processor waits at most the
/// [`batch_linger`](crate::ConsumerConfigBuilder::batch_linger) for a batch to fill, and never
/// while a stop or a revocation waits for it.
///
/// # Guarantees
///
/// Those of [`Processor`], per message: a message is finished when its batch returned `Ok`, or
/// when the batch returned [`BatchFailures`] that do not name it. On any other error (or a
/// panic) of a batch of several messages, which one failed it is unknown: no attempt is
/// counted against any; each lane (a partition, per partition; a key, per key) waits for the
/// backoff from its first message, and the batch's messages then run alone, so that the one
/// that failed the batch is found (and retried, skipped or dead-lettered by itself) without
/// failing the others again; batches resume after them. (A batch of one message fails as a
/// message does.) Messages named in `BatchFailures` go through the failure policy, but only
/// the first failure of a lane in a batch counts an attempt (later ones of the lane wait
/// behind it); the rest of the batch is finished, even messages after a failed one in its
/// lane. To keep a partition's order after a failure, name the failed message and every later
/// one of its lane ([`BatchFailures::from_index`]): those after the first wait for its retry
/// without counting a failed attempt.
///
/// A batch never takes a message past an earlier message of its lane that has not finished:
/// a message's successful run comes after those of every earlier message of its lane.
pub trait BatchProcessor: 'static {
    /// As [`Processor::PARTITION_HOOKS`].
    const PARTITION_HOOKS: bool = false;

    /// As [`Processor::on_start`].
    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }

    /// Processes a batch (never empty). `Ok` finishes every message of it; see the trait's
    /// guarantees for errors.
    fn process_batch(&mut self, batch: &[Message]) -> impl Future<Output = anyhow::Result<()>>;

    /// As [`Processor::on_stop`].
    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }

    /// As [`Processor::on_assigned`].
    fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<StoredPositions>> {
        let _ = partitions;
        async { Ok(Vec::new()) }
    }

    /// As [`Processor::on_revoked`].
    fn on_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<()>> {
        let _ = partitions;
        async { Ok(()) }
    }
}

/// The error a [`BatchProcessor`] returns when only some messages of its batch failed: the
/// others are finished. Each failure may be [`Permanent`](crate::Permanent).
///
/// ```
/// # use kafka_actors::{BatchFailures, Message, Permanent};
/// fn check(batch: &[Message]) -> anyhow::Result<()> {
///     let mut failures = BatchFailures::new();
///     for (index, message) in batch.iter().enumerate() {
///         if message.payload().is_none() {
///             failures.fail(index, anyhow::anyhow!("no payload").context(Permanent));
///         }
///     }
///     failures.into_result()
/// }
/// ```
#[derive(Debug, Default)]
pub struct BatchFailures {
    failed: BTreeMap<usize, anyhow::Error>,
    /// The first index of a failed suffix: it and every later message of its lane wait.
    from: Option<usize>,
}

impl BatchFailures {
    /// No failure yet.
    pub fn new() -> Self {
        BatchFailures::default()
    }

    /// The message at `index` of the batch failed with `error`.
    pub fn fail(&mut self, index: usize, error: anyhow::Error) -> &mut Self {
        self.failed.insert(index, error);
        self
    }

    /// The message at `index` failed with `error`, and the messages after it were not
    /// processed: they are handed out again after it, without counting a failed attempt.
    pub fn from_index(index: usize, error: anyhow::Error) -> Self {
        let mut failures = BatchFailures::new();
        failures.fail(index, error);
        failures.from = Some(index);
        failures
    }

    /// `Ok` when nothing failed, else the failures as the batch's error.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.failed.is_empty() && self.from.is_none() {
            Ok(())
        } else {
            Err(self.into())
        }
    }

    /// The highest index named, to catch a processor that names messages its batch does not
    /// hold.
    pub(crate) fn highest_index(&self) -> Option<usize> {
        self.failed.keys().next_back().copied().max(self.from)
    }

    /// Whether the message at `index` failed or was not processed, and its error if it failed.
    pub(crate) fn outcome(&self, index: usize) -> BatchOutcome<'_> {
        match self.failed.get(&index) {
            Some(error) => BatchOutcome::Failed(error),
            None if self.from.is_some_and(|from| index > from) => BatchOutcome::NotProcessed,
            None => BatchOutcome::Finished,
        }
    }
}

/// What became of one message of a batch that returned [`BatchFailures`].
pub(crate) enum BatchOutcome<'a> {
    Finished,
    Failed(&'a anyhow::Error),
    NotProcessed,
}

impl fmt::Display for BatchFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} messages of the batch failed", self.failed.len())?;
        if let Some((index, error)) = self.failed.iter().next() {
            write!(f, ", the first at {index}: {error:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchFailures {}
