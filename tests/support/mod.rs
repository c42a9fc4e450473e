//! What the scenario tests share: a cluster to run against, topics, a ledger of processed
//! messages, and bounded waits.
#![allow(dead_code)] // Each test file uses a different part of this module.

pub mod controls;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{ConsumerConfig, ConsumerConfigBuilder, GroupProtocol, Message, Processor};
pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The offsets `group` committed for the first `partitions` partitions of `topic`, as a
/// client of its own asks the brokers at `brokers` (from any thread: a processor's, say).
pub fn committed_offsets_of(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("create a client");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    client
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect()
}

/// The group session timeout for tests. The embedded cluster forgets a member that left only
/// when its session expires, so the next member of the group waits this long.
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// How long a scenario may take before a wait gives up: catches hangs, not slowness.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// A Kafka cluster for one test: the in-process embedded cluster, or the real broker named by
/// `KAFKA_BROKERS` when that is set (topics are then created with unique names on it).
pub struct Cluster {
    backend: Backend,
}

enum Backend {
    Embedded(EmbeddedCluster),
    Broker {
        brokers: String,
        admin: AdminClient<DefaultClientContext>,
    },
}

impl Cluster {
    /// Starts an embedded cluster, or connects to `KAFKA_BROKERS`. A broker that is named but
    /// does not answer fails the test: no test passes because a broker is missing.
    pub fn start() -> Self {
        capture_logs();
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.is_empty() => Cluster::broker(&brokers),
            _ => Cluster {
                backend: Backend::Embedded(
                    EmbeddedCluster::start().expect("start the embedded cluster"),
                ),
            },
        }
    }

    /// The real brokers at `brokers`, which must answer.
    pub fn broker(brokers: &str) -> Self {
        capture_logs();
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("create an admin client");
        if let Err(error) = admin.inner().fetch_metadata(None, Duration::from_secs(15)) {
            panic!("the brokers at {brokers} do not answer: {error}");
        }
        Cluster {
            backend: Backend::Broker {
                brokers: brokers.to_owned(),
                admin,
            },
        }
    }

    /// An embedded cluster of `brokers` brokers, whatever `KAFKA_BROKERS` says: for fault
    /// injection, which only the embedded cluster can do.
    pub fn embedded(brokers: i32) -> Self {
        capture_logs();
        let embedded = EmbeddedCluster::with_brokers(brokers).expect("start the embedded cluster");
        Cluster {
            backend: Backend::Embedded(embedded),
        }
    }

    /// The embedded cluster, for fault injection.
    pub fn mock(
        &self,
    ) -> &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        match &self.backend {
            Backend::Embedded(embedded) => embedded.mock(),
            Backend::Broker { .. } => panic!("fault injection needs the embedded cluster"),
        }
    }

    /// Whether this is a real broker (which, unlike the embedded cluster, honours LeaveGroup).
    pub fn is_real_broker(&self) -> bool {
        matches!(self.backend, Backend::Broker { .. })
    }

    pub fn brokers(&self) -> String {
        match &self.backend {
            Backend::Embedded(embedded) => embedded.bootstrap_servers(),
            Backend::Broker { brokers, .. } => brokers.clone(),
        }
    }

    /// Creates a topic with a name unique to this process and test.
    pub fn topic(&self, name: &str, partitions: i32) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let topic = format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_topic(&topic, partitions);
        topic
    }

    /// Creates a topic with exactly this name.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.backend {
            Backend::Embedded(embedded) => embedded
                .create_topic(topic, partitions)
                .expect("create topic"),
            Backend::Broker { admin, .. } => {
                let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
                let results =
                    futures::executor::block_on(admin.create_topics([&new_topic], &options))
                        .expect("create topic");
                for result in results {
                    result.unwrap_or_else(|(name, code)| panic!("create topic {name}: {code}"));
                }
                wait_until(
                    &format!("topic {topic} has {partitions} led partitions"),
                    SCENARIO_TIMEOUT,
                    || {
                        admin
                            .inner()
                            .fetch_metadata(Some(topic), Duration::from_secs(5))
                            .is_ok_and(|metadata| {
                                metadata.topics().first().is_some_and(|t| {
                                    t.error().is_none()
                                        && t.partitions().len() == partitions as usize
                                        && t.partitions().iter().all(|p| p.leader() >= 0)
                                })
                            })
                    },
                );
            }
        }
    }

    /// A topic no produce reaches: on the real broker, one that does not exist (the test
    /// broker creates none on demand); on the embedded cluster, one that refuses every
    /// request with an authorization error.
    pub fn unwritable_topic(&self, name: &str) -> String {
        let topic = format!("{name}-{}", std::process::id());
        if let Backend::Embedded(embedded) = &self.backend {
            embedded.create_topic(&topic, 1).expect("create topic");
            embedded
                .mock()
                .topic_error(
                    &topic,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                )
                .expect("inject a topic error");
        }
        topic
    }

    /// Reads `count` records of a topic from its start: key, payload and headers each. Fails
    /// the test if fewer arrive within the scenario timeout.
    pub fn read(&self, topic: &str, count: usize) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("reader-{topic}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("create a reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut records = Vec::new();
        let deadline = Instant::now() + SCENARIO_TIMEOUT;
        while records.len() < count {
            assert!(
                Instant::now() < deadline,
                "read {} of {count} records of {topic}",
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
                                let value =
                                    h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        records
    }

    /// Produces `count` more keyed messages and returns the topic's end offsets.
    pub fn produce(&self, topic: &str, count: usize) -> BTreeMap<i32, i64> {
        let before: i64 = self.end_offsets(topic).values().sum();
        let records = (0..count).map(|i| (format!("key-{before}-{i}"), format!("message {i}")));
        self.produce_records(topic, records)
    }

    /// Produces the given `(key, payload)` records and returns the topic's end offsets.
    pub fn produce_records(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (String, String)>,
    ) -> BTreeMap<i32, i64> {
        let before: i64 = self.end_offsets(topic).values().sum();
        let records: Vec<(String, String)> = records.into_iter().collect();
        let count = records.len();
        let produced = testkit::produce(&self.brokers(), topic, records).expect("produce");
        assert_eq!(produced, count);
        let ends = self.end_offsets(topic);
        assert_eq!(
            ends.values().sum::<i64>() - before,
            count as i64,
            "{ends:?}"
        );
        ends
    }

    fn client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", group)
            .create()
            .expect("create a client")
    }

    /// The next offset to be written, per partition.
    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let client = self.client("end-offsets");
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|partition| {
                // A broker busy with a new topic can fail a request now and then: retry.
                let mut attempts = 0;
                let high = loop {
                    match client.fetch_watermarks(topic, partition.id(), Duration::from_secs(10)) {
                        Ok((_, high)) => break high,
                        Err(error) if attempts < 20 => {
                            attempts += 1;
                            eprintln!(
                                "watermarks of {topic}/{}: {error}; retrying",
                                partition.id()
                            );
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        Err(error) => panic!("watermarks of {topic}/{}: {error}", partition.id()),
                    }
                };
                (partition.id(), high)
            })
            .collect()
    }

    /// The group's committed offsets, per partition that has one.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let client = self.client(group);
        let mut partitions = TopicPartitionList::new();
        for partition in self.end_offsets(topic).keys() {
            partitions.add_partition(topic, *partition);
        }
        client
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect()
    }

    /// A configuration for this cluster with test-friendly settings: the group protocol of
    /// [`group_protocol`], a short session, no signal handling (the test process is shared),
    /// frequent commits.
    pub fn config(&self, topic: &str, group: &str) -> ConsumerConfigBuilder {
        self.config_under(group_protocol(), topic, group)
    }

    /// [`config`](Self::config) under the given group protocol.
    pub fn config_under(
        &self,
        protocol: GroupProtocol,
        topic: &str,
        group: &str,
    ) -> ConsumerConfigBuilder {
        self.group_config(protocol, group).topic(topic)
    }

    /// The scenario tests' configuration of a member of `group`, under the given group
    /// protocol, with no topic yet (routes bring their own).
    pub fn group_config(&self, protocol: GroupProtocol, group: &str) -> ConsumerConfigBuilder {
        let config = ConsumerConfig::builder()
            .brokers(self.brokers())
            .group_id(group)
            .handle_signals(false)
            .commit_interval(Duration::from_millis(500))
            .startup_timeout(Duration::from_secs(20))
            .group_protocol(protocol);
        match protocol {
            GroupProtocol::Classic => config
                .kafka_option("session.timeout.ms", SESSION_TIMEOUT_MS)
                .kafka_option("heartbeat.interval.ms", "500"),
            _ => config,
        }
    }
}

/// The group protocol the scenario tests run under: `KAFKA_GROUP_PROTOCOL` (`classic`, the
/// default, or `consumer`), as `.ci/run` sets it for its second pass over the real broker.
pub fn group_protocol() -> GroupProtocol {
    match std::env::var("KAFKA_GROUP_PROTOCOL").as_deref() {
        Ok("consumer") => GroupProtocol::Consumer,
        Ok("classic") | Err(_) => GroupProtocol::Classic,
        Ok(other) => panic!("KAFKA_GROUP_PROTOCOL is {other:?}: classic or consumer"),
    }
}

/// Adds settings of the classic protocol (session, heartbeat, assignor), which the consumer
/// protocol leaves to the broker (scripts/kafka.sh sets its session to the same 6 s).
pub fn classic(
    mut config: ConsumerConfigBuilder,
    options: &[(&str, &str)],
) -> ConsumerConfigBuilder {
    if group_protocol() == GroupProtocol::Classic {
        for (key, value) in options {
            config = config.kafka_option(*key, *value);
        }
    }
    config
}

/// The framework's log lines at `info` and above, as `LEVEL target: message`.
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Every log line, of every level and target, once [`capture_everything`] was called.
static EVERYTHING: Mutex<Option<Vec<String>>> = Mutex::new(None);

/// Records the framework's (and the rdkafka crate's) log lines at `info` and above for [`captured_logs`], and prints what
/// `RUST_LOG` asks for (errors only, by default) on stderr, where the test harness captures it.
struct CapturingLogger {
    echo: log::LevelFilter,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        if let Some(everything) = EVERYTHING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            everything.push(line.clone());
        }
        // The framework's lines, and those of the rdkafka crate, which reports misuse of it
        // (librdkafka's own, under `librdkafka`, report the cluster's trouble).
        let ours =
            record.target().starts_with("kafka_actors") || record.target().starts_with("rdkafka::");
        if record.level() <= log::Level::Info && ours {
            CAPTURED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.clone());
        }
        if record.level() <= self.echo {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            let at = START.get_or_init(Instant::now).elapsed().as_secs_f64();
            eprintln!("{at:9.3} {line}");
        }
    }

    fn flush(&self) {}
}

/// Installs the capturing logger once per test process.
pub fn capture_logs() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let echo = match std::env::var("RUST_LOG").as_deref() {
            Ok("trace") => log::LevelFilter::Trace,
            Ok("debug") => log::LevelFilter::Debug,
            Ok("info") => log::LevelFilter::Info,
            Ok("warn") => log::LevelFilter::Warn,
            _ => log::LevelFilter::Error,
        };
        if log::set_boxed_logger(Box::new(CapturingLogger { echo })).is_ok() {
            log::set_max_level(log::LevelFilter::Info.max(echo));
        }
    });
}

/// From now on, keeps every log line of every level and target, for [`everything_logged`].
pub fn capture_everything() {
    capture_logs();
    EVERYTHING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(Vec::new);
    log::set_max_level(log::LevelFilter::Trace);
}

/// Every log line since [`capture_everything`].
pub fn everything_logged() -> Vec<String> {
    EVERYTHING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

/// The framework's (and the rdkafka crate's) log lines at `info` and above so far, from every test of this process.
pub fn captured_logs() -> Vec<String> {
    CAPTURED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A record as read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// A group name unique to this process and test.
pub fn group(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Every message processed, in the order processors finished them.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<(i32, i64)>>>);

impl Ledger {
    pub fn record(&self, partition: i32, offset: i64) {
        self.0.lock().unwrap().push((partition, offset));
    }

    pub fn entries(&self) -> Vec<(i32, i64)> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// What a set of ledger entries says against what the topic holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Audit {
    pub lost: usize,
    pub duplicated: usize,
}

/// Compares processed messages with the produced ones: every offset below each end offset is
/// expected exactly once.
pub fn audit(entries: &[(i32, i64)], end_offsets: &BTreeMap<i32, i64>) -> Audit {
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    for entry in entries {
        *seen.entry(*entry).or_default() += 1;
    }
    let lost = end_offsets
        .iter()
        .flat_map(|(&partition, &end)| (0..end).map(move |offset| (partition, offset)))
        .filter(|key| !seen.contains_key(key))
        .count();
    let duplicated = seen.values().map(|count| count - 1).sum();
    Audit { lost, duplicated }
}

/// The commit point the ledger implies per partition: one past the longest run of processed
/// offsets from zero.
pub fn commit_points(entries: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut processed: BTreeMap<i32, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for &(partition, offset) in entries {
        processed.entry(partition).or_default().insert(offset);
    }
    processed
        .into_iter()
        .map(|(partition, offsets)| {
            let mut next = 0;
            while offsets.contains(&next) {
                next += 1;
            }
            (partition, next)
        })
        .collect()
}

/// A processor that records what it processed, optionally after a random delay, and that can
/// be told to hang forever on one message.
pub struct Recorder {
    pub ledger: Ledger,
    pub delay_ms: Option<Range<u64>>,
    pub hang_at: Option<(i32, i64)>,
}

impl Recorder {
    pub fn new(ledger: &Ledger) -> Self {
        Recorder {
            ledger: ledger.clone(),
            delay_ms: None,
            hang_at: None,
        }
    }
}

impl Processor for Recorder {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if let Some(range) = &self.delay_ms {
            let delay = rand::rng().random_range(range.clone());
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.hang_at == Some((message.partition(), message.offset())) {
            std::future::pending::<()>().await;
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

/// The restart half of a scenario: runs a well-behaved system (recording into `ledger`) in the
/// group until every message of the topic was processed, stops it gracefully, and asserts
/// the outcome over both runs: nothing lost, nothing processed twice, and the group's
/// committed offsets at the topic's end.
pub fn restart_and_finish(
    cluster: &Cluster,
    config: ConsumerConfigBuilder,
    ledger: &Ledger,
    topic: &str,
    group: &str,
    end_offsets: &BTreeMap<i32, i64>,
) {
    let recorder = ledger.clone();
    let system = kafka_actors::ConsumerSystem::spawn(config.build().unwrap(), move || {
        Recorder::new(&recorder)
    })
    .unwrap();
    wait_until(
        "the restarted system processed the rest",
        SCENARIO_TIMEOUT,
        || audit(&ledger.entries(), end_offsets).lost == 0,
    );
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    let outcome = audit(&ledger.entries(), end_offsets);
    assert_eq!(
        outcome,
        Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(&cluster.committed_offsets(group, topic), end_offsets);
}

/// Waits until `done` holds, failing the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `ledger` example running as a child process in a group: it appends every message it
/// processes to a ledger file of its own.
pub struct LedgerProcess {
    child: Child,
}

impl LedgerProcess {
    /// Starts it with `delay_ms` of simulated work per message and `options`, comma-separated
    /// `key=value` librdkafka properties added to the test settings.
    pub fn start(
        cluster: &Cluster,
        topic: &str,
        group: &str,
        ledger: &Path,
        delay_ms: u64,
        options: &str,
    ) -> Self {
        let options = test_session_env(options).into_iter();
        let env = options.chain([
            ("LEDGER_FILE".to_owned(), ledger.display().to_string()),
            ("PROCESS_DELAY_MS".to_owned(), delay_ms.to_string()),
        ]);
        Self::start_example("ledger", cluster, topic, group, env)
    }

    /// Starts the example `name` in the group, configured from the environment as the
    /// `ledger` example is, with `env` added.
    pub fn start_example(
        name: &str,
        cluster: &Cluster,
        topic: &str,
        group: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let child = Command::new(example_binary(name))
            .env("KAFKA_BROKERS", cluster.brokers())
            .env("KAFKA_TOPICS", topic)
            .env("KAFKA_GROUP", group)
            .env("KAFKA_GROUP_PROTOCOL", group_protocol().name())
            .env("KAFKA_SHUTDOWN_TIMEOUT", "30s")
            .envs(env)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("start the {name} example: {error}"));
        LedgerProcess { child }
    }

    /// Sends SIGTERM and waits, bounded, for the exit; returns the status and the output.
    pub fn terminate(self) -> (ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        self.exit_by_itself()
    }

    /// Waits, bounded, for the process to exit by itself; returns the status and the output.
    pub fn exit_by_itself(mut self) -> (ExitStatus, String) {
        let status = self.wait();
        let mut output = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut output).unwrap();
        (status, output)
    }

    /// Sends a signal, without waiting.
    pub fn send(&self, signal: Signal) {
        self.signal(signal);
    }

    /// The process's peak resident set (`VmHWM`), in KiB, as the kernel counts it.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the child's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Kills the process with SIGKILL: no drain, no commit, no goodbye to the group.
    pub fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        self.wait();
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the child");
    }

    fn wait(&mut self) -> ExitStatus {
        let pid = self.child.id();
        let mut exited = None;
        wait_until(&format!("child {pid} exits"), SCENARIO_TIMEOUT, || {
            exited = self.child.try_wait().expect("wait for child");
            exited.is_some()
        });
        exited.unwrap()
    }
}

impl Drop for LedgerProcess {
    /// A test that fails midway leaves no child behind (it would hold the test's output open).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The test session settings (and `options`, comma-separated `key=value` librdkafka
/// properties) as the environment variables a container would pass them in:
/// `KAFKA_OPTION_SESSION_TIMEOUT_MS=6000`. The consumer protocol leaves session, heartbeat and
/// assignor to the broker.
pub fn test_session_env(options: &str) -> Vec<(String, String)> {
    let mut kafka_options =
        format!("session.timeout.ms={SESSION_TIMEOUT_MS},heartbeat.interval.ms=500");
    if !options.is_empty() {
        kafka_options = format!("{kafka_options},{options}");
    }
    // librdkafka properties as a container passes them: KAFKA_OPTION_SESSION_TIMEOUT_MS.
    // The consumer protocol leaves session, heartbeat and assignor to the broker.
    let protocol = group_protocol();
    kafka_options
        .split(',')
        .filter_map(|option| {
            let (key, value) = option.split_once('=')?;
            let classic_only = matches!(
                key.trim(),
                "session.timeout.ms" | "heartbeat.interval.ms" | "partition.assignment.strategy"
            );
            if classic_only && protocol == GroupProtocol::Consumer {
                return None;
            }
            let variable = format!(
                "KAFKA_OPTION_{}",
                key.trim().to_uppercase().replace('.', "_")
            );
            Some((variable, value.trim().to_owned()))
        })
        .collect()
}

/// One line of a ledger file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLine {
    pub partition: i32,
    pub offset: i64,
    /// When the message finished, in milliseconds since the Unix epoch.
    pub finished_ms: u128,
}

/// The lines of a ledger file written by the `ledger` example (none if it does not exist).
pub fn read_ledger_lines(path: &Path) -> Vec<LedgerLine> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(1);
            Some(LedgerLine {
                partition: fields.next()?.parse().ok()?,
                offset: fields.next()?.parse().ok()?,
                finished_ms: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The `(partition, offset)` entries of a ledger file.
pub fn read_ledger(path: &Path) -> Vec<(i32, i64)> {
    read_ledger_lines(path)
        .into_iter()
        .map(|line| (line.partition, line.offset))
        .collect()
}

/// The path of an example binary. `cargo test` builds the examples with the tests, but
/// `cargo test --tests` and `--all-targets` do not: then it is built here, once per test
/// process, with the same cargo, profile and features.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let test_binary = std::env::current_exe().expect("current exe");
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("examples").join(name);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo to build the example");
        assert!(
            status.success(),
            "cargo build --example {name} failed: {status}"
        );
        built.push(name.to_owned());
    }
    assert!(
        binary.exists(),
        "{} not found after the build",
        binary.display()
    );
    binary
}

/// An Apache Kafka broker of a test's own, plaintext only (`scripts/kafka.sh` with a home
/// and ports of its own), for what the shared broker cannot be put through without
/// disturbing the tests beside: stopped and started again, its log segments read. Stopped
/// when dropped.
pub struct OwnBroker {
    home: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl OwnBroker {
    /// Starts one on free ports and waits until it answers.
    pub fn start() -> Self {
        let broker = OwnBroker {
            home: tempfile::tempdir().expect("a home for the broker"),
            port: free_addr().port(),
            controller_port: free_addr().port(),
        };
        broker.script("start");
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A cluster handle on it.
    pub fn cluster(&self) -> Cluster {
        Cluster::broker(&self.brokers())
    }

    /// Stops it (SIGTERM, a clean shutdown).
    pub fn stop(&self) {
        self.script("stop");
    }

    /// Starts it again on what it held.
    pub fn resume(&self) {
        self.script("resume");
    }

    /// The directory of a partition's log segments.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.home
            .path()
            .join("data")
            .join(format!("{topic}-{partition}"))
    }

    fn script(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let output = Command::new("bash")
            .arg(script)
            .arg(command)
            .env("KAFKA_HOME", self.home.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_SECURED", "0")
            .output()
            .expect("run scripts/kafka.sh");
        assert!(
            output.status.success(),
            "scripts/kafka.sh {command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
    }
}

/// An address on this machine with a port free a moment ago.
///
/// Below the ephemeral range (Linux: from 32768): the kernel hands ports from that range to
/// whatever binds port 0 (the embedded clusters of tests running beside this one), which
/// could take a port picked there before the test binds it.
pub fn free_addr() -> SocketAddr {
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a bound address");
        }
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1")
}

/// `GET path`, or `None` while nothing listens at `addr` yet (a child process starting).
pub fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    Some(get(addr, path))
}

/// `GET path`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}
