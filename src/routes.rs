//! What this member holds: each assigned partition with its processor, its pause state and
//! its *backlog*, the messages taken from librdkafka and not handed to a processor yet.
//!
//! Pure code over records and messages: the Fetcher owns a `Routes` (inside its consumer
//! context, so that the rebalance callbacks change it too) and carries out what it decides on
//! the consumer (pause, resume, seek). Three rules live here:
//!
//! - **A partition's messages are handed out in offset order, looking at most
//!   [`LOOK_AHEAD`] messages past the first one waiting.** Each partition's backlog is a
//!   queue handed out from its head, to the processor its ordering mode names (any processor
//!   with room, when unordered). Per key, when the head's processor has no room, messages
//!   behind it whose processors have room go out (a busy key must not hold up the others),
//!   but no further than the look-ahead. So a stop or a revocation that drops the backlogs
//!   leaves at most that many offsets finished beyond the first one dropped, which the
//!   commit's metadata records (`offsets::encode_finished`); the next reader processes only
//!   what was dropped.
//! - **Processors are handed only what their credit allows**; the rest waits here, counted in
//!   flight, until a processor has room.
//! - **In-flight work never passes a limit by more than one message's bytes**: a partition is
//!   paused the moment its count reaches its limit, every partition when the system's does,
//!   and resumed at half; the resume starts at the first message not taken.
//! - **No message is taken [`COMMIT_WINDOW`] or more past its partition's commit point**, so
//!   whatever finished beyond a commit point fits in the commit's metadata, and a message
//!   stuck for good holds back a bounded window, not the memory of everything behind it.
//! - **Nothing past an unreadable record is taken**: its partition is held, unread, while the
//!   system stops; the commit point stays at the bad record.
//!
//! A partition is paused for flow control (limits, the window), resumed by
//! [`resumable`](Routes::resumable) when it drained; *on request* (processing code's
//! `PartitionControl`, or the application pausing the whole system), when nothing of it is
//! taken nor handed out until the request ends; or *held* (the system stops, an
//! `on_assigned` hook failed, a record could not be read), never resumed.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rdkafka::error::RDKafkaErrorCode;

use crate::flow::{AssignedPartition, FlowSettings, InFlightLimit, Load};
use crate::message::{Message, Record};
use crate::offsets::{AssignmentId, COMMIT_WINDOW, Position, TopicPartition};
use crate::routing::{OrderingMode, Router};
use crate::stall::Sighting;
use crate::trouble::Trouble;

/// How many messages past the first one waiting (per key) the Fetcher looks for messages
/// whose processor has room. Bounded so that what a stop leaves finished beyond its commit
/// point fits in the commit's metadata: at most half as many ranges as this, each a few
/// characters, against Kafka's 4,096-byte limit.
pub(crate) const LOOK_AHEAD: usize = 512;

/// A message waiting in a backlog, with the processor that must take it (`None`: any).
struct Waiting {
    message: Message,
    processor: Option<usize>,
}

/// What becomes of a waiting message in a hand-out.
enum Handing {
    /// To this processor.
    To(usize),
    /// It waits; look at the next one.
    Skip,
    /// It waits, and so does everything behind it.
    Stop,
}

/// A partition's waiting messages in offset order. A message handed out from behind the head
/// leaves a hole, gone once the messages before it are handed out too.
#[derive(Default)]
struct Backlog {
    slots: VecDeque<Option<Waiting>>,
    waiting: usize,
}

impl Backlog {
    fn push(&mut self, waiting: Waiting) {
        self.slots.push_back(Some(waiting));
        self.waiting += 1;
    }

    fn len(&self) -> usize {
        self.waiting
    }

    fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.slots.iter().flatten()
    }

    fn drain(&mut self) -> impl Iterator<Item = Waiting> + '_ {
        self.waiting = 0;
        self.slots.drain(..).flatten()
    }

    /// Hands out, in offset order among the first `look_ahead` slots, what `decide` sends to
    /// a processor, into `batches`.
    fn hand_out(
        &mut self,
        look_ahead: usize,
        batches: &mut [Vec<Message>],
        mut decide: impl FnMut(&Waiting) -> Handing,
    ) {
        for index in 0..self.slots.len().min(look_ahead) {
            let Some(waiting) = &self.slots[index] else {
                continue;
            };
            match decide(waiting) {
                Handing::To(processor) => {
                    if let Some(waiting) = self.slots[index].take() {
                        batches[processor].push(waiting.message);
                        self.waiting -= 1;
                    }
                }
                Handing::Skip => {}
                Handing::Stop => break,
            }
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
        }
    }
}

/// Why a partition is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// Its in-flight work (or the system's) reached a limit: resumed once it drained to half.
    Limit,
    /// Its next message would be past the commit window: resumed once its commit point moved
    /// up to half the window behind it.
    Window,
    /// Asked for (the route's `requested`, or the whole system's): nothing is taken nor
    /// handed out until the request ends. Replaces a flow-control pause, which the next
    /// round's take sets again if it still applies.
    Requested,
    /// The system stops, an `on_assigned` hook failed (where to read from is unknown), or a
    /// record could not be read: never resumed.
    Held,
}

/// One assigned partition.
struct Route {
    assigned: Arc<AssignedPartition>,
    /// Its topic's [`Record::topic_id`], learnt from the first record matched by name (0
    /// until then): librdkafka's topic handle outlives the assignment, so it cannot name
    /// another topic while the route exists.
    topic_id: usize,
    /// The processors of the route (the pool) its topic belongs to.
    pool: Range<usize>,
    /// The partition's processor, for messages routed by partition.
    processor: usize,
    paused: Option<Pause>,
    /// A pause of this partition asked for: until resumed (`None`), or until a time.
    requested: Option<Option<Instant>>,
    /// Where the partition resumes: the offset after the last message taken, or the first
    /// one librdkafka returned after the partition was paused.
    next_offset: Option<i64>,
    /// The first offset taken under this assignment: the commit point until the tracker
    /// publishes one.
    first_offset: Option<i64>,
    backlog: Backlog,
    /// Offsets beyond the committed one that the previous reader finished (its commit's
    /// metadata says so): skipped, not processed again.
    finished_earlier: BTreeSet<i64>,
}

/// A partition a seek re-assigned.
pub(crate) struct Reassigned {
    /// The assignment that ended.
    pub(crate) ended: Arc<AssignedPartition>,
    /// The new one.
    pub(crate) assigned: Arc<AssignedPartition>,
    /// Whether it stays paused (on request); else it is resumed at the offset.
    pub(crate) paused: bool,
}

/// A record of a round, as the first pass decides it.
enum Planned<R> {
    /// To take into the backlog of the route at this index.
    Take(R, usize),
    /// Finished by an earlier reader: only the tracker hears of it.
    FinishedEarlier(Position),
}

/// What one round took from librdkafka.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// The positions taken, in order: the OffsetTracker must hear of them before any
    /// processor can finish one.
    pub(crate) positions: Vec<Position>,
    /// Of those, the ones an earlier reader finished: skipped, and finished at once.
    pub(crate) finished_earlier: Vec<Position>,
    /// Partitions that reached a limit this round: to pause on the consumer.
    pub(crate) to_pause: Vec<TopicPartition>,
    /// The most one partition had in flight after the round, for the peak figures.
    pub(crate) partition_peak: Load,
    /// What every partition had in flight after the round (read once per round: the sum
    /// reads each partition's counts, which the processors' threads write).
    pub(crate) total: Load,
    /// Errors librdkafka returned in place of records: the partition, the offset it was at,
    /// and the error.
    pub(crate) errors: Vec<(TopicPartition, i64, RDKafkaErrorCode)>,
}

/// See the module documentation.
pub(crate) struct Routes {
    router: Router,
    flow: FlowSettings,
    table: Vec<Route>,
    /// The route of the previous record: records come in runs of one partition.
    last: usize,
    /// Partitions no longer held whose messages are still in flight, counted in the total
    /// until they are all done with.
    retiring: Vec<Arc<AssignedPartition>>,
    /// Where the next round's hand-out starts, so that partitions sharing a processor take
    /// turns.
    first_route: usize,
    /// The processor the next message that may go anywhere goes to first.
    next_any: usize,
    /// The application paused the whole system: every partition, those assigned later too.
    system_paused: bool,
}

impl Routes {
    pub(crate) fn new(router: Router, flow: FlowSettings) -> Self {
        Routes {
            router,
            flow,
            table: Vec::new(),
            last: 0,
            retiring: Vec::new(),
            first_route: 0,
            next_any: 0,
            system_paused: false,
        }
    }

    /// Adds newly assigned partitions, each with the offsets its previous reader finished
    /// beyond the committed one; `held` (never resumed) if the system is stopping or their
    /// positions are unknown, else paused on request while the system is. A partition held
    /// already under an earlier assignment is replaced (its backlog dropped). Returns the
    /// partitions that no route reads (held, unread), to pause on the consumer.
    #[must_use = "the partitions no route reads must be paused on the consumer"]
    pub(crate) fn assign(
        &mut self,
        partitions: Vec<(Arc<AssignedPartition>, Vec<i64>)>,
        held: bool,
    ) -> Vec<TopicPartition> {
        let mut unrouted = Vec::new();
        for (assigned, finished_earlier) in partitions {
            let partition = assigned.partition.clone();
            self.revoke(|p| *p == partition);
            let pool = self.router.pool_of(partition.topic());
            if pool.is_none() {
                log::error!(
                    "{partition}: no route reads topic `{}` (a pattern librdkafka matched \
                     and the route's did not): it stays unread",
                    partition.topic()
                );
                unrouted.push(partition.clone());
            }
            let held = held || pool.is_none();
            let pool = pool.unwrap_or(0..1);
            assigned.set_paused_on_request(!held && self.system_paused);
            self.table.push(Route {
                topic_id: 0,
                processor: Router::processor_for(&pool, partition.topic(), partition.partition()),
                pool,
                assigned,
                paused: match (held, self.system_paused) {
                    (true, _) => Some(Pause::Held),
                    (false, true) => Some(Pause::Requested),
                    (false, false) => None,
                },
                requested: None,
                next_offset: None,
                first_offset: None,
                backlog: Backlog::default(),
                finished_earlier: finished_earlier.into_iter().collect(),
            });
        }
        unrouted
    }

    /// Takes out the partitions `which` selects: their backlogs are dropped (never handed
    /// out) and they count in the total until processors are done with what they hold.
    /// Returns them as they were held.
    pub(crate) fn revoke(
        &mut self,
        which: impl Fn(&TopicPartition) -> bool,
    ) -> Vec<Arc<AssignedPartition>> {
        let mut revoked = Vec::new();
        self.table.retain(|route| {
            if which(&route.assigned.partition) {
                revoked.push(route.assigned.clone());
                false
            } else {
                true
            }
        });
        self.retiring.extend(revoked.iter().cloned());
        self.last = 0;
        revoked
    }

    /// The partitions held.
    pub(crate) fn partitions(&self) -> Vec<TopicPartition> {
        self.table
            .iter()
            .map(|route| route.assigned.partition.clone())
            .collect()
    }

    /// The processors that run a partition's hooks: those its messages may go to (the one it
    /// is routed to per partition, every one of its route otherwise), when its route's
    /// processors want the hooks; none otherwise.
    pub(crate) fn hook_processors_of(&self, partition: &TopicPartition) -> Vec<usize> {
        let topic = partition.topic();
        let Some(pool) = self
            .router
            .pool_of(topic)
            .filter(|_| self.router.hooks_of(topic))
        else {
            return Vec::new();
        };
        match self.flow.ordering {
            OrderingMode::PerPartition => {
                vec![Router::processor_for(&pool, topic, partition.partition())]
            }
            _ => pool.collect(),
        }
    }

    /// How many partitions are held.
    pub(crate) fn held(&self) -> usize {
        self.table.len()
    }

    /// The assignment whose commit points may be committed for a partition: the one it is
    /// held under, unless a seek fenced it already (the new one is not there yet).
    pub(crate) fn committable(&self, partition: &TopicPartition) -> Option<AssignmentId> {
        self.table
            .iter()
            .find(|route| route.assigned.partition == *partition)
            .filter(|route| !route.assigned.is_fenced())
            .map(|route| route.assigned.assignment)
    }

    /// The index of the route of `record`'s partition: by its topic's id where a route knows
    /// it (an integer compare, no name read through librdkafka), else by the topic's name,
    /// which teaches the route the id.
    fn lookup(&mut self, record: &impl Record) -> Option<usize> {
        let (id, partition) = (record.topic_id(), record.partition());
        let known = |route: &Route| {
            route.topic_id == id && id != 0 && route.assigned.partition.partition() == partition
        };
        if self.table.get(self.last).is_some_and(known) {
            return Some(self.last);
        }
        if let Some(index) = self.table.iter().position(known) {
            self.last = index;
            return Some(index);
        }
        let topic = record.topic();
        let index = self.table.iter().position(|route| {
            route.assigned.partition.partition() == partition
                && route.assigned.partition.topic() == topic
        })?;
        self.table[index].topic_id = id;
        self.last = index;
        Some(index)
    }

    /// Takes a round's records into the backlogs of their partitions, copying each
    /// partition's keys and payloads into one buffer. Records of partitions not held or
    /// paused are left out; a partition is paused the moment its in-flight work reaches its
    /// limit (every partition when the system's does), or before a record that would be
    /// [`COMMIT_WINDOW`] past its commit point; and held at a record it cannot read.
    pub(crate) fn take<R: Record>(&mut self, records: Vec<R>) -> Taken {
        let mut taken = Taken::default();
        let total_before = self.total();
        // The backlogs of partitions paused on request wait on purpose: the others are not
        // held back for them (each is bounded by the partition limit).
        let active_before = total_before.minus(self.requested_load());
        let mut round_total = Load::default();
        // Per route: what it had in flight before the round, what the round adds, and the
        // size of its buffer.
        let mut before: Vec<Option<Load>> = vec![None; self.table.len()];
        let mut round: Vec<Load> = vec![Load::default(); self.table.len()];
        // In pass 1 order: a record to copy into its route's backlog, or a position finished
        // earlier; the tracker must hear of them in offset order.
        let mut planned: Vec<Planned<R>> = Vec::with_capacity(records.len());
        for record in records {
            let index = self.lookup(&record);
            if let Some(error) = record.error() {
                let partition = TopicPartition::new(record.topic(), record.partition());
                let trouble = Trouble::of_code(error);
                if let (Some(index), false) = (index, trouble.is_retried()) {
                    // Nothing past it may be taken: the commit point must stay below it.
                    let route = &mut self.table[index];
                    if route.paused != Some(Pause::Held) {
                        route.paused = Some(Pause::Held);
                        taken.to_pause.push(partition.clone());
                    }
                }
                taken.errors.push((partition, record.offset(), error));
                continue;
            }
            let Some(index) = index else {
                log::debug!(
                    "dropped {}/{}@{}: not assigned",
                    record.topic(),
                    record.partition(),
                    record.offset()
                );
                continue;
            };
            let route = &mut self.table[index];
            if route.paused.is_some() {
                // Paused during this round, after librdkafka returned the record: the resume
                // fetches it again.
                route.next_offset.get_or_insert(record.offset());
                continue;
            }
            let floor = *route.first_offset.get_or_insert(record.offset());
            let floor = route
                .assigned
                .commit_floor()
                .map_or(floor, |f| f.max(floor));
            if record.offset() >= floor + COMMIT_WINDOW {
                // What finished beyond the commit point would not fit in the commit.
                route.paused = Some(Pause::Window);
                route.next_offset = Some(record.offset());
                taken.to_pause.push(route.assigned.partition.clone());
                continue;
            }
            route.next_offset = Some(record.offset() + 1);
            if !route.finished_earlier.is_empty() && route.finished_earlier.remove(&record.offset())
            {
                let position = Position {
                    assignment: route.assigned.assignment,
                    offset: record.offset(),
                };
                taken.finished_earlier.push(position);
                planned.push(Planned::FinishedEarlier(position));
                continue;
            }
            let bytes = Message::buffer_len(&record);
            round[index].add(bytes);
            round_total.add(bytes);
            let load = before[index]
                .get_or_insert_with(|| route.assigned.in_flight.load())
                .plus(round[index]);
            taken.partition_peak = taken.partition_peak.max(load);
            planned.push(Planned::Take(record, index));
            if self.flow.partition_limit.is_reached_by(load) {
                route.paused = Some(Pause::Limit);
                taken.to_pause.push(route.assigned.partition.clone());
            }
            if self
                .flow
                .total_limit
                .is_reached_by(active_before.plus(round_total))
            {
                for route in self.table.iter_mut().filter(|route| route.paused.is_none()) {
                    route.paused = Some(Pause::Limit);
                    taken.to_pause.push(route.assigned.partition.clone());
                }
            }
        }
        taken.total = total_before.plus(round_total);
        // The round's messages count in flight before they exist: each releases itself when
        // dropped.
        let mut buffers: Vec<Option<BytesMut>> = vec![None; self.table.len()];
        for (index, load) in round.iter().enumerate() {
            if load.messages > 0 {
                self.table[index].assigned.in_flight.add(*load);
                buffers[index] = Some(BytesMut::with_capacity(load.bytes));
            }
        }
        taken.positions.reserve(planned.len());
        for planned in planned {
            let (record, index) = match planned {
                Planned::Take(record, index) => (record, index),
                Planned::FinishedEarlier(position) => {
                    taken.positions.push(position);
                    continue;
                }
            };
            let route = &mut self.table[index];
            let Some(buffer) = buffers[index].as_mut() else {
                continue;
            };
            Message::copy_into(&record, buffer);
            let bytes = buffer.split().freeze();
            let message = Message::from_kafka(&record, route.assigned.clone(), self.flow, bytes);
            let processor = match self.flow.ordering {
                OrderingMode::PerPartition => Some(route.processor),
                OrderingMode::PerKey => Some(record.key().map_or(route.processor, |key| {
                    Router::processor_for_key(&route.pool, key)
                })),
                OrderingMode::Unordered => None,
            };
            taken.positions.push(message.position());
            route.backlog.push(Waiting { message, processor });
        }
        taken
    }

    /// Hands out waiting messages to processors with room, each partition in offset order
    /// (per key, looking past a head whose processor is full); `credits` holds each
    /// processor's room and is used up. Returns each processor's batch.
    pub(crate) fn hand_out(&mut self, credits: &mut [usize]) -> Vec<Vec<Message>> {
        let mut batches: Vec<Vec<Message>> = credits.iter().map(|_| Vec::new()).collect();
        let mut with_room = credits.iter().filter(|c| **c > 0).count();
        if self.table.is_empty() || with_room == 0 {
            return batches;
        }
        // Only per key do a partition's messages go to different processors by content.
        let per_key = self.flow.ordering == OrderingMode::PerKey;
        let look_ahead = if per_key { LOOK_AHEAD } else { usize::MAX };
        let routes = self.table.len();
        self.first_route = (self.first_route + 1) % routes;
        let next_any = &mut self.next_any;
        for step in 0..routes {
            let route = &mut self.table[(self.first_route + step) % routes];
            if route.paused == Some(Pause::Requested) {
                continue;
            }
            route.backlog.hand_out(look_ahead, &mut batches, |waiting| {
                if with_room == 0 {
                    return Handing::Stop;
                }
                let processor = match waiting.processor {
                    Some(processor) if credits.get(processor).is_some_and(|c| *c > 0) => processor,
                    // Per key a full processor holds up only its own keys; otherwise the
                    // partition's order is at stake.
                    Some(_) if per_key => return Handing::Skip,
                    Some(_) => return Handing::Stop,
                    None => match next_with_room(credits, &route.pool, next_any) {
                        Some(processor) => processor,
                        None => return Handing::Stop,
                    },
                };
                credits[processor] -= 1;
                if credits[processor] == 0 {
                    with_room -= 1;
                }
                Handing::To(processor)
            });
        }
        batches
    }

    /// The partitions paused for flow control that may go on: their in-flight work, and the
    /// system's, fell to half the limits, and their next message is within the commit
    /// window (half of it, when the window paused them). Marked resumed, and returned with
    /// the offset to resume from. Held partitions stay paused.
    pub(crate) fn resumable(&mut self) -> Vec<(TopicPartition, Option<i64>)> {
        let flow = |pause: Option<Pause>| matches!(pause, Some(Pause::Limit | Pause::Window));
        if !self.table.iter().any(|route| flow(route.paused)) {
            return Vec::new();
        }
        let active = self.total().minus(self.requested_load());
        if !self.flow.total_limit.is_drained_by(active) {
            return Vec::new();
        }
        let limit = self.flow.partition_limit;
        self.table
            .iter_mut()
            .filter(|route| {
                // Room in the window for the next message, or for half the window's worth
                // when the window paused it (so that it does not pause again at once).
                let room = match route.paused {
                    Some(Pause::Limit) => 1,
                    Some(Pause::Window) => COMMIT_WINDOW / 2,
                    _ => return false,
                };
                limit.is_drained_by(route.assigned.in_flight.load()) && route.window_left() >= room
            })
            .map(|route| {
                route.paused = None;
                (route.assigned.partition.clone(), route.next_offset)
            })
            .collect()
    }

    /// Whether the whole system is paused on request: partitions assigned now start paused.
    pub(crate) fn system_paused(&self) -> bool {
        self.system_paused
    }

    /// Pauses a partition of `lineage` on request, until resumed (`until` is `None`) or until
    /// a time; a later request replaces an earlier one. `None` when the partition is not held
    /// under that lineage (a rebalance ended it); else whether it must be paused on the
    /// consumer (it was fetching). A held partition stays as it is.
    pub(crate) fn pause_on_request(
        &mut self,
        lineage: AssignmentId,
        until: Option<Instant>,
    ) -> Option<Option<TopicPartition>> {
        let route = self.of_lineage(lineage)?;
        route.requested = Some(until);
        Some(route.pause_on_request())
    }

    /// Ends the pause asked for of a partition of `lineage`. `None` when the partition is not
    /// held under that lineage; else, when it may fetch again, the partition with the offset
    /// to resume from.
    pub(crate) fn resume_on_request(
        &mut self,
        lineage: AssignmentId,
    ) -> Option<Option<(TopicPartition, Option<i64>)>> {
        let (system_paused, limit) = (self.system_paused, self.flow.partition_limit);
        let route = self.of_lineage(lineage)?;
        route.requested = None;
        Some(route.resume_on_request(system_paused, limit))
    }

    /// Pauses every partition on request, and those assigned later, until
    /// [`resume_system`](Self::resume_system). Returns those to pause on the consumer.
    pub(crate) fn pause_system(&mut self) -> Vec<TopicPartition> {
        self.system_paused = true;
        self.table
            .iter_mut()
            .filter_map(Route::pause_on_request)
            .collect()
    }

    /// Ends the system's pause; partitions with a pause of their own asked for stay paused.
    /// Returns those that may fetch again, with the offset to resume from.
    pub(crate) fn resume_system(&mut self) -> Vec<(TopicPartition, Option<i64>)> {
        self.system_paused = false;
        let limit = self.flow.partition_limit;
        self.table
            .iter_mut()
            .filter_map(|route| route.resume_on_request(false, limit))
            .collect()
    }

    /// Ends the pauses asked for until a time that came: returns the partitions that may
    /// fetch again, with the offset to resume from.
    pub(crate) fn requests_due(&mut self, now: Instant) -> Vec<(TopicPartition, Option<i64>)> {
        let (system_paused, limit) = (self.system_paused, self.flow.partition_limit);
        self.table
            .iter_mut()
            .filter(|route| matches!(route.requested, Some(Some(until)) if until <= now))
            .filter_map(|route| {
                route.requested = None;
                route.resume_on_request(system_paused, limit)
            })
            .collect()
    }

    /// Partitions paused on request now.
    pub(crate) fn paused_on_request(&self) -> usize {
        self.table
            .iter()
            .filter(|route| route.paused == Some(Pause::Requested))
            .count()
    }

    /// What the partitions paused on request hold in flight.
    fn requested_load(&self) -> Load {
        self.table
            .iter()
            .filter(|route| route.paused == Some(Pause::Requested))
            .fold(Load::default(), |load, route| {
                load.plus(route.assigned.in_flight.load())
            })
    }

    /// The route of the partition of `lineage`, if it is held.
    fn of_lineage(&mut self, lineage: AssignmentId) -> Option<&mut Route> {
        self.table
            .iter_mut()
            .find(|route| route.assigned.lineage == lineage)
    }

    /// Re-assigns the partition of `lineage` under a new `assignment`, to be read from `offset`
    /// (a seek): the backlog of the assignment that ends is dropped, and it retires while
    /// processors finish what they hold of it; a pause asked for stays. `None` when the
    /// partition is not held under that lineage, or is held for good.
    pub(crate) fn reassign(
        &mut self,
        lineage: AssignmentId,
        assignment: AssignmentId,
        offset: i64,
    ) -> Option<Reassigned> {
        let system_paused = self.system_paused;
        let route = self
            .table
            .iter_mut()
            .find(|route| route.assigned.lineage == lineage && route.paused != Some(Pause::Held))?;
        let assigned = route.assigned.successor(assignment);
        let ended = std::mem::replace(&mut route.assigned, assigned.clone());
        drop(std::mem::take(&mut route.backlog));
        route.finished_earlier.clear();
        route.first_offset = None;
        route.next_offset = Some(offset);
        let paused = route.requested.is_some() || system_paused;
        route.paused = paused.then_some(Pause::Requested);
        route.assigned.set_paused_on_request(paused);
        self.retiring.push(ended.clone());
        Some(Reassigned {
            ended,
            assigned,
            paused,
        })
    }

    /// Holds every partition (the system stops): returns those not paused before.
    pub(crate) fn pause_all(&mut self) -> Vec<TopicPartition> {
        self.table
            .iter_mut()
            .filter_map(|route| {
                let was_paused = route.paused.replace(Pause::Held).is_some();
                (!was_paused).then(|| route.assigned.partition.clone())
            })
            .collect()
    }

    /// Drops every backlog (the system stops): nothing of it was started, so it is left for
    /// the next reader. Returns the positions dropped.
    pub(crate) fn drop_backlogs(&mut self) -> Vec<Position> {
        let mut dropped = Vec::new();
        for route in &mut self.table {
            dropped.extend(route.backlog.drain().map(|w| w.message.position()));
        }
        dropped
    }

    /// What is in flight over every partition, those no longer held included (each one only
    /// until its messages are all done with).
    pub(crate) fn total(&mut self) -> Load {
        self.retiring
            .retain(|assigned| assigned.in_flight.load().messages > 0);
        self.table
            .iter()
            .map(|route| &route.assigned)
            .chain(&self.retiring)
            .fold(Load::default(), |total, assigned| {
                total.plus(assigned.in_flight.load())
            })
    }

    pub(crate) fn paused(&self) -> usize {
        self.table
            .iter()
            .filter(|route| route.paused.is_some())
            .count()
    }

    /// Messages waiting in backlogs.
    pub(crate) fn waiting(&self) -> usize {
        self.table.iter().map(|route| route.backlog.len()).sum()
    }

    /// Where the message at `position` waits, if it is in a backlog; `queued` tells what a
    /// processor holds.
    pub(crate) fn locate(
        &self,
        position: Position,
        queued: impl Fn(usize) -> usize,
    ) -> Option<Sighting> {
        let route = self
            .table
            .iter()
            .find(|route| route.assigned.assignment == position.assignment)?;
        let (ahead, waiting) = route
            .backlog
            .iter()
            .enumerate()
            .find(|(_, waiting)| waiting.message.offset() == position.offset)?;
        let processor = waiting.processor;
        Some(Sighting::InFetcher {
            processor,
            processor_queued: processor.map_or(0, queued),
            ahead,
        })
    }
}

impl Route {
    /// Pauses it on request, unless it is held. Returns it when it was fetching.
    fn pause_on_request(&mut self) -> Option<TopicPartition> {
        let fetching = match self.paused {
            Some(Pause::Held) => return None,
            // Paused on the consumer already.
            Some(_) => false,
            None => true,
        };
        self.paused = Some(Pause::Requested);
        self.assigned.set_paused_on_request(true);
        fetching.then(|| self.assigned.partition.clone())
    }

    /// Ends its pause on request if nothing asks for it any more. Returns it, with the offset
    /// to resume from, when it may fetch again: not while its in-flight work is at the limit
    /// or its next message past the commit window, when it is paused for flow control instead
    /// (and resumed by `resumable`).
    fn resume_on_request(
        &mut self,
        system_paused: bool,
        limit: InFlightLimit,
    ) -> Option<(TopicPartition, Option<i64>)> {
        if self.paused != Some(Pause::Requested) || system_paused || self.requested.is_some() {
            return None;
        }
        self.assigned.set_paused_on_request(false);
        if !limit.is_drained_by(self.assigned.in_flight.load()) {
            self.paused = Some(Pause::Limit);
            return None;
        }
        if self.window_left() < 1 {
            self.paused = Some(Pause::Window);
            return None;
        }
        self.paused = None;
        Some((self.assigned.partition.clone(), self.next_offset))
    }

    /// How many offsets past the next one to take the partition may take before its commit
    /// window is full (the whole window before anything was taken).
    fn window_left(&self) -> i64 {
        let (Some(next), Some(first)) = (self.next_offset, self.first_offset) else {
            return COMMIT_WINDOW;
        };
        let floor = self.assigned.commit_floor().map_or(first, |f| f.max(first));
        COMMIT_WINDOW - (next - floor)
    }
}

/// The next processor of `pool` with room, round-robin from `next`.
fn next_with_room(credits: &[usize], pool: &Range<usize>, next: &mut usize) -> Option<usize> {
    let processors = pool.len();
    (0..processors)
        .map(|step| pool.start + (*next + step) % processors)
        .find(|processor| credits[*processor] > 0)
        .inspect(|processor| *next = (processor - pool.start + 1) % processors)
}

#[cfg(test)]
mod tests;
