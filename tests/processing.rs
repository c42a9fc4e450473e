//! Processing and committing while running: every message once, commit points exact even when
//! completions arrive out of order, failures never committed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_actors::{ConsumerSystem, Message, Processor, StopReason};
use support::{
    Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, commit_points, group, wait_until,
};

#[test]
fn every_produced_message_is_processed_once_and_committed() {
    let cluster = Cluster::start();
    let topic = cluster.topic("all-once", 4);
    let group = group("all-once");
    let end_offsets = cluster.produce(&topic, 2_000);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .processors(4)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("all 2000 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 2_000
    });
    system.stop();
    let report = system.join().unwrap();

    assert_eq!(
        audit(&ledger.entries(), &end_offsets),
        support::Audit {
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(report.processed, 2_000);
    assert!(report.is_clean(), "{report}");
    let reported: Vec<(i32, i64)> = report
        .committed
        .iter()
        .map(|(p, o)| (p.partition(), *o))
        .collect();
    assert_eq!(
        reported,
        end_offsets.clone().into_iter().collect::<Vec<_>>()
    );
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
}

#[test]
fn out_of_order_completions_commit_exactly_the_finished_prefix() {
    let cluster = Cluster::start();
    let topic = cluster.topic("out-of-order", 8);
    let group = group("out-of-order");
    let end_offsets = cluster.produce(&topic, 3_000);

    // Three processors share eight partitions and take random time per message, so
    // completions reach the tracker interleaved across partitions. Abandoning the drain leaves
    // every partition at an arbitrary point.
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .processors(3)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder {
        delay_ms: Some(0..4),
        ..Recorder::new(&recorder)
    })
    .unwrap();
    wait_until("300 messages are processed", SCENARIO_TIMEOUT, || {
        ledger.len() >= 300
    });
    system.stop_now();
    let report = system.join().unwrap();

    let first_run = ledger.entries();
    assert!(
        first_run.len() < 3_000,
        "the drain was abandoned mid-stream"
    );
    let expected = commit_points(&first_run);
    let committed = cluster.committed_offsets(&group, &topic);
    for partition in end_offsets.keys() {
        assert_eq!(
            committed.get(partition).copied().unwrap_or(0),
            expected.get(partition).copied().unwrap_or(0),
            "partition {partition}: committed {committed:?}, ledger implies {expected:?}"
        );
    }
    for (partition, offset) in &report.committed {
        assert_eq!(
            Some(offset),
            committed.get(&partition.partition()),
            "report agrees with Kafka"
        );
    }
    assert!(!report.abandoned.is_empty(), "{report}");

    let config = cluster.config(&topic, &group).processors(3);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}

/// Fails (or panics) on every attempt at one message; processes the others.
struct FailsAt {
    ledger: Ledger,
    at: (i32, i64),
    panic: bool,
}

impl Processor for FailsAt {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if (message.partition(), message.offset()) == self.at {
            if self.panic {
                panic!("bug on offset {}", message.offset());
            }
            anyhow::bail!("cannot process offset {}", message.offset());
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

fn a_failure_stops_the_system_and_is_never_committed(panic: bool) {
    let cluster = Cluster::start();
    let topic = cluster.topic("failure", 2);
    let group = group(if panic { "panic" } else { "error" });
    let end_offsets = cluster.produce(&topic, 400);

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(&topic, &group)
        .processors(2)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || FailsAt {
        ledger: recorder.clone(),
        at: (0, 50),
        panic,
    })
    .unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();

    match &report.reason {
        StopReason::ProcessingFailed {
            partition,
            offset,
            error,
        } => {
            assert_eq!((partition.partition(), *offset), (0, 50));
            // The default policy: three attempts, then stop.
            let expected = if panic {
                "panicked: bug on offset 50 (after 3 attempts)"
            } else {
                "cannot process offset 50 (after 3 attempts)"
            };
            assert_eq!(error, expected);
        }
        other => panic!("stopped for another reason: {other}"),
    }
    assert_eq!(report.retries, 2, "{report}");
    // Each panic replaced the processor with a fresh one.
    assert_eq!(
        report.processor_restarts,
        if panic { 3 } else { 0 },
        "{report}"
    );
    assert!(!report.is_clean());
    assert_eq!(cluster.committed_offsets(&group, &topic).get(&0), Some(&50));
    assert!(
        !ledger.entries().iter().any(|&(p, o)| p == 0 && o >= 50),
        "nothing after the failure"
    );

    // The failed message comes back on the next start.
    let config = cluster.config(&topic, &group).processors(2);
    support::restart_and_finish(&cluster, config, &ledger, &topic, &group, &end_offsets);
}

#[test]
fn a_processing_error_is_retried_then_stops_the_system_and_is_never_committed() {
    a_failure_stops_the_system_and_is_never_committed(false);
}

#[test]
fn a_panicking_processor_is_restarted_then_stops_the_system_and_is_never_committed() {
    a_failure_stops_the_system_and_is_never_committed(true);
}

#[test]
fn a_stop_before_any_assignment_commits_nothing_and_returns_promptly() {
    // Messages are there to be committed, but the coordinator keeps refusing the member's
    // join: no assignment can come before the stop (the embedded cluster injects it).
    let cluster = Cluster::embedded(1);
    let topic = cluster.topic("early-stop", 1);
    let group = group("early-stop");
    cluster.produce(&topic, 100);
    cluster.mock().request_errors(
        rdkafka::types::RDKafkaApiKey::JoinGroup,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 1000],
    );
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config_under(kafka_actors::GroupProtocol::Classic, &topic, &group)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("the member tried to join", SCENARIO_TIMEOUT, || {
        support::captured_logs()
            .iter()
            .any(|line| line.contains("started: group") && line.contains(&group))
    });
    let metrics = system.metrics();
    system.stop();
    let report = system.join().unwrap();
    assert_eq!(metrics.assignments, 0, "{metrics:?}");
    assert!(ledger.entries().is_empty());
    assert!(report.committed.is_empty(), "{report}");
    assert!(report.shutdown_time() < Duration::from_secs(30), "{report}");
    assert!(cluster.committed_offsets(&group, &topic).is_empty());
}

/// A message's key and payload, as the processor saw them.
type KeyAndPayload = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Collects every message's key and payload.
struct Contents(Arc<Mutex<Vec<KeyAndPayload>>>);

impl Processor for Contents {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let entry = (
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
        );
        self.0.lock().unwrap().push(entry);
        Ok(())
    }
}

#[test]
fn keys_and_payloads_arrive_intact() {
    let cluster = Cluster::start();
    let topic = cluster.topic("contents", 3);
    let group = group("contents");
    // Sizes from empty to several kilobytes, so that messages share batch buffers unevenly.
    let records: Vec<(String, String)> = (0..600)
        .map(|i| {
            (
                format!("key-{i}"),
                "x".repeat(i * 7 % 5_000) + &i.to_string(),
            )
        })
        .collect();
    kafka_actors::testkit::produce(&cluster.brokers(), &topic, records.clone()).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = seen.clone();
    let config = cluster.config(&topic, &group).build().unwrap();
    let system = ConsumerSystem::spawn(config, move || Contents(collector.clone())).unwrap();
    wait_until("all 600 messages are processed", SCENARIO_TIMEOUT, || {
        seen.lock().unwrap().len() >= 600
    });
    system.stop();
    system.join().unwrap();

    let mut seen: Vec<(Vec<u8>, Vec<u8>)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(key, payload)| (key.clone().unwrap(), payload.clone().unwrap()))
        .collect();
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = records
        .into_iter()
        .map(|(key, payload)| (key.into_bytes(), payload.into_bytes()))
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen.len(), expected.len());
    assert!(seen == expected, "a key or payload changed on the way");
}

/// Everything a processor can read of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

/// Collects everything of every message.
struct Everything(Arc<Mutex<Vec<Seen>>>);

impl Processor for Everything {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        let seen = Seen {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|(name, value)| (name.to_owned(), value.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: message.timestamp(),
        };
        self.0.lock().unwrap().push(seen);
        Ok(())
    }
}

#[test]
fn headers_timestamps_tombstones_and_keyless_messages_arrive_intact() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let cluster = Cluster::start();
    let topic = cluster.topic("everything", 1);
    let group = group("everything");
    let expected = vec![
        Seen {
            key: Some(b"with-headers".to_vec()),
            payload: Some(b"payload".to_vec()),
            headers: vec![
                ("trace".to_owned(), Some(b"abc".to_vec())),
                ("empty".to_owned(), Some(Vec::new())),
                ("null".to_owned(), None),
                ("trace".to_owned(), Some(b"again".to_vec())),
            ],
            timestamp: Some(1_700_000_000_001),
        },
        Seen {
            key: Some(b"tombstone".to_vec()),
            payload: None,
            headers: Vec::new(),
            timestamp: Some(1_700_000_000_002),
        },
        Seen {
            key: None,
            payload: Some(b"keyless".to_vec()),
            headers: vec![("only".to_owned(), Some(b"one".to_vec()))],
            timestamp: Some(1_700_000_000_003),
        },
        Seen {
            key: Some(Vec::new()),
            payload: Some(Vec::new()),
            headers: Vec::new(),
            timestamp: Some(1_700_000_000_004),
        },
    ];
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .create()
        .unwrap();
    for message in &expected {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&topic).timestamp(message.timestamp.unwrap());
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        if let Some(payload) = &message.payload {
            record = record.payload(payload);
        }
        if !message.headers.is_empty() {
            let headers = message
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    })
                });
            record = record.headers(headers);
        }
        producer.send(record).map_err(|(error, _)| error).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = seen.clone();
    let config = cluster.config(&topic, &group).build().unwrap();
    let system = ConsumerSystem::spawn(config, move || Everything(collector.clone())).unwrap();
    wait_until("all 4 messages are processed", SCENARIO_TIMEOUT, || {
        seen.lock().unwrap().len() >= expected.len()
    });
    system.stop();
    system.join().unwrap();
    assert_eq!(*seen.lock().unwrap(), expected);

    // The same topic read by a system told not to read headers: everything but the headers.
    let without_headers = Arc::new(Mutex::new(Vec::new()));
    let collector = without_headers.clone();
    let config = cluster
        .config(&topic, &format!("{group}-no-headers"))
        .read_headers(false)
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || Everything(collector.clone())).unwrap();
    wait_until(
        "all 4 messages are processed again",
        SCENARIO_TIMEOUT,
        || without_headers.lock().unwrap().len() >= expected.len(),
    );
    system.stop();
    system.join().unwrap();
    let headerless: Vec<Seen> = expected
        .into_iter()
        .map(|seen| Seen {
            headers: Vec::new(),
            ..seen
        })
        .collect();
    assert_eq!(*without_headers.lock().unwrap(), headerless);
}
