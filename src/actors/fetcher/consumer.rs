//! What the Fetcher does to the consumer outside its rounds' bookkeeping: acting on errors,
//! pausing, resuming and seeking partitions, fetching a stray message again, and closing.

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::context::FetchContext;
use super::{LOG_TARGET, names};
use crate::metrics::SystemMetrics;
use crate::offsets::TopicPartition;
use crate::report::StopReason;
use crate::stop::StopHandle;
use crate::trouble::{Resource, Trouble};

/// How long the close waits for the answer of a commit on its way.
const SETTLE_BEFORE_CLOSE: Duration = Duration::from_secs(5);

/// librdkafka reports most errors (a broker down, a timeout) and recovers from them itself (the
/// context logged them); a fatal error ends the consumer, and a refusal (credentials, ACLs)
/// never heals, so both stop the system.
pub(super) fn poll_failed(
    consumer: &BaseConsumer<FetchContext>,
    stop: &StopHandle,
    error: KafkaError,
) {
    if let Some((_, reason)) = consumer.client().fatal_error() {
        log::error!(target: LOG_TARGET, "consumer failed fatally: {reason}");
        stop.request_graceful(StopReason::ConsumerFailed(reason));
        return;
    }
    let context = consumer.context();
    let detail = context
        .take_reported()
        .map_or_else(|| error.to_string(), |reported| reported.reason);
    if let Some(refusal) = context.refusal(Trouble::of(&error), detail) {
        log::error!(target: LOG_TARGET, "{refusal}; stopping");
        stop.request_graceful(refusal);
    }
}

/// Acts on errors librdkafka returned in place of records: an ACL that refuses a topic, or
/// records that cannot be read, stop the system (the partition stays uncommitted, nothing is
/// skipped); the rest librdkafka retries.
pub(super) fn record_errors(
    consumer: &BaseConsumer<FetchContext>,
    stop: &StopHandle,
    errors: Vec<(TopicPartition, i64, RDKafkaErrorCode)>,
) {
    for (partition, offset, code) in errors {
        let trouble = Trouble::of_code(code);
        if trouble.is_retried() {
            consumer
                .context()
                .metrics
                .trouble
                .record_error(&partition, code);
            continue;
        }
        // The Routes hold the partition: nothing past the record is taken.
        let reason = match trouble {
            Trouble::Transient | Trouble::Tls => continue,
            Trouble::Unreadable => StopReason::Unreadable {
                partition,
                offset,
                error: code.to_string(),
            },
            Trouble::NotAuthorized(Resource::Topic) => StopReason::NotAuthorized {
                resource: format!("READ on topic `{}`", partition.topic()),
                error: code.to_string(),
            },
            trouble => match consumer.context().refusal(trouble, code.to_string()) {
                Some(reason) => reason,
                None => continue,
            },
        };
        log::error!(target: LOG_TARGET, "{reason}; stopping");
        stop.request_graceful(reason);
    }
}

/// Resumes partitions, each from the first message not taken. Left alone, librdkafka would
/// resume after the last message it returned, which may be past the last one taken (a batch
/// is returned whole), and its broker thread would start fetching only at its next wake-up,
/// up to a second later when every partition was paused. A seek to the next message does
/// both right: it sets the position and makes the partition fetchable at once.
pub(super) fn resume(
    consumer: &BaseConsumer<FetchContext>,
    partitions: Vec<(TopicPartition, Option<i64>)>,
) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, _) in &partitions {
        list.add_partition(partition.topic(), partition.partition());
    }
    match consumer.resume(&list) {
        Ok(()) => log::debug!(target: LOG_TARGET, "resumed {}", names(&list)),
        Err(error) => log::warn!(target: LOG_TARGET, "could not resume {}: {error}", names(&list)),
    }
    for (partition, offset) in partitions {
        if let Some(offset) = offset {
            seek(consumer, &partition, offset);
        }
    }
}

/// Pauses partitions: for flow control (counted in `metrics`), or on request. librdkafka drops
/// what it had fetched for them and fetches it again after the resume, so nothing more of
/// theirs is taken meanwhile.
pub(super) fn pause(
    consumer: &BaseConsumer<FetchContext>,
    partitions: &[TopicPartition],
    flow_control: Option<&SystemMetrics>,
) {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(partition.topic(), partition.partition());
    }
    match consumer.pause(&list) {
        Ok(()) => log::debug!(target: LOG_TARGET, "paused {}", names(&list)),
        Err(error) => log::warn!(target: LOG_TARGET, "could not pause {}: {error}", names(&list)),
    }
    if let Some(metrics) = flow_control {
        metrics.paused(partitions.len());
    }
}

/// Sets where librdkafka fetches a partition from next; what it fetched before is dropped.
/// Asynchronous, and ordered after any pause or resume.
fn seek(consumer: &BaseConsumer<FetchContext>, partition: &TopicPartition, offset: i64) {
    let sought = consumer.seek(
        partition.topic(),
        partition.partition(),
        Offset::Offset(offset),
        Duration::ZERO,
    );
    if let Err(error) = sought {
        log::error!(target: LOG_TARGET, "could not seek {partition} to {offset}: {error}");
    }
}

/// A message that came through the consumer's own queue, which only happens to a partition
/// assigned without the rebalance callback routing it: route it and fetch the message again
/// through the fetch queue, where it is taken in order with the rest.
pub(super) fn fetch_again(consumer: &BaseConsumer<FetchContext>, message: &BorrowedMessage<'_>) {
    log::warn!(
        target: LOG_TARGET,
        "{}/{}@{} came through the consumer's queue: fetching it again",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let mut partition = TopicPartitionList::new();
    partition.add_partition(message.topic(), message.partition());
    if let Some(queue) = consumer.context().fetch_queue().as_ref() {
        queue.route(consumer, &partition);
    }
    seek(
        consumer,
        &TopicPartition::new(message.topic(), message.partition()),
        message.offset(),
    );
}

/// Closes and drops the consumer on a thread of its own, and returns a receiver that answers
/// once that is done. rdkafka's `Drop` closes the consumer (serving the revocation callback
/// and leaving the group) and polls until it is closed, with no bound: a thread of its own
/// keeps that from blocking the shutdown, which waits only as long as its budget allows.
pub(super) fn close_in_background(consumer: BaseConsumer<FetchContext>) -> mpsc::Receiver<()> {
    // The fetch queue goes first: it must not outlive the consumer. What the partitions still
    // forward to it is dropped untaken.
    drop(consumer.context().fetch_queue().take());
    let (closed_tx, closed_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-consumer-close".to_owned())
        .spawn(move || {
            // The commit line's queue must not outlive the consumer either. The commit on its
            // way is answered first, so that the close's revocation commit comes after it.
            let line = consumer.context().commit_line().take();
            if let Some(mut line) = line
                && !line.settle(SETTLE_BEFORE_CLOSE)
            {
                log::warn!(
                    target: LOG_TARGET,
                    "a commit was still unanswered after {SETTLE_BEFORE_CLOSE:?}; closing anyway"
                );
            }
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(error) = spawned {
        log::error!(target: LOG_TARGET, "could not start a thread to close the consumer: {error}");
    }
    closed_rx
}
