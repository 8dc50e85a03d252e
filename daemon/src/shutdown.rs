//! Turning SIGTERM / SIGINT into an orderly stop.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves with the name of the first stop signal received.
pub async fn stop_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
