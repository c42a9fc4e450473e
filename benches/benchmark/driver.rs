//! Preloads topics, runs the contenders in child processes, and writes the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use kafka_actors::testkit::{self, EmbeddedCluster};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;

pub struct Options {
    pub brokers: Option<String>,
    pub backends: String,
    pub runs: usize,
    pub scale: f64,
    pub peers: bool,
    pub child_timeout: Duration,
    /// Which parts run: `throughput`, `shutdown`, `drain`, `memory` (comma-separated).
    pub sections: String,
}

struct Workload {
    payload: usize,
    partitions: i32,
    messages: u64,
    /// The producer's `compression.type` ("none" or a codec): real topics are compressed, and
    /// decompression is part of every consumer's cost.
    compression: &'static str,
}

impl Workload {
    fn name(&self) -> String {
        let mut name = format!("{} B, {} partition(s)", self.payload, self.partitions);
        if self.compression != "none" {
            name.push_str(&format!(", {}", self.compression));
        }
        name
    }
}

const WORKLOADS: &[Workload] = &[
    Workload {
        payload: 100,
        partitions: 1,
        messages: 1_000_000,
        compression: "none",
    },
    Workload {
        payload: 100,
        partitions: 8,
        messages: 1_000_000,
        compression: "none",
    },
    Workload {
        payload: 100,
        partitions: 8,
        messages: 1_000_000,
        compression: "lz4",
    },
    Workload {
        payload: 1_000,
        partitions: 1,
        messages: 300_000,
        compression: "none",
    },
    Workload {
        payload: 1_000,
        partitions: 8,
        messages: 300_000,
        compression: "none",
    },
];

/// What the benchmark stores per partition on the mock cluster, which retains about 5 MB.
const MOCK_PARTITION_BYTES: u64 = 4_000_000;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn out_dir() -> PathBuf {
    repo_root().join("target").join("bench")
}

/// Where a backend's brokers are, and the embedded cluster if it is one.
pub struct Backend {
    name: &'static str,
    pub brokers: String,
    _embedded: Option<EmbeddedCluster>,
}

impl Backend {
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match &self._embedded {
            Some(embedded) => Ok(embedded.create_topic(topic, partitions)?),
            None => create_topic(&self.brokers, topic, partitions),
        }
    }
}

/// Creates a topic on a real broker.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))?;
    for result in results {
        result.map_err(|(name, code)| anyhow::anyhow!("create {name}: {code}"))?;
    }
    std::thread::sleep(Duration::from_secs(1)); // Leaders are elected right after creation.
    Ok(())
}

pub fn run(options: Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir())?;
    let throughput = options
        .sections
        .split(',')
        .any(|s| s.trim() == "throughput");
    let peers = if options.peers && throughput {
        Peers::build()
    } else {
        Peers::default()
    };
    let mut report = String::new();
    writeln!(report, "{}", machine_description())?;

    for backend_name in options.backends.split(',') {
        let backend = match backend_name.trim() {
            "real" => match &options.brokers {
                Some(brokers) => Backend {
                    name: "Apache Kafka 4.3.1 (KRaft, one node, 127.0.0.1)",
                    brokers: brokers.clone(),
                    _embedded: None,
                },
                None => {
                    eprintln!("skipping the real broker: no --brokers and no KAFKA_BROKERS");
                    continue;
                }
            },
            "mock" => {
                let embedded = EmbeddedCluster::start()?;
                Backend {
                    name: "embedded mock cluster (librdkafka, in the driver process)",
                    brokers: embedded.bootstrap_servers(),
                    _embedded: Some(embedded),
                }
            }
            other => bail!("unknown backend {other}"),
        };
        let real = backend._embedded.is_none();
        let section = |name: &str| options.sections.split(',').any(|s| s.trim() == name);
        if section("throughput") {
            writeln!(report, "\n## Throughput on the {}\n", backend.name)?;
            writeln!(
                report,
                "Medians of {} runs; contenders alternate run after run.\n",
                options.runs
            )?;
        }
        let mut goals = Vec::new();
        for workload in WORKLOADS.iter().filter(|_| section("throughput")) {
            let mut messages = ((workload.messages as f64 * options.scale) as u64).max(1_000);
            if !real {
                // The mock cluster keeps only about 5 MB per partition and drops older
                // messages, as retention would: stay under it.
                let per_message = workload.payload as u64 + 20;
                messages =
                    messages.min(workload.partitions as u64 * MOCK_PARTITION_BYTES / per_message);
            }
            let topic = format!(
                "bench-{}b-{}p-{}-{}",
                workload.payload,
                workload.partitions,
                workload.compression,
                std::process::id()
            );
            eprintln!(
                "[{}] preloading {topic} with {messages} messages",
                backend_name
            );
            backend.create_topic(&topic, workload.partitions)?;
            preload_compressed(
                &backend.brokers,
                &topic,
                messages,
                workload.payload,
                workload.compression,
            )?;

            let mut kinds = vec!["B1", "B2", "B2T", "F", "FH", "FB"];
            if options.peers && real {
                kinds.push("Java");
                kinds.extend(peers.available());
            }
            let mut results: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
            for round in 0..options.runs {
                for kind in &kinds {
                    let group = format!("{topic}-{kind}-{round}");
                    let sample = run_contender(
                        kind,
                        &backend.brokers,
                        &topic,
                        &group,
                        messages,
                        &peers,
                        options.child_timeout,
                    )
                    .with_context(|| format!("{kind} on {topic}"))?;
                    eprintln!(
                        "[{backend_name}] {topic} {kind} run {round}: {:.0} msgs/s",
                        sample.messages_per_second
                    );
                    results.entry(kind).or_default().push(sample);
                }
            }
            writeln!(report, "### {}, {messages} messages\n", workload.name())?;
            report.push_str(&throughput_table(&kinds, &results));
            goals.push(Goals::of(workload, "F", &kinds, &results));
            goals.push(Goals::of(workload, "FH", &kinds, &results));
            goals.push(Goals::of(workload, "FB", &kinds, &results));
        }
        if !goals.is_empty() {
            report.push_str(&goals_table(&goals));
        }
        if real && section("scaling") {
            report.push_str(&scaling_figures(
                &backend,
                options.runs,
                options.scale,
                options.child_timeout,
            )?);
        }
        if real && section("latency") {
            report.push_str(&crate::latency::section(
                &backend,
                options.runs,
                options.child_timeout,
            )?);
        }
        if real && section("shutdown") {
            report.push_str(&shutdown_figures(
                &backend,
                options.runs,
                options.child_timeout,
            )?);
        }
        if section("drain") {
            report.push_str(&drain_figures(
                &backend,
                options.runs,
                options.child_timeout,
            )?);
        }
        if (real || options.brokers.is_none()) && section("memory") {
            report.push_str(&memory_figures(&backend, options.child_timeout)?);
        }
    }
    let path = out_dir().join("report.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// Creates a topic on any broker and fills it (the `preload` subcommand).
pub fn create_and_preload(
    run: &crate::contenders::Run,
    partitions: i32,
    payload: usize,
) -> anyhow::Result<()> {
    let backend = Backend {
        name: "given",
        brokers: run.brokers.clone(),
        _embedded: None,
    };
    backend.create_topic(&run.topic, partitions)?;
    preload(&run.brokers, &run.topic, run.messages, payload)
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("Machine: {cores} cores ({cpu}), {memory} GiB memory; run on {date}.")
}

fn preload(brokers: &str, topic: &str, messages: u64, payload: usize) -> anyhow::Result<()> {
    preload_compressed(brokers, topic, messages, payload, "none")
}

/// [`preload`], the producer compressing with `compression` (its `compression.type`). The
/// payload is text that compresses as log lines do, not one repeated byte.
fn preload_compressed(
    brokers: &str,
    topic: &str,
    messages: u64,
    payload: usize,
    compression: &str,
) -> anyhow::Result<()> {
    if compression != "none" {
        return preload_with_producer(brokers, topic, messages, payload, compression);
    }
    let body = vec![b'x'; payload];
    let records = (0..messages).map(|i| (i.to_le_bytes(), body.as_slice()));
    let produced = testkit::produce(brokers, topic, records)?;
    anyhow::ensure!(
        produced as u64 == messages,
        "produced {produced} of {messages}"
    );
    Ok(())
}

fn preload_with_producer(
    brokers: &str,
    topic: &str,
    messages: u64,
    payload: usize,
    compression: &str,
) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "60000")
        .create()?;
    for i in 0..messages {
        let body = log_line(i, payload);
        let key = i.to_le_bytes();
        let mut record = BaseRecord::to(topic).key(&key[..]).payload(&body[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    anyhow::ensure!(
        producer.in_flight_count() == 0,
        "not every message was delivered"
    );
    Ok(())
}

/// `payload` bytes of text like a log line's, numbered: compresses about as real records do.
fn log_line(number: u64, payload: usize) -> Vec<u8> {
    let mut line = format!(
        "ts=2026-12-05T08:00:{:02}Z level=info service=orders request={number} user={} msg=\"order accepted\" ",
        number % 60,
        number % 9973
    )
    .into_bytes();
    line.resize(payload, b'.');
    line
}

/// The peers built from source in `benches/`, each left out (and said so) when its build
/// fails.
#[derive(Default)]
pub struct Peers {
    sarama: Option<PathBuf>,
    franz_go: Option<PathBuf>,
    arroyo: Option<PathBuf>,
    /// Not a peer: the record-batch decoding spike (`benches/spike`).
    spike: Option<PathBuf>,
}

impl Peers {
    fn build() -> Peers {
        Peers {
            sarama: build_go("sarama"),
            franz_go: build_go("franz-go"),
            arroyo: build_crate(
                "arroyo",
                "arroyo-consumer",
                "; librdkafka's CMake build, which Arroyo asks for, needs libcurl's headers \
                 (Debian: libcurl4-openssl-dev)",
            ),
            spike: build_crate("spike", "record-batch-spike", ""),
        }
    }

    /// The peers' contender kinds, in table order, and the spike's.
    fn available(&self) -> Vec<&'static str> {
        [
            ("Sarama", &self.sarama),
            ("FranzGo", &self.franz_go),
            ("Arroyo", &self.arroyo),
            ("Spike", &self.spike),
            ("SpikeCrate", &self.spike),
        ]
        .into_iter()
        .filter_map(|(kind, binary)| binary.as_ref().map(|_| kind))
        .collect()
    }
}

/// Builds the Go consumer in `benches/<name>` into `target/bench/<name>-consumer`.
fn build_go(name: &str) -> Option<PathBuf> {
    let binary = out_dir().join(format!("{name}-consumer"));
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(repo_root().join("benches").join(name))
        .status();
    match built {
        Ok(status) if status.success() => Some(binary),
        other => {
            eprintln!("the Go peer {name} is left out: go build failed ({other:?})");
            None
        }
    }
}

/// Builds `benches/<name>`, a crate of its own (its dependencies stay out of this one's), in
/// `target/peers`.
fn build_crate(name: &str, binary: &str, needs: &str) -> Option<PathBuf> {
    let target = repo_root().join("target").join("peers");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(repo_root().join("benches").join(name).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status();
    match built {
        Ok(status) if status.success() => Some(target.join("release").join(binary)),
        other => {
            eprintln!("{name} is left out: cargo build failed ({other:?}){needs}");
            None
        }
    }
}

/// One contender run: its own figures and its process's resource usage.
struct Sample {
    messages_per_second: f64,
    megabytes_per_second: f64,
    cpu_seconds_per_million: f64,
    peak_rss_mib: f64,
    /// Voluntary context switches (the process's threads waiting) per 1,000 messages.
    switches_per_thousand: f64,
    /// Minor page faults per 1,000 messages.
    faults_per_thousand: f64,
}

fn run_contender(
    kind: &str,
    brokers: &str,
    topic: &str,
    group: &str,
    messages: u64,
    peers: &Peers,
    timeout: Duration,
) -> anyhow::Result<Sample> {
    run_contender_with(kind, brokers, topic, group, messages, peers, &[], timeout)
}

/// [`run_contender`] with environment variables for the child.
#[allow(clippy::too_many_arguments)]
fn run_contender_with(
    kind: &str,
    brokers: &str,
    topic: &str,
    group: &str,
    messages: u64,
    peers: &Peers,
    env: &[(&str, String)],
    timeout: Duration,
) -> anyhow::Result<Sample> {
    let go = |binary: &Option<PathBuf>| -> anyhow::Result<Command> {
        let mut command = Command::new(binary.as_ref().context("peer not built")?);
        command.args([
            "-brokers",
            brokers,
            "-topic",
            topic,
            "-group",
            group,
            "-messages",
            &messages.to_string(),
        ]);
        Ok(command)
    };
    let mut command = match kind {
        "B1" | "B2" | "B2T" | "F" | "FB" => {
            self_contender(&kind.to_lowercase(), brokers, topic, group, messages)
        }
        "FH" => {
            let mut command = self_contender("f", brokers, topic, group, messages);
            command.env("KAFKA_READ_HEADERS", "false");
            command
        }
        "Java" => {
            let mut command = Command::new("bash");
            command
                .arg(repo_root().join("scripts").join("kafka.sh"))
                .args([
                    "run-class",
                    "org.apache.kafka.tools.ConsumerPerformance",
                    "--bootstrap-server",
                    brokers,
                    "--topic",
                    topic,
                    "--group",
                    group,
                ])
                .args(["--messages", &messages.to_string(), "--timeout", "60000"]);
            command
        }
        "Sarama" => go(&peers.sarama)?,
        "FranzGo" => go(&peers.franz_go)?,
        "Arroyo" => {
            let mut command = Command::new(peers.arroyo.as_ref().context("peer not built")?);
            command
                .args(["--brokers", brokers, "--topic", topic, "--group", group])
                .args(["--messages", &messages.to_string()]);
            command
        }
        "Spike" | "SpikeCrate" => {
            let mut command = Command::new(peers.spike.as_ref().context("spike not built")?);
            command
                .args(["--brokers", brokers, "--topic", topic])
                .args(["--messages", &messages.to_string()])
                .args(["--decoder", if kind == "Spike" { "own" } else { "crate" }]);
            command
        }
        other => bail!("unknown contender {other}"),
    };
    command.envs(env.iter().map(|(key, value)| (key, value)));
    let child = Child::spawn(&mut command)?;
    let finished = child.wait(timeout)?;
    let (count, bytes, seconds) = match kind {
        "Java" => java_figures(&finished.lines)?,
        _ => {
            let json = finished.last_json()?;
            (
                json["messages"].as_f64().context("messages")?,
                json["bytes"].as_f64().context("bytes")?,
                json["seconds"].as_f64().context("seconds")?,
            )
        }
    };
    anyhow::ensure!(
        count as u64 >= messages,
        "{kind} consumed {count} of {messages}"
    );
    Ok(Sample {
        messages_per_second: count / seconds,
        megabytes_per_second: bytes / seconds / 1e6,
        cpu_seconds_per_million: finished.cpu_seconds / count * 1e6,
        peak_rss_mib: finished.max_rss_kib as f64 / 1024.0,
        switches_per_thousand: finished.voluntary_switches as f64 / count * 1e3,
        faults_per_thousand: finished.minor_faults as f64 / count * 1e3,
    })
}

/// Reads `ConsumerPerformance`'s CSV line; its fetch figures exclude the group join, like
/// the other contenders' first-to-last-message figures.
fn java_figures(lines: &[String]) -> anyhow::Result<(f64, f64, f64)> {
    let header = lines
        .iter()
        .position(|l| l.contains("fetch.nMsg.sec"))
        .context("no ConsumerPerformance header")?;
    let names: Vec<&str> = lines[header].split(',').map(str::trim).collect();
    let values: Vec<&str> = lines
        .get(header + 1)
        .context("no ConsumerPerformance figures")?
        .split(',')
        .map(str::trim)
        .collect();
    let field = |name: &str| -> anyhow::Result<f64> {
        let index = names
            .iter()
            .position(|n| *n == name)
            .with_context(|| format!("no {name}"))?;
        Ok(values[index].parse()?)
    };
    let count = field("data.consumed.in.nMsg")?;
    let seconds = field("fetch.time.ms")? / 1000.0;
    let megabytes = field("data.consumed.in.MB")? * 1024.0 * 1024.0 / 1e6;
    Ok((count, megabytes * 1e6, seconds))
}

pub fn self_contender(
    kind: &str,
    brokers: &str,
    topic: &str,
    group: &str,
    messages: u64,
) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command
        .args([
            "contender",
            kind,
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--group",
            group,
        ])
        .args(["--messages", &messages.to_string()])
        .env("RUST_LOG", "warn");
    command
}

/// The lowest and the highest of `values`.
pub fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::MAX, f64::MIN), |(low, high), value| {
            (low.min(value), high.max(value))
        })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn throughput_table(kinds: &[&str], results: &BTreeMap<&str, Vec<Sample>>) -> String {
    let medians =
        |kind: &str, metric: fn(&Sample) -> f64| median(results[kind].iter().map(metric).collect());
    let baseline = medians("B2", |s| s.messages_per_second);
    let mut table = String::from(
        "| contender | msgs/s | spread (msgs/s) | MB/s | CPU s per 1M msgs | vol. context switches per 1k msgs | minor faults per 1k msgs | peak RSS (MiB) | ratio to B2 |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for kind in kinds {
        let rate = medians(kind, |s| s.messages_per_second);
        let (low, high) = spread(results[kind].iter().map(|s| s.messages_per_second));
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} to {:.0} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0} | {:.2} |",
            contender_name(kind),
            rate,
            low,
            high,
            medians(kind, |s| s.megabytes_per_second),
            medians(kind, |s| s.cpu_seconds_per_million),
            medians(kind, |s| s.switches_per_thousand),
            medians(kind, |s| s.faults_per_thousand),
            medians(kind, |s| s.peak_rss_mib),
            rate / baseline
        );
    }
    table.push('\n');
    table
}

fn contender_name(kind: &str) -> &'static str {
    match kind {
        "B1" => "B1: raw rdkafka BaseConsumer poll loop",
        "B2" => "B2: raw rdkafka batch loop",
        "B2T" => "B2 tuned: B2 with bigger fetches",
        "F" => "F: kafka-actors, no-op processor, 4 processors",
        "FH" => "F, headers not read (`read_headers(false)`)",
        "FB" => "FB: kafka-actors, no-op batch processor, 4 processors",
        "Java" => "Kafka ConsumerPerformance (Java)",
        "Sarama" => "Sarama consumer group (Go)",
        "FranzGo" => "franz-go consumer group (Go)",
        "Arroyo" => "Arroyo, counting strategy (Rust, sentry_arroyo)",
        "Spike" => "Spike: record batches read in place (no group, no commit)",
        "SpikeCrate" => "Spike with kafka-protocol's decoder (a Record per message)",
        _ => "?",
    }
}

/// One workload's standing against the goals: F against B2 in the same run, and F
/// against the fastest peer.
struct Goals {
    workload: String,
    framework: &'static str,
    throughput: f64,
    cpu: f64,
    overhead_ns: f64,
    switches: f64,
    fastest_peer: Option<(&'static str, f64, f64)>,
}

impl Goals {
    fn of(
        workload: &Workload,
        framework: &str,
        kinds: &[&str],
        results: &BTreeMap<&str, Vec<Sample>>,
    ) -> Goals {
        let medians = |kind: &str, metric: fn(&Sample) -> f64| {
            median(results[kind].iter().map(metric).collect())
        };
        let rate = |kind: &str| medians(kind, |s| s.messages_per_second);
        let cpu = |kind: &str| medians(kind, |s| s.cpu_seconds_per_million);
        let switches = |kind: &str| medians(kind, |s| s.switches_per_thousand);
        let fastest_peer = kinds
            .iter()
            .filter(|kind| ["Java", "Sarama", "FranzGo", "Arroyo"].contains(kind))
            .map(|kind| (*kind, rate(kind)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(kind, peer_rate)| {
                (
                    contender_name(kind),
                    rate(framework) / peer_rate,
                    cpu(framework) / cpu(kind),
                )
            });
        Goals {
            workload: workload.name(),
            framework: match framework {
                "F" => "F",
                "FB" => "FB, batches",
                _ => "F, headers not read",
            },
            throughput: rate(framework) / rate("B2"),
            cpu: cpu(framework) / cpu("B2"),
            overhead_ns: (cpu(framework) - cpu("B2")) * 1e3,
            switches: switches(framework) / switches("B2"),
            fastest_peer,
        }
    }
}

fn goals_table(goals: &[Goals]) -> String {
    let mut table = String::from(
        "### The framework against B2 and the fastest peer\n\n\
         Goals: F at least 0.95 of B2's msgs/s, F's CPU per message at most 1.2 times B2's, \
         its voluntary context switches per message at most 1.5 times B2's, F ahead of every \
         peer. The overhead is F's CPU per message minus B2's (whole process, start and stop \
         included). B2 does not read headers; F does by default; the second row of each \
         workload is F with `read_headers(false)`, the third FB, a no-op batch processor.\n\n\
         | workload | framework | / B2 msgs/s (goal >= 0.95) | / B2 CPU per msg (goal <= 1.2) | - B2 CPU per msg | / B2 vol. switches per msg (goal <= 1.5) | fastest peer | / it msgs/s | / it CPU per msg |\n\
         |---|---|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for goal in goals {
        let mark = |met: bool| if met { "met" } else { "not met" };
        let (peer, peer_rate, peer_cpu) = match goal.fastest_peer {
            Some((name, rate, cpu)) => (name, format!("{rate:.2}"), format!("{cpu:.2}")),
            None => ("(none run)", String::new(), String::new()),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {:.2} ({}) | {:.2} ({}) | {:.0} ns | {:.2} ({}) | {peer} | {peer_rate} | {peer_cpu} |",
            goal.workload,
            goal.framework,
            goal.throughput,
            mark(goal.throughput >= 0.95),
            goal.cpu,
            mark(goal.cpu <= 1.2),
            goal.overhead_ns,
            goal.switches,
            mark(goal.switches <= 1.5),
        );
    }
    table.push('\n');
    table
}

/// Throughput and CPU per message from 1 to 64 to 512 partitions (4 processors), then from
/// 4 to 64 to 256 processors on 512 partitions; B2 beside F for the framework's overhead.
fn scaling_figures(
    backend: &Backend,
    runs: usize,
    scale: f64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let messages = ((1_000_000.0 * scale) as u64).max(1_000);
    let no_peers = Peers::default();
    let mut rows = String::new();
    let mut b2_of_512 = None;
    for (partitions, processors) in [(1, 4), (64, 4), (512, 4), (512, 64), (512, 256)] {
        let topic = format!("bench-scaling-{partitions}p-{}", std::process::id());
        if processors == 4 {
            eprintln!("[scaling] preloading {topic} with {messages} messages");
            backend.create_topic(&topic, partitions)?;
            preload(&backend.brokers, &topic, messages, 100)?;
        }
        let env = [("KAFKA_PROCESSORS", processors.to_string())];
        let (mut b2, mut f): (Vec<Sample>, Vec<Sample>) = (vec![], vec![]);
        for round in 0..runs {
            if processors == 4 {
                let group = format!("{topic}-B2-{round}");
                b2.push(run_contender(
                    "B2",
                    &backend.brokers,
                    &topic,
                    &group,
                    messages,
                    &no_peers,
                    timeout,
                )?);
            }
            let group = format!("{topic}-F-{processors}-{round}");
            f.push(run_contender_with(
                "F",
                &backend.brokers,
                &topic,
                &group,
                messages,
                &no_peers,
                &env,
                timeout,
            )?);
        }
        let figures = |samples: &[Sample]| {
            (
                median(samples.iter().map(|s| s.messages_per_second).collect()),
                median(samples.iter().map(|s| s.cpu_seconds_per_million).collect()),
            )
        };
        let b2 = if b2.is_empty() {
            b2_of_512.context("B2 on 512 partitions")?
        } else {
            figures(&b2)
        };
        if partitions == 512 {
            b2_of_512 = Some(b2);
        }
        let f = figures(&f);
        eprintln!("[scaling] {partitions} partitions, {processors} processors: B2 {b2:?}, F {f:?}");
        writeln!(
            rows,
            "| {partitions} | {processors} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} ns |",
            b2.0,
            f.0,
            f.0 / b2.0,
            b2.1,
            f.1,
            (f.1 - b2.1) * 1e3
        )?;
    }
    Ok(format!(
        "\n## Scaling on the real broker\n\n\
         {messages} messages of 100 B per topic; F per partition with the processors given \
         (`KAFKA_PROCESSORS`), B2 (which has no processors) beside it on the same topic. \
         Medians of {runs} runs, alternating. The last column is the framework's overhead: F's \
         CPU per message minus B2's.\n\n\
         | partitions | processors | B2 msgs/s | F msgs/s | F / B2 | B2 CPU s per 1M | F CPU s per 1M | F - B2 CPU per msg |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n"
    ))
}

/// SIGTERM under load, then a second instance in the same group.
fn shutdown_figures(backend: &Backend, runs: usize, timeout: Duration) -> anyhow::Result<String> {
    let topic = format!("bench-shutdown-{}", std::process::id());
    backend.create_topic(&topic, 8)?;
    // Enough that the first instance, reading about 2 million messages a second, leaves
    // plenty for the next one after its second of consuming.
    preload(&backend.brokers, &topic, 8_000_000, 100)?;
    let classic = handover(backend, &topic, "classic", runs, timeout)?;
    let consumer = handover(backend, &topic, "consumer", runs, timeout)?;
    let row = |figure: &str, value: &dyn Fn(&Handover) -> String| {
        format!(
            "| {figure} | {} | {} |\n",
            value(&classic),
            value(&consumer)
        )
    };
    Ok(format!(
        "\n## Shutdown and handover on the real broker\n\n\
         A service (`serve`: the framework with a processor that records offset ranges) consumes \
         a preloaded 8-partition topic at full speed; after 1 s it gets SIGTERM. A second \
         instance then starts in the same group. Under each group protocol \
         (`KAFKA_GROUP_PROTOCOL`), medians of {runs} runs.\n\n\
         | figure | classic protocol | consumer protocol (KIP-848) |\n|---|---:|---:|\n{}{}{}{}{}\n",
        row("SIGTERM to process exit, final commit done", &|h| format!(
            "{:.3} s",
            median(h.exits.clone())
        )),
        row("of which draining in-flight messages", &|h| format!(
            "{:.3} s",
            median(h.drains.clone())
        )),
        row(
            "previous instance's exit to the next instance's first message",
            &|h| format!("{:.3} s", median(h.handovers.clone()))
        ),
        row(
            "messages the next instance saw again (duplicates), all runs",
            &|h| h.duplicates.to_string()
        ),
        row("offsets the next instance skipped (lost), all runs", &|h| h
            .gaps
            .to_string()),
    ))
}

/// The figures of [`handover`]'s runs.
#[derive(Default)]
struct Handover {
    exits: Vec<f64>,
    drains: Vec<f64>,
    handovers: Vec<f64>,
    duplicates: i64,
    gaps: i64,
}

/// `runs` times under `protocol`: a first instance consumes for a second and gets SIGTERM, a
/// second one starts in the same group.
fn handover(
    backend: &Backend,
    topic: &str,
    protocol: &str,
    runs: usize,
    timeout: Duration,
) -> anyhow::Result<Handover> {
    let mut figures = Handover::default();
    let serve = |group: &str| {
        let mut command = self_contender("serve", &backend.brokers, topic, group, 0);
        command.env("KAFKA_GROUP_PROTOCOL", protocol);
        command
    };
    for round in 0..runs {
        let group = format!("{topic}-{protocol}-{round}");
        let first = Child::spawn(&mut serve(&group))?;
        first.wait_for_line("first-message", Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_secs(1)); // Consuming at full speed.
        let signalled = Instant::now();
        first.signal(libc::SIGTERM);
        let first = first.wait(timeout)?;
        let exit = signalled.elapsed();
        let exited_at = SystemTime::now();
        let first_json = first.last_json()?;
        anyhow::ensure!(
            first_json["clean"].as_bool() == Some(true),
            "unclean shutdown: {first_json}"
        );

        let second = Child::spawn(&mut serve(&group))?;
        let line = second
            .wait_for_line("first-message", Duration::from_secs(120))
            .context("the next instance got no message (did the first read the whole topic?)")?;
        let first_message_at: u128 = line
            .split_whitespace()
            .nth(1)
            .context("timestamp")?
            .parse()?;
        let handover =
            first_message_at as f64 / 1e9 - exited_at.duration_since(UNIX_EPOCH)?.as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        second.signal(libc::SIGTERM);
        let second_json = second.wait(timeout)?.last_json()?;

        for (partition, range) in second_json["ranges"].as_object().context("ranges")? {
            let second_low = range[0].as_i64().context("low")?;
            if let Some(first_range) = first_json["ranges"].get(partition) {
                let first_high = first_range[1].as_i64().context("high")?;
                figures.duplicates += (first_high + 1 - second_low).max(0);
                figures.gaps += (second_low - (first_high + 1)).max(0);
            }
        }
        eprintln!("[shutdown] {protocol} run {round}: exit {exit:?}, handover {handover:.3}s");
        figures.exits.push(exit.as_secs_f64());
        figures
            .drains
            .push(first_json["drain_seconds"].as_f64().unwrap_or(0.0));
        figures.handovers.push(handover);
    }
    Ok(figures)
}

/// SIGTERM to exit with a deep backlog: 100,000 messages of 3 ms work (a few seconds in,
/// almost all of it still waiting), per ordering mode and pool size; and 1,000,000 messages
/// of 100 B with no work, one second in.
fn drain_figures(backend: &Backend, runs: usize, timeout: Duration) -> anyhow::Result<String> {
    let real = backend._embedded.is_none();
    let slow_topic = format!("bench-drain-slow-{}", std::process::id());
    let slow_messages = 100_000u64;
    backend.create_topic(&slow_topic, 8)?;
    preload(&backend.brokers, &slow_topic, slow_messages, 100)?;
    let fast_topic = format!("bench-drain-fast-{}", std::process::id());
    // The mock cluster keeps about 4 MB per partition.
    let fast_messages = if real {
        1_000_000u64
    } else {
        8 * MOCK_PARTITION_BYTES / 120
    };
    backend.create_topic(&fast_topic, 8)?;
    preload(&backend.brokers, &fast_topic, fast_messages, 100)?;

    let mut rows = String::new();
    let cases: Vec<(&str, u64, &str, &str, u64, Duration)> = [
        ("per-partition", 4),
        ("per-partition", 64),
        ("per-key", 4),
        ("per-key", 64),
        ("unordered", 4),
        ("unordered", 64),
    ]
    .into_iter()
    .map(|(ordering, processors)| {
        (
            slow_topic.as_str(),
            slow_messages,
            "3 ms",
            ordering,
            processors,
            Duration::from_secs(3),
        )
    })
    .chain([(
        fast_topic.as_str(),
        fast_messages,
        "none",
        "per-partition",
        4,
        Duration::from_secs(1),
    )])
    .collect();
    for (topic, messages, work, ordering, processors, after) in cases {
        let (mut exits, mut drains, mut left, mut clean) = (vec![], vec![], vec![], true);
        for round in 0..runs {
            let group = format!("{topic}-{ordering}-{processors}-{round}");
            let mut command = self_contender("drain", &backend.brokers, topic, &group, 0);
            command
                .env("DRAIN_WORK_MS", if work == "none" { "0" } else { "3" })
                .env("KAFKA_PROCESSORS", processors.to_string())
                .env("KAFKA_ORDERING", ordering);
            let child = Child::spawn(&mut command)?;
            child.wait_for_line("first-message", Duration::from_secs(60))?;
            std::thread::sleep(after);
            let signalled = Instant::now();
            child.signal(libc::SIGTERM);
            let finished = child.wait(timeout)?;
            let exit = signalled.elapsed().as_secs_f64();
            let json = finished.last_json()?;
            clean &= json["clean"].as_bool() == Some(true);
            let processed = json["processed"].as_u64().context("processed")?;
            eprintln!(
                "[drain] {work} {ordering} {processors}: exit {exit:.3}s, {processed} processed"
            );
            exits.push(exit);
            drains.push(json["drain_seconds"].as_f64().unwrap_or(0.0));
            left.push(messages.saturating_sub(processed) as f64);
        }
        writeln!(
            rows,
            "| {messages} x 100 B, {work} each | {ordering} | {processors} | {:.0} | {:.3} s | {:.3} s | {} |",
            median(left),
            median(exits),
            median(drains),
            if clean { "yes" } else { "no" }
        )?;
    }
    Ok(format!(
        "\n## Stopping with a deep backlog on the {}\n\n\
         A service consumes a preloaded 8-partition topic; a few seconds in (1 s with no work) \
         it gets SIGTERM, with most of the topic still to do. Its processors finish what they \
         hold; what the fetcher took but did not hand out is left for the next reader. \
         SIGTERM to exit includes the final commit and leaving the group. Medians of {runs} \
         runs.\n\n\
         | backlog | ordering | processors | left for the next reader | SIGTERM to exit | of which draining | clean |\n\
         |---|---|---:|---:|---:|---:|---|\n{rows}",
        backend.name
    ))
}

/// Peak RSS with N messages of 1 KB in flight.
fn memory_figures(backend: &Backend, timeout: Duration) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for in_flight in [64u64, 1_000, 10_000] {
        let topic = format!("bench-hold-{in_flight}-{}", std::process::id());
        // Eight partitions, so that 10 MB stay within what the mock cluster retains.
        backend.create_topic(&topic, 8)?;
        preload(&backend.brokers, &topic, in_flight, 1_000)?;
        let child = Child::spawn(&mut self_contender(
            "hold",
            &backend.brokers,
            &topic,
            &topic,
            in_flight,
        ))?;
        let finished = child.wait(timeout)?;
        let held = finished.last_json()?["in_flight"]
            .as_u64()
            .context("in_flight")?;
        anyhow::ensure!(
            held == in_flight,
            "only {held} of {in_flight} messages were in flight"
        );
        rows.push((in_flight, finished.max_rss_kib));
    }
    let (low, low_rss) = rows[0];
    let mut table = format!(
        "\n## Memory per in-flight message (1 KB payloads, {})\n\n\
         A processor that never finishes holds every message of an 8-partition topic in \
         flight; the shutdown report confirms how many were in flight. Growth is measured \
         from the {low}-message run.\n\n\
         | in flight | peak RSS (MiB) | growth per message over {low} (bytes) |\n|---:|---:|---:|\n",
        if backend._embedded.is_some() {
            "embedded cluster"
        } else {
            "real broker"
        }
    );
    for (in_flight, rss) in &rows {
        let per_message = if *in_flight > low {
            format!(
                "{:.0}",
                (*rss - low_rss) as f64 * 1024.0 / (*in_flight - low) as f64
            )
        } else {
            "".to_owned()
        };
        let _ = writeln!(
            table,
            "| {in_flight} | {:.1} | {per_message} |",
            *rss as f64 / 1024.0
        );
    }
    table.push('\n');
    Ok(table)
}

/// A child process whose stdout is read line by line, whose CPU time is collected with
/// `wait4` when it exits, and whose peak RSS is read from `/proc/<pid>/status` while it runs.
/// (`wait4`'s `ru_maxrss` would not do: Linux carries the parent's peak over into a child
/// across fork and exec, so every child would seem at least as large as this driver.)
/// A child not reaped by [`wait`](Child::wait) (the driver failed on the way) is killed when
/// dropped, so that a failed run leaves no contender behind.
pub struct Child {
    pid: libc::pid_t,
    lines: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
    reaped: bool,
    _child: std::process::Child,
}

pub struct Finished {
    lines: Vec<String>,
    cpu_seconds: f64,
    max_rss_kib: i64,
    voluntary_switches: i64,
    minor_faults: i64,
}

impl Finished {
    pub fn last_json(&self) -> anyhow::Result<Value> {
        let line = self
            .lines
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no JSON in {:?}", self.lines))?;
        Ok(serde_json::from_str(line)?)
    }
}

impl Child {
    pub fn spawn(command: &mut Command) -> anyhow::Result<Child> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            pid: child.id() as libc::pid_t,
            lines,
            seen: Default::default(),
            reaped: false,
            _child: child,
        })
    }

    pub fn wait_for_line(&self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no {prefix:?} line within {limit:?}"))?;
            self.seen.borrow_mut().push(line.clone());
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.pid, signal) };
    }

    pub fn wait(mut self, limit: Duration) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + limit;
        let mut status = 0;
        // SAFETY: rusage is plain data, fully written by wait4 when it reaps the child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let mut peak_rss_kib = 0;
        loop {
            peak_rss_kib = peak_rss_kib.max(peak_rss_of(self.pid).unwrap_or(0));
            // SAFETY: status and usage are valid for writes; the pid is our own child's.
            let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == self.pid {
                self.reaped = true;
                break;
            }
            if reaped < 0 {
                bail!("wait4 failed: {}", std::io::Error::last_os_error());
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!("child {} did not finish within {limit:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        anyhow::ensure!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child {} failed with status {status}",
            self.pid
        );
        let mut lines = self.seen.take();
        // Until the reader thread ends, at the child's end of output.
        lines.extend(self.lines.iter());
        let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
        Ok(Finished {
            lines,
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            max_rss_kib: peak_rss_kib,
            voluntary_switches: usage.ru_nvcsw,
            minor_faults: usage.ru_minflt,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            // SAFETY: reaps our own child; status and usage are not wanted.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// The process's peak resident set (VmHWM) in KiB, while it runs.
fn peak_rss_of(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
