//! The trait users implement.

use std::future::Future;

use crate::Message;

/// User code that processes messages, one at a time.
///
/// The framework creates a pool of processors (see
/// [`ConsumerConfigBuilder::processors`](crate::ConsumerConfigBuilder::processors)), each from
/// the factory given to [`ConsumerSystem::start`](crate::ConsumerSystem::start), and each on an
/// actor of its own. A processor receives the messages routed to it (by partition, by key or
/// in turn, see [`OrderingMode`](crate::OrderingMode)) in offset order per partition, and
/// never runs two calls at once, so it can keep `&mut self` state (a connection, a buffer)
/// without locks.
///
/// The futures need not be `Send`: a processor lives on one thread for its whole life.
///
/// # Guarantees
///
/// - A message's offset is committed only after [`process`](Processor::process) returned `Ok`
///   for it (or the [`FailurePolicy`](crate::FailurePolicy) skipped or dead-lettered it) and
///   for every earlier message of its partition (at-least-once).
/// - After a graceful stop, every message whose `process` returned `Ok` is committed, so a
///   restarted system sees none of them again. After a crash, messages that finished but were
///   not committed yet are delivered again: make processing idempotent where duplicates hurt.
/// - If `process` returns an error or panics, the [`FailurePolicy`](crate::FailurePolicy)
///   decides: retry after a backoff, then stop the system (the default; the message is
///   delivered again on the next start), skip it, or send it to a dead-letter topic. After a
///   panic the processor is dropped and a fresh one is made with the factory (its `on_start`
///   runs again).
pub trait Processor: 'static {
    /// Called once when the processor's actor starts, before it receives any message: open
    /// connections here. An error stops the system from starting.
    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }

    /// Processes one message. Returning `Ok` marks it finished, so its offset may be committed.
    fn process(&mut self, message: &Message) -> impl Future<Output = anyhow::Result<()>>;

    /// Called once on every graceful stop, after the drain and before the final commit: flush
    /// buffers and release connections here. It is bounded by what is left of the shutdown
    /// timeout. An error is logged and reported; it does not change what is committed.
    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        async { Ok(()) }
    }
}
