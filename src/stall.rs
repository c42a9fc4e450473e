//! Stall detection: a partition that has work but whose commit point has not moved for longer
//! than `stall_timeout`, and where the message it waits for is.
//!
//! Pure code, time passed in; the OffsetTracker runs it every second while the system runs
//! (never while it stops on purpose), asks the processors and the Fetcher where the waiting
//! message is, and logs what it found at `warn`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::lanes::Whereabouts;
use crate::offsets::{AssignmentId, TopicPartition};

/// A partition that stopped moving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) partition: TopicPartition,
    pub(crate) assignment: AssignmentId,
    /// The commit point: the first message not finished.
    pub(crate) offset: i64,
    pub(crate) stalled_for: Duration,
}

/// What the watch knows of one partition: its commit point, since when, and whether a stall
/// was reported for it.
#[derive(Debug)]
struct Watched {
    commit_point: Option<i64>,
    since: Instant,
    reported: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct StallWatch {
    timeout: Duration,
    partitions: HashMap<AssignmentId, Watched>,
}

/// One partition as the watch looks at it.
pub(crate) struct PartitionState<'a> {
    pub(crate) partition: &'a TopicPartition,
    pub(crate) assignment: AssignmentId,
    pub(crate) commit_point: Option<i64>,
    /// Whether messages were taken that are neither finished nor given up.
    pub(crate) has_work: bool,
}

impl StallWatch {
    pub(crate) fn new(timeout: Duration) -> Self {
        StallWatch {
            timeout,
            partitions: HashMap::new(),
        }
    }

    /// Looks at every current partition at `now`; returns those that have just stalled (each
    /// stall is returned once, until the partition moves again). Partitions not listed are
    /// forgotten.
    pub(crate) fn check<'a>(
        &mut self,
        now: Instant,
        partitions: impl IntoIterator<Item = PartitionState<'a>>,
    ) -> Vec<Stall> {
        let mut seen = HashMap::with_capacity(self.partitions.len());
        let mut stalls = Vec::new();
        for state in partitions {
            let mut watched = self
                .partitions
                .remove(&state.assignment)
                .unwrap_or(Watched {
                    commit_point: state.commit_point,
                    since: now,
                    reported: false,
                });
            if !state.has_work || watched.commit_point != state.commit_point {
                if watched.reported {
                    log::info!("{}: moving again", state.partition);
                }
                watched = Watched {
                    commit_point: state.commit_point,
                    since: now,
                    reported: false,
                };
            } else if !watched.reported && now.duration_since(watched.since) >= self.timeout {
                watched.reported = true;
                stalls.push(Stall {
                    partition: state.partition.clone(),
                    assignment: state.assignment,
                    offset: state.commit_point.unwrap_or(0),
                    stalled_for: now.duration_since(watched.since),
                });
            }
            seen.insert(state.assignment, watched);
        }
        self.partitions = seen;
        stalls
    }

    /// How many partitions are stalled now.
    pub(crate) fn stalled(&self) -> usize {
        self.partitions.values().filter(|w| w.reported).count()
    }
}

/// Where a message waits, as its holder reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sighting {
    /// A processor runs it.
    InProgress { processor: usize, since: Instant },
    /// A processor holds it, not running.
    Held {
        processor: usize,
        whereabouts: Whereabouts,
    },
    /// The Fetcher holds it until a processor has room: `processor` when one must take it
    /// (its partition's or key's), with what that processor holds.
    InFetcher {
        processor: Option<usize>,
        processor_queued: usize,
        ahead: usize,
    },
}

impl Sighting {
    /// Describes the sighting as of `now`, for a log line.
    pub(crate) fn describe(&self, now: Instant) -> String {
        let until = |at: Instant| match at.checked_duration_since(now) {
            Some(left) => format!("due in {left:?}"),
            None => format!("due {:?} ago", now.duration_since(at)),
        };
        match *self {
            Sighting::InProgress { processor, since } => format!(
                "in progress on processor {processor} for {:?}",
                now.duration_since(since)
            ),
            Sighting::Held {
                processor,
                whereabouts,
            } => match whereabouts {
                Whereabouts::Queued { ahead } => {
                    format!("queued on processor {processor} behind {ahead} messages")
                }
                Whereabouts::WaitingForRetry { retry_at: Some(at) } => {
                    format!("waiting on processor {processor} for a retry {}", until(at))
                }
                Whereabouts::WaitingForRetry { retry_at: None } => {
                    format!("failed for good on processor {processor}; the system stops on it")
                }
                Whereabouts::BehindRetry { retry_at } => format!(
                    "waiting on processor {processor} behind an earlier message of its lane \
                     whose retry is {}",
                    retry_at.map_or("not scheduled".to_owned(), until)
                ),
            },
            Sighting::InFetcher {
                processor: Some(processor),
                processor_queued,
                ahead,
            } => format!(
                "waiting in the fetcher, behind {ahead} messages, for processor {processor}, \
                 which is full ({processor_queued} queued)"
            ),
            Sighting::InFetcher {
                processor: None,
                ahead,
                ..
            } => format!("waiting in the fetcher, behind {ahead} messages, for a free processor"),
        }
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has not moved past offset {} for {:?}",
            self.partition, self.offset, self.stalled_for
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(partition: &TopicPartition, commit_point: i64, has_work: bool) -> PartitionState<'_> {
        PartitionState {
            partition,
            assignment: AssignmentId(1),
            commit_point: Some(commit_point),
            has_work,
        }
    }

    #[test]
    fn a_partition_with_work_that_does_not_move_stalls_once() {
        let partition = TopicPartition::new("t", 0);
        let start = Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(60));
        assert!(watch.check(start, [state(&partition, 5, true)]).is_empty());
        let later = start + Duration::from_secs(59);
        assert!(watch.check(later, [state(&partition, 5, true)]).is_empty());
        let stalled = start + Duration::from_secs(61);
        let stalls = watch.check(stalled, [state(&partition, 5, true)]);
        assert_eq!(stalls.len(), 1);
        assert_eq!(stalls[0].offset, 5);
        assert_eq!(watch.stalled(), 1);
        let again = start + Duration::from_secs(120);
        assert!(
            watch.check(again, [state(&partition, 5, true)]).is_empty(),
            "reported once"
        );
        // It moves: no longer stalled, and the clock starts again.
        assert!(watch.check(again, [state(&partition, 6, true)]).is_empty());
        assert_eq!(watch.stalled(), 0);
    }

    #[test]
    fn an_idle_partition_never_stalls() {
        let partition = TopicPartition::new("t", 0);
        let start = Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(1));
        for second in 0..10 {
            let now = start + Duration::from_secs(second);
            assert!(watch.check(now, [state(&partition, 5, false)]).is_empty());
        }
    }

    #[test]
    fn partitions_no_longer_listed_are_forgotten() {
        let partition = TopicPartition::new("t", 0);
        let start = Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(1));
        watch.check(start, [state(&partition, 5, true)]);
        watch.check(start + Duration::from_secs(2), [state(&partition, 5, true)]);
        assert_eq!(watch.stalled(), 1);
        watch.check(start + Duration::from_secs(3), []);
        assert_eq!(watch.stalled(), 0);
    }
}
