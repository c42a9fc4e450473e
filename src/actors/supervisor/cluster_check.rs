//! The start's check of the cluster, before any user code runs: the brokers answer, the
//! credentials and TLS are accepted, the topics exist and may be read. A failure names the
//! setting at fault.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::LOG_TARGET;
use crate::actors::fetcher::FetchContext;
use crate::config::ConsumerConfig;
use crate::failure::{Exhausted, FailurePolicy};
use crate::trouble::Trouble;
use crate::{Error, Result};

/// How long one metadata request at start waits, before the start looks at why it failed.
const METADATA_ATTEMPT: Duration = Duration::from_millis(500);
/// The most events served after a metadata request at start failed: librdkafka's lines and
/// errors of half a second of reconnections.
const EVENTS_PER_ATTEMPT: usize = 64;

/// Fails fast, with the setting at fault, when the brokers do not answer or a topic is missing.
/// `topics`: those read by name (patterns are not checked: they may match nothing yet), each
/// with its route's failure policy, which names its dead-letter topic.
pub(super) async fn check_cluster(
    consumer: BaseConsumer<FetchContext>,
    config: &ConsumerConfig,
    topics: Vec<(&str, &FailurePolicy)>,
) -> Result<BaseConsumer<FetchContext>> {
    let (brokers, wait) = (config.brokers.clone(), config.startup_timeout);
    let mut dead_letter_topics: Vec<String> = topics
        .iter()
        .filter_map(|(topic, policy)| match policy.exhausted() {
            Exhausted::DeadLetter { topic: Some(to) } => Some(to.clone()),
            Exhausted::DeadLetter { topic: None } => Some(format!("{topic}.dlq")),
            _ => None,
        })
        .collect();
    dead_letter_topics.sort();
    dead_letter_topics.dedup();
    let topics: Vec<String> = topics.into_iter().map(|(t, _)| t.to_owned()).collect();
    // Fetching metadata blocks; keep it off the system's thread.
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + wait;
        let metadata = loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            match consumer.fetch_metadata(None, remaining.min(METADATA_ATTEMPT)) {
                Ok(metadata) => break metadata,
                Err(source) => {
                    // librdkafka reports why as events: serve them, so that the context
                    // learns it; refused credentials and failed TLS never heal by waiting.
                    // Its log lines come through the same queue, and a poll that serves one
                    // returns nothing, as one that finds the queue empty does: stopping
                    // there served one line per attempt, and under load the lines of its
                    // reconnections kept a TLS failure's event waiting past the startup
                    // timeout. So every poll of the bound is made.
                    for _ in 0..EVENTS_PER_ATTEMPT {
                        let _ = consumer.poll(Duration::ZERO);
                    }
                    let reported = consumer.context().take_reported();
                    match reported.map(|r| (r.trouble, r.reason)) {
                        Some((Trouble::Authentication, reason)) => {
                            return Err(Error::Authentication { brokers, reason });
                        }
                        Some((Trouble::Tls, reason)) => {
                            return Err(Error::Tls { brokers, reason });
                        }
                        _ => {}
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::BrokersUnreachable {
                            brokers,
                            timeout: wait,
                            source,
                        });
                    }
                }
            }
        };
        for topic in &topics {
            if metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none())
            {
                continue;
            }
            // A listing of every topic leaves out those this client may not see: asked for by
            // name, the broker says whether the topic is missing or refused. (Consumers never
            // ask brokers to create topics, so asking cannot create one.)
            let remaining = deadline
                .saturating_duration_since(std::time::Instant::now())
                .max(METADATA_ATTEMPT);
            let refused = consumer
                .fetch_metadata(Some(topic), remaining)
                .is_ok_and(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.error().map(RDKafkaErrorCode::from)
                            == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                    })
                });
            return Err(if refused {
                Error::NotAuthorized {
                    resource: format!("READ on topic `{topic}`"),
                    brokers,
                }
            } else {
                Error::TopicNotFound {
                    topic: topic.clone(),
                    brokers,
                }
            });
        }
        for topic in &dead_letter_topics {
            if !metadata.topics().iter().any(|t| t.name() == topic) {
                log::warn!(
                    target: LOG_TARGET,
                    "the dead-letter topic {topic} does not exist: unless the brokers create \
                     topics on demand, dead letters will fail and stop the system"
                );
            }
        }
        drop(metadata);
        Ok(consumer)
    })
    .await
    .map_err(|error| Error::Runtime(format!("metadata check failed: {error}")))?
}
