//! The shutdown phases under one deadline (`ShutdownPlan::run`): stop fetching, drain the
//! processors, run their `on_stop`, commit, close; each phase recorded for the report.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures::future::join_all;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use super::LOG_TARGET;
use crate::actors::fetcher::Fetcher;
use crate::actors::messages::{
    Close, Closed, CommitNow, FinalCommitFailure, ProcessorHandle, Report, StopFetching, Unsettled,
};
use crate::actors::offset_tracker::OffsetTracker;
use crate::health::Stage;
use crate::instruments::GroupInstruments;
use crate::metrics::SystemMetrics;
use crate::report::{Phase, PhaseReport, ShutdownReport, StopReason};
use crate::stop::{Abandon, StopRequest, abandon_requested};

/// The least the final commit and the close get, even when the drain used up the deadline:
/// skipping the commit would turn finished work into duplicates.
const FINAL_STEP_FLOOR: Duration = Duration::from_millis(500);
/// The most of the shutdown timeout kept back from the drain for the later phases.
const MAX_RESERVE: Duration = Duration::from_secs(5);
/// How long the close waits for the group's answer to its leave once everything is committed.
/// A close takes about 100 ms; longer, the coordinator holds the leave behind a rebalance.
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// The shutdown phases and what they act on.
pub(super) struct ShutdownPlan {
    pub(super) metrics: Arc<SystemMetrics>,
    pub(super) timeout: Duration,
    pub(super) requests: watch::Receiver<StopRequest>,
    pub(super) abandon: Abandon,
    pub(super) tracker: Addr<OffsetTracker>,
    pub(super) fetcher: Addr<Fetcher>,
    pub(super) processors: Vec<ProcessorHandle>,
}

/// Records the phases of one shutdown as they complete.
struct PhaseLog {
    phases: Vec<PhaseReport>,
    errors: Vec<String>,
    instruments: GroupInstruments,
}

impl PhaseLog {
    fn record(&mut self, phase: Phase, started: Instant, outcome: Result<(), String>) {
        let took = started.elapsed();
        self.instruments.shutdown_phase(phase.name(), took);
        let completed = outcome.is_ok();
        match outcome {
            Ok(()) => log::info!(target: LOG_TARGET, "shutdown: {phase:?} took {took:?}"),
            Err(error) => {
                log::warn!(
                    target: LOG_TARGET,
                    "shutdown: {phase:?} incomplete after {took:?}: {error}"
                );
                self.errors.push(format!("{phase:?}: {error}"));
            }
        }
        self.phases.push(PhaseReport {
            phase,
            took,
            completed,
            note: None,
        });
    }

    /// Adds how `phase` completed; marks it completed (and forgets its error) if it was not.
    fn settle(&mut self, phase: Phase, note: String) {
        log::info!(target: LOG_TARGET, "shutdown: {phase:?}: {note}");
        if let Some(report) = self.phases.iter_mut().find(|report| report.phase == phase) {
            if !report.completed {
                let name = format!("{phase:?}: ");
                self.errors.retain(|error| !error.starts_with(&name));
            }
            report.completed = true;
            report.note = Some(note);
        }
    }
}

impl ShutdownPlan {
    /// Waits for `phase` until `deadline`. A second stop request meanwhile abandons the
    /// drain (the processors drop what they hold at once) and the wait goes on for what is
    /// left of the phase, now short. Returns the phase's output, or `None` at the deadline.
    async fn wait<F: Future>(&mut self, phase: F, deadline: Instant) -> Option<F::Output> {
        let mut phase = std::pin::pin!(phase);
        if !self.abandon.is_cancelled() {
            tokio::select! {
                output = &mut phase => return Some(output),
                () = sleep_until(deadline) => return None,
                () = abandon_requested(&mut self.requests) => {
                    log::warn!(target: LOG_TARGET, "abandoning the drain on request");
                    self.abandon.cancel();
                }
            }
        }
        tokio::select! {
            output = phase => Some(output),
            () = sleep_until(deadline) => None,
        }
    }

    /// Runs the phases. The drain gets the shutdown timeout less a reserve (a quarter of it, at
    /// most 5 s) for the stop hooks, the final commit and the close; the hooks get half of the
    /// reserve; the commit and the close get what is left, but never less than a floor.
    pub(super) async fn run(mut self, reason: StopReason) -> ShutdownReport {
        let begun = Instant::now();
        if let StopReason::InternalFailure(what) = &reason {
            self.metrics.health.failed(what.clone());
        }
        self.metrics.health.enter(Stage::Stopping);
        let deadline = begun + self.timeout;
        let reserve = (self.timeout / 4).min(MAX_RESERVE);
        let mut log = PhaseLog {
            phases: Vec::new(),
            errors: Vec::new(),
            instruments: self.metrics.instruments.clone(),
        };
        log::info!(target: LOG_TARGET, "stopping ({reason}) within {:?}", self.timeout);

        let started = Instant::now();
        let fetcher = self.fetcher.clone();
        let outcome = match self
            .wait(fetcher.send(StopFetching), deadline - reserve)
            .await
        {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(format!("the fetcher vanished: {error}")),
            None => Err("the fetcher did not answer".to_owned()),
        };
        log.record(Phase::StopFetching, started, outcome);

        let started = Instant::now();
        let processors = self.processors.clone();
        let drains = join_all(processors.iter().map(ProcessorHandle::drain));
        let drained = self.wait(drains, deadline - reserve).await;
        let outcome = match drained {
            _ if self.abandon.is_cancelled() => Err("abandoned on request".to_owned()),
            None => {
                self.abandon.cancel();
                Err(format!(
                    "what the processors held did not finish within {:?}; abandoned",
                    (deadline - reserve).saturating_duration_since(started)
                ))
            }
            Some(results) => all_ok(results),
        };
        log.record(Phase::Drain, started, outcome);

        let started = Instant::now();
        let budget = (deadline - reserve / 2).saturating_duration_since(started);
        let stops = join_all(processors.iter().map(|p| p.stop(budget)));
        let outcome = match timeout(budget + FINAL_STEP_FLOOR, stops).await {
            Ok(results) => all_ok(results),
            Err(_) => Err("the stop hooks did not finish in time".to_owned()),
        };
        log.record(Phase::StopProcessors, started, outcome);

        let started = Instant::now();
        let budget = (deadline - reserve / 4)
            .saturating_duration_since(started)
            .max(FINAL_STEP_FLOOR);
        let commit = self.tracker.send(CommitNow { timeout: budget });
        let (outcome, refused_while_rebalancing) =
            match timeout(budget + FINAL_STEP_FLOOR, commit).await {
                Ok(Ok(Ok(()))) => (Ok(()), false),
                Ok(Ok(Err(failure @ FinalCommitFailure::Rebalancing))) => {
                    (Err(failure.to_string()), true)
                }
                Ok(Ok(Err(failure))) => (Err(failure.to_string()), false),
                Ok(Err(error)) => (Err(format!("the offset tracker vanished: {error}")), false),
                Err(_) => (
                    Err(format!("the commit did not finish within {budget:?}")),
                    false,
                ),
            };
        let committed = outcome.is_ok();
        log.record(Phase::Commit, started, outcome);

        let tracked = self.tracker.send(Report).await;

        let started = Instant::now();
        let budget = deadline
            .saturating_duration_since(started)
            .max(FINAL_STEP_FLOOR);
        // With everything committed, only the leave is at stake: it is not waited for long.
        let patience = committed.then_some(CLOSE_PATIENCE);
        let close = self.fetcher.send(Close { budget, patience });
        let (outcome, closed) = match timeout(budget + FINAL_STEP_FLOOR, close).await {
            Ok(Ok(Ok(closed))) => (Ok(()), Some(closed)),
            Ok(Ok(Err(error))) => (Err(error), None),
            Ok(Err(error)) => (Err(format!("the fetcher vanished: {error}")), None),
            Err(_) => (
                Err(format!("the consumer did not close within {budget:?}")),
                None,
            ),
        };
        log.record(Phase::Close, started, outcome);
        if closed == Some(Closed::LeavingInBackground) {
            log.settle(
                Phase::Close,
                format!(
                    "everything was committed and the leave sent; its answer had not come after \
                     {CLOSE_PATIENCE:?} (a coordinator holds a member's requests behind a \
                     rebalance in progress): the close completes in the background"
                ),
            );
        }
        if refused_while_rebalancing {
            match self.tracker.send(Unsettled).await {
                Ok(unsettled) if unsettled.is_empty() => log.settle(
                    Phase::Commit,
                    "refused or unanswered while the group rebalanced; the close's revocation \
                     committed the same offsets"
                        .to_owned(),
                ),
                Ok(unsettled) => log::warn!(
                    target: LOG_TARGET,
                    "{} partitions left uncommitted by the final commit: the next owner \
                     repeats what finished since their last commit",
                    unsettled.len()
                ),
                Err(error) => log
                    .errors
                    .push(format!("the offset tracker vanished: {error}")),
            }
        }

        // What the close's revocation committed counts too (the book forgot the partitions by
        // then: what was abandoned comes from before the close).
        let committed_at_close = self.tracker.send(Report).await.map(|late| late.committed);
        let figures = self.metrics.snapshot();
        let processed = figures.processed;
        let (committed, abandoned, released) = match tracked {
            Ok(tracked) => (
                committed_at_close.unwrap_or(tracked.committed),
                tracked.abandoned,
                tracked.released,
            ),
            Err(error) => {
                log.errors
                    .push(format!("the offset tracker vanished: {error}"));
                Default::default()
            }
        };
        log::info!(
            target: LOG_TARGET,
            "stopped in {:?}: {processed} messages processed",
            begun.elapsed()
        );
        ShutdownReport {
            reason,
            processed,
            retries: figures.retries,
            skipped: figures.skipped,
            dead_lettered: figures.dead_lettered,
            processor_restarts: figures.processor_restarts,
            committed,
            abandoned,
            released,
            phases: log.phases,
            errors: log.errors,
        }
    }
}

/// One error listing every failure, or `Ok` when there was none.
fn all_ok(results: Vec<Result<(), String>>) -> Result<(), String> {
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
