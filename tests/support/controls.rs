//! What the tests of controls share: a live stream into a topic, and a processor that seeks
//! at given offsets, run to the end of its partition.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kafka_actors::{ConsumerSystem, Message, Processor, testkit};

use super::{Cluster, SCENARIO_TIMEOUT, group, wait_until};

/// Produces a few messages every 50 ms until dropped, as a live topic receives them.
pub struct Stream {
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl Stream {
    pub fn start(cluster: &Cluster, topic: &str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let (brokers, topic) = (cluster.brokers(), topic.to_owned());
        let still = running.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while still.load(Ordering::Relaxed) {
                let records = (0..8).map(|i| (format!("stream-{sent}-{i}"), format!("s {i}")));
                sent += testkit::produce(&brokers, &topic, records).expect("produce");
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        });
        Stream {
            running,
            thread: Some(thread),
        }
    }

    /// Stops producing; returns how many messages were produced.
    pub fn stop(mut self) -> usize {
        self.running.store(false, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Where a seek goes, asked for at a message's first visit.
#[derive(Clone, Copy, Debug)]
pub enum Jump {
    To(i64),
    /// To the time of the message at this offset, as this processor saw it.
    ToTimeOf(i64),
}

/// Records each message with its timestamp; at the first visit of an offset in `jumps`, seeks.
pub struct Seeking {
    ledger: Arc<Mutex<Vec<(i64, i64)>>>,
    jumps: Vec<(i64, Jump)>,
    jumped: HashSet<i64>,
}

impl Processor for Seeking {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let offset = message.offset();
        let timestamp = message.timestamp().expect("a timestamp");
        let mut ledger = self.ledger.lock().unwrap();
        ledger.push((offset, timestamp));
        let jump = self.jumps.iter().find(|(at, _)| *at == offset);
        if let Some(&(at, jump)) = jump
            && self.jumped.insert(at)
        {
            let control = message.partition_control();
            match jump {
                Jump::To(target) => control.seek(target)?,
                Jump::ToTimeOf(target) => {
                    let (_, millis) = ledger.iter().find(|(o, _)| *o == target).unwrap();
                    control.seek_to_time(*millis)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs a system over a new one-partition topic (300 messages, then a live stream until the
/// seeks were carried out, then 50 more) whose processor seeks at the first visit of each
/// offset in `jumps`, until the partition was read to its end; stops it cleanly, checks the group committed
/// the end. Returns every `(offset, timestamp)` processed, in order, and the end offset.
pub fn run_seeks(
    cluster: &Cluster,
    name: &str,
    held: usize,
    jumps: Vec<(i64, Jump)>,
) -> (Vec<(i64, i64)>, i64) {
    let topic = cluster.topic(name, 1);
    cluster.produce(&topic, 300);
    let group = group(name);
    let ledger: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let config = cluster
        .config(&topic, &group)
        .processors(1)
        .prefetch(held - 1, Duration::from_millis(10))
        .build()
        .unwrap();
    let seeks = jumps.len() as u64;
    let factory_ledger = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || Seeking {
        ledger: factory_ledger.clone(),
        jumps: jumps.clone(),
        jumped: HashSet::new(),
    })
    .unwrap();
    let stream = Stream::start(cluster, &topic);
    wait_until("the seeks were carried out", SCENARIO_TIMEOUT, || {
        system.metrics().seeks == seeks
    });
    stream.stop();
    // And some after the seeks: none of it may be skipped.
    let end = cluster.produce(&topic, 50)[&0];
    wait_until(
        "the partition was read to its end",
        SCENARIO_TIMEOUT,
        || {
            ledger
                .lock()
                .unwrap()
                .last()
                .is_some_and(|(o, _)| *o == end - 1)
        },
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(cluster.committed_offsets(&group, &topic)[&0], end);
    let ledger = ledger.lock().unwrap().clone();
    (ledger, end)
}

/// The ledger's offsets as runs of consecutive offsets, `(first, last)`.
pub fn split_into_runs(offsets: &[i64]) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &offset in offsets {
        match runs.last_mut() {
            Some((_, last)) if offset == *last + 1 => *last = offset,
            _ => runs.push((offset, offset)),
        }
    }
    runs
}
