//! The contenders, each run in a child process of its own so that its CPU time and peak RSS
//! are its own. Each prints one JSON line on stdout with what it measured.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_actors::{BatchProcessor, ConsumerConfig, ConsumerSystem, Message, Processor};
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
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

/// librdkafka settings for B2's tuned variant, the ceiling of the librdkafka path on this
/// machine: bigger fetches (8 MiB per partition, 64 MiB per request) and a deeper prefetch
/// queue, so that the broker thread sends fewer, larger requests.
pub const TUNED_SETTINGS: &[(&str, &str)] = &[
    ("max.partition.fetch.bytes", "8388608"),
    ("fetch.max.bytes", "67108864"),
    ("queued.min.messages", "1000000"),
    ("queued.max.messages.kbytes", "262144"),
];

/// B2's consumer context: forwards each assigned partition's messages to the loop's queue
/// before librdkafka assigns it, so that the loop takes messages a batch per call while the
/// consumer's own queue keeps the rebalance events (`rd_kafka_consume_batch_queue` on that
/// queue would take them too, and unassign everything). What the framework's Fetcher does.
#[derive(Default)]
struct ForwardPartitions {
    queue: OnceLock<Queue>,
}

/// A queue of the consumer's, destroyed before it.
struct Queue(*mut rd::rd_kafka_queue_t);

// SAFETY: librdkafka queues are thread-safe.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl ClientContext for ForwardPartitions {}

impl ConsumerContext for ForwardPartitions {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (Rebalance::Assign(partitions), Some(queue)) = (rebalance, self.queue.get()) else {
            return;
        };
        for element in partitions.elements() {
            let topic = std::ffi::CString::new(element.topic()).expect("a topic name");
            // SAFETY: a live consumer; the partition's queue handle is forwarded and released
            // at once (the forwarding belongs to the partition).
            unsafe {
                let partition = rd::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    element.partition(),
                );
                if !partition.is_null() {
                    rd::rd_kafka_queue_forward(partition, queue.0);
                    rd::rd_kafka_queue_destroy(partition);
                }
            }
        }
    }
}

/// B2: a raw rdkafka consumer in a group that takes messages a batch per call
/// (`rd_kafka_consume_batch_queue`, up to 1,000 at a time, waiting for one message only when
/// none is there), does nothing per message and commits once
/// at the end: the ceiling of the librdkafka path the framework is built on. `tuned` adds
/// [`TUNED_SETTINGS`]. With `latency`, it records each message's latency (see
/// [`Latencies`]) instead of counting against a deadline.
pub fn raw_batch_loop(run: &Run, tuned: bool, latency: bool) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    for (key, value) in CONSUMER_SETTINGS
        .iter()
        .chain(if tuned { TUNED_SETTINGS } else { &[] })
    {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer<ForwardPartitions> = config
        .set("bootstrap.servers", &run.brokers)
        .set("group.id", &run.group)
        .set("enable.auto.commit", "false")
        .create_with_context(ForwardPartitions::default())?;
    // SAFETY: a new queue of a live consumer, destroyed below before the consumer is dropped.
    let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
    anyhow::ensure!(!queue.is_null(), "rd_kafka_queue_new failed");
    let _ = consumer.context().queue.set(Queue(queue));
    consumer.subscribe(&[&run.topic])?;

    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut latencies = Latencies::default();
    let mut batch: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(1_000);
    while count < run.messages {
        // Rebalance events and errors.
        if let Some(Err(error)) = consumer.poll(Duration::ZERO) {
            eprintln!("b2: {error}");
        }
        // What is there, without waiting (a batch call with a timeout waits for a full
        // batch); when nothing is, one message with a wait, taken as soon as it arrives.
        // SAFETY: `batch` has room for its capacity; librdkafka writes `taken` pointers.
        let taken = unsafe {
            rd::rd_kafka_consume_batch_queue(queue, 0, batch.as_mut_ptr(), batch.capacity())
        };
        // SAFETY: as above.
        unsafe { batch.set_len(usize::try_from(taken).unwrap_or(0)) };
        if batch.is_empty() {
            // SAFETY: a live queue; the message, if any, is destroyed below.
            let message = unsafe { rd::rd_kafka_consume_queue(queue, 100) };
            if !message.is_null() {
                batch.push(message);
            }
        }
        if !batch.is_empty() && first.is_none() {
            first = Some(Instant::now());
            if latency {
                // The driver starts its paced stream once the group is joined.
                println!("first-message {}", unix_nanos());
                std::io::stdout().flush()?;
            }
        }
        for &message in &batch {
            // SAFETY: a message librdkafka handed over, read once and destroyed once.
            unsafe {
                let raw = &*message;
                if raw.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    count += 1;
                    bytes += raw.len as u64;
                    next_offsets.insert(raw.partition, raw.offset + 1);
                    if latency && !raw.payload.is_null() {
                        let payload = std::slice::from_raw_parts(raw.payload.cast::<u8>(), raw.len);
                        latencies.record(payload);
                    }
                }
                rd::rd_kafka_message_destroy(message);
            }
        }
        batch.clear();
    }
    let last = Instant::now();
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in &next_offsets {
        offsets.add_partition_offset(&run.topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    consumer.unsubscribe();
    // SAFETY: the queue was created above and is destroyed once, before the consumer.
    unsafe { rd::rd_kafka_queue_destroy(queue) };
    drop(consumer);
    let mut figures = json!({
        "messages": count,
        "bytes": bytes,
        "seconds": seconds_between(first.expect("a message"), last),
    });
    if latency {
        figures["latency"] = latencies.summary();
    }
    print_json(figures);
    Ok(())
}

/// End-to-end latencies, from the time a message was sent (its first 8 bytes: Unix
/// nanoseconds, written by the driver's paced producer) to the end of its processing. A
/// message sent at time 0 is the driver's warm-up message and is not counted.
#[derive(Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    fn record(&mut self, payload: &[u8]) {
        let Some(sent) = payload.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) else {
            return;
        };
        if sent != 0 {
            self.0.push(unix_nanos().saturating_sub(sent));
        }
    }

    fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Count and percentiles, in milliseconds.
    fn summary(&mut self) -> serde_json::Value {
        self.0.sort_unstable();
        let at = |quantile: f64| {
            let index = ((self.0.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
            self.0
                .get(index)
                .map_or(f64::NAN, |nanos| *nanos as f64 / 1e6)
        };
        json!({ "count": self.0.len(), "p50": at(0.5), "p99": at(0.99), "p999": at(0.999) })
    }
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// F's processor for the latency runs: records each message's latency, and on stop hands
/// its figures to the process.
struct Timing {
    latencies: Latencies,
    all: Arc<Mutex<Latencies>>,
    counter: Counter,
    announced: Arc<OnceLock<()>>,
}

impl Processor for Timing {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.latencies.record(message.payload().unwrap_or_default());
        if self.announced.set(()).is_ok() {
            println!("first-message {}", unix_nanos());
            std::io::stdout().flush()?;
        }
        self.counter.count(std::slice::from_ref(message));
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        let mine = std::mem::take(&mut self.latencies);
        self.all.lock().unwrap().merge(mine);
        Ok(())
    }
}

/// F under a paced stream, in the ordering mode `KAFKA_ORDERING` names (the driver sets it),
/// recording every message's latency until
/// `--messages` arrived (the warm-up message included), then its percentiles.
pub fn framework_latency(run: &Run) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let all = Arc::new(Mutex::new(Latencies::default()));
    let announced = Arc::new(OnceLock::new());
    let (shared, figures) = (progress.clone(), all.clone());
    let config = framework_config(run)?.handle_signals(false).build()?;
    let system = ConsumerSystem::spawn(config, move || Timing {
        latencies: Latencies::default(),
        all: figures.clone(),
        counter: shared.counter(),
        announced: announced.clone(),
    })?;
    progress.wait_for(run.messages)?;
    system.stop();
    let report = system.join()?;
    anyhow::ensure!(report.is_clean(), "unclean shutdown:\n{report}");
    let latency = all.lock().unwrap().summary();
    print_json(json!({
        "messages": progress.messages(),
        "latency": latency,
    }));
    Ok(())
}

/// What the counting processors share: a cache line of counts per processor, written by its
/// processor alone with plain stores (no read-modify-write on a line all processors share,
/// which B2 does not pay either), and summed by the main thread while it waits.
struct Progress {
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    first: OnceLock<Instant>,
}

#[derive(Default)]
#[repr(align(128))]
struct Slot {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// More processors than any run starts (a panic would replace one, and none panics).
const SLOTS: usize = 256;

impl Default for Progress {
    fn default() -> Self {
        Progress {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
            first: OnceLock::new(),
        }
    }
}

impl Progress {
    /// A counter for a new processor, on a line of its own.
    fn counter(self: &Arc<Self>) -> Counter {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        assert!(slot < SLOTS, "more than {SLOTS} processors");
        Counter {
            progress: self.clone(),
            slot,
            messages: 0,
            bytes: 0,
        }
    }

    fn messages(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.messages.load(Ordering::Relaxed))
            .sum()
    }

    fn bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until the processors counted `target` messages; returns when they had (within
    /// the millisecond this polls at).
    fn wait_for(&self, target: u64) -> anyhow::Result<Instant> {
        wait_for("every message", Duration::from_secs(600), || {
            self.messages() >= target
        })?;
        Ok(Instant::now())
    }
}

/// One processor's counts, published to its slot.
struct Counter {
    progress: Arc<Progress>,
    slot: usize,
    messages: u64,
    bytes: u64,
}

impl Counter {
    fn count(&mut self, messages: &[Message]) {
        if self.messages == 0 {
            self.progress.first.get_or_init(Instant::now);
        }
        self.messages += messages.len() as u64;
        self.bytes += messages
            .iter()
            .map(|m| m.payload().map_or(0, <[u8]>::len) as u64)
            .sum::<u64>();
        let slot = &self.progress.slots[self.slot];
        slot.messages.store(self.messages, Ordering::Relaxed);
        slot.bytes.store(self.bytes, Ordering::Relaxed);
    }
}

/// F's no-op processor: counts, nothing else.
struct Count(Counter);

impl Processor for Count {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.0.count(std::slice::from_ref(message));
        Ok(())
    }
}

/// FB's no-op batch processor: counts, nothing else.
struct CountBatches(Counter);

impl BatchProcessor for CountBatches {
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        self.0.count(batch);
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

/// F: the framework with a no-op processor and the default pool; with `batches`, FB: a no-op
/// batch processor. With `prometheus`, also serving its figures over HTTP (on a port of the
/// system's choosing), so that every figure is recorded for real.
pub fn framework(run: &Run, prometheus: bool, batches: bool) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let mut config = framework_config(run)?.handle_signals(false);
    if prometheus {
        config = config.http_addr("127.0.0.1:0");
    }
    let config = config.build()?;
    let system = if batches {
        ConsumerSystem::spawn_batch(config, move || CountBatches(shared.counter()))?
    } else {
        ConsumerSystem::spawn(config, move || Count(shared.counter()))?
    };
    let last = progress.wait_for(run.messages)?;
    // How often the in-flight limits paused fetching: a slow run often shows it here.
    let pauses = system.metrics().pauses;
    let stopping = Instant::now();
    system.stop();
    let report = system.join()?;
    anyhow::ensure!(report.is_clean(), "unclean shutdown:\n{report}");
    print_json(json!({
        "messages": progress.messages(),
        "bytes": progress.bytes(),
        "seconds": seconds_between(*progress.first.get().unwrap(), last),
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
/// Set by the environment: `DRAIN_WORK_MS` (work per message, default 0); the pool and the
/// ordering mode come, as for any service, from `KAFKA_PROCESSORS` and `KAFKA_ORDERING`.
pub fn drain(run: &Run) -> anyhow::Result<()> {
    let work = Duration::from_millis(env_number("DRAIN_WORK_MS", 0)?);
    let announced = Arc::new(OnceLock::new());
    let config = framework_config(run)?.build()?;
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
