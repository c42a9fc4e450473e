//! Repeating trouble as a few lines: the [`RepeatLimiter`] decides what of librdkafka's errors
//! and log lines is worth a line. Pure: time is an argument, so it is tested on virtual time.
//!
//! librdkafka reconnects by itself, and says so while it does: with the only broker down, it
//! reported "all brokers are down" up to 24 times a second. The limiter makes each run of
//! repeats an *episode* with a few lines:
//!
//! - its first occurrence, at once ([`Notice::Began`]); a broker's outage a moment later
//!   ([`BROKER_GRACE`]), unless the whole cluster went down with it;
//! - while it repeats, at most one summary per interval: how long, how many, the latest
//!   ([`Notice::Continues`]); a repeat within the interval is counted, not logged;
//! - for an outage, one line when it is over, with its length ([`Notice::Recovered`]); other
//!   repeats end without a word worth `info` ([`Notice::Faded`], at `debug`).
//!
//! Episodes are keyed by what they are about ([`Key`]): the cluster (every broker down), a
//! broker that cannot be reached, or any other kind of error or log line (its error code's
//! name or librdkafka's facility, with the broker it names). While the whole cluster is down,
//! a broker's failures are part of that outage: a broker's episode open when the cluster goes
//! down joins the cluster's, and its later errors are counted there.
//!
//! **When an outage is over.** The brokers do not say they are back: librdkafka reconnects
//! without a word. So an outage ends
//!
//! - for the cluster, at a *sign of life* that only an answering broker can give (a commit
//!   acknowledged, partitions assigned: see [`RepeatLimiter::sign_of_life`]) followed by
//!   [`SETTLE`] without an error. A fetched message is no such sign: librdkafka hands out
//!   what it fetched before the outage for a while after the brokers went down;
//! - for the cluster and for a broker, after [`QUIET_PERIOD`] without an error of it. It is
//!   longer than the 30 s for which librdkafka holds back a broker's identical connection
//!   errors, plus its longest reconnection backoff (10 s by default), so a broker still down
//!   reports again before its outage is taken to be over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use log::Level;

/// At most one summary line per episode in this interval.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(30);
/// An episode with no occurrence for this long is over; see the module documentation.
pub(crate) const QUIET_PERIOD: Duration = Duration::from_secs(60);
/// How long a broker's outage waits before its first line. When every broker goes down,
/// librdkafka reports the first broker's failure a moment before it reports them all down, and
/// the cluster's line says it all.
pub(crate) const BROKER_GRACE: Duration = Duration::from_secs(1);
/// How long after a sign of life the cluster must stay free of errors before its outage is
/// over: an answer that was on its way as the brokers went down is no sign that they are back.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

/// What an episode is about: the key its repeats are counted under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    /// Every broker is down: the cluster cannot be reached.
    Cluster,
    /// A broker, `host:port`, cannot be reached.
    Broker(String),
    /// Any other error, by its code's name (`kind`) and the broker its reason names, if any.
    Error {
        kind: String,
        broker: Option<String>,
    },
    /// One of librdkafka's log lines, by its facility and the broker it names, if any.
    LogLine {
        facility: String,
        broker: Option<String>,
    },
}

impl Key {
    fn is_outage(&self) -> bool {
        matches!(self, Key::Cluster | Key::Broker(_))
    }

    /// What it is about, for a line.
    fn subject(&self) -> String {
        match self {
            Key::Cluster => "the cluster (every broker)".to_owned(),
            Key::Broker(address) => format!("broker {address}"),
            Key::Error { kind, broker }
            | Key::LogLine {
                facility: kind,
                broker,
            } => match broker {
                Some(broker) => format!("{kind} of {broker}"),
                None => kind.clone(),
            },
        }
    }
}

/// One error or log line, as the limiter takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Occurrence<'a> {
    /// The error code's name or the log line's facility: the summaries count by it.
    pub(crate) kind: &'a str,
    /// The line that tells it alone.
    pub(crate) text: &'a str,
    pub(crate) level: Level,
}

/// A line to log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// The first occurrence of an episode, at `since`.
    Began {
        key: Key,
        since: Instant,
        text: String,
        level: Level,
    },
    /// The episode goes on: `new` more occurrences since its last line, `total` since it began.
    Continues {
        key: Key,
        since: Instant,
        lasted: Duration,
        new: u64,
        total: u64,
        by_kind: BTreeMap<String, u64>,
        latest: String,
        level: Level,
    },
    /// An outage is over.
    Recovered {
        key: Key,
        since: Instant,
        /// From the first error to the sign of life; to the last error when it ended quietly.
        lasted: Duration,
        total: u64,
        quietly: bool,
    },
    /// A run of repeats ended.
    Faded {
        key: Key,
        since: Instant,
        total: u64,
    },
}

/// An outage in progress, for the health endpoint and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outage {
    pub(crate) key: Key,
    pub(crate) since: Instant,
    pub(crate) errors: u64,
    pub(crate) latest: String,
}

#[derive(Debug)]
struct Episode {
    since: Instant,
    last: Instant,
    total: u64,
    /// The total when the last line about it was logged.
    told: u64,
    /// The earliest a summary may be logged.
    next_summary: Instant,
    level: Level,
    by_kind: BTreeMap<String, u64>,
    latest: String,
    /// A sign of life after the last error (outages only).
    sign_of_life: Option<Instant>,
    /// The first occurrence's line, while it waits for [`BROKER_GRACE`] (brokers only).
    untold: Option<String>,
}

impl Episode {
    fn new(occurrence: Occurrence<'_>, now: Instant, interval: Duration) -> Self {
        Episode {
            since: now,
            last: now,
            total: 1,
            told: 1,
            next_summary: now + interval,
            level: occurrence.level,
            by_kind: BTreeMap::from([(occurrence.kind.to_owned(), 1)]),
            latest: occurrence.text.to_owned(),
            sign_of_life: None,
            untold: None,
        }
    }

    fn count(&mut self, occurrence: Occurrence<'_>, now: Instant) {
        self.last = now;
        self.total += 1;
        *self.by_kind.entry(occurrence.kind.to_owned()).or_default() += 1;
        occurrence.text.clone_into(&mut self.latest);
        self.sign_of_life = None;
    }

    /// Takes in a broker's episode, as the cluster's outage takes in its brokers'.
    fn absorb(&mut self, other: Episode) {
        self.total += other.total;
        self.told += other.total;
        for (kind, count) in other.by_kind {
            *self.by_kind.entry(kind).or_default() += count;
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RepeatLimiter {
    episodes: BTreeMap<Key, Episode>,
    interval: Duration,
    quiet: Duration,
}

impl Default for RepeatLimiter {
    fn default() -> Self {
        RepeatLimiter::new(SUMMARY_INTERVAL, QUIET_PERIOD)
    }
}

impl RepeatLimiter {
    pub(crate) fn new(interval: Duration, quiet: Duration) -> Self {
        RepeatLimiter {
            episodes: BTreeMap::new(),
            interval,
            quiet,
        }
    }

    /// Takes in an occurrence at `now`; returns the line to log if it begins an episode.
    pub(crate) fn occurred(
        &mut self,
        key: Key,
        occurrence: Occurrence<'_>,
        now: Instant,
    ) -> Option<Notice> {
        // While every broker is down, a broker's failure is part of the cluster's outage.
        let key = match key {
            Key::Broker(_) if self.episodes.contains_key(&Key::Cluster) => Key::Cluster,
            key => key,
        };
        if let Some(episode) = self.episodes.get_mut(&key) {
            episode.count(occurrence, now);
            return None;
        }
        let mut episode = Episode::new(occurrence, now, self.interval);
        if key == Key::Cluster {
            let brokers: Vec<Key> = self
                .episodes
                .keys()
                .filter(|key| matches!(key, Key::Broker(_)))
                .cloned()
                .collect();
            for broker in brokers {
                if let Some(absorbed) = self.episodes.remove(&broker) {
                    episode.absorb(absorbed);
                }
            }
        }
        if matches!(key, Key::Broker(_)) {
            episode.untold = Some(occurrence.text.to_owned());
            self.episodes.insert(key, episode);
            return None;
        }
        self.episodes.insert(key.clone(), episode);
        Some(Notice::Began {
            key,
            since: now,
            text: occurrence.text.to_owned(),
            level: occurrence.level,
        })
    }

    /// A broker answered at `now` (a commit was acknowledged, partitions were assigned): the
    /// cluster's outage is over unless another error follows within [`SETTLE`].
    pub(crate) fn sign_of_life(&mut self, now: Instant) {
        if let Some(outage) = self.episodes.get_mut(&Key::Cluster)
            && outage.last <= now
        {
            outage.sign_of_life.get_or_insert(now);
        }
    }

    /// The lines due at `now`: the beginnings of brokers' outages past their grace, summaries
    /// of episodes that went on, and the ends of those that are over.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Notice> {
        let mut notices = Vec::new();
        let (interval, quiet) = (self.interval, self.quiet);
        self.episodes.retain(|key, episode| {
            if now >= episode.since + BROKER_GRACE
                && let Some(text) = episode.untold.take()
            {
                notices.push(Notice::Began {
                    key: key.clone(),
                    since: episode.since,
                    text,
                    level: episode.level,
                });
            }
            let revived = episode
                .sign_of_life
                .filter(|sign| now >= *sign + SETTLE && key.is_outage());
            if let Some(sign) = revived {
                notices.push(Notice::Recovered {
                    key: key.clone(),
                    since: episode.since,
                    lasted: sign.saturating_duration_since(episode.since),
                    total: episode.total,
                    quietly: false,
                });
                return false;
            }
            if now >= episode.next_summary && episode.total > episode.told {
                notices.push(Notice::Continues {
                    key: key.clone(),
                    since: episode.since,
                    lasted: now.saturating_duration_since(episode.since),
                    new: episode.total - episode.told,
                    total: episode.total,
                    by_kind: episode.by_kind.clone(),
                    latest: episode.latest.clone(),
                    level: episode.level,
                });
                episode.told = episode.total;
                episode.next_summary = now + interval;
            }
            if now.saturating_duration_since(episode.last) < quiet {
                return true;
            }
            notices.push(match key.is_outage() {
                true => Notice::Recovered {
                    key: key.clone(),
                    since: episode.since,
                    lasted: episode.last.saturating_duration_since(episode.since),
                    total: episode.total,
                    quietly: true,
                },
                false => Notice::Faded {
                    key: key.clone(),
                    since: episode.since,
                    total: episode.total,
                },
            });
            false
        });
        notices
    }

    /// The outages in progress.
    pub(crate) fn outages(&self) -> Vec<Outage> {
        self.episodes
            .iter()
            .filter(|(key, _)| key.is_outage())
            .map(|(key, episode)| Outage {
                key: key.clone(),
                since: episode.since,
                errors: episode.total,
                latest: episode.latest.clone(),
            })
            .collect()
    }
}

impl Notice {
    /// What the line is about.
    pub(crate) fn key(&self) -> &Key {
        match self {
            Notice::Began { key, .. }
            | Notice::Continues { key, .. }
            | Notice::Recovered { key, .. }
            | Notice::Faded { key, .. } => key,
        }
    }

    /// The level to log it at: outages begin and go on at `warn` (the framework recovers, but
    /// someone may want to know) and end at `info`; other repeats keep the level of their
    /// first occurrence.
    pub(crate) fn level(&self) -> Level {
        match self {
            Notice::Began { key, level, .. } | Notice::Continues { key, level, .. } => {
                match key.is_outage() {
                    true => Level::Warn,
                    false => *level,
                }
            }
            Notice::Recovered { .. } => Level::Info,
            Notice::Faded { .. } => Level::Debug,
        }
    }

    /// The line, at `now`, which is `wall_now` on the wall clock (for "since when").
    pub(crate) fn render(&self, now: Instant, wall_now: SystemTime) -> String {
        let wall = |at: Instant| {
            let ago = now.saturating_duration_since(at);
            let at = wall_now.checked_sub(ago).unwrap_or(wall_now);
            humantime::format_rfc3339_seconds(at).to_string()
        };
        match self {
            Notice::Began {
                key, since, text, ..
            } if key.is_outage() => format!(
                "{} is unreachable since {}: {text}; librdkafka reconnects by itself; further \
                 errors are counted and summed up every {}",
                key.subject(),
                wall(*since),
                seconds(SUMMARY_INTERVAL)
            ),
            Notice::Began { text, .. } => text.clone(),
            Notice::Continues {
                key,
                since,
                lasted,
                new,
                total,
                by_kind,
                latest,
                ..
            } => {
                let mut line = match key.is_outage() {
                    true => format!(
                        "{} still unreachable after {} (since {}): {total} errors ({}); \
                         librdkafka keeps reconnecting; the latest: ",
                        key.subject(),
                        seconds(*lasted),
                        wall(*since),
                        kinds(by_kind)
                    ),
                    false => format!(
                        "repeated {} ({total} since {}): ",
                        times(*new),
                        wall(*since)
                    ),
                };
                line.push_str(latest);
                line
            }
            Notice::Recovered {
                key,
                since,
                lasted,
                total,
                quietly: false,
            } => format!(
                "{} is reachable again after an outage of {} (since {}, {total} errors)",
                key.subject(),
                seconds(*lasted),
                wall(*since)
            ),
            Notice::Recovered {
                key,
                since,
                lasted,
                total,
                quietly: true,
            } => format!(
                "{}: no error for {}, taken as reachable again; it was unreachable from {} for \
                 at least {} ({total} errors)",
                key.subject(),
                seconds(QUIET_PERIOD),
                wall(*since),
                seconds(*lasted)
            ),
            Notice::Faded { key, since, total } => format!(
                "{}: not repeated for {} ({total} since {})",
                key.subject(),
                seconds(QUIET_PERIOD),
                wall(*since)
            ),
        }
    }
}

/// A duration in whole seconds (tenths below ten seconds), as people read it.
fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(10) {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
    }
}

/// `once`, `twice`, `3 times`.
fn times(count: u64) -> String {
    match count {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        count => format!("{count} times"),
    }
}

/// `AllBrokersDown 700, BrokerTransportFailure 12`, the most frequent first.
fn kinds(by_kind: &BTreeMap<String, u64>) -> String {
    let mut counted: Vec<(&String, &u64)> = by_kind.iter().collect();
    counted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut line = String::new();
    for (kind, count) in counted {
        if !line.is_empty() {
            line.push_str(", ");
        }
        let _ = write!(line, "{kind} {count}");
    }
    line
}

#[cfg(test)]
mod tests;
