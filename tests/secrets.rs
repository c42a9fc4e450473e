//! Secrets never leak: the value of every secret-bearing option appears nowhere in `Debug` of
//! the configuration and its builder, in errors, in the shutdown report, or in any log line of
//! any level, librdkafka's debug logs included.

mod support;

use std::time::Duration;

use kafka_actors::{ConsumerConfig, ConsumerSystem, FailurePolicy};
use support::{Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, group, wait_until};

/// The options that carry secrets, each with a value no other text contains.
const SECRETS: &[(&str, &str)] = &[
    ("sasl.password", "Zq7-sasl-password-Zq7"),
    ("ssl.key.password", "Zq7-ssl-key-password-Zq7"),
    ("ssl.keystore.password", "Zq7-ssl-keystore-password-Zq7"),
    (
        "sasl.oauthbearer.config",
        "principal=Zq7-oauthbearer-config-Zq7",
    ),
];
/// Secret options this build refuses (OIDC needs the `oidc` feature): only their errors.
const REFUSED_SECRETS: &[(&str, &str)] = &[(
    "sasl.oauthbearer.client.secret",
    "Zq7-oauthbearer-client-secret-Zq7",
)];

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains("Zq7"),
        "a secret leaked into {what}:\n{text}"
    );
}

#[test]
fn secret_options_appear_in_no_debug_output_error_report_or_log() {
    support::capture_everything();
    let cluster = Cluster::start();
    let topic = cluster.topic("secrets", 2);
    let end_offsets = cluster.produce(&topic, 100);
    let mut builder = cluster
        .config(&topic, &group("secrets"))
        // librdkafka's own debug logs, configuration and security included.
        .kafka_option("debug", "conf,security,broker,cgrp,protocol")
        .failure_policy(FailurePolicy::retry(1).then_dead_letter())
        .dead_letter_option("debug", "conf,security");
    for (key, value) in SECRETS {
        builder = builder
            .kafka_option(*key, *value)
            .dead_letter_option(*key, *value);
    }
    assert_no_secret("the builder's Debug", &format!("{builder:?}"));
    let config = builder.clone().build().expect("valid");
    assert_no_secret("the configuration's Debug", &format!("{config:?}"));

    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("every message was processed", SCENARIO_TIMEOUT, || {
        audit(&ledger.entries(), &end_offsets).lost == 0
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_no_secret("the report", &format!("{report}\n{report:?}"));

    // Errors: a start that fails, and configurations that build() refuses.
    let missing = builder
        .clone()
        .topic("no-such-topic")
        .startup_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let error = ConsumerSystem::spawn(missing, || Recorder::new(&Ledger::default())).unwrap_err();
    assert_no_secret("a start error", &format!("{error}\n{error:?}"));
    for (key, value) in SECRETS.iter().chain(REFUSED_SECRETS) {
        let refused = ConsumerConfig::builder()
            .brokers(cluster.brokers())
            .group_id("g")
            .topic(&topic)
            .kafka_option(*key, *value)
            .kafka_option("security.protocol", "not-a-protocol")
            .build()
            .unwrap_err();
        assert_no_secret("a configuration error", &format!("{refused}\n{refused:?}"));
    }

    let logged = support::everything_logged();
    assert!(
        logged.iter().any(|line| line.contains("librdkafka")),
        "librdkafka's debug logs were captured too"
    );
    assert_no_secret("the logs", &logged.join("\n"));
}
