//! The message handed to a [`Processor`](crate::Processor).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rdkafka::message::{Headers, OwnedHeaders};

use crate::fetch_queue::FetchedMessage;
use crate::flow::AssignedPartition;
use crate::offsets::{Position, TopicPartition};
use crate::routing::{Lane, OrderingMode};

/// One Kafka record, owned, as fetched from its partition.
#[derive(Debug)]
pub struct Message {
    /// The partition and the assignment it was fetched under.
    assigned: Arc<AssignedPartition>,
    offset: i64,
    /// The key's bytes followed by the payload's, a slice of a buffer the messages of one
    /// batch share.
    bytes: Bytes,
    key_len: Option<usize>,
    payload_len: Option<usize>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

impl Message {
    /// The bytes a message needs in its batch's buffer: its key followed by its payload.
    pub(crate) fn buffer_len(message: &FetchedMessage<'_>) -> usize {
        message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)
    }

    /// Appends the message's key and payload to its batch's buffer.
    pub(crate) fn copy_into(message: &FetchedMessage<'_>, buffer: &mut BytesMut) {
        buffer.extend_from_slice(message.key().unwrap_or_default());
        buffer.extend_from_slice(message.payload().unwrap_or_default());
    }

    /// Builds the message around `bytes`, the slice [`copy_into`](Self::copy_into) wrote.
    pub(crate) fn from_kafka(
        message: &FetchedMessage<'_>,
        assigned: Arc<AssignedPartition>,
        bytes: Bytes,
    ) -> Self {
        Message {
            assigned,
            offset: message.offset(),
            bytes,
            key_len: message.key().map(<[u8]>::len),
            payload_len: message.payload().map(<[u8]>::len),
            headers: message.headers(),
            timestamp: message.timestamp(),
        }
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        self.assigned.partition.topic()
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.assigned.partition.partition()
    }

    /// The message's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The message key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|length| &self.bytes[..length])
    }

    /// The message payload, if it has one (a tombstone has none).
    pub fn payload(&self) -> Option<&[u8]> {
        let start = self.key_len.unwrap_or(0);
        self.payload_len
            .map(|length| &self.bytes[start..start + length])
    }

    /// The payload as UTF-8 text, if it is present and valid UTF-8.
    pub fn payload_str(&self) -> Option<&str> {
        self.payload()
            .and_then(|payload| std::str::from_utf8(payload).ok())
    }

    /// The record's headers in the order they were written, as `(name, value)` pairs.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .flat_map(|headers| headers.iter())
            .map(|header| (header.key, header.value))
    }

    /// The record's timestamp in milliseconds since the Unix epoch (creation or log-append time,
    /// as the topic is configured), if the record has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    pub(crate) fn position(&self) -> Position {
        Position {
            assignment: self.assigned.assignment,
            offset: self.offset,
        }
    }

    pub(crate) fn topic_partition(&self) -> &TopicPartition {
        &self.assigned.partition
    }

    pub(crate) fn assigned(&self) -> &Arc<AssignedPartition> {
        &self.assigned
    }

    /// The lane the message belongs to under `ordering`.
    pub(crate) fn lane(&self, ordering: OrderingMode) -> Lane {
        let assignment = self.assigned.assignment;
        match (ordering, self.key_len) {
            (OrderingMode::PerKey, Some(length)) => {
                Lane::Key(assignment, self.bytes.slice(..length))
            }
            (OrderingMode::PerPartition | OrderingMode::PerKey, _) => Lane::Partition(assignment),
            (OrderingMode::Unordered, _) => Lane::Message(assignment, self.offset),
        }
    }

    /// The bytes the message counts for in flight: its key and payload.
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.bytes.len()
    }
}
