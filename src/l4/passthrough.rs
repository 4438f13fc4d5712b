//! Passthrough and plain TCP: pick a backend from the route's pool, connect under
//! `timeouts.connect` (next candidate on failure), replay the bytes the peek read (offered
//! to the socket with the connect itself, `upstream::connect`), then splice both ways.
//! The TLS stays end to end; tollgate never decrypts it.

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
    let (backend, guard, sent) = pool
        .connect_sending(Some(peer), timeouts.connect, replay)
        .await?;
    relay(client, backend, guard, replay, sent, timeouts).await
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
