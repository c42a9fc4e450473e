//! The message handed to a [`Processor`](crate::Processor).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rdkafka::message::{Headers, OwnedHeaders};

use crate::control::PartitionControl;
use crate::flow::{AssignedPartition, FlowSettings, Load};
use crate::offsets::{AssignmentId, Position, TopicPartition};
use crate::routing::{Lane, OrderingMode};

/// A record as librdkafka hands it over, before the Fetcher copies it into a [`Message`].
pub(crate) trait Record {
    fn topic(&self) -> &str;
    /// An identity of the record's topic that is cheaper to compare than its name (librdkafka's
    /// topic handle, which lives as long as the topic's partitions are assigned), or 0 when
    /// there is none: the record is then routed by its topic's name.
    fn topic_id(&self) -> usize {
        0
    }
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    fn headers(&self) -> Option<OwnedHeaders>;
    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    fn timestamp(&self) -> Option<i64>;
    /// The error librdkafka reports in place of a record (a partition it cannot fetch or
    /// read).
    fn error(&self) -> Option<rdkafka::error::RDKafkaErrorCode>;
}

/// One Kafka record, owned, as fetched from its partition.
///
/// The framework owns every message: a [`Processor`](crate::Processor) borrows it for one call.
#[derive(Debug)]
pub struct Message {
    /// The partition and the assignment it was fetched under; the message counts in its
    /// in-flight work until it is dropped.
    assigned: Arc<AssignedPartition>,
    /// Which messages must be processed in order with this one.
    ordering: OrderingMode,
    offset: i64,
    /// The key's bytes followed by the payload's, a slice of a buffer the messages of one
    /// batch share.
    bytes: Bytes,
    key_len: Option<usize>,
    payload_len: Option<usize>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
    /// It was in a batch that failed as a whole: it runs alone from now on, so that the one
    /// that failed the batch is found without failing the others again.
    suspect: bool,
    /// It still counts in its partition's in-flight work: until it is dropped, or released
    /// with others in one update ([`release_in_flight`](Self::release_in_flight)).
    counted: bool,
}

impl Message {
    /// The bytes a message needs in its batch's buffer: its key followed by its payload.
    pub(crate) fn buffer_len(message: &impl Record) -> usize {
        message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)
    }

    /// Appends the message's key and payload to its batch's buffer.
    pub(crate) fn copy_into(message: &impl Record, buffer: &mut BytesMut) {
        buffer.extend_from_slice(message.key().unwrap_or_default());
        buffer.extend_from_slice(message.payload().unwrap_or_default());
    }

    /// Builds the message around `bytes`, the slice [`copy_into`](Self::copy_into) wrote. The
    /// caller has already counted it in `assigned`'s in-flight work: the message releases
    /// itself when dropped.
    pub(crate) fn from_kafka(
        message: &impl Record,
        assigned: Arc<AssignedPartition>,
        flow: FlowSettings,
        bytes: Bytes,
    ) -> Self {
        Message {
            assigned,
            ordering: flow.ordering,
            offset: message.offset(),
            bytes,
            key_len: message.key().map(<[u8]>::len),
            payload_len: message.payload().map(<[u8]>::len),
            headers: if flow.read_headers {
                message.headers()
            } else {
                None
            },
            timestamp: message.timestamp(),
            suspect: false,
            counted: true,
        }
    }

    /// A message made by hand (the testkit's `MessageBuilder`), as if fetched under
    /// `assigned`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn made(
        assigned: Arc<AssignedPartition>,
        ordering: OrderingMode,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        timestamp: Option<i64>,
    ) -> Self {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(key.unwrap_or_default());
        bytes.extend_from_slice(payload.unwrap_or_default());
        // Counted in flight as the Fetcher counts what it takes: the message releases itself.
        assigned.in_flight.add(Load {
            messages: 1,
            bytes: bytes.len(),
        });
        Message {
            assigned,
            ordering,
            offset,
            bytes: bytes.freeze(),
            key_len: key.map(<[u8]>::len),
            payload_len: payload.map(<[u8]>::len),
            headers,
            timestamp,
            suspect: false,
            counted: true,
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

    /// Whether it was in a batch that failed as a whole: then it runs alone.
    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect
    }

    /// Marks it as in a batch that failed as a whole.
    pub(crate) fn suspect(&mut self) {
        self.suspect = true;
    }

    /// The bytes of its key and payload: what counts in a batch's size.
    pub(crate) fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Which messages may share a batch with this one: those of the same partition under the
    /// same assignment in ordered modes (`Some`), any (`None`) in unordered mode.
    pub(crate) fn batch_key(&self) -> Option<AssignmentId> {
        match self.ordering {
            OrderingMode::Unordered => None,
            _ => Some(self.assigned.assignment),
        }
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

    /// Controls over this message's partition, under the assignment the message came from:
    /// pause it, resume it, seek it (see [`PartitionControl`]).
    pub fn partition_control(&self) -> PartitionControl {
        PartitionControl::new(self.assigned().clone())
    }

    pub(crate) fn assigned(&self) -> &Arc<AssignedPartition> {
        &self.assigned
    }

    /// The lane the message belongs to under its ordering mode.
    pub(crate) fn lane(&self) -> Lane {
        let assignment = self.assigned.assignment;
        match (self.ordering, self.key_len) {
            (OrderingMode::PerKey, Some(length)) => {
                Lane::Key(assignment, self.bytes.slice(..length))
            }
            (OrderingMode::PerPartition | OrderingMode::PerKey, _) => Lane::Partition(assignment),
            (OrderingMode::Unordered, _) => Lane::Message(assignment, self.offset),
        }
    }
}

impl crate::lanes::Laned for Message {
    type Lane = Lane;

    fn lane(&self) -> Lane {
        Message::lane(self)
    }
}

impl crate::batch::Batchable for Message {
    type BatchKey = AssignmentId;

    fn batch_key(&self) -> Option<AssignmentId> {
        Message::batch_key(self)
    }

    fn size(&self) -> usize {
        Message::size(self)
    }

    fn is_suspect(&self) -> bool {
        Message::is_suspect(self)
    }

    fn suspect(&mut self) {
        Message::suspect(self)
    }
}

impl Message {
    /// Releases the in-flight counts of `messages`, which are about to be dropped, in one
    /// update per run of messages of one partition rather than two atomic updates per message
    /// (on a line the Fetcher's thread writes too).
    pub(crate) fn release_in_flight<'a>(messages: impl IntoIterator<Item = &'a mut Message>) {
        let mut run: Option<(Arc<AssignedPartition>, Load)> = None;
        for message in messages {
            if !std::mem::take(&mut message.counted) {
                continue;
            }
            let bytes = message.bytes.len();
            match &mut run {
                Some((assigned, load)) if Arc::ptr_eq(assigned, &message.assigned) => {
                    load.add(bytes);
                }
                _ => {
                    if let Some((assigned, load)) = run.take() {
                        assigned.in_flight.release(load);
                    }
                    let mut load = Load::default();
                    load.add(bytes);
                    run = Some((message.assigned.clone(), load));
                }
            }
        }
        if let Some((assigned, load)) = run {
            assigned.in_flight.release(load);
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if self.counted {
            self.assigned.in_flight.release(Load {
                messages: 1,
                bytes: self.bytes.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instruments::GroupInstruments;

    fn assigned(partition: i32) -> Arc<AssignedPartition> {
        let partition = TopicPartition::new("t", partition);
        AssignedPartition::new(
            partition.clone(),
            AssignmentId(partition.partition() as u64),
            GroupInstruments::new("message-test").partition(&partition),
            Default::default(),
        )
    }

    fn message(assigned: &Arc<AssignedPartition>, payload: &[u8]) -> Message {
        let ordering = OrderingMode::PerPartition;
        Message::made(
            assigned.clone(),
            ordering,
            0,
            None,
            Some(payload),
            None,
            None,
        )
    }

    #[test]
    fn messages_released_in_bulk_leave_the_in_flight_counts_once() {
        let (a, b) = (assigned(0), assigned(1));
        let mut messages = vec![
            message(&a, b"one"),
            message(&a, b"two!"),
            message(&b, b"x"),
            message(&a, b"three"),
        ];
        let kept = message(&b, b"kept");
        assert_eq!(
            a.in_flight.load(),
            Load {
                messages: 3,
                bytes: 12
            }
        );
        Message::release_in_flight(&mut messages);
        assert_eq!(a.in_flight.load(), Load::default());
        assert_eq!(
            b.in_flight.load(),
            Load {
                messages: 1,
                bytes: 4
            }
        );
        // Released already: their drops release nothing more.
        drop(messages);
        assert_eq!(a.in_flight.load(), Load::default());
        assert_eq!(
            b.in_flight.load(),
            Load {
                messages: 1,
                bytes: 4
            }
        );
        drop(kept);
        assert_eq!(b.in_flight.load(), Load::default());
    }
}
