#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod actors;
mod batch;
mod client_trouble;
mod commits;
mod config;
mod control;
mod dead_letter;
mod env;
mod error;
mod failure;
mod fault;
mod flow;
mod health;
#[cfg(feature = "http")]
mod http;
mod instruments;
mod lanes;
mod message;
pub mod metric_names;
mod metrics;
mod native;
mod offsets;
mod processor;
mod repeats;
mod report;
mod routes;
mod routing;
mod stall;
mod stop;
mod system;
pub mod testkit;
mod trace;
mod trouble;
mod work;

pub use config::{ConsumerConfig, ConsumerConfigBuilder, GroupProtocol};
pub use control::{ControlError, PartitionControl};
pub use dead_letter::headers as dead_letter_headers;
pub use error::{Error, Result};
pub use failure::{Exhausted, FailurePolicy, Permanent, RetryAfter};
pub use message::Message;
pub use metrics::Metrics;
pub use offsets::TopicPartition;
pub use processor::{BatchFailures, BatchProcessor, Processor, StoredPositions};
pub use report::{Abandoned, Phase, PhaseReport, ShutdownReport, StopReason};
pub use routing::OrderingMode;
pub use stop::StopHandle;
pub use system::{ConsumerSystem, RunningSystem};
