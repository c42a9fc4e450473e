//! Routes: one system (one group, one Fetcher) that reads several topics, each route with a
//! processor type, a pool of processors and a failure policy of its own.

use std::sync::Arc;

use actix::ArbiterHandle;
use tokio::sync::oneshot;

use crate::actors::messages::ProcessorHandle;
use crate::actors::processor::{self, ProcessorShared};
use crate::config::validation::is_valid_topic_name;
use crate::failure::Exhausted;
use crate::flow::{BatchLimit, PrefetchLimit};
use crate::routing::{PatternMatch, Pool as RouterPool, Subscription, TopicMatcher};
use crate::work::{Batches, One, Work};
use crate::{
    BatchProcessor, ConsumerConfig, Error, FailurePolicy, GroupProtocol, Processor, Result,
};

/// Topics read by a pool of processors of their own, with a failure policy of their own, in a
/// system of several routes ([`ConsumerSystem::run_routes`](crate::ConsumerSystem::run_routes)):
/// one consumer group, one Fetcher, one commit line, and each topic's messages handed to its
/// route's processors.
///
/// A topic is named, or matched by a pattern: a subscription that starts with `^` is a
/// regular expression (`^orders-.*`). Under the classic group protocol librdkafka finds it in
/// topic names (POSIX extended expressions) and assigns topics created later once its
/// metadata sees them (`topic.metadata.refresh.interval.ms`, 5 minutes by default); under the
/// consumer protocol the broker matches whole names (RE2J). Constructs they could read
/// differently (`\d`, `(?`, lazy quantifiers) are refused at start. A topic that several
/// routes match goes to the first of them; a topic assigned that no route matches stops the
/// system ([`StopReason::NoRoute`](crate::StopReason::NoRoute)). A pattern route names its
/// dead-letter topic, and no route may read a dead-letter topic. Ordering mode, limits,
/// prefetch and batch sizes are the system's; the number of processors and the failure
/// policy default to the configuration's; partition hooks run on the processors of the routes
/// that want them.
///
/// ```no_run
/// use kafka_actors::{ConsumerConfig, ConsumerSystem, FailurePolicy, Message, Processor, Route};
///
/// struct Orders;
/// impl Processor for Orders {
///     async fn process(&mut self, _: &Message) -> anyhow::Result<()> { Ok(()) }
/// }
/// struct Audit;
/// impl Processor for Audit {
///     async fn process(&mut self, _: &Message) -> anyhow::Result<()> { Ok(()) }
/// }
///
/// # async fn run() -> anyhow::Result<()> {
/// let config = ConsumerConfig::builder()
///     .brokers("127.0.0.1:9092")
///     .group_id("back-office")
///     .build()?;
/// let routes = [
///     Route::new("orders", || Orders)
///         .processors(8)
///         .failure_policy(FailurePolicy::retry(5).then_dead_letter()),
///     Route::new("^audit-.*", || Audit).processors(2),
/// ];
/// let report = ConsumerSystem::run_routes(config, routes).await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a route does nothing until it is given to `run_routes`"]
pub struct Route {
    subscriptions: Vec<String>,
    processors: Option<usize>,
    policy: Option<FailurePolicy>,
    pool: Arc<dyn Pool>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("subscriptions", &self.subscriptions)
            .field("processors", &self.processors)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// `topic` (or the topics a `^` pattern matches), read by [`Processor`]s from `factory`.
    pub fn new<P, F>(topic: impl Into<String>, factory: F) -> Self
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        Route::of(vec![topic.into()], move || One(factory()))
    }

    /// `topic` (or the topics a `^` pattern matches), read by [`BatchProcessor`]s from
    /// `factory`.
    pub fn batches<B, F>(topic: impl Into<String>, factory: F) -> Self
    where
        B: BatchProcessor,
        F: Fn() -> B + Send + Sync + 'static,
    {
        Route::of(vec![topic.into()], move || Batches(factory()))
    }

    /// The route of a system started with one factory: the configuration's topics.
    pub(crate) fn of<W, F>(subscriptions: Vec<String>, factory: F) -> Self
    where
        W: Work,
        F: Fn() -> W + Send + Sync + 'static,
    {
        Route {
            subscriptions,
            processors: None,
            policy: None,
            pool: Arc::new(Factory::<W>(Arc::new(factory))),
        }
    }

    /// Another topic (or `^` pattern) for this route.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.subscriptions.push(topic.into());
        self
    }

    /// How many processors this route has (default: the configuration's
    /// [`processors`](crate::ConsumerConfigBuilder::processors)).
    pub fn processors(mut self, processors: usize) -> Self {
        self.processors = Some(processors);
        self
    }

    /// The failure policy of this route's messages (default: the configuration's).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    pub(crate) fn processor_count(&self, config: &ConsumerConfig) -> usize {
        self.processors.unwrap_or(config.processors)
    }

    pub(crate) fn policy<'a>(&'a self, config: &'a ConsumerConfig) -> &'a FailurePolicy {
        self.policy.as_ref().unwrap_or(&config.failure_policy)
    }

    pub(crate) fn pool(&self) -> &dyn Pool {
        &*self.pool
    }
}

/// The routes of a system, checked: at least one, each with processors, a valid policy and
/// valid subscriptions. `single` says the routes came from one factory over the
/// configuration's topics, whose pool reads whatever the system subscribed to.
pub(crate) struct RouteSet {
    pub(crate) routes: Vec<Route>,
    single: bool,
}

impl RouteSet {
    /// The one route of a system started with one factory.
    pub(crate) fn single(route: Route) -> Self {
        RouteSet {
            routes: vec![route],
            single: true,
        }
    }

    /// Routes given by the application; the configuration names no topic of its own.
    pub(crate) fn given(routes: Vec<Route>) -> Self {
        RouteSet {
            routes,
            single: false,
        }
    }

    /// Checks the routes against the configuration, naming what is at fault.
    pub(crate) fn check(&self, config: &ConsumerConfig) -> Result<()> {
        if self.single {
            if config.topics.is_empty() {
                return Err(Error::config(
                    "topics",
                    "needs at least one topic (or `KAFKA_TOPICS`; or give routes to \
                     `ConsumerSystem::run_routes`)",
                ));
            }
            return Ok(());
        }
        if !config.topics.is_empty() {
            return Err(Error::config(
                "topics",
                "are given by the routes: leave them out of the configuration",
            ));
        }
        if self.routes.is_empty() {
            return Err(Error::config("routes", "needs at least one route"));
        }
        let how = pattern_match(config);
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            if route.processor_count(config) == 0 {
                return Err(Error::config(
                    "Route::processors",
                    format!("of {:?} must be at least 1", route.subscriptions),
                ));
            }
            if let Err(reason) = route.policy(config).validate() {
                return Err(Error::config("Route::failure_policy", reason));
            }
            for subscription in &route.subscriptions {
                if !seen.insert(subscription.as_str()) {
                    return Err(Error::config(
                        "Route",
                        format!("{subscription:?} is given twice: one route reads a topic"),
                    ));
                }
                if !subscription.starts_with('^') && !is_valid_topic_name(subscription) {
                    return Err(Error::config(
                        "Route",
                        format!("{subscription:?} is not a topic name, nor a `^` pattern"),
                    ));
                }
                TopicMatcher::parse(subscription, how).map_err(|error| {
                    Error::config("Route", format!("{subscription:?}: {error}"))
                })?;
            }
            self.check_dead_letters(route, config, how)?;
        }
        Ok(())
    }

    /// A route must not read its own dead letters: a dead-letter topic that a route's
    /// subscription matches would be read, fail and be dead-lettered again, without end.
    fn check_dead_letters(
        &self,
        route: &Route,
        config: &ConsumerConfig,
        how: PatternMatch,
    ) -> Result<()> {
        let refuse = |reason: String| Err(Error::config("Route::failure_policy", reason));
        match route.policy(config).exhausted() {
            Exhausted::DeadLetter { topic: None }
                if route.subscriptions.iter().any(|s| s.starts_with('^')) =>
            {
                refuse(format!(
                    "of {:?} dead-letters to `<topic>.dlq`, which its pattern may match: name \
                     the dead-letter topic (then_dead_letter_to)",
                    route.subscriptions
                ))
            }
            Exhausted::DeadLetter { topic: Some(topic) } => {
                let read = self.routes.iter().flat_map(|r| &r.subscriptions).any(|s| {
                    TopicMatcher::parse(s, how).is_ok_and(|matcher| matcher.matches(topic))
                });
                match read {
                    true => refuse(format!(
                        "dead-letters to {topic:?}, which a route reads: its dead letters would \
                         be processed again"
                    )),
                    false => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// What the consumer subscribes to.
    pub(crate) fn subscriptions<'a>(&'a self, config: &'a ConsumerConfig) -> Vec<&'a str> {
        match self.single {
            true => config.topics.iter().map(String::as_str).collect(),
            false => self
                .routes
                .iter()
                .flat_map(|route| route.subscriptions.iter().map(String::as_str))
                .collect(),
        }
    }

    /// Each route's processors, in order, for the router.
    pub(crate) fn pools(&self, config: &ConsumerConfig) -> Vec<RouterPool> {
        let how = pattern_match(config);
        self.routes
            .iter()
            .map(|route| {
                let subscription = match self.single {
                    true => Subscription::Any,
                    false => Subscription::Topics(
                        route
                            .subscriptions
                            .iter()
                            .filter_map(|s| TopicMatcher::parse(s, how).ok())
                            .collect(),
                    ),
                };
                RouterPool::new(
                    subscription,
                    route.processor_count(config),
                    route.pool.hooks(),
                )
            })
            .collect()
    }

    /// How many processors the routes have in all.
    pub(crate) fn processors(&self, config: &ConsumerConfig) -> usize {
        self.routes
            .iter()
            .map(|route| route.processor_count(config))
            .sum()
    }

    /// The topics read by name (patterns left out), each with its route's policy: the ones the
    /// startup checks, and their dead-letter topics (a pattern route's is named, checked by
    /// `check_dead_letters`).
    pub(crate) fn named_topics<'a>(
        &'a self,
        config: &'a ConsumerConfig,
    ) -> Vec<(&'a str, &'a FailurePolicy)> {
        let topics = |route: &'a Route| -> Vec<&'a str> {
            match self.single {
                true => config.topics.iter().map(String::as_str).collect(),
                false => route
                    .subscriptions
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !s.starts_with('^'))
                    .collect(),
            }
        };
        self.routes
            .iter()
            .flat_map(|route| {
                let policy = route.policy(config);
                topics(route).into_iter().map(move |topic| (topic, policy))
            })
            .collect()
    }

    /// Whether any route's processors want the partition hooks.
    pub(crate) fn hooks(&self) -> bool {
        self.routes.iter().any(|route| route.pool.hooks())
    }
}

/// How the configured group protocol matches patterns to topics.
fn pattern_match(config: &ConsumerConfig) -> PatternMatch {
    match config.group_protocol {
        GroupProtocol::Consumer => PatternMatch::Whole,
        _ => PatternMatch::Search,
    }
}

/// A route's processors, whatever the type of its user code: how to start one.
pub(crate) trait Pool: Send + Sync {
    /// Whether its processors want the partition hooks.
    fn hooks(&self) -> bool;

    /// Starts processor `index` with what every processor of the route shares (`shared`, whose
    /// factory is this pool's), on `arbiter`.
    fn spawn(
        &self,
        index: usize,
        shared: ProcessorShared<()>,
        arbiter: &ArbiterHandle,
    ) -> (ProcessorHandle, oneshot::Receiver<anyhow::Result<()>>);
}

/// A pool of processors made by a factory of `W`.
struct Factory<W>(Arc<dyn Fn() -> W + Send + Sync>);

impl<W: Work> Pool for Factory<W> {
    fn hooks(&self) -> bool {
        W::PARTITION_HOOKS
    }

    fn spawn(
        &self,
        index: usize,
        shared: ProcessorShared<()>,
        arbiter: &ArbiterHandle,
    ) -> (ProcessorHandle, oneshot::Receiver<anyhow::Result<()>>) {
        let batch = if W::BATCHES {
            shared.batch
        } else {
            BatchLimit::ONE
        };
        let shared = ProcessorShared {
            batch,
            prefetch: PrefetchLimit {
                // A batch processor holds at least a batch.
                messages: shared.prefetch.messages.max(batch.messages),
                ..shared.prefetch
            },
            ..shared.with_factory(self.0.clone())
        };
        processor::spawn(index, shared, arbiter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Processor for Nothing {
        async fn process(&mut self, _: &crate::Message) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn config(topics: &[&str]) -> ConsumerConfig {
        ConsumerConfig::builder()
            .brokers("b:1")
            .group_id("g")
            .topics(topics.iter().copied())
            .processors(3)
            .build()
            .unwrap()
    }

    fn fault(routes: RouteSet, config: &ConsumerConfig) -> String {
        match routes.check(config) {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_are_checked_against_the_configuration() {
        let single = || RouteSet::single(Route::of(Vec::new(), || One(Nothing)));
        assert_eq!(fault(single(), &config(&[])), "topics");
        assert!(single().check(&config(&["orders"])).is_ok());
        let given = |routes: Vec<Route>| RouteSet::given(routes);
        assert_eq!(
            fault(
                given(vec![Route::new("orders", || Nothing)]),
                &config(&["orders"])
            ),
            "topics",
            "topics given twice"
        );
        assert_eq!(fault(given(Vec::new()), &config(&[])), "routes");
        assert_eq!(
            fault(
                given(vec![Route::new("orders", || Nothing).processors(0)]),
                &config(&[])
            ),
            "Route::processors"
        );
        assert_eq!(
            fault(
                given(vec![Route::new("^orders-(", || Nothing)]),
                &config(&[])
            ),
            "Route"
        );
        assert_eq!(
            fault(
                given(vec![
                    Route::new("orders", || Nothing).failure_policy(FailurePolicy::retry(0))
                ]),
                &config(&[])
            ),
            "Route::failure_policy"
        );
    }

    #[test]
    fn each_route_brings_its_subscriptions_processors_and_policy() {
        let config = config(&[]);
        let routes = RouteSet::given(vec![
            Route::new("orders", || Nothing)
                .topic("refunds")
                .failure_policy(FailurePolicy::retry(7)),
            Route::new("^audit-.*", || Nothing).processors(1),
        ]);
        assert!(routes.check(&config).is_ok());
        assert_eq!(
            routes.subscriptions(&config),
            ["orders", "refunds", "^audit-.*"]
        );
        let sizes: Vec<usize> = routes.pools(&config).into_iter().map(|p| p.size).collect();
        assert_eq!(
            sizes,
            [3, 1],
            "the configuration's count unless the route has its own"
        );
        let named: Vec<(&str, u32)> = routes
            .named_topics(&config)
            .into_iter()
            .map(|(topic, policy)| (topic, policy.attempts))
            .collect();
        assert_eq!(
            named,
            [("orders", 7), ("refunds", 7)],
            "patterns are not checked"
        );
        assert!(!routes.hooks());
    }
}
