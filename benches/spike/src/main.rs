//! A measured spike, kept out of kafka-actors' build: how fast could a fetch path go that
//! reads Kafka's record batches itself, without librdkafka's per-message work (an op and a
//! message object per record, a copy out)? It speaks the wire protocol with the
//! `kafka-protocol` crate (request and response framing), sends Fetch requests for every
//! partition of a topic from offset 0, and walks each partition's record batches in the
//! response buffer.
//!
//! ```text
//! record-batch-spike --brokers 127.0.0.1:9092 --topic T --messages N [--decoder own|crate]
//! ```
//!
//! `--decoder own` (the default) walks the records in place: each one is an offset and a key
//! and a value borrowed from the response buffer, nothing allocated per message. `--decoder
//! crate` uses `kafka-protocol`'s `RecordBatchDecoder`, which builds a `Record` per message
//! (reference-counted key and value, a header map), for comparison.
//!
//! What it leaves out, on purpose (BENCHMARKS.md weighs it): no consumer group (it reads every
//! partition from offset 0, as a new group's only member would) and no commit; one broker
//! (it checks that it leads every partition); no TLS or SASL; no compressed batches (it
//! refuses them); no fetch sessions (every request names every partition); errors end the
//! run. It prints one JSON line like the benchmark's other contenders.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, StrBytes, encode_request_header_into_buffer,
};
use kafka_protocol::records::RecordBatchDecoder;

/// Fetch v12: the last version that names topics rather than topic ids.
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let brokers = value("--brokers").context("--brokers")?;
    let topic = value("--topic").context("--topic")?;
    let target: u64 = value("--messages").context("--messages")?.parse()?;
    let own_decoder = match value("--decoder").as_deref() {
        None | Some("own") => true,
        Some("crate") => false,
        Some(other) => bail!("unknown decoder {other}"),
    };
    let broker = brokers.split(',').next().context("a broker")?;
    let mut connection = Connection {
        socket: TcpStream::connect(broker)?,
        correlation: 0,
    };
    connection.socket.set_nodelay(true)?;

    let partitions = partitions_led_here(&mut connection, &topic)?;
    let mut offsets = vec![0_i64; partitions.len()];
    let (mut count, mut bytes) = (0_u64, 0_u64);
    // Timed from the first request: a response arrives whole before its first record is seen.
    let first = Instant::now();
    while count < target {
        // librdkafka's default sizes: 1 MiB per partition, 50 MiB per response.
        let request = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(
                        partitions
                            .iter()
                            .zip(&offsets)
                            .map(|(partition, offset)| {
                                FetchPartition::default()
                                    .with_partition(*partition)
                                    .with_fetch_offset(*offset)
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    ),
            ]);
        let response: FetchResponse = connection.call(ApiKey::Fetch, FETCH_VERSION, &request)?;
        ensure!(
            response.error_code == 0,
            "fetch error {}",
            response.error_code
        );
        for answer in response.responses.iter().flat_map(|t| &t.partitions) {
            ensure!(
                answer.error_code == 0,
                "partition {}: fetch error {}",
                answer.partition_index,
                answer.error_code
            );
            let Some(records) = &answer.records else {
                continue;
            };
            let index = partitions
                .iter()
                .position(|p| *p == answer.partition_index)
                .context("a partition not asked for")?;
            let mut visit = |offset: i64, _key: Option<&[u8]>, value: Option<&[u8]>| {
                if offset >= offsets[index] {
                    count += 1;
                    bytes += value.map_or(0, <[u8]>::len) as u64;
                    offsets[index] = offset + 1;
                }
            };
            if own_decoder {
                for_each_record(records.clone(), &mut visit)?;
            } else {
                let mut buffer = records.clone();
                while let Some(mut batch) = next_batch(&mut buffer) {
                    for record in RecordBatchDecoder::decode(&mut batch)?.records {
                        visit(
                            record.offset,
                            record.key.as_deref(),
                            record.value.as_deref(),
                        );
                    }
                }
            }
        }
    }
    let last = Instant::now();
    println!(
        "{}",
        serde_json::json!({
            "messages": count,
            "bytes": bytes,
            "seconds": last.duration_since(first).as_secs_f64(),
        })
    );
    Ok(())
}

/// The topic's partitions, after checking that the broker connected to leads them all.
fn partitions_led_here(connection: &mut Connection, topic: &str) -> anyhow::Result<Vec<i32>> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_owned())),
        ))]));
    let metadata: MetadataResponse =
        connection.call(ApiKey::Metadata, METADATA_VERSION, &request)?;
    ensure!(
        metadata.brokers.len() == 1,
        "the spike reads from a cluster of one broker"
    );
    let topic = metadata.topics.first().context("no such topic")?;
    ensure!(topic.error_code == 0, "metadata error {}", topic.error_code);
    Ok(topic.partitions.iter().map(|p| p.partition_index).collect())
}

/// Walks a partition's record batches (magic 2) in place and calls `visit` with each record's
/// offset, key and value, borrowed from `records`: no allocation per record. A fetch response
/// may end with a partial batch (the broker cuts at the byte limit); it is left for the next
/// fetch.
fn for_each_record(
    mut records: Bytes,
    visit: &mut impl FnMut(i64, Option<&[u8]>, Option<&[u8]>),
) -> anyhow::Result<()> {
    // The batch header up to and including the record count (KIP-98's layout).
    const HEADER: usize = 61;
    while let Some(batch) = next_batch(&mut records) {
        let base_offset = i64::from_be_bytes(batch[0..8].try_into()?);
        ensure!(batch.len() >= HEADER, "a batch shorter than its header");
        ensure!(
            batch[16] == 2,
            "message format v{} is not read here",
            batch[16]
        );
        let attributes = i16::from_be_bytes(batch[21..23].try_into()?);
        ensure!(
            attributes & 0x7 == 0,
            "compressed batches are not read here"
        );
        let control = attributes & 0x20 != 0;
        let count = i32::from_be_bytes(batch[57..61].try_into()?);
        let mut cursor = &batch[HEADER..];
        for _ in 0..count {
            let length = varint(&mut cursor)? as usize;
            ensure!(cursor.len() >= length, "a record past its batch");
            let (mut record, rest) = cursor.split_at(length);
            cursor = rest;
            record = &record[1..]; // attributes
            varint(&mut record)?; // timestamp delta
            let offset_delta = varint(&mut record)?;
            let key = bytes_field(&mut record)?;
            let value = bytes_field(&mut record)?;
            // Headers follow; nothing here reads them.
            if !control {
                visit(base_offset + offset_delta, key, value);
            }
        }
    }
    Ok(())
}

/// The next whole record batch of `records`, or `None` at the end or at a partial batch (the
/// broker cuts a response at its byte limit; the rest comes with the next fetch).
fn next_batch(records: &mut Bytes) -> Option<Bytes> {
    let length = i32::from_be_bytes(records.get(8..12)?.try_into().ok()?);
    let end = 12 + usize::try_from(length).ok()?;
    (records.len() >= end).then(|| records.split_to(end))
}

/// A zigzag varint (Kafka's record fields).
fn varint(cursor: &mut &[u8]) -> anyhow::Result<i64> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = cursor.split_first().context("a varint past the end")?;
        *cursor = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    bail!("a varint longer than 10 bytes")
}

/// A length-prefixed byte field; length -1 is null.
fn bytes_field<'a>(cursor: &mut &'a [u8]) -> anyhow::Result<Option<&'a [u8]>> {
    let length = varint(cursor)?;
    if length < 0 {
        return Ok(None);
    }
    let length = length as usize;
    ensure!(cursor.len() >= length, "a field past its record");
    let (field, rest) = cursor.split_at(length);
    *cursor = rest;
    Ok(Some(field))
}

/// One connection, one request at a time.
struct Connection {
    socket: TcpStream,
    correlation: i32,
}

impl Connection {
    fn call<Q: Encodable + HeaderVersion, R: Decodable + HeaderVersion>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Q,
    ) -> anyhow::Result<R> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("record-batch-spike")));
        let mut buffer = BytesMut::new();
        encode_request_header_into_buffer(&mut buffer, &header)?;
        request.encode(&mut buffer, version)?;
        self.socket
            .write_all(&(buffer.len() as i32).to_be_bytes())?;
        self.socket.write_all(&buffer)?;

        let mut size = [0_u8; 4];
        self.socket.read_exact(&mut size)?;
        let mut response = vec![0_u8; i32::from_be_bytes(size) as usize];
        self.socket.read_exact(&mut response)?;
        let mut response = Bytes::from(response);
        let header = kafka_protocol::messages::ResponseHeader::decode(
            &mut response,
            R::header_version(version),
        )?;
        ensure!(
            header.correlation_id == self.correlation,
            "an answer to another request"
        );
        R::decode(&mut response, version)
    }
}
