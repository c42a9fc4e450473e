//! Per-partition offset bookkeeping: which dispatched messages are unfinished, and how far it is
//! safe to commit.
//!
//! This is pure code, owned by the OffsetTracker actor and unit-tested without Kafka. Two
//! invariants hold for every partition, whatever order completions arrive in:
//!
//! - **The commit point never passes an unfinished offset.** It is the lowest unfinished
//!   offset, or the highest dispatched offset + 1 when nothing is unfinished.
//! - **The commit point never decreases** within one assignment of the partition.
//!
//! Kafka's committed offset is the next offset to read, so a commit point is committed as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

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

/// Identifies one assignment of a partition to this member. Every assignment gets a new epoch,
/// so work dispatched under an earlier assignment can be told apart (fenced) after the
/// partition was revoked and assigned again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Epoch(pub(crate) u64);

/// Where a message sits: its partition, the assignment it was fetched under, and its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) partition: TopicPartition,
    pub(crate) epoch: Epoch,
    pub(crate) offset: i64,
}

/// The bookkeeping of one partition within one assignment.
#[derive(Debug, Default, Clone)]
pub(crate) struct PartitionOffsets {
    unfinished: BTreeSet<i64>,
    /// The highest dispatched offset + 1, once anything was dispatched.
    next_offset: Option<i64>,
    /// The last commit point Kafka acknowledged.
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// Records that `offset` was handed to a processor. Offsets arrive in increasing order
    /// within an assignment; an offset at or below one already dispatched is refused, because
    /// accepting it could move the commit point backwards.
    pub(crate) fn dispatched(&mut self, offset: i64) -> bool {
        if self.next_offset.is_some_and(|next| offset < next) {
            return false;
        }
        self.unfinished.insert(offset);
        self.next_offset = Some(offset + 1);
        true
    }

    /// Records that processing of `offset` finished. Returns false when the offset was not
    /// unfinished (never dispatched, or already finished).
    pub(crate) fn finished(&mut self, offset: i64) -> bool {
        self.unfinished.remove(&offset)
    }

    /// The offset up to which every dispatched message is finished: the next offset to read
    /// after a restart. `None` until something was dispatched.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.unfinished.first().copied().or(self.next_offset)
    }

    /// The commit point, if it is ahead of what Kafka already acknowledged.
    pub(crate) fn uncommitted(&self) -> Option<i64> {
        let point = self.commit_point()?;
        match self.committed {
            Some(committed) if committed >= point => None,
            _ => Some(point),
        }
    }

    /// Records that Kafka acknowledged a commit of `offset`. Acknowledgements may arrive out of
    /// order; the highest wins.
    pub(crate) fn committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |c| c.max(offset)));
    }

    #[cfg(test)]
    pub(crate) fn last_committed(&self) -> Option<i64> {
        self.committed
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.unfinished.len()
    }

    pub(crate) fn first_unfinished(&self) -> Option<i64> {
        self.unfinished.first().copied()
    }
}

/// What became of a completion reported to the [`OffsetBook`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The offset was unfinished and now counts as finished.
    Recorded,
    /// The partition is not assigned under that epoch any more: the completion is ignored and
    /// can never be committed.
    Fenced,
    /// The offset was not unfinished (a duplicate report).
    Unknown,
}

/// The bookkeeping of every partition currently assigned to this member.
#[derive(Debug, Default)]
pub(crate) struct OffsetBook {
    partitions: HashMap<TopicPartition, (Epoch, PartitionOffsets)>,
}

impl OffsetBook {
    /// Starts fresh bookkeeping for a partition under a new assignment epoch.
    pub(crate) fn assign(&mut self, partition: TopicPartition, epoch: Epoch) {
        self.partitions
            .insert(partition, (epoch, PartitionOffsets::default()));
    }

    /// Forgets a partition; later completions for it are fenced. Returns its last bookkeeping.
    pub(crate) fn revoke(&mut self, partition: &TopicPartition) -> Option<PartitionOffsets> {
        self.partitions
            .remove(partition)
            .map(|(_, offsets)| offsets)
    }

    fn current(&mut self, position: &Position) -> Option<&mut PartitionOffsets> {
        match self.partitions.get_mut(&position.partition) {
            Some((epoch, offsets)) if *epoch == position.epoch => Some(offsets),
            _ => None,
        }
    }

    /// Records a dispatch. Returns false when the position is fenced or out of order.
    pub(crate) fn dispatched(&mut self, position: &Position) -> bool {
        self.current(position)
            .is_some_and(|offsets| offsets.dispatched(position.offset))
    }

    /// Records a completion.
    pub(crate) fn finished(&mut self, position: &Position) -> Completion {
        match self
            .current(position)
            .map(|offsets| offsets.finished(position.offset))
        {
            None => Completion::Fenced,
            Some(true) => Completion::Recorded,
            Some(false) => Completion::Unknown,
        }
    }

    /// Commit points that are ahead of what Kafka acknowledged, with the epoch they belong to.
    pub(crate) fn uncommitted(&self) -> Vec<Position> {
        let mut positions: Vec<Position> = self
            .partitions
            .iter()
            .filter_map(|(partition, (epoch, offsets))| {
                offsets.uncommitted().map(|offset| Position {
                    partition: partition.clone(),
                    epoch: *epoch,
                    offset,
                })
            })
            .collect();
        positions.sort_by(|a, b| a.partition.cmp(&b.partition));
        positions
    }

    /// Records Kafka's acknowledgement of a commit. Ignored when the partition was reassigned
    /// in the meantime.
    pub(crate) fn committed(&mut self, position: &Position) {
        if let Some(offsets) = self.current(position) {
            offsets.committed(position.offset);
        }
    }

    /// How many dispatched messages are unfinished, over all partitions.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|(_, offsets)| offsets.in_flight())
            .sum()
    }

    /// Every partition with its bookkeeping, in partition order.
    pub(crate) fn partitions(&self) -> BTreeMap<&TopicPartition, &PartitionOffsets> {
        self.partitions
            .iter()
            .map(|(partition, (_, offsets))| (partition, offsets))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn position(partition: i32, epoch: u64, offset: i64) -> Position {
        Position {
            partition: TopicPartition::new("t", partition),
            epoch: Epoch(epoch),
            offset,
        }
    }

    #[test]
    fn nothing_dispatched_has_no_commit_point() {
        assert_eq!(PartitionOffsets::default().commit_point(), None);
    }

    #[test]
    fn commit_point_stops_at_the_lowest_unfinished_offset() {
        let mut offsets = PartitionOffsets::default();
        for offset in 10..15 {
            assert!(offsets.dispatched(offset));
        }
        assert!(offsets.finished(10));
        assert!(offsets.finished(12));
        assert!(offsets.finished(13));
        assert_eq!(offsets.commit_point(), Some(11));
        assert!(offsets.finished(11));
        assert_eq!(offsets.commit_point(), Some(14));
        assert!(offsets.finished(14));
        assert_eq!(offsets.commit_point(), Some(15));
    }

    #[test]
    fn gaps_in_offsets_are_committed_past() {
        // Compacted topics and transaction markers leave gaps between delivered offsets.
        let mut offsets = PartitionOffsets::default();
        offsets.dispatched(5);
        offsets.dispatched(9);
        offsets.finished(9);
        assert_eq!(offsets.commit_point(), Some(5));
        offsets.finished(5);
        assert_eq!(offsets.commit_point(), Some(10));
    }

    #[test]
    fn offsets_behind_the_dispatched_ones_are_refused() {
        let mut offsets = PartitionOffsets::default();
        assert!(offsets.dispatched(7));
        assert!(!offsets.dispatched(7));
        assert!(!offsets.dispatched(3));
        assert_eq!(offsets.commit_point(), Some(7));
    }

    #[test]
    fn uncommitted_reports_only_progress_beyond_the_acknowledged_commit() {
        let mut offsets = PartitionOffsets::default();
        offsets.dispatched(0);
        offsets.finished(0);
        assert_eq!(offsets.uncommitted(), Some(1));
        offsets.committed(1);
        assert_eq!(offsets.uncommitted(), None);
        offsets.committed(0);
        assert_eq!(
            offsets.last_committed(),
            Some(1),
            "a late, lower ack is ignored"
        );
    }

    #[test]
    fn completions_from_an_earlier_assignment_are_fenced() {
        let mut book = OffsetBook::default();
        book.assign(TopicPartition::new("t", 0), Epoch(1));
        assert!(book.dispatched(&position(0, 1, 0)));
        book.revoke(&TopicPartition::new("t", 0));
        book.assign(TopicPartition::new("t", 0), Epoch(2));
        assert!(book.dispatched(&position(0, 2, 0)));

        assert_eq!(book.finished(&position(0, 1, 0)), Completion::Fenced);
        assert_eq!(
            book.uncommitted()[0].offset,
            0,
            "the stale completion moved nothing"
        );
        assert_eq!(book.finished(&position(0, 2, 0)), Completion::Recorded);
        assert_eq!(book.finished(&position(0, 2, 0)), Completion::Unknown);
        assert_eq!(book.uncommitted(), vec![position(0, 2, 1)]);
    }

    #[test]
    fn acknowledgements_for_an_earlier_assignment_are_ignored() {
        let mut book = OffsetBook::default();
        book.assign(TopicPartition::new("t", 0), Epoch(2));
        book.dispatched(&position(0, 2, 4));
        book.finished(&position(0, 2, 4));
        book.committed(&position(0, 1, 5));
        assert_eq!(book.uncommitted(), vec![position(0, 2, 5)]);
        book.committed(&position(0, 2, 5));
        assert!(book.uncommitted().is_empty());
    }

    #[test]
    fn in_flight_counts_unfinished_messages_over_all_partitions() {
        let mut book = OffsetBook::default();
        book.assign(TopicPartition::new("t", 0), Epoch(1));
        book.assign(TopicPartition::new("t", 1), Epoch(1));
        book.dispatched(&position(0, 1, 0));
        book.dispatched(&position(0, 1, 1));
        book.dispatched(&position(1, 1, 0));
        book.finished(&position(0, 1, 1));
        assert_eq!(book.in_flight(), 2);
    }

    /// Offsets increasing with random gaps, and a random order to finish them in.
    fn dispatch_and_completion_order() -> impl Strategy<Value = (Vec<i64>, Vec<usize>)> {
        prop::collection::vec(1i64..4, 1..200).prop_flat_map(|gaps| {
            let offsets: Vec<i64> = gaps
                .iter()
                .scan(0i64, |next, gap| {
                    *next += gap;
                    Some(*next)
                })
                .collect();
            let order = Just((0..offsets.len()).collect::<Vec<_>>()).prop_shuffle();
            (Just(offsets), order)
        })
    }

    proptest! {
        #[test]
        fn commit_point_never_passes_an_unfinished_offset_nor_decreases(
            (offsets, order) in dispatch_and_completion_order(),
            interleave in 0usize..200,
        ) {
            let mut book = PartitionOffsets::default();
            let mut unfinished = BTreeSet::new();
            let mut last_point = None;
            // Dispatch some offsets up front, then interleave the rest with completions, as
            // a fetcher and a processor pool would.
            let (up_front, later) = offsets.split_at(interleave.min(offsets.len()));
            for &offset in up_front {
                prop_assert!(book.dispatched(offset));
                unfinished.insert(offset);
            }
            let mut later = later.iter();
            for index in order {
                let offset = offsets[index];
                // Dispatch everything up to this offset before it can finish.
                while !unfinished.contains(&offset) {
                    let &next = later.next().expect("offset is dispatched eventually");
                    prop_assert!(book.dispatched(next));
                    unfinished.insert(next);
                    let point = book.commit_point();
                    prop_assert!(point >= last_point);
                    last_point = point;
                }
                prop_assert!(book.finished(offset));
                unfinished.remove(&offset);

                let point = book.commit_point().expect("something was dispatched");
                if let Some(&lowest) = unfinished.first() {
                    prop_assert!(point <= lowest, "commit point {point} passes unfinished {lowest}");
                }
                prop_assert!(Some(point) >= last_point, "commit point went back");
                last_point = Some(point);
            }
            prop_assert_eq!(book.commit_point(), Some(offsets[offsets.len() - 1] + 1));
            prop_assert_eq!(book.in_flight(), 0);
        }
    }
}
