//! Whether a system is alive and whether it is ready, for the health endpoints.
//!
//! - Alive: the Fetcher's poll loop ran within the poll TTL (or it is busy with a revocation,
//!   where it waits on purpose), no partition is stalled, and nothing inside the framework
//!   failed. A deliberate stop and its drain are alive: restarting the process then would
//!   only lose the drain. So is a broker outage: librdkafka reconnects by itself (the poll
//!   loop goes on meanwhile), and a restart would not bring the brokers back; `/health/live`
//!   shows it in its body (`ClientTrouble::outages`).
//! - Ready: the system runs (started, not stopping), holds partitions, and no revocation is
//!   in progress.
//!
//! The actors report here through [`SystemMetrics`](crate::metrics::SystemMetrics), which
//! holds it; the HTTP server only reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Health {
    born: Instant,
    /// Milliseconds from `born` to the end of the Fetcher's last round.
    last_round: AtomicU64,
    stage: AtomicU8,
    revoking: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// Where the system is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    Starting = 0,
    Running = 1,
    Stopping = 2,
    Stopped = 3,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            born: Instant::now(),
            last_round: AtomicU64::new(0),
            stage: AtomicU8::new(Stage::Starting as u8),
            revoking: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }
}

impl Health {
    /// The Fetcher finished a round of its poll loop.
    pub(crate) fn round(&self) {
        let since_birth = self.born.elapsed().as_millis() as u64;
        self.last_round.store(since_birth, Ordering::Relaxed);
    }

    /// Moves on to `stage` (never back). Entering `Running` counts as a round: the TTL of the
    /// poll loop starts there, not at the start of a start that took long.
    pub(crate) fn enter(&self, stage: Stage) {
        if stage == Stage::Running {
            self.round();
        }
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
    }

    fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Starting,
            1 => Stage::Running,
            2 => Stage::Stopping,
            _ => Stage::Stopped,
        }
    }

    /// A revocation began (`true`) or ended.
    pub(crate) fn revoking(&self, revoking: bool) {
        self.revoking.store(revoking, Ordering::Release);
    }

    /// Something inside the framework failed: not alive any more.
    pub(crate) fn failed(&self, what: String) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        failure.get_or_insert(what);
    }

    /// `Ok` with the stage when alive; the reason when not. `stalled` partitions are stalled
    /// now; the poll loop must have run within `poll_ttl`.
    pub(crate) fn liveness(&self, stalled: usize, poll_ttl: Duration) -> Result<Stage, String> {
        if let Some(failure) = self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        {
            return Err(format!("internal failure: {failure}"));
        }
        let stage = self.stage();
        if stage != Stage::Running {
            // Starting is bounded by the startup timeout, stopping by the shutdown timeout.
            return Ok(stage);
        }
        if stalled > 0 {
            return Err(format!(
                "{stalled} partitions stalled for longer than the stall timeout"
            ));
        }
        let since_round = self.born.elapsed().saturating_sub(Duration::from_millis(
            self.last_round.load(Ordering::Relaxed),
        ));
        if since_round > poll_ttl && !self.revoking.load(Ordering::Acquire) {
            return Err(format!(
                "the poll loop has not run for {since_round:.1?} (more than {poll_ttl:?})"
            ));
        }
        Ok(stage)
    }

    /// `Ok` when ready for traffic: running, with `assigned` partitions, none being revoked.
    pub(crate) fn readiness(&self, assigned: usize) -> Result<(), String> {
        match self.stage() {
            Stage::Starting => return Err("starting".to_owned()),
            Stage::Stopping => return Err("stopping".to_owned()),
            Stage::Stopped => return Err("stopped".to_owned()),
            Stage::Running => {}
        }
        if self.revoking.load(Ordering::Acquire) {
            return Err("rebalancing: partitions are being revoked".to_owned());
        }
        if assigned == 0 {
            return Err("no partitions assigned".to_owned());
        }
        Ok(())
    }
}

impl Stage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::Starting => "starting",
            Stage::Running => "running",
            Stage::Stopping => "stopping",
            Stage::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_running_system_that_polls_is_alive_and_ready_once_it_holds_partitions() {
        let health = Health::default();
        assert_eq!(health.readiness(4), Err("starting".to_owned()));
        health.enter(Stage::Running);
        health.round();
        assert_eq!(health.liveness(0, TTL), Ok(Stage::Running));
        assert_eq!(
            health.readiness(0),
            Err("no partitions assigned".to_owned())
        );
        assert_eq!(health.readiness(4), Ok(()));
        health.revoking(true);
        assert!(health.readiness(4).is_err());
        health.revoking(false);
        assert_eq!(health.readiness(4), Ok(()));
    }

    #[test]
    fn a_stall_or_a_silent_poll_loop_is_not_alive_but_a_stop_is() {
        let health = Health::default();
        health.enter(Stage::Running);
        health.round();
        assert!(
            health
                .liveness(1, TTL)
                .unwrap_err()
                .contains("1 partitions stalled")
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            health
                .liveness(0, Duration::from_millis(1))
                .unwrap_err()
                .contains("the poll loop has not run")
        );
        health.revoking(true);
        assert!(health.liveness(0, Duration::from_millis(1)).is_ok());
        health.revoking(false);
        health.enter(Stage::Stopping);
        assert_eq!(health.liveness(3, Duration::ZERO), Ok(Stage::Stopping));
        assert_eq!(health.readiness(4), Err("stopping".to_owned()));
        health.enter(Stage::Running);
        assert_eq!(
            health.readiness(4),
            Err("stopping".to_owned()),
            "stages only move on"
        );
    }

    #[test]
    fn an_internal_failure_is_not_alive_even_while_stopping() {
        let health = Health::default();
        health.enter(Stage::Running);
        health.round();
        health.failed("the fetcher died".to_owned());
        health.enter(Stage::Stopping);
        assert_eq!(
            health.liveness(0, TTL),
            Err("internal failure: the fetcher died".to_owned())
        );
    }
}
