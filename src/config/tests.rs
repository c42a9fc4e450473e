//! Unit tests of the configuration: what `build()` refuses and names, what it warns about,
//! and that secrets never show.

use super::properties::is_secret;
use super::validation::CLASSIC_ONLY_PROPERTIES;
use super::*;
use crate::Error;

fn valid() -> ConsumerConfigBuilder {
    ConsumerConfig::builder()
        .brokers("127.0.0.1:9092")
        .group_id("g")
        .topic("t")
}

fn setting_at_fault(builder: ConsumerConfigBuilder) -> String {
    match builder.build() {
        Err(Error::Config { setting, .. }) => setting,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn a_minimal_configuration_is_valid() {
    let config = valid().build().expect("valid");
    assert_eq!(config.processors, 4);
    assert!(config.worker_threads >= 1);
    assert!(config.warnings().is_empty());
}

#[test]
fn missing_required_settings_are_named() {
    let no_brokers = ConsumerConfig::builder().group_id("g").topic("t");
    assert_eq!(setting_at_fault(no_brokers), "brokers");
    let no_group = ConsumerConfig::builder().brokers("b:1").topic("t");
    assert_eq!(setting_at_fault(no_group), "group_id");
    // Topics may come from the routes (`ConsumerSystem::run_routes`): a system of one
    // factory checks them at its start (`route::RouteSet::check`).
    let no_topics = ConsumerConfig::builder().brokers("b:1").group_id("g");
    assert!(no_topics.build().is_ok());
}

#[test]
fn nonsense_values_are_named() {
    assert_eq!(setting_at_fault(valid().processors(0)), "processors");
    assert_eq!(
        setting_at_fault(valid().worker_threads(0)),
        "worker_threads"
    );
    assert_eq!(setting_at_fault(valid().topic("no spaces")), "topics");
    assert_eq!(
        setting_at_fault(valid().failure_policy(FailurePolicy::retry(0))),
        "failure_policy"
    );
    assert_eq!(
        setting_at_fault(valid().max_in_flight(0, 1024)),
        "max_in_flight"
    );
    assert_eq!(
        setting_at_fault(valid().max_in_flight_per_partition(10, 0)),
        "max_in_flight_per_partition"
    );
    assert_eq!(
        setting_at_fault(valid().commit_interval(Duration::ZERO)),
        "commit_interval"
    );
    assert_eq!(
        setting_at_fault(valid().shutdown_timeout(Duration::ZERO)),
        "shutdown_timeout"
    );
    assert_eq!(
        setting_at_fault(valid().kafka_option("session.timeout.ms", "soon")),
        "session.timeout.ms"
    );
}

#[test]
fn librdkafka_rejects_unknown_properties_by_name() {
    assert_eq!(
        setting_at_fault(valid().kafka_option("no.such.property", "1")),
        "no.such.property"
    );
}

#[test]
fn properties_the_framework_owns_are_refused() {
    assert_eq!(
        setting_at_fault(valid().kafka_option("enable.auto.commit", "true")),
        "enable.auto.commit"
    );
    assert_eq!(
        setting_at_fault(valid().kafka_option("group.id", "other")),
        "group.id"
    );
}

#[test]
fn each_group_protocol_refuses_the_other_ones_settings_by_name() {
    let consumer = || valid().group_protocol(GroupProtocol::Consumer);
    for key in CLASSIC_ONLY_PROPERTIES {
        let value = if *key == "partition.assignment.strategy" {
            "cooperative-sticky"
        } else {
            "10000"
        };
        assert_eq!(setting_at_fault(consumer().kafka_option(*key, value)), *key);
        // The classic protocol takes them (group.protocol.type only as "consumer").
        if *key != "group.protocol.type" {
            valid().kafka_option(*key, value).build().unwrap();
        }
    }
    assert_eq!(
        setting_at_fault(valid().kafka_option("group.remote.assignor", "uniform")),
        "group.remote.assignor"
    );
    let config = consumer()
        .kafka_option("group.remote.assignor", "uniform")
        .build()
        .unwrap();
    assert_eq!(
        config.client_config().get("group.protocol"),
        Some("consumer")
    );
    assert_eq!(
        valid()
            .build()
            .unwrap()
            .client_config()
            .get("group.protocol"),
        Some("classic")
    );
    assert_eq!(
        setting_at_fault(valid().kafka_option("group.protocol", "consumer")),
        "group.protocol"
    );
}

#[test]
fn a_shutdown_longer_than_the_poll_interval_is_warned_about() {
    let config = valid()
        .shutdown_timeout(Duration::from_secs(60))
        .kafka_option("max.poll.interval.ms", "30000")
        .build()
        .expect("valid");
    assert_eq!(config.warnings().len(), 1, "{:?}", config.warnings());
    assert!(config.warnings()[0].contains("max.poll.interval.ms"));
}

#[test]
fn a_shutdown_as_long_as_the_session_is_warned_about_with_static_membership() {
    let config = valid()
        .shutdown_timeout(Duration::from_secs(45))
        .kafka_option("group.instance.id", "instance-1")
        .build()
        .expect("valid");
    assert_eq!(config.warnings().len(), 1, "{:?}", config.warnings());
    assert!(
        valid()
            .kafka_option("group.instance.id", "instance-1")
            .build()
            .expect("valid")
            .warnings()
            .is_empty(),
        "the defaults fit: 20 s below 45 s"
    );
}

#[test]
fn a_shutdown_longer_than_the_session_is_warned_about_with_static_membership() {
    let builder = valid()
        .shutdown_timeout(Duration::from_secs(20))
        .kafka_option("session.timeout.ms", "10000");
    assert!(
        builder
            .clone()
            .build()
            .expect("valid")
            .warnings()
            .is_empty()
    );
    let config = builder
        .kafka_option("group.instance.id", "instance-1")
        .build()
        .expect("valid");
    assert_eq!(config.warnings().len(), 1, "{:?}", config.warnings());
    assert!(config.warnings()[0].contains("static membership"));
}

#[test]
fn secret_values_never_show_in_debug_output() {
    let builder = valid()
        .kafka_option("security.protocol", "sasl_ssl")
        .kafka_option("sasl.mechanism", "SCRAM-SHA-512")
        .kafka_option("sasl.username", "billing")
        .kafka_option("sasl.password", "hunter2-consumer")
        .kafka_option("ssl.key.password", "hunter2-key")
        .dead_letter_option("sasl.password", "hunter2-producer");
    let config = builder.clone().build().expect("valid");
    for shown in [format!("{builder:?}"), format!("{config:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("billing"),
            "{shown}"
        );
    }
    for secret in [
        "sasl.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
    ] {
        assert!(is_secret(secret), "{secret}");
    }
    assert!(!is_secret("sasl.username"));
}

#[test]
fn the_dead_letter_producer_takes_the_consumers_connection_settings() {
    let config = valid()
        .kafka_option("security.protocol", "sasl_ssl")
        .kafka_option("sasl.username", "billing")
        .kafka_option("session.timeout.ms", "10000")
        .dead_letter_option("sasl.username", "dead-letters")
        .build()
        .expect("valid");
    let options = config.dead_letter_client_options();
    assert_eq!(
        options.get("security.protocol").map(String::as_str),
        Some("sasl_ssl")
    );
    assert_eq!(
        options.get("sasl.username").map(String::as_str),
        Some("dead-letters")
    );
    assert!(
        !options.contains_key("session.timeout.ms"),
        "a consumer setting"
    );
}

#[test]
fn user_properties_never_override_the_framework_settings() {
    let config = valid().kafka_option("auto.offset.reset", "latest").build();
    let client = config.expect("valid").client_config();
    assert_eq!(client.get("auto.offset.reset"), Some("latest"));
    assert_eq!(client.get("enable.auto.commit"), Some("false"));
    assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
}
