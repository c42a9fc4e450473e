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
//! KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPICS=orders KAFKA_GROUP=ledger LEDGER_FILE=ledger.txt \
//!     cargo run --example ledger
//! ```
//!
//! The whole configuration comes from the environment (`ConsumerConfig::from_env`: for
//! example `KAFKA_SHUTDOWN_TIMEOUT=25s`, `KAFKA_OPTION_SESSION_TIMEOUT_MS=10000`,
//! `HTTP_ADDR=0.0.0.0:9464` for metrics and health); `PROCESS_DELAY_MS` adds simulated work
//! per message. This is the program `deploy/` packages into a container.

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

    let config = ConsumerConfig::from_env()?;

    let report = ConsumerSystem::start(config, move || LedgerWriter {
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
