//! Unit-testing a processor without a cluster: [`MessageBuilder`] makes messages,
//! [`TestRun`] runs them through the framework's own ordering and failure-policy code in
//! virtual time, and [`Outcome`] says what became of each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};

use crate::actors::processor::{Attempt, Instance};
use crate::batch::{self, Batch, Ended, Filing, Retry};
use crate::control::{Action, Controls, Request, SeekTo, Target};
use crate::dead_letter;
use crate::flow::{AssignedPartition, BatchLimit};
use crate::instruments::GroupInstruments;
use crate::lanes::WorkQueue;
use crate::offsets::AssignmentId;
use crate::work::{Batches, One, Work};
use crate::{
    BatchProcessor, Exhausted, FailurePolicy, Message, OrderingMode, Processor, TopicPartition,
};

/// A message made by hand, for [`TestRun`]. Offsets count up per partition from 0 unless set.
///
/// ```
/// use kafka_actors::testkit::MessageBuilder;
///
/// let message = MessageBuilder::new("orders")
///     .partition(2)
///     .key("customer-7")
///     .payload(r#"{"amount": 12}"#)
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .timestamp(1_700_000_000_000);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a message builder does nothing until it is given to a `TestRun`"]
pub struct MessageBuilder {
    topic: String,
    partition: i32,
    offset: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

impl MessageBuilder {
    /// A message of `topic`, partition 0, with neither key nor payload.
    pub fn new(topic: impl Into<String>) -> Self {
        MessageBuilder {
            topic: topic.into(),
            partition: 0,
            offset: None,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// The partition (default 0).
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// The offset (default: one past the previous message of the partition in the run).
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// The key.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// The payload.
    pub fn payload(mut self, payload: impl AsRef<[u8]>) -> Self {
        self.payload = Some(payload.as_ref().to_vec());
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((key.into(), Some(value.as_ref().to_vec())));
        self
    }

    /// The timestamp, in milliseconds since the Unix epoch.
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }
}

/// What became of a message in a [`TestRun`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// It succeeded: its offset would be committed.
    Processed,
    /// Its attempts were used up and the policy skipped it.
    Skipped,
    /// Its attempts were used up (or it failed permanently) and it went to the dead-letter
    /// topic with these headers: its own, then the provenance
    /// ([`dead_letter_headers`](crate::dead_letter_headers)).
    DeadLettered {
        /// The dead-letter topic.
        topic: String,
        /// Every header of the dead letter, in order.
        headers: Vec<(String, String)>,
    },
    /// It did not finish: the system was asked to stop (on it or on another message) before
    /// it did. It would be delivered again after a restart.
    Unfinished,
}

/// One message's story in a [`TestRun`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageOutcome {
    /// The message's partition.
    pub partition: TopicPartition,
    /// Its offset.
    pub offset: i64,
    /// How many times `process` (or `process_batch`) ran on it.
    pub attempts: u32,
    /// The backoffs the failure policy waited before each retry (in virtual time).
    pub backoffs: Vec<Duration>,
    /// How it ended.
    pub fate: Fate,
}

/// What a [`TestRun`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Every message, in the order they were given.
    pub messages: Vec<MessageOutcome>,
    /// The order `process` ran on messages (a batch: its messages in order), retries
    /// included: `(partition, offset)`.
    pub runs: Vec<(i32, i64)>,
    /// Why the system was asked to stop, if it was: the failure policy's `then_stop` after a
    /// message used up its attempts.
    pub stop_requested: Option<String>,
    /// How often the processor panicked and was replaced with a fresh one.
    pub processor_restarts: u32,
    /// The batches `process_batch` was handed, as `(partition, offset)` lists.
    pub batches: Vec<Vec<(i32, i64)>>,
    /// The controls processors asked for through
    /// [`Message::partition_control`](crate::Message::partition_control), in order: recorded,
    /// not carried out (a run reads no partition).
    pub controls: Vec<(TopicPartition, Control)>,
}

/// The controls asked for in a run.
type Asked = Arc<Mutex<Vec<Request>>>;

/// A control a processor asked for in a [`TestRun`] (see [`crate::PartitionControl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// `pause_for(duration)`, or `pause()` (`None`).
    Pause(Option<Duration>),
    /// `resume()`.
    Resume,
    /// `seek(offset)`.
    Seek(i64),
    /// `seek_to_time(millis)`.
    SeekToTime(i64),
}

impl Control {
    fn of(action: Action) -> Self {
        match action {
            Action::Pause { lasting } => Control::Pause(lasting),
            Action::Resume => Control::Resume,
            Action::Seek(SeekTo::Offset(offset)) => Control::Seek(offset),
            Action::Seek(SeekTo::Time(millis)) => Control::SeekToTime(millis),
        }
    }
}

impl Outcome {
    /// The outcome of the message at `offset` of `partition`.
    ///
    /// # Panics
    ///
    /// If the run had no such message: a test asks for one it gave.
    pub fn of(&self, partition: i32, offset: i64) -> &MessageOutcome {
        self.messages
            .iter()
            .find(|m| m.partition.partition() == partition && m.offset == offset)
            .unwrap_or_else(|| panic!("no message at partition {partition}, offset {offset}"))
    }

    /// The messages that ended as `fate` says, as `(partition, offset)`.
    pub fn with_fate(&self, fate: impl Fn(&Fate) -> bool) -> Vec<(i32, i64)> {
        self.messages
            .iter()
            .filter(|m| fate(&m.fate))
            .map(|m| (m.partition.partition(), m.offset))
            .collect()
    }
}

/// Runs messages through a processor as the framework would, without a cluster: the
/// ordering mode's lanes (a failed message holds back its partition, or its key, and nothing
/// else), the failure policy (retries with its backoffs, then stop, skip or dead letter,
/// [`Permanent`](crate::Permanent) errors, panics that replace the processor), and batches
/// for a [`BatchProcessor`]. Backoffs pass in virtual time: a run takes as long as the
/// processor's own work. One processor gets every message, as when a system has one.
///
/// ```
/// use kafka_actors::testkit::{Fate, MessageBuilder, TestRun};
/// use kafka_actors::{FailurePolicy, Message, Processor};
///
/// struct Parse;
///
/// impl Processor for Parse {
///     async fn process(&mut self, message: &Message) -> anyhow::Result<()> {
///         message.payload_str().unwrap_or_default().parse::<u64>()?;
///         Ok(())
///     }
/// }
///
/// let outcome = TestRun::new()
///     .failure_policy(FailurePolicy::retry(3).then_dead_letter())
///     .process(|| Parse, [
///         MessageBuilder::new("orders").payload("12"),
///         MessageBuilder::new("orders").payload("twelve"),
///     ]);
/// assert_eq!(outcome.of(0, 0).fate, Fate::Processed);
/// let poison = outcome.of(0, 1);
/// assert_eq!(poison.attempts, 3);
/// assert_eq!(poison.backoffs.len(), 2);
/// assert!(matches!(&poison.fate, Fate::DeadLettered { topic, .. } if topic == "orders.dlq"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a test run does nothing until `process` or `process_batches` is called"]
pub struct TestRun {
    ordering: OrderingMode,
    policy: FailurePolicy,
    batch: BatchLimit,
}

impl Default for TestRun {
    fn default() -> Self {
        TestRun::new()
    }
}

impl TestRun {
    /// Per-partition order, the default failure policy, the default batch size (500
    /// messages, 1 MiB of keys and payloads).
    pub fn new() -> Self {
        TestRun {
            ordering: OrderingMode::PerPartition,
            policy: FailurePolicy::default(),
            batch: BatchLimit {
                linger: Duration::ZERO,
                ..crate::config::DEFAULT_BATCH
            },
        }
    }

    /// The ordering mode (see [`ConsumerConfigBuilder::ordering`](crate::ConsumerConfigBuilder::ordering)).
    pub fn ordering(mut self, ordering: OrderingMode) -> Self {
        self.ordering = ordering;
        self
    }

    /// The failure policy (see
    /// [`ConsumerConfigBuilder::failure_policy`](crate::ConsumerConfigBuilder::failure_policy)).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The most messages, and bytes of keys and payloads, a batch holds, for
    /// [`process_batches`](Self::process_batches), as
    /// [`ConsumerConfigBuilder::batch_size`](crate::ConsumerConfigBuilder::batch_size) (default
    /// 500 messages, 1 MiB; a batch always holds its first message).
    pub fn batch_size(mut self, messages: usize, bytes: usize) -> Self {
        self.batch.messages = messages.max(1);
        self.batch.bytes = bytes;
        self
    }

    /// Runs `messages` through processors made by `factory` (a fresh one after a panic), and
    /// blocks until they are done. Inside a runtime (a `#[tokio::test]`) the run gets a thread
    /// and a runtime of its own, since a thread cannot block on a runtime within another: a
    /// processor there must not need the test's runtime (tasks it spawned, I/O made on it),
    /// which is blocked meanwhile. In async tests prefer
    /// [`process_async`](Self::process_async), which runs on the test's own task.
    ///
    /// # Panics
    ///
    /// If the factory or `on_start` fails: the test cannot run.
    pub fn process<P: Processor>(
        &self,
        factory: impl Fn() -> P + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
    ) -> Outcome {
        self.run(move || One(factory()), messages, BatchLimit::ONE)
    }

    /// As [`process`](Self::process), awaited: for `#[tokio::test]` and other async tests.
    /// The processors run on the awaiting task, within a `LocalSet` as on the system's
    /// threads (so `spawn_local` works), and may use what the test's runtime offers.
    ///
    /// ```
    /// use kafka_actors::testkit::{Fate, MessageBuilder, TestRun};
    /// use kafka_actors::{Message, Processor};
    ///
    /// struct Accept;
    ///
    /// impl Processor for Accept {
    ///     async fn process(&mut self, _: &Message) -> anyhow::Result<()> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // In a test: #[tokio::test] async fn accepts_everything() { ... }
    /// let outcome = TestRun::new()
    ///     .process_async(|| Accept, [MessageBuilder::new("orders")])
    ///     .await;
    /// assert_eq!(outcome.of(0, 0).fate, Fate::Processed);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If the factory or `on_start` fails: the test cannot run.
    pub async fn process_async<P: Processor>(
        &self,
        factory: impl Fn() -> P + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
    ) -> Outcome {
        self.run_async(move || One(factory()), messages, BatchLimit::ONE)
            .await
    }

    /// Runs `messages` through batch processors made by `factory`, in batches of one
    /// partition's messages (any partitions', unordered) within
    /// [`batch_size`](Self::batch_size): all that is at hand, since a run does not linger.
    /// Blocks as [`process`](Self::process) does.
    ///
    /// # Panics
    ///
    /// If the factory or `on_start` fails: the test cannot run.
    pub fn process_batches<B: BatchProcessor>(
        &self,
        factory: impl Fn() -> B + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
    ) -> Outcome {
        self.run(move || Batches(factory()), messages, self.batch)
    }

    /// As [`process_batches`](Self::process_batches), awaited (see
    /// [`process_async`](Self::process_async)).
    ///
    /// # Panics
    ///
    /// If the factory or `on_start` fails: the test cannot run.
    pub async fn process_batches_async<B: BatchProcessor>(
        &self,
        factory: impl Fn() -> B + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
    ) -> Outcome {
        self.run_async(move || Batches(factory()), messages, self.batch)
            .await
    }

    /// Awaits the run on the caller's task, within a `LocalSet` as on the system's threads.
    async fn run_async<W: Work>(
        &self,
        factory: impl Fn() -> W + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
        limit: BatchLimit,
    ) -> Outcome {
        let messages = self.make(messages);
        tokio::task::LocalSet::new()
            .run_until(self.drive(Arc::new(factory), messages, limit))
            .await
    }

    /// Blocks on the run. A thread cannot block on a runtime while it runs another's task
    /// (tokio refuses), so inside a runtime the run gets a thread of its own.
    fn run<W: Work>(
        &self,
        factory: impl Fn() -> W + Send + Sync + 'static,
        messages: impl IntoIterator<Item = MessageBuilder>,
        limit: BatchLimit,
    ) -> Outcome {
        let messages = self.make(messages);
        let run = move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, self.drive(Arc::new(factory), messages, limit))
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return run();
        }
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("kafka-actors-testkit".to_owned())
                .spawn_scoped(scope, run)
                .expect("a thread for the test run");
            // A failed assertion inside the processor fails the test that called `process`.
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Makes the messages, each partition under an assignment of its own, with a record of
    /// the controls asked for through them.
    fn make(&self, builders: impl IntoIterator<Item = MessageBuilder>) -> (Vec<Message>, Asked) {
        let asked = Asked::default();
        let controls = Controls::Recorder(asked.clone());
        let instruments = GroupInstruments::new("testkit");
        let mut partitions: BTreeMap<TopicPartition, (Arc<AssignedPartition>, i64)> =
            BTreeMap::new();
        let mut next_assignment = 1;
        let messages = builders
            .into_iter()
            .map(|builder| {
                let partition = TopicPartition::new(builder.topic.as_str(), builder.partition);
                let (assigned, next_offset) =
                    partitions.entry(partition.clone()).or_insert_with(|| {
                        let assignment = AssignmentId(next_assignment);
                        next_assignment += 1;
                        let instruments = instruments.partition(&partition);
                        (
                            AssignedPartition::new(
                                partition,
                                assignment,
                                instruments,
                                controls.clone(),
                            ),
                            0,
                        )
                    });
                let offset = builder.offset.unwrap_or(*next_offset);
                *next_offset = offset + 1;
                let headers = (!builder.headers.is_empty()).then(|| {
                    builder
                        .headers
                        .iter()
                        .fold(OwnedHeaders::new(), |headers, (key, value)| {
                            headers.insert(Header {
                                key,
                                value: value.as_deref(),
                            })
                        })
                });
                Message::made(
                    assigned.clone(),
                    self.ordering,
                    offset,
                    builder.key.as_deref(),
                    builder.payload.as_deref(),
                    headers,
                    builder.timestamp,
                )
            })
            .collect();
        (messages, asked)
    }

    /// The run itself: the processor task's loop, with a virtual clock that jumps to the next
    /// retry when nothing else can run.
    async fn drive<W: Work>(
        &self,
        factory: Arc<dyn Fn() -> W + Send + Sync>,
        (messages, asked): (Vec<Message>, Asked),
        limit: BatchLimit,
    ) -> Outcome {
        let mut outcome = Outcome {
            messages: messages
                .iter()
                .map(|m| MessageOutcome {
                    partition: m.topic_partition().clone(),
                    offset: m.offset(),
                    attempts: 0,
                    backoffs: Vec::new(),
                    fate: Fate::Unfinished,
                })
                .collect(),
            runs: Vec::new(),
            stop_requested: None,
            processor_restarts: 0,
            batches: Vec::new(),
            controls: Vec::new(),
        };
        let index: BTreeMap<(TopicPartition, i64), usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.topic_partition().clone(), m.offset()), i))
            .collect();
        let at = |message: &Message| index[&(message.topic_partition().clone(), message.offset())];
        let mut instance = match Instance::start(&factory).await {
            Ok(instance) => instance,
            Err(error) => panic!("the processor did not start: {error:#}"),
        };
        let mut queue: WorkQueue<Message> = WorkQueue::default();
        queue.push(messages);
        let mut batch = Batch::default();
        let mut now = Instant::now();
        while outcome.stop_requested.is_none() {
            let Some(first) = queue.next(now) else {
                match queue.next_retry_at() {
                    Some(retry_at) => {
                        now = now.max(retry_at);
                        continue;
                    }
                    None => break,
                }
            };
            // The batch as the processor task fills it: all that is at hand, since a run does
            // not linger.
            batch.start(first);
            batch.fill(&mut queue, limit);
            let positions: Vec<(i32, i64)> = batch
                .messages
                .iter()
                .map(|m| (m.partition(), m.offset()))
                .collect();
            outcome.runs.extend(&positions);
            if W::BATCHES {
                outcome.batches.push(positions);
            }
            for message in &batch.messages {
                outcome.messages[at(message)].attempts += 1;
            }
            let attempt = instance.process(&batch.messages).await;
            let ended = match &attempt {
                Attempt::Finished => Ended::Finished,
                Attempt::Failed { error, advice, .. } => Ended::Failed {
                    error,
                    advice: *advice,
                },
                Attempt::Partial(failures) => Ended::Partial(failures),
                Attempt::Broken => Ended::Broken,
            };
            let mut story = Story {
                outcome: &mut outcome,
                policy: &self.policy,
                at: &at,
                dead_letters: Vec::new(),
            };
            // The processor task's own filing: a run never stops nor loses a partition.
            batch::file(
                &mut queue,
                &mut batch,
                ended,
                &self.policy,
                now,
                |_| None,
                &mut story,
            );
            // A dead letter is acknowledged at once.
            for message in std::mem::take(&mut story.dead_letters) {
                queue.finished(&message);
            }
            match attempt {
                Attempt::Failed { panicked: true, .. } => {
                    outcome.processor_restarts += 1;
                    instance = match Instance::start(&factory).await {
                        Ok(instance) => instance,
                        Err(error) => panic!("the processor did not restart: {error:#}"),
                    };
                }
                // Only after a failed restart, which panics above.
                Attempt::Broken => break,
                _ => {}
            }
        }
        let asked = std::mem::take(&mut *asked.lock().unwrap_or_else(|p| p.into_inner()));
        outcome.controls = asked
            .into_iter()
            .filter_map(|request| match request.target {
                Target::Partition(partition, _) => Some((partition, Control::of(request.action))),
                Target::System => None,
            })
            .collect();
        outcome
    }
}

/// A run's filing of outcomes, written down in its [`Outcome`].
struct Story<'a, F> {
    outcome: &'a mut Outcome,
    policy: &'a FailurePolicy,
    /// The index of a message in the outcome.
    at: &'a F,
    /// Dead letters to acknowledge once the filing is done.
    dead_letters: Vec<Message>,
}

impl<F: Fn(&Message) -> usize> Filing<Message> for Story<'_, F> {
    fn processed(&mut self, message: Message) {
        self.outcome.messages[(self.at)(&message)].fate = Fate::Processed;
    }

    fn retrying(&mut self, message: &Message, retry: Retry<'_>) {
        self.outcome.messages[(self.at)(message)]
            .backoffs
            .push(retry.backoff);
    }

    fn not_retried(&mut self, _: &Message, _: u32, _: &str, _: &'static str) {}

    fn skipped(&mut self, message: Message, _: u32, _: &str) {
        self.outcome.messages[(self.at)(&message)].fate = Fate::Skipped;
    }

    fn dead_letter(&mut self, message: Message, attempts: u32, error: &str) {
        let policy_topic = match self.policy.exhausted() {
            Exhausted::DeadLetter { topic } => topic.as_deref(),
            _ => None,
        };
        let mut headers: Vec<(String, String)> = message
            .headers()
            .map(|(key, value)| {
                let value = String::from_utf8_lossy(value.unwrap_or_default());
                (key.to_owned(), value.into_owned())
            })
            .collect();
        let provenance = dead_letter::provenance(&message, error, attempts);
        headers.extend(provenance.into_iter().map(|(k, v)| (k.to_owned(), v)));
        self.outcome.messages[(self.at)(&message)].fate = Fate::DeadLettered {
            topic: dead_letter::topic_of(policy_topic, message.topic()),
            headers,
        };
        self.dead_letters.push(message);
    }

    fn stopping(&mut self, message: &Message, attempts: u32, error: &str) {
        self.outcome.stop_requested.get_or_insert_with(|| {
            format!(
                "processing failed at {}@{}: {error} (after {attempts} attempts)",
                message.topic_partition(),
                message.offset()
            )
        });
    }

    fn released(&mut self, _: Message) {}
}
