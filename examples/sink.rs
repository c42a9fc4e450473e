//! Sink: an exactly-once sink into a database, with the offsets stored in the same
//! transaction as the rows.
//!
//! Each batch (one partition's messages, in order) is written in one transaction: its rows,
//! and the partition's next position, which only moves forward (a batch below the stored
//! position is refused: it can only come from a member that lost the partition). When
//! partitions are assigned, `on_assigned` reads their positions from the database and the
//! framework starts reading there, whatever the group committed. So a crash at any moment
//! (SIGKILL included) leaves each message in the database exactly once after the restart; the
//! group's committed offsets are only a fallback for partitions the database has not seen, and
//! never run ahead of the stored ones (a message is committed only after its transaction).
//!
//! SQLite (a file, with its library built in: nothing to install) by default; PostgreSQL when
//! `DATABASE_URL` is set (for example `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! ```text
//! KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPICS=orders KAFKA_GROUP=sink SINK_DB=sink.db \
//!     cargo run --example sink
//! ```
//!
//! The consumer's configuration comes from the environment (`apply_env`; `KAFKA_BATCH_MESSAGES`
//! sets the batch size, 1 for a transaction per message). `SINK_TABLES` prefixes the table
//! names (default `sink`: `sink_rows` and `sink_positions`). With `SINK_DB` unset and no
//! `DATABASE_URL`, it runs a demo on the embedded cluster: 10,000 messages into `sink.db`.

use std::time::Duration;

use anyhow::Context as _;
use kafka_actors::testkit::{self, EmbeddedCluster};
use kafka_actors::{
    BatchProcessor, ConsumerConfig, ConsumerSystem, Message, OrderingMode, StoredPositions,
    TopicPartition,
};

/// One connection per processor.
enum Database {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

/// Where the sink writes, and its table names.
#[derive(Clone)]
struct Target {
    url: Option<String>,
    sqlite_path: String,
    tables: String,
}

struct Sink {
    target: Target,
    database: Option<Database>,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Database> {
        let (rows, positions) = (self.rows(), self.positions());
        match &self.url {
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .context("cannot connect to DATABASE_URL")?;
                // The connection runs on this processor's thread, as the processor does.
                tokio::task::spawn_local(async move {
                    if let Err(error) = connection.await {
                        log::error!("the database connection failed: {error}");
                    }
                });
                client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {rows} (topic TEXT NOT NULL, \
                         partition INT NOT NULL, \"offset\" BIGINT NOT NULL, payload TEXT);
                         CREATE TABLE IF NOT EXISTS {positions} (topic TEXT NOT NULL, \
                         partition INT NOT NULL, next_offset BIGINT NOT NULL, \
                         PRIMARY KEY (topic, partition));"
                    ))
                    .await
                    // Processors starting together race to create the tables: one wins.
                    .or_else(|error| match error.code() {
                        Some(code) if code.code() == "23505" || code.code() == "42P07" => Ok(()),
                        _ => Err(error),
                    })?;
                Ok(Database::Postgres(client))
            }
            None => {
                let connection = rusqlite::Connection::open(&self.sqlite_path)
                    .with_context(|| format!("cannot open {}", self.sqlite_path))?;
                connection.busy_timeout(Duration::from_secs(30))?;
                let set_up = || {
                    // WAL: readers (a test, a report) never block the writers.
                    connection.pragma_update(None, "journal_mode", "WAL")?;
                    connection.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS {rows} (topic TEXT NOT NULL, \
                         partition INTEGER NOT NULL, \"offset\" INTEGER NOT NULL, payload TEXT);
                         CREATE TABLE IF NOT EXISTS {positions} (topic TEXT NOT NULL, \
                         partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, \
                         PRIMARY KEY (topic, partition));"
                    ))
                };
                // Processors starting together contend for the switch to WAL, which does not
                // wait for the busy timeout: try again for a while.
                let mut attempts = 0;
                while let Err(error) = set_up() {
                    attempts += 1;
                    let busy = error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
                    if !busy || attempts == 100 {
                        return Err(error.into());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Database::Sqlite(connection))
            }
        }
    }

    fn rows(&self) -> String {
        format!("{}_rows", self.tables)
    }

    fn positions(&self) -> String {
        format!("{}_positions", self.tables)
    }
}

impl BatchProcessor for Sink {
    const PARTITION_HOOKS: bool = true;

    async fn on_start(&mut self) -> anyhow::Result<()> {
        self.database = Some(self.target.connect().await?);
        Ok(())
    }

    async fn process_batch(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        // Per partition ordering: a batch is a run of one partition's messages in order.
        let (first, last) = (&batch[0], &batch[batch.len() - 1]);
        let (topic, partition) = (first.topic(), first.partition());
        let (from, next) = (first.offset(), last.offset() + 1);
        let (rows, positions) = (self.target.rows(), self.target.positions());
        let refused = || {
            anyhow::anyhow!(
                "{topic}/{partition}: the stored position is past offset {from}: another member \
                 wrote this batch"
            )
        };
        match self.database.as_mut().context("not connected")? {
            Database::Sqlite(connection) => {
                let transaction = connection.transaction()?;
                {
                    let mut insert = transaction.prepare_cached(&format!(
                        "INSERT INTO {rows} (topic, partition, \"offset\", payload) \
                         VALUES (?1, ?2, ?3, ?4)"
                    ))?;
                    for message in batch {
                        insert.execute((
                            topic,
                            partition,
                            message.offset(),
                            message.payload_str(),
                        ))?;
                    }
                }
                let moved = transaction.execute(
                    &format!(
                        "INSERT INTO {positions} (topic, partition, next_offset) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset \
                         WHERE {positions}.next_offset <= ?4"
                    ),
                    (topic, partition, next, from),
                )?;
                anyhow::ensure!(moved == 1, refused());
                transaction.commit()?;
            }
            Database::Postgres(client) => {
                let transaction = client.transaction().await?;
                // One statement for the whole batch: one round trip, whatever its size.
                let offsets: Vec<i64> = batch.iter().map(Message::offset).collect();
                let payloads: Vec<Option<&str>> = batch.iter().map(Message::payload_str).collect();
                transaction
                    .execute(
                        &format!(
                            "INSERT INTO {rows} (topic, partition, \"offset\", payload) \
                             SELECT $1, $2, o, p FROM UNNEST($3::BIGINT[], $4::TEXT[]) AS b(o, p)"
                        ),
                        &[&topic, &partition, &offsets, &payloads],
                    )
                    .await?;
                let moved = transaction
                    .execute(
                        &format!(
                            "INSERT INTO {positions} (topic, partition, next_offset) \
                             VALUES ($1, $2, $3) ON CONFLICT (topic, partition) DO UPDATE \
                             SET next_offset = excluded.next_offset \
                             WHERE {positions}.next_offset <= $4"
                        ),
                        &[&topic, &partition, &next, &from],
                    )
                    .await?;
                anyhow::ensure!(moved == 1, refused());
                transaction.commit().await?;
            }
        }
        Ok(())
    }

    /// The positions the database holds: reading starts there.
    async fn on_assigned(
        &mut self,
        assigned: &[TopicPartition],
    ) -> anyhow::Result<StoredPositions> {
        let positions = self.target.positions();
        let query =
            format!("SELECT next_offset FROM {positions} WHERE topic = $1 AND partition = $2");
        let mut stored = Vec::new();
        for partition in assigned {
            let (topic, number) = (partition.topic(), partition.partition());
            let next: Option<i64> = match self.database.as_mut().context("not connected")? {
                Database::Sqlite(connection) => {
                    use rusqlite::OptionalExtension as _;
                    connection
                        .query_row(&query.replace('$', "?"), (topic, number), |row| row.get(0))
                        .optional()?
                }
                Database::Postgres(client) => client
                    .query_opt(&query, &[&topic, &number])
                    .await?
                    .map(|row| row.get(0)),
            };
            stored.extend(next.map(|next| (partition.clone(), next)));
        }
        Ok(stored)
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let sqlite_path = std::env::var("SINK_DB").ok();
    let demo = url.is_none() && sqlite_path.is_none();
    let target = Target {
        url,
        sqlite_path: sqlite_path.unwrap_or_else(|| "sink.db".to_owned()),
        tables: std::env::var("SINK_TABLES").unwrap_or_else(|_| "sink".to_owned()),
    };

    // The demo: an embedded cluster with a topic of 10,000 messages.
    let mut demo_cluster = None;
    let mut builder = ConsumerConfig::builder();
    if demo {
        let cluster = EmbeddedCluster::start()?;
        cluster.create_topic("orders", 4)?;
        let records = (0..10_000).map(|i| (format!("order-{i}"), format!("{{\"order\":{i}}}")));
        testkit::produce(&cluster.bootstrap_servers(), "orders", records)?;
        builder = builder
            .brokers(cluster.bootstrap_servers())
            .topic("orders")
            .group_id("sink");
        demo_cluster = Some(cluster);
    }
    let config = builder
        .apply_env()?
        .ordering(OrderingMode::PerPartition)
        .build()?;

    let system = ConsumerSystem::spawn_batch(config, move || Sink {
        target: target.clone(),
        database: None,
    })?;
    if demo_cluster.is_some() {
        // Runs until everything is in the database, then stops.
        while system.metrics().processed < 10_000 && !system.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
        system.stop();
    }
    let report = system.join()?;
    println!("{report}");
    anyhow::ensure!(
        report.is_clean(),
        "the system did not stop cleanly: {}",
        report.reason
    );
    Ok(())
}
