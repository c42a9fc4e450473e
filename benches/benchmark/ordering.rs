//! The ordering-mode table, in the style of Confluent Parallel Consumer's: one partition,
//! 10,000 messages each taking 5 ms of async work, 1, 10 and 1,000 distinct keys, processed
//! per partition, per key and unordered.
//!
//! Runs in this process against the embedded cluster (or `--brokers`): the figures are bound
//! by the 5 ms of work, not by the broker.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, OrderingMode, Processor};

const MESSAGES: u64 = 10_000;
const WORK: Duration = Duration::from_millis(5);
const KEY_COUNTS: [usize; 3] = [1, 10, 1000];
const MODES: [(OrderingMode, &str); 3] = [
    (OrderingMode::PerPartition, "per partition"),
    (OrderingMode::PerKey, "per key"),
    (OrderingMode::Unordered, "unordered"),
];

/// When the first message started and the last one finished, and how many finished.
#[derive(Default)]
struct Clock {
    first_start: Mutex<Option<Instant>>,
    last_finish: Mutex<Option<Instant>>,
    finished: AtomicU64,
}

struct FiveMilliseconds(Arc<Clock>);

impl Processor for FiveMilliseconds {
    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        self.0
            .first_start
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        tokio::time::sleep(WORK).await;
        *self.0.last_finish.lock().unwrap() = Some(Instant::now());
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Processes the topic once in `mode` and returns the seconds from the first message's start
/// to the last one's finish.
fn time_mode(
    brokers: &str,
    topic: &str,
    mode: OrderingMode,
    processors: usize,
) -> anyhow::Result<f64> {
    let group = format!("{topic}-{mode:?}");
    let config = ConsumerConfig::builder()
        .brokers(brokers)
        .group_id(group)
        .topic(topic)
        .processors(processors)
        .ordering(mode)
        .handle_signals(false)
        .kafka_option("session.timeout.ms", "6000")
        .build()?;
    let clock = Arc::new(Clock::default());
    let shared = clock.clone();
    let system = ConsumerSystem::spawn(config, move || FiveMilliseconds(shared.clone()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while clock.finished.load(Ordering::SeqCst) < MESSAGES {
        anyhow::ensure!(Instant::now() < deadline, "{mode:?} did not finish in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    system.stop();
    let report = system.join()?;
    anyhow::ensure!(report.processed == MESSAGES, "{report}");
    let first = clock.first_start.lock().unwrap().context("no message")?;
    let last = clock.last_finish.lock().unwrap().context("no message")?;
    Ok((last - first).as_secs_f64())
}

pub fn run(brokers: Option<String>, processors: usize) -> anyhow::Result<String> {
    let embedded = match brokers {
        Some(_) => None,
        None => Some(EmbeddedCluster::start()?),
    };
    let brokers = match (&brokers, &embedded) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(embedded)) => embedded.bootstrap_servers(),
        (None, None) => unreachable!(),
    };
    let mut table = String::new();
    writeln!(
        table,
        "One partition, {MESSAGES} messages, each taking {} ms of async work (a tokio sleep), \
         {processors} processors; seconds from the first message's start to the last one's \
         finish (speed-up over per partition).\n",
        WORK.as_millis()
    )?;
    writeln!(table, "| keys | per partition | per key | unordered |")?;
    writeln!(table, "|---:|---:|---:|---:|")?;
    for keys in KEY_COUNTS {
        let topic = format!("ordering-{keys}-keys-{}", std::process::id());
        match &embedded {
            Some(embedded) => embedded.create_topic(&topic, 1)?,
            None => crate::driver::create_topic(&brokers, &topic, 1)?,
        }
        let records = (0..MESSAGES).map(|i| (format!("key-{}", i as usize % keys), "x"));
        testkit::produce(&brokers, &topic, records)?;
        let mut cells = Vec::new();
        let mut per_partition = None;
        for (mode, name) in MODES {
            let seconds = time_mode(&brokers, &topic, mode, processors)?;
            eprintln!("ordering: {keys} keys, {name}: {seconds:.2} s");
            let baseline = *per_partition.get_or_insert(seconds);
            cells.push(format!("{seconds:.2} s ({:.1}x)", baseline / seconds));
        }
        writeln!(table, "| {keys} | {} |", cells.join(" | "))?;
    }
    Ok(table)
}
