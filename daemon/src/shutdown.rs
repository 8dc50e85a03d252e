//! Turning SIGTERM / SIGINT into an orderly stop.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The stop signals' handlers, installed when this is made: from then on a
/// SIGTERM or SIGINT is queued for [`StopSignals::recv`] instead of killing
/// the process with the default action. Made before anything else starts
/// (listening, loading, READY=1), so a stop that arrives during start-up is
/// as orderly as one that arrives later.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the name of the next stop signal (cancel-safe).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
