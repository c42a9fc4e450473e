//! The failure policy: how often a failed message is retried, how long to wait in between,
//! and what happens when the attempts are used up.
//!
//! Pure code, unit-tested without Kafka; the processor actors apply it.

use std::fmt;
use std::time::Duration;

/// What happens to a message whose attempts are used up (or that failed permanently).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exhausted {
    /// Stop the system gracefully (the default). The message is not committed and is
    /// delivered again on the next start; so is everything after it in its partition.
    Stop,
    /// Log the message at `warn`, count it in the report, and treat it as finished.
    Skip,
    /// Produce the message to a dead-letter topic, and treat it as finished once the topic's
    /// leader acknowledged it. If it cannot be acknowledged, the message is not committed and
    /// the system stops.
    DeadLetter {
        /// The topic; `None` for `<topic>.dlq` after the message's own topic.
        topic: Option<String>,
    },
}

/// How failed messages are handled: retried with exponential backoff and jitter up to a number
/// of attempts, then stopped on, skipped or dead-lettered.
///
/// A failure is a `process` call that returned an error or panicked. Retries of a message hold
/// back only the messages that must stay behind it (its partition, or its key in
/// [`OrderingMode::PerKey`](crate::OrderingMode::PerKey)); other messages go on, polling
/// goes on, and a shutdown cuts the wait short (the message is then delivered again after the
/// restart). An error marked [`Permanent`] skips the remaining attempts; one marked
/// [`RetryAfter`] is retried after the wait it names instead of the backoff.
///
/// ```
/// use std::time::Duration;
/// use kafka_actors::FailurePolicy;
///
/// // Five attempts, waiting 100 ms, 200 ms, 400 ms, 800 ms (each +-20 %), then the DLQ.
/// let policy = FailurePolicy::retry(5)
///     .backoff(Duration::from_millis(100), Duration::from_secs(10))
///     .then_dead_letter();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until it is given to `failure_policy`"]
pub struct FailurePolicy {
    pub(crate) attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    /// The backoff is drawn from `[1 - jitter, 1 + jitter]` times its nominal value.
    pub(crate) jitter: f64,
    pub(crate) exhausted: Exhausted,
}

impl Default for FailurePolicy {
    /// Three attempts, 100 ms then 200 ms apart, then stop.
    fn default() -> Self {
        FailurePolicy::retry(3)
    }
}

impl FailurePolicy {
    /// `attempts` attempts in all (the first one included; 1 means no retry), waiting 100 ms
    /// before the first retry and twice as long before each next one, at most 10 s; then stop.
    pub fn retry(attempts: u32) -> Self {
        FailurePolicy {
            attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
            exhausted: Exhausted::Stop,
        }
    }

    /// No retries: the first failure stops the system.
    pub fn stop_at_once() -> Self {
        FailurePolicy::retry(1)
    }

    /// The wait before the first retry, doubled for each next one up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// How far each wait may randomly differ from its nominal value, as a fraction (default
    /// 0.2): spreads out the retries of many consumers that failed at once.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// When the attempts are used up, stop the system (the default).
    pub fn then_stop(mut self) -> Self {
        self.exhausted = Exhausted::Stop;
        self
    }

    /// When the attempts are used up, skip the message.
    pub fn then_skip(mut self) -> Self {
        self.exhausted = Exhausted::Skip;
        self
    }

    /// When the attempts are used up, produce the message to `<topic>.dlq`.
    pub fn then_dead_letter(mut self) -> Self {
        self.exhausted = Exhausted::DeadLetter { topic: None };
        self
    }

    /// When the attempts are used up, produce the message to `topic`.
    pub fn then_dead_letter_to(mut self, topic: impl Into<String>) -> Self {
        self.exhausted = Exhausted::DeadLetter {
            topic: Some(topic.into()),
        };
        self
    }

    /// What happens when the attempts are used up.
    pub fn exhausted(&self) -> &Exhausted {
        &self.exhausted
    }

    /// Checks the values, naming the one at fault.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.attempts == 0 {
            return Err("must allow at least one attempt".to_owned());
        }
        if self.initial_backoff > self.max_backoff {
            return Err(format!(
                "the initial backoff ({:?}) is longer than the maximum ({:?})",
                self.initial_backoff, self.max_backoff
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be at least 0 and below 1, got {}",
                self.jitter
            ));
        }
        if let Exhausted::DeadLetter { topic: Some(topic) } = &self.exhausted
            && topic.trim().is_empty()
        {
            return Err("the dead-letter topic is empty".to_owned());
        }
        Ok(())
    }

    /// What to do after the `attempt`-th attempt failed (counting from 1) with an error that
    /// gave `advice`.
    pub(crate) fn after_failure(&self, attempt: u32, advice: Advice) -> AfterFailure {
        match advice {
            Advice::Permanent => AfterFailure::GiveUp,
            _ if attempt >= self.attempts => AfterFailure::GiveUp,
            Advice::RetryAfter(wait) => AfterFailure::RetryAfter(wait),
            Advice::Backoff => {
                AfterFailure::RetryAfter(self.backoff_after(attempt, rand::random::<f64>()))
            }
        }
    }

    /// The wait before the messages of a batch that failed as a whole are tried again, each
    /// alone: no attempt is counted against any of them (which one failed the batch is not
    /// known), so the wait is the one after the attempts each failed before, at least the
    /// first, and at least what the batch's error asked for.
    pub(crate) fn isolation_backoff(&self, failed_before: u32, advice: Advice) -> Duration {
        let backoff = self.backoff_after(failed_before.max(1), rand::random::<f64>());
        match advice {
            Advice::RetryAfter(wait) => backoff.max(wait),
            Advice::Backoff | Advice::Permanent => backoff,
        }
    }

    /// The wait after the `attempt`-th failed attempt; `random` in `[0, 1)` places it within
    /// the jitter.
    fn backoff_after(&self, attempt: u32, random: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let nominal = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * random;
        nominal.mul_f64(factor)
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    RetryAfter(Duration),
    GiveUp,
}

/// Marks an error as permanent: retrying cannot help (a malformed payload, say), so the
/// failure policy skips the remaining attempts and goes straight to what follows them.
///
/// ```
/// # use kafka_actors::{Message, Permanent};
/// fn parse(message: &Message) -> anyhow::Result<u64> {
///     let text = message.payload_str().ok_or(Permanent)?;
///     Ok(text.parse().map_err(|error| anyhow::Error::new(error).context(Permanent))?)
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permanent;

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permanent failure")
    }
}

impl std::error::Error for Permanent {}

/// Marks an error as one to retry no earlier than after the wait it carries, instead of the
/// policy's backoff: a rate limit's `Retry-After`, a lock held for a known time. The attempt
/// still counts: when the policy's attempts are used up, what follows them happens. The wait
/// is kept as given (no jitter, and not shortened to the policy's maximum backoff); the
/// message's lane waits as for any retry, and a stop cuts the wait short (the message is then
/// delivered again after the restart). For waits of minutes and more, which hold the lane
/// and the in-flight capacity meanwhile, a retry topic serves better. [`Permanent`] wins
/// over it.
///
/// ```
/// # use std::time::Duration;
/// # use kafka_actors::{Message, RetryAfter};
/// fn throttled(message: &Message, retry_after_secs: u64) -> anyhow::Result<()> {
///     Err(anyhow::anyhow!("HTTP 429 for offset {}", message.offset())
///         .context(RetryAfter(Duration::from_secs(retry_after_secs))))
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry after {:?}", self.0)
    }
}

impl std::error::Error for RetryAfter {}

/// What a failed attempt's error asks of the failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Advice {
    /// Nothing: the policy's backoff (a panic, an unmarked error).
    #[default]
    Backoff,
    /// Marked [`Permanent`]: no more attempts.
    Permanent,
    /// Marked [`RetryAfter`]: this wait instead of the backoff.
    RetryAfter(Duration),
}

/// What a processing error was marked with, directly or as context ([`Permanent`] first).
pub(crate) fn advice(error: &anyhow::Error) -> Advice {
    if error.downcast_ref::<Permanent>().is_some() {
        Advice::Permanent
    } else if let Some(RetryAfter(wait)) = error.downcast_ref::<RetryAfter>() {
        Advice::RetryAfter(*wait)
    } else {
        Advice::Backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter(attempts: u32) -> FailurePolicy {
        FailurePolicy::retry(attempts)
            .backoff(Duration::from_millis(100), Duration::from_millis(1000))
            .jitter(0.0)
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = no_jitter(10);
        let waits: Vec<u128> = (1..=6)
            .map(|attempt| policy.backoff_after(attempt, 0.5).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_the_wait_within_its_fraction() {
        let policy = no_jitter(10).jitter(0.2);
        assert_eq!(policy.backoff_after(1, 0.0).as_millis(), 80);
        assert_eq!(policy.backoff_after(1, 0.5).as_millis(), 100);
        assert!(policy.backoff_after(1, 0.999_999).as_millis() <= 120);
    }

    #[test]
    fn attempts_run_out_and_permanent_errors_skip_them() {
        let policy = no_jitter(3);
        assert!(matches!(
            policy.after_failure(1, Advice::Backoff),
            AfterFailure::RetryAfter(_)
        ));
        assert!(matches!(
            policy.after_failure(2, Advice::Backoff),
            AfterFailure::RetryAfter(_)
        ));
        assert_eq!(
            policy.after_failure(3, Advice::Backoff),
            AfterFailure::GiveUp
        );
        assert_eq!(
            policy.after_failure(1, Advice::Permanent),
            AfterFailure::GiveUp
        );
        assert_eq!(
            FailurePolicy::stop_at_once().after_failure(1, Advice::Backoff),
            AfterFailure::GiveUp
        );
    }

    #[test]
    fn an_error_that_names_its_wait_gets_it_within_the_attempts() {
        let policy = no_jitter(3);
        let wait = Duration::from_secs(30);
        // Longer than the maximum backoff (1 s), kept as given.
        assert_eq!(
            policy.after_failure(1, Advice::RetryAfter(wait)),
            AfterFailure::RetryAfter(wait)
        );
        assert_eq!(
            policy.after_failure(2, Advice::RetryAfter(Duration::from_millis(5))),
            AfterFailure::RetryAfter(Duration::from_millis(5))
        );
        assert_eq!(
            policy.after_failure(3, Advice::RetryAfter(wait)),
            AfterFailure::GiveUp
        );
        assert_eq!(policy.isolation_backoff(1, Advice::RetryAfter(wait)), wait);
        assert_eq!(
            policy.isolation_backoff(1, Advice::RetryAfter(Duration::from_millis(5))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let policy = no_jitter(u32::MAX);
        assert_eq!(policy.backoff_after(u32::MAX - 1, 0.5).as_millis(), 1000);
    }

    #[test]
    fn marks_are_found_directly_and_as_context_and_permanent_wins() {
        let wait = RetryAfter(Duration::from_secs(2));
        assert_eq!(advice(&anyhow::Error::new(Permanent)), Advice::Permanent);
        assert_eq!(
            advice(&anyhow::anyhow!("bad payload").context(Permanent)),
            Advice::Permanent
        );
        assert_eq!(
            advice(&anyhow::anyhow!("429").context(wait)),
            Advice::RetryAfter(wait.0)
        );
        assert_eq!(
            advice(&anyhow::anyhow!("429").context(wait).context(Permanent)),
            Advice::Permanent
        );
        assert_eq!(advice(&anyhow::anyhow!("database down")), Advice::Backoff);
    }

    #[test]
    fn nonsense_policies_are_refused() {
        assert!(FailurePolicy::retry(0).validate().is_err());
        assert!(
            FailurePolicy::retry(2)
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(FailurePolicy::retry(2).jitter(1.5).validate().is_err());
        assert!(
            FailurePolicy::retry(2)
                .then_dead_letter_to(" ")
                .validate()
                .is_err()
        );
        assert!(FailurePolicy::default().validate().is_ok());
    }
}
