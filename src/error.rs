//! The library's error type.

use std::time::Duration;

use rdkafka::error::KafkaError;

/// A specialized `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a consumer system from starting or running.
///
/// Failures of user code while processing a message are not errors of the system: they are
/// handled by the failure policy and reported in the [`ShutdownReport`](crate::ShutdownReport).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration setting is missing or has a value that cannot work.
    #[error("invalid configuration: `{setting}` {reason}")]
    Config {
        /// The builder method or librdkafka property at fault.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The brokers did not answer within the startup timeout.
    #[error("could not reach the Kafka brokers at `{brokers}` within {timeout:?}: {source}")]
    BrokersUnreachable {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// How long the system waited for them.
        timeout: Duration,
        /// What librdkafka reported.
        #[source]
        source: KafkaError,
    },

    /// The brokers refused this client's credentials (SASL): a wrong user name or password, a
    /// mechanism the listener does not offer, an expired token.
    #[error("authentication with the brokers at `{brokers}` failed: {reason}")]
    Authentication {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// What librdkafka reported.
        reason: String,
    },

    /// A TLS connection to the brokers could not be made: an untrusted or expired broker
    /// certificate, a host name that does not match it, a protocol mismatch.
    #[error("TLS connection to the brokers at `{brokers}` failed: {reason}")]
    Tls {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// What librdkafka reported.
        reason: String,
    },

    /// The brokers' ACLs do not let this client do what it must, on the resource named.
    #[error("not authorized: {resource} on the brokers at `{brokers}`")]
    NotAuthorized {
        /// What is refused, e.g. "READ on topic `orders`".
        resource: String,
        /// The bootstrap servers that were asked.
        brokers: String,
    },

    /// A subscribed topic does not exist on the cluster.
    #[error("topic `{topic}` does not exist on the brokers at `{brokers}`")]
    TopicNotFound {
        /// The missing topic.
        topic: String,
        /// The bootstrap servers that were asked.
        brokers: String,
    },

    /// A processor's [`on_start`](crate::Processor::on_start) hook failed, so the system did
    /// not start.
    #[error("processor {processor} failed to start: {source:#}")]
    ProcessorStart {
        /// The index of the processor in the pool.
        processor: usize,
        /// The error the hook returned.
        source: anyhow::Error,
    },

    /// An error from the Kafka client.
    #[error("kafka client error: {0}")]
    Kafka(#[from] KafkaError),

    /// The HTTP server could not listen on its address (the port is in use, or the address
    /// is not this machine's).
    #[error("could not serve HTTP on {addr}: {source}")]
    Http {
        /// The address from `http_addr`.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },

    /// The actor runtime failed (a thread could not be started, or an actor vanished).
    #[error("actor runtime failure: {0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}
