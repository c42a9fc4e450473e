//! A `tracing` span per attempt at a message, with the message's coordinates; with the
//! `opentelemetry` feature, its parent is the trace context of the message's W3C
//! `traceparent` header, extracted by the application's global propagator.
//!
//! The span is made by `tracing`'s macro: with no subscriber interested in it, that is one
//! check of a cached flag, and none of its fields are computed. Its level is DEBUG, so that an
//! application logging at INFO does not pay for a span per message; a tracing setup enables
//! it with the filter `kafka_actors::message=debug`.

use tracing::Span;

use crate::message::Message;

/// The target of the spans, to filter them (for example `kafka_actors::message=off`).
pub(crate) const TARGET: &str = "kafka_actors::message";

/// The span of attempt number `attempt` (from 1) at `message`.
pub(crate) fn message_span(message: &Message, attempt: u32) -> Span {
    let span = tracing::debug_span!(
        target: TARGET,
        "message",
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        key = message.key().map(String::from_utf8_lossy).as_deref(),
        attempt,
    );
    #[cfg(feature = "opentelemetry")]
    if !span.is_disabled() {
        otel::set_parent(&span, message);
    }
    span
}

/// The span of a batch of more than one message: its first message's coordinates and its
/// size. (Its messages may belong to different traces: it joins none of them.)
pub(crate) fn batch_span(batch: &[Message]) -> Span {
    let first = batch.first();
    tracing::debug_span!(
        target: TARGET,
        "batch",
        topic = first.map(Message::topic),
        partition = first.map(Message::partition),
        first_offset = first.map(Message::offset),
        messages = batch.len(),
    )
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::Extractor;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    /// The message's headers, as the propagator reads them (the first value of a name; names
    /// compared without case, as W3C Trace Context asks).
    struct Headers<'m>(&'m Message);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .headers()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .and_then(|(_, value)| std::str::from_utf8(value?).ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.headers().map(|(name, _)| name).collect()
        }
    }

    pub(super) fn set_parent(span: &Span, message: &Message) {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(message))
        });
        // An error only when no OpenTelemetry layer handles the span: then there is no
        // trace to join.
        let _ = span.set_parent(parent);
    }
}
