//! The signals a CI system sends a step it cancels (SIGINT, SIGTERM), as one future that the
//! server and the push both wait on.

use std::future::Future;

/// Resolves at the first SIGINT or SIGTERM after this call.
pub fn interrupted() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
