//! The actors. Each is a thin shell around pure logic kept elsewhere (`offsets`, `routing`).

pub(crate) mod fetcher;
pub(crate) mod offset_tracker;
pub(crate) mod processor;
pub(crate) mod supervisor;
