//! The queue the Fetcher reads messages from, a batch per call.
//!
//! rdkafka's `BaseConsumer::poll` returns one message per call, and each call costs more than
//! a message needs (clock reads, an event wrapper, a queue lock): about half of a raw poll
//! loop's own time, in the benchmark's profile. librdkafka's `rd_kafka_consume_batch_queue`
//! takes a batch in one call, but on the consumer's queue it would also take the rebalance
//! events, which it cannot hand to rdkafka's callbacks (it would unassign everything). So
//! every assigned partition's messages are forwarded to a queue of their own, read a batch at
//! a time here, while the consumer's queue keeps the events, polled by `BaseConsumer::poll`.
//!
//! The forwarding is set before librdkafka assigns the partition (in the rebalance callback),
//! so no message of it reaches the consumer's queue; the queue is destroyed before the
//! consumer is.

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

/// A queue of the consumer's that its assigned partitions' messages are forwarded to.
pub(crate) struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: librdkafka queues are thread-safe; the handle is only freed by `Drop`.
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        // SAFETY: the client pointer is valid while the consumer is; the queue is destroyed
        // before the consumer (see the module's documentation).
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        FetchQueue {
            queue: NonNull::new(queue).expect("librdkafka allocates queues or aborts"),
        }
    }

    /// Forwards the partitions' messages to this queue. Called before librdkafka starts
    /// fetching them: librdkafka then leaves the forwarding as it is.
    pub(crate) fn route<C: ClientContext + ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: &TopicPartitionList,
    ) {
        for partition in partitions.elements() {
            let Ok(topic) = std::ffi::CString::new(partition.topic()) else {
                log::error!("topic name {:?} contains a NUL byte", partition.topic());
                continue;
            };
            // SAFETY: a partition queue handle of a live consumer, forwarded and released at
            // once; the forwarding belongs to the partition, not to the handle.
            unsafe {
                let partition_queue = rd::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    partition.partition(),
                );
                if partition_queue.is_null() {
                    log::error!(
                        "no queue for {}/{}: its messages are not read",
                        partition.topic(),
                        partition.partition()
                    );
                    continue;
                }
                rd::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
                rd::rd_kafka_queue_destroy(partition_queue);
            }
        }
    }

    /// Takes up to `max` messages, waiting up to `timeout` for the first. Messages of
    /// partitions paused, revoked or sought since they were fetched are left out.
    pub(crate) fn consume(&self, timeout: Duration, max: usize) -> Vec<FetchedMessage<'_>> {
        let mut batch = self.take(Duration::ZERO, max);
        // librdkafka waits out the whole timeout unless the batch fills: wait for one message
        // alone, then take what came with it.
        if batch.is_empty() && !timeout.is_zero() && max > 0 {
            batch = self.take(timeout, 1);
            if !batch.is_empty() {
                batch.extend(self.take(Duration::ZERO, max - 1));
            }
        }
        batch
    }

    fn take(&self, timeout: Duration, max: usize) -> Vec<FetchedMessage<'_>> {
        let mut pointers: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(max);
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pointers` has room for `max` messages; librdkafka writes `count` of them.
        let count = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                pointers.as_mut_ptr(),
                max,
            )
        };
        let count = usize::try_from(count).unwrap_or(0).min(max);
        // SAFETY: librdkafka initialised the first `count` elements.
        unsafe { pointers.set_len(count) };
        pointers
            .into_iter()
            .filter_map(|message| {
                NonNull::new(message).map(|message| FetchedMessage {
                    message,
                    _queue: PhantomData,
                })
            })
            .collect()
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// A message read from a [`FetchQueue`], freed when dropped. It cannot outlive the queue.
pub(crate) struct FetchedMessage<'q> {
    message: NonNull<rd::rd_kafka_message_t>,
    _queue: PhantomData<&'q FetchQueue>,
}

impl FetchedMessage<'_> {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: valid until `Drop` frees it.
        unsafe { self.message.as_ref() }
    }

    /// The error librdkafka reports in place of a message (a partition it cannot fetch).
    pub(crate) fn error(&self) -> Option<String> {
        let error = self.raw().err;
        (error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| RDKafkaErrorCode::from(error).to_string())
    }

    pub(crate) fn topic(&self) -> &str {
        // SAFETY: the topic handle lives as long as the message; its name is NUL-terminated.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.raw().rkt)) };
        name.to_str().unwrap_or("")
    }

    pub(crate) fn partition(&self) -> i32 {
        self.raw().partition
    }

    pub(crate) fn offset(&self) -> i64 {
        self.raw().offset
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: librdkafka's key pointer and length, valid as long as the message.
        unsafe { bytes_at(raw.key, raw.key_len) }
    }

    pub(crate) fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: as for the key.
        unsafe { bytes_at(raw.payload, raw.len) }
    }

    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    pub(crate) fn timestamp(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a valid message and an out-parameter.
        let timestamp = unsafe { rd::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        (timestamp != -1 && kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
            .then_some(timestamp)
    }

    /// A copy of the record's headers, if it has any.
    pub(crate) fn headers(&self) -> Option<OwnedHeaders> {
        let mut headers = std::ptr::null_mut();
        // SAFETY: the headers stay owned by the message; they are copied out below.
        let found = unsafe { rd::rd_kafka_message_headers(self.message.as_ptr(), &mut headers) };
        if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        let mut owned = OwnedHeaders::new();
        for index in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: reads the header at `index` of a valid header list, if there is one.
            let read = unsafe {
                rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
            };
            if read != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: names are NUL-terminated; values are `size` bytes or null.
            let (key, value) = unsafe { (CStr::from_ptr(name), bytes_at(value, size)) };
            owned = owned.insert(Header {
                key: &key.to_string_lossy(),
                value,
            });
        }
        Some(owned)
    }
}

impl Drop for FetchedMessage<'_> {
    fn drop(&mut self) {
        // SAFETY: returned by `rd_kafka_consume_batch_queue`, freed once.
        unsafe { rd::rd_kafka_message_destroy(self.message.as_ptr()) }
    }
}

/// # Safety
/// `pointer` is null or points to `length` readable bytes that outlive `'a`.
unsafe fn bytes_at<'a>(pointer: *const c_void, length: usize) -> Option<&'a [u8]> {
    if pointer.is_null() {
        None
    } else {
        // SAFETY: the caller's promise.
        Some(unsafe { std::slice::from_raw_parts(pointer.cast::<u8>(), length) })
    }
}
