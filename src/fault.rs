//! Faults a test injects into a debug build, to prove what the framework does when one of its
//! own actors dies (a bug): the system stops with `StopReason::InternalFailure` naming it, and
//! the report is unclean. `KAFKA_ACTORS_TEST_FAULT` names the actor that dies, at the first
//! message it handles: `fetcher` or `processor`. Release builds contain none of it.

/// An actor that dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    FetcherDies,
    ProcessorDies,
}

/// Whether the test asked for `fault` (read once, when the actor starts).
pub(crate) fn injected(fault: Fault) -> bool {
    if cfg!(debug_assertions) {
        let name = match fault {
            Fault::FetcherDies => "fetcher",
            Fault::ProcessorDies => "processor",
        };
        std::env::var("KAFKA_ACTORS_TEST_FAULT").is_ok_and(|asked| asked == name)
    } else {
        false
    }
}
