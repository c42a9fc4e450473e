//! A processor's measured speed, which sets its prefetch: what it holds is a few
//! milliseconds of work, so a stop or a revocation waits for little.

use std::time::Instant;

use crate::flow::{Credit, PrefetchLimit};

/// How many messages a speed measurement spans at most.
const MEASURE_EVERY: u32 = 256;

/// A processor's speed, measured over runs of messages processed back to back, and the
/// prefetch it implies.
#[derive(Default)]
pub(super) struct Speed {
    /// The least prefetch: a batch processor's batch size, so that a batch can fill.
    floor: usize,
    run_started: Option<Instant>,
    run_length: u32,
    /// Smoothed nanoseconds per message.
    nanos_per_message: Option<f64>,
}

impl Speed {
    /// A speed not measured yet, whose prefetch is at least `floor`.
    pub(super) fn new(floor: usize) -> Self {
        Speed {
            floor,
            ..Speed::default()
        }
    }

    pub(super) fn started(&mut self, credit: &Credit, limit: PrefetchLimit) -> bool {
        match self.run_started {
            None => self.run_started = Some(Instant::now()),
            Some(_) if self.run_length >= MEASURE_EVERY => return self.measure(credit, limit),
            Some(_) => {}
        }
        self.run_length += 1;
        false
    }

    /// Ends the run in progress (the queue ran dry, or it is long enough) and sets the
    /// prefetch from it. Returns whether the prefetch grew.
    pub(super) fn measure(&mut self, credit: &Credit, limit: PrefetchLimit) -> bool {
        let Some(started) = self.run_started.take() else {
            return false;
        };
        let length = std::mem::take(&mut self.run_length);
        if length == 0 {
            return false;
        }
        let nanos = started.elapsed().as_nanos() as f64 / f64::from(length);
        let smoothed = match self.nanos_per_message {
            Some(previous) => previous * 0.75 + nanos * 0.25,
            None => nanos,
        };
        self.nanos_per_message = Some(smoothed);
        let by_work = limit.work.as_nanos() as f64 / smoothed.max(1.0);
        let prefetch =
            (by_work as usize).clamp(self.floor.clamp(1, limit.messages), limit.messages.max(1));
        credit.set_prefetch(prefetch)
    }
}
