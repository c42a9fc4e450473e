//! Commits go to the group coordinator one at a time.
//!
//! Kafka keeps the last commit it applies, not the highest. A commit held up on its way (the
//! coordinator unreachable, a request retried) that lands after a newer one moves the
//! committed offset back, and the next owner processes again what was already committed.
//! So the [`CommitLine`] sends a commit only once the previous one was answered:
//!
//! - a periodic commit is not sent while another is on its way; the next interval sends the
//!   newer commit points instead;
//! - a synchronous commit (a revocation's, the shutdown's) first waits for the answer of the
//!   one on its way, then sends its own and waits for it, all within its timeout. When that
//!   runs out, its answer is still awaited before anything else is sent.
//!
//! Every successful answer, whoever sent the commit, reaches the tracker as [`Committed`].

use std::time::{Duration, Instant};

use actix::Recipient;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};

use crate::actors::messages::Committed;
use crate::instruments::GroupInstruments;
use crate::native::{CommitFailure, CommitQueue};
use crate::offsets::{CommitPoint, encode_finished};

/// The commits of one consumer, in order; see the module's documentation.
pub(crate) struct CommitLine {
    queue: CommitQueue,
    /// The OffsetTracker, which hears of every commit acknowledged.
    tracker: Recipient<Committed>,
    /// The commit sent and not answered yet.
    on_its_way: Option<Sent>,
    next_id: u64,
    instruments: GroupInstruments,
    /// A commit was acknowledged since [`take_acknowledged`](Self::take_acknowledged) was
    /// last called: a sign that the coordinator answers.
    acknowledged: bool,
}

struct Sent {
    id: u64,
    points: Vec<CommitPoint>,
    /// Sent by a synchronous commit: its caller reports its outcome, unless it stopped
    /// waiting.
    synchronous: bool,
    at: Instant,
}

impl CommitLine {
    pub(crate) fn new(
        queue: CommitQueue,
        tracker: Recipient<Committed>,
        instruments: GroupInstruments,
    ) -> Self {
        CommitLine {
            queue,
            tracker,
            on_its_way: None,
            next_id: 1,
            instruments,
            acknowledged: false,
        }
    }

    /// Sends a periodic commit without waiting for its answer, unless a commit is on its way.
    /// Returns the commit points sent: none in that case.
    pub(crate) fn send_periodic<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        points: Vec<CommitPoint>,
    ) -> Result<Vec<CommitPoint>, CommitFailure> {
        self.collect();
        if self.on_its_way.is_some() || points.is_empty() {
            return Ok(Vec::new());
        }
        self.send(consumer, points.clone(), false)?;
        Ok(points)
    }

    /// Commits synchronously: waits for the answer of the commit on its way, then sends this
    /// one and waits for its answer, all within `timeout`.
    pub(crate) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        points: Vec<CommitPoint>,
        timeout: Duration,
    ) -> Result<(), CommitFailure> {
        if points.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        // The previous commit's outcome is recorded: a success reached the tracker, a failure
        // is made good by this commit.
        if !self.settle(timeout) {
            return Err(CommitFailure::Unanswered(timeout));
        }
        let id = self.send(consumer, points, true)?;
        loop {
            let (answered, result) = self
                .wait_for_answer(deadline)
                .ok_or(CommitFailure::Unanswered(timeout))?;
            if answered == id {
                return result;
            }
        }
    }

    /// Waits at most `timeout` for the answer of the commit on its way, if any. Returns
    /// whether the line is free.
    pub(crate) fn settle(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.on_its_way.is_some() {
            if self.wait_for_answer(deadline).is_none() {
                return false;
            }
        }
        true
    }

    /// Passes the answers that arrived on to the tracker, without waiting.
    pub(crate) fn collect(&mut self) {
        for (id, result) in self.queue.results() {
            self.answered(id, result);
        }
    }

    /// Whether a commit was acknowledged since the last call.
    pub(crate) fn take_acknowledged(&mut self) -> bool {
        std::mem::take(&mut self.acknowledged)
    }

    fn send<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        points: Vec<CommitPoint>,
        synchronous: bool,
    ) -> Result<u64, CommitFailure> {
        let id = self.next_id;
        self.next_id += 1;
        self.queue
            .send(consumer, &offsets(&points, &self.instruments)?, id)?;
        self.on_its_way = Some(Sent {
            id,
            points,
            synchronous,
            at: Instant::now(),
        });
        Ok(id)
    }

    /// Waits until `deadline` for one answer, records it and returns it.
    fn wait_for_answer(&mut self, deadline: Instant) -> Option<(u64, Result<(), CommitFailure>)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (id, result) = self.queue.next_result(wait)?;
        self.answered(id, result.clone());
        Some((id, result))
    }

    /// Records the answer to commit `id`: the line is free again, and a success reaches the
    /// tracker.
    fn answered(&mut self, id: u64, result: Result<(), CommitFailure>) {
        let Some(sent) = self.on_its_way.take_if(|sent| sent.id == id) else {
            return;
        };
        self.instruments.commit_duration.record(sent.at.elapsed());
        match &result {
            Ok(()) => self.instruments.commits_succeeded.increment(1),
            Err(_) => self.instruments.commits_failed.increment(1),
        }
        match &result {
            Ok(()) => {
                self.acknowledged = true;
                log::debug!(
                    "committed {} partitions in {:?}",
                    sent.points.len(),
                    sent.at.elapsed()
                );
                self.tracker.do_send(Committed(sent.points));
            }
            // A synchronous commit's caller reports its own failure.
            Err(error) if !sent.synchronous => {
                log::warn!("periodic commit failed (retried at the next interval): {error}")
            }
            Err(error) => log::debug!("commit failed after {:?}: {error}", sent.at.elapsed()),
        }
    }
}

/// The commit points as a partition list, each with the offsets finished beyond it as its
/// metadata.
fn offsets(
    points: &[CommitPoint],
    instruments: &GroupInstruments,
) -> Result<TopicPartitionList, CommitFailure> {
    let mut offsets = TopicPartitionList::new();
    for point in points {
        let mut element =
            offsets.add_partition(point.partition.topic(), point.partition.partition());
        element
            .set_offset(Offset::Offset(point.offset))
            .map_err(|error| CommitFailure::Other(error.to_string()))?;
        if !point.finished.is_empty() {
            let (metadata, encoded) = encode_finished(point.offset, &point.finished);
            if encoded < point.finished.len() {
                // The commit window keeps this from happening.
                let left_out = point.finished.len() - encoded;
                log::warn!(
                    "{}: {left_out} of {} messages finished beyond offset {} do not fit in \
                     the commit; the next reader processes them again (a bug: please report \
                     it)",
                    point.partition,
                    point.finished.len(),
                    point.offset
                );
                instruments.metadata_truncated.increment(left_out as u64);
            }
            element.set_metadata(metadata);
        }
    }
    Ok(offsets)
}
