//! The backend side of the L7 module. `per_request`: a new TCP connection per request,
//! sent with `Connection: close`, so backends hold no idle keep-alive connections.
//! `pooled`: idle connections are kept per backend (most recent first) and expire before
//! the backend would close them (its `Keep-Alive: timeout=` minus a second, else the
//! pool's `idle_timeout`); a connection goes back to the pool only after its response
//! body was read to the end. A request that fails before any response byte is retried
//! once when it is idempotent and has no body: on a new connection to the same backend
//! if the failed one was reused (the backend had closed it), else on the next backend
//! (it died with the request in flight), like HAProxy's `retry-on empty-response`.
//! Each exchange runs in the client connection's task (`exchange.rs`); an upgrade
//! request always gets a new connection, which becomes the backend side of the tunnel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::exchange::batch::SendBatcher;
use super::exchange::body::BackendBody;
use super::exchange::raw_fields::RawFields;
use super::exchange::{self, BackendConn, ExchangeError};
use crate::config::BackendConnections;
use crate::error::ProxyError;
use crate::upstream::{Backend, BackendGuard, Pool};

/// The error a body may end with: hyper's own, an I/O error of a static file, a
/// compression error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type sent to backends and to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle connections kept per backend at most.
const MAX_IDLE_PER_BACKEND: usize = 128;

/// Read buffer an idle connection may keep; a larger one is released.
const IDLE_BUFFER_MAX: usize = 32 * 1024;

/// Why forwarding failed, mapped to 502 / 503 / 504 by the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No backend could be connected (or none is up).
    #[error(transparent)]
    Connect(#[from] ProxyError),
    /// The backend did not answer within `timeouts.backend_response`.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend broke the exchange (reset, garbage, closed early).
    #[error("backend failed: {0}")]
    Backend(ExchangeError),
    /// The client's request body failed while it was being forwarded (malformed
    /// chunked coding, a length that does not match): the client's fault.
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

impl From<ExchangeError> for ForwardError {
    fn from(err: ExchangeError) -> Self {
        match err {
            ExchangeError::RequestBody(err) => ForwardError::RequestBody(err),
            other => ForwardError::Backend(other),
        }
    }
}

struct IdleConn {
    conn: BackendConn,
    expires: Instant,
}

/// Sends requests to one pool's backends.
pub struct PoolClient {
    pool: Arc<Pool>,
    mode: BackendConnections,
    idle_timeout: Duration,
    /// Per backend index: idle connections, most recent last.
    idle: Vec<Mutex<Vec<IdleConn>>>,
    /// With `batch_sends`: queues body-less requests on reused connections, written
    /// once per batch.
    batcher: Option<Arc<SendBatcher>>,
}

impl std::fmt::Debug for PoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolClient")
            .field("pool", &self.pool.name)
            .field("mode", &self.mode)
            .finish()
    }
}

/// How `PoolClient::send` sends a request and reads its answer.
#[derive(Debug, Default)]
pub struct Sending {
    /// The request asks for a protocol upgrade (`Connection: upgrade` with `Upgrade`, as
    /// the client connection's parser found): it gets a connection of its own.
    pub upgrade: bool,
    /// Nothing reads the response's fields before the client connection writes them (no
    /// compression, no cache): they are kept as they arrive (`exchange/raw_fields.rs`).
    pub raw_fields: bool,
    /// Field lines written after the request's own: the forwarding fields, when the
    /// client sent none (`headers::forwarding_lines`).
    pub extra_fields: Option<Bytes>,
}

/// A response from a backend, with what the proxy needs to know about it.
pub struct Forwarded {
    /// The response; its body streams from the backend.
    pub response: Response<ProxyBody>,
    /// The response's fields as they arrived, when `Sending::raw_fields` asked for them.
    pub raw_fields: Option<RawFields>,
    /// The backend (its name is for logs; cloning the `Arc` copies nothing).
    pub backend: Arc<Backend>,
    /// The backend's index in its pool.
    pub index: usize,
    /// After a 101 answer to an upgrade request: the backend connection.
    pub upgraded: Option<Upgraded>,
    /// The backend connection closes when the response ends (it is not given back to
    /// the pool).
    pub closes: bool,
}

/// The backend side of an upgraded connection.
#[derive(Debug)]
pub struct Upgraded {
    /// The connection, with any bytes the backend sent after its head in its buffer.
    pub conn: BackendConn,
    /// Counts the connection on its backend while the tunnel is open.
    pub guard: BackendGuard,
}

impl PoolClient {
    /// A client for `pool`.
    pub fn new(pool: Arc<Pool>) -> Arc<Self> {
        let idle = pool
            .backends
            .iter()
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        Arc::new(PoolClient {
            mode: pool.spec.backend_connections,
            idle_timeout: pool.spec.idle_timeout,
            idle,
            batcher: pool.spec.batch_sends.then(SendBatcher::new),
            pool,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Connection mode.
    pub fn mode(&self) -> BackendConnections {
        self.mode
    }

    /// Sends `request` to a backend, as `how` says, and waits for the response head.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
        how: Sending,
        client: std::net::SocketAddr,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let Sending {
            upgrade,
            raw_fields,
            extra_fields,
        } = how;
        let pooled = self.mode == BackendConnections::Pooled;
        // One balancer decision per request: reuse an idle connection to the chosen
        // backend (pooled), else connect along the same candidate order.
        let candidates = self.pool.candidates(Some(client));
        let Some(&first) = candidates.first() else {
            return Err(ProxyError::NoHealthyBackend {
                pool: self.pool.name.clone(),
            }
            .into());
        };
        let idle = if pooled && !upgrade {
            self.take_idle(first)
        } else {
            None
        };
        let reused = idle.is_some();
        // An idempotent, body-less request that fails before any response byte (a reused
        // connection the backend had closed, or a backend that died with the request in
        // flight) is sent once more: keep what is needed to rebuild it.
        let mut request = exchange::Outgoing::new(
            request,
            extra_fields.as_deref().unwrap_or_default(),
            raw_fields && !upgrade,
        );
        let retry = request.retry_copy();
        let (conn, guard) = match idle {
            Some(pair) => pair,
            None => {
                self.open(&candidates, connect_timeout, &mut request)
                    .await?
            }
        };
        let tried = guard.index();
        match self
            .exchange(conn, guard, request, response_timeout, upgrade, reused)
            .await
        {
            Err(ForwardError::Backend(err)) if err.before_response() => {
                let Some(mut again) = retry else {
                    return Err(ForwardError::Backend(err));
                };
                // A reused connection failing says little about the backend: a new
                // connection to it comes first. A fresh one failing: the next backend.
                let others: crate::upstream::balance::Candidates =
                    candidates.iter().copied().filter(|&i| i != tried).collect();
                let order = if reused || others.is_empty() {
                    &candidates
                } else {
                    &others
                };
                tracing::debug!(pool = %self.pool.name, error = %err, reused, "backend failed before answering; retrying once");
                let (conn, guard) = self.open(order, connect_timeout, &mut again).await?;
                self.exchange(conn, guard, again, response_timeout, upgrade, false)
                    .await
            }
            other => other,
        }
    }

    /// Opens a new backend connection (next candidate on connect failure). A request
    /// without a body goes out with the connect when the handshake allows
    /// (`upstream/connect.rs`); `request` then keeps only what is left to send.
    async fn open(
        &self,
        candidates: &[usize],
        connect_timeout: Duration,
        request: &mut exchange::Outgoing,
    ) -> Result<(BackendConn, BackendGuard), ForwardError> {
        let (stream, guard, sent) = self
            .pool
            .connect_in_order_sending(candidates, connect_timeout, request.sendable_at_connect())
            .await?;
        request.sent(sent);
        Ok((BackendConn::new(stream), guard))
    }

    /// Pops a live idle connection to backend `index`.
    fn take_idle(&self, index: usize) -> Option<(BackendConn, BackendGuard)> {
        let slot = self.idle.get(index)?;
        let now = Instant::now();
        loop {
            let candidate = {
                let Ok(mut idle) = slot.lock() else {
                    return None;
                };
                idle.pop()
            }?;
            if candidate.expires > now && candidate.conn.looks_idle() {
                return Some((candidate.conn, self.pool.acquire(index)));
            }
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        mut conn: BackendConn,
        guard: BackendGuard,
        request: exchange::Outgoing,
        response_timeout: Duration,
        upgrade: bool,
        reused: bool,
    ) -> Result<Forwarded, ForwardError> {
        let backend = guard.backend_arc();
        let index = guard.index();
        let reusable = self.mode == BackendConnections::Pooled && !upgrade;
        // With `batch_sends`, only a request on a reused connection is batched: a new
        // connection would need its descriptor duplicated for one request, and its
        // connect already woke the backend.
        let batch = self.batcher.as_ref().filter(|_| reused);
        let exchange = exchange::exchange(&mut conn, request, batch);
        let answer = match tokio::time::timeout(response_timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(ForwardError::Timeout(response_timeout)),
        };
        let head = answer.head;
        if upgrade && head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the backend side of a tunnel; the guard counts it
            // while the tunnel is open.
            return Ok(Forwarded {
                response: Response::from_parts(head.parts, empty_body()),
                raw_fields: head.raw_fields,
                backend,
                index,
                upgraded: Some(Upgraded { conn, guard }),
                closes: false,
            });
        }
        let keep = reusable && head.keep_alive && answer.unsent.is_none();
        // Only a connection that may be reused needs its idle deadline.
        let expires = keep.then(|| self.expiry(head.keep_alive_secs));
        let client = Arc::clone(self);
        // The guard counts the connection as busy until its response body ends.
        let on_end = move |done: Option<BackendConn>| {
            if let (Some(conn), Some(expires)) = (done, expires) {
                client.give_back(index, IdleConn { conn, expires });
            }
            drop(guard);
        };
        let body = BackendBody::new(conn, head.framing, keep, on_end, answer.unsent);
        Ok(Forwarded {
            response: Response::from_parts(head.parts, body.boxed_unsync()),
            raw_fields: head.raw_fields,
            backend,
            index,
            upgraded: None,
            closes: !keep,
        })
    }

    /// When a connection given back now stops being reused: `idle_timeout`, or a second
    /// before the backend's own Keep-Alive `timeout=` (`keep_alive_secs`) if that is sooner.
    fn expiry(&self, keep_alive_secs: Option<u64>) -> Instant {
        let idle = match keep_alive_secs {
            Some(secs) => Duration::from_secs(secs)
                .saturating_sub(Duration::from_secs(1))
                .min(self.idle_timeout),
            None => self.idle_timeout,
        };
        Instant::now() + idle
    }

    fn give_back(&self, index: usize, mut conn: IdleConn) {
        let now = Instant::now();
        if conn.expires <= now {
            return;
        }
        // An idle connection keeps a modest read buffer, not the largest it ever needed.
        if conn.conn.buf.capacity() > IDLE_BUFFER_MAX {
            conn.conn.buf = BytesMut::new();
        }
        let Some(slot) = self.idle.get(index) else {
            return;
        };
        let Ok(mut idle) = slot.lock() else {
            return;
        };
        idle.retain(|c| c.expires > now);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(conn);
        }
    }
}

/// An empty body of the proxy's body type.
pub fn empty_body() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of fixed bytes of the proxy's body type.
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
