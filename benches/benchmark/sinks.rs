//! The sink table: rows per second that the exactly-once sink (`examples/sink.rs`) stores into
//! SQLite and PostgreSQL, a transaction per message against batches of 100 and 1,000, in one
//! run.
//!
//! Each run preloads a topic (4 partitions, 100-byte payloads), starts the sink example as a
//! child process with `KAFKA_BATCH_MESSAGES` set, and watches the database: the rate is
//! counted from the first stored row to the last, so the group join does not count. Both
//! databases keep their durable defaults (SQLite in WAL mode with `synchronous=FULL`,
//! PostgreSQL with `fsync` on): a transaction costs a sync to disk.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kafka_actors::testkit::{self, EmbeddedCluster};

const PARTITIONS: i32 = 4;
const PAYLOAD: usize = 100;
const BATCHES: [usize; 3] = [1, 100, 1000];

enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    fn name(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
        }
    }

    /// How many rows the sink stored in `tables`.
    fn count(&self, tables: &str, runtime: &tokio::runtime::Runtime) -> u64 {
        let query = format!("SELECT COUNT(*) FROM {tables}_rows");
        match self {
            Database::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|c| c.query_row(&query, [], |row| row.get::<_, i64>(0)))
                .map_or(0, |n| n as u64),
            Database::Postgres(url) => runtime.block_on(async {
                let Ok((client, connection)) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await
                else {
                    return 0;
                };
                let connection = tokio::spawn(connection);
                let count = client
                    .query_one(&query, &[])
                    .await
                    .map_or(0, |row| row.get::<_, i64>(0) as u64);
                drop(client);
                let _ = connection.await;
                count
            }),
        }
    }
}

/// Runs the table: SQLite in a temporary directory, PostgreSQL when `database_url` is given.
pub fn run(
    brokers: Option<String>,
    database_url: Option<String>,
    runs: usize,
    scale: f64,
) -> anyhow::Result<String> {
    let sink = build_sink()?;
    let embedded = match brokers {
        Some(_) => None,
        None => Some(EmbeddedCluster::start()?),
    };
    let brokers = match (&brokers, &embedded) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(embedded)) => embedded.bootstrap_servers(),
        (None, None) => unreachable!("an embedded cluster is started without brokers"),
    };
    let directory = tempfile::tempdir()?;
    let mut databases = vec![Database::Sqlite(directory.path().join("sink.db"))];
    databases.extend(database_url.map(Database::Postgres));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut table = String::new();
    writeln!(
        table,
        "\n## Rows per second into a database, exactly once\n\n\
         The sink example (`examples/sink.rs`): each batch's rows and its partition's position \
         in one transaction. {PARTITIONS} partitions, {PAYLOAD}-byte payloads, 4 processors; \
         Kafka: {}. Medians of {runs} runs (spread: lowest to highest); a batch of 1 is a \
         transaction per message. Durable defaults: SQLite in WAL mode with synchronous=FULL, \
         PostgreSQL 15 with fsync on (`scripts/postgres.sh`). Command: `scripts/bench.sh sinks`.\n",
        if embedded.is_some() {
            "the embedded cluster"
        } else {
            "the real broker"
        }
    )?;
    writeln!(table, "| Database | Batch | Rows | Rows/s | Spread |")?;
    writeln!(table, "|---|---:|---:|---:|---|")?;
    for database in &databases {
        for batch in BATCHES {
            // A transaction per message is slow: fewer rows for it.
            let rows = match batch {
                1 => (3_000.0 * scale) as u64,
                _ => (60_000.0 * scale) as u64,
            }
            .max(500);
            let mut rates = Vec::new();
            for round in 0..runs {
                let name = format!(
                    "sinkbench_{}_{batch}_{round}_{}",
                    database.name().to_lowercase(),
                    std::process::id()
                );
                match &embedded {
                    Some(embedded) => embedded.create_topic(&name, PARTITIONS)?,
                    None => crate::driver::create_topic(&brokers, &name, PARTITIONS)?,
                }
                let payload = "x".repeat(PAYLOAD);
                let records = (0..rows).map(|i| (format!("k{i}"), payload.clone()));
                testkit::produce(&brokers, &name, records)?;
                let rate = measure(&sink, &brokers, &name, database, batch, rows, &runtime)
                    .with_context(|| format!("{} with batches of {batch}", database.name()))?;
                eprintln!(
                    "[sinks] {} batch {batch} run {round}: {rate:.0} rows/s",
                    database.name()
                );
                rates.push(rate);
            }
            rates.sort_by(f64::total_cmp);
            writeln!(
                table,
                "| {} | {batch} | {rows} | {:.0} | {:.0} to {:.0} |",
                database.name(),
                rates[rates.len() / 2],
                rates[0],
                rates[rates.len() - 1]
            )?;
        }
    }
    Ok(table)
}

/// Runs the sink on a preloaded topic until it stored every row; returns rows per second from
/// the first stored row to the last.
fn measure(
    sink: &Path,
    brokers: &str,
    topic: &str,
    database: &Database,
    batch: usize,
    rows: u64,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<f64> {
    let mut command = Command::new(sink);
    command
        .env("KAFKA_BROKERS", brokers)
        .env("KAFKA_TOPICS", topic)
        .env("KAFKA_GROUP", topic)
        .env("KAFKA_PROCESSORS", PARTITIONS.to_string())
        .env("KAFKA_BATCH_MESSAGES", batch.to_string())
        .env("SINK_TABLES", topic)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    match database {
        Database::Sqlite(path) => command.env("SINK_DB", path),
        Database::Postgres(url) => command.env("DATABASE_URL", url),
    };
    let mut child = command.spawn().context("start the sink example")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let outcome = loop {
        let stored = database.count(topic, runtime);
        let now = Instant::now();
        if stored > 0 && first.is_none() {
            first = Some((now, stored));
        }
        if stored >= rows {
            let (since, already) = first.unwrap_or((now, 0));
            let seconds = now.duration_since(since).as_secs_f64().max(1e-3);
            break Ok((rows - already) as f64 / seconds);
        }
        if now > deadline {
            break Err(anyhow::anyhow!("{stored} of {rows} rows after 600 s"));
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("the sink exited early: {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SIGTERM: the sink stops gracefully; then it is waited for.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait()?;
    let rate = outcome?;
    if !status.success() {
        bail!("the sink did not stop cleanly: {status}");
    }
    Ok(rate)
}

/// Builds the sink example in release mode and returns its path.
fn build_sink() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "sink"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build --example sink failed: {status}");
    }
    Ok(root.join("target/release/examples/sink"))
}
