//! What a processor task runs: the user's [`Processor`] or [`BatchProcessor`] behind one
//! interface, so that one task loop (`actors/processor/task.rs`) serves both. A `Processor` is
//! a batch processor whose batches hold one message.

use std::future::Future;

use crate::{BatchProcessor, Message, Processor, StoredPositions, TopicPartition};

/// The user's code as the processor task calls it.
pub(crate) trait Work: 'static {
    /// Whether the partition hooks are called.
    const PARTITION_HOOKS: bool;
    /// Whether batches may hold more than one message.
    const BATCHES: bool;

    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>>;
    /// Runs a batch: one message unless [`BATCHES`](Self::BATCHES).
    fn run(&mut self, batch: &[Message]) -> impl Future<Output = anyhow::Result<()>>;
    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>>;
    fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<StoredPositions>>;
    fn on_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<()>>;
}

/// A [`Processor`], one message per batch.
pub(crate) struct One<P>(pub(crate) P);

/// A [`BatchProcessor`].
pub(crate) struct Batches<B>(pub(crate) B);

impl<P: Processor> Work for One<P> {
    const PARTITION_HOOKS: bool = P::PARTITION_HOOKS;
    const BATCHES: bool = false;

    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_start()
    }

    async fn run(&mut self, batch: &[Message]) -> anyhow::Result<()> {
        match batch {
            [message] => self.0.process(message).await,
            // The task's batch limit is one message for a `Processor`.
            _ => Err(anyhow::anyhow!(
                "internal failure: a processor was handed {} messages at once",
                batch.len()
            )),
        }
    }

    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_stop()
    }

    fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<StoredPositions>> {
        self.0.on_assigned(partitions)
    }

    fn on_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_revoked(partitions)
    }
}

impl<B: BatchProcessor> Work for Batches<B> {
    const PARTITION_HOOKS: bool = B::PARTITION_HOOKS;
    const BATCHES: bool = true;

    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_start()
    }

    fn run(&mut self, batch: &[Message]) -> impl Future<Output = anyhow::Result<()>> {
        self.0.process_batch(batch)
    }

    fn on_stop(&mut self) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_stop()
    }

    fn on_assigned(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<StoredPositions>> {
        self.0.on_assigned(partitions)
    }

    fn on_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = anyhow::Result<()>> {
        self.0.on_revoked(partitions)
    }
}
