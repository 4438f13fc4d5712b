//! A pool's runtime state: its backends (address, weight, up/down, open connections,
//! pre-resolved metric handles) and `connect`, which walks the balancer's candidates
//! under `timeouts.connect` until one accepts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpStream;

use super::balance::{self, Balancer};
use crate::config::{PoolSpec, ServerSpec};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// One backend server and its live state.
#[derive(Debug)]
pub struct Backend {
    /// As written in the config (`host:port`).
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative weight; 0 takes no new connections.
    pub weight: u32,
    up: AtomicBool,
    active: AtomicUsize,
    handles: Option<BackendMetrics>,
}

#[derive(Debug)]
struct BackendMetrics {
    up: IntGauge,
    connect_errors: IntCounter,
    connections: IntCounter,
}

impl Backend {
    /// A backend that starts up, with metric handles when `metrics` is given.
    pub fn new(pool: &str, spec: &ServerSpec, metrics: Option<&Metrics>) -> Self {
        let handles = metrics.map(|m| {
            let labels = [pool, spec.name.as_str()];
            let up = m.backend_up.with_label_values(&labels);
            up.set(1);
            BackendMetrics {
                up,
                connect_errors: m.backend_connect_errors_total.with_label_values(&labels),
                connections: m.backend_connections_total.with_label_values(&labels),
            }
        });
        Backend {
            name: spec.name.clone(),
            addr: spec.addr,
            weight: spec.weight,
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            handles,
        }
    }

    /// Whether the backend is considered healthy.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks the backend up or down; returns the previous state.
    pub fn set_up(&self, up: bool) -> bool {
        let before = self.up.swap(up, Ordering::Relaxed);
        if let Some(h) = &self.handles {
            h.up.set(i64::from(up));
        }
        before
    }

    /// Whether it may take a new connection: up and weight above 0.
    pub fn accepts_new(&self) -> bool {
        self.is_up() && self.weight > 0
    }

    /// Connections (or requests) open to it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a new connection to it.
    pub fn count_connection(&self) {
        if let Some(h) = &self.handles {
            h.connections.inc();
        }
    }

    /// Counts a failed connect.
    pub fn count_connect_error(&self) {
        if let Some(h) = &self.handles {
            h.connect_errors.inc();
        }
    }
}

/// Holds one open-connection count on a backend until dropped.
#[derive(Debug)]
pub struct BackendGuard {
    backend: Arc<Pool>,
    index: usize,
}

impl BackendGuard {
    /// The backend this guard counts on.
    pub fn backend(&self) -> &Backend {
        &self.backend.backends[self.index]
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.backend.backends[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool of backends and the balancer that orders them.
#[derive(Debug)]
pub struct Pool {
    /// Name in the config.
    pub name: String,
    /// The backends, in config order.
    pub backends: Vec<Backend>,
    /// The spec it was built from.
    pub spec: PoolSpec,
    balancer: Box<dyn Balancer>,
}

impl Pool {
    /// Builds a pool from its spec.
    pub fn new(spec: &PoolSpec, metrics: Option<&Metrics>) -> Self {
        Pool {
            name: spec.name.clone(),
            backends: spec
                .servers
                .iter()
                .map(|s| Backend::new(&spec.name, s, metrics))
                .collect(),
            spec: spec.clone(),
            balancer: balance::for_algorithm(spec.balance),
        }
    }

    /// The backends to try for one connection, best first (only eligible ones).
    pub fn candidates(&self, client: Option<SocketAddr>) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.backends.len());
        self.balancer.candidates(&self.backends, client, &mut out);
        out
    }

    /// Connects to the first candidate that accepts within `timeout`, trying each in
    /// turn. Returns the stream and a guard counting the open connection.
    pub async fn connect(
        self: &Arc<Self>,
        client: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<(TcpStream, BackendGuard), ProxyError> {
        let candidates = self.candidates(client);
        if candidates.is_empty() {
            return Err(ProxyError::NoHealthyBackend {
                pool: self.name.clone(),
            });
        }
        for &index in &candidates {
            let backend = &self.backends[index];
            match tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    backend.active.fetch_add(1, Ordering::Relaxed);
                    backend.count_connection();
                    return Ok((
                        stream,
                        BackendGuard {
                            backend: Arc::clone(self),
                            index,
                        },
                    ));
                }
                Ok(Err(err)) => {
                    backend.count_connect_error();
                    tracing::warn!(pool = %self.name, backend = %backend.name, error = %err, "backend connect failed");
                }
                Err(_) => {
                    backend.count_connect_error();
                    tracing::warn!(pool = %self.name, backend = %backend.name, timeout_ms = timeout.as_millis() as u64, "backend connect timed out");
                }
            }
        }
        Err(ProxyError::AllConnectsFailed {
            pool: self.name.clone(),
            tried: candidates.len(),
        })
    }
}
