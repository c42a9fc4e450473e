//! End-to-end latency under a paced stream: the driver produces at a fixed rate, each
//! message carrying its send time, and the consumer records, per message, the time from that
//! send to the end of its processing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::contenders::unix_nanos;
use crate::driver::{Backend, Child, create_topic, median, repo_root, self_contender, spread};

/// The produce rates, messages per second (`BENCH_LATENCY_RATES=1000,50000` picks others, for
/// a quick look).
const RATES: &[u64] = &[1_000, 10_000, 50_000];
/// How long each paced stream runs.
const STREAM: Duration = Duration::from_secs(10);
const PARTITIONS: i32 = 8;
const PAYLOAD: usize = 100;
/// Distinct keys, so that per key runs many lanes at once.
const KEYS: u64 = 1_000;

/// The consumers measured: a benchmark contender and the `KAFKA_ORDERING` it runs with.
const CONSUMERS: &[(&str, &str, Option<&str>)] = &[
    ("B2: raw rdkafka batch loop", "b2-latency", None),
    ("F, per partition", "f-latency", Some("per-partition")),
    ("F, per key", "f-latency", Some("per-key")),
    ("F, unordered", "f-latency", Some("unordered")),
];

struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
}

/// The latency section of the report (real broker only): `runs` rounds per rate (at most
/// 3), the consumers alternating within each round, medians of each percentile.
pub fn section(backend: &Backend, runs: usize, timeout: Duration) -> anyhow::Result<String> {
    let runs = runs.clamp(1, 3);
    let rates: Vec<u64> = match std::env::var("BENCH_LATENCY_RATES") {
        Ok(rates) => rates
            .split(',')
            .map(|rate| rate.trim().parse())
            .collect::<Result<_, _>>()?,
        Err(_) => RATES.to_vec(),
    };
    let mut rows = String::new();
    for rate in rates {
        let mut figures: Vec<Vec<Percentiles>> = CONSUMERS.iter().map(|_| Vec::new()).collect();
        for round in 0..runs {
            for ((name, kind, ordering), figures) in CONSUMERS.iter().zip(&mut figures) {
                let run = paced_run(backend, kind, *ordering, rate, round, timeout)
                    .with_context(|| format!("{name} at {rate} msgs/s"))?;
                eprintln!(
                    "[latency] {name} at {rate} msgs/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                    run.p50, run.p99, run.p999
                );
                figures.push(run);
            }
        }
        for ((name, _, _), figures) in CONSUMERS.iter().zip(figures) {
            let median = |of: fn(&Percentiles) -> f64| median(figures.iter().map(of).collect());
            let (low, high) = spread(figures.iter().map(|f| f.p99));
            writeln!(
                rows,
                "| {rate} | {name} | {:.2} | {:.2} | {:.2} to {:.2} | {:.2} |",
                median(|f| f.p50),
                median(|f| f.p99),
                low,
                high,
                median(|f| f.p999)
            )?;
        }
    }
    let java = kafka_end_to_end(backend).context("Kafka's EndToEndLatency")?;
    // It prints whole milliseconds: 0 is under one.
    let whole = |ms: f64| {
        if ms < 1.0 {
            "< 1".to_owned()
        } else {
            format!("{ms:.0}")
        }
    };
    writeln!(
        rows,
        "| one at a time | Kafka EndToEndLatency (Java, reference) | {} | {} | | {} |",
        whole(java.p50),
        whole(java.p99),
        whole(java.p999)
    )?;
    Ok(format!(
        "\n## End-to-end latency on the real broker\n\n\
         The driver produces {}-byte messages to {PARTITIONS} partitions at a fixed rate for \
         {} s ({KEYS} distinct keys, librdkafka producer with `linger.ms=1`), each carrying \
         its send time; the consumer, already in its group, records for every message the \
         time from that send to the end of its processing (F: the end of `process`, a no-op; \
         B2: the message taken from librdkafka). Medians of {runs} runs per cell, the \
         consumers alternating, with the spread of p99 (lowest to highest run): the broker, \
         the producer and the consumer share two cores, and at 50,000 msgs/s a run's tail \
         is often set by which of them the scheduler ran. Kafka's own `EndToEndLatency` tool \
         is the reference: it sends one message at a time and waits for it to be consumed \
         (acks=1, a 1-partition topic; it prints whole milliseconds).\n\n\
         | msgs/s | consumer | p50 (ms) | p99 (ms) | p99 spread (ms) | p99.9 (ms) |\n|---|---|---:|---:|---|---:|\n{rows}",
        PAYLOAD,
        STREAM.as_secs(),
    ))
}

/// One consumer under one rate: a fresh topic, the consumer joined (it has seen the warm-up
/// message), the paced stream, then the consumer's percentiles.
fn paced_run(
    backend: &Backend,
    kind: &str,
    ordering: Option<&str>,
    rate: u64,
    round: usize,
    timeout: Duration,
) -> anyhow::Result<Percentiles> {
    let topic = format!(
        "bench-latency-{rate}-{kind}-{}-{round}-{}",
        ordering.unwrap_or("none"),
        std::process::id()
    );
    backend.create_topic(&topic, PARTITIONS)?;
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &backend.brokers)
        // 1 ms: with 0, librdkafka's producer sends a request per message and falls a second
        // behind at 10,000 msgs/s on this machine (its flush came 1 s after the last send).
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000")
        .create()?;
    let messages = rate * STREAM.as_secs();
    let mut command = self_contender(kind, &backend.brokers, &topic, &topic, messages + 1);
    if let Some(ordering) = ordering {
        command.env("KAFKA_ORDERING", ordering);
    }
    let child = Child::spawn(&mut command)?;
    // A warm-up message (send time 0, not counted): the consumer announces it once it is in
    // the group and reading.
    send(&producer, &topic, 0, 0)?;
    child.wait_for_line("first-message", Duration::from_secs(60))?;

    let gap = Duration::from_secs(1).as_secs_f64() / rate as f64;
    let start = Instant::now();
    for i in 0..messages {
        let due = start + Duration::from_secs_f64(i as f64 * gap);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        send(&producer, &topic, i % KEYS, unix_nanos())?;
    }
    let sending = start.elapsed();
    producer.flush(Duration::from_secs(30))?;
    eprintln!(
        "[latency] {messages} messages sent in {sending:?}, flushed after {:?}",
        start.elapsed()
    );
    let finished = child.wait(timeout)?;
    let json = finished.last_json()?;
    let latency = &json["latency"];
    let count = latency["count"].as_u64().context("count")?;
    anyhow::ensure!(
        count == messages,
        "{kind} timed {count} of {messages} messages"
    );
    let field = |name: &str| latency[name].as_f64().with_context(|| name.to_owned());
    Ok(Percentiles {
        p50: field("p50")?,
        p99: field("p99")?,
        p999: field("p999")?,
    })
}

/// Sends one message with key `key` and the send time `sent` (Unix nanoseconds) in its first
/// 8 bytes, retrying while the producer's queue is full.
fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    key: u64,
    sent: u64,
) -> anyhow::Result<()> {
    let mut payload = [b'x'; PAYLOAD];
    payload[..8].copy_from_slice(&sent.to_le_bytes());
    let key = key.to_le_bytes();
    let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Kafka's `EndToEndLatency` on a 1-partition topic: its percentiles line.
fn kafka_end_to_end(backend: &Backend) -> anyhow::Result<Percentiles> {
    let topic = format!("bench-latency-java-{}", std::process::id());
    create_topic(&backend.brokers, &topic, 1)?;
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("scripts").join("kafka.sh"))
        .args(["run-class", "org.apache.kafka.tools.EndToEndLatency"])
        .args(["--bootstrap-server", &backend.brokers, "--topic", &topic])
        .args(["--num-records", "5000", "--producer-acks", "1"])
        .args(["--record-size", &PAYLOAD.to_string()])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "EndToEndLatency failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "Percentiles: 50th = 1, 99th = 9, 99.9th = 15"
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Percentiles:"))
        .context("no percentiles in EndToEndLatency's output")?;
    let values: Vec<f64> = line
        .split(',')
        .map(|part| part.rsplit('=').next().unwrap_or("").trim().parse())
        .collect::<Result<_, _>>()?;
    let [p50, p99, p999] = values[..] else {
        anyhow::bail!("unexpected line {line:?}");
    };
    Ok(Percentiles { p50, p99, p999 })
}
