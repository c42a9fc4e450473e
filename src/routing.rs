//! Which processor a message goes to.
//!
//! A processor handles one message at a time, in the order it received them. So whatever
//! always goes to the same processor is processed in offset order: a partition in
//! [`OrderingMode::PerPartition`], a key in [`OrderingMode::PerKey`]. Different partitions or
//! keys run in parallel, as far as the pool size allows.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;

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

/// The topics a pool of processors reads.
#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    /// Whatever the system subscribed to (a system of one pool).
    Any,
    /// Topics by name, or by pattern (a regular expression, from a subscription that starts
    /// with `^`, as librdkafka's).
    Topics(Vec<TopicMatcher>),
}

#[derive(Debug, Clone)]
pub(crate) enum TopicMatcher {
    Name(String),
    Pattern(regex::Regex),
}

/// How the group protocol matches a pattern subscription to topics: librdkafka matches it
/// itself under the classic protocol (POSIX extended regular expressions, found anywhere in
/// the name after the leading `^`); under the consumer protocol the broker does (RE2J, the
/// whole name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternMatch {
    Search,
    Whole,
}

impl TopicMatcher {
    /// A subscription as librdkafka reads it: a pattern when it starts with `^`. Patterns are
    /// refused where POSIX extended expressions, RE2J and Rust's `regex` could read them
    /// differently: escapes of letters and digits (`\d` is a `d` to POSIX), `(?` groups and
    /// flags, lazy quantifiers.
    pub(crate) fn parse(subscription: &str, how: PatternMatch) -> Result<Self, String> {
        if !subscription.starts_with('^') {
            return Ok(TopicMatcher::Name(subscription.to_owned()));
        }
        let chars: Vec<char> = subscription.chars().collect();
        for pair in chars.windows(2) {
            let refused = match pair {
                ['\\', c] if c.is_ascii_alphanumeric() => true,
                ['(', '?'] | ['*' | '+' | '?' | '}', '?'] => true,
                _ => false,
            };
            if refused {
                return Err(format!(
                    "`{}{}` reads differently in librdkafka's POSIX expressions and the \
                     broker's RE2J: write it with [] classes and plain groups",
                    pair[0], pair[1]
                ));
            }
        }
        let pattern = match how {
            PatternMatch::Search => subscription.to_owned(),
            PatternMatch::Whole => format!("^(?:{})$", &subscription[1..]),
        };
        regex::Regex::new(&pattern)
            .map(TopicMatcher::Pattern)
            .map_err(|error| error.to_string())
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatcher::Name(name) => name == topic,
            TopicMatcher::Pattern(pattern) => pattern.is_match(topic),
        }
    }
}

impl Subscription {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Subscription::Any => true,
            Subscription::Topics(matchers) => matchers.iter().any(|m| m.matches(topic)),
        }
    }
}

/// Maps partitions onto the processors: the pools of the system's routes, each a range of
/// processors, and within a pool by partition or key.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    pools: Vec<Pool>,
}

/// A route's processors, as the Router sees them.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub(crate) subscription: Subscription,
    pub(crate) size: usize,
    /// Whether its processors run the partition hooks.
    pub(crate) hooks: bool,
    range: Range<usize>,
}

impl Pool {
    pub(crate) fn new(subscription: Subscription, size: usize, hooks: bool) -> Self {
        Pool {
            subscription,
            size,
            hooks,
            range: 0..0,
        }
    }
}

impl Router {
    /// One pool of `processors` for every topic, without partition hooks.
    #[cfg(test)]
    pub(crate) fn new(processors: usize) -> Self {
        Router::with_pools(vec![Pool::new(Subscription::Any, processors, false)])
    }

    /// Pools in order, each given the next range of processors; a topic goes to the first
    /// pool whose subscription matches it.
    pub(crate) fn with_pools(pools: Vec<Pool>) -> Self {
        let mut first = 0;
        let pools = pools
            .into_iter()
            .map(|pool| {
                assert!(pool.size > 0, "a processor pool has at least one processor");
                let range = first..first + pool.size;
                first += pool.size;
                Pool { range, ..pool }
            })
            .collect();
        Router { pools }
    }

    /// How many processors there are, in every pool.
    #[cfg(test)]
    pub(crate) fn pool_size(&self) -> usize {
        self.pools.last().map_or(0, |pool| pool.range.end)
    }

    /// The processors of the pool that reads `topic`, if one does.
    pub(crate) fn pool_of(&self, topic: &str) -> Option<Range<usize>> {
        self.pool_reading(topic).map(|pool| pool.range.clone())
    }

    /// Whether the processors that read `topic` run the partition hooks.
    pub(crate) fn hooks_of(&self, topic: &str) -> bool {
        self.pool_reading(topic).is_some_and(|pool| pool.hooks)
    }

    fn pool_reading(&self, topic: &str) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|pool| pool.subscription.matches(topic))
    }

    /// The processor for a partition, within its pool. The partitions of one topic are spread
    /// round-robin so that `n` partitions on `n` processors get one each; the topic's hash
    /// (the same for every process built from one release) shifts where each topic starts,
    /// so that several topics spread too.
    pub(crate) fn processor_for(pool: &Range<usize>, topic: &str, partition: i32) -> usize {
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        let size = pool.len();
        let start = hasher.finish() % size as u64;
        pool.start + (start as usize + partition.unsigned_abs() as usize) % size
    }

    /// The processor for a message key, within its pool: the same for equal keys, spread
    /// evenly otherwise.
    pub(crate) fn processor_for_key(pool: &Range<usize>, key: &[u8]) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        pool.start + (hasher.finish() % pool.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_partition_always_goes_to_the_same_processor() {
        let pool = 0..5;
        for partition in 0..20 {
            let first = Router::processor_for(&pool, "orders", partition);
            assert!(first < 5);
            assert_eq!(Router::processor_for(&pool, "orders", partition), first);
        }
    }

    #[test]
    fn as_many_partitions_as_processors_get_one_processor_each() {
        let used: HashSet<usize> = (0..8)
            .map(|p| Router::processor_for(&(0..8), "t", p))
            .collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn equal_keys_go_to_one_processor_and_many_keys_spread() {
        let pool = 0..8;
        let first = Router::processor_for_key(&pool, b"customer-17");
        assert_eq!(Router::processor_for_key(&pool, b"customer-17"), first);
        let used: HashSet<usize> = (0..1000)
            .map(|k| Router::processor_for_key(&pool, format!("customer-{k}").as_bytes()))
            .collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn a_pool_of_one_takes_everything() {
        let router = Router::new(1);
        let pool = router.pool_of("a").unwrap();
        assert_eq!(Router::processor_for(&pool, "a", 3), 0);
        assert_eq!(Router::processor_for(&pool, "b", 0), 0);
    }

    #[test]
    fn each_topic_goes_to_the_first_pool_that_subscribed_to_it_by_name_or_pattern() {
        let topics = |subscriptions: &[&str]| {
            Subscription::Topics(
                subscriptions
                    .iter()
                    .map(|s| TopicMatcher::parse(s, PatternMatch::Search).unwrap())
                    .collect(),
            )
        };
        let router = Router::with_pools(vec![
            Pool::new(topics(&["orders"]), 2, false),
            Pool::new(topics(&["^orders-.*", "payments"]), 3, true),
            Pool::new(topics(&["^.*"]), 1, false),
        ]);
        assert_eq!(router.pool_size(), 6);
        assert_eq!(router.pool_of("orders"), Some(0..2));
        assert_eq!(router.pool_of("orders-eu"), Some(2..5));
        assert_eq!(router.pool_of("payments"), Some(2..5));
        assert_eq!(router.pool_of("audit"), Some(5..6));
        assert!(router.hooks_of("payments") && !router.hooks_of("orders"));
        let only = Router::with_pools(vec![Pool::new(topics(&["orders"]), 1, false)]);
        assert_eq!(only.pool_of("ordersx"), None, "a name is not a prefix");
        for partition in 0..10 {
            assert!((2..5).contains(&Router::processor_for(&(2..5), "payments", partition)));
        }
    }

    #[test]
    fn patterns_match_as_the_group_protocol_does_and_ambiguous_ones_are_refused() {
        let search = TopicMatcher::parse("^orders", PatternMatch::Search).unwrap();
        let whole = TopicMatcher::parse("^orders", PatternMatch::Whole).unwrap();
        // Classic: librdkafka searches (the ^ anchors the start only); the consumer protocol:
        // the broker matches the whole name.
        assert!(search.matches("orders-eu") && search.matches("orders"));
        assert!(!whole.matches("orders-eu") && whole.matches("orders"));
        let alternatives = TopicMatcher::parse("^(orders|refunds)-[0-9]+", PatternMatch::Whole);
        assert!(alternatives.unwrap().matches("refunds-12"));
        for ambiguous in [
            "^orders-\\d+",
            "^(?i)orders",
            "^(?:a|b)",
            "^a.*?b",
            "^orders-(",
        ] {
            assert!(
                TopicMatcher::parse(ambiguous, PatternMatch::Search).is_err(),
                "{ambiguous}"
            );
        }
        assert!(TopicMatcher::parse("^orders\\.eu", PatternMatch::Search).is_ok());
    }
}
