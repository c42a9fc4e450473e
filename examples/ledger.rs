//! Ledger: proves the graceful-shutdown guarantee from outside the process.
//!
//! Every processed message's `topic partition offset millis` (millis: when it finished, since
//! the Unix epoch) is appended to a ledger file, with one unbuffered write per message, so
//! the file survives even a `kill -9`. Stop the program with
//! SIGTERM or Ctrl-C mid-stream, start it again, and the ledger holds every message of the
//! topic exactly once: the graceful shutdown committed exactly what was finished (at-least-once
//! with 0 duplicates after a graceful stop). It also shows the lifecycle hooks: each processor
//! opens the ledger in `on_start` and syncs it to disk in `on_stop`.
//!
//! ```text
//! KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPIC=orders KAFKA_GROUP=ledger LEDGER_FILE=ledger.txt \
//!     cargo run --example ledger
//! ```
//!
//! Optional: `PROCESS_DELAY_MS` (simulated work per message), `SHUTDOWN_TIMEOUT_MS`, and
//! `KAFKA_OPTIONS` (comma-separated `key=value` librdkafka properties).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use kafka_actors::{ConsumerConfig, ConsumerSystem, Message, Processor};

struct LedgerWriter {
    path: PathBuf,
    file: Option<File>,
    delay: Duration,
}

impl Processor for LedgerWriter {
    async fn on_start(&mut self) -> anyhow::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open the ledger {}", self.path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let finished = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let line = format!(
            "{} {} {} {finished}\n",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let file = self.file.as_mut().context("the ledger is not open")?;
        file.write_all(line.as_bytes())?;
        Ok(())
    }

    async fn on_stop(&mut self) -> anyhow::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_data()?;
        }
        Ok(())
    }
}

fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is required"))
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    let value = std::env::var(name).map_or(Ok(default), |value| value.parse())?;
    Ok(Duration::from_millis(value))
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = PathBuf::from(required("LEDGER_FILE")?);
    let delay = millis("PROCESS_DELAY_MS", 0)?;

    let mut builder = ConsumerConfig::builder()
        .brokers(required("KAFKA_BROKERS")?)
        .topic(required("KAFKA_TOPIC")?)
        .group_id(required("KAFKA_GROUP")?)
        .shutdown_timeout(millis("SHUTDOWN_TIMEOUT_MS", 30_000)?);
    for option in std::env::var("KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((key, value)) = option.split_once('=') {
            builder = builder.kafka_option(key.trim(), value.trim());
        }
    }

    let report = ConsumerSystem::start(builder.build()?, move || LedgerWriter {
        path: path.clone(),
        file: None,
        delay,
    })?;
    println!("{report}");
    anyhow::ensure!(
        report.is_clean(),
        "the system did not stop cleanly: {}",
        report.reason
    );
    Ok(())
}
