//! Per-partition offset bookkeeping: which dispatched messages are unfinished, and how far it is
//! safe to commit.
//!
//! This is pure code, owned by the OffsetTracker actor and unit-tested without Kafka. Two
//! invariants hold for every partition, whatever order completions arrive in:
//!
//! - **The commit point never passes an unfinished offset.** It is the lowest unfinished
//!   offset, or the highest dispatched offset + 1 when nothing is unfinished. Before anything
//!   is dispatched, an assignment that starts at a position a processor stored has that
//!   position as its commit point (everything below it is finished, by the processor's own
//!   record); one that starts at the group's committed offset has none.
//! - **The commit point never decreases** within one assignment of the partition. (The one
//!   exception is not the book's to prevent: a stored position past the partition's end makes
//!   librdkafka reset, and the offsets then taken are below it.)
//!
//! Kafka's committed offset is the next offset to read, so a commit point is committed as is;
//! the offsets finished beyond it travel as the commit's metadata, encoded in `metadata.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

mod metadata;

pub(crate) use metadata::{decode_finished, encode_finished};

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    topic: Arc<str>,
    partition: i32,
}

impl TopicPartition {
    /// Names partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition number.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Identifies one assignment of one partition to this member: every assignment gets a new id,
/// so work dispatched under an earlier assignment can be told apart (fenced) after the
/// partition was revoked and assigned again. Small and `Copy`, so that the per-message
/// bookkeeping moves no reference counts between threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AssignmentId(pub(crate) u64);

/// Where a message sits: the assignment it was fetched under, and its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) assignment: AssignmentId,
    pub(crate) offset: i64,
}

/// A partition's commit point, under the assignment it was computed for, with the offsets
/// beyond it that finished already (committed as the commit's metadata, so that the next
/// reader of the partition skips them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommitPoint {
    pub(crate) partition: TopicPartition,
    pub(crate) assignment: AssignmentId,
    pub(crate) offset: i64,
    pub(crate) finished: Vec<i64>,
}

/// How far past its commit point a partition's messages are taken at most: the Fetcher
/// pauses a partition whose next message would be this far from it (`routes.rs`). So
/// whatever finished beyond a commit point always fits in the commit's metadata as a bitmap
/// (20,000 bits are 3,334 base64 characters, within `metadata::METADATA_MAX`), and a
/// partition's bookkeeping holds at most this many offsets, however long a message is stuck.
pub(crate) const COMMIT_WINDOW: i64 = 20_000;

/// What became of a message the book knows, as far as commits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Taken by the Fetcher, not finished.
    Unfinished,
    Finished,
    /// Given up unfinished on purpose (a stop dropped it before it started, or gave up its
    /// retry): not committed, read again by the next reader, but not abandoned work.
    Released,
}

/// The bookkeeping of one partition within one assignment.
#[derive(Debug, Default, Clone)]
pub(crate) struct PartitionOffsets {
    /// The offsets taken, from the lowest one not finished on, in increasing order, each with
    /// its fate. The front is never finished: finished offsets at the front are dropped, so
    /// the window spans only what a commit cannot pass yet.
    window: VecDeque<(i64, Fate)>,
    unfinished: usize,
    released: usize,
    /// The highest offset taken + 1, once anything was taken.
    next_offset: Option<i64>,
    /// The first offset taken: where this assignment started reading (the group's committed
    /// offset, or where the offset reset policy pointed).
    first_offset: Option<i64>,
    /// The position a processor stored for the partition (`on_assigned`), where this
    /// assignment starts: the commit point until anything is taken. Without it, an assignment
    /// that takes nothing (the store is at the partition's end) would never commit, and the
    /// group's committed offset would stay behind what the store holds for good.
    stored_start: Option<i64>,
    /// Offsets the previous reader finished beyond the committed offset. Those not taken yet
    /// (at or beyond `next_offset`) are finished beyond any commit point of this assignment,
    /// so its commits record them too: a commit that dropped them would have the next reader
    /// process them again.
    inherited: BTreeSet<i64>,
    /// The last commit point Kafka acknowledged, and how many offsets beyond it it recorded
    /// as finished.
    committed: Option<(i64, usize)>,
}

impl PartitionOffsets {
    /// The bookkeeping of an assignment that starts at `start`.
    pub(crate) fn starting(start: Start) -> Self {
        match start {
            Start::Committed { inherited } => PartitionOffsets {
                inherited: inherited.into_iter().collect(),
                ..PartitionOffsets::default()
            },
            Start::Stored(position) => PartitionOffsets {
                stored_start: Some(position),
                ..PartitionOffsets::default()
            },
        }
    }

    /// Records that the Fetcher took `offset`. Offsets arrive in increasing order within an
    /// assignment; an offset at or below one already taken is refused, because accepting it
    /// could move the commit point backwards.
    pub(crate) fn dispatched(&mut self, offset: i64) -> bool {
        if self.next_offset.is_some_and(|next| offset < next) {
            return false;
        }
        self.window.push_back((offset, Fate::Unfinished));
        self.unfinished += 1;
        self.first_offset.get_or_insert(offset);
        self.next_offset = Some(offset + 1);
        true
    }

    /// Records that processing of `offset` finished. Returns false when the offset was not
    /// unfinished (never taken, already finished, or released).
    pub(crate) fn finished(&mut self, offset: i64) -> bool {
        self.settle(offset, Fate::Finished)
    }

    /// Records that `offset` was given up unfinished. Returns false when it was not
    /// unfinished.
    pub(crate) fn released(&mut self, offset: i64) -> bool {
        self.settle(offset, Fate::Released)
    }

    fn settle(&mut self, offset: i64, fate: Fate) -> bool {
        // Completions mostly come in offset order, so the front is the usual match.
        let index = match self.window.front() {
            Some((front, _)) if *front == offset => 0,
            _ => match self.window.binary_search_by_key(&offset, |(o, _)| *o) {
                Ok(index) => index,
                Err(_) => return false,
            },
        };
        let (_, current) = &mut self.window[index];
        if *current != Fate::Unfinished {
            return false;
        }
        *current = fate;
        self.unfinished -= 1;
        if fate == Fate::Released {
            self.released += 1;
        }
        while self
            .window
            .front()
            .is_some_and(|(_, fate)| *fate == Fate::Finished)
        {
            self.window.pop_front();
        }
        true
    }

    /// The offset up to which every message taken is finished: the next offset to read after
    /// a restart. Until something was taken: the stored position the assignment started at,
    /// if it started at one, else `None`.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        match self.window.front() {
            Some((offset, _)) => Some(*offset),
            // Past what the previous reader finished right after: the next reader skips it.
            None => self
                .next_offset
                .map(|mut next| {
                    while self.inherited.contains(&next) {
                        next += 1;
                    }
                    next
                })
                .or(self.stored_start),
        }
    }

    /// The offsets beyond the commit point that finished, in order: taken and finished, then
    /// inherited and not taken yet.
    pub(crate) fn finished_beyond(&self) -> Vec<i64> {
        self.window
            .iter()
            .filter(|(_, fate)| *fate == Fate::Finished)
            .map(|(offset, _)| *offset)
            .chain(self.inherited_untaken().copied())
            .collect()
    }

    /// Inherited offsets not taken yet and beyond the commit point.
    fn inherited_untaken(&self) -> impl Iterator<Item = &i64> {
        let from = match (self.next_offset, self.commit_point()) {
            (Some(next), Some(point)) => next.max(point + 1),
            (next, _) => next.unwrap_or(i64::MIN),
        };
        self.inherited.range(from..)
    }

    /// The commit point and the offsets finished beyond it, if that is ahead of what Kafka
    /// already acknowledged: a later point, or more finished beyond the same one.
    pub(crate) fn uncommitted(&self) -> Option<(i64, Vec<i64>)> {
        let point = self.commit_point()?;
        let finished = self.finished_beyond();
        match self.committed {
            Some((committed, _)) if committed > point => None,
            Some((committed, recorded)) if committed == point && recorded >= finished.len() => None,
            _ => Some((point, finished)),
        }
    }

    /// Records that Kafka acknowledged a commit of `offset` that recorded `finished` offsets
    /// beyond it. Acknowledgements may arrive out of order; the highest wins.
    pub(crate) fn committed(&mut self, offset: i64, finished: usize) {
        self.committed = Some(match self.committed {
            Some((committed, recorded)) if committed > offset => (committed, recorded),
            Some((committed, recorded)) if committed == offset => (offset, recorded.max(finished)),
            _ => (offset, finished),
        });
    }

    pub(crate) fn last_committed(&self) -> Option<i64> {
        self.committed.map(|(offset, _)| offset)
    }

    /// The offset the group has committed for the partition as far as this assignment knows:
    /// its last acknowledged commit, or else where it started reading.
    pub(crate) fn committed_or_start(&self) -> Option<i64> {
        self.last_committed()
            .or(self.first_offset)
            .or(self.stored_start)
    }

    /// How many offsets beyond the commit point finished.
    pub(crate) fn finished_beyond_count(&self) -> usize {
        // The window holds the unfinished, the released and the finished beyond the point.
        self.window.len() - self.unfinished - self.released + self.inherited_untaken().count()
    }

    /// Messages taken and neither finished nor released.
    pub(crate) fn in_flight(&self) -> usize {
        self.unfinished
    }

    /// Messages released (given up on purpose) that the commit point cannot pass.
    pub(crate) fn released_count(&self) -> usize {
        self.released
    }

    /// The lowest offset taken and neither finished nor released.
    pub(crate) fn first_unfinished(&self) -> Option<i64> {
        self.window
            .iter()
            .find(|(_, fate)| *fate == Fate::Unfinished)
            .map(|(offset, _)| *offset)
    }
}

/// What became of a completion reported to the [`OffsetBook`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The offset was unfinished and now counts as finished.
    Recorded,
    /// The assignment it was dispatched under is over: the completion is ignored and can
    /// never be committed.
    Fenced,
    /// The offset was not unfinished (a duplicate report).
    Unknown,
}

/// Where a new assignment of a partition starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// At the group's committed offset (or where `auto.offset.reset` points), with the offsets
    /// beyond it that the previous reader finished (its commit's metadata): carried on in this
    /// assignment's commits until they pass them.
    Committed { inherited: Vec<i64> },
    /// At a position a processor stored (`on_assigned`): by the processor's own record, every
    /// offset below it is finished, so it is the commit point until anything is taken.
    Stored(i64),
}

#[derive(Debug)]
struct Assignment {
    partition: TopicPartition,
    offsets: PartitionOffsets,
}

/// The bookkeeping of every partition currently assigned to this member.
#[derive(Debug, Default)]
pub(crate) struct OffsetBook {
    assignments: HashMap<AssignmentId, Assignment>,
    current: HashMap<TopicPartition, AssignmentId>,
}

impl OffsetBook {
    /// Starts fresh bookkeeping for a partition under a new assignment, reading from `start`;
    /// an earlier assignment of the same partition ends.
    pub(crate) fn assign(
        &mut self,
        partition: TopicPartition,
        assignment: AssignmentId,
        start: Start,
    ) {
        if let Some(previous) = self.current.insert(partition.clone(), assignment) {
            self.assignments.remove(&previous);
        }
        let offsets = PartitionOffsets::starting(start);
        self.assignments
            .insert(assignment, Assignment { partition, offsets });
    }

    /// Forgets a partition; later completions for it are fenced. Returns its last bookkeeping.
    pub(crate) fn revoke(&mut self, partition: &TopicPartition) -> Option<PartitionOffsets> {
        let assignment = self.current.remove(partition)?;
        self.assignments.remove(&assignment).map(|a| a.offsets)
    }

    /// Records dispatches. Returns how many were refused (fenced or out of order).
    pub(crate) fn dispatched(&mut self, positions: &[Position]) -> usize {
        let mut refused = 0;
        // Positions come in runs of one assignment: look each run up once.
        for run in positions.chunk_by(|a, b| a.assignment == b.assignment) {
            match self.assignments.get_mut(&run[0].assignment) {
                Some(assignment) => {
                    for position in run {
                        refused += usize::from(!assignment.offsets.dispatched(position.offset));
                    }
                }
                None => refused += run.len(),
            }
        }
        refused
    }

    /// Records completions, calling `outcome` with each one's fate.
    pub(crate) fn finished(
        &mut self,
        positions: &[Position],
        mut outcome: impl FnMut(&Position, Completion),
    ) {
        for run in positions.chunk_by(|a, b| a.assignment == b.assignment) {
            let mut assignment = self.assignments.get_mut(&run[0].assignment);
            for position in run {
                let completion = match assignment
                    .as_mut()
                    .map(|a| a.offsets.finished(position.offset))
                {
                    None => Completion::Fenced,
                    Some(true) => Completion::Recorded,
                    Some(false) => Completion::Unknown,
                };
                outcome(position, completion);
            }
        }
    }

    /// Records messages given up unfinished on purpose; ignored when fenced.
    pub(crate) fn released(&mut self, positions: &[Position]) {
        for run in positions.chunk_by(|a, b| a.assignment == b.assignment) {
            if let Some(assignment) = self.assignments.get_mut(&run[0].assignment) {
                for position in run {
                    assignment.offsets.released(position.offset);
                }
            }
        }
    }

    /// Commit points that are ahead of what Kafka acknowledged, in partition order.
    pub(crate) fn uncommitted(&self) -> Vec<CommitPoint> {
        let mut points: Vec<CommitPoint> = self
            .assignments
            .iter()
            .filter_map(|(id, a)| {
                a.offsets
                    .uncommitted()
                    .map(|(offset, finished)| CommitPoint {
                        partition: a.partition.clone(),
                        assignment: *id,
                        offset,
                        finished,
                    })
            })
            .collect();
        points.sort_by(|a, b| a.partition.cmp(&b.partition));
        points
    }

    /// The commit point of one assignment, if it is current and took anything.
    pub(crate) fn commit_point_of(&self, assignment: AssignmentId) -> Option<i64> {
        self.assignments.get(&assignment)?.offsets.commit_point()
    }

    /// Whether an assignment is current.
    pub(crate) fn holds(&self, assignment: AssignmentId) -> bool {
        self.assignments.contains_key(&assignment)
    }

    /// The commit point of one assignment, if it is ahead of what Kafka acknowledged.
    pub(crate) fn uncommitted_of(&self, assignment: AssignmentId) -> Option<CommitPoint> {
        let a = self.assignments.get(&assignment)?;
        a.offsets
            .uncommitted()
            .map(|(offset, finished)| CommitPoint {
                partition: a.partition.clone(),
                assignment,
                offset,
                finished,
            })
    }

    /// Records Kafka's acknowledgement of a commit. Ignored when the assignment it was made
    /// for is over.
    pub(crate) fn committed(&mut self, point: &CommitPoint) {
        if let Some(assignment) = self.assignments.get_mut(&point.assignment) {
            assignment
                .offsets
                .committed(point.offset, point.finished.len());
        }
    }

    /// How many dispatched messages are unfinished, over all partitions.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.assignments
            .values()
            .map(|a| a.offsets.in_flight())
            .sum()
    }

    /// Every current assignment with its partition and bookkeeping.
    pub(crate) fn assignments(
        &self,
    ) -> impl Iterator<Item = (AssignmentId, &TopicPartition, &PartitionOffsets)> {
        self.assignments
            .iter()
            .map(|(id, a)| (*id, &a.partition, &a.offsets))
    }

    /// Every partition with its bookkeeping, in partition order.
    pub(crate) fn partitions(&self) -> BTreeMap<&TopicPartition, &PartitionOffsets> {
        self.assignments
            .values()
            .map(|a| (&a.partition, &a.offsets))
            .collect()
    }
}

#[cfg(test)]
mod tests;
