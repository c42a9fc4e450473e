//! The controls asked for by processing code and the application (`crate::control`), carried
//! out at the start of a round: pauses and resumes on request, their ends when their time
//! came, and seeks, each a re-assignment of the partition at the offset sought.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::{pause, resume};
use super::context::FetchContext;
use super::{Fetcher, LOG_TARGET};
use crate::actors::messages::Assigned;
use crate::control::{Action, Request, SeekTo, Target};
use crate::flow::AssignedPartition;
use crate::offsets::{AssignmentId, Start, TopicPartition};

/// The longest a seek to a time waits for the broker to name the offset.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Fetcher {
    /// Carries out the controls asked for since the last round, and ends the pauses whose
    /// time came. Only while fetching: a stop holds every partition, for good.
    pub(super) fn serve_controls(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let context = consumer.context();
        while let Ok(Request { target, action }) = self.requests.try_recv() {
            match (target, action) {
                (Target::Partition(partition, assignment), Action::Seek(to)) => {
                    seek(consumer, partition, assignment, to);
                }
                (Target::Partition(partition, assignment), Action::Pause { lasting }) => {
                    let until = lasting.and_then(|lasting| Instant::now().checked_add(lasting));
                    let paused = context.routes().pause_on_request(assignment, until);
                    log::info!(
                        target: LOG_TARGET,
                        "{partition}: paused on request{}",
                        lasting.map_or(" until resumed".to_owned(), |d| format!(" for {d:?}"))
                    );
                    if let Some(partition) = paused {
                        pause(consumer, &[partition], &self.metrics);
                    }
                }
                (Target::Partition(partition, assignment), Action::Resume) => {
                    let resumed = context.routes().resume_on_request(assignment);
                    log::info!(target: LOG_TARGET, "{partition}: resumed on request");
                    resume(consumer, resumed.into_iter().collect());
                }
                (Target::System, Action::Pause { .. }) => {
                    log::info!(target: LOG_TARGET, "every partition paused on request");
                    let paused = context.routes().pause_system();
                    if !paused.is_empty() {
                        pause(consumer, &paused, &self.metrics);
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

/// Re-assigns `partition`, held under `assignment`, at the offset `to` names: a new assignment
/// whose commit point is that offset (as a position a processor stored), so that whatever
/// finishes of the earlier one is fenced; the earlier one's backlog is dropped.
fn seek(
    consumer: &BaseConsumer<FetchContext>,
    partition: TopicPartition,
    assignment: AssignmentId,
    to: SeekTo,
) {
    let context = consumer.context();
    if context.routes().assignment_of(&partition) != Some(assignment) {
        log::debug!(
            target: LOG_TARGET,
            "{partition}: a seek asked for under an assignment that ended: ignored"
        );
        return;
    }
    let Some(offset) = offset_of(consumer, &partition, to) else {
        return;
    };
    let id = context.next_assignment.fetch_add(1, Ordering::Relaxed);
    let assigned = AssignedPartition::new(
        partition.clone(),
        AssignmentId(id),
        context.metrics.instruments.partition(&partition),
        context.controls.clone(),
    );
    let Some((ended, paused)) = context
        .routes()
        .reassign(assignment, assigned.clone(), offset)
    else {
        log::info!(
            target: LOG_TARGET,
            "{partition}: not sought to {offset}: the partition is held while the system stops"
        );
        return;
    };
    // Processors drop what they hold of it and have not started, and retry nothing of it.
    ended.fence();
    if let Some(revocation) = context.revocation.get() {
        for processor in &revocation.processors {
            processor.forget(vec![ended.assignment]);
        }
    }
    // Before anything is taken under the new assignment; it ends the earlier one in the book.
    context
        .tracker
        .assigned
        .do_send(Assigned(vec![(assigned, Start::Stored(offset))]));
    if paused {
        // Paused on the consumer already; the resume starts at the offset.
        pause(consumer, std::slice::from_ref(&partition), &context.metrics);
    } else {
        resume(consumer, vec![(partition.clone(), Some(offset))]);
    }
    context.metrics.sought();
    log::info!(target: LOG_TARGET, "{partition}: sought to {offset} on request");
}

/// The offset a seek goes to: as asked, or the first at or after a time (the partition's end
/// when there is none), which the broker is asked for.
fn offset_of(
    consumer: &BaseConsumer<FetchContext>,
    partition: &TopicPartition,
    to: SeekTo,
) -> Option<i64> {
    let millis = match to {
        SeekTo::Offset(offset) => return Some(offset),
        SeekTo::Time(millis) => millis,
    };
    let mut list = TopicPartitionList::new();
    let mut element = list.add_partition(partition.topic(), partition.partition());
    if let Err(error) = element.set_offset(Offset::Offset(millis)) {
        log::warn!(target: LOG_TARGET, "{partition}: cannot seek to time {millis}: {error}");
        return None;
    }
    let found = consumer
        .offsets_for_times(list, LOOKUP_TIMEOUT)
        .map_err(|error| error.to_string())
        .and_then(|found| {
            let element = found
                .find_partition(partition.topic(), partition.partition())
                .ok_or_else(|| "the broker did not answer for the partition".to_owned())?;
            element
                .error()
                .map_err(|error| error.to_string())
                .map(|()| element.offset())
        })
        .and_then(|offset| match offset {
            Offset::Offset(offset) => Ok(offset),
            // No message that late: the end.
            _ => consumer
                .fetch_watermarks(partition.topic(), partition.partition(), LOOKUP_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|error| error.to_string()),
        });
    match found {
        Ok(offset) => Some(offset),
        Err(error) => {
            log::warn!(
                target: LOG_TARGET,
                "{partition}: the seek to time {millis} is dropped: the offset could not be \
                 looked up ({error})"
            );
            None
        }
    }
}
