//! Compressed topics: what producers compress with gzip, snappy, lz4 or zstd is consumed like
//! the rest, on both backends.

mod support;

use std::time::Duration;

use kafka_actors::ConsumerSystem;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Audit, Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, group, wait_until};

/// Produces `count` messages to `topic` compressed with `codec`, in batches, and waits for
/// every acknowledgement.
fn produce_compressed(cluster: &Cluster, topic: &str, codec: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .set("compression.type", codec)
        .set("linger.ms", "20")
        .create()
        .expect("a producer");
    let payload = format!("a compressible payload, {codec}, ").repeat(10);
    let keys: Vec<String> = (0..count).map(|i| format!("key-{i}")).collect();
    let deliveries: Vec<_> = keys
        .iter()
        .map(|key| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(&payload))
                .map_err(|(error, _)| error)
                .expect("queued")
        })
        .collect();
    for delivery in deliveries {
        let delivered = futures::executor::block_on(delivery);
        match delivered {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => panic!("{codec}: {error}"),
            Err(canceled) => panic!("{codec}: {canceled}"),
        }
    }
}

#[test]
fn messages_compressed_with_every_codec_are_consumed() {
    let cluster = Cluster::start();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = cluster.topic(&format!("compressed-{codec}"), 2);
        produce_compressed(&cluster, &topic, codec, 2_000);
        let end_offsets = cluster.end_offsets(&topic);
        assert_eq!(end_offsets.values().sum::<i64>(), 2_000);
        let group = group(&format!("compressed-{codec}"));
        let ledger = Ledger::default();
        let recorder = ledger.clone();
        let config = cluster
            .config(&topic, &group)
            .stall_timeout(Some(Duration::from_secs(20)))
            .build()
            .unwrap();
        let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
        wait_until(
            &format!("every {codec} message was processed"),
            SCENARIO_TIMEOUT,
            || audit(&ledger.entries(), &end_offsets).lost == 0 || system.is_finished(),
        );
        system.stop();
        let report = system.join().unwrap();
        assert!(report.is_clean(), "{codec}: {report}");
        assert_eq!(
            audit(&ledger.entries(), &end_offsets),
            Audit {
                lost: 0,
                duplicated: 0
            },
            "{codec}"
        );
        assert_eq!(
            cluster.committed_offsets(&group, &topic),
            end_offsets,
            "{codec}"
        );
    }
}
