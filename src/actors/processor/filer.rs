//! What the filing of a batch's outcome does in the task (`batch::file` decides, the `Filer`
//! carries it out): reports, log lines, figures, and the dead letters to produce.

use std::time::Duration;

use super::LOG_TARGET;
use super::ProcessorShared;
use super::reports::Reports;
use crate::batch::{Filing, Retry};
use crate::message::Message;
use crate::report::StopReason;

/// Where a message is, for log lines.
fn place(message: &Message) -> String {
    format!("{}@{}", message.topic_partition(), message.offset())
}

/// What the filing of a batch does in the task: reports, logs, figures, and the dead letters
/// to produce once it is done.
pub(super) struct Filer<'a, W> {
    pub(super) reports: &'a mut Reports,
    pub(super) shared: &'a ProcessorShared<W>,
    /// How long the attempt took.
    pub(super) took: Duration,
    pub(super) dead_letters: Vec<(Message, u32, String)>,
}

impl<W> Filing<Message> for Filer<'_, W> {
    fn processed(&mut self, message: Message) {
        self.reports.finished(message, Some(self.took));
    }

    fn retrying(&mut self, message: &Message, retry: Retry<'_>) {
        let Retry {
            attempts,
            backoff,
            error,
            isolating,
        } = retry;
        if isolating {
            log::debug!(target: LOG_TARGET, "{}: runs alone in {backoff:?}", place(message));
        } else {
            log::warn!(
                target: LOG_TARGET,
                "{}: attempt {attempts} failed, retrying in {backoff:?}: {error}",
                place(message)
            );
        }
        self.shared.metrics.retried(&message.assigned().instruments);
    }

    fn not_retried(&mut self, message: &Message, attempts: u32, error: &str, why: &'static str) {
        log::info!(
            target: LOG_TARGET,
            "{}: attempt {attempts} failed ({error}); not retried: {why}",
            place(message)
        );
    }

    fn skipped(&mut self, message: Message, attempts: u32, error: &str) {
        log::warn!(
            target: LOG_TARGET,
            "{}: skipped after {attempts} attempts: {error}",
            place(&message)
        );
        self.shared.metrics.skipped(&message.assigned().instruments);
        self.reports.finished(message, None);
    }

    fn dead_letter(&mut self, message: Message, attempts: u32, error: &str) {
        self.dead_letters
            .push((message, attempts, error.to_owned()));
    }

    fn stopping(&mut self, message: &Message, attempts: u32, error: &str) {
        log::error!(
            target: LOG_TARGET,
            "{}: failed after {attempts} attempts: {error}; stopping",
            place(message)
        );
        self.shared
            .stop
            .request_graceful(StopReason::ProcessingFailed {
                partition: message.topic_partition().clone(),
                offset: message.offset(),
                error: format!("{error} (after {attempts} attempts)"),
            });
    }

    fn released(&mut self, message: Message) {
        self.reports.released(message);
    }
}
