//! Passthrough and plain TCP: pick a backend from the route's pool, connect under
//! `timeouts.connect` (next candidate on failure), replay the bytes the peek read (offered
//! to the socket with the connect itself, `upstream::connect`), then splice both ways.
//! The TLS stays end to end; tollgate never decrypts it.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::splice::{splice_tcp, SpliceOutcome};
use crate::config::Timeouts;
use crate::error::ProxyError;
use crate::upstream::BackendGuard;

/// What a finished tunnel did.
#[derive(Debug, Clone)]
pub struct TunnelReport {
    /// The backend that served it.
    pub backend: String,
    /// Bytes and end reason (client → backend includes the replayed prefix).
    pub outcome: SpliceOutcome,
}

/// Writes what is left of `replay` (its first `sent` bytes went out with the connect)
/// to a connected `backend`, then splices it with `client`.
pub async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    guard: BackendGuard,
    replay: &[u8],
    sent: usize,
    timeouts: &Timeouts,
) -> Result<TunnelReport, ProxyError> {
    let backend_name = guard.backend().name.clone();
    let rest = replay.get(sent..).unwrap_or_default();
    if !rest.is_empty() {
        backend.write_all(rest).await.map_err(ProxyError::Backend)?;
    }
    let mut outcome = splice_tcp(&mut client, &mut backend, timeouts.tunnel_idle).await;
    outcome.client_to_backend += replay.len() as u64;
    drop(guard);
    Ok(TunnelReport {
        backend: backend_name,
        outcome,
    })
}
