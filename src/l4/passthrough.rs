//! Passthrough and plain TCP: pick a backend from the route's pool, connect under
//! `timeouts.connect` (next candidate on failure), replay the bytes the peek read, then
//! splice both ways. The TLS stays end to end; tollgate never decrypts it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::splice::{splice_tcp, SpliceOutcome};
use crate::config::Timeouts;
use crate::error::ProxyError;
use crate::upstream::{BackendGuard, Pool};

/// What a finished tunnel did.
#[derive(Debug, Clone)]
pub struct TunnelReport {
    /// The backend that served it.
    pub backend: String,
    /// Bytes and end reason (client → backend includes the replayed prefix).
    pub outcome: SpliceOutcome,
}

/// Connects `client` to a backend of `pool`, writes `replay` to it first, and splices
/// until the tunnel ends. On error the client is dropped (closed) by the caller.
pub async fn tunnel(
    client: TcpStream,
    peer: SocketAddr,
    replay: &[u8],
    pool: &Arc<Pool>,
    timeouts: &Timeouts,
) -> Result<TunnelReport, ProxyError> {
    let (backend, guard) = pool.connect(Some(peer), timeouts.connect).await?;
    relay(client, backend, guard, replay, timeouts).await
}

/// Writes `replay` to a connected `backend`, then splices it with `client`.
pub async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    guard: BackendGuard,
    replay: &[u8],
    timeouts: &Timeouts,
) -> Result<TunnelReport, ProxyError> {
    let backend_name = guard.backend().name.clone();
    if !replay.is_empty() {
        backend
            .write_all(replay)
            .await
            .map_err(ProxyError::Backend)?;
    }
    let mut outcome = splice_tcp(&mut client, &mut backend, timeouts.tunnel_idle).await;
    outcome.client_to_backend += replay.len() as u64;
    drop(guard);
    Ok(TunnelReport {
        backend: backend_name,
        outcome,
    })
}
