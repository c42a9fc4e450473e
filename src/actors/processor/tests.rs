//! Unit tests of the processor task, on a real actix system and OffsetTracker: a hook waits
//! only for the batch in progress, and a draining processor releases what it is handed.

use std::sync::Mutex;
use std::time::Duration;

use actix::{Actor, Addr};

use super::*;
use crate::actors::messages::{Assigned, Fetched, Hook, Report};
use crate::actors::offset_tracker::OffsetTracker;
use crate::flow::AssignedPartition;
use crate::instruments::GroupInstruments;
use crate::message::Message;
use crate::offsets::AssignmentId;
use crate::routing::OrderingMode;
use crate::work::One;
use crate::{Processor, TopicPartition};

/// Records the offsets it processes.
struct Recording(Arc<Mutex<Vec<i64>>>);

impl Processor for Recording {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(message.offset());
        Ok(())
    }
}

/// A batch processor whose work never awaits: each batch blocks for 20 ms.
struct Blocking(Arc<Mutex<Vec<&'static str>>>);

impl crate::BatchProcessor for Blocking {
    const PARTITION_HOOKS: bool = true;

    async fn process_batch(&mut self, _: &[Message]) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.lock().unwrap().push("batch");
        Ok(())
    }

    async fn on_revoked(&mut self, _: &[TopicPartition]) -> anyhow::Result<()> {
        self.0.lock().unwrap().push("revoked");
        Ok(())
    }
}

/// A processor task of `work`'s making, with the tracker it reports to, and a partition
/// of `count` messages it was handed, known to the tracker.
async fn started<W: Work>(
    work: impl Fn() -> W + Send + Sync + 'static,
    batch: BatchLimit,
    count: i64,
) -> (
    ProcessorHandle,
    Addr<OffsetTracker>,
    Arc<AssignedPartition>,
    Vec<Message>,
) {
    let metrics = Arc::new(SystemMetrics::new("processor-test"));
    let stop = StopHandle::new();
    let tracker =
        OffsetTracker::new(Duration::from_secs(60), None, metrics.clone(), stop.clone()).start();
    let shared = ProcessorShared {
        factory: Arc::new(work),
        tracker: tracker.clone().recipient(),
        stop,
        abandon: Abandon::default(),
        metrics,
        policy: FailurePolicy::default(),
        dead_letters: None,
        prefetch: PrefetchLimit {
            messages: 100,
            work: Duration::from_secs(10),
        },
        batch,
        fetcher_wakeup: Arc::new(Notify::new()),
    };
    // A thread of its own, as in a system: its batches may block it.
    let (processor, started) = spawn(0, shared, &actix::Arbiter::new().handle());
    started.await.unwrap().unwrap();
    let partition = TopicPartition::new("t", 0);
    let assigned = AssignedPartition::new(
        partition.clone(),
        AssignmentId(1),
        GroupInstruments::new("processor-test").partition(&partition),
        Default::default(),
    );
    tracker
        .send(Assigned(vec![(
            assigned.clone(),
            crate::offsets::Start::Committed {
                inherited: Vec::new(),
            },
        )]))
        .await
        .unwrap();
    let messages: Vec<Message> = (0..count)
        .map(|offset| {
            let ordering = OrderingMode::PerPartition;
            Message::made(
                assigned.clone(),
                ordering,
                offset,
                None,
                Some(b"x"),
                None,
                None,
            )
        })
        .collect();
    tracker
        .send(Fetched {
            positions: messages.iter().map(Message::position).collect(),
            finished_earlier: Vec::new(),
        })
        .await
        .unwrap();
    (processor, tracker, assigned, messages)
}

#[test]
fn a_processor_whose_batches_never_wait_runs_a_hook_after_the_batch_in_progress() {
    let system = actix::System::new();
    system.block_on(async {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recording = events.clone();
        let one_at_a_time = BatchLimit {
            messages: 1,
            bytes: usize::MAX,
            linger: Duration::ZERO,
        };
        let (processor, _tracker, _, messages) = started(
            move || crate::work::Batches(Blocking(recording.clone())),
            one_at_a_time,
            40,
        )
        .await;
        processor.hand(messages);
        while !events.lock().unwrap().contains(&"batch") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (reply, answer) = std::sync::mpsc::channel();
        let partitions = vec![TopicPartition::new("t", 0)];
        assert!(processor.hook(Hook::Revoked { partitions, reply }));
        while answer.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let events = events.lock().unwrap().clone();
        let before = events.iter().position(|e| *e == "revoked").unwrap();
        assert!(
            before <= 3,
            "the hook waited for {before} batches: {events:?}"
        );
        processor.drain().await.unwrap();
        processor.stop(Duration::from_secs(1)).await.unwrap();
    });
}

#[test]
fn a_draining_processor_refuses_what_it_is_handed_and_releases_it() {
    let system = actix::System::new();
    system.block_on(async {
        let processed = Arc::new(Mutex::new(Vec::new()));
        let recording = processed.clone();
        let (processor, tracker, assigned, messages) = started(
            move || One(Recording(recording.clone())),
            BatchLimit::ONE,
            3,
        )
        .await;
        processor.drain().await.unwrap();
        // A hand-out after the drain (a Fetcher late to stop fetching).
        processor.hand(messages);
        processor.drain().await.unwrap();
        assert!(
            processed.lock().unwrap().is_empty(),
            "a draining processor ran {:?}",
            processed.lock().unwrap()
        );
        assert_eq!(assigned.in_flight.load().messages, 0);
        let report = tracker.send(Report).await.unwrap();
        assert_eq!(report.released, 3, "{report:?}");
        processor.stop(Duration::from_secs(1)).await.unwrap();
    });
}
