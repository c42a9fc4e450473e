//! A `tracing` span per attempt at a message, with its coordinates; with the `opentelemetry`
//! feature, the span joins the trace of the message's `traceparent` header.

mod support;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kafka_actors::{ConsumerSystem, FailurePolicy, Message, Processor};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::{Cluster, Ledger, SCENARIO_TIMEOUT, group, wait_until};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The fields of every `message` span opened in this process.
static SPANS: Mutex<Vec<BTreeMap<String, String>>> = Mutex::new(Vec::new());

/// Keeps each `message` span's fields.
struct Capture;

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attributes: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attributes.metadata().name() != "message" {
            return;
        }
        let mut fields = Fields(BTreeMap::new());
        attributes.record(&mut fields);
        fields.0.insert(
            "target".to_owned(),
            attributes.metadata().target().to_owned(),
        );
        SPANS.lock().unwrap().push(fields.0);
    }
}

/// The process's subscriber, installed once: processors run on threads of their own, so a
/// thread-local default would not see their spans.
fn install_subscriber() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let registry = tracing_subscriber::registry().with(Capture);
        #[cfg(feature = "opentelemetry")]
        let registry = registry.with(otel::layer());
        tracing::subscriber::set_global_default(registry).expect("the only subscriber");
    });
}

fn spans_of(topic: &str) -> Vec<BTreeMap<String, String>> {
    SPANS
        .lock()
        .unwrap()
        .iter()
        .filter(|fields| fields.get("topic").map(String::as_str) == Some(topic))
        .cloned()
        .collect()
}

/// Produces `(key, payload, traceparent)` records to partition 0 of `topic`.
fn produce_with_headers(cluster: &Cluster, topic: &str, records: &[(&str, &str, Option<&str>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.brokers())
        .create()
        .expect("a producer");
    for (key, payload, traceparent) in records {
        let mut record = BaseRecord::to(topic)
            .key(*key)
            .payload(*payload)
            .partition(0);
        if let Some(traceparent) = traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(*traceparent),
            }));
        }
        producer.send(record).map_err(|(error, _)| error).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Fails the first attempt at every message whose payload is `fail once`.
struct FailsOnce {
    ledger: Ledger,
    failed: Vec<i64>,
}

impl Processor for FailsOnce {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        if message.payload_str() == Some("fail once") && !self.failed.contains(&message.offset()) {
            self.failed.push(message.offset());
            anyhow::bail!("the first attempt fails");
        }
        self.ledger.record(message.partition(), message.offset());
        Ok(())
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn run(cluster: &Cluster, topic: &str, expected: usize) {
    let ledger = Ledger::default();
    let recorder = ledger.clone();
    let config = cluster
        .config(topic, &group("traced"))
        .failure_policy(
            FailurePolicy::retry(3)
                .backoff(Duration::from_millis(10), Duration::from_millis(10))
                .then_skip(),
        )
        .build()
        .unwrap();
    let system = ConsumerSystem::spawn(config, move || FailsOnce {
        ledger: recorder.clone(),
        failed: Vec::new(),
    })
    .unwrap();
    wait_until("every message is processed", SCENARIO_TIMEOUT, || {
        ledger.len() == expected
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn every_attempt_at_a_message_has_a_span_with_its_coordinates() {
    install_subscriber();
    let cluster = Cluster::start();
    let topic = cluster.topic("traced", 1);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    produce_with_headers(
        &cluster,
        &topic,
        &[
            ("k0", "plain", None),
            ("k1", "fail once", None),
            ("k2", "traced", Some(&traceparent)),
        ],
    );
    run(&cluster, &topic, 3);

    let spans = spans_of(&topic);
    let attempts: Vec<(String, String, String)> = spans
        .iter()
        .map(|fields| {
            (
                fields["offset"].clone(),
                fields["attempt"].clone(),
                fields["key"].clone(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("0".into(), "1".into(), "k0".into()),
            ("1".into(), "1".into(), "k1".into()),
            ("1".into(), "2".into(), "k1".into()),
            ("2".into(), "1".into(), "k2".into()),
        ],
        "{spans:?}"
    );
    for fields in &spans {
        assert_eq!(fields["partition"], "0");
        assert_eq!(fields["target"], "kafka_actors::message");
    }

    #[cfg(feature = "opentelemetry")]
    otel::assert_joined_the_trace_of_the_header();
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    use super::*;

    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();

    pub(super) fn layer<S>() -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let exporter = EXPORTER.get_or_init(InMemorySpanExporter::default).clone();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"))
    }

    pub(super) fn assert_joined_the_trace_of_the_header() {
        let exporter = EXPORTER.get().expect("the layer is installed");
        let trace_id = TraceId::from_hex(TRACE_ID).unwrap();
        let parent = SpanId::from_hex(PARENT_SPAN).unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let joined: Vec<_> = spans
            .iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        assert_eq!(joined.len(), 1, "{spans:#?}");
        assert_eq!(joined[0].name, "message");
        assert_eq!(joined[0].parent_span_id, parent);
        assert!(joined[0].parent_span_is_remote);
        // The messages without the header start traces of their own.
        let others = spans.iter().filter(|span| span.name == "message").count();
        assert_eq!(others, 4, "{spans:#?}");
    }
}
