//! What a stopped system reports.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::TopicPartition;

/// Why a system stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// [`StopHandle::stop`](crate::StopHandle::stop) or
    /// [`stop_now`](crate::StopHandle::stop_now) was called.
    Requested,
    /// The process received a signal (`"SIGINT"` or `"SIGTERM"`).
    Signal(&'static str),
    /// A processor failed on a message; that message and the rest of its partition stay
    /// uncommitted and are delivered again on the next start.
    ProcessingFailed {
        /// The message's partition.
        partition: TopicPartition,
        /// The message's offset.
        offset: i64,
        /// The error the processor returned, or the panic message.
        error: String,
    },
    /// The Kafka consumer failed in a way it cannot recover from.
    ConsumerFailed(String),
    /// A message's attempts were used up and its dead-letter produce was not acknowledged; the
    /// message is not committed and is delivered again on the next start.
    DeadLetterFailed {
        /// The message's partition.
        partition: TopicPartition,
        /// The message's offset.
        offset: i64,
        /// Why the dead-letter topic did not take it.
        error: String,
    },
    /// A processor that panicked was replaced, and the new one's `on_start` failed.
    ProcessorRestartFailed {
        /// The processor's index in the pool.
        processor: usize,
        /// The error `on_start` returned.
        error: String,
    },
    /// A part of the framework failed (an actor or a processor task died): a bug of the
    /// framework, never of user code. The system stopped as gracefully as it could; please
    /// report it with the log.
    InternalFailure(String),
    /// The brokers refused an operation the consumer needs (its ACLs do not allow it, or its
    /// credentials were refused): nothing more could be read.
    NotAuthorized {
        /// What was refused, e.g. "READ on group `billing`".
        resource: String,
        /// What the broker or librdkafka reported.
        error: String,
    },
    /// Messages of a partition cannot be read (a batch that cannot be decompressed or is
    /// corrupt). The system stops rather than skip them; they stay uncommitted.
    Unreadable {
        /// The partition.
        partition: TopicPartition,
        /// The offset it could not read at.
        offset: i64,
        /// What librdkafka reported.
        error: String,
    },
    /// A processor's [`on_assigned`](crate::Processor::on_assigned) failed or did not answer
    /// within the `rebalance_drain_timeout`: the partitions' stored positions are unknown, so
    /// they were not read (from the committed offsets they could repeat or skip what the
    /// store holds).
    PartitionHookFailed(String),
    /// A partition was assigned whose topic no [`Route`](crate::Route) reads (a pattern that
    /// librdkafka or the broker matched and the route's did not): it was not read.
    NoRoute(TopicPartition),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Requested => write!(f, "stop requested"),
            StopReason::Signal(signal) => write!(f, "{signal} received"),
            StopReason::ProcessingFailed {
                partition,
                offset,
                error,
            } => write!(f, "processing failed at {partition}@{offset}: {error}"),
            StopReason::ConsumerFailed(error) => write!(f, "consumer failed: {error}"),
            StopReason::DeadLetterFailed {
                partition,
                offset,
                error,
            } => write!(
                f,
                "dead-lettering {partition}@{offset} failed (not committed): {error}"
            ),
            StopReason::ProcessorRestartFailed { processor, error } => write!(
                f,
                "processor {processor} could not be restarted after a panic: {error}"
            ),
            StopReason::InternalFailure(what) => write!(f, "internal failure: {what}"),
            StopReason::PartitionHookFailed(error) => {
                write!(f, "a partition hook failed (nothing read): {error}")
            }
            StopReason::NotAuthorized { resource, error } => {
                write!(f, "not authorized: {resource} ({error})")
            }
            StopReason::NoRoute(partition) => {
                write!(
                    f,
                    "{partition} was assigned and no route reads its topic (not read)"
                )
            }
            StopReason::Unreadable {
                partition,
                offset,
                error,
            } => write!(
                f,
                "cannot read {partition} at offset {offset} (not committed, not skipped): {error}"
            ),
        }
    }
}

/// One step of the shutdown, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Pausing all partitions so that nothing more is dispatched.
    StopFetching,
    /// Finishing what the processors hold (a few messages each); what waited in the fetcher
    /// is left for the next reader.
    Drain,
    /// Running the processors' [`on_stop`](crate::Processor::on_stop) hooks.
    StopProcessors,
    /// Committing the finished offsets, synchronously.
    Commit,
    /// Closing the consumer, which leaves the group.
    Close,
}

impl Phase {
    /// The phase's name, as in its `Debug` form and the metrics' `phase` label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::StopFetching => "StopFetching",
            Phase::Drain => "Drain",
            Phase::StopProcessors => "StopProcessors",
            Phase::Commit => "Commit",
            Phase::Close => "Close",
        }
    }
}

/// How long a shutdown phase took, and whether it completed or ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PhaseReport {
    /// The phase.
    pub phase: Phase,
    /// How long it took.
    pub took: Duration,
    /// Whether it completed (false: it ran out of time or was abandoned, or failed).
    pub completed: bool,
    /// How it completed, when not the usual way: the final commit done by the close's
    /// revocation because the group was rebalancing, or the group left in the background.
    pub note: Option<String>,
}

/// Messages a processor held or ran but did not finish because the drain ran out of time or
/// was abandoned, per partition. They were not committed and are delivered again to the next
/// member that reads the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Abandoned {
    /// The partition.
    pub partition: TopicPartition,
    /// The lowest unfinished offset: the partition's commit point.
    pub first_offset: i64,
    /// How many messages were unfinished.
    pub messages: usize,
}

/// What a system did, returned by [`ConsumerSystem::start`](crate::ConsumerSystem::start) when
/// it has stopped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Why the system stopped.
    pub reason: StopReason,
    /// How many messages were processed successfully.
    pub processed: u64,
    /// How many failed attempts were followed by a retry.
    pub retries: u64,
    /// How many messages were skipped after their attempts were used up.
    pub skipped: u64,
    /// How many messages were produced to the dead-letter topic.
    pub dead_lettered: u64,
    /// How many times a processor was replaced with a fresh one after a panic.
    pub processor_restarts: u64,
    /// The last offset this system committed for each partition it committed for: the next
    /// offset a consumer of the group will read.
    pub committed: BTreeMap<TopicPartition, i64>,
    /// What the drain did not finish (it ran out of time, or a second stop request cut it
    /// short), per partition.
    pub abandoned: Vec<Abandoned>,
    /// Messages fetched but not started when the system stopped (waiting in the fetcher, or
    /// for a retry): not committed, and read again by the next member. Leaving them is what
    /// keeps a stop short; it is not a failure.
    pub released: u64,
    /// The shutdown phases with their durations.
    pub phases: Vec<PhaseReport>,
    /// Errors met during shutdown (a stop hook that failed, a commit that failed). Empty when
    /// the shutdown went cleanly.
    pub errors: Vec<String>,
}

impl ShutdownReport {
    /// True when every phase completed, nothing was abandoned, nothing failed and the system
    /// stopped because it was asked to.
    pub fn is_clean(&self) -> bool {
        matches!(self.reason, StopReason::Requested | StopReason::Signal(_))
            && self.abandoned.is_empty()
            && self.errors.is_empty()
            && self.phases.iter().all(|phase| phase.completed)
    }

    /// The total time of the shutdown phases.
    pub fn shutdown_time(&self) -> Duration {
        self.phases.iter().map(|phase| phase.took).sum()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "stopped: {}", self.reason)?;
        writeln!(f, "processed: {} messages", self.processed)?;
        if self.retries + self.skipped + self.dead_lettered + self.processor_restarts > 0 {
            writeln!(
                f,
                "failures: {} retries, {} skipped, {} dead-lettered, {} processor restarts",
                self.retries, self.skipped, self.dead_lettered, self.processor_restarts
            )?;
        }
        writeln!(f, "committed offsets:")?;
        if self.committed.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (partition, offset) in &self.committed {
            writeln!(f, "  {partition}: {offset}")?;
        }
        if self.released > 0 {
            writeln!(
                f,
                "left for the next reader: {} messages fetched but not started",
                self.released
            )?;
        }
        if self.abandoned.is_empty() {
            writeln!(f, "abandoned: none")?;
        } else {
            writeln!(f, "abandoned (delivered again on restart):")?;
            for abandoned in &self.abandoned {
                writeln!(
                    f,
                    "  {}: {} messages from offset {}",
                    abandoned.partition, abandoned.messages, abandoned.first_offset
                )?;
            }
        }
        writeln!(f, "shutdown phases:")?;
        for phase in &self.phases {
            let status = if phase.completed { "" } else { " (incomplete)" };
            write!(f, "  {:?}: {:?}{status}", phase.phase, phase.took)?;
            match &phase.note {
                Some(note) => writeln!(f, " ({note})")?,
                None => writeln!(f)?,
            }
        }
        for error in &self.errors {
            writeln!(f, "error: {error}")?;
        }
        Ok(())
    }
}
