//! Unit and property tests of the offset bookkeeping: commit points never pass an
//! unfinished or released offset, nor decrease; earlier assignments are fenced.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// An assignment that starts at the group's committed offset, with nothing inherited.
const FROM_THE_GROUP: Start = Start::Committed {
    inherited: Vec::new(),
};

fn position(assignment: u64, offset: i64) -> Position {
    Position {
        assignment: AssignmentId(assignment),
        offset,
    }
}

fn point(partition: i32, assignment: u64, offset: i64) -> CommitPoint {
    CommitPoint {
        partition: TopicPartition::new("t", partition),
        assignment: AssignmentId(assignment),
        offset,
        finished: Vec::new(),
    }
}

fn finish(book: &mut OffsetBook, position: Position) -> Completion {
    let mut result = None;
    book.finished(&[position], |_, completion| result = Some(completion));
    result.expect("one outcome per position")
}

#[test]
fn what_the_previous_reader_finished_is_carried_on_until_the_commit_point_passes_it() {
    let mut book = OffsetBook::default();
    let partition = TopicPartition::new("t", 0);
    // The previous reader committed 10 and finished 15, 16 and 20 beyond it.
    book.assign(
        partition.clone(),
        AssignmentId(1),
        Start::Committed {
            inherited: vec![15, 16, 20],
        },
    );
    let at = |offset| position(1, offset);
    book.dispatched(&[at(10), at(11), at(12)]);
    book.finished(&[at(10), at(11), at(12)], |_, _| {});
    let commit = book.uncommitted_of(AssignmentId(1)).unwrap();
    assert_eq!((commit.offset, commit.finished), (13, vec![15, 16, 20]));
    // 13 and 14 taken and finished, 15 and 16 skipped as finished earlier: the point
    // passes them, and 20 is still carried.
    book.dispatched(&[at(13), at(14), at(15), at(16)]);
    book.finished(&[at(13), at(14), at(15), at(16)], |_, _| {});
    let commit = book.uncommitted_of(AssignmentId(1)).unwrap();
    assert_eq!((commit.offset, commit.finished), (17, vec![20]));
    // Taken up to 18 with 17 unfinished: 20 still beyond.
    book.dispatched(&[at(17), at(18)]);
    book.finished(&[at(18)], |_, _| {});
    let commit = book.uncommitted_of(AssignmentId(1)).unwrap();
    assert_eq!((commit.offset, commit.finished), (17, vec![18, 20]));
    // All of it finished, and 19 taken: the point passes the inherited 20 as well.
    book.dispatched(&[at(19)]);
    book.finished(&[at(17), at(19)], |_, _| {});
    let commit = book.uncommitted_of(AssignmentId(1)).unwrap();
    assert_eq!((commit.offset, commit.finished), (21, vec![]));
}

#[test]
fn an_assignment_that_took_nothing_commits_nothing_and_leaves_the_previous_commit() {
    let mut book = OffsetBook::default();
    book.assign(
        TopicPartition::new("t", 0),
        AssignmentId(1),
        Start::Committed {
            inherited: vec![15, 16],
        },
    );
    assert_eq!(book.uncommitted_of(AssignmentId(1)), None);
}

#[test]
fn an_assignment_at_a_stored_position_commits_it_even_when_it_takes_nothing() {
    // The processor's store holds everything below 40 (the group committed less, or
    // nothing): that is the commit point before anything is taken, and nothing beyond it
    // is claimed finished.
    let mut book = OffsetBook::default();
    book.assign(
        TopicPartition::new("t", 0),
        AssignmentId(1),
        Start::Stored(40),
    );
    assert_eq!(book.uncommitted(), vec![point(0, 1, 40)]);
    assert_eq!(book.uncommitted_of(AssignmentId(1)), Some(point(0, 1, 40)));
    // Acknowledged once, it is not committed again.
    book.committed(&point(0, 1, 40));
    assert!(book.uncommitted().is_empty());
    // What is taken then moves the commit point on from there, as from any start.
    book.dispatched(&[position(1, 40), position(1, 41)]);
    assert!(book.uncommitted().is_empty(), "40 is not finished yet");
    finish(&mut book, position(1, 41));
    assert_eq!(
        book.uncommitted(),
        vec![CommitPoint {
            finished: vec![41],
            ..point(0, 1, 40)
        }]
    );
    finish(&mut book, position(1, 40));
    assert_eq!(book.uncommitted(), vec![point(0, 1, 42)]);
}

#[test]
fn a_stored_position_the_reset_went_below_gives_way_to_what_is_taken() {
    // A store past the partition's end: librdkafka resets (earliest) and the partition is
    // read again, as `on_assigned` documents; the commits follow what is read.
    let mut offsets = PartitionOffsets::starting(Start::Stored(500));
    assert_eq!(offsets.commit_point(), Some(500));
    assert!(offsets.dispatched(0));
    assert_eq!(offsets.commit_point(), Some(0));
    assert!(offsets.finished(0));
    assert_eq!(offsets.commit_point(), Some(1));
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
fn a_released_offset_holds_the_commit_point_but_is_not_in_flight() {
    let mut offsets = PartitionOffsets::default();
    for offset in 0..4 {
        offsets.dispatched(offset);
    }
    assert!(offsets.finished(0));
    assert!(offsets.released(1));
    assert!(!offsets.released(1), "released once");
    assert!(!offsets.finished(1), "a released offset never finishes");
    assert!(offsets.finished(2));
    assert_eq!(offsets.commit_point(), Some(1));
    assert_eq!((offsets.in_flight(), offsets.released_count()), (1, 1));
    assert_eq!(offsets.first_unfinished(), Some(3));
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
    assert_eq!(offsets.uncommitted(), Some((1, vec![])));
    offsets.committed(1, 0);
    assert_eq!(offsets.uncommitted(), None);
    offsets.committed(0, 0);
    assert_eq!(
        offsets.last_committed(),
        Some(1),
        "a late, lower ack is ignored"
    );
}

#[test]
fn offsets_finished_beyond_the_commit_point_are_committed_with_it() {
    let mut offsets = PartitionOffsets::default();
    for offset in 10..15 {
        offsets.dispatched(offset);
    }
    offsets.finished(11);
    offsets.finished(13);
    assert_eq!(offsets.uncommitted(), Some((10, vec![11, 13])));
    offsets.committed(10, 2);
    assert_eq!(offsets.uncommitted(), None, "nothing new");
    offsets.finished(14);
    assert_eq!(
        offsets.uncommitted(),
        Some((10, vec![11, 13, 14])),
        "more finished beyond the same point is worth a commit"
    );
    offsets.finished(10);
    assert_eq!(offsets.uncommitted(), Some((12, vec![13, 14])));
}

#[test]
fn completions_from_an_earlier_assignment_are_fenced() {
    let mut book = OffsetBook::default();
    book.assign(TopicPartition::new("t", 0), AssignmentId(1), FROM_THE_GROUP);
    assert_eq!(book.dispatched(&[position(1, 0)]), 0);
    book.revoke(&TopicPartition::new("t", 0));
    book.assign(TopicPartition::new("t", 0), AssignmentId(2), FROM_THE_GROUP);
    assert_eq!(book.dispatched(&[position(2, 0)]), 0);

    assert_eq!(finish(&mut book, position(1, 0)), Completion::Fenced);
    assert_eq!(
        book.uncommitted(),
        vec![point(0, 2, 0)],
        "the stale completion moved nothing"
    );
    assert_eq!(finish(&mut book, position(2, 0)), Completion::Recorded);
    assert_eq!(finish(&mut book, position(2, 0)), Completion::Unknown);
    assert_eq!(book.uncommitted(), vec![point(0, 2, 1)]);
}

#[test]
fn a_new_assignment_of_a_partition_ends_the_previous_one() {
    let mut book = OffsetBook::default();
    book.assign(TopicPartition::new("t", 0), AssignmentId(1), FROM_THE_GROUP);
    book.assign(TopicPartition::new("t", 0), AssignmentId(2), FROM_THE_GROUP);
    assert_eq!(book.dispatched(&[position(1, 0)]), 1, "fenced");
    assert_eq!(book.partitions().len(), 1);
}

#[test]
fn acknowledgements_for_an_earlier_assignment_are_ignored() {
    let mut book = OffsetBook::default();
    book.assign(TopicPartition::new("t", 0), AssignmentId(2), FROM_THE_GROUP);
    book.dispatched(&[position(2, 4)]);
    finish(&mut book, position(2, 4));
    book.committed(&point(0, 1, 5));
    assert_eq!(book.uncommitted(), vec![point(0, 2, 5)]);
    book.committed(&point(0, 2, 5));
    assert!(book.uncommitted().is_empty());
}

#[test]
fn in_flight_counts_unfinished_messages_over_all_partitions() {
    let mut book = OffsetBook::default();
    book.assign(TopicPartition::new("t", 0), AssignmentId(1), FROM_THE_GROUP);
    book.assign(TopicPartition::new("t", 1), AssignmentId(2), FROM_THE_GROUP);
    book.dispatched(&[position(1, 0), position(1, 1), position(2, 0)]);
    finish(&mut book, position(1, 1));
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
    fn commit_point_never_passes_an_unfinished_or_released_offset_nor_decreases(
        (offsets, order) in dispatch_and_completion_order(),
        interleave in 0usize..200,
        released_one_in in 0usize..20,
    ) {
        let mut book = PartitionOffsets::default();
        let mut unfinished = BTreeSet::new();
        // Given up on purpose: held back like unfinished ones, for good.
        let mut released = BTreeSet::new();
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
            if released_one_in > 0 && index % released_one_in == 0 {
                prop_assert!(book.released(offset));
                released.insert(offset);
            } else {
                prop_assert!(book.finished(offset));
            }
            unfinished.remove(&offset);

            let point = book.commit_point().expect("something was dispatched");
            let lowest = unfinished.first().into_iter().chain(released.first()).min();
            if let Some(&lowest) = lowest {
                prop_assert!(point <= lowest, "commit point {point} passes {lowest}");
            }
            prop_assert!(Some(point) >= last_point, "commit point went back");
            last_point = Some(point);
        }
        let expected = released.first().copied().unwrap_or(offsets[offsets.len() - 1] + 1);
        prop_assert_eq!(book.commit_point(), Some(expected));
        prop_assert_eq!(book.in_flight(), 0);
        prop_assert_eq!(book.released_count(), released.len());
    }
}
