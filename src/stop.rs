//! Stop requests: from a [`StopHandle`], from signals, and from the system itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::report::StopReason;

/// How urgently the system was asked to stop. Requests only escalate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopRequest {
    Running,
    /// Stop fetching, drain in-flight work within the shutdown timeout, commit, leave.
    Graceful(StopReason),
    /// Abandon the drain at once, then commit what finished and leave.
    Immediate(StopReason),
}

/// Stops a running [`ConsumerSystem`](crate::ConsumerSystem) from code. Cheap to clone and
/// usable from any thread; get one from
/// [`RunningSystem::stop_handle`](crate::RunningSystem::stop_handle).
#[derive(Debug, Clone)]
pub struct StopHandle {
    requests: watch::Sender<StopRequest>,
}

impl StopHandle {
    /// A handle for a system that has not been asked to stop.
    pub(crate) fn new() -> Self {
        StopHandle {
            requests: watch::Sender::new(StopRequest::Running),
        }
    }

    /// Asks for a graceful stop: like a first SIGTERM. Does not wait for it.
    pub fn stop(&self) {
        self.request_graceful(StopReason::Requested);
    }

    /// Asks to abandon the drain: like a second SIGTERM. In-flight messages are left
    /// unfinished (and delivered again later); what finished is committed.
    pub fn stop_now(&self) {
        self.request_immediate(StopReason::Requested);
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        *self.requests.borrow() != StopRequest::Running
    }

    pub(crate) fn request_graceful(&self, reason: StopReason) {
        self.requests.send_if_modified(|request| match request {
            StopRequest::Running => {
                *request = StopRequest::Graceful(reason);
                true
            }
            _ => false,
        });
    }

    pub(crate) fn request_immediate(&self, reason: StopReason) {
        self.requests.send_if_modified(|request| match request {
            StopRequest::Immediate(_) => false,
            StopRequest::Graceful(first) => {
                *request = StopRequest::Immediate(first.clone());
                true
            }
            StopRequest::Running => {
                *request = StopRequest::Immediate(reason);
                true
            }
        });
    }

    /// A signal escalates: the first asks for a graceful stop, the next one for an immediate one.
    pub(crate) fn escalate(&self, reason: StopReason) {
        if self.is_stopping() {
            log::warn!("{reason} again: abandoning the drain");
            self.request_immediate(reason);
        } else {
            log::info!("{reason}: stopping gracefully (send it again to abandon the drain)");
            self.request_graceful(reason);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<StopRequest> {
        self.requests.subscribe()
    }
}

/// Resolves when a stop was requested; returns the first reason.
pub(crate) async fn stop_requested(requests: &mut watch::Receiver<StopRequest>) -> StopReason {
    let request = requests
        .wait_for(|request| *request != StopRequest::Running)
        .await
        .map(|request| request.clone());
    match request {
        Ok(StopRequest::Graceful(reason) | StopRequest::Immediate(reason)) => reason,
        // The sender lives in the system's own handle, so it cannot go away while running.
        Ok(StopRequest::Running) | Err(_) => StopReason::Requested,
    }
}

/// Resolves when the drain is to be abandoned.
pub(crate) async fn abandon_requested(requests: &mut watch::Receiver<StopRequest>) {
    let _ = requests
        .wait_for(|request| matches!(request, StopRequest::Immediate(_)))
        .await;
}

/// Turns SIGINT and SIGTERM into stop requests, for as long as the returned task runs.
pub(crate) fn listen_for_signals(
    handle: StopHandle,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(actix::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = interrupt.recv() => "SIGINT",
                Some(()) = terminate.recv() => "SIGTERM",
                else => return,
            };
            handle.escalate(StopReason::Signal(name));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_only_escalate_and_keep_the_first_reason() {
        let handle = StopHandle::new();
        assert!(!handle.is_stopping());
        handle.escalate(StopReason::Signal("SIGTERM"));
        assert_eq!(
            *handle.subscribe().borrow(),
            StopRequest::Graceful(StopReason::Signal("SIGTERM"))
        );
        handle.stop();
        assert_eq!(
            *handle.subscribe().borrow(),
            StopRequest::Graceful(StopReason::Signal("SIGTERM"))
        );
        handle.escalate(StopReason::Signal("SIGINT"));
        assert_eq!(
            *handle.subscribe().borrow(),
            StopRequest::Immediate(StopReason::Signal("SIGTERM"))
        );
        handle.stop();
        assert!(matches!(
            *handle.subscribe().borrow(),
            StopRequest::Immediate(_)
        ));
    }
}

/// The abandonment of a drain, raised once by the Supervisor: the processors drop what they
/// hold. Each processor checks it between messages, so the check is an atomic load, where
/// `CancellationToken::is_cancelled` takes a mutex that every processor shares (3 % of the
/// benchmark's CPU profile, once per message). Work in progress waits on the token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Abandon {
    raised: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Abandon {
    /// Raises it: the flag first, so that whoever the token wakes sees it raised.
    pub(crate) fn cancel(&self) {
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once it is raised.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}
