//! Controls over what the Fetcher reads, asked for by processing code (a [`PartitionControl`]
//! from a message) or by the application (a [`RunningSystem`](crate::RunningSystem)): pause a
//! partition (for a while, or until resumed), resume it, seek it to an offset or a time, pause
//! and resume the whole system.
//!
//! A control is a request on a channel to the Fetcher, which carries it out at its next round
//! (it is woken for it): only the Fetcher touches the consumer. Nothing waits for an answer,
//! so processing code never waits for the Fetcher, which itself may be waiting for that code
//! (a revocation's drain).

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::Notify;

use crate::flow::AssignedPartition;
use crate::offsets::{AssignmentId, TopicPartition};

/// A control that could not be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// An offset must be 0 or more.
    #[error("{0} is not an offset")]
    NotAnOffset(i64),
    /// The system has stopped (or the message was made without one).
    #[error("the consumer system is not running")]
    NotRunning,
}

/// Where a seek goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeekTo {
    Offset(i64),
    /// The first message at or after this time (milliseconds since the Unix epoch); the end of
    /// the partition when there is none.
    Time(i64),
}

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Pause for a while (`None`: until resumed), from when the Fetcher hears of it.
    Pause {
        lasting: Option<Duration>,
    },
    Resume,
    Seek(SeekTo),
}

/// Of what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One partition, under the lineage of assignments the handle was made in (a rebalance's
    /// assignment and the seeks after it): a request about a lineage that is over is
    /// ignored.
    Partition(TopicPartition, AssignmentId),
    /// Every partition this member holds, and those it is assigned later.
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) target: Target,
    pub(crate) action: Action,
}

/// The line to the Fetcher on which controls are asked for; or, in the testkit, a record of
/// what was asked for.
#[derive(Debug, Clone, Default)]
pub(crate) enum Controls {
    /// No Fetcher: every request is refused.
    #[default]
    Detached,
    Fetcher(Arc<Line>),
    Recorder(Arc<Mutex<Vec<Request>>>),
}

#[derive(Debug)]
pub(crate) struct Line {
    requests: mpsc::Sender<Request>,
    wakeup: Arc<Notify>,
}

impl Controls {
    /// A line to a Fetcher woken by `wakeup`, and the Fetcher's end of it.
    pub(crate) fn new(wakeup: Arc<Notify>) -> (Self, mpsc::Receiver<Request>) {
        let (requests, received) = mpsc::channel();
        let line = Line { requests, wakeup };
        (Controls::Fetcher(Arc::new(line)), received)
    }

    pub(crate) fn ask(&self, target: Target, action: Action) -> Result<(), ControlError> {
        let request = Request { target, action };
        match self {
            Controls::Detached => Err(ControlError::NotRunning),
            Controls::Fetcher(line) => {
                line.requests
                    .send(request)
                    .map_err(|_| ControlError::NotRunning)?;
                line.wakeup.notify_one();
                Ok(())
            }
            Controls::Recorder(asked) => {
                asked
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(request);
                Ok(())
            }
        }
    }
}

/// Controls over one partition, from processing code:
/// [`Message::partition_control`](crate::Message::partition_control) hands one out for the
/// message's partition, under the assignment the message came from. Each control is carried out by the Fetcher at its next
/// round (within a few milliseconds) and is ignored once this member no longer holds the
/// partition under that assignment (a rebalance moved it): a rebalance ends pauses and seeks
/// with the assignment.
///
/// Partition hooks ([`on_assigned`](crate::Processor::on_assigned),
/// [`on_revoked`](crate::Processor::on_revoked)) are not called for a seek.
///
/// ```
/// use std::time::Duration;
/// use kafka_actors::{Message, Processor};
///
/// struct Forward;
///
/// impl Processor for Forward {
///     async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
///         if downstream_is_overloaded() {
///             // Nothing more of this partition is fetched for 30 s; the message itself is
///             // retried by the failure policy.
///             message.partition_control().pause_for(Duration::from_secs(30))?;
///             anyhow::bail!("downstream overloaded");
///         }
///         Ok(())
///     }
/// }
/// # fn downstream_is_overloaded() -> bool { false }
/// ```
#[derive(Debug, Clone)]
pub struct PartitionControl {
    assigned: Arc<AssignedPartition>,
}

impl PartitionControl {
    pub(crate) fn new(assigned: Arc<AssignedPartition>) -> Self {
        PartitionControl { assigned }
    }

    /// The partition controlled.
    pub fn partition(&self) -> &TopicPartition {
        &self.assigned.partition
    }

    /// Stops fetching and handing out the partition's messages until [`resume`](Self::resume).
    /// The messages processors already hold (at most their
    /// [`prefetch`](crate::ConsumerConfigBuilder::prefetch)) still run; the rest waits,
    /// counted in flight, and nothing is lost or repeated. Commits go on for what finished.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.ask(Action::Pause { lasting: None })
    }

    /// As [`pause`](Self::pause), resumed by itself after `duration` (or earlier by
    /// [`resume`](Self::resume)). A later pause replaces an earlier one.
    pub fn pause_for(&self, duration: Duration) -> Result<(), ControlError> {
        self.ask(Action::Pause {
            lasting: Some(duration),
        })
    }

    /// Ends a pause asked for with [`pause`](Self::pause) or [`pause_for`](Self::pause_for);
    /// does nothing to a partition not paused so. While the whole system is paused
    /// ([`RunningSystem::pause`](crate::RunningSystem::pause)), the partition resumes with it.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.ask(Action::Resume)
    }

    /// Reads the partition from `offset` on, as if it were newly assigned there: what the
    /// processors hold of it and have not started is dropped at once (a batch in progress
    /// finishes, and its outcome is not committed), and `offset` becomes the partition's
    /// commit point. A seek backwards processes the messages from `offset` again (and moves
    /// the group's committed offset back to it); a seek forwards skips the messages before
    /// `offset`, which count as finished. An offset past the partition's end is taken as the
    /// end (as librdkafka last saw it), so that nothing produced later is skipped. A pause
    /// asked for before stays.
    pub fn seek(&self, offset: i64) -> Result<(), ControlError> {
        if offset < 0 {
            return Err(ControlError::NotAnOffset(offset));
        }
        self.ask(Action::Seek(SeekTo::Offset(offset)))?;
        if let Controls::Fetcher(_) = self.assigned.controls {
            // At once, not at the Fetcher's next round: nothing held of the partition starts
            // after this call. The Fetcher re-assigns the partition at `offset`; should it
            // not (the system stops, a rebalance took the partition), what was dropped was
            // never finished, so the commit point stays below it.
            self.assigned.fence();
        }
        Ok(())
    }

    /// As [`seek`](Self::seek), to the first message whose timestamp is `millis` (since the
    /// Unix epoch) or later, or to the partition's end when there is none. The broker is asked
    /// for the offset first, on a thread and a connection of its own (at most 5 s; when it
    /// does not answer, the seek is dropped and logged), so the seek takes effect once it
    /// answered: messages the processors hold run meanwhile. (librdkafka's mock cluster, the
    /// embedded default, answers every such lookup with "none": the end.)
    pub fn seek_to_time(&self, millis: i64) -> Result<(), ControlError> {
        self.ask(Action::Seek(SeekTo::Time(millis)))
    }

    fn ask(&self, action: Action) -> Result<(), ControlError> {
        let target = Target::Partition(self.assigned.partition.clone(), self.assigned.lineage);
        self.assigned.controls.ask(target, action)
    }
}
