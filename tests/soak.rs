//! The soak test: everything at once, randomized from one seed.
//!
//! A producer streams keyed messages while members of one group process them: random work
//! times with some slow messages, transient failures (retried), permanent ones (dead-lettered),
//! panics, messages that pause their partition for a while (`PartitionControl::pause_for`),
//! graceful stops and restarts of the whole group, and members joining and leaving.
//! The seed also picks the assignment strategy (eager or cooperative-sticky) and the pool
//! sizes; each ordering mode has a test of its own. At the end, from an independent ledger (what
//! the processors recorded) and from the topics themselves:
//!
//! - every produced message was processed or is in the dead-letter topic, with its provenance;
//! - nothing was processed twice: none at all on a real broker; on the embedded cluster, which
//!   refuses offset commits while a rebalance is in progress (Kafka accepts them), only what
//!   a refused commit explains, message by message: a rebalance with other members around
//!   came between the two runs, and the group's committed offset of the partition, watched
//!   all along, never passed the message in between (had it, the second run would have read
//!   below a committed offset);
//! - order: per partition and per key, a message's successful run comes after the first
//!   completion (success, or the failure that dead-lettered it) of every earlier message of
//!   its lane, across every member and restart (retries in between are fine);
//! - the group's committed offsets are the topic's end offsets;
//! - every shutdown report is clean, no partition stalled, and the framework logged no error
//!   and never panicked;
//! - the figures agree: each member serves `/health/live` (200 until it stops), and the
//!   `metrics` facade's counters (the test installs a Prometheus recorder of its own) count
//!   as many processed messages as the ledger holds and as many dead letters as the topic.
//!
//! It prints its seed; `SOAK_SEED=<seed>` replays one, and `SOAK_SEEDS=1-20` (or `101,102`)
//! runs several in turn in one process, each ordering mode beside the others. `SOAK_SECONDS`
//! (default 15) and `SOAK_RATE` (messages per second, default 800) size it: `.ci/run` runs it
//! for minutes on the real broker. `SOAK_PARTITIONS` and `SOAK_PROCESSORS` fix what the seed would pick;
//! `SOAK_SLOW_ONE_IN` (default 500, 0 for none) sets how rare slow messages are;
//! `SOAK_RESTART_SECONDS` replaces the random membership changes with restarts of the whole
//! group about that often.
//!
//! The seed also makes some members batch processors (random batch sizes and lingers) beside
//! one-message processors in the same group, in every ordering mode. A batch member writes
//! its ledger entries as a transaction would: those of a batch that succeeded, or of the
//! messages before the first that failed (`BatchFailures::from_index`); none when the batch
//! panics.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use kafka_actors::{
    BatchFailures, BatchProcessor, ConsumerSystem, FailurePolicy, Message, OrderingMode, Permanent,
    Processor, RunningSystem, dead_letter_headers, metric_names,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use support::{Cluster, free_addr, get, wait_until};

/// What a message does when processed, decided by the producer and carried in its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Succeeds,
    /// Fails this many attempts, then succeeds.
    FailsTimes(u32),
    /// Fails for good, marked permanent: goes to the dead-letter topic.
    Poison,
    /// Panics at its first attempt, then succeeds.
    PanicsOnce,
    /// At its first attempt, pauses its partition for this many milliseconds; succeeds.
    Pauses(u64),
}

impl Fate {
    fn code(self) -> String {
        match self {
            Fate::Succeeds => "ok".to_owned(),
            Fate::FailsTimes(times) => format!("fail{times}"),
            Fate::Poison => "poison".to_owned(),
            Fate::PanicsOnce => "panic".to_owned(),
            Fate::Pauses(millis) => format!("pause{millis}"),
        }
    }

    fn parse(code: &str) -> Option<Fate> {
        match code {
            "ok" => Some(Fate::Succeeds),
            "poison" => Some(Fate::Poison),
            "panic" => Some(Fate::PanicsOnce),
            other => match other.strip_prefix("pause") {
                Some(millis) => millis.parse().ok().map(Fate::Pauses),
                None => other
                    .strip_prefix("fail")?
                    .parse()
                    .ok()
                    .map(Fate::FailsTimes),
            },
        }
    }
}

/// A produced message's payload: `<id> <fate> <work in microseconds>`.
fn payload(id: u64, fate: Fate, work_us: u64) -> String {
    format!("{id} {} {work_us}", fate.code())
}

fn parse_payload(payload: &str) -> Option<(u64, Fate, u64)> {
    let mut fields = payload.split(' ');
    let id = fields.next()?.parse().ok()?;
    let fate = Fate::parse(fields.next()?)?;
    let work = fields.next()?.parse().ok()?;
    Some((id, fate, work))
}

/// One successful processing, as the processor recorded it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    partition: i32,
    offset: i64,
    id: u64,
    member: usize,
    at: Instant,
    /// Where it falls in the order of every entry and dead-lettering failure of the run.
    seq: u64,
}

/// A poison message's `(partition, offset)`, the place of its failure in the sequence, and
/// when it failed.
type Poisoned = ((i32, i64), u64, Instant);

/// What every processor of every member shares: the ledger, the ids processed at least once
/// (so that waiting for the rest stays cheap with hundreds of thousands of entries), and the
/// attempts per message.
#[derive(Clone, Default)]
struct Shared {
    ledger: Arc<Mutex<Vec<Entry>>>,
    processed_ids: Arc<Mutex<std::collections::HashSet<u64>>>,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
    /// The sequence of ledger entries and poison failures, for the order check.
    sequence: Arc<AtomicU64>,
    /// When each poison message failed (permanently, so it is dead-lettered next).
    poisoned: Arc<Mutex<Vec<Poisoned>>>,
}

struct SoakProcessor {
    shared: Shared,
    member: usize,
}

impl Processor for SoakProcessor {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let entry = self.attempt(message).await?;
        self.record(entry);
        Ok(())
    }
}

/// A batch member: each message as [`SoakProcessor`] does it, the ledger written as a
/// transaction would be.
struct SoakBatchProcessor(SoakProcessor);

impl BatchProcessor for SoakBatchProcessor {
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        let mut entries = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            match self.0.attempt(message).await {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    // What came before it is committed; it and the rest are not processed.
                    entries.into_iter().for_each(|entry| self.0.record(entry));
                    return Err(BatchFailures::from_index(index, error).into());
                }
            }
        }
        entries.into_iter().for_each(|entry| self.0.record(entry));
        Ok(())
    }
}

impl SoakProcessor {
    fn record(&self, mut entry: Entry) {
        self.shared.processed_ids.lock().unwrap().insert(entry.id);
        entry.seq = self.shared.sequence.fetch_add(1, Ordering::SeqCst);
        self.shared.ledger.lock().unwrap().push(entry);
    }

    /// One attempt at a message, as its payload says; on success, what to record.
    async fn attempt(&self, message: &Message) -> anyhow::Result<Entry> {
        let (id, fate, work_us) = message
            .payload_str()
            .and_then(parse_payload)
            .ok_or(Permanent)?;
        let attempt = {
            let mut attempts = self.shared.attempts.lock().unwrap();
            let attempt = attempts.entry(id).or_default();
            *attempt += 1;
            *attempt
        };
        if work_us > 0 {
            tokio::time::sleep(Duration::from_micros(work_us)).await;
        }
        match fate {
            Fate::FailsTimes(times) if attempt <= times => {
                anyhow::bail!("transient failure of {id} (attempt {attempt})")
            }
            Fate::Poison => {
                let seq = self.shared.sequence.fetch_add(1, Ordering::SeqCst);
                let at = (message.partition(), message.offset());
                let failed = (at, seq, Instant::now());
                self.shared.poisoned.lock().unwrap().push(failed);
                return Err(anyhow::anyhow!("poison message {id}").context(Permanent));
            }
            Fate::PanicsOnce if attempt == 1 => panic!("soak: planned panic on {id}"),
            Fate::Pauses(millis) if attempt == 1 => message
                .partition_control()
                .pause_for(Duration::from_millis(millis))?,
            _ => {}
        }
        Ok(Entry {
            partition: message.partition(),
            offset: message.offset(),
            id,
            member: self.member,
            at: Instant::now(),
            seq: 0,
        })
    }
}

/// The process's Prometheus recorder, installed by the test before any system starts: the
/// systems' own `/metrics` then defer to it.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder")
    })
}

/// The sum of counter `name`'s samples for `group` in a Prometheus rendering.
fn counter(rendered: &str, name: &str, group: &str) -> u64 {
    let group = format!("group=\"{group}\"");
    rendered
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&group))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Where panics came from, for the final check.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs a panic hook that records where panics come from.
fn capture_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANICS.lock().unwrap().push(location);
            default_hook(info);
        }));
    });
}

/// The run, as the seed decides it.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    ordering: OrderingMode,
    /// `partition.assignment.strategy` of every member.
    strategy: &'static str,
    partitions: i32,
    seconds: u64,
    rate: u64,
}

impl Plan {
    fn new(ordering: OrderingMode, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let strategies = ["range", "roundrobin", "cooperative-sticky"];
        Plan {
            seed,
            ordering,
            strategy: strategies[rng.random_range(0..strategies.len())],
            partitions: std::env::var("SOAK_PARTITIONS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| rng.random_range(3..=8)),
            seconds: env_number("SOAK_SECONDS", 15),
            rate: env_number("SOAK_RATE", 800),
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// When the test began, for the timestamps of its log lines.
static BEGUN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A log line of the soak's own, with the seconds since the test began.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!(
            "soak {:>7.2}s: {}",
            BEGUN.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format!($($arg)*)
        )
    };
}

/// A membership change, for telling duplicates a rebalance explains.
#[derive(Debug, Clone, Copy)]
struct Change {
    at: Instant,
    /// Members before and after.
    before: usize,
    after: usize,
}

impl Change {
    /// Whether other members were rebalanced by it (and, on the embedded cluster, had their
    /// revocation commits refused).
    fn rebalances_others(&self) -> bool {
        self.before.min(self.after) >= 1 && self.before.max(self.after) >= 2
    }
}

struct Member {
    index: usize,
    system: RunningSystem,
    http: std::net::SocketAddr,
}

/// The members of the group and what happened to them.
struct Group<'a> {
    cluster: &'a Cluster,
    plan: &'a Plan,
    topic: String,
    group: String,
    shared: Shared,
    members: Vec<Member>,
    next_member: usize,
    changes: Vec<Change>,
    rng: StdRng,
}

impl Group<'_> {
    fn start_member(&mut self) {
        let index = self.next_member;
        self.next_member += 1;
        let processors = match std::env::var("SOAK_PROCESSORS") {
            Ok(n) => n.parse().expect("SOAK_PROCESSORS is a number"),
            Err(_) => self.rng.random_range(1..=6),
        };
        let mut config = self.cluster.config(&self.topic, &self.group);
        if !self.cluster.is_real_broker() {
            // The embedded cluster waits up to a session timeout for members in every
            // rebalance; Kafka refuses sessions this short.
            config = support::classic(
                config,
                &[
                    ("session.timeout.ms", "3000"),
                    ("heartbeat.interval.ms", "300"),
                ],
            );
        }
        // Under the consumer protocol the broker assigns: the plan's assignor is left out.
        let mut config = support::classic(
            config,
            &[("partition.assignment.strategy", self.plan.strategy)],
        );
        // A third of the members process batches.
        let batches = self.rng.random_ratio(1, 3).then(|| {
            let messages = self.rng.random_range(1..=64);
            let linger = Duration::from_millis(self.rng.random_range(0..=20));
            (messages, linger)
        });
        if let Some((messages, linger)) = batches {
            config = config.batch_size(messages, 1 << 20).batch_linger(linger);
        }
        let config = config
            .ordering(self.plan.ordering)
            .processors(processors)
            .shutdown_timeout(Duration::from_secs(15))
            .stall_timeout(Some(Duration::from_secs(15)))
            .failure_policy(
                FailurePolicy::retry(self.rng.random_range(3..=5))
                    .backoff(Duration::from_millis(20), Duration::from_millis(200))
                    .then_dead_letter(),
            );
        let shared = self.shared.clone();
        let before = self.members.len();
        let processor = move || SoakProcessor {
            shared: shared.clone(),
            member: index,
        };
        // A port free a moment ago may be taken by then (the embedded clusters of the tests
        // running beside this one bind ports of their own): another one is tried.
        let mut tries = 0;
        let (system, http) = loop {
            let http = free_addr();
            let config = config.clone().http_addr(http.to_string()).build().unwrap();
            let processor = processor.clone();
            let started = match batches {
                Some(_) => {
                    ConsumerSystem::spawn_batch(config, move || SoakBatchProcessor(processor()))
                }
                None => ConsumerSystem::spawn(config, processor),
            };
            match started {
                Ok(system) => break (system, http),
                Err(kafka_actors::Error::Http { .. }) if tries < 5 => tries += 1,
                Err(error) => panic!("member {index} did not start: {error}"),
            }
        };
        let kind = match batches {
            Some((messages, linger)) => format!(" in batches of up to {messages} ({linger:?})"),
            None => String::new(),
        };
        note!("member {index} joins with {processors} processors{kind}");
        self.members.push(Member {
            index,
            system,
            http,
        });
        self.changes.push(Change {
            at: Instant::now(),
            before,
            after: self.members.len(),
        });
    }

    /// Stops a member gracefully: its report must be clean and nothing may have stalled.
    fn stop_member(&mut self, position: usize) {
        let before = self.members.len();
        let member = self.members.remove(position);
        self.changes.push(Change {
            at: Instant::now(),
            before,
            after: self.members.len(),
        });
        let metrics = member.system.metrics();
        let (status, body) = get(member.http, "/health/live");
        assert_eq!(
            status, 200,
            "seed {}: member {} not alive: {body}",
            self.plan.seed, member.index
        );
        member.system.stop();
        let report = member.system.join().unwrap();
        note!("member {} left:\n{report}", member.index);
        assert!(
            report.is_clean(),
            "seed {}: member {} stopped uncleanly:\n{report}",
            self.plan.seed,
            member.index
        );
        assert_eq!(
            metrics.stalls, 0,
            "seed {}: member {} saw stalled partitions",
            self.plan.seed, member.index
        );
    }

    fn stop_all(&mut self) {
        while !self.members.is_empty() {
            self.stop_member(0);
        }
    }
}

/// The stream's producer context: counts the messages whose delivery failed, so that a lost
/// message of the stream's own says so rather than showing up as a short topic.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| error.to_string());
        }
    }
}

/// Produces `rate` messages a second until `stop` is set; returns the fates by id.
fn stream(
    brokers: String,
    topic: String,
    plan: Plan,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> std::thread::JoinHandle<HashMap<u64, Fate>> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x5eed);
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create_with_context(Deliveries::default())
            .expect("create the soak producer");
        let mut fates = HashMap::new();
        let slow_one_in = env_number("SOAK_SLOW_ONE_IN", 500);
        let tick = Duration::from_millis(50);
        let per_tick = (plan.rate / 20).max(1);
        let mut next_id = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            for _ in 0..per_tick {
                let roll = rng.random_range(0..10_000);
                let fate = match roll {
                    0..100 => Fate::FailsTimes(rng.random_range(1..=2)),
                    100..110 => Fate::Poison,
                    110..115 => Fate::PanicsOnce,
                    115..120 => Fate::Pauses(rng.random_range(50..=500)),
                    _ => Fate::Succeeds,
                };
                let work_us = if slow_one_in > 0 && rng.random_range(0..slow_one_in) == 0 {
                    rng.random_range(50_000..300_000)
                } else {
                    rng.random_range(0..200)
                };
                let key = format!("key-{}", rng.random_range(0..40));
                let payload = payload(next_id, fate, work_us);
                let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, returned)) => {
                            record = returned;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                fates.insert(next_id, fate);
                next_id += 1;
            }
            produced.store(next_id, Ordering::Relaxed);
            std::thread::sleep(tick.saturating_sub(started.elapsed()));
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("every soak message delivered");
        let deliveries = producer.context();
        let failed = deliveries.failed.load(Ordering::Relaxed);
        assert_eq!(
            failed,
            0,
            "seed {}: the stream's producer failed to deliver {failed} of {next_id} messages \
             (the test's own, not the system's; first error: {:?})",
            plan.seed,
            deliveries.first_error.lock().unwrap()
        );
        fates
    })
}

/// The group's committed offsets, as seen between two moments.
struct Seen {
    asked: Instant,
    answered: Instant,
    offsets: BTreeMap<i32, i64>,
}

/// Reads the group's committed offsets of `topic` every 100 ms until `watching` is cleared,
/// each with when it was asked for and when the answer came: for telling the repeats a
/// refused commit explains.
fn watch_commits(
    brokers: String,
    group: String,
    topic: String,
    partitions: i32,
    watching: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Seen>> {
    std::thread::spawn(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("create a client that reads committed offsets");
        let mut list = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&topic, partition);
        }
        let mut seen = Vec::new();
        while watching.load(Ordering::Relaxed) {
            let asked = Instant::now();
            if let Ok(committed) = client.committed_offsets(list.clone(), Duration::from_secs(2)) {
                let offsets = committed
                    .elements()
                    .iter()
                    .filter_map(|element| match element.offset() {
                        rdkafka::Offset::Offset(offset) => Some((element.partition(), offset)),
                        _ => None,
                    })
                    .collect();
                seen.push(Seen {
                    asked,
                    answered: Instant::now(),
                    offsets,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

/// A record read back: where it is, and what it carries.
struct ReadBack {
    partition: i32,
    offset: i64,
    key: String,
    payload: String,
    headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` up to its end offsets.
fn read_all(cluster: &Cluster, topic: &str) -> Vec<ReadBack> {
    let ends = cluster.end_offsets(topic);
    let total: i64 = ends.values().sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .set("group.id", format!("soak-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a reader");
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in ends.keys() {
        partitions
            .add_partition_offset(topic, *partition, rdkafka::Offset::Beginning)
            .expect("a partition to read");
    }
    consumer.assign(&partitions).expect("assign");
    let mut records = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while (records.len() as i64) < total {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} records of {topic}",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("read a record");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), value.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(ReadBack {
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                payload: String::from_utf8_lossy(message.payload().unwrap_or_default())
                    .into_owned(),
                headers,
            });
        }
    }
    records
}

/// The seeds to run: `SOAK_SEEDS` (`1-20`, or `101,102`), else `SOAK_SEED`, else one at
/// random.
fn seeds() -> Vec<u64> {
    let parse = |text: &str| -> u64 {
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{text:?} is not a seed"))
    };
    match (std::env::var("SOAK_SEEDS"), std::env::var("SOAK_SEED")) {
        (Ok(seeds), _) => match seeds.split_once('-') {
            Some((first, last)) => (parse(first)..=parse(last)).collect(),
            None => seeds.split(',').map(parse).collect(),
        },
        (_, Ok(seed)) => vec![parse(&seed)],
        _ => vec![rand::rng().random()],
    }
}

/// Soaks every seed of [`seeds`] in turn, in one ordering mode; says of each that it passed
/// (`.ci/run` counts those lines).
fn soak(ordering: OrderingMode) {
    for seed in seeds() {
        soak_seed(ordering, seed);
        eprintln!("soak {ordering:?} seed {seed}: passed");
    }
}

fn soak_seed(ordering: OrderingMode, seed: u64) {
    support::capture_logs();
    capture_panics();
    let recorder = prometheus();
    BEGUN.get_or_init(Instant::now);
    let plan = Plan::new(ordering, seed);
    eprintln!(
        "soak seed {} (replay with SOAK_SEED={}): {plan:?}",
        plan.seed, plan.seed
    );
    let cluster = Cluster::start();
    let topic = cluster.topic(
        &format!("soak-{ordering:?}").to_lowercase(),
        plan.partitions,
    );
    let dead_letter_topic = format!("{topic}.dlq");
    cluster.create_topic(&dead_letter_topic, 1);
    let mut group = Group {
        cluster: &cluster,
        plan: &plan,
        group: format!("soak-{ordering:?}-{}-{seed}", std::process::id()).to_lowercase(),
        topic: topic.clone(),
        shared: Shared::default(),
        members: Vec::new(),
        next_member: 0,
        changes: Vec::new(),
        rng: StdRng::seed_from_u64(plan.seed),
    };

    let stop_producing = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = stream(
        cluster.brokers(),
        topic.clone(),
        plan.clone(),
        stop_producing.clone(),
        produced.clone(),
    );
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = watch_commits(
        cluster.brokers(),
        group.group.clone(),
        topic.clone(),
        plan.partitions,
        watching.clone(),
    );
    group.start_member();
    let started = Instant::now();
    let run_for = Duration::from_secs(plan.seconds);
    // SOAK_RESTART_SECONDS: only restarts of the whole group, about that far apart.
    let restart_every = std::env::var("SOAK_RESTART_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    while started.elapsed() < run_for {
        let pause = match restart_every {
            Some(seconds) => {
                Duration::from_millis(group.rng.random_range(seconds * 800..=seconds * 1_200))
            }
            None => Duration::from_millis(group.rng.random_range(1_500..5_000)),
        };
        std::thread::sleep(pause.min(run_for.saturating_sub(started.elapsed())));
        if started.elapsed() >= run_for {
            break;
        }
        let action = match restart_every {
            Some(_) => 0,
            None => group.rng.random_range(0..10),
        };
        match action {
            // Stop the whole group gracefully and start it again.
            0..3 => {
                let count = group.members.len();
                note!("restarting all {count} members");
                group.stop_all();
                for _ in 0..count {
                    group.start_member();
                }
            }
            // Another member joins.
            3..6 if group.members.len() < 3 => group.start_member(),
            // A member leaves.
            _ if group.members.len() > 1 => {
                let leaving = group.rng.random_range(0..group.members.len());
                group.stop_member(leaving);
            }
            _ => group.start_member(),
        }
    }
    stop_producing.store(true, Ordering::Relaxed);
    let fates = producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    let total: i64 = end_offsets.values().sum();
    assert_eq!(total as usize, fates.len(), "seed {}", plan.seed);
    note!("produced {total} messages; waiting for the rest");

    // Let the members finish: every message that does not go to the dead-letter topic is in
    // the ledger.
    let expected_processed = fates.values().filter(|f| **f != Fate::Poison).count();
    wait_until(
        &format!("seed {}: every message was processed", plan.seed),
        Duration::from_secs(180),
        || group.shared.processed_ids.lock().unwrap().len() >= expected_processed,
    );
    let expected_dead = fates.len() - expected_processed;
    wait_until(
        &format!("seed {}: every poison message was dead-lettered", plan.seed),
        Duration::from_secs(60),
        || {
            cluster
                .end_offsets(&dead_letter_topic)
                .values()
                .sum::<i64>() as usize
                >= expected_dead
        },
    );
    // And let the group commit it: a member that got a partition whose committed offset
    // lags (with what finished beyond it recorded in the commit) reads on to the end.
    wait_until(
        &format!("seed {}: the group committed the end offsets", plan.seed),
        Duration::from_secs(60),
        || cluster.committed_offsets(&group.group, &topic) == end_offsets,
    );
    note!("everything processed and committed; stopping");
    group.stop_all();
    watching.store(false, Ordering::Relaxed);
    let commits = watcher.join().unwrap();
    note!("stopped; reading the topics back");

    // The audit, from the topics themselves.
    let originals = read_all(&cluster, &topic);
    let dead_letters = read_all(&cluster, &dead_letter_topic);
    let ledger = group.shared.ledger.lock().unwrap().clone();
    let changes = group.changes.clone();
    let counted = |name: &str| counter(&recorder.render(), name, &group.group);
    assert_eq!(
        counted(metric_names::MESSAGES_PROCESSED),
        ledger.len() as u64,
        "seed {}: the processed messages counted against the ledger",
        plan.seed
    );
    assert_eq!(
        counted(metric_names::MESSAGES_DEAD_LETTERED),
        dead_letters.len() as u64,
        "seed {}: the dead letters counted against the topic",
        plan.seed
    );
    // A repeat of the message at `offset` of `partition`, run first at `first` and again at
    // `second`, is explained by a refused commit: a rebalance with other members around came
    // in between, and the group never committed past the message meanwhile.
    let explained = |partition: i32, offset: i64, first: Instant, second: Instant| {
        let rebalanced = changes.iter().any(|change| {
            // The embedded cluster's rebalances wait up to a session timeout for members,
            // and a change during one starts it over: allow them half a minute.
            change.rebalances_others()
                && first < change.at + Duration::from_secs(30)
                && second > change.at
        });
        let committed_past = commits.iter().any(|seen| {
            seen.asked > first
                && seen.answered < second
                && seen.offsets.get(&partition).is_some_and(|c| *c > offset)
        });
        !cluster.is_real_broker() && rebalanced && !committed_past
    };
    let mut processed: HashMap<(i32, i64), Vec<Entry>> = HashMap::new();
    for entry in &ledger {
        processed
            .entry((entry.partition, entry.offset))
            .or_default()
            .push(*entry);
    }
    let mut dead: HashMap<(i32, i64), Vec<&ReadBack>> = HashMap::new();
    for record in &dead_letters {
        let partition = record.headers[dead_letter_headers::ORIGINAL_PARTITION]
            .parse()
            .unwrap();
        let offset = record.headers[dead_letter_headers::ORIGINAL_OFFSET]
            .parse()
            .unwrap();
        dead.entry((partition, offset)).or_default().push(record);
    }
    let (mut lost, mut duplicates, mut explained_duplicates) = (0, 0, 0);
    for original in &originals {
        let (id, fate, _) = parse_payload(&original.payload).expect("a soak payload");
        let at = (original.partition, original.offset);
        let entries = processed.get(&at).map_or(&[][..], Vec::as_slice);
        let letters = dead.get(&at).map_or(&[][..], Vec::as_slice);
        if fate == Fate::Poison {
            assert!(
                entries.is_empty(),
                "seed {}: poison message {id} was processed",
                plan.seed
            );
            if letters.is_empty() {
                lost += 1;
            }
            for letter in letters {
                assert_eq!(letter.payload, original.payload, "seed {}", plan.seed);
                assert_eq!(
                    letter.headers[dead_letter_headers::ORIGINAL_TOPIC],
                    topic,
                    "seed {}",
                    plan.seed
                );
                assert_eq!(
                    letter.headers[dead_letter_headers::ATTEMPTS],
                    "1",
                    "seed {}: a permanent failure is not retried",
                    plan.seed
                );
                assert!(
                    letter.headers[dead_letter_headers::ERROR]
                        .contains(&format!("poison message {id}")),
                    "seed {}: {:?}",
                    plan.seed,
                    letter.headers
                );
            }
            // A dead letter's time is its message's failure before it, in the same run.
            if letters.len() > 1 {
                duplicates += letters.len() - 1;
                let mut failures: Vec<Instant> = group
                    .shared
                    .poisoned
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(poisoned, _, _)| *poisoned == at)
                    .map(|(_, _, when)| *when)
                    .collect();
                failures.sort();
                explained_duplicates += failures
                    .windows(2)
                    .filter(|pair| explained(at.0, at.1, pair[0], pair[1]))
                    .count()
                    .min(letters.len() - 1);
            }
        } else {
            assert!(
                letters.is_empty(),
                "seed {}: message {id} ({fate:?}) was dead-lettered",
                plan.seed
            );
            if entries.is_empty() {
                lost += 1;
            }
            for entry in entries {
                assert_eq!(
                    entry.id, id,
                    "seed {}: the ledger's id at {at:?}",
                    plan.seed
                );
            }
            for pair in entries.windows(2) {
                duplicates += 1;
                if explained(at.0, at.1, pair[0].at, pair[1].at) {
                    explained_duplicates += 1;
                } else {
                    note!(
                        "{at:?} processed by member {} and again by member {} {:?} later",
                        pair[0].member,
                        pair[1].member,
                        pair[1].at - pair[0].at
                    );
                }
            }
        }
    }
    note!(
        "seed {}: {} messages, {} processed, {} dead letters, {lost} lost, {duplicates} \
         repeated ({explained_duplicates} explained by the embedded cluster's rebalances), \
         {} membership changes",
        plan.seed,
        originals.len(),
        ledger.len(),
        dead_letters.len(),
        changes.len()
    );
    assert_eq!(lost, 0, "seed {}: messages lost", plan.seed);
    let out_of_order = order_violations(plan.ordering, &originals, &processed, &group.shared);
    assert!(
        out_of_order.is_empty(),
        "seed {}: {} messages succeeded before an earlier message of their lane finished, \
         the first: {:#?}",
        plan.seed,
        out_of_order.len(),
        &out_of_order[..out_of_order.len().min(10)]
    );
    // What the framework said about repeats, for a failure's diagnosis.
    let said: Vec<String> = support::captured_logs()
        .into_iter()
        .filter(|line| line.contains("processed again") || line.contains("repeats"))
        .collect();
    assert_eq!(
        duplicates, explained_duplicates,
        "seed {}: messages repeated without a rebalance to explain it; the framework said: \
         {said:#?}",
        plan.seed
    );
    assert_eq!(
        cluster.committed_offsets(&group.group, &topic),
        end_offsets,
        "seed {}: committed offsets at the final stop",
        plan.seed
    );
    let framework_panics: Vec<String> = PANICS
        .lock()
        .unwrap()
        .iter()
        .filter(|location| !location.starts_with("tests/soak.rs"))
        .cloned()
        .collect();
    assert!(
        framework_panics.is_empty(),
        "seed {}: panics outside the soak's processor: {framework_panics:?}",
        plan.seed
    );
    let alarming: Vec<String> = support::captured_logs()
        .into_iter()
        .filter(|line| {
            line.starts_with("ERROR")
                || line.contains("held nowhere")
                || line.contains("internal failure")
                || line.contains("stalled")
        })
        .collect();
    assert!(
        alarming.is_empty(),
        "seed {}: the framework logged trouble: {alarming:#?}",
        plan.seed
    );
}

/// The successful runs that came before the first completion (success, or the failure that
/// dead-lettered it) of an earlier message of their lane: per partition, a partition; per
/// key, a key within a partition; unordered, none.
fn order_violations(
    ordering: OrderingMode,
    originals: &[ReadBack],
    processed: &HashMap<(i32, i64), Vec<Entry>>,
    shared: &Shared,
) -> Vec<String> {
    if ordering == OrderingMode::Unordered {
        return Vec::new();
    }
    let mut first_done: HashMap<(i32, i64), u64> = HashMap::new();
    let completions = processed
        .iter()
        .flat_map(|(at, entries)| entries.iter().map(move |e| (*at, e.seq)));
    let poisoned: Vec<((i32, i64), u64)> = shared
        .poisoned
        .lock()
        .unwrap()
        .iter()
        .map(|(at, seq, _)| (*at, *seq))
        .collect();
    for (at, seq) in completions.chain(poisoned) {
        let first = first_done.entry(at).or_insert(seq);
        *first = (*first).min(seq);
    }
    let mut lanes: BTreeMap<(i32, &str), Vec<i64>> = BTreeMap::new();
    for record in originals {
        let key = match ordering {
            OrderingMode::PerKey => record.key.as_str(),
            _ => "",
        };
        lanes
            .entry((record.partition, key))
            .or_default()
            .push(record.offset);
    }
    let mut violations = Vec::new();
    for ((partition, key), mut offsets) in lanes {
        offsets.sort_unstable();
        // The latest first completion of the lane's messages so far, and whose it was.
        let mut latest: Option<(u64, i64)> = None;
        for offset in offsets {
            for entry in processed.get(&(partition, offset)).into_iter().flatten() {
                if let Some((seq, earlier)) = latest
                    && entry.seq < seq
                {
                    violations.push(format!(
                        "partition {partition}, key {key:?}: offset {offset} succeeded (member \
                         {}) before offset {earlier} finished",
                        entry.member
                    ));
                }
            }
            if let Some(&done) = first_done.get(&(partition, offset))
                && latest.is_none_or(|(seq, _)| done > seq)
            {
                latest = Some((done, offset));
            }
        }
    }
    violations
}

#[test]
fn soak_per_partition() {
    soak(OrderingMode::PerPartition);
}

#[test]
fn soak_per_key() {
    soak(OrderingMode::PerKey);
}

#[test]
fn soak_unordered() {
    soak(OrderingMode::Unordered);
}
