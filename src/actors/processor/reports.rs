//! The task's reports to the OffsetTracker: what finished and what was given up, sent in
//! batches, and only then let go of, so that the messages stay in flight until the tracker
//! knows.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::Recipient;

use crate::actors::messages::Completions;
use crate::message::Message;

/// The longest a finished message waits before the tracker hears of it (it stays in flight
/// until then). Completions are reported in batches to keep the hot path cheap.
const REPORT_INTERVAL: Duration = Duration::from_millis(50);
/// Completions reported at once at most; a fast processor reports every this many messages.
const REPORT_BATCH: usize = 256;
/// Of a report's messages, how many at most go into the duration histograms, evenly spread
/// (all of them when there are no more). Exporters pay per sample (Prometheus' reads the clock
/// for each one): timing every message of a fast consumer cost it about a tenth of its
/// throughput; a sample of a few per cent costs nothing measurable and keeps the shape.
const TIMED_PER_REPORT: usize = 16;

/// Finished messages and messages given up, until they are reported to the tracker: they
/// stay in flight until then, so that a revocation that waits for a partition's in-flight
/// work to reach zero also waits for its completions.
pub(super) struct Reports {
    tracker: Recipient<Completions>,
    /// Finished and not reported yet.
    done: Vec<Done>,
    /// Given up unfinished on purpose and not reported yet.
    released: Vec<Message>,
    /// When the oldest unreported completion was added.
    unreported_since: Option<Instant>,
}

/// A finished message waiting to be reported, and how long its successful attempt took.
struct Done {
    message: Message,
    took: Option<Duration>,
}

impl Reports {
    /// Nothing reported yet; the reports go to `tracker`.
    pub(super) fn new(tracker: Recipient<Completions>) -> Self {
        Reports {
            tracker,
            done: Vec::new(),
            released: Vec::new(),
            unreported_since: None,
        }
    }

    /// Records a finished message, with how long its attempt took when it was processed
    /// successfully (`None`: skipped or dead-lettered). Its figures are recorded with the
    /// report (its durations if it is among the report's `TIMED_PER_REPORT`).
    pub(super) fn finished(&mut self, message: Message, took: Option<Duration>) {
        self.note_unreported();
        self.done.push(Done { message, took });
        if self.done.len() + self.released.len() >= REPORT_BATCH {
            self.flush();
        }
    }

    /// Records a message given up unfinished, on purpose: reported as released, never
    /// committed.
    pub(super) fn released(&mut self, message: Message) {
        self.note_unreported();
        self.released.push(message);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.unreported_since.is_none()
    }

    fn note_unreported(&mut self) {
        if self.unreported_since.is_none() {
            self.unreported_since = Some(Instant::now());
        }
    }

    /// When the oldest completion is due to be reported.
    pub(super) fn due_at(&self) -> Option<tokio::time::Instant> {
        self.unreported_since
            .map(|since| tokio::time::Instant::from_std(since + REPORT_INTERVAL))
    }

    /// Reports completions that waited for [`REPORT_INTERVAL`]: messages that run back to
    /// back without ever waiting never reach the select that reports on time.
    pub(super) fn flush_if_due(&mut self) {
        if self
            .unreported_since
            .is_some_and(|since| since.elapsed() >= REPORT_INTERVAL)
        {
            self.flush();
        }
    }

    /// Tells the tracker what finished and what was given up, then lets go of the messages:
    /// only then do they leave the in-flight counts.
    pub(super) fn flush(&mut self) {
        self.unreported_since = None;
        if self.done.is_empty() && self.released.is_empty() {
            return;
        }
        // Done with as the tracker hears of it (at most REPORT_INTERVAL after it finished).
        let now = unix_millis();
        let stride = (self.done.len() / TIMED_PER_REPORT).max(1);
        let finished = self
            .done
            .iter()
            .enumerate()
            .map(|(index, Done { message, took })| {
                let instruments = &message.assigned().instruments;
                let timed = index % stride == 0;
                if let Some(took) = took {
                    instruments.processed.increment(1);
                    if timed {
                        instruments.processing_duration.record(*took);
                    }
                }
                if let (true, Some(timestamp)) = (timed, message.timestamp()) {
                    let latency = now.saturating_sub(timestamp).max(0) as f64 / 1000.0;
                    instruments.end_to_end_latency.record(latency);
                }
                message.position()
            })
            .collect();
        let released = self.released.iter().map(Message::position).collect();
        self.tracker.do_send(Completions { finished, released });
        Message::release_in_flight(
            self.done
                .iter_mut()
                .map(|done| &mut done.message)
                .chain(self.released.iter_mut()),
        );
        self.done.clear();
        self.released.clear();
    }
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
