//! Unit tests of the `RepeatLimiter`, on virtual time: which episodes are logged, summed up
//! and declared over.

use super::*;

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

fn down(text: &'static str) -> Occurrence<'static> {
    Occurrence {
        kind: "AllBrokersDown",
        text,
        level: Level::Warn,
    }
}

fn refused(text: &'static str) -> Occurrence<'static> {
    Occurrence {
        kind: "BrokerTransportFailure",
        text,
        level: Level::Warn,
    }
}

fn broker(address: &str) -> Key {
    Key::Broker(address.to_owned())
}

/// What happens at a moment, in seconds from the start.
enum Event {
    Error(f64, Key, Occurrence<'static>),
    SignOfLife(f64),
}

impl Event {
    fn at(&self) -> f64 {
        match self {
            Event::Error(at, ..) | Event::SignOfLife(at) => *at,
        }
    }
}

/// Runs the limiter on virtual time from 0 to `until` seconds, a tick every 100 ms as the
/// Fetcher's rounds drive it; before each tick, the events due are fed at their own times.
/// Returns every notice with the time of the tick (or event) that gave it.
fn run(
    limiter: &mut RepeatLimiter,
    start: Instant,
    events: Vec<Event>,
    until: f64,
) -> Vec<(f64, Notice)> {
    let mut notices = Vec::new();
    let mut events = events.into_iter().peekable();
    for tenth in 0..=(until * 10.0).round() as u64 {
        let now = tenth as f64 / 10.0;
        while let Some(event) = events.next_if(|event| event.at() <= now) {
            match event {
                Event::Error(at, key, occurrence) => {
                    let began = limiter.occurred(key, occurrence, start + secs(at));
                    notices.extend(began.map(|notice| (at, notice)));
                }
                Event::SignOfLife(at) => limiter.sign_of_life(start + secs(at)),
            }
        }
        let due = limiter.tick(start + secs(now));
        notices.extend(due.into_iter().map(|notice| (now, notice)));
    }
    notices
}

#[test]
fn an_outage_is_one_line_a_summary_per_interval_and_one_line_when_it_is_over() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    // 24 errors a second for 75 s, then partitions are assigned at 76 s.
    let mut events: Vec<Event> = (0..75 * 24)
        .map(|n| Event::Error(n as f64 / 24.0, Key::Cluster, down("1/1 brokers are down")))
        .collect();
    events.push(Event::SignOfLife(76.0));
    let lines = run(&mut limiter, start, events, 100.0);

    let times: Vec<f64> = lines.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, [0.0, 30.0, 60.0, 77.0], "{lines:#?}");
    assert!(matches!(
        &lines[0].1,
        Notice::Began {
            key: Key::Cluster,
            ..
        }
    ));
    assert!(matches!(&lines[1].1, Notice::Continues { total: 721, .. }));
    assert!(matches!(
        &lines[2].1,
        Notice::Continues {
            new: 720,
            total: 1441,
            ..
        }
    ));
    assert_eq!(
        lines[3].1,
        Notice::Recovered {
            key: Key::Cluster,
            since: start,
            lasted: secs(76.0),
            total: 1800,
            quietly: false,
        },
        "a second after the sign of life, with no error since"
    );
    assert_eq!(
        lines[3]
            .1
            .render(start + secs(77.0), SystemTime::UNIX_EPOCH + secs(77.0)),
        "the cluster (every broker) is reachable again after an outage of 1m 16s (since \
         1970-01-01T00:00:00Z, 1800 errors)"
    );
    let levels: Vec<Level> = lines.iter().map(|(_, notice)| notice.level()).collect();
    assert_eq!(levels, [Level::Warn, Level::Warn, Level::Warn, Level::Info]);
    assert!(limiter.outages().is_empty());
}

#[test]
fn an_error_after_a_sign_of_life_keeps_the_outage_open() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    // A commit answered just as the brokers went down, then the next error.
    let events = vec![
        Event::Error(0.0, Key::Cluster, down("1/1 brokers are down")),
        Event::SignOfLife(0.1),
        Event::Error(0.5, Key::Cluster, down("1/1 brokers are down")),
    ];
    let lines = run(&mut limiter, start, events, 5.0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(limiter.outages().len(), 1);

    let mut calm = RepeatLimiter::default();
    calm.sign_of_life(start);
    assert!(
        calm.tick(start + secs(2.0)).is_empty(),
        "no outage, nothing to end"
    );
}

#[test]
fn an_outage_without_a_sign_of_life_ends_after_the_quiet_period() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    let address = "127.0.0.1:9092";
    // librdkafka holds back a broker's identical errors for 30 s.
    let events = vec![
        Event::Error(0.0, broker(address), refused("connection refused")),
        Event::Error(35.0, broker(address), refused("refused again")),
    ];
    let lines = run(&mut limiter, start, events, 100.0);
    let times: Vec<f64> = lines.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, [1.0, 35.0, 95.0], "{lines:#?}");
    assert_eq!(
        lines[0]
            .1
            .render(start + secs(1.0), SystemTime::UNIX_EPOCH + secs(1.0)),
        "broker 127.0.0.1:9092 is unreachable since 1970-01-01T00:00:00Z: connection \
         refused; librdkafka reconnects by itself; further errors are counted and summed \
         up every 30s"
    );
    assert!(matches!(
        lines[1].1,
        Notice::Continues {
            new: 1,
            total: 2,
            ..
        }
    ));
    assert_eq!(
        lines[2].1,
        Notice::Recovered {
            key: broker(address),
            since: start,
            lasted: secs(35.0),
            total: 2,
            quietly: true,
        }
    );
    assert_eq!(
        lines[2]
            .1
            .render(start + secs(95.0), SystemTime::UNIX_EPOCH + secs(95.0)),
        "broker 127.0.0.1:9092: no error for 1m, taken as reachable again; it was \
         unreachable from 1970-01-01T00:00:00Z for at least 35s (2 errors)"
    );
}

#[test]
fn a_sign_of_life_ends_the_clusters_outage_but_not_a_brokers() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    let events = vec![
        Event::Error(0.0, broker("b1:9092"), refused("refused")),
        Event::SignOfLife(1.0),
    ];
    let lines = run(&mut limiter, start, events, 5.0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(limiter.outages()[0].key, broker("b1:9092"));
}

#[test]
fn the_clusters_outage_takes_in_the_brokers_that_went_down_with_it() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    let events = vec![
        Event::Error(0.0, broker("b1:9092"), refused("b1 refused")),
        Event::Error(0.0, Key::Cluster, down("1/1 brokers are down")),
        Event::Error(0.5, broker("b1:9092"), refused("b1 refused again")),
        Event::Error(0.6, Key::Cluster, down("1/1 brokers are down")),
    ];
    let lines = run(&mut limiter, start, events, 29.9);
    let began: Vec<&Key> = lines
        .iter()
        .filter_map(|(_, notice)| match notice {
            Notice::Began { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(
        began,
        [&Key::Cluster],
        "the broker's failure a moment before is part of the cluster's outage"
    );
    let outages = limiter.outages();
    assert_eq!(outages.len(), 1, "{outages:#?}");
    assert_eq!((&outages[0].key, outages[0].errors), (&Key::Cluster, 4));
    assert_eq!(outages[0].latest, "1/1 brokers are down");

    let summary = limiter.tick(start + secs(30.0));
    assert_eq!(
        summary[0].render(start + secs(30.0), SystemTime::UNIX_EPOCH + secs(100.0)),
        "the cluster (every broker) still unreachable after 30s (since \
         1970-01-01T00:01:10Z): 4 errors (AllBrokersDown 2, BrokerTransportFailure 2); \
         librdkafka keeps reconnecting; the latest: 1/1 brokers are down"
    );
}

#[test]
fn a_repeated_error_is_logged_once_then_counted_in_a_summary_per_interval() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    let key = || Key::Error {
        kind: "NotCoordinator".to_owned(),
        broker: None,
    };
    let error = Occurrence {
        kind: "NotCoordinator",
        text: "not the coordinator",
        level: Level::Warn,
    };
    let events = [0.0, 1.0, 2.0, 40.0, 41.0]
        .into_iter()
        .map(|at| Event::Error(at, key(), error))
        .collect();
    let lines = run(&mut limiter, start, events, 102.0);
    let times: Vec<f64> = lines.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, [0.0, 30.0, 60.0, 101.0], "{lines:#?}");
    assert_eq!(
        lines[0].1,
        Notice::Began {
            key: key(),
            since: start,
            text: "not the coordinator".to_owned(),
            level: Level::Warn,
        }
    );
    assert!(matches!(
        lines[1].1,
        Notice::Continues {
            new: 2,
            total: 3,
            ..
        }
    ));
    assert!(matches!(
        lines[2].1,
        Notice::Continues {
            new: 2,
            total: 5,
            ..
        }
    ));
    assert!(matches!(lines[3].1, Notice::Faded { total: 5, .. }));
    assert_eq!(
        lines[1]
            .1
            .render(start + secs(30.0), SystemTime::UNIX_EPOCH + secs(30.0)),
        "repeated twice (3 since 1970-01-01T00:00:00Z): not the coordinator"
    );
    assert_eq!(lines[3].1.level(), Level::Debug);
    let again = limiter.occurred(key(), error, start + secs(103.0));
    assert!(
        matches!(again, Some(Notice::Began { .. })),
        "over, it begins anew"
    );
}

#[test]
fn outage_lines_are_warnings_and_other_repeats_keep_their_level() {
    let start = Instant::now();
    let mut limiter = RepeatLimiter::default();
    let severe = Occurrence {
        kind: "AllBrokersDown",
        text: "down",
        level: Level::Error,
    };
    let began = limiter.occurred(Key::Cluster, severe, start).unwrap();
    assert_eq!(began.level(), Level::Warn);
    let key = Key::LogLine {
        facility: "SSL".to_owned(),
        broker: Some("b1:9093".to_owned()),
    };
    let tls = Occurrence {
        kind: "SSL",
        text: "handshake failed",
        level: Level::Error,
    };
    let began = limiter.occurred(key, tls, start).unwrap();
    assert_eq!(began.level(), Level::Error);
}
