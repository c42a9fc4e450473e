//! The rebalance callbacks, run by librdkafka inside `poll` on the Fetcher's thread: an
//! assignment (its partition hooks, the positions processors stored, what the previous reader
//! finished) and a revocation (the drain of what processors hold, the commit, the hooks).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};

use super::context::FetchContext;
use super::{LOG_TARGET, names};
use crate::actors::messages::{Assigned, CommitPointsOf, Hook, Revoked};
use crate::flow::AssignedPartition;
use crate::native;
use crate::offsets::{AssignmentId, Start, TopicPartition, decode_finished};
use crate::report::StopReason;

/// The least a revocation's commit gets, even when the drain used up its timeout: skipping
/// it would make the next owner repeat everything finished since the last periodic commit.
const REVOCATION_COMMIT_FLOOR: Duration = Duration::from_secs(1);

/// How long an assignment waits for the committed offsets' metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

impl FetchContext {
    /// Runs a partition hook on the processors `partitions` may go to, and waits for every
    /// answer until `deadline`. Inside the rebalance callback: the processors run on other
    /// threads and answer over a `std` channel.
    fn run_hooks<T>(
        &self,
        partitions: &[TopicPartition],
        deadline: Instant,
        hook: impl Fn(Vec<TopicPartition>, std::sync::mpsc::Sender<Result<T, String>>) -> Hook,
    ) -> Result<Vec<T>, String> {
        let Some(revocation) = self.revocation.get() else {
            return Ok(Vec::new());
        };
        let mut by_processor: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        {
            let routes = self.routes();
            for partition in partitions {
                for index in routes.hook_processors_of(partition) {
                    by_processor
                        .entry(index)
                        .or_default()
                        .push(partition.clone());
                }
            }
        }
        let (reply, answers) = std::sync::mpsc::channel();
        let mut asked = 0;
        for (index, partitions) in by_processor {
            let told = revocation
                .processors
                .get(index)
                .is_some_and(|processor| processor.hook(hook(partitions, reply.clone())));
            match told {
                true => asked += 1,
                // The processors ended with the system's stop (the close revokes what is
                // left): their `on_stop` ran in place of the hooks.
                false if self.stopping.load(Ordering::Acquire) => {}
                false => return Err(format!("processor {index} is gone")),
            }
        }
        drop(reply);
        let mut answered = Vec::with_capacity(asked);
        while answered.len() < asked {
            match answers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(answer)) => answered.push(answer),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(format!(
                        "{} of {asked} processors did not answer within the \
                         rebalance_drain_timeout ({:?})",
                        asked - answered.len(),
                        revocation.drain_timeout
                    ));
                }
            }
        }
        Ok(answered)
    }

    /// Asks the processors for the positions they stored of newly assigned partitions and
    /// sets them in the assignment, before librdkafka starts fetching. The lowest position a
    /// processor stored for a partition wins. On a failure nothing of the assignment is read:
    /// the system stops.
    fn start_at_stored_positions(&self, assignment: &TopicPartitionList) {
        let Some(revocation) = self.revocation.get().filter(|r| r.hooks) else {
            return;
        };
        let partitions = partitions_of(assignment);
        let deadline = Instant::now() + revocation.drain_timeout;
        let answers = self.run_hooks(&partitions, deadline, |partitions, reply| Hook::Assigned {
            partitions,
            reply,
        });
        let answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                log::error!(
                    target: LOG_TARGET,
                    "on_assigned: {error}; the new partitions stay paused; stopping"
                );
                self.hook_failed.store(true, Ordering::Release);
                revocation
                    .stop
                    .request_graceful(StopReason::PartitionHookFailed(error));
                return;
            }
        };
        let mut lowest: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for (partition, offset) in answers.into_iter().flatten() {
            let entry = lowest.entry(partition).or_insert(offset);
            *entry = (*entry).min(offset);
        }
        for (partition, offset) in lowest {
            if offset < 0 {
                log::warn!(
                    target: LOG_TARGET,
                    "on_assigned: {partition} at {offset} is not a position; ignored"
                );
            } else if native::start_at(assignment, &partition, offset) {
                log::info!(
                    target: LOG_TARGET,
                    "{partition}: starting at the stored position {offset}"
                );
            } else {
                log::warn!(
                    target: LOG_TARGET,
                    "on_assigned: {partition} is not in the assignment; ignored"
                );
            }
        }
    }

    /// Tells the processors that partitions are revoked, once their messages are done with,
    /// and waits for them until `deadline`.
    fn tell_revoked(&self, revoked: &[Arc<AssignedPartition>], deadline: Instant) {
        if !self.revocation.get().is_some_and(|r| r.hooks) {
            return;
        }
        let partitions: Vec<TopicPartition> = revoked.iter().map(|p| p.partition.clone()).collect();
        let told = self.run_hooks(&partitions, deadline, |partitions, reply| Hook::Revoked {
            partitions,
            reply,
        });
        if let Err(error) = told {
            let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
            log::warn!(target: LOG_TARGET, "on_revoked of {}: {error}", names.join(", "));
        }
    }

    /// Takes partitions out of the assignment. On a graceful revocation, waits (bounded by the
    /// drain timeout) until processors finished or gave up what they hold of them and
    /// reported it, and commits their commit points synchronously; on a loss, commits
    /// nothing, since the partitions may already belong to another member.
    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        which: impl Fn(&TopicPartition) -> bool,
        lost: bool,
    ) {
        let revoked = self.routes().revoke(which);
        if revoked.is_empty() {
            return;
        }
        self.metrics.health.revoking(true);
        // Processors drop what they hold of the partitions and have not started, so that the
        // revocation waits only for the messages in progress, never behind another
        // partition's long message. Where that leaves a gap below a finished message (per key
        // or unordered), the commit records what finished beyond it, and the next owner
        // processes only the gap.
        for partition in &revoked {
            partition.fence();
        }
        let assignments: Vec<AssignmentId> = revoked.iter().map(|p| p.assignment).collect();
        if let Some(revocation) = self.revocation.get() {
            for processor in &revocation.processors {
                processor.forget(assignments.clone());
            }
        }
        if !lost {
            self.drain_and_commit(consumer, &revoked);
        }
        self.metrics.revoked(lost, self.routes().held());
        self.metrics.health.revoking(false);
        self.tracker.revoked.do_send(Revoked(
            revoked.iter().map(|p| p.partition.clone()).collect(),
        ));
    }

    /// Waits until nothing of the revoked partitions is in flight: their backlogs were
    /// dropped, and processors finish the message in progress, drop what they hold and have
    /// not started, give up retries, and report before they let go of a message. Then their commit
    /// points are final: commits them. Runs inside `poll`; what it waits for (processors, the
    /// tracker) runs on other threads, so it cannot deadlock.
    fn drain_and_commit(&self, consumer: &BaseConsumer<Self>, revoked: &[Arc<AssignedPartition>]) {
        let started = Instant::now();
        let Some(revocation) = self.revocation.get() else {
            return;
        };
        let deadline = started + revocation.drain_timeout;
        let in_flight = || -> usize { revoked.iter().map(|p| p.in_flight.load().messages).sum() };
        // Processors finish between one and a few messages per partition; a short sleep
        // between looks costs nothing next to that.
        while in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = in_flight();
        let names: Vec<String> = revoked.iter().map(|p| p.partition.to_string()).collect();
        let names = names.join(", ");
        self.tell_revoked(revoked, deadline);
        let (reply, answer) = mpsc::channel();
        let assignments = revoked.iter().map(|p| p.assignment).collect();
        self.tracker
            .commit_points_of
            .do_send(CommitPointsOf { assignments, reply });
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(REVOCATION_COMMIT_FLOOR);
        let points = match answer.recv_timeout(wait) {
            Ok(points) => points,
            Err(_) => {
                log::warn!(
                    target: LOG_TARGET,
                    "revocation of {names}: the offset tracker did not answer; nothing committed"
                );
                return;
            }
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(REVOCATION_COMMIT_FLOOR);
        let count = points.len();
        let committed = self.commit(consumer, points, wait);
        if let Err(error) = &committed {
            log::warn!(
                target: LOG_TARGET,
                "revocation of {names}: commit failed ({error}); the next owner repeats what \
                 finished since the last commit"
            );
        }
        log::info!(
            target: LOG_TARGET,
            "revocation of {names} drained in {:?}: {} partitions committed{}",
            started.elapsed(),
            if committed.is_ok() { count } else { 0 },
            match left {
                0 => String::new(),
                left => format!(
                    ", {left} messages still unfinished after {:?} (the next owner repeats \
                     them)",
                    revocation.drain_timeout
                ),
            }
        );
    }
}

impl ConsumerContext for FetchContext {
    /// On revocation: stop handing out the revoked partitions, wait for what processors hold
    /// of them, commit their commit points, and only then let librdkafka release them. When
    /// the assignment was lost (the session expired, the coordinator fenced this member) the
    /// partitions may already belong to another member: nothing is committed for them.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let lost = consumer.assignment_lost();
                log::info!(
                    target: LOG_TARGET,
                    "{} {} partitions: {}",
                    if lost { "lost" } else { "revoking" },
                    partitions.count(),
                    names(partitions)
                );
                let revoked = partitions_of(partitions);
                self.revoke(consumer, |p| revoked.contains(p), lost);
            }
            // librdkafka unassigns everything after a rebalance error: as good as lost.
            Rebalance::Error(error) => {
                log::warn!(
                    target: LOG_TARGET,
                    "rebalance failed ({error}): giving up every partition"
                );
                self.revoke(consumer, |_| true, true);
            }
            Rebalance::Assign(partitions) => {
                // Before librdkafka starts fetching them: then their messages never reach
                // the consumer's own queue.
                if let Some(queue) = self.fetch_queue().as_ref() {
                    queue.route(consumer, partitions);
                }
                self.start_at_stored_positions(partitions);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        let assigned: Vec<Arc<AssignedPartition>> = partitions
            .elements()
            .iter()
            .map(|p| {
                let id = self.next_assignment.fetch_add(1, Ordering::Relaxed);
                let partition = TopicPartition::new(p.topic(), p.partition());
                let instruments = self.metrics.instruments.partition(&partition);
                AssignedPartition::new(
                    partition,
                    AssignmentId(id),
                    instruments,
                    self.controls.clone(),
                )
            })
            .collect();
        log::info!(
            target: LOG_TARGET,
            "assigned {} partitions: {}",
            assigned.len(),
            names(partitions)
        );
        // Only an answering coordinator assigns partitions.
        self.metrics.trouble.sign_of_life();
        // librdkafka keeps a partition paused across a revocation; a new assignment starts
        // unpaused unless the system is stopping or paused on request.
        let stopping =
            self.stopping.load(Ordering::Acquire) || self.hook_failed.load(Ordering::Acquire);
        let paused = if stopping || self.routes().system_paused() {
            consumer.pause(partitions)
        } else {
            consumer.resume(partitions)
        };
        if let Err(error) = paused {
            log::warn!(target: LOG_TARGET, "could not set the pause of new partitions: {error}");
        }
        let mut earlier = finished_earlier(consumer, partitions);
        let stored = stored_starts(partitions);
        // The tracker hears of the assignment before anything taken under it, with where it
        // starts: at a position a processor stored (committed as it is, even if nothing more
        // is taken), or at the committed offset with what the previous reader finished beyond
        // it (this member's commits carry it on until they pass it).
        self.tracker.assigned.do_send(Assigned(
            assigned
                .iter()
                .map(|a| {
                    let start = match stored.get(&a.partition) {
                        Some(&position) => Start::Stored(position),
                        None => Start::Committed {
                            inherited: earlier.get(&a.partition).cloned().unwrap_or_default(),
                        },
                    };
                    (a.clone(), start)
                })
                .collect(),
        ));
        let assigned = assigned
            .into_iter()
            .map(|a| {
                let finished = earlier.remove(&a.partition).unwrap_or_default();
                (a, finished)
            })
            .collect();
        let mut routes = self.routes();
        let unrouted = routes.assign(assigned, stopping);
        self.metrics.assigned(routes.held());
        drop(routes);
        if let Some(partition) = unrouted.first() {
            // Held, unread: librdkafka must not fetch what nobody takes, and a partition read
            // by nobody must not wait unnoticed.
            super::consumer::pause(consumer, &unrouted, None);
            if let Some(revocation) = self.revocation.get() {
                revocation
                    .stop
                    .request_graceful(StopReason::NoRoute(partition.clone()));
            }
        }
    }
}

/// The partitions of a list librdkafka handed over.
fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|p| TopicPartition::new(p.topic(), p.partition()))
        .collect()
}

/// The positions processors stored, which `start_at_stored_positions` wrote into the
/// assignment: the partitions with an offset of their own. (The others, read from the group's
/// committed offset, have none.)
fn stored_starts(partitions: &TopicPartitionList) -> HashMap<TopicPartition, i64> {
    partitions
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(position) => Some((
                TopicPartition::new(element.topic(), element.partition()),
                position,
            )),
            _ => None,
        })
        .collect()
}

/// The offsets beyond each partition's committed offset that its previous reader finished,
/// as that commit's metadata records them: they are skipped, not processed again. Waits for
/// the group coordinator at most a few seconds; without an answer, nothing is skipped (the
/// next reader repeats them, as any consumer would).
fn finished_earlier(
    consumer: &BaseConsumer<FetchContext>,
    partitions: &TopicPartitionList,
) -> HashMap<TopicPartition, Vec<i64>> {
    // Partitions that start at a position a processor stored: the store is their truth.
    let mut from_the_group = TopicPartitionList::new();
    for element in partitions.elements() {
        if element.offset() == Offset::Invalid {
            from_the_group.add_partition(element.topic(), element.partition());
        }
    }
    if from_the_group.count() == 0 {
        return HashMap::new();
    }
    let committed = match consumer.committed_offsets(from_the_group, COMMITTED_TIMEOUT) {
        Ok(committed) => committed,
        Err(error) => {
            log::warn!(
                target: LOG_TARGET,
                "could not read the committed offsets of {} ({error}): messages the previous \
                 reader finished beyond them are processed again",
                names(partitions)
            );
            return HashMap::new();
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|element| {
            let Offset::Offset(committed) = element.offset() else {
                return None;
            };
            let finished = decode_finished(committed, element.metadata());
            (!finished.is_empty()).then(|| {
                log::info!(
                    target: LOG_TARGET,
                    "{}/{}: skipping {} messages beyond offset {committed} that the previous \
                     reader finished",
                    element.topic(),
                    element.partition(),
                    finished.len()
                );
                (
                    TopicPartition::new(element.topic(), element.partition()),
                    finished,
                )
            })
        })
        .collect()
}
