//! The benchmark: the framework against a raw librdkafka poll loop and against peers, in one
//! run, on the same broker and topics.
//!
//! ```text
//! scripts/bench.sh                                      # everything, writes BENCHMARKS.md
//! cargo bench --bench benchmark -- --brokers 127.0.0.1:9092 [--runs 3] [--scale 0.1]
//!     [--backends real,mock] [--no-peers]
//!     [--sections throughput,scaling,latency,shutdown,drain,memory]
//! scripts/bench.sh ordering                             # the ordering-mode table only
//! scripts/bench.sh sinks                                # the database sink table only
//! cargo bench --bench benchmark -- sinks [--brokers B] [--database-url URL] [--runs 3]
//! cargo bench --bench benchmark -- ordering [--processors 1000] [--brokers B]
//! ```
//!
//! The driver preloads the topics, then runs each contender in a child process of its own
//! (this same binary with `contender <kind>`: B1, B2, F; Kafka's `ConsumerPerformance`; the
//! peers under `benches/`: Sarama and franz-go in Go, Arroyo in Rust; the record-batch spike
//! under `benches/spike`), alternating contenders run after run, and reads each child's CPU
//! time from `wait4` and its peak RSS from `/proc/<pid>/status` (VmHWM).
//!
//! To profile one contender by hand:
//!
//! ```text
//! benchmark contender preload --brokers B --topic T --group - --messages 1000000 --partitions 8 --payload 100
//! perf record -e cpu-clock -g benchmark contender f --brokers B --topic T --group G --messages 1000000
//! ```

mod contenders;
mod driver;
mod latency;
mod ordering;
mod sinks;

use std::time::Duration;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let value = |name: &str| -> Option<String> {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if args.first().map(String::as_str) == Some("contender") {
        let kind = args.get(1).context("contender needs a kind")?.clone();
        let run = contenders::Run {
            brokers: value("--brokers").context("--brokers")?,
            topic: value("--topic").context("--topic")?,
            group: value("--group").context("--group")?,
            messages: value("--messages").map_or(Ok(0), |n| n.parse())?,
        };
        return match kind.as_str() {
            "b1" => contenders::raw_poll_loop(&run),
            "b2" => contenders::raw_batch_loop(&run, false, false),
            "b2t" => contenders::raw_batch_loop(&run, true, false),
            // Latency under the driver's paced stream.
            "b2-latency" => contenders::raw_batch_loop(&run, false, true),
            "f-latency" => contenders::framework_latency(&run),
            "f" => contenders::framework(&run, false, false),
            // A no-op batch processor.
            "fb" => contenders::framework(&run, false, true),
            // The same, with the Prometheus recorder and the HTTP server: what metrics cost.
            "fp" => contenders::framework(&run, true, false),
            "serve" => contenders::serve(&run),
            "drain" => contenders::drain(&run),
            "hold" => contenders::hold(&run),
            // Not a contender: fills a topic, for profiling one contender by hand.
            "preload" => driver::create_and_preload(
                &run,
                value("--partitions").map_or(Ok(8), |n| n.parse())?,
                value("--payload").map_or(Ok(100), |n| n.parse())?,
            ),
            other => anyhow::bail!("unknown contender {other}"),
        };
    }

    if args.first().map(String::as_str) == Some("ordering") {
        let processors = value("--processors").map_or(Ok(1000), |n| n.parse())?;
        let table = ordering::run(value("--brokers"), processors)?;
        let path = driver::out_dir().join("ordering.md");
        std::fs::create_dir_all(driver::out_dir())?;
        std::fs::write(&path, &table)?;
        println!("{table}");
        eprintln!("table written to {}", path.display());
        return Ok(());
    }

    if args.first().map(String::as_str) == Some("sinks") {
        let table = sinks::run(
            value("--brokers"),
            value("--database-url").or_else(|| std::env::var("DATABASE_URL").ok()),
            value("--runs").map_or(Ok(3), |n| n.parse())?,
            value("--scale").map_or(Ok(1.0), |n| n.parse())?,
        )?;
        let path = driver::out_dir().join("sinks.md");
        std::fs::create_dir_all(driver::out_dir())?;
        std::fs::write(&path, &table)?;
        println!("{table}");
        eprintln!("table written to {}", path.display());
        return Ok(());
    }

    let options = driver::Options {
        brokers: value("--brokers").or_else(|| std::env::var("KAFKA_BROKERS").ok()),
        backends: value("--backends").unwrap_or_else(|| "real,mock".to_owned()),
        runs: value("--runs").map_or(Ok(3), |n| n.parse())?,
        scale: value("--scale").map_or(Ok(1.0), |n| n.parse())?,
        peers: !args.iter().any(|arg| arg == "--no-peers"),
        child_timeout: Duration::from_secs(600),
        sections: value("--sections")
            .unwrap_or_else(|| "throughput,scaling,latency,shutdown,drain,memory".to_owned()),
    };
    driver::run(options)
}
