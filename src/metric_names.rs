//! The names of the figures recorded through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! A system records them into whatever recorder the application installed before
//! [`ConsumerSystem::start`](crate::ConsumerSystem::start) (handles made before a recorder is
//! installed record nothing); with the `http` feature and
//! [`http_addr`](crate::ConsumerConfigBuilder::http_addr), it installs a Prometheus recorder
//! itself and serves it on `/metrics`. Every figure has the label `group`; per-partition
//! figures add `topic` and `partition`, per-topic histograms add `topic`. Durations are in
//! seconds. The README lists them in a table.

/// What every name here starts with.
pub const PREFIX: &str = "kafka_actors_";

/// Counter: messages processed successfully. Labels: group, topic, partition.
pub const MESSAGES_PROCESSED: &str = "kafka_actors_messages_processed_total";
/// Counter: failed attempts followed by a retry. Labels: group, topic, partition.
pub const RETRIES: &str = "kafka_actors_retries_total";
/// Counter: messages skipped after their attempts were used up. Labels: group, topic,
/// partition.
pub const MESSAGES_SKIPPED: &str = "kafka_actors_messages_skipped_total";
/// Counter: messages produced to the dead-letter topic. Labels: group, topic, partition.
pub const MESSAGES_DEAD_LETTERED: &str = "kafka_actors_messages_dead_lettered_total";
/// Histogram, seconds: how long one attempt at a message took in the processor: every failed
/// attempt, and a sample of the successful ones (at most 16 of each batch of up to 256
/// completions a processor reports). Labels: group, topic.
pub const PROCESSING_DURATION: &str = "kafka_actors_processing_duration_seconds";
/// Histogram, seconds: from the message's timestamp to the moment it was done with
/// (processed, skipped or dead-lettered), for the same sample. Labels: group, topic.
pub const END_TO_END_LATENCY: &str = "kafka_actors_end_to_end_latency_seconds";

/// Gauge, messages: the partition's high watermark minus its offset last committed by this
/// member. 0 when the partition is not assigned to it. Updated every second. Labels: group,
/// topic, partition.
pub const CONSUMER_LAG: &str = "kafka_actors_consumer_lag_messages";
/// Gauge, messages: the partition's high watermark minus its processed position (the first
/// message not finished, the next commit's offset). 0 when the partition is not assigned to
/// this member. Updated every second. Labels: group, topic, partition.
pub const PROCESSING_LAG: &str = "kafka_actors_processing_lag_messages";
/// Gauge, messages: finished beyond the processed position, so not committable yet (they are
/// recorded in the commit's metadata and skipped by the next reader). Labels: group, topic,
/// partition.
pub const INCOMPLETE_OFFSETS: &str = "kafka_actors_incomplete_offsets";
/// Counter: times the partition was found not to move for longer than the `stall_timeout`.
/// Labels: group, topic, partition.
pub const STALLS: &str = "kafka_actors_stalls_total";

/// Gauge, messages: fetched and not yet done with. Labels: group.
pub const MESSAGES_IN_FLIGHT: &str = "kafka_actors_messages_in_flight";
/// Gauge, bytes: keys plus payloads of the messages in flight. Labels: group.
pub const BYTES_IN_FLIGHT: &str = "kafka_actors_bytes_in_flight";
/// Gauge, messages: of those in flight, waiting in the fetcher for room in a processor.
/// Labels: group.
pub const MESSAGES_WAITING: &str = "kafka_actors_messages_waiting";
/// Gauge: partitions paused: their in-flight work reached a limit, their next message is past
/// the commit window, a pause was asked for, or the system stops. Labels: group.
pub const PAUSED_PARTITIONS: &str = "kafka_actors_paused_partitions";
/// Gauge: partitions paused on request: by processing code
/// ([`PartitionControl`](crate::PartitionControl)) or by the application
/// ([`RunningSystem::pause`](crate::RunningSystem::pause)). Labels: group.
pub const PAUSED_ON_REQUEST: &str = "kafka_actors_partitions_paused_on_request";
/// Gauge: partitions assigned to this member. Labels: group.
pub const ASSIGNED_PARTITIONS: &str = "kafka_actors_assigned_partitions";
/// Gauge: partitions stalled now. Labels: group.
pub const STALLED_PARTITIONS: &str = "kafka_actors_stalled_partitions";

/// Counter: commits Kafka acknowledged. Labels: group.
pub const COMMITS_SUCCEEDED: &str = "kafka_actors_commits_succeeded_total";
/// Counter: commits that failed (periodic ones are retried at the next interval). Labels:
/// group.
pub const COMMITS_FAILED: &str = "kafka_actors_commits_failed_total";
/// Histogram, seconds: from sending a commit to its answer. Labels: group.
pub const COMMIT_DURATION: &str = "kafka_actors_commit_duration_seconds";
/// Counter: offsets finished beyond a commit point that did not fit in the commit's metadata
/// (the next reader processes them again). 0 by construction (a partition takes nothing past
/// its commit window); anything else is a bug, logged at `warn`. Labels: group.
pub const COMMIT_METADATA_TRUNCATED: &str = "kafka_actors_commit_metadata_truncated_total";

/// Counter: rebalances that assigned partitions to this member. Labels: group.
pub const ASSIGNMENTS: &str = "kafka_actors_assignments_total";
/// Counter: rebalances that revoked partitions from this member (losses included). Labels:
/// group.
pub const REVOCATIONS: &str = "kafka_actors_revocations_total";
/// Counter: revocations that were losses (the session expired or the member was fenced):
/// nothing of them was committed. Labels: group.
pub const LOST_ASSIGNMENTS: &str = "kafka_actors_lost_assignments_total";
/// Counter: times a partition was paused because its in-flight work reached a limit. Labels:
/// group.
pub const PAUSES: &str = "kafka_actors_pauses_total";
/// Counter: seeks carried out, asked for by processing code
/// ([`PartitionControl::seek`](crate::PartitionControl::seek)). Labels: group.
pub const SEEKS: &str = "kafka_actors_seeks_total";
/// Counter: processors replaced with a fresh instance after a panic. Labels: group.
pub const PROCESSOR_RESTARTS: &str = "kafka_actors_processor_restarts_total";
/// Counter: errors librdkafka reported, from the consumer and the dead-letter producer (error
/// events, and errors returned in place of a partition's records). Labels: group, `kind` (the
/// error code's name: `AllBrokersDown`, `BrokerTransportFailure`, ...). While they repeat, the
/// log has a line when they begin and a summary every 30 s; this counts every one.
pub const LIBRDKAFKA_ERRORS: &str = "kafka_actors_librdkafka_errors_total";
/// Gauge, seconds: how long the cluster (`broker="all"`: every broker down) or a broker
/// (`broker="host:port"`) has been unreachable; 0 when it is reachable. librdkafka reconnects by
/// itself meanwhile. Updated every poll round (at least every 100 ms). Labels: group, broker.
pub const UNREACHABLE: &str = "kafka_actors_unreachable_seconds";
/// Gauge, seconds: how long each phase of the last shutdown took. Labels: group, `phase`
/// (`StopFetching`, `Drain`, `StopProcessors`, `Commit`, `Close`).
pub const SHUTDOWN_PHASE_DURATION: &str = "kafka_actors_shutdown_phase_duration_seconds";
