//! The messages between the actors: the protocol of the system, readable in one place.
//!
//! The actors address each other through what this module defines, never through each
//! other's types: the Fetcher and the processors reach the OffsetTracker through a
//! [`TrackerInbox`] (or the one recipient they need of it), the tracker reaches the Fetcher
//! through a [`FetcherInbox`], and everyone reaches a processor task through its
//! [`ProcessorHandle`]. The handlers stay with their actors; only the Supervisor, which wires
//! the system, holds the actors' addresses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::flow::{AssignedPartition, Credit};
use crate::message::Message;
use crate::native::CommitFailure;
use crate::offsets::{AssignmentId, CommitPoint, Position, Start, TopicPartition};
use crate::processor::StoredPositions;
use crate::report::Abandoned;
use crate::stall::Sighting;

/// The target of the lines a [`ProcessorHandle`] logs: the processors' own.
const PROCESSOR_LOG_TARGET: &str = "kafka_actors::actors::processor";

/// The OffsetTracker as the Fetcher addresses it. The processors and the
/// [`CommitLine`](crate::commits::CommitLine) hold only the recipient they need of it.
#[derive(Clone)]
pub(crate) struct TrackerInbox {
    pub(crate) assigned: Recipient<Assigned>,
    pub(crate) revoked: Recipient<Revoked>,
    pub(crate) fetched: Recipient<Fetched>,
    pub(crate) completions: Recipient<Completions>,
    pub(crate) commit_points_of: Recipient<CommitPointsOf>,
    pub(crate) committed: Recipient<Committed>,
}

/// The Fetcher as the OffsetTracker addresses it: it commits, reads the high watermarks, and
/// says where a message waits.
#[derive(Clone)]
pub(crate) struct FetcherInbox {
    pub(crate) commit: Recipient<Commit>,
    pub(crate) high_watermarks: Recipient<HighWatermarks>,
    pub(crate) locate: Recipient<Locate>,
}

// To the OffsetTracker.

/// The actors the tracker sends to: the Fetcher commits, and both say where a message is.
pub(crate) struct Others {
    pub(crate) fetcher: FetcherInbox,
    pub(crate) processors: Vec<ProcessorHandle>,
}

/// The Fetcher and the processors, once they run.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach(pub(crate) Others);

/// Partitions newly assigned to this member, each under a new assignment id, with where it
/// starts: at the group's committed offset (with the offsets beyond it that the previous reader
/// finished), or at a position a processor stored. A stored position is committed even if
/// nothing more is taken: otherwise the group's committed offset would stay behind it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Assigned(pub(crate) Vec<(Arc<AssignedPartition>, Start)>);

/// Partitions this member no longer holds. Their unfinished messages are fenced: whatever
/// finishes later is never committed by this member.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Revoked(pub(crate) Vec<TopicPartition>);

/// Messages the Fetcher took from librdkafka, in offset order per partition, and those of
/// them that a previous reader finished (skipped, so finished at once). Sent before the
/// Fetcher hands any of them to a processor, so a completion never arrives before its message.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Fetched {
    pub(crate) positions: Vec<Position>,
    pub(crate) finished_earlier: Vec<Position>,
}

/// What processors (or the Fetcher, at a stop) are done with: messages that finished
/// (succeeded, skipped or dead-lettered), and messages given up unfinished on purpose
/// (released: not committed, read again by the next reader).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Completions {
    pub(crate) finished: Vec<Position>,
    pub(crate) released: Vec<Position>,
}

/// Asks for the commit points of partitions being revoked. Sent from inside the rebalance
/// callback, where the Fetcher's thread waits for the answer on `reply`: the tracker never
/// needs that thread to answer.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CommitPointsOf {
    pub(crate) assignments: Vec<AssignmentId>,
    pub(crate) reply: std::sync::mpsc::Sender<Vec<CommitPoint>>,
}

/// Commit points Kafka acknowledged: of periodic commits, and of revocations.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Committed(pub(crate) Vec<CommitPoint>);

/// Commits every commit point now, synchronously, waiting at most `timeout` for Kafka: the
/// final commit of a shutdown.
#[derive(Message)]
#[rtype(result = "Result<(), FinalCommitFailure>")]
pub(crate) struct CommitNow {
    pub(crate) timeout: Duration,
}

/// Why a final commit did not complete.
#[derive(Debug)]
pub(crate) enum FinalCommitFailure {
    /// The group kept refusing it while it rebalanced, or did not answer in time (behind a
    /// rebalance, the coordinator holds a member's requests): the close's revocation may
    /// commit the same offsets ([`Unsettled`] tells).
    Rebalancing,
    Other(String),
}

impl std::fmt::Display for FinalCommitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinalCommitFailure::Rebalancing => f.write_str(
                "refused or unanswered while the group rebalanced, and the close's revocation \
                 did not commit it either: the next owner repeats what finished since the last \
                 commit",
            ),
            FinalCommitFailure::Other(error) => f.write_str(error),
        }
    }
}

/// What of the final commit is still uncommitted (empty when it completed, or when a later
/// commit, the close's revocation, covered what it left).
#[derive(Message)]
#[rtype(result = "Vec<CommitPoint>")]
pub(crate) struct Unsettled;

/// What the tracker knows, for the shutdown report.
#[derive(Debug)]
pub(crate) struct TrackerReport {
    pub(crate) committed: BTreeMap<TopicPartition, i64>,
    pub(crate) abandoned: Vec<Abandoned>,
    /// Messages given up unfinished on purpose, left for the next reader.
    pub(crate) released: u64,
}

#[derive(Message)]
#[rtype(result = "TrackerReport")]
pub(crate) struct Report;

// To the Fetcher.

/// How a commit is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitMode {
    /// Sent without waiting; the result reaches the tracker as `Committed` when it comes.
    Periodic,
    /// Synchronous, waiting at most this long: the final commit of a shutdown.
    Final(Duration),
}

/// Commits the given commit points for the partitions still held under the same assignment
/// (the others are fenced). Returns the commit points sent (periodic) or committed (final).
#[derive(Message)]
#[rtype(result = "Result<Vec<CommitPoint>, CommitFailure>")]
pub(crate) struct Commit {
    pub(crate) points: Vec<CommitPoint>,
    pub(crate) mode: CommitMode,
}

/// Stops taking messages: pauses every partition, drops the backlogs (nothing of them was
/// started: released, for the next reader), and keeps serving the group's events.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopFetching;

/// Where a message waits, if it waits in a backlog.
#[derive(Message)]
#[rtype(result = "Option<Sighting>")]
pub(crate) struct Locate(pub(crate) Position);

/// The high watermarks librdkafka last heard of, of the partitions held.
#[derive(Message)]
#[rtype(result = "Vec<(TopicPartition, i64)>")]
pub(crate) struct HighWatermarks;

/// Closes the consumer, which revokes its partitions and leaves the group, within `budget`;
/// but when nothing is left to commit, waits only `patience` for it (see [`Closed`]).
#[derive(Message)]
#[rtype(result = "Result<Closed, String>")]
pub(crate) struct Close {
    pub(crate) budget: Duration,
    pub(crate) patience: Option<Duration>,
}

/// How a close ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// librdkafka closed the consumer: it left the group.
    Done,
    /// The leave was asked for, and its answer had not come after the patience: the
    /// coordinator answers a member's requests in order, and holds a join request of it until
    /// the rebalance in progress completes (the embedded cluster up to a session timeout).
    /// Everything was committed already; the close goes on in the background.
    LeavingInBackground,
}

// To a processor task.

/// What a processor task is told. Everything is accepted while a message runs; only `Work`
/// and the failure policy ever put something in the queue.
pub(super) enum Command {
    /// Messages handed out by the Fetcher, in offset order per partition.
    Work(Vec<Message>),
    /// Partitions revoked (fenced): their lanes parked for a retry are given up, and what is
    /// held of them and not started is dropped.
    Forget(Vec<AssignmentId>),
    /// Give up the parked lanes, finish what is queued, report, then answer.
    Drain(oneshot::Sender<()>),
    /// Run `on_stop` within the budget, answer, and end the task.
    Stop {
        budget: Duration,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Where is this message? For stall reports.
    Locate {
        position: Position,
        reply: oneshot::Sender<Option<Sighting>>,
    },
    /// Run a partition hook between two batches.
    Hook(Hook),
}

/// A partition hook to run, and where its outcome goes: the rebalance callback waits for it
/// on the Fetcher's thread (a `std` channel, so the wait needs no runtime).
pub(crate) enum Hook {
    Assigned {
        partitions: Vec<TopicPartition>,
        reply: std::sync::mpsc::Sender<Result<StoredPositions, String>>,
    },
    Revoked {
        partitions: Vec<TopicPartition>,
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
}

/// The handle on a processor task that the other actors use.
#[derive(Clone)]
pub(crate) struct ProcessorHandle {
    pub(crate) index: usize,
    inbox: mpsc::UnboundedSender<Command>,
    pub(crate) credit: Arc<Credit>,
}

impl ProcessorHandle {
    /// The handle on processor `index`, and the other end of its inbox, for its task.
    pub(super) fn new(
        index: usize,
        credit: Arc<Credit>,
    ) -> (ProcessorHandle, mpsc::UnboundedReceiver<Command>) {
        let (inbox, commands) = mpsc::unbounded_channel();
        let handle = ProcessorHandle {
            index,
            inbox,
            credit,
        };
        (handle, commands)
    }

    /// Hands messages to the processor (within its credit). Should the task be gone, they
    /// are dropped here, unfinished, and the system is stopping already.
    pub(crate) fn hand(&self, messages: Vec<Message>) {
        self.credit.handed(messages.len());
        if self.inbox.send(Command::Work(messages)).is_err() {
            log::error!(
                target: PROCESSOR_LOG_TARGET,
                "processor {} is gone: messages dropped",
                self.index
            );
        }
    }

    /// Gives up the lanes of these assignments that wait for a retry.
    pub(crate) fn forget(&self, assignments: Vec<AssignmentId>) {
        let _ = self.inbox.send(Command::Forget(assignments));
    }

    /// Resolves once the processor finished what it holds (parked lanes are given up).
    pub(crate) async fn drain(&self) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Command::Drain(reply))
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    /// Runs the processor's `on_stop` within `budget` and ends the task.
    pub(crate) async fn stop(&self, budget: Duration) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Command::Stop { budget, reply })
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Asks the processor to run a partition hook after what it is running now. Returns
    /// whether the processor can still be asked (else the reply never comes).
    pub(crate) fn hook(&self, hook: Hook) -> bool {
        self.inbox.send(Command::Hook(hook)).is_ok()
    }

    /// Where the processor holds the message at `position`, if it does.
    pub(crate) async fn locate(&self, position: Position) -> Option<Sighting> {
        let (reply, answer) = oneshot::channel();
        self.inbox.send(Command::Locate { position, reply }).ok()?;
        answer.await.ok().flatten()
    }

    fn gone(&self) -> String {
        format!("processor {} is gone", self.index)
    }
}
