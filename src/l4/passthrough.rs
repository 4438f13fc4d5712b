//! Passthrough and plain TCP: pick a backend from the route's pool, connect under
//! `timeouts.connect` (next candidate on failure), replay the bytes the peek read (offered
//! to the socket with the connect itself, `upstream::connect`), then hand the connection
//! task a [`TunnelJob`]: the tunnel to run (`tcp_tunnel`) and what its end reports (the
//! access log line, the byte counters, the debug line). The TLS stays end to end;
//! tollgate never decrypts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::tcp_tunnel::{TcpTunnel, TunnelDone};
use crate::access_log::{AccessLog, Record};
use crate::error::{Fault, ProxyError};
use crate::listener::{ActiveConnection, Mode};
use crate::server::Snapshot;

/// A connection routed to a pool: who it is, for the access log.
pub struct Origin<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// Its SNI (passthrough).
    pub sni: Option<String>,
    /// Where its line goes.
    pub access: &'a Arc<AccessLog>,
    /// The listener's index in the snapshot.
    pub listener: usize,
    /// Passthrough or TCP.
    pub mode: Mode,
}

pin_project_lite::pin_project! {
    /// A connected tunnel, and what reports its end.
    pub struct TunnelJob {
        // The two sockets, spliced.
        #[pin]
        pub tunnel: TcpTunnel,
        // Reports the end (inside the connection's span); taken when it does.
        pub end: Option<TunnelEnd>,
    }
}

/// What a tunnel's end reports, held while the tunnel runs.
pub struct TunnelEnd {
    peer: SocketAddr,
    sni: Option<String>,
    access: Arc<AccessLog>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    mode: Mode,
    started: Instant,
    /// Counts the connection on its backend until the tunnel ends.
    guard: crate::upstream::BackendGuard,
    /// The listener's active-connections gauge, in this mode.
    _active: ActiveConnection,
    /// Bytes of the ClientHello replayed to the backend (counted client → backend).
    replayed: u64,
}

/// Connects `client` to a backend of `pool_name` and replays `replay`; `None` when no
/// backend took it (counted, logged and written to the access log here).
pub async fn connect(
    client: TcpStream,
    origin: Origin<'_>,
    replay: &[u8],
    pool_name: &str,
    snapshot: &Arc<Snapshot>,
) -> Option<TunnelJob> {
    let listener = snapshot.listeners.get(origin.listener)?;
    let Some(pool) = snapshot.pools.get(pool_name) else {
        listener.counters.rejected();
        tracing::error!(
            pool = pool_name,
            "pool missing from the running state; closing"
        );
        return None;
    };
    let started = Instant::now();
    let timeouts = &snapshot.config.timeouts;
    let (mut backend, guard, sent) = match pool
        .connect_sending(Some(origin.peer), timeouts.connect, replay)
        .await
    {
        Ok(connected) => connected,
        Err(err) => {
            listener.counters.rejected();
            failed(&origin, snapshot, pool_name, started, err);
            return None;
        }
    };
    // Counted in its mode only once a backend took it.
    let active = listener.counters.open(origin.mode);
    let rest = replay.get(sent..).unwrap_or_default();
    if !rest.is_empty() {
        if let Err(err) = backend.write_all(rest).await {
            failed(
                &origin,
                snapshot,
                pool_name,
                started,
                ProxyError::Backend(err),
            );
            return None;
        }
    }
    Some(TunnelJob {
        tunnel: TcpTunnel::new(client, backend, timeouts.tunnel_idle),
        end: Some(TunnelEnd {
            peer: origin.peer,
            sni: origin.sni,
            access: Arc::clone(origin.access),
            snapshot: Arc::clone(snapshot),
            listener: origin.listener,
            mode: origin.mode,
            started,
            guard,
            _active: active,
            replayed: replay.len() as u64,
        }),
    })
}

/// A connection no backend took: its access line and its log line.
fn failed(
    origin: &Origin<'_>,
    snapshot: &Snapshot,
    pool_name: &str,
    started: Instant,
    err: ProxyError,
) {
    if origin.access.enabled() {
        let listener = snapshot.listeners.get(origin.listener);
        origin.access.log(&Record {
            listener: listener.map_or("", |l| l.spec.name.as_str()),
            mode: origin.mode.as_str(),
            client: Some(origin.peer),
            sni: origin.sni.as_deref(),
            pool: Some(pool_name),
            backend: None,
            outcome: Some(match err {
                ProxyError::Backend(_) => "backend_error",
                _ => "no_backend",
            }),
            duration: started.elapsed(),
            ..Record::default()
        });
    }
    match err.fault() {
        Fault::Downstream => tracing::info!(pool = pool_name, error = %err, "tunnel failed"),
        Fault::Upstream | Fault::Internal => {
            tracing::warn!(pool = pool_name, error = %err, "tunnel failed; client closed")
        }
    }
}

impl TunnelEnd {
    /// Reports a finished tunnel: bytes to the listener's counters, the access line, and
    /// a debug line (with the error, when a side failed). The backend's open-connection
    /// count drops after it.
    pub fn finish(self, done: TunnelDone) {
        let mut outcome = done.outcome;
        outcome.client_to_backend += self.replayed;
        let backend = &self.guard.backend().name;
        let pool = self.guard.pool_name();
        let Some(listener) = self.snapshot.listeners.get(self.listener) else {
            return;
        };
        listener.counters.add_bytes(
            self.mode,
            outcome.client_to_backend,
            outcome.backend_to_client,
        );
        let duration = self.started.elapsed();
        if self.access.enabled() {
            self.access.log(&Record {
                listener: &listener.spec.name,
                mode: self.mode.as_str(),
                client: Some(self.peer),
                sni: self.sni.as_deref(),
                pool: Some(pool),
                backend: Some(backend),
                outcome: Some(outcome.end.as_str()),
                bytes_in: outcome.client_to_backend,
                bytes_out: outcome.backend_to_client,
                duration,
                ..Record::default()
            });
        }
        if let Some(failure) = &done.failure {
            tracing::debug!(error = %failure.error, "{} failed", failure.what);
        }
        tracing::debug!(
            pool,
            backend = %backend,
            client_to_backend = outcome.client_to_backend,
            backend_to_client = outcome.backend_to_client,
            end = outcome.end.as_str(),
            duration_ms = duration.as_millis() as u64,
            "tunnel closed"
        );
    }
}
