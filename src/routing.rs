//! Which processor a message goes to.
//!
//! A processor handles one message at a time, in the order it received them. So whatever
//! always goes to the same processor is processed in offset order: a partition in
//! [`OrderingMode::PerPartition`], a key in [`OrderingMode::PerKey`]. Different partitions or
//! keys run in parallel, as far as the pool size allows.

use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use crate::offsets::AssignmentId;

/// Which messages must be processed one after another, in offset order; the rest may run in
/// parallel across the processor pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrderingMode {
    /// The messages of a partition are processed in offset order (the default). Parallelism is
    /// at most the number of assigned partitions.
    #[default]
    PerPartition,
    /// The messages with the same key are processed in offset order; different keys run in
    /// parallel, up to the pool size, even within one partition. Messages without a key are
    /// processed in partition order.
    PerKey,
    /// No order: messages are spread over the pool as they come.
    Unordered,
}

/// The messages that must be processed one after another: a failed message holds back its
/// lane, and only its lane, until it is retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// A partition under one assignment (per-partition mode, and keyless messages per key).
    Partition(AssignmentId),
    /// A key within a partition under one assignment (per-key mode).
    Key(AssignmentId, Bytes),
    /// One message alone (unordered mode).
    Message(AssignmentId, i64),
}

impl Lane {
    /// The assignment of the partition the lane belongs to.
    pub(crate) fn assignment(&self) -> AssignmentId {
        match self {
            Lane::Partition(assignment)
            | Lane::Key(assignment, _)
            | Lane::Message(assignment, _) => *assignment,
        }
    }
}

/// Maps partitions onto a pool of processors.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    pool_size: usize,
}

impl Router {
    pub(crate) fn new(pool_size: usize) -> Self {
        assert!(pool_size > 0, "a processor pool has at least one processor");
        Router { pool_size }
    }

    /// How many processors there are.
    pub(crate) fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The processor for a partition. The partitions of one topic are spread round-robin so
    /// that `n` partitions on `n` processors get one each; the topic's hash (the same for
    /// every process built from one release) shifts where each topic starts, so that several
    /// topics spread too.
    pub(crate) fn processor_for(&self, topic: &str, partition: i32) -> usize {
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        let start = hasher.finish() % self.pool_size as u64;
        (start as usize + partition.unsigned_abs() as usize) % self.pool_size
    }

    /// The processor for a message key: the same for equal keys, spread evenly otherwise.
    pub(crate) fn processor_for_key(&self, key: &[u8]) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.pool_size as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_partition_always_goes_to_the_same_processor() {
        let router = Router::new(5);
        for partition in 0..20 {
            let first = router.processor_for("orders", partition);
            assert!(first < 5);
            assert_eq!(router.processor_for("orders", partition), first);
        }
    }

    #[test]
    fn as_many_partitions_as_processors_get_one_processor_each() {
        let router = Router::new(8);
        let used: HashSet<usize> = (0..8).map(|p| router.processor_for("t", p)).collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn equal_keys_go_to_one_processor_and_many_keys_spread() {
        let router = Router::new(8);
        let first = router.processor_for_key(b"customer-17");
        assert_eq!(router.processor_for_key(b"customer-17"), first);
        let used: HashSet<usize> = (0..1000)
            .map(|k| router.processor_for_key(format!("customer-{k}").as_bytes()))
            .collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn a_pool_of_one_takes_everything() {
        let router = Router::new(1);
        assert_eq!(router.processor_for("a", 3), 0);
        assert_eq!(router.processor_for("b", 0), 0);
    }
}
