//! A secured cluster: the real broker's SASL_SSL listener (see `scripts/kafka.sh`), with each
//! SASL mechanism, wrong credentials, an untrusted certificate, and ACLs that refuse the topic,
//! the group or the dead-letter topic. Topics are created and offsets read through the
//! plaintext listener, where the test is a super user.
//!
//! Needs the broker `scripts/kafka.sh start` runs (`KAFKA_BROKERS` for the plaintext listener;
//! `KAFKA_SASL_BROKERS`, default 127.0.0.1:9094, and the CA in `.kafka/tls/`). Built and run
//! only when named (`cargo test --test secured`, `test = false` in Cargo.toml).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kafka_actors::{
    ConsumerConfigBuilder, ConsumerSystem, Error, FailurePolicy, Message, Permanent, Processor,
    StopReason,
};
use support::{Audit, Cluster, Ledger, Recorder, SCENARIO_TIMEOUT, audit, wait_until};

fn real_broker() -> Cluster {
    let cluster = Cluster::start();
    assert!(
        cluster.is_real_broker(),
        "the secured tests need the real broker: set KAFKA_BROKERS (scripts/kafka.sh start)"
    );
    cluster
}

fn tls_file(name: &str) -> String {
    let directory = std::env::var("KAFKA_TLS_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".kafka/tls"),
        PathBuf::from,
    );
    let path = directory.join(name);
    assert!(
        path.exists(),
        "{} not found: start the broker with scripts/kafka.sh",
        path.display()
    );
    path.display().to_string()
}

/// A name under the ACL prefix `prefix`, unique to this process and test.
fn name(prefix: &str, test: &str) -> String {
    format!("{prefix}{test}-{}", std::process::id())
}

/// A configuration that reads `topic` as `group` through the SASL_SSL listener.
fn secured(
    cluster: &Cluster,
    topic: &str,
    group: &str,
    mechanism: &str,
    user: &str,
    password: &str,
) -> ConsumerConfigBuilder {
    let brokers = std::env::var("KAFKA_SASL_BROKERS").unwrap_or("127.0.0.1:9094".to_owned());
    let mut config = cluster
        .config(topic, group)
        .brokers(brokers)
        .startup_timeout(Duration::from_secs(20))
        .kafka_option("security.protocol", "SASL_SSL")
        .kafka_option("ssl.ca.location", tls_file("ca.pem"))
        .kafka_option("sasl.mechanism", mechanism);
    config = if mechanism == "OAUTHBEARER" {
        // Unsecured JWTs: the broker takes the principal from the token (tests only).
        config
            .kafka_option("enable.sasl.oauthbearer.unsecure.jwt", "true")
            .kafka_option("sasl.oauthbearer.config", format!("principal={user}"))
    } else {
        config
            .kafka_option("sasl.username", user)
            .kafka_option("sasl.password", password)
    };
    config
}

#[test]
fn a_full_run_over_sasl_ssl_with_each_mechanism() {
    let cluster = real_broker();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER"] {
        let topic = name("secure-ok-", &mechanism.to_lowercase());
        cluster.create_topic(&topic, 2);
        let end_offsets = cluster.produce(&topic, 300);
        let ledger = Ledger::default();
        let recorder = ledger.clone();
        let config = secured(
            &cluster,
            &topic,
            &topic,
            mechanism,
            "consumer",
            "consumer-secret",
        )
        .build()
        .unwrap();
        let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder))
            .unwrap_or_else(|error| panic!("{mechanism}: {error}"));
        wait_until(
            &format!("every message was processed over {mechanism}"),
            SCENARIO_TIMEOUT,
            || audit(&ledger.entries(), &end_offsets).lost == 0,
        );
        system.stop();
        let report = system.join().unwrap();
        assert!(report.is_clean(), "{mechanism}: {report}");
        assert_eq!(
            audit(&ledger.entries(), &end_offsets),
            Audit {
                lost: 0,
                duplicated: 0
            },
            "{mechanism}"
        );
        assert_eq!(
            cluster.committed_offsets(&topic, &topic),
            end_offsets,
            "{mechanism}"
        );
    }
}

#[test]
fn a_wrong_password_fails_the_start_saying_authentication_failed() {
    let cluster = real_broker();
    let topic = name("secure-ok-", "wrong-password");
    cluster.create_topic(&topic, 1);
    let config = secured(
        &cluster,
        &topic,
        &topic,
        "SCRAM-SHA-512",
        "consumer",
        "not-it",
    )
    .build()
    .unwrap();
    let starting = Instant::now();
    let error = ConsumerSystem::spawn(config, || Recorder::new(&Ledger::default())).unwrap_err();
    assert!(matches!(error, Error::Authentication { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("authentication"), "{message}");
    assert!(
        !message.contains("not-it"),
        "the password leaked: {message}"
    );
    // Refused credentials do not heal: no waiting out the 20 s startup timeout.
    assert!(
        starting.elapsed() < Duration::from_secs(10),
        "{:?}",
        starting.elapsed()
    );
}

#[test]
fn an_untrusted_certificate_fails_the_start_with_a_tls_error() {
    let cluster = real_broker();
    let topic = name("secure-ok-", "untrusted");
    cluster.create_topic(&topic, 1);
    let config = secured(
        &cluster,
        &topic,
        &topic,
        "SCRAM-SHA-512",
        "consumer",
        "consumer-secret",
    )
    .kafka_option("ssl.ca.location", tls_file("other-ca.pem"))
    .build()
    .unwrap();
    let starting = Instant::now();
    let error = ConsumerSystem::spawn(config, || Recorder::new(&Ledger::default())).unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("certificate"), "{message}");
    assert!(
        starting.elapsed() < Duration::from_secs(10),
        "{:?}",
        starting.elapsed()
    );
}

#[test]
fn a_topic_the_acls_refuse_fails_the_start_naming_it() {
    let cluster = real_broker();
    // The consumer may read the group but not the topic; a stranger may read nothing.
    let topic = name("secure-noread-", "topic");
    cluster.create_topic(&topic, 1);
    for (user, password) in [
        ("consumer", "consumer-secret"),
        ("stranger", "stranger-secret"),
    ] {
        let config = secured(&cluster, &topic, &topic, "SCRAM-SHA-512", user, password)
            .build()
            .unwrap();
        let error =
            ConsumerSystem::spawn(config, || Recorder::new(&Ledger::default())).unwrap_err();
        match &error {
            Error::NotAuthorized { resource, .. } => {
                assert!(resource.contains(&topic), "{user}: {resource}");
            }
            other => panic!("{user}: {other:?}"),
        }
    }
}

#[test]
fn a_group_the_acls_refuse_stops_the_system_naming_it() {
    let cluster = real_broker();
    let topic = name("secure-nogroup-", "group");
    cluster.create_topic(&topic, 1);
    cluster.produce(&topic, 10);
    let config = secured(
        &cluster,
        &topic,
        &topic,
        "SCRAM-SHA-512",
        "consumer",
        "consumer-secret",
    )
    .build()
    .unwrap();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || Recorder::new(&recorder)).unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();
    match &report.reason {
        StopReason::NotAuthorized { resource, .. } => {
            assert!(resource.contains(&format!("group `{topic}`")), "{resource}");
        }
        other => panic!("stopped for another reason: {other}\n{report}"),
    }
    assert!(!report.is_clean());
    assert_eq!(ledger.len(), 0);
}

/// Fails every message at offset 5, for good.
struct PoisonAtFive(Ledger);

impl Processor for PoisonAtFive {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if message.offset() == 5 {
            return Err(anyhow::anyhow!("malformed").context(Permanent));
        }
        self.0.record(message.partition(), message.offset());
        Ok(())
    }
}

#[test]
fn a_dead_letter_topic_the_acls_refuse_keeps_the_message_and_stops_saying_so() {
    let cluster = real_broker();
    let topic = name("secure-nowrite-", "dead-letter");
    cluster.create_topic(&topic, 1);
    cluster.create_topic(&format!("{topic}.dlq"), 1);
    cluster.produce(&topic, 20);
    let config = secured(
        &cluster,
        &topic,
        &topic,
        "SCRAM-SHA-512",
        "consumer",
        "consumer-secret",
    )
    .failure_policy(FailurePolicy::retry(1).then_dead_letter())
    .dead_letter_option("message.timeout.ms", "10000")
    .build()
    .unwrap();
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let system = ConsumerSystem::spawn(config, move || PoisonAtFive(recorder.clone())).unwrap();
    wait_until("the system stops by itself", SCENARIO_TIMEOUT, || {
        system.is_finished()
    });
    let report = system.join().unwrap();
    match &report.reason {
        StopReason::DeadLetterFailed { offset, error, .. } => {
            assert_eq!(*offset, 5);
            assert!(error.to_lowercase().contains("authorization"), "{error}");
        }
        other => panic!("stopped for another reason: {other}\n{report}"),
    }
    assert_eq!(cluster.committed_offsets(&topic, &topic).get(&0), Some(&5));
}
