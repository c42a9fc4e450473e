//! The Arroyo peer in the benchmark: Sentry's `sentry_arroyo` stream processor with a strategy
//! that only counts (a no-op, like F's processor), in a consumer group. It consumes
//! `--messages` messages of `--topic` in `--group`, then commits the offsets it consumed
//! through Arroyo's own commit path and exits. It prints one JSON line with what it measured,
//! from the first message to the last.
//!
//! librdkafka gets the settings the other Rust contenders get (`auto.offset.reset=earliest`,
//! `fetch.queue.backoff.ms=10`); as shipped, Arroyo keeps librdkafka's 1 s backoff, which
//! idles it whenever its prefetch queue fills.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sentry_arroyo::backends::kafka::InitialOffset;
use sentry_arroyo::backends::kafka::config::KafkaConfig;
use sentry_arroyo::backends::kafka::types::KafkaPayload;
use sentry_arroyo::processing::StreamProcessor;
use sentry_arroyo::processing::strategies::{
    CommitRequest, ProcessingStrategy, ProcessingStrategyFactory, StrategyError, SubmitError,
};
use sentry_arroyo::types::{Message, Partition, Topic};

/// What the strategies of successive assignments share.
#[derive(Default)]
struct Progress {
    target: u64,
    messages: AtomicU64,
    bytes: AtomicU64,
    first: OnceLock<Instant>,
    last: OnceLock<Instant>,
    /// The next offset of each partition, committed once every message arrived.
    positions: Mutex<HashMap<Partition, u64>>,
    committed: AtomicBool,
}

struct Count(Arc<Progress>);

impl ProcessingStrategy<KafkaPayload> for Count {
    fn poll(&mut self) -> Result<Option<CommitRequest>, StrategyError> {
        if self.0.last.get().is_none() || self.0.committed.swap(true, Ordering::Relaxed) {
            return Ok(None);
        }
        let positions = self.0.positions.lock().unwrap().clone();
        Ok(Some(CommitRequest { positions }))
    }

    fn submit(&mut self, message: Message<KafkaPayload>) -> Result<(), SubmitError<KafkaPayload>> {
        let progress = &self.0;
        progress.first.get_or_init(Instant::now);
        let size = message.payload().payload().map_or(0, Vec::len) as u64;
        progress.bytes.fetch_add(size, Ordering::Relaxed);
        progress
            .positions
            .lock()
            .unwrap()
            .extend(message.committable());
        if progress.messages.fetch_add(1, Ordering::Relaxed) + 1 == progress.target {
            progress.last.get_or_init(Instant::now);
        }
        Ok(())
    }

    fn terminate(&mut self) {}

    fn join(&mut self, _: Option<Duration>) -> Result<Option<CommitRequest>, StrategyError> {
        Ok(None)
    }
}

struct Factory(Arc<Progress>);

impl ProcessingStrategyFactory<KafkaPayload> for Factory {
    fn create(&self) -> Box<dyn ProcessingStrategy<KafkaPayload>> {
        Box::new(Count(self.0.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| panic!("{name} is required"))
    };
    let progress = Arc::new(Progress {
        target: value("--messages").parse().expect("--messages is a number"),
        ..Progress::default()
    });
    let config = KafkaConfig::new_consumer_config(
        vec![value("--brokers")],
        value("--group"),
        InitialOffset::Earliest,
        false,
        30_000,
        Some(HashMap::from([(
            "fetch.queue.backoff.ms".to_owned(),
            "10".to_owned(),
        )])),
    );
    let mut processor = StreamProcessor::with_kafka(
        config,
        Factory(progress.clone()),
        Topic::new(&value("--topic")),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while !progress.committed.load(Ordering::Relaxed) {
        processor.run_once().expect("arroyo's run loop");
        assert!(Instant::now() < deadline, "gave up after 600 s");
    }
    processor.shutdown();
    let (first, last) = (progress.first.get().unwrap(), progress.last.get().unwrap());
    println!(
        "{}",
        serde_json::json!({
            "messages": progress.messages.load(Ordering::Relaxed),
            "bytes": progress.bytes.load(Ordering::Relaxed),
            "seconds": last.duration_since(*first).as_secs_f64(),
        })
    );
}
