//! The controls asked for by processing code and the application (`crate::control`), carried
//! out at the start of a round: pauses and resumes on request, their ends when their time
//! came, and seeks, each a re-assignment of the partition at the offset sought. A seek to a
//! time is looked up first on a thread and a client of its own (`TimeLookups`), which asks
//! for the seek to the offset found: the Fetcher never waits for a broker's answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::consumer::{pause, resume};
use super::context::FetchContext;
use super::{Fetcher, LOG_TARGET};
use crate::actors::messages::Assigned;
use crate::control::{Action, Controls, Request, SeekTo, Target};
use crate::metrics::SystemMetrics;
use crate::native;
use crate::offsets::{AssignmentId, Start, TopicPartition};
use crate::trouble::Trouble;

/// The longest a lookup of an offset by time waits for the broker, per request.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the Fetcher receives controls on, and how it looks offsets up by time.
pub(crate) struct ControlDesk {
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) lookups: TimeLookups,
}

impl Fetcher {
    /// Carries out the controls asked for since the last round, and ends the pauses whose
    /// time came. Only while fetching: a stop holds every partition, for good.
    pub(super) fn serve_controls(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let context = consumer.context();
        while let Ok(Request { target, action }) = self.controls.requests.try_recv() {
            match (target, action) {
                (Target::Partition(partition, lineage), Action::Seek(SeekTo::Offset(offset))) => {
                    seek(consumer, partition, lineage, offset);
                }
                (Target::Partition(partition, lineage), Action::Seek(SeekTo::Time(millis))) => {
                    self.controls.lookups.seek_to_time(
                        &context.controls,
                        partition,
                        lineage,
                        millis,
                    );
                }
                (Target::Partition(partition, lineage), Action::Pause { lasting }) => {
                    let until = lasting.and_then(|lasting| Instant::now().checked_add(lasting));
                    match context.routes().pause_on_request(lineage, until) {
                        None => ignored(&partition, "pause"),
                        Some(to_pause) => {
                            log::info!(
                                target: LOG_TARGET,
                                "{partition}: paused on request{}",
                                lasting
                                    .map_or(" until resumed".to_owned(), |d| format!(" for {d:?}"))
                            );
                            if let Some(partition) = to_pause {
                                pause(consumer, &[partition], None);
                            }
                        }
                    }
                }
                (Target::Partition(partition, lineage), Action::Resume) => {
                    match context.routes().resume_on_request(lineage) {
                        None => ignored(&partition, "resume"),
                        Some(resumed) => {
                            log::info!(target: LOG_TARGET, "{partition}: resumed on request");
                            resume(consumer, resumed.into_iter().collect());
                        }
                    }
                }
                (Target::System, Action::Pause { .. }) => {
                    log::info!(target: LOG_TARGET, "every partition paused on request");
                    let paused = context.routes().pause_system();
                    if !paused.is_empty() {
                        pause(consumer, &paused, None);
                    }
                }
                (Target::System, Action::Resume) => {
                    log::info!(target: LOG_TARGET, "the system's pause ended on request");
                    resume(consumer, context.routes().resume_system());
                }
                (Target::System, Action::Seek(_)) => {}
            }
        }
        let due = context.routes().requests_due(Instant::now());
        if !due.is_empty() {
            let names: Vec<String> = due.iter().map(|(p, _)| p.to_string()).collect();
            log::info!(
                target: LOG_TARGET,
                "{}: the pause asked for is over",
                names.join(", ")
            );
            resume(consumer, due);
        }
    }
}

fn ignored(partition: &TopicPartition, what: &str) {
    log::info!(
        target: LOG_TARGET,
        "{partition}: a {what} asked for after a rebalance took the partition: ignored"
    );
}

/// Re-assigns the partition of `lineage` at `offset` (at most its end): a new assignment whose
/// commit point is that offset (as a position a processor stored), so that whatever finishes
/// of the earlier one is fenced; the earlier one's backlog is dropped.
fn seek(
    consumer: &BaseConsumer<FetchContext>,
    partition: TopicPartition,
    lineage: AssignmentId,
    offset: i64,
) {
    let context = consumer.context();
    // Past the end, the offset committed would skip whatever is produced up to it.
    let offset = match native::high_watermark(consumer, &partition) {
        Some(end) if end >= 0 && offset > end => {
            log::info!(
                target: LOG_TARGET,
                "{partition}: a seek to {offset} goes to the partition's end, {end}"
            );
            end
        }
        _ => offset,
    };
    let id = AssignmentId(context.next_assignment.fetch_add(1, Ordering::Relaxed));
    let Some(reassigned) = context.routes().reassign(lineage, id, offset) else {
        ignored(&partition, "seek");
        return;
    };
    // Processors drop what they hold of it and have not started, and retry nothing of it.
    let ended = reassigned.ended.assignment;
    reassigned.ended.fence();
    if let Some(revocation) = context.revocation.get() {
        for processor in &revocation.processors {
            processor.forget(vec![ended]);
        }
    }
    // Before anything is taken under the new assignment; it ends the earlier one in the book.
    context
        .tracker
        .assigned
        .do_send(Assigned(vec![(reassigned.assigned, Start::Stored(offset))]));
    if reassigned.paused {
        // Paused on the consumer already; the resume starts at the offset.
        pause(consumer, std::slice::from_ref(&partition), None);
    } else {
        resume(consumer, vec![(partition.clone(), Some(offset))]);
    }
    context.metrics.sought();
    log::info!(target: LOG_TARGET, "{partition}: sought to {offset} on request");
}

/// Looks offsets up by time for seeks, each on a thread of its own with a client of its own
/// (made at the first lookup), and asks for the seek to the offset found on the controls'
/// line.
pub(crate) struct TimeLookups {
    config: ClientConfig,
    metrics: Arc<SystemMetrics>,
    client: Option<Arc<BaseConsumer<LookupContext>>>,
}

impl TimeLookups {
    /// `config`: the consumer's client configuration (brokers, TLS, SASL); the lookup client
    /// joins no group.
    pub(crate) fn new(config: ClientConfig, metrics: Arc<SystemMetrics>) -> Self {
        TimeLookups {
            config,
            metrics,
            client: None,
        }
    }

    fn seek_to_time(
        &mut self,
        controls: &Controls,
        partition: TopicPartition,
        lineage: AssignmentId,
        millis: i64,
    ) {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let context = LookupContext {
                    metrics: self.metrics.clone(),
                };
                match self.config.create_with_context(context) {
                    Ok(client) => self.client.insert(Arc::new(client)).clone(),
                    Err(error) => {
                        log::warn!(
                            target: LOG_TARGET,
                            "{partition}: the seek to time {millis} is dropped: no client to \
                             look it up ({error})"
                        );
                        return;
                    }
                }
            }
        };
        let controls = controls.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-actors-lookup".to_owned())
            .spawn(move || match offset_at(&client, &partition, millis) {
                Ok(offset) => {
                    let seek = Action::Seek(SeekTo::Offset(offset));
                    // Refused only once the system is gone.
                    let _ = controls.ask(Target::Partition(partition, lineage), seek);
                }
                Err(error) => log::warn!(
                    target: LOG_TARGET,
                    "{partition}: the seek to time {millis} is dropped: the offset could not be \
                     looked up ({error})"
                ),
            });
        if let Err(error) = spawned {
            log::warn!(target: LOG_TARGET, "could not start a thread for a lookup: {error}");
        }
    }
}

/// The first offset at or after a time, or the partition's end when there is none.
fn offset_at(
    client: &BaseConsumer<LookupContext>,
    partition: &TopicPartition,
    millis: i64,
) -> Result<i64, String> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(
        partition.topic(),
        partition.partition(),
        Offset::Offset(millis),
    )
    .map_err(|error| error.to_string())?;
    let found = client
        .offsets_for_times(list, LOOKUP_TIMEOUT)
        .map_err(|error| error.to_string())?;
    let element = found
        .find_partition(partition.topic(), partition.partition())
        .ok_or("the broker did not answer for the partition")?;
    element.error().map_err(|error| error.to_string())?;
    match element.offset() {
        Offset::Offset(offset) => Ok(offset),
        // No message that late: the end.
        _ => client
            .fetch_watermarks(partition.topic(), partition.partition(), LOOKUP_TIMEOUT)
            .map(|(_, high)| high)
            .map_err(|error| error.to_string()),
    }
}

/// The lookup client's context: librdkafka's errors and log lines go to `ClientTrouble`, as
/// every client's of the system do.
struct LookupContext {
    metrics: Arc<SystemMetrics>,
}

impl ClientContext for LookupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.metrics.trouble.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .trouble
            .error(&error, Trouble::of(&error), reason);
    }
}

impl ConsumerContext for LookupContext {}
