//! The message handed to a [`Processor`](crate::Processor).

use rdkafka::message::{BorrowedMessage, Headers, Message as _, OwnedHeaders};

use crate::offsets::{Epoch, Position, TopicPartition};

/// One Kafka record, owned, as fetched from its partition.
#[derive(Debug)]
pub struct Message {
    position: Position,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

impl Message {
    pub(crate) fn from_kafka(
        message: &BorrowedMessage<'_>,
        partition: TopicPartition,
        epoch: Epoch,
    ) -> Self {
        Message {
            position: Position {
                partition,
                epoch,
                offset: message.offset(),
            },
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message.headers().map(|headers| headers.detach()),
            timestamp: message.timestamp().to_millis(),
        }
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        self.position.partition.topic()
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.position.partition.partition()
    }

    /// The message's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.position.offset
    }

    /// The message key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The message payload, if it has one (a tombstone has none).
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
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

    pub(crate) fn position(&self) -> &Position {
        &self.position
    }
}
