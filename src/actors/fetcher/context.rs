//! The consumer's context: the state the rebalance callbacks share with the Fetcher (the
//! routes, the fetch queue, the commit line, the `Revocation` settings), and where
//! librdkafka's errors and log lines arrive.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use tokio::sync::Notify;

use super::LOG_TARGET;
use crate::actors::messages::{ProcessorHandle, TrackerInbox};
use crate::commits::CommitLine;
use crate::control::Controls;
use crate::flow::FlowSettings;
use crate::metrics::SystemMetrics;
use crate::native::{CommitFailure, CommitQueue, FetchQueue};
use crate::offsets::CommitPoint;
use crate::report::StopReason;
use crate::routes::Routes;
use crate::routing::Router;
use crate::stop::StopHandle;
use crate::trouble::{Reported, Resource, Trouble};

/// The consumer's callbacks and what they share with the Fetcher. The callbacks run on the
/// Fetcher's thread, inside `poll`, or on the thread that closes the consumer.
pub(crate) struct FetchContext {
    pub(super) tracker: TrackerInbox,
    pub(super) metrics: Arc<SystemMetrics>,
    /// The partitions this member holds, with their backlogs.
    routes: Mutex<Routes>,
    pub(super) next_assignment: AtomicU64,
    /// The line on which the partitions' controls are asked for, given to each assignment.
    pub(super) controls: Controls,
    /// Set when the Fetcher stops taking messages: partitions assigned later stay paused.
    pub(super) stopping: AtomicBool,
    /// Set when an `on_assigned` hook failed: the partitions' positions are unknown, so they
    /// stay paused while the system stops.
    pub(super) hook_failed: AtomicBool,
    /// What a revocation drains and whom it tells; set once the processors exist.
    pub(super) revocation: OnceLock<Revocation>,
    /// Where the assigned partitions' messages go; set once the consumer exists, taken
    /// (destroyed) before the consumer is closed.
    fetch_queue: Mutex<Option<FetchQueue>>,
    /// The commits, sent one at a time; set once the consumer exists, taken (destroyed) once
    /// it is closed.
    commit_line: Mutex<Option<CommitLine>>,
    /// The consumer group, to name it when the brokers refuse it.
    group_id: String,
    /// The last error librdkafka reported, with its explanation; a refusal (credentials, TLS,
    /// ACLs) stays until it is taken.
    reported: Mutex<Option<Reported>>,
}

/// What the revocation callback needs besides the consumer.
pub(crate) struct Revocation {
    /// The processors, told to give up retries of revoked partitions.
    pub(crate) processors: Vec<ProcessorHandle>,
    /// The longest the callback waits for the revoked partitions' messages, and for the
    /// processors' partition hooks.
    pub(crate) drain_timeout: Duration,
    /// Whether the processors' partition hooks are run.
    pub(crate) hooks: bool,
    /// Stops the system when an `on_assigned` hook fails.
    pub(crate) stop: StopHandle,
}

impl FetchContext {
    pub(crate) fn new(
        tracker: TrackerInbox,
        metrics: Arc<SystemMetrics>,
        router: Router,
        flow: FlowSettings,
        group_id: String,
        controls: Controls,
    ) -> Self {
        FetchContext {
            tracker,
            metrics,
            routes: Mutex::new(Routes::new(router, flow)),
            next_assignment: AtomicU64::new(1),
            controls,
            stopping: AtomicBool::new(false),
            hook_failed: AtomicBool::new(false),
            revocation: OnceLock::new(),
            fetch_queue: Mutex::new(None),
            commit_line: Mutex::new(None),
            group_id,
            reported: Mutex::new(None),
        }
    }

    /// The last error librdkafka reported, taken.
    pub(crate) fn take_reported(&self) -> Option<Reported> {
        self.reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// What the brokers refused, for a stop reason: the operation and resource, and why.
    pub(super) fn refusal(&self, trouble: Trouble, detail: String) -> Option<StopReason> {
        let resource = match trouble {
            Trouble::Authentication => "the credentials (SASL authentication)".to_owned(),
            Trouble::NotAuthorized(Resource::Group) => {
                format!("READ on group `{}`", self.group_id)
            }
            Trouble::NotAuthorized(Resource::Topic) => "READ on a subscribed topic".to_owned(),
            Trouble::NotAuthorized(Resource::Cluster) => "an operation on the cluster".to_owned(),
            Trouble::Transient | Trouble::Tls | Trouble::Unreadable => return None,
        };
        Some(StopReason::NotAuthorized {
            resource,
            error: detail,
        })
    }

    pub(super) fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panic while holding this lock is a bug that stops the system (the Fetcher's
        // death is watched); the routes stay usable for the shutdown.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn fetch_queue(&self) -> MutexGuard<'_, Option<FetchQueue>> {
        self.fetch_queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn commit_line(&self) -> MutexGuard<'_, Option<CommitLine>> {
        self.commit_line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits synchronously, after the commit on its way; see [`CommitLine::commit`].
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        points: Vec<CommitPoint>,
        timeout: Duration,
    ) -> Result<(), CommitFailure> {
        if let Some(line) = self.commit_line().as_mut() {
            return line.commit(consumer, points, timeout);
        }
        // The consumer is closing (its revocation commits what the final commit left), and the
        // line, settled before the close, is gone: a line of its own, destroyed before the
        // consumer is.
        let queue = CommitQueue::new(consumer, Arc::new(Notify::new()));
        let instruments = self.metrics.instruments.clone();
        let tracker = self.tracker.committed.clone();
        CommitLine::new(queue, tracker, instruments).commit(consumer, points, timeout)
    }

    /// Completes the context once the processors exist (before the first poll).
    pub(crate) fn set_revocation(&self, revocation: Revocation) {
        if self.revocation.set(revocation).is_err() {
            log::error!(
                target: LOG_TARGET,
                "the revocation settings were set twice; keeping the first"
            );
        }
    }
}

impl ClientContext for FetchContext {
    /// librdkafka's log lines: through the same limiter as its errors, at levels that say
    /// what they mean for the system (`client_trouble::level_of`).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.metrics.trouble.log(level, facility, message);
    }

    /// librdkafka's errors, with their explanation: logged (a repeat within the summary
    /// interval only counted) and kept for whoever acts on them (the start, which fails fast
    /// on refused credentials or TLS, and the Fetcher).
    fn error(&self, error: KafkaError, reason: &str) {
        let trouble = Trouble::of(&error);
        self.metrics.trouble.error(&error, trouble, reason);
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A refusal is not overwritten by the transient errors that follow it ("all brokers
        // are down", after an authentication failure closed the connection).
        if trouble != Trouble::Transient
            || reported
                .as_ref()
                .is_none_or(|earlier| earlier.trouble == Trouble::Transient)
        {
            *reported = Some(Reported {
                trouble,
                reason: reason.to_owned(),
            });
        }
    }
}
