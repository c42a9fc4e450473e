//! The librdkafka properties the clients get: the consumer's (the user's over the framework's
//! defaults, the framework's own over both) and the dead-letter producer's; and which
//! properties are secret, their values never printed.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use super::ConsumerConfig;

/// Whether a librdkafka property holds a secret, whose value is never printed: a password, a
/// secret or passphrase, a private key, or the OAUTHBEARER configuration.
pub(super) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "passphrase",
        "private.key",
        "key.pem",
        "ssl_key",
    ]
    .iter()
    .any(|part| key.contains(part))
        || key == "sasl.oauthbearer.config"
}

/// Whether a librdkafka property says how to reach and authenticate with the brokers: the
/// dead-letter producer takes these from the consumer's properties.
fn is_connection_setting(key: &str) -> bool {
    [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "enable.ssl.",
        "enable.sasl.",
    ]
    .iter()
    .any(|prefix| key.starts_with(prefix))
        || matches!(key, "broker.address.family" | "client.dns.lookup")
}

/// Properties as `Debug` shows them: secret values replaced.
pub(super) struct Redacted<'a>(pub(super) &'a BTreeMap<String, String>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_secret(key) { "[redacted]" } else { value };
                (key, shown)
            }))
            .finish()
    }
}

impl ConsumerConfig {
    /// The librdkafka properties of the dead-letter producer: the consumer's connection
    /// settings (security protocol, SASL, TLS), then the ones set with
    /// [`dead_letter_option`](ConsumerConfigBuilder::dead_letter_option) over them.
    pub(crate) fn dead_letter_client_options(&self) -> BTreeMap<String, String> {
        let mut options: BTreeMap<String, String> = self
            .kafka_options
            .iter()
            .filter(|(key, _)| is_connection_setting(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        options.extend(self.dead_letter_options.clone());
        options
    }

    /// The librdkafka configuration of the consumer: the user's properties over the framework's
    /// defaults, and the framework's own settings over both.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka's default (1000 ms) idles a consumer for a second whenever its prefetch
            // queue fills; measured in BENCHMARKS.md, it costs the framework most of its speed.
            .set("fetch.queue.backoff.ms", "10")
            // Records are checked against their batch's CRC, as Kafka's Java consumer does by
            // default (librdkafka's default is off): a corrupt batch stops the system
            // (`StopReason::Unreadable`) instead of being processed.
            .set("check.crcs", "true");
        for (key, value) in &self.kafka_options {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("group.protocol", self.group_protocol.name());
        config
    }
}
