//! librdkafka's C API where rdkafka lacks what the Fetcher needs; the crate's only FFI.
//!
//! - [`FetchQueue`]: the queue the Fetcher reads messages from, a batch per call.
//! - [`QueueWakeup`]: wakes the Fetcher when a librdkafka queue it reads stops being empty,
//!   so that it waits on one [`Notify`] for messages, events and room in the processors.
//! - [`CommitQueue`]: commits whose results arrive on a queue of their own, so that a
//!   periodic commit never blocks the Fetcher's thread and a synchronous one is bounded (the
//!   order they go in is `commits`' business).
//!
//! # The fetch queue
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
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Notify;

use crate::message::Record;
use crate::offsets::TopicPartition;

/// The partition's high watermark as librdkafka last heard of it in a fetch response: no
/// request, so it is as fresh as the fetching. `None` before the first fetch.
pub(crate) fn high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partition: &TopicPartition,
) -> Option<i64> {
    let topic = std::ffi::CString::new(partition.topic()).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: a live client, a NUL-terminated topic name, and two offsets to write to.
    let error = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition.partition(),
            &mut low,
            &mut high,
        )
    };
    (error == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// A queue handle of the consumer's, destroyed when dropped. Every handle here is dropped
/// before the consumer is (the Fetcher drops them before it closes the consumer).
struct QueueHandle(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka queues are thread-safe; the handle is only freed by `Drop`.
unsafe impl Send for QueueHandle {}
unsafe impl Sync for QueueHandle {}

impl QueueHandle {
    /// # Safety
    /// `queue` is a queue handle the caller owns, or null.
    unsafe fn new(queue: *mut rd::rd_kafka_queue_t) -> Option<Self> {
        NonNull::new(queue).map(QueueHandle)
    }

    fn ptr(&self) -> *mut rd::rd_kafka_queue_t {
        self.0.as_ptr()
    }

    fn len(&self) -> usize {
        // SAFETY: a live queue handle.
        unsafe { rd::rd_kafka_queue_length(self.ptr()) }
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // SAFETY: created by librdkafka for us, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.ptr()) }
    }
}

/// Notifies a [`Notify`] whenever a librdkafka queue goes from empty to not empty. The
/// callback runs on librdkafka's threads with the queue locked: it only notifies.
pub(crate) struct QueueWakeup {
    queue: QueueHandle,
    /// Kept alive while the callback may run: its address is the callback's opaque.
    notify: Arc<Notify>,
}

unsafe extern "C" fn notify_nonempty(_: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` a `QueueWakeup` keeps alive until it disables this
    // callback.
    let notify = unsafe { &*(opaque as *const Notify) };
    notify.notify_one();
}

impl QueueWakeup {
    fn enable(queue: QueueHandle, notify: Arc<Notify>) -> Self {
        // SAFETY: the opaque outlives the callback: `Drop` disables it first.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                queue.ptr(),
                Some(notify_nonempty),
                Arc::as_ptr(&notify) as *mut c_void,
            );
        }
        QueueWakeup { queue, notify }
    }

    /// Wakes `notify` whenever the consumer's own queue (rebalances, errors) has an event.
    pub(crate) fn consumer_events<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        notify: Arc<Notify>,
    ) -> Option<Self> {
        // SAFETY: a new handle on the consumer's queue, owned by the returned value.
        let queue = unsafe {
            QueueHandle::new(rd::rd_kafka_queue_get_consumer(
                consumer.client().native_ptr(),
            ))
        }?;
        Some(QueueWakeup::enable(queue, notify))
    }

    /// How many events wait in the queue.
    pub(crate) fn waiting(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for QueueWakeup {
    fn drop(&mut self) {
        // SAFETY: disables the callback before `notify` may go away.
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.queue.ptr(), None, std::ptr::null_mut()) }
        let _ = &self.notify;
    }
}

/// A queue of the consumer's that its assigned partitions' messages are forwarded to; it
/// wakes the Fetcher when messages arrive.
pub(crate) struct FetchQueue {
    wakeup: QueueWakeup,
}

impl FetchQueue {
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, notify: Arc<Notify>) -> Self {
        // SAFETY: the client pointer is valid while the consumer is; the queue is destroyed
        // before the consumer (see the module's documentation).
        let queue =
            unsafe { QueueHandle::new(rd::rd_kafka_queue_new(consumer.client().native_ptr())) };
        let Some(queue) = queue else {
            // librdkafka allocates queues or aborts the process.
            unreachable!("rd_kafka_queue_new returned null");
        };
        FetchQueue {
            wakeup: QueueWakeup::enable(queue, notify),
        }
    }

    fn ptr(&self) -> *mut rd::rd_kafka_queue_t {
        self.wakeup.queue.ptr()
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
                rd::rd_kafka_queue_forward(partition_queue, self.ptr());
                rd::rd_kafka_queue_destroy(partition_queue);
            }
        }
    }

    /// Takes up to `max` messages without waiting. Messages of partitions paused, revoked or
    /// sought since they were fetched are left out.
    pub(crate) fn take(&self, max: usize) -> Vec<FetchedMessage<'_>> {
        let mut pointers: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(max);
        let timeout_ms = 0;
        // SAFETY: `pointers` has room for `max` messages; librdkafka writes `count` of them.
        let count = unsafe {
            rd::rd_kafka_consume_batch_queue(self.ptr(), timeout_ms, pointers.as_mut_ptr(), max)
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

/// Commits sent without waiting: each one's result arrives on this queue, tagged with the id
/// it was sent with, and wakes the Fetcher. A periodic commit then never blocks the Fetcher's
/// thread, even while the group coordinator cannot be reached.
pub(crate) struct CommitQueue {
    wakeup: QueueWakeup,
}

impl CommitQueue {
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, notify: Arc<Notify>) -> Self {
        // SAFETY: as for the fetch queue.
        let queue =
            unsafe { QueueHandle::new(rd::rd_kafka_queue_new(consumer.client().native_ptr())) };
        let Some(queue) = queue else {
            unreachable!("rd_kafka_queue_new returned null");
        };
        CommitQueue {
            wakeup: QueueWakeup::enable(queue, notify),
        }
    }

    /// Sends a commit of `offsets`; its result comes back from [`results`](Self::results)
    /// with `id`.
    pub(crate) fn send<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
        id: u64,
    ) -> Result<(), CommitFailure> {
        // SAFETY: a live consumer, list and queue; the id travels as the commit's opaque and
        // is never dereferenced.
        let error = unsafe {
            rd::rd_kafka_commit_queue(
                consumer.client().native_ptr(),
                offsets.ptr(),
                self.wakeup.queue.ptr(),
                None,
                id as usize as *mut c_void,
            )
        };
        check(error)
    }

    /// The results that arrived, each with its commit's id.
    pub(crate) fn results(&self) -> Vec<(u64, Result<(), CommitFailure>)> {
        std::iter::from_fn(|| self.next_result(Duration::ZERO)).collect()
    }

    /// The next result, with its commit's id, waiting at most `timeout` for it.
    pub(crate) fn next_result(
        &self,
        timeout: Duration,
    ) -> Option<(u64, Result<(), CommitFailure>)> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a live queue; the event is destroyed by `commit_result`.
        let event = unsafe { rd::rd_kafka_queue_poll(self.wakeup.queue.ptr(), timeout_ms) };
        let event = NonNull::new(event)?;
        // SAFETY: a live event.
        let id = unsafe { rd::rd_kafka_event_opaque(event.as_ptr()) } as usize as u64;
        Some((id, commit_result(event)))
    }
}

/// Why a commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// The group is rebalancing (or this member's generation, or epoch under the consumer
    /// protocol, is behind the group's, which a rebalance in progress also causes): the commit
    /// may succeed once the rebalance is over.
    Rebalancing,
    /// The coordinator no longer knows this member (its session expired) or fenced its
    /// epoch: its partitions are lost, and nothing of them can be committed by it any more.
    /// librdkafka reports the loss to the rebalance callback, which fences them.
    Fenced,
    /// No answer came within the time given: the commit may still land (it is answered
    /// before the next one is sent).
    Unanswered(Duration),
    Other(String),
}

impl std::fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitFailure::Rebalancing => f.write_str("the group is rebalancing"),
            CommitFailure::Fenced => f.write_str(
                "this member was fenced from the group (its session expired or its epoch is \
                 stale): its partitions are lost, their next owner repeats what finished since \
                 the last commit",
            ),
            CommitFailure::Unanswered(timeout) => {
                write!(f, "no answer from the group coordinator within {timeout:?}")
            }
            CommitFailure::Other(error) => f.write_str(error),
        }
    }
}

impl From<String> for CommitFailure {
    fn from(error: String) -> Self {
        CommitFailure::Other(error)
    }
}

fn check(error: rd::rd_kafka_resp_err_t) -> Result<(), CommitFailure> {
    match error {
        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS
        | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION
        | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_STALE_MEMBER_EPOCH => {
            Err(CommitFailure::Rebalancing)
        }
        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID
        | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_MEMBER_EPOCH
        | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID => {
            Err(CommitFailure::Fenced)
        }
        other => Err(CommitFailure::Other(
            RDKafkaErrorCode::from(other).to_string(),
        )),
    }
}

/// The outcome of an offset-commit event: its error, or the first partition's error. Destroys
/// the event.
fn commit_result(event: NonNull<rd::rd_kafka_event_t>) -> Result<(), CommitFailure> {
    // SAFETY: a live event, destroyed once at the end; the list belongs to the event.
    unsafe {
        let event = event.as_ptr();
        let mut result = check(rd::rd_kafka_event_error(event));
        let list = rd::rd_kafka_event_topic_partition_list(event);
        if result.is_ok() && !list.is_null() {
            let count = usize::try_from((*list).cnt).unwrap_or(0);
            for index in 0..count {
                let element = &*(*list).elems.add(index);
                match check(element.err) {
                    Ok(()) => {}
                    Err(CommitFailure::Other(error)) => {
                        let topic = CStr::from_ptr(element.topic).to_string_lossy();
                        result = Err(CommitFailure::Other(format!(
                            "{topic}/{}: {error}",
                            element.partition
                        )));
                        break;
                    }
                    Err(failure) => {
                        result = Err(failure);
                        break;
                    }
                }
            }
        }
        rd::rd_kafka_event_destroy(event);
        result
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
}

impl Record for FetchedMessage<'_> {
    fn error(&self) -> Option<RDKafkaErrorCode> {
        let error = self.raw().err;
        (error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| RDKafkaErrorCode::from(error))
    }

    fn topic_id(&self) -> usize {
        self.raw().rkt as usize
    }

    fn topic(&self) -> &str {
        // SAFETY: the topic handle lives as long as the message; its name is NUL-terminated.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.raw().rkt)) };
        name.to_str().unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: librdkafka's key pointer and length, valid as long as the message.
        unsafe { bytes_at(raw.key, raw.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: as for the key.
        unsafe { bytes_at(raw.payload, raw.len) }
    }

    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    fn timestamp(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a valid message and an out-parameter.
        let timestamp = unsafe { rd::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        (timestamp != -1 && kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
            .then_some(timestamp)
    }

    /// A copy of the record's headers, if it has any.
    fn headers(&self) -> Option<OwnedHeaders> {
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

/// Sets where librdkafka starts reading `partition` when `list` is assigned: `offset` in place
/// of the group's committed offset. Called in the rebalance callback, before the assignment.
/// Returns whether `list` holds the partition.
pub(crate) fn start_at(list: &TopicPartitionList, partition: &TopicPartition, offset: i64) -> bool {
    let Ok(topic) = std::ffi::CString::new(partition.topic()) else {
        return false;
    };
    // SAFETY: `list` is a live list borrowed for the call; `find` returns an element of it or
    // null, and the element's offset is a plain field librdkafka reads when it assigns.
    unsafe {
        let element = rd::rd_kafka_topic_partition_list_find(
            list.ptr(),
            topic.as_ptr(),
            partition.partition(),
        );
        match element.as_mut() {
            Some(element) => {
                element.offset = offset;
                true
            }
            None => false,
        }
    }
}
