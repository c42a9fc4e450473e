//! Handles of the figures recorded through the `metrics` facade (names in
//! [`metric_names`](crate::metric_names)), registered once, where the labels are known, so
//! that recording on the hot path is an atomic operation and no lookup.
//!
//! - [`GroupInstruments`]: the member's own figures, held by [`SystemMetrics`](
//!   crate::metrics::SystemMetrics) beside the snapshot's counters.
//! - [`PartitionInstruments`]: a partition's, carried by every message fetched under its
//!   assignment, so that a processor records without knowing the partition.
//! - [`PartitionProgress`]: a partition's lag, incomplete offsets and stalls, which the
//!   OffsetTracker knows.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit, counter, gauge, histogram};

use crate::metric_names as names;
use crate::offsets::TopicPartition;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct GroupInstruments {
    group: Arc<str>,
    pub(crate) in_flight: Gauge,
    pub(crate) bytes_in_flight: Gauge,
    pub(crate) waiting: Gauge,
    pub(crate) paused: Gauge,
    pub(crate) paused_on_request: Gauge,
    pub(crate) assigned: Gauge,
    pub(crate) stalled: Gauge,
    pub(crate) commits_succeeded: Counter,
    pub(crate) commits_failed: Counter,
    pub(crate) metadata_truncated: Counter,
    pub(crate) commit_duration: Histogram,
    pub(crate) assignments: Counter,
    pub(crate) revocations: Counter,
    pub(crate) lost_assignments: Counter,
    pub(crate) pauses: Counter,
    pub(crate) seeks: Counter,
    pub(crate) processor_restarts: Counter,
    /// The cluster's outage gauge (`broker="all"`), registered at the start so that it reads 0
    /// before any outage.
    cluster_unreachable: Gauge,
}

/// What each figure is, for the exporter's HELP lines.
const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    (
        names::MESSAGES_PROCESSED,
        Kind::Counter,
        None,
        "Messages processed successfully.",
    ),
    (
        names::RETRIES,
        Kind::Counter,
        None,
        "Failed attempts followed by a retry.",
    ),
    (
        names::MESSAGES_SKIPPED,
        Kind::Counter,
        None,
        "Messages skipped after their attempts were used up.",
    ),
    (
        names::MESSAGES_DEAD_LETTERED,
        Kind::Counter,
        None,
        "Messages produced to the dead-letter topic.",
    ),
    (
        names::PROCESSING_DURATION,
        Kind::Histogram,
        Some(Unit::Seconds),
        "How long one attempt at a message took in the processor.",
    ),
    (
        names::END_TO_END_LATENCY,
        Kind::Histogram,
        Some(Unit::Seconds),
        "From the message's timestamp to the moment it was done with.",
    ),
    (
        names::CONSUMER_LAG,
        Kind::Gauge,
        None,
        "High watermark minus the offset last committed by this member.",
    ),
    (
        names::PROCESSING_LAG,
        Kind::Gauge,
        None,
        "High watermark minus the processed position (the first message not finished).",
    ),
    (
        names::INCOMPLETE_OFFSETS,
        Kind::Gauge,
        None,
        "Messages finished beyond the processed position, not committable yet.",
    ),
    (
        names::STALLS,
        Kind::Counter,
        None,
        "Times the partition stalled longer than the stall timeout.",
    ),
    (
        names::MESSAGES_IN_FLIGHT,
        Kind::Gauge,
        None,
        "Messages fetched and not yet done with.",
    ),
    (
        names::BYTES_IN_FLIGHT,
        Kind::Gauge,
        Some(Unit::Bytes),
        "Keys plus payloads of the messages in flight.",
    ),
    (
        names::MESSAGES_WAITING,
        Kind::Gauge,
        None,
        "Messages in flight waiting for room in a processor.",
    ),
    (
        names::PAUSED_PARTITIONS,
        Kind::Gauge,
        None,
        "Partitions paused: by the in-flight limits, the commit window, on request or for a stop.",
    ),
    (
        names::PAUSED_ON_REQUEST,
        Kind::Gauge,
        None,
        "Partitions paused on request, by processing code or the application.",
    ),
    (
        names::ASSIGNED_PARTITIONS,
        Kind::Gauge,
        None,
        "Partitions assigned to this member.",
    ),
    (
        names::STALLED_PARTITIONS,
        Kind::Gauge,
        None,
        "Partitions stalled now.",
    ),
    (
        names::COMMITS_SUCCEEDED,
        Kind::Counter,
        None,
        "Commits Kafka acknowledged.",
    ),
    (
        names::COMMITS_FAILED,
        Kind::Counter,
        None,
        "Commits that failed.",
    ),
    (
        names::COMMIT_METADATA_TRUNCATED,
        Kind::Counter,
        None,
        "Offsets finished beyond a commit point left out of its metadata.",
    ),
    (
        names::COMMIT_DURATION,
        Kind::Histogram,
        Some(Unit::Seconds),
        "From sending a commit to its answer.",
    ),
    (
        names::ASSIGNMENTS,
        Kind::Counter,
        None,
        "Rebalances that assigned partitions to this member.",
    ),
    (
        names::REVOCATIONS,
        Kind::Counter,
        None,
        "Rebalances that revoked partitions from this member.",
    ),
    (
        names::LOST_ASSIGNMENTS,
        Kind::Counter,
        None,
        "Revocations that were losses: nothing was committed.",
    ),
    (
        names::PAUSES,
        Kind::Counter,
        None,
        "Times a partition was paused by the in-flight limits.",
    ),
    (
        names::SEEKS,
        Kind::Counter,
        None,
        "Seeks carried out, asked for by processing code.",
    ),
    (
        names::PROCESSOR_RESTARTS,
        Kind::Counter,
        None,
        "Processors replaced after a panic.",
    ),
    (
        names::LIBRDKAFKA_ERRORS,
        Kind::Counter,
        None,
        "Errors librdkafka reported, by kind.",
    ),
    (
        names::UNREACHABLE,
        Kind::Gauge,
        Some(Unit::Seconds),
        "How long the cluster (broker=all) or a broker has been unreachable; 0 when reachable.",
    ),
    (
        names::SHUTDOWN_PHASE_DURATION,
        Kind::Gauge,
        Some(Unit::Seconds),
        "How long each phase of the last shutdown took.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Gives the installed recorder each figure's description and unit.
fn describe() {
    for &(name, kind, unit, description) in DESCRIPTIONS {
        let unit = unit.unwrap_or(Unit::Count);
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, description),
            Kind::Gauge => metrics::describe_gauge!(name, unit, description),
            Kind::Histogram => metrics::describe_histogram!(name, unit, description),
        }
    }
}

impl GroupInstruments {
    pub(crate) fn new(group: &str) -> Self {
        describe();
        let labels = [Label::new("group", group.to_owned())];
        let cluster = [
            Label::new("group", group.to_owned()),
            Label::from_static_parts("broker", "all"),
        ];
        GroupInstruments {
            group: group.into(),
            in_flight: gauge!(names::MESSAGES_IN_FLIGHT, labels.iter()),
            bytes_in_flight: gauge!(names::BYTES_IN_FLIGHT, labels.iter()),
            waiting: gauge!(names::MESSAGES_WAITING, labels.iter()),
            paused: gauge!(names::PAUSED_PARTITIONS, labels.iter()),
            paused_on_request: gauge!(names::PAUSED_ON_REQUEST, labels.iter()),
            assigned: gauge!(names::ASSIGNED_PARTITIONS, labels.iter()),
            stalled: gauge!(names::STALLED_PARTITIONS, labels.iter()),
            commits_succeeded: counter!(names::COMMITS_SUCCEEDED, labels.iter()),
            commits_failed: counter!(names::COMMITS_FAILED, labels.iter()),
            metadata_truncated: counter!(names::COMMIT_METADATA_TRUNCATED, labels.iter()),
            commit_duration: histogram!(names::COMMIT_DURATION, labels.iter()),
            assignments: counter!(names::ASSIGNMENTS, labels.iter()),
            revocations: counter!(names::REVOCATIONS, labels.iter()),
            lost_assignments: counter!(names::LOST_ASSIGNMENTS, labels.iter()),
            pauses: counter!(names::PAUSES, labels.iter()),
            seeks: counter!(names::SEEKS, labels.iter()),
            processor_restarts: counter!(names::PROCESSOR_RESTARTS, labels.iter()),
            cluster_unreachable: gauge!(names::UNREACHABLE, cluster.iter()),
        }
    }

    /// Counts an error librdkafka reported. Errors are rare but for outages, where they come
    /// a few dozen a second at most: the handle is looked up each time.
    pub(crate) fn librdkafka_error(&self, kind: &str) {
        let labels = [
            Label::new("group", self.group.to_string()),
            Label::new("kind", kind.to_owned()),
        ];
        counter!(names::LIBRDKAFKA_ERRORS, labels.iter()).increment(1);
    }

    /// The outage gauge of `broker`, `all` for the cluster.
    pub(crate) fn unreachable(&self, broker: &str) -> Gauge {
        if broker == "all" {
            return self.cluster_unreachable.clone();
        }
        let labels = [
            Label::new("group", self.group.to_string()),
            Label::new("broker", broker.to_owned()),
        ];
        gauge!(names::UNREACHABLE, labels.iter())
    }

    /// The handles of one partition's figures.
    pub(crate) fn partition(&self, partition: &TopicPartition) -> PartitionInstruments {
        let labels = self.partition_labels(partition);
        let topic = &labels[..2];
        PartitionInstruments {
            processed: counter!(names::MESSAGES_PROCESSED, labels.iter()),
            retries: counter!(names::RETRIES, labels.iter()),
            skipped: counter!(names::MESSAGES_SKIPPED, labels.iter()),
            dead_lettered: counter!(names::MESSAGES_DEAD_LETTERED, labels.iter()),
            processing_duration: histogram!(names::PROCESSING_DURATION, topic.iter()),
            end_to_end_latency: histogram!(names::END_TO_END_LATENCY, topic.iter()),
        }
    }

    /// The figures of one partition's progress, which the OffsetTracker knows.
    pub(crate) fn partition_progress(&self, partition: &TopicPartition) -> PartitionProgress {
        let labels = self.partition_labels(partition);
        PartitionProgress {
            consumer_lag: gauge!(names::CONSUMER_LAG, labels.iter()),
            processing_lag: gauge!(names::PROCESSING_LAG, labels.iter()),
            incomplete: gauge!(names::INCOMPLETE_OFFSETS, labels.iter()),
            stalls: counter!(names::STALLS, labels.iter()),
        }
    }

    /// Records how long a shutdown phase took.
    pub(crate) fn shutdown_phase(&self, phase: &'static str, took: Duration) {
        let labels = [
            Label::new("group", self.group.to_string()),
            Label::from_static_parts("phase", phase),
        ];
        gauge!(names::SHUTDOWN_PHASE_DURATION, labels.iter()).set(took.as_secs_f64());
    }

    /// `group` and `topic` first: the per-topic histograms take those two.
    fn partition_labels(&self, partition: &TopicPartition) -> [Label; 3] {
        [
            Label::new("group", self.group.to_string()),
            Label::new("topic", partition.topic().to_owned()),
            Label::new("partition", partition.partition().to_string()),
        ]
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct PartitionInstruments {
    pub(crate) processed: Counter,
    pub(crate) retries: Counter,
    pub(crate) skipped: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) processing_duration: Histogram,
    pub(crate) end_to_end_latency: Histogram,
}

/// Records nothing: for partitions made in unit tests.
impl Default for PartitionInstruments {
    fn default() -> Self {
        PartitionInstruments {
            processed: Counter::noop(),
            retries: Counter::noop(),
            skipped: Counter::noop(),
            dead_lettered: Counter::noop(),
            processing_duration: Histogram::noop(),
            end_to_end_latency: Histogram::noop(),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct PartitionProgress {
    pub(crate) consumer_lag: Gauge,
    pub(crate) processing_lag: Gauge,
    pub(crate) incomplete: Gauge,
    pub(crate) stalls: Counter,
}

impl PartitionProgress {
    /// The partition left this member: what it reports of it is nothing.
    pub(crate) fn clear(&self) {
        self.consumer_lag.set(0.0);
        self.processing_lag.set(0.0);
        self.incomplete.set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_readme_table_lists_every_figure_and_no_other() {
        let listed: BTreeSet<&str> = include_str!("../README.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|line| line.split_once('`'))
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(names::PREFIX))
            .collect();
        let known: BTreeSet<&str> = DESCRIPTIONS.iter().map(|(name, ..)| *name).collect();
        assert_eq!(known.len(), DESCRIPTIONS.len(), "a name is listed twice");
        assert_eq!(listed, known);
    }
}
