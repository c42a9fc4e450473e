//! Which processor a message goes to.
//!
//! Messages of one partition always go to the same processor, and a processor handles one
//! message at a time, so each partition is processed in offset order while different
//! partitions run in parallel.

use std::hash::{DefaultHasher, Hash, Hasher};

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
    fn a_pool_of_one_takes_everything() {
        let router = Router::new(1);
        assert_eq!(router.processor_for("a", 3), 0);
        assert_eq!(router.processor_for("b", 0), 0);
    }
}
