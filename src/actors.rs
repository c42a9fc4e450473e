//! The actors. Each is a thin shell around pure logic kept elsewhere (`offsets`, `routing`).
//!
//! They address each other only through `messages`, the protocol of the system; the
//! Supervisor, which starts and wires the others, is the one that knows them all.

pub(crate) mod fetcher;
pub(crate) mod messages;
pub(crate) mod offset_tracker;
pub(crate) mod processor;
pub(crate) mod supervisor;
