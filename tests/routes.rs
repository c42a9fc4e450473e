//! Routes: one system, one group, one Fetcher, reading several topics, each with a processor
//! type and a failure policy of its own, and a pattern that takes a topic created while the
//! system runs.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_actors::{
    BatchFailures, BatchProcessor, ConsumerSystem, FailurePolicy, Message, Permanent, Processor,
    Route, dead_letter_headers,
};
use support::{Cluster, SCENARIO_TIMEOUT, group, wait_until};

/// A message: its topic, partition and offset.
type At = (String, i32, i64);

/// Who processed what (the route's name, and the message), and how many attempts each
/// message had.
#[derive(Clone, Default)]
struct Book {
    processed: Arc<Mutex<Vec<(&'static str, At)>>>,
    attempts: Arc<Mutex<BTreeMap<At, u32>>>,
}

impl Book {
    fn attempt(&self, message: &Message) -> u32 {
        let mut attempts = self.attempts.lock().unwrap();
        let key = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let attempt = attempts.entry(key).or_default();
        *attempt += 1;
        *attempt
    }

    fn record(&self, route: &'static str, message: &Message) {
        let at = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        self.processed.lock().unwrap().push((route, at));
    }

    fn of_topic(&self, topic: &str) -> Vec<(&'static str, i32, i64)> {
        let mut entries: Vec<_> = self
            .processed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (t, _, _))| t == topic)
            .map(|(route, (_, p, o))| (*route, *p, *o))
            .collect();
        entries.sort();
        entries
    }
}

/// Orders: a payload "poison" fails for good.
struct Orders(Book);

impl Processor for Orders {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.0.attempt(message);
        if message.payload_str() == Some("poison") {
            return Err(anyhow::anyhow!("not an order").context(Permanent));
        }
        self.0.record("orders", message);
        Ok(())
    }
}

/// Payments, in batches: every message fails its first attempt, and a payload "bad" fails
/// for good.
struct Payments(Book);

impl BatchProcessor for Payments {
    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        let mut first_attempts = false;
        for message in batch {
            first_attempts |= self.0.attempt(message) == 1;
        }
        anyhow::ensure!(!first_attempts, "the payment service is warming up");
        let mut failures = BatchFailures::new();
        for (index, message) in batch.iter().enumerate() {
            match message.payload_str() {
                Some("bad") => {
                    failures.fail(index, anyhow::anyhow!("refused").context(Permanent));
                }
                _ => self.0.record("payments", message),
            }
        }
        failures.into_result()
    }
}

/// Audit, whatever the topic the pattern matched.
struct Audit(Book);

impl Processor for Audit {
    async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
        self.0.attempt(message);
        self.0.record("audit", message);
        Ok(())
    }
}

#[test]
fn each_route_reads_its_topics_with_its_own_processors_and_policy_and_a_pattern_takes_a_new_topic()
{
    let cluster = Cluster::start();
    let orders = cluster.topic("route-orders", 2);
    let payments = cluster.topic("route-payments", 2);
    let dead_letters = format!("{orders}.dlq");
    cluster.create_topic(&dead_letters, 1);
    let audit_prefix = format!("route-audit-{}", std::process::id());
    let audit_early = format!("{audit_prefix}-early");
    cluster.create_topic(&audit_early, 1);
    let mut orders_records: Vec<(String, String)> = (0..100)
        .map(|i| (format!("o{i}"), format!("order {i}")))
        .collect();
    orders_records[37].1 = "poison".to_owned();
    let orders_end = cluster.produce_records(&orders, orders_records);
    let mut payments_records: Vec<(String, String)> = (0..100)
        .map(|i| (format!("p{i}"), format!("payment {i}")))
        .collect();
    payments_records[58].1 = "bad".to_owned();
    let payments_end = cluster.produce_records(&payments, payments_records);
    let audit_early_end = cluster.produce(&audit_early, 20);
    let group = group("routes");
    let book = Book::default();
    let config = cluster
        .group_config(support::group_protocol(), &group)
        .batch_size(10, 1 << 20)
        // A topic created later is seen at the next metadata refresh.
        .kafka_option("topic.metadata.refresh.interval.ms", "1000")
        .build()
        .unwrap();
    let routes = {
        let (a, b, c) = (book.clone(), book.clone(), book.clone());
        [
            Route::new(orders.clone(), move || Orders(a.clone()))
                .processors(2)
                .failure_policy(FailurePolicy::stop_at_once().then_dead_letter()),
            Route::batches(payments.clone(), move || Payments(b.clone()))
                .processors(1)
                .failure_policy(
                    FailurePolicy::retry(2)
                        .backoff(Duration::from_millis(50), Duration::from_millis(100))
                        .then_skip(),
                ),
            Route::new(format!("^{audit_prefix}-.*"), move || Audit(c.clone())).processors(1),
        ]
    };
    let system = ConsumerSystem::spawn_routes(config, routes).unwrap();
    wait_until("the first topics were processed", SCENARIO_TIMEOUT, || {
        book.of_topic(&orders).len() == 99
            && book.of_topic(&payments).len() == 99
            && book.of_topic(&audit_early).len() == 20
    });
    // A topic the pattern matches, created while the system runs.
    let audit_late = format!("{audit_prefix}-late");
    cluster.create_topic(&audit_late, 2);
    let audit_late_end = cluster.produce(&audit_late, 30);
    wait_until("the new topic was processed", SCENARIO_TIMEOUT, || {
        book.of_topic(&audit_late).len() == 30
    });
    system.stop();
    let report = system.join().unwrap();
    assert!(report.is_clean(), "{report}");

    // Each topic went to its route's processors only, each message once.
    let routes_of = |topic: &str| -> Vec<&'static str> {
        let mut routes: Vec<_> = book.of_topic(topic).iter().map(|(r, _, _)| *r).collect();
        routes.dedup();
        routes
    };
    assert_eq!(routes_of(&orders), ["orders"]);
    assert_eq!(routes_of(&payments), ["payments"]);
    assert_eq!(routes_of(&audit_early), ["audit"]);
    assert_eq!(routes_of(&audit_late), ["audit"]);
    for topic in [&orders, &payments, &audit_early, &audit_late] {
        let entries = book.of_topic(topic);
        let mut unique = entries.clone();
        unique.dedup();
        assert_eq!(entries, unique, "{topic}: processed twice");
    }
    // Each route's policy: the poison order dead-lettered after its one attempt; every
    // payment tried again alone after its batch failed as a whole.
    let attempts = book.attempts.lock().unwrap().clone();
    let dead = cluster.read(&dead_letters, 1);
    assert_eq!(dead[0].payload.as_deref(), Some(b"poison".as_slice()));
    assert_eq!(dead[0].headers[dead_letter_headers::ATTEMPTS], "1");
    let poison = (
        orders.clone(),
        dead[0].headers[dead_letter_headers::ORIGINAL_PARTITION]
            .parse()
            .unwrap(),
        dead[0].headers[dead_letter_headers::ORIGINAL_OFFSET]
            .parse()
            .unwrap(),
    );
    assert_eq!(attempts[&poison], 1, "stop_at_once: one attempt");
    assert!(
        attempts
            .iter()
            .filter(|((topic, _, _), _)| *topic == payments)
            .all(|(_, attempts)| *attempts == 2),
        "each payment failed once, then succeeded"
    );
    // The bad payment skipped by its route's policy: neither dead-lettered as orders' nor
    // stopped on as the configuration's default.
    assert_eq!((report.dead_lettered, report.skipped), (1, 1), "{report}");
    // One group committed every topic's end.
    assert_eq!(cluster.committed_offsets(&group, &orders), orders_end);
    assert_eq!(cluster.committed_offsets(&group, &payments), payments_end);
    assert_eq!(
        cluster.committed_offsets(&group, &audit_early),
        audit_early_end
    );
    assert_eq!(
        cluster.committed_offsets(&group, &audit_late),
        audit_late_end
    );
}
