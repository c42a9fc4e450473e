//! The exactly-once sink (`examples/sink.rs`) as a user runs it: a child process under a live
//! stream, killed with SIGKILL and stopped gracefully over and over. Afterwards every message
//! is in the database exactly once, and the group's committed offsets never ran ahead of the
//! positions stored with the rows (checked all along, not only at the end).
//!
//! SQLite in a temporary directory by default; PostgreSQL when `DATABASE_URL` is set (as
//! `.ci/run` does after `scripts/postgres.sh start`). On both Kafka backends.
//!
//! A member killed at the end of the stream may have stored partitions to their ends before its
//! periodic commit covered them (issue 35): its successor starts them at their stored
//! positions and takes nothing of them, and must still commit those positions.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_actors::metric_names;
use rand::{Rng, SeedableRng};
use support::{
    Cluster, LedgerProcess, SCENARIO_TIMEOUT, free_addr, get, group, test_session_env, wait_until,
};

/// The sink's database, as the test reads it.
enum Database {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        runtime: tokio::runtime::Runtime,
    },
}

impl Database {
    fn for_test(directory: &std::path::Path) -> Self {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Database::Postgres {
                url,
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            },
            _ => Database::Sqlite(directory.join("sink.db")),
        }
    }

    /// The environment that points the sink at this database.
    fn env(&self, tables: &str) -> Vec<(String, String)> {
        let target = match self {
            Database::Sqlite(path) => ("SINK_DB".to_owned(), path.display().to_string()),
            Database::Postgres { url, .. } => ("DATABASE_URL".to_owned(), url.clone()),
        };
        vec![target, ("SINK_TABLES".to_owned(), tables.to_owned())]
    }

    /// Runs `query` and returns its rows of two whole numbers (none before the tables exist).
    fn pairs(&self, query: &str) -> Vec<(i64, i64)> {
        match self {
            Database::Sqlite(path) => {
                if !path.exists() {
                    return Vec::new();
                }
                let connection = rusqlite::Connection::open(path).unwrap();
                connection.busy_timeout(Duration::from_secs(30)).unwrap();
                let Ok(mut statement) = connection.prepare(query) else {
                    return Vec::new(); // The tables do not exist yet.
                };
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Database::Postgres { url, runtime } => runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let connection = tokio::spawn(connection);
                let rows = match client.query(query, &[]).await {
                    Ok(rows) => rows
                        .iter()
                        .map(|row| (i64::from(row.get::<_, i32>(0)), row.get::<_, i64>(1)))
                        .collect(),
                    Err(error) if error.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
                    Err(error) => panic!("{query}: {error}"),
                };
                drop(client);
                let _ = connection.await;
                rows
            }),
        }
    }

    /// Every stored `(partition, offset)` row.
    fn rows(&self, tables: &str) -> Vec<(i32, i64)> {
        self.pairs(&format!(
            "SELECT partition, \"offset\" FROM {tables}_rows ORDER BY partition, \"offset\""
        ))
        .into_iter()
        .map(|(partition, offset)| (partition as i32, offset))
        .collect()
    }

    /// The stored next position of each partition.
    fn positions(&self, tables: &str) -> BTreeMap<i32, i64> {
        self.pairs(&format!(
            "SELECT partition, next_offset FROM {tables}_positions"
        ))
        .into_iter()
        .map(|(partition, next)| (partition as i32, next))
        .collect()
    }
}

/// How many partitions the sink serving its figures on `addr` holds in `group`: none while it
/// does not answer yet.
fn assigned_partitions(addr: SocketAddr, group: &str) -> f64 {
    if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        return 0.0;
    }
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let group_label = format!("group=\"{group}\"");
    body.lines()
        .filter(|line| {
            line.starts_with(metric_names::ASSIGNED_PARTITIONS) && line.contains(&group_label)
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits until the sink serving its figures on `addr` holds all `partitions`. A sink started
/// after one was killed waits for the killed one's session to expire first.
fn wait_until_assigned(addr: SocketAddr, group: &str, partitions: usize) {
    wait_until(
        &format!("the sink holds the {partitions} partitions"),
        SCENARIO_TIMEOUT,
        || assigned_partitions(addr, group) == partitions as f64,
    );
}

/// The group's committed offsets, read first, never ahead of the positions stored, read after
/// (the stored positions only grow, so the order makes the check sound).
fn check_committed_not_ahead(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    db: &Database,
    tables: &str,
) {
    let committed = cluster.committed_offsets(group, topic);
    let stored = db.positions(tables);
    for (partition, committed) in committed {
        let stored = stored.get(&partition).copied().unwrap_or(0);
        assert!(
            committed <= stored,
            "partition {partition}: the group committed {committed}, the database holds up to {stored}"
        );
    }
}

#[test]
fn every_message_is_stored_exactly_once_through_kills_and_stops() {
    let cluster = Cluster::start();
    let topic = cluster.topic("sink", 4);
    let group = group("sink");
    let tables = topic.replace(['-', '.'], "_");
    let directory = tempfile::tempdir().unwrap();
    let db = Database::for_test(directory.path());
    let seed: u64 = std::env::var("SINK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("SINK_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // A live stream, 50 messages every 25 ms, until the kills and stops are over.
    let streaming = Arc::new(AtomicBool::new(true));
    let (brokers, stream_topic, on) = (cluster.brokers(), topic.clone(), streaming.clone());
    let producer = std::thread::spawn(move || {
        let mut round = 0;
        while on.load(Ordering::Relaxed) {
            let records = (0..50).map(|i| (format!("k{round}-{i}"), format!("row {round}-{i}")));
            kafka_actors::testkit::produce(&brokers, &stream_topic, records).unwrap();
            std::thread::sleep(Duration::from_millis(25));
            round += 1;
        }
    });
    let mut env = test_session_env("");
    env.extend(db.env(&tables));
    env.extend([
        ("KAFKA_BATCH_MESSAGES".to_owned(), "200".to_owned()),
        ("KAFKA_BATCH_LINGER".to_owned(), "20ms".to_owned()),
        ("KAFKA_COMMIT_INTERVAL".to_owned(), "200ms".to_owned()),
        ("KAFKA_PROCESSORS".to_owned(), "2".to_owned()),
    ]);
    let start_with = |extra: &[(&str, String)]| {
        let extra = extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone()));
        LedgerProcess::start_example(
            "sink",
            &cluster,
            &topic,
            &group,
            env.iter().cloned().chain(extra),
        )
    };
    let start = || start_with(&[]);

    let (mut kills, mut stops) = (0, 0);
    for cycle in 0..8 {
        let before = db.rows(&tables).len();
        let sink = start();
        // Each run gets work done, then dies or stops at a random moment.
        wait_until("the sink stored more rows", SCENARIO_TIMEOUT, || {
            check_committed_not_ahead(&cluster, &group, &topic, &db, &tables);
            db.rows(&tables).len() >= before + 200
        });
        let extra = Instant::now() + Duration::from_millis(rng.random_range(0..1000));
        while Instant::now() < extra {
            check_committed_not_ahead(&cluster, &group, &topic, &db, &tables);
            std::thread::sleep(Duration::from_millis(100));
        }
        if cycle % 2 == 0 || rng.random_bool(0.3) {
            sink.kill();
            kills += 1;
        } else {
            let (status, output) = sink.terminate();
            assert!(status.success(), "the sink did not stop cleanly: {output}");
            stops += 1;
        }
        check_committed_not_ahead(&cluster, &group, &topic, &db, &tables);
    }
    streaming.store(false, Ordering::Relaxed);
    producer.join().unwrap();
    let end_offsets = cluster.end_offsets(&topic);
    let total: i64 = end_offsets.values().sum();
    let addr = free_addr();
    let sink = start_with(&[("HTTP_ADDR", addr.to_string())]);
    wait_until("the sink stored every message", SCENARIO_TIMEOUT, || {
        check_committed_not_ahead(&cluster, &group, &topic, &db, &tables);
        db.rows(&tables).len() as i64 >= total
    });
    // The last member killed may have stored every message already: then the database is
    // complete at once, while the new member still waits for the killed one's session to
    // expire. Its stop can only commit the partitions it holds: it must hold them all.
    wait_until_assigned(addr, &group, end_offsets.len());
    let (status, output) = sink.terminate();
    assert!(status.success(), "the sink did not stop cleanly: {output}");
    println!("{kills} kills and {stops} graceful stops, {total} messages");

    let rows = db.rows(&tables);
    let expected: Vec<(i32, i64)> = end_offsets
        .iter()
        .flat_map(|(&partition, &end)| (0..end).map(move |offset| (partition, offset)))
        .collect();
    let duplicates = rows.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert_eq!(duplicates, 0, "rows stored twice");
    assert_eq!(rows, expected, "every message stored exactly once");
    assert_eq!(db.positions(&tables), end_offsets);
    check_committed_not_ahead(&cluster, &group, &topic, &db, &tables);
    // After the last graceful stop the group committed everything too.
    assert_eq!(cluster.committed_offsets(&group, &topic), end_offsets);
    assert!(kills >= 4);
}

/// Issue 35's interleaving, deterministic: the stream is over, and a sink stored every message
/// but was killed before the group committed any (it commits once an hour). The next sink
/// starts every partition at its stored position, the partition's end, and takes nothing; it
/// holds them while the killed member's session expires. Its graceful stop (it too commits
/// only at the stop) commits the stored positions: the group's committed offsets are the end
/// offsets.
#[test]
fn a_successor_that_takes_nothing_after_the_stored_positions_commits_them_at_its_stop() {
    let cluster = Cluster::start();
    let topic = cluster.topic("sink-end", 4);
    let group = group("sink-end");
    let tables = topic.replace(['-', '.'], "_");
    let directory = tempfile::tempdir().unwrap();
    let db = Database::for_test(directory.path());
    let end_offsets = cluster.produce(&topic, 400);
    let total: i64 = end_offsets.values().sum();
    let mut env = test_session_env("");
    env.extend(db.env(&tables));
    env.extend([
        ("KAFKA_BATCH_MESSAGES".to_owned(), "50".to_owned()),
        ("KAFKA_COMMIT_INTERVAL".to_owned(), "1h".to_owned()),
        ("KAFKA_PROCESSORS".to_owned(), "2".to_owned()),
    ]);

    let killed = LedgerProcess::start_example("sink", &cluster, &topic, &group, env.clone());
    wait_until(
        "the first sink stored every message",
        SCENARIO_TIMEOUT,
        || db.rows(&tables).len() as i64 >= total,
    );
    killed.kill();
    assert_eq!(db.positions(&tables), end_offsets);
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        BTreeMap::new(),
        "the killed sink committed nothing"
    );

    let addr = free_addr();
    env.push(("HTTP_ADDR".to_owned(), addr.to_string()));
    let successor = LedgerProcess::start_example("sink", &cluster, &topic, &group, env);
    wait_until_assigned(addr, &group, end_offsets.len());
    let (status, output) = successor.terminate();
    assert!(status.success(), "the sink did not stop cleanly: {output}");
    assert!(output.contains("processed: 0 messages"), "{output}");

    let rows = db.rows(&tables);
    assert_eq!(rows.len() as i64, total, "every message stored once");
    assert_eq!(db.positions(&tables), end_offsets);
    assert_eq!(
        cluster.committed_offsets(&group, &topic),
        end_offsets,
        "{output}"
    );
}
