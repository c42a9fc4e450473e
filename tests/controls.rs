//! Controls from processing code and from the application, under a stream: a processor
//! pauses its partition for a while (the others go on, nothing is lost or repeated, the
//! pause shows in the metrics), seeks its partition backwards and forwards (checked against a
//! ledger, message by message), and the application pauses and resumes the whole system.
//! (A seek to a time needs a real broker: librdkafka's mock cluster answers every lookup by
//! time with "none"; `tests/real_broker.rs` has it.)

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::{ConsumerSystem, Message, Processor};
use support::controls::{Jump, Stream, run_seeks, split_into_runs};
use support::{Audit, Cluster, Ledger, SCENARIO_TIMEOUT, audit, group, wait_until};

/// When each message was processed, and the instant a processor asked for its pause.
#[derive(Clone, Default)]
struct Timeline {
    processed: Arc<Mutex<Vec<(i32, i64, Instant)>>>,
    paused_at: Arc<Mutex<Option<Instant>>>,
}

/// Records each message; pauses partition 0 for `pause` at its first message from offset 50.
struct Pausing {
    ledger: Ledger,
    timeline: Timeline,
    pause: Duration,
}

impl Processor for Pausing {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        self.ledger.record(partition, offset);
        let now = Instant::now();
        self.timeline
            .processed
            .lock()
            .unwrap()
            .push((partition, offset, now));
        let mut paused_at = self.timeline.paused_at.lock().unwrap();
        if partition == 0 && offset >= 50 && paused_at.is_none() {
            message.partition_control().pause_for(self.pause)?;
            *paused_at = Some(now);
        }
        Ok(())
    }
}

#[test]
fn a_processor_pausing_its_partition_holds_only_that_partition_for_the_time_and_loses_nothing() {
    let cluster = Cluster::start();
    let topic = cluster.topic("pause", 4);
    cluster.produce(&topic, 400);
    let group = group("pause");
    let ledger = Ledger::default();
    let timeline = Timeline::default();
    // A processor holds at most 5 messages beyond the one it runs.
    let held = 6;
    let config = cluster
        .config(&topic, &group)
        .processors(4)
        .prefetch(held - 1, Duration::from_millis(10))
        .build()
        .unwrap();
    let pause = Duration::from_secs(2);
    let (factory_ledger, factory_timeline) = (ledger.clone(), timeline.clone());
    let system = ConsumerSystem::spawn(config, move || Pausing {
        ledger: factory_ledger.clone(),
        timeline: factory_timeline.clone(),
        pause,
    })
    .unwrap();
    let stream = Stream::start(&cluster, &topic);
    wait_until(
        "the partition is paused on request",
        SCENARIO_TIMEOUT,
        || system.metrics().paused_on_request == 1,
    );
    // From here on, only what its processor held may run.
    let observed = Instant::now();
    wait_until("the pause is over", SCENARIO_TIMEOUT, || {
        system.metrics().paused_on_request == 0
    });
    // The stream goes on a little after the pause, then stops.
    let resumed = Instant::now();
    wait_until("the stream ran past the pause", SCENARIO_TIMEOUT, || {
        resumed.elapsed() > Duration::from_millis(500)
    });
    let streamed = stream.stop();
    let end_offsets = cluster.end_offsets(&topic);
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();

    assert!(report.is_clean(), "{report}");
    assert!(streamed > 0);
    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    let paused_at = timeline
        .paused_at
        .lock()
        .unwrap()
        .expect("a pause was asked for");
    let processed = timeline.processed.lock().unwrap().clone();
    // Once the pause was carried out (seen in the metrics) and until its end (less a margin
    // for the Fetcher's round), partition 0 ran no more than what its processor held; the
    // others went on.
    let during = |partition: i32| {
        processed
            .iter()
            .filter(|(p, _, at)| {
                *p == partition && *at > observed && *at < paused_at + pause - POLL_MARGIN
            })
            .count()
    };
    assert!(
        during(0) <= held,
        "partition 0 ran {} messages while paused",
        during(0)
    );
    for partition in 1..4 {
        assert!(
            during(partition) > 0,
            "partition {partition} stood still during partition 0's pause"
        );
    }
    // Partition 0 went on after the pause, in order.
    let partition_0: Vec<i64> = processed
        .iter()
        .filter(|(p, _, _)| *p == 0)
        .map(|(_, o, _)| *o)
        .collect();
    assert!(partition_0.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(
        processed
            .iter()
            .any(|(p, _, at)| *p == 0 && *at >= paused_at + pause),
        "partition 0 never resumed"
    );
}

/// The Fetcher's round, at least every 100 ms: a timed pause ends within one.
const POLL_MARGIN: Duration = Duration::from_millis(200);

#[test]
fn seeks_backwards_and_forwards_process_exactly_what_they_say() {
    let cluster = Cluster::start();
    let held = 6;
    let (ledger, end) = run_seeks(
        &cluster,
        "seek",
        held,
        vec![(100, Jump::To(40)), (200, Jump::To(260))],
    );
    // A seek cuts at once: nothing after 100 ran before the replay from 40, nothing after 200
    // before 260; the skipped offsets never ran.
    let offsets: Vec<i64> = ledger.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        split_into_runs(&offsets),
        [(0, 100), (40, 200), (260, end - 1)]
    );
}

#[test]
fn a_seek_past_the_end_goes_to_the_end_and_skips_nothing_produced_later() {
    let cluster = Cluster::start();
    let (ledger, end) = run_seeks(&cluster, "seek-end", 6, vec![(100, Jump::To(1_000_000))]);
    // To the end as librdkafka last saw it: nothing produced after it was skipped, and the
    // group committed the end, not the offset asked for.
    let offsets: Vec<i64> = ledger.iter().map(|(o, _)| *o).collect();
    let runs = split_into_runs(&offsets);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0], (0, 100));
    assert!(runs[1].0 > 100 && runs[1].1 == end - 1, "{runs:?}");
}

#[test]
fn the_application_pauses_and_resumes_the_whole_system_and_nothing_is_lost() {
    let cluster = Cluster::start();
    let topic = cluster.topic("system-pause", 3);
    // A backlog, so that the paused partitions hold work while they wait.
    cluster.produce(&topic, 3000);
    let group = group("system-pause");
    let ledger = Ledger::default();
    let held = 6;
    let processors = 3;
    let config = cluster
        .config(&topic, &group)
        .processors(processors)
        .prefetch(held - 1, Duration::from_millis(10))
        // Paused on purpose is not stalled, however long.
        .stall_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let factory_ledger = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || {
        let mut recorder = support::Recorder::new(&factory_ledger);
        recorder.delay_ms = Some(1..3);
        recorder
    })
    .unwrap();
    let stream = Stream::start(&cluster, &topic);
    wait_until("some messages were processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 100
    });
    system.pause().unwrap();
    wait_until("every partition is paused", SCENARIO_TIMEOUT, || {
        system.metrics().paused_on_request == 3
    });
    // What the processors held when the pause came runs; nothing more, while the stream goes
    // on, over two stall checks (one a second) past the stall timeout.
    let at_pause = ledger.len();
    let since = Instant::now();
    wait_until(
        "two seconds of the stream went by",
        SCENARIO_TIMEOUT,
        || since.elapsed() > Duration::from_secs(2),
    );
    let during = ledger.len() - at_pause;
    let paused = system.metrics();
    assert!(
        paused.in_flight_messages > 0,
        "the paused partitions hold work"
    );
    assert_eq!(paused.stalls, 0, "a pause on request reported as a stall");
    assert!(
        during <= held * processors,
        "{during} messages ran while the system was paused"
    );
    system.resume().unwrap();
    wait_until("the pause is over", SCENARIO_TIMEOUT, || {
        system.metrics().paused_on_request == 0
    });
    stream.stop();
    let end_offsets = cluster.end_offsets(&topic);
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}
