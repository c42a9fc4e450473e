//! The contenders, each run in a child process of its own so that its CPU time and peak RSS
//! are its own. Each prints one JSON line on stdout with what it measured.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, Processor};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

/// librdkafka settings every Rust contender gets, so B1 and F are configured alike: the
/// framework's own defaults for these two, set explicitly for B1.
pub const CONSUMER_SETTINGS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("fetch.queue.backoff.ms", "10"),
];

pub struct Run {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub messages: u64,
}

fn seconds_between(first: Instant, last: Instant) -> f64 {
    last.duration_since(first).as_secs_f64()
}

/// B1: a raw `BaseConsumer` poll loop in a consumer group that does nothing per message and
/// commits once at the end.
pub fn raw_poll_loop(run: &Run) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    for (key, value) in CONSUMER_SETTINGS {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", &run.brokers)
        .set("group.id", &run.group)
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&run.topic])?;
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut first = None;
    while count < run.messages {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                bytes += message.payload_len() as u64;
                next_offsets.insert(message.partition(), message.offset() + 1);
            }
            Some(Err(error)) => eprintln!("b1: {error}"),
            None => {}
        }
    }
    let last = Instant::now();
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in &next_offsets {
        offsets.add_partition_offset(&run.topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    drop(consumer);
    print_json(json!({
        "messages": count,
        "bytes": bytes,
        "seconds": seconds_between(first.expect("a message"), last),
    }));
    Ok(())
}

/// What the counting processors share.
#[derive(Default)]
struct Progress {
    messages: AtomicU64,
    bytes: AtomicU64,
    first: OnceLock<Instant>,
    last: OnceLock<Instant>,
}

/// F's no-op processor: counts, nothing else.
struct Count {
    progress: Arc<Progress>,
    target: u64,
}

impl Processor for Count {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let progress = &self.progress;
        progress.first.get_or_init(Instant::now);
        let size = message.payload().map_or(0, <[u8]>::len) as u64;
        progress.bytes.fetch_add(size, Ordering::Relaxed);
        if progress.messages.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            progress.last.get_or_init(Instant::now);
        }
        Ok(())
    }
}

/// The framework's configuration for a run; the environment may add to it (for example
/// `KAFKA_GROUP_PROTOCOL=consumer`, which the driver passes on to its children).
fn framework_config(run: &Run) -> anyhow::Result<kafka_actors::ConsumerConfigBuilder> {
    let mut builder = ConsumerConfig::builder()
        .brokers(&run.brokers)
        .group_id(&run.group)
        .topic(&run.topic);
    for (key, value) in CONSUMER_SETTINGS {
        builder = builder.kafka_option(*key, *value);
    }
    Ok(builder.apply_env()?)
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// F: the framework with a no-op processor and the default pool.
/// The framework, counting; with `prometheus`, also serving its figures over HTTP (on a port
/// of the system's choosing), so that every figure is recorded for real.
pub fn framework(run: &Run, prometheus: bool) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let target = run.messages;
    let mut config = framework_config(run)?.handle_signals(false);
    if prometheus {
        config = config.http_addr("127.0.0.1:0");
    }
    let config = config.build()?;
    let system = ConsumerSystem::spawn(config, move || Count {
        progress: shared.clone(),
        target,
    })?;
    wait_for("every message", Duration::from_secs(600), || {
        progress.last.get().is_some()
    })?;
    // How often the in-flight limits paused fetching: a slow run often shows it here.
    let pauses = system.metrics().pauses;
    let stopping = Instant::now();
    system.stop();
    let report = system.join()?;
    anyhow::ensure!(report.is_clean(), "unclean shutdown:\n{report}");
    print_json(json!({
        "messages": progress.messages.load(Ordering::Relaxed),
        "bytes": progress.bytes.load(Ordering::Relaxed),
        "seconds": seconds_between(*progress.first.get().unwrap(), *progress.last.get().unwrap()),
        "shutdown_seconds": stopping.elapsed().as_secs_f64(),
        "pauses": pauses,
    }));
    Ok(())
}

/// Records, per partition, the lowest and highest offset it processed; announces its first
/// message on stdout at once, with the wall-clock time, so that another process can time a
/// handover.
struct RangeRecorder {
    ranges: BTreeMap<i32, (i64, i64)>,
    shared: Arc<Mutex<BTreeMap<i32, (i64, i64)>>>,
    announced: Arc<OnceLock<()>>,
}

impl Processor for RangeRecorder {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if self.announced.set(()).is_ok() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
            println!("first-message {now}");
            std::io::stdout().flush()?;
        }
        let range = self
            .ranges
            .entry(message.partition())
            .or_insert((message.offset(), message.offset()));
        range.0 = range.0.min(message.offset());
        range.1 = range.1.max(message.offset());
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        let mut shared = self.shared.lock().unwrap();
        for (partition, (low, high)) in &self.ranges {
            let range = shared.entry(*partition).or_insert((*low, *high));
            *range = (range.0.min(*low), range.1.max(*high));
        }
        Ok(())
    }
}

/// A service as users run one: consumes until SIGTERM, then reports what it processed (per
/// partition, the first and last offset) and how the shutdown went.
pub fn serve(run: &Run) -> anyhow::Result<()> {
    let ranges = Arc::new(Mutex::new(BTreeMap::new()));
    let announced = Arc::new(OnceLock::new());
    let (shared, first) = (ranges.clone(), announced.clone());
    let config = framework_config(run)?.build()?;
    let report = ConsumerSystem::start(config, move || RangeRecorder {
        ranges: BTreeMap::new(),
        shared: shared.clone(),
        announced: first.clone(),
    })?;
    let ranges = ranges.lock().unwrap();
    print_json(json!({
        "ranges": ranges.iter().map(|(p, (low, high))| (p.to_string(), json!([low, high]))).collect::<serde_json::Map<_, _>>(),
        "committed": report.committed.iter().map(|(p, o)| (p.partition().to_string(), json!(o))).collect::<serde_json::Map<_, _>>(),
        "shutdown_seconds": report.shutdown_time().as_secs_f64(),
        "drain_seconds": report.phases.iter().find(|p| p.phase == kafka_actors::Phase::Drain).map_or(0.0, |p| p.took.as_secs_f64()),
        "clean": report.is_clean(),
    }));
    Ok(())
}

/// Takes `work` over each message; announces its first message like `RangeRecorder`.
struct Slow {
    work: Duration,
    announced: Arc<OnceLock<()>>,
}

impl Processor for Slow {
    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        if self.announced.set(()).is_ok() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
            println!("first-message {now}");
            std::io::stdout().flush()?;
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        Ok(())
    }
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    std::env::var(name).map_or(Ok(default), |value| Ok(value.parse()?))
}

/// A service with a deep backlog that gets SIGTERM a few seconds in: how long its stop takes.
/// Set by the environment: `DRAIN_WORK_MS` (work per message, default 0), `DRAIN_PROCESSORS`
/// (default 4), `DRAIN_ORDERING` (`per-partition`, the default, `per-key` or `unordered`).
pub fn drain(run: &Run) -> anyhow::Result<()> {
    let work = Duration::from_millis(env_number("DRAIN_WORK_MS", 0)?);
    let processors = env_number("DRAIN_PROCESSORS", 4)? as usize;
    let ordering = match std::env::var("DRAIN_ORDERING").as_deref() {
        Ok("per-key") => kafka_actors::OrderingMode::PerKey,
        Ok("unordered") => kafka_actors::OrderingMode::Unordered,
        _ => kafka_actors::OrderingMode::PerPartition,
    };
    let announced = Arc::new(OnceLock::new());
    let config = framework_config(run)?
        .processors(processors)
        .ordering(ordering)
        .build()?;
    let report = ConsumerSystem::start(config, move || Slow {
        work,
        announced: announced.clone(),
    })?;
    let phase = |phase: kafka_actors::Phase| {
        report
            .phases
            .iter()
            .find(|p| p.phase == phase)
            .map_or(0.0, |p| p.took.as_secs_f64())
    };
    print_json(json!({
        "processed": report.processed,
        "clean": report.is_clean(),
        "drain_seconds": phase(kafka_actors::Phase::Drain),
        "shutdown_seconds": report.shutdown_time().as_secs_f64(),
        "abandoned": report.abandoned.iter().map(|a| a.messages).sum::<usize>(),
    }));
    Ok(())
}

/// Never finishes a message, so everything dispatched stays in flight.
struct Hold(Arc<OnceLock<Instant>>);

impl Processor for Hold {
    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        self.0.get_or_init(Instant::now);
        std::future::pending().await
    }
}

/// Holds every message of the topic in flight (a processor holds a few, the fetcher the rest),
/// then abandons them; reports how many were in flight (from the shutdown report) so that the
/// peak RSS can be read per in-flight message.
pub fn hold(run: &Run) -> anyhow::Result<()> {
    let first = Arc::new(OnceLock::new());
    let shared = first.clone();
    let config = framework_config(run)?.handle_signals(false).build()?;
    let system = ConsumerSystem::spawn(config, move || Hold(shared.clone()))?;
    wait_for("the first message", Duration::from_secs(60), || {
        first.get().is_some()
    })?;
    // Dispatching the rest of the topic takes milliseconds; the report below checks it did.
    std::thread::sleep(Duration::from_secs(2));
    system.stop_now();
    let report = system.join()?;
    // What the processors held is abandoned; what waited in the fetcher is released.
    let held: usize = report.abandoned.iter().map(|a| a.messages).sum();
    print_json(json!({ "in_flight": held as u64 + report.released }));
    Ok(())
}

fn print_json(value: serde_json::Value) {
    println!("{value}");
}
