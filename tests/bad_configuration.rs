//! Bad input gets a clear error that names the problem, within a bounded time.

mod support;

use std::time::{Duration, Instant};

use kafka_actors::{ConsumerConfig, ConsumerSystem, Error, Message, Processor};

struct Noop;

impl Processor for Noop {
    async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
        Ok(())
    }
}

fn setting_named_by(builder: kafka_actors::ConsumerConfigBuilder) -> String {
    match builder.build() {
        Err(error @ Error::Config { .. }) => {
            let Error::Config { setting, .. } = &error else {
                unreachable!()
            };
            assert!(error.to_string().contains(setting.as_str()), "{error}");
            setting.clone()
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn missing_or_nonsense_settings_are_named() {
    let valid = || {
        ConsumerConfig::builder()
            .brokers("127.0.0.1:9092")
            .group_id("g")
            .topic("t")
    };
    assert_eq!(
        setting_named_by(ConsumerConfig::builder().group_id("g").topic("t")),
        "brokers"
    );
    assert_eq!(
        setting_named_by(ConsumerConfig::builder().brokers("b:1").topic("t")),
        "group_id"
    );
    // Without topics, a system of one factory refuses to start, naming them (before it
    // reaches for a broker); a system of routes takes its topics from the routes.
    let no_topics = ConsumerConfig::builder()
        .brokers("b:1")
        .group_id("g")
        .build()
        .unwrap();
    match ConsumerSystem::start(no_topics, || Noop) {
        Err(Error::Config { setting, .. }) => assert_eq!(setting, "topics"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(setting_named_by(valid().processors(0)), "processors");
    assert_eq!(
        setting_named_by(valid().shutdown_timeout(Duration::ZERO)),
        "shutdown_timeout"
    );
    assert_eq!(
        setting_named_by(valid().kafka_option("max.poll.interval.ms", "-1")),
        "max.poll.interval.ms"
    );
}

#[test]
fn unreachable_brokers_fail_the_start_within_the_startup_timeout() {
    // Nothing listens on port 1 of the loopback address.
    let config = ConsumerConfig::builder()
        .brokers("127.0.0.1:1")
        .group_id("unreachable")
        .topic("t")
        .handle_signals(false)
        .startup_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = ConsumerSystem::start(config, || Noop).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, Error::BrokersUnreachable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    // Generous bound: catches a hang, not slowness.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_missing_topic_is_named() {
    let cluster = support::Cluster::start();
    let config = cluster
        .config("no-such-topic", "missing-topic")
        .build()
        .unwrap();
    let error = ConsumerSystem::start(config, || Noop).unwrap_err();
    assert!(
        matches!(error, Error::TopicNotFound { ref topic, .. } if topic == "no-such-topic"),
        "{error:?}"
    );
    assert!(error.to_string().contains("no-such-topic"), "{error}");
}
