//! Unit tests of the routes, on records made here (no Kafka): handing out in offset order
//! within credit and the look-ahead, pausing at the limits and the commit window, resuming.

use super::*;
use rdkafka::message::OwnedHeaders;

use crate::flow::InFlightLimit;

/// A record as a test makes it.
struct TestRecord {
    topic: &'static str,
    topic_id: usize,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    error: Option<RDKafkaErrorCode>,
}

impl Record for TestRecord {
    fn topic(&self) -> &str {
        self.topic
    }
    fn topic_id(&self) -> usize {
        self.topic_id
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn payload(&self) -> Option<&[u8]> {
        Some(&self.payload)
    }
    fn headers(&self) -> Option<OwnedHeaders> {
        None
    }
    fn timestamp(&self) -> Option<i64> {
        None
    }
    fn error(&self) -> Option<RDKafkaErrorCode> {
        self.error
    }
}

fn record(partition: i32, offset: i64, key: &str) -> TestRecord {
    TestRecord {
        topic: "t",
        topic_id: 0,
        partition,
        offset,
        key: Some(key.as_bytes().to_vec()),
        payload: vec![0; 10],
        error: None,
    }
}

fn limit(messages: usize) -> InFlightLimit {
    InFlightLimit {
        messages,
        bytes: usize::MAX,
    }
}

fn routes(ordering: OrderingMode, processors: usize, partitions: i32) -> Routes {
    routes_within(ordering, processors, partitions, (10, 15))
}

/// Routes with (per partition, total) message limits.
fn routes_within(
    ordering: OrderingMode,
    processors: usize,
    partitions: i32,
    (partition_limit, total_limit): (usize, usize),
) -> Routes {
    let mut routes = Routes::new(
        Router::new(processors),
        FlowSettings {
            ordering,
            partition_limit: limit(partition_limit),
            total_limit: limit(total_limit),
            read_headers: true,
        },
    );
    let unrouted = routes.assign(
        (0..partitions)
            .map(|p| {
                let partition = TopicPartition::new("t", p);
                (
                    AssignedPartition::new(
                        partition,
                        AssignmentId(p as u64 + 1),
                        Default::default(),
                        Default::default(),
                    ),
                    Vec::new(),
                )
            })
            .collect(),
        false,
    );
    assert!(unrouted.is_empty(), "one route reads every topic");
    routes
}

fn offsets(batch: &[Message]) -> Vec<(i32, i64)> {
    batch.iter().map(|m| (m.partition(), m.offset())).collect()
}

#[test]
fn a_partition_pauses_at_its_limit_and_resumes_at_half_from_the_first_record_not_taken() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    let taken = routes.take((0..12).map(|o| record(0, o, "k")).collect());
    assert_eq!(taken.positions.len(), 10, "the limit's worth taken");
    assert_eq!(taken.to_pause, [TopicPartition::new("t", 0)]);
    assert_eq!(routes.paused(), 1);
    // A processor with room for 6 takes 6; the partition is still above half.
    let batches = routes.hand_out(&mut [6]);
    assert_eq!(batches[0].len(), 6);
    assert!(routes.resumable().is_empty());
    drop(batches);
    assert_eq!(
        routes.resumable(),
        [(TopicPartition::new("t", 0), Some(10))],
        "resumes at half, from offset 10"
    );
}

#[test]
fn the_total_limit_pauses_every_partition() {
    let mut routes = routes(OrderingMode::PerPartition, 2, 2);
    let records = (0..8)
        .map(|o| record(0, o, "k"))
        .chain((0..8).map(|o| record(1, o, "k")))
        .collect();
    let taken = routes.take(records);
    assert_eq!(taken.positions.len(), 15);
    assert_eq!(routes.paused(), 2);
    assert_eq!(routes.total().messages, 15);
}

/// Two keys that go to different processors of `routes`.
fn two_keys(routes: &Routes) -> (String, String) {
    let key_a = "a".to_owned();
    let processor_a = Router::processor_for_key(&(0..routes.router.pool_size()), key_a.as_bytes());
    let key_b = (0..100)
        .map(|k| format!("b{k}"))
        .find(|k| {
            Router::processor_for_key(&(0..routes.router.pool_size()), k.as_bytes()) != processor_a
        })
        .unwrap();
    (key_a, key_b)
}

#[test]
fn per_key_a_full_processor_holds_up_only_its_own_keys() {
    let mut routes = routes(OrderingMode::PerKey, 2, 1);
    let (key_a, key_b) = two_keys(&routes);
    let processor_a = Router::processor_for_key(&(0..routes.router.pool_size()), key_a.as_bytes());
    let records = vec![
        record(0, 0, &key_a),
        record(0, 1, &key_a),
        record(0, 2, &key_b),
        record(0, 3, &key_a),
        record(0, 4, &key_b),
    ];
    routes.take(records);
    let mut credits = [0, 0];
    credits[processor_a] = 1;
    credits[1 - processor_a] = 5;
    let batches = routes.hand_out(&mut credits);
    // Offset 1 waits for processor A, and so does offset 3 behind it; B's keys go on.
    assert_eq!(offsets(&batches[processor_a]), [(0, 0)]);
    assert_eq!(offsets(&batches[1 - processor_a]), [(0, 2), (0, 4)]);
    assert_eq!(routes.waiting(), 2);
    // A has room again: its messages follow, in offset order.
    let mut credits = [0, 0];
    credits[processor_a] = 5;
    let batches = routes.hand_out(&mut credits);
    assert_eq!(offsets(&batches[processor_a]), [(0, 1), (0, 3)]);
    assert_eq!(routes.waiting(), 0);
}

#[test]
fn per_key_looks_no_further_than_the_look_ahead() {
    let mut routes = routes_within(OrderingMode::PerKey, 2, 1, (10_000, 10_000));
    let (key_a, key_b) = two_keys(&routes);
    let processor_a = Router::processor_for_key(&(0..routes.router.pool_size()), key_a.as_bytes());
    let total = LOOK_AHEAD as i64 + 10;
    let records = std::iter::once(record(0, 0, &key_a))
        .chain((1..total).map(|o| record(0, o, &key_b)))
        .collect();
    routes.take(records);
    let mut credits = [0, 0];
    credits[1 - processor_a] = usize::MAX;
    let batches = routes.hand_out(&mut credits);
    // Offset 0 waits: only the look-ahead's worth behind it goes out.
    let handed = offsets(&batches[1 - processor_a]);
    assert_eq!(handed.len(), LOOK_AHEAD - 1);
    assert_eq!(handed.last(), Some(&(0, LOOK_AHEAD as i64 - 1)));
    assert_eq!(routes.waiting(), total as usize - (LOOK_AHEAD - 1));
    let dropped: Vec<i64> = routes.drop_backlogs().iter().map(|p| p.offset).collect();
    assert_eq!(dropped[0], 0);
    assert_eq!(dropped[1], LOOK_AHEAD as i64);
}

#[test]
fn per_partition_a_full_processor_holds_up_its_partition() {
    let mut routes = routes(OrderingMode::PerPartition, 2, 1);
    routes.take((0..4).map(|o| record(0, o, "k")).collect());
    let processor = routes.table[0].processor;
    let mut credits = [5, 5];
    credits[processor] = 1;
    let batches = routes.hand_out(&mut credits);
    assert_eq!(offsets(&batches[processor]), [(0, 0)]);
    assert!(batches[1 - processor].is_empty());
    assert_eq!(routes.waiting(), 3);
}

#[test]
fn unordered_messages_go_to_any_processor_with_room() {
    let mut routes = routes(OrderingMode::Unordered, 3, 1);
    routes.take((0..6).map(|o| record(0, o, "k")).collect());
    let batches = routes.hand_out(&mut [1, 0, 4]);
    assert_eq!(offsets(&batches[0]), [(0, 0)]);
    assert_eq!(offsets(&batches[2]), [(0, 1), (0, 2), (0, 3), (0, 4)]);
    assert_eq!(routes.waiting(), 1);
}

#[test]
fn a_revoked_partition_drops_its_backlog_and_counts_until_its_messages_are_done() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    routes.take((0..4).map(|o| record(0, o, "k")).collect());
    let held = routes.hand_out(&mut [2]);
    let revoked = routes.revoke(|p| p.partition() == 0);
    assert_eq!(revoked.len(), 1);
    assert_eq!(routes.waiting(), 0);
    assert_eq!(
        revoked[0].in_flight.load().messages,
        2,
        "what processors hold"
    );
    assert_eq!(routes.total().messages, 2);
    drop(held);
    assert_eq!(routes.total().messages, 0);
    assert!(routes.committable(&TopicPartition::new("t", 0)).is_none());
}

#[test]
fn a_stop_drops_the_backlogs_and_reports_what_it_dropped() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    routes.take((0..4).map(|o| record(0, o, "k")).collect());
    let held = routes.hand_out(&mut [1]);
    let dropped: Vec<i64> = routes.drop_backlogs().iter().map(|p| p.offset).collect();
    assert_eq!(dropped, [1, 2, 3], "a suffix of the partition");
    assert_eq!(offsets(&held[0]), [(0, 0)]);
    assert_eq!(routes.total().messages, 1);
}

#[test]
fn messages_an_earlier_reader_finished_are_skipped_in_order() {
    let mut routes = routes(OrderingMode::PerKey, 1, 0);
    let assigned = AssignedPartition::new(
        TopicPartition::new("t", 0),
        AssignmentId(9),
        Default::default(),
        Default::default(),
    );
    assert!(
        routes
            .assign(vec![(assigned, vec![11, 12])], false)
            .is_empty()
    );
    let taken = routes.take((10..14).map(|o| record(0, o, "k")).collect());
    let offsets_of =
        |positions: &[Position]| -> Vec<i64> { positions.iter().map(|p| p.offset).collect() };
    assert_eq!(offsets_of(&taken.positions), [10, 11, 12, 13]);
    assert_eq!(offsets_of(&taken.finished_earlier), [11, 12]);
    let batches = routes.hand_out(&mut [10]);
    assert_eq!(offsets(&batches[0]), [(0, 10), (0, 13)]);
}

#[test]
fn a_partition_assigned_again_never_resumes_where_its_earlier_assignment_paused() {
    // The window the old Fetcher had: paused at offset 10 under one assignment, revoked and
    // assigned again (from its committed offset, say 3) before the next round. A resume at
    // 10 would skip 3..10, and commit past them.
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    routes.take((0..12).map(|o| record(0, o, "k")).collect());
    assert_eq!(routes.paused(), 1);
    let revoked = routes.revoke(|_| true);
    let again = AssignedPartition::new(
        TopicPartition::new("t", 0),
        AssignmentId(2),
        Default::default(),
        Default::default(),
    );
    assert!(routes.assign(vec![(again, Vec::new())], false).is_empty());
    drop(revoked);
    assert_eq!(routes.paused(), 0, "a new assignment starts unpaused");
    assert!(
        routes.resumable().is_empty(),
        "nothing to resume, and no position to seek to"
    );
    let taken = routes.take((3..5).map(|o| record(0, o, "k")).collect());
    assert_eq!(
        taken.positions.len(),
        2,
        "taken from where librdkafka starts it"
    );
}

#[test]
fn errors_in_place_of_records_are_returned_not_taken() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    let mut broken = record(0, 1, "k");
    broken.error = Some(RDKafkaErrorCode::BadCompression);
    let taken = routes.take(vec![record(0, 0, "k"), broken]);
    assert_eq!(taken.positions.len(), 1);
    assert_eq!(
        taken.errors,
        [(
            TopicPartition::new("t", 0),
            1,
            RDKafkaErrorCode::BadCompression
        )]
    );
}

#[test]
fn nothing_past_an_unreadable_record_is_taken() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    let mut broken = record(0, 1, "k");
    broken.error = Some(RDKafkaErrorCode::BadCompression);
    let taken = routes.take(vec![
        record(0, 0, "k"),
        broken,
        record(0, 2, "k"),
        record(1, 0, "k"),
    ]);
    let offsets_of =
        |positions: &[Position]| -> Vec<i64> { positions.iter().map(|p| p.offset).collect() };
    assert_eq!(
        offsets_of(&taken.positions),
        [0, 0],
        "partition 0 stops at the bad record; partition 1 goes on"
    );
    // The tracker hears of offset 0 only: the commit point stays at the bad record.
    let mut book = crate::offsets::OffsetBook::default();
    let from_the_group = crate::offsets::Start::Committed {
        inherited: Vec::new(),
    };
    book.assign(TopicPartition::new("t", 0), AssignmentId(1), from_the_group);
    book.dispatched(&taken.positions[..1]);
    book.finished(&taken.positions[..1], |_, _| {});
    assert_eq!(book.uncommitted()[0].offset, 1);
    // Nor is anything of it taken in later rounds.
    let taken = routes.take(vec![record(0, 3, "k")]);
    assert!(taken.positions.is_empty());
    assert!(routes.resumable().is_empty(), "it stays paused");
}

#[test]
fn a_partition_takes_nothing_a_commit_window_past_its_commit_point() {
    let mut routes = routes_within(OrderingMode::Unordered, 1, 1, (usize::MAX, usize::MAX));
    let window = COMMIT_WINDOW as usize;
    let taken = routes.take((0..=COMMIT_WINDOW).map(|o| record(0, o, "k")).collect());
    assert_eq!(
        taken.positions.len(),
        window,
        "offset {COMMIT_WINDOW} is not taken"
    );
    assert_eq!(taken.to_pause, [TopicPartition::new("t", 0)]);
    // Every message but the first finished (offset 0 is stuck): the commit point has
    // not moved, so the partition stays paused, whatever its in-flight count.
    let mut handed = routes.hand_out(&mut [usize::MAX]).remove(0);
    let stuck = handed.remove(0);
    drop(handed);
    routes.table[0].assigned.set_commit_floor(0);
    assert!(routes.resumable().is_empty());
    // The commit point moves, but not yet by half the window.
    routes.table[0]
        .assigned
        .set_commit_floor(COMMIT_WINDOW / 2 - 1);
    assert!(routes.resumable().is_empty());
    drop(stuck);
    routes.table[0].assigned.set_commit_floor(COMMIT_WINDOW / 2);
    assert_eq!(
        routes.resumable(),
        [(TopicPartition::new("t", 0), Some(COMMIT_WINDOW))]
    );
}

#[test]
fn a_partition_paused_at_its_in_flight_limit_resumes_however_far_its_commit_point_lags() {
    let mut routes = routes_within(OrderingMode::Unordered, 1, 1, (10, 100));
    routes.take((0..10).map(|o| record(0, o, "k")).collect());
    assert_eq!(routes.paused(), 1);
    routes.table[0].assigned.set_commit_floor(0);
    drop(routes.hand_out(&mut [usize::MAX]));
    assert_eq!(
        routes.resumable(),
        [(TopicPartition::new("t", 0), Some(10))]
    );
}

#[test]
fn partitions_assigned_paused_are_never_resumed_by_flow_control() {
    // An on_assigned hook failed: their positions are unknown, so they stay paused.
    let mut routes = routes(OrderingMode::PerPartition, 1, 0);
    let assigned = AssignedPartition::new(
        TopicPartition::new("t", 0),
        AssignmentId(1),
        Default::default(),
        Default::default(),
    );
    assert!(routes.assign(vec![(assigned, Vec::new())], true).is_empty());
    assert_eq!(routes.paused(), 1);
    assert!(routes.resumable().is_empty());
}

#[test]
fn a_message_waiting_in_a_backlog_is_located() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    let taken = routes.take((0..3).map(|o| record(0, o, "k")).collect());
    let sighting = routes.locate(taken.positions[2], |_| 7);
    assert_eq!(
        sighting,
        Some(Sighting::InFetcher {
            processor: Some(0),
            processor_queued: 7,
            ahead: 2
        })
    );
}

#[test]
fn records_are_routed_by_their_topics_id_and_never_to_another_topics_partition() {
    let mut routes = routes(OrderingMode::PerPartition, 2, 2);
    let of = |topic: &'static str, topic_id: usize, partition: i32, offset: i64| TestRecord {
        topic,
        topic_id,
        ..record(partition, offset, "k")
    };
    // Topic u is not assigned: its partition 0 must not be taken for t's, whatever the route
    // learnt from the record before.
    let taken = routes.take(vec![
        of("t", 1, 0, 0),
        of("u", 2, 0, 0),
        of("t", 1, 1, 0),
        of("t", 1, 0, 1),
        of("u", 2, 0, 1),
        of("t", 1, 1, 1),
    ]);
    let taken: Vec<(AssignmentId, i64)> = taken
        .positions
        .iter()
        .map(|p| (p.assignment, p.offset))
        .collect();
    let (t0, t1) = (
        routes.committable(&TopicPartition::new("t", 0)).unwrap(),
        routes.committable(&TopicPartition::new("t", 1)).unwrap(),
    );
    assert_eq!(taken, vec![(t0, 0), (t1, 0), (t0, 1), (t1, 1)]);
}

#[test]
fn a_partition_paused_on_request_takes_and_hands_out_nothing_until_resumed_where_it_stopped() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    routes.take((0..3).map(|o| record(0, o, "k")).collect());
    let p0 = TopicPartition::new("t", 0);
    assert_eq!(
        routes.pause_on_request(AssignmentId(1), None),
        Some(Some(p0.clone()))
    );
    assert_eq!(routes.paused_on_request(), 1);
    assert!(routes.table[0].assigned.is_paused_on_request());
    // Its backlog stays, and what librdkafka still returns is left for the resume.
    let taken = routes.take(vec![record(0, 3, "k"), record(1, 0, "k")]);
    assert_eq!(taken.positions.len(), 1, "only partition 1's record");
    let batches = routes.hand_out(&mut [10]);
    assert_eq!(offsets(&batches[0]), [(1, 0)]);
    // Flow control does not resume it.
    assert!(routes.resumable().is_empty());
    // A pause asked for again changes nothing on the consumer.
    assert_eq!(routes.pause_on_request(AssignmentId(1), None), Some(None));
    // A lineage not held is refused.
    assert_eq!(routes.resume_on_request(AssignmentId(7)), None);
    assert_eq!(
        routes.resume_on_request(AssignmentId(1)),
        Some(Some((p0, Some(3)))),
        "resumes at the first record not taken"
    );
    assert!(!routes.table[0].assigned.is_paused_on_request());
    let batches = routes.hand_out(&mut [10]);
    assert_eq!(offsets(&batches[0]), [(0, 0), (0, 1), (0, 2)]);
}

#[test]
fn a_resume_asked_for_at_the_in_flight_limit_waits_for_flow_control() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    routes.take((0..12).map(|o| record(0, o, "k")).collect());
    assert_eq!(routes.paused(), 1, "at its limit");
    assert_eq!(routes.pause_on_request(AssignmentId(1), None), Some(None));
    assert_eq!(
        routes.resume_on_request(AssignmentId(1)),
        Some(None),
        "still at its limit: paused for flow control"
    );
    assert_eq!(routes.paused_on_request(), 0);
    let batches = routes.hand_out(&mut [10]);
    drop(batches);
    assert_eq!(
        routes.resumable(),
        [(TopicPartition::new("t", 0), Some(10))]
    );
}

#[test]
fn backlogs_paused_on_request_do_not_hold_the_other_partitions_at_the_total_limit() {
    // Partition limit 10, total 15.
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    routes.take((0..8).map(|o| record(0, o, "k")).collect());
    routes.pause_on_request(AssignmentId(1), None);
    // Partition 1 takes up to its own limit: the 8 waiting for partition 0 do not count.
    let taken = routes.take((0..10).map(|o| record(1, o, "k")).collect());
    assert_eq!(taken.positions.len(), 10);
    assert_eq!(taken.to_pause, [TopicPartition::new("t", 1)]);
    let batches = routes.hand_out(&mut [20]);
    assert_eq!(batches[0].len(), 10, "only partition 1's");
    drop(batches);
    // Drained, partition 1 resumes, though partition 0 still holds 8 of the 15.
    assert_eq!(
        routes.resumable(),
        [(TopicPartition::new("t", 1), Some(10))]
    );
}

#[test]
fn a_pause_for_a_while_ends_when_its_time_came_and_not_while_the_system_is_paused() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 2);
    let now = Instant::now();
    let later = now + std::time::Duration::from_secs(2);
    routes.pause_on_request(AssignmentId(1), Some(later));
    assert!(routes.requests_due(now).is_empty());
    assert_eq!(
        routes.requests_due(later),
        [(TopicPartition::new("t", 0), None)]
    );
    assert_eq!(routes.paused_on_request(), 0);

    // The system's pause holds every partition, those assigned later too, and outlasts the
    // end of a partition's own pause; its end keeps a partition's own pause.
    routes.pause_on_request(AssignmentId(1), Some(later));
    assert_eq!(routes.pause_system(), [TopicPartition::new("t", 1)]);
    assert!(routes.requests_due(later).is_empty());
    let late = AssignedPartition::new(
        TopicPartition::new("t", 2),
        AssignmentId(3),
        Default::default(),
        Default::default(),
    );
    assert!(routes.assign(vec![(late, Vec::new())], false).is_empty());
    assert_eq!(routes.paused_on_request(), 3);
    assert!(
        routes
            .table
            .iter()
            .all(|r| r.assigned.is_paused_on_request())
    );
    routes.pause_on_request(AssignmentId(2), None);
    let resumed: Vec<i32> = routes
        .resume_system()
        .into_iter()
        .map(|(p, _)| p.partition())
        .collect();
    assert_eq!(
        resumed,
        [0, 2],
        "partition 1 was paused by its own request too"
    );
    // A stop holds every partition, whatever was asked for.
    routes.pause_all();
    assert_eq!(routes.resume_on_request(AssignmentId(2)), Some(None));
    assert_eq!(routes.paused_on_request(), 0);
}

#[test]
fn a_seek_reassigns_the_partition_dropping_its_backlog_and_keeping_its_pause() {
    let mut routes = routes(OrderingMode::PerPartition, 1, 1);
    let p0 = TopicPartition::new("t", 0);
    let taken = routes.take((0..5).map(|o| record(0, o, "k")).collect());
    assert_eq!(taken.positions.len(), 5);
    let handed = routes.hand_out(&mut [2]);
    assert_eq!(routes.waiting(), 3);
    // Not under a lineage that is not held.
    assert!(
        routes
            .reassign(AssignmentId(9), AssignmentId(2), 1)
            .is_none()
    );
    let sought = routes
        .reassign(AssignmentId(1), AssignmentId(2), 1)
        .unwrap();
    assert_eq!(sought.ended.assignment, AssignmentId(1));
    assert_eq!(sought.assigned.assignment, AssignmentId(2));
    assert_eq!(
        sought.assigned.lineage,
        AssignmentId(1),
        "the lineage goes on"
    );
    assert!(!sought.paused);
    assert_eq!(routes.waiting(), 0, "the backlog is dropped");
    assert_eq!(routes.committable(&p0), Some(AssignmentId(2)));
    // What the processors hold of the ended assignment counts until it is done with.
    assert_eq!(routes.total().messages, 2);
    drop(handed);
    assert_eq!(routes.total().messages, 0);
    // Read again from the offset sought, under the new assignment.
    let taken = routes.take((1..3).map(|o| record(0, o, "k")).collect());
    let positions: Vec<(AssignmentId, i64)> = taken
        .positions
        .iter()
        .map(|p| (p.assignment, p.offset))
        .collect();
    assert_eq!(positions, [(AssignmentId(2), 1), (AssignmentId(2), 2)]);

    // A pause asked for stays through a seek, and the handle of the first assignment still
    // resumes it, at the offset sought.
    assert_eq!(
        routes.pause_on_request(AssignmentId(1), None),
        Some(Some(p0.clone()))
    );
    let again = routes
        .reassign(AssignmentId(1), AssignmentId(3), 40)
        .unwrap();
    assert!(again.paused);
    assert!(again.assigned.is_paused_on_request());
    assert_eq!(
        routes.resume_on_request(AssignmentId(1)),
        Some(Some((p0.clone(), Some(40))))
    );
    // While a seek is under way (the caller fenced the assignment), nothing is committed.
    again.assigned.fence();
    assert_eq!(routes.committable(&p0), None);
}

#[test]
fn each_partition_goes_to_its_routes_processors_and_a_topic_no_route_reads_is_held() {
    use crate::routing::{PatternMatch, Pool, Subscription, TopicMatcher};
    let topics = |names: &[&str]| {
        Subscription::Topics(
            names
                .iter()
                .map(|n| TopicMatcher::parse(n, PatternMatch::Search).unwrap())
                .collect(),
        )
    };
    let router = Router::with_pools(vec![
        Pool::new(topics(&["t"]), 2, true),
        Pool::new(topics(&["^u.*"]), 1, false),
    ]);
    let mut routes = Routes::new(
        router,
        FlowSettings {
            ordering: OrderingMode::Unordered,
            partition_limit: limit(100),
            total_limit: limit(100),
            read_headers: true,
        },
    );
    let assigned = |topic: &str, id| {
        (
            AssignedPartition::new(
                TopicPartition::new(topic, 0),
                AssignmentId(id),
                Default::default(),
                Default::default(),
            ),
            Vec::new(),
        )
    };
    let unrouted = routes.assign(
        vec![assigned("t", 1), assigned("u1", 2), assigned("x", 3)],
        false,
    );
    assert_eq!(unrouted, [TopicPartition::new("x", 0)]);
    // Hooks run on the processors of the route that wants them, and no other.
    assert_eq!(
        routes.hook_processors_of(&TopicPartition::new("t", 0)),
        [0, 1]
    );
    assert!(
        routes
            .hook_processors_of(&TopicPartition::new("u1", 0))
            .is_empty()
    );
    let mut records: Vec<TestRecord> = (0..6).map(|o| record(0, o, "k")).collect();
    records.extend((0..3).map(|o| TestRecord {
        topic: "u1",
        ..record(0, o, "k")
    }));
    records.extend((0..3).map(|o| TestRecord {
        topic: "x",
        ..record(0, o, "k")
    }));
    let taken = routes.take(records);
    assert_eq!(
        taken.positions.len(),
        9,
        "nothing of the topic no route reads"
    );
    // Unordered: any processor of the route, never another route's.
    let batches = routes.hand_out(&mut [10, 10, 10]);
    let topics_of = |batch: &[Message]| -> Vec<String> {
        let mut topics: Vec<String> = batch.iter().map(|m| m.topic().to_owned()).collect();
        topics.dedup();
        topics
    };
    assert_eq!(batches[0].len() + batches[1].len(), 6);
    assert!(topics_of(&batches[0]).iter().all(|t| t == "t"));
    assert!(topics_of(&batches[1]).iter().all(|t| t == "t"));
    assert_eq!(topics_of(&batches[2]), ["u1"]);
}
