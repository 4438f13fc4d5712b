//! The backend side of the L7 module. `per_request`: a new TCP connection per request,
//! sent with `Connection: close`, so backends hold no idle keep-alive connections.
//! `pooled`: idle connections are kept per backend (most recent first) and expire before
//! the backend would close them (its `Keep-Alive: timeout=` minus a second, else the
//! pool's `idle_timeout`); a connection goes back to the pool only after its response
//! body was read to the end. A request that fails before any response byte is retried
//! once when it is idempotent and has no body: on a new connection to the same backend
//! if the failed one was reused (the backend had closed it), else on the next backend
//! (it died with the request in flight), like HAProxy's `retry-on empty-response`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::headers::keep_alive_timeout;
use crate::config::BackendConnections;
use crate::error::ProxyError;
use crate::upstream::{BackendGuard, Pool};

/// The error a body may end with: hyper's own, an I/O error of a static file, a
/// compression error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type sent to backends and to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle connections kept per backend at most.
const MAX_IDLE_PER_BACKEND: usize = 128;

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
    Backend(hyper::Error),
}

struct IdleConn {
    sender: SendRequest<ProxyBody>,
    expires: Instant,
}

/// Sends requests to one pool's backends.
pub struct PoolClient {
    pool: Arc<Pool>,
    mode: BackendConnections,
    idle_timeout: Duration,
    /// Per backend index: idle connections, most recent last.
    idle: Vec<Mutex<Vec<IdleConn>>>,
}

impl std::fmt::Debug for PoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolClient")
            .field("pool", &self.pool.name)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A response from a backend, with what the proxy needs to know about it.
pub struct Forwarded {
    /// The response; its body streams from the backend.
    pub response: Response<ProxyBody>,
    /// The backend's name.
    pub backend: String,
    /// The backend's index in its pool.
    pub index: usize,
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
            pool,
            idle,
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

    /// Sends `request` to a backend and waits for the response head.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
        client: std::net::SocketAddr,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
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
        // An idempotent, body-less request that fails before any response byte (a reused
        // connection the backend had closed, or a backend that died with the request in
        // flight) is sent once more: keep what is needed to rebuild it.
        let retry = retry_copy(&request);
        let idle = if pooled {
            self.take_idle(first).await
        } else {
            None
        };
        let reused = idle.is_some();
        let (sender, guard) = match idle {
            Some(pair) => pair,
            None => self.open(&candidates, connect_timeout).await?,
        };
        let tried = guard.index();
        match self
            .exchange(sender, guard, request, response_timeout, pooled)
            .await
        {
            // `send_request` fails only before the response head: after it, errors
            // surface in the body stream instead.
            Err(ForwardError::Backend(err)) => {
                let Some(again) = retry else {
                    return Err(ForwardError::Backend(err));
                };
                // A reused connection failing says little about the backend: a new
                // connection to it comes first. A fresh one failing: the next backend.
                let others: Vec<usize> =
                    candidates.iter().copied().filter(|&i| i != tried).collect();
                let order = if reused || others.is_empty() {
                    &candidates
                } else {
                    &others
                };
                tracing::debug!(pool = %self.pool.name, error = %err, reused, "backend failed before answering; retrying once");
                let (sender, guard) = self.open(order, connect_timeout).await?;
                self.exchange(sender, guard, again, response_timeout, pooled)
                    .await
            }
            other => other,
        }
    }

    /// Opens a new backend connection (next candidate on connect failure).
    async fn open(
        &self,
        candidates: &[usize],
        connect_timeout: Duration,
    ) -> Result<(SendRequest<ProxyBody>, BackendGuard), ForwardError> {
        let (stream, guard) = self
            .pool
            .connect_in_order(candidates, connect_timeout)
            .await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, ProxyBody>(TokioIo::new(stream))
            .await
            .map_err(ForwardError::Backend)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok((sender, guard))
    }

    /// Pops a live idle connection to backend `index`.
    async fn take_idle(&self, index: usize) -> Option<(SendRequest<ProxyBody>, BackendGuard)> {
        let slot = self.idle.get(index)?;
        loop {
            let candidate = {
                let Ok(mut idle) = slot.lock() else {
                    return None;
                };
                idle.pop()
            }?;
            if candidate.expires <= Instant::now() || candidate.sender.is_closed() {
                continue;
            }
            let IdleConn { mut sender, .. } = candidate;
            // The previous response has been read to its end; readiness is immediate
            // unless the connection broke (no timer on that common path).
            if sender.is_ready() {
                return Some((sender, self.pool.acquire(index)));
            }
            match tokio::time::timeout(Duration::from_millis(100), sender.ready()).await {
                Ok(Ok(())) => return Some((sender, self.pool.acquire(index))),
                _ => continue,
            }
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        mut sender: SendRequest<ProxyBody>,
        guard: BackendGuard,
        request: Request<ProxyBody>,
        response_timeout: Duration,
        reusable: bool,
    ) -> Result<Forwarded, ForwardError> {
        let backend = guard.backend().name.clone();
        let index = guard.index();
        let response =
            match tokio::time::timeout(response_timeout, sender.send_request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => return Err(ForwardError::Backend(err)),
                Err(_) => return Err(ForwardError::Timeout(response_timeout)),
            };
        let keep = reusable
            && response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            && !super::headers::connection_has_token(response.headers(), "close");
        let (parts, body) = response.into_parts();
        let body = if keep {
            let expires = self.expiry(&parts.headers);
            ReturningBody {
                inner: body,
                on_end: Some(ReturnToPool {
                    client: Arc::clone(self),
                    index,
                    conn: IdleConn { sender, expires },
                    _guard: guard,
                }),
            }
            .boxed_unsync()
        } else {
            // The connection (and its guard) live as long as the body.
            HoldingBody {
                inner: body,
                _held: Some((sender, guard)),
            }
            .boxed_unsync()
        };
        Ok(Forwarded {
            response: Response::from_parts(parts, body),
            backend,
            index,
        })
    }

    fn expiry(&self, headers: &hyper::HeaderMap) -> Instant {
        let idle = match keep_alive_timeout(headers) {
            Some(secs) => Duration::from_secs(secs)
                .saturating_sub(Duration::from_secs(1))
                .min(self.idle_timeout),
            None => self.idle_timeout,
        };
        Instant::now() + idle
    }

    fn give_back(&self, index: usize, conn: IdleConn) {
        if conn.expires <= Instant::now() || conn.sender.is_closed() {
            return;
        }
        let Some(slot) = self.idle.get(index) else {
            return;
        };
        let Ok(mut idle) = slot.lock() else {
            return;
        };
        let now = Instant::now();
        idle.retain(|c| c.expires > now && !c.sender.is_closed());
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(conn);
        }
    }
}

/// A copy of a request that can be sent again: idempotent method and no body.
fn retry_copy(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    if !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(empty_body());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
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

struct ReturnToPool {
    client: Arc<PoolClient>,
    index: usize,
    conn: IdleConn,
    /// Counts the connection as busy until its response body ends.
    _guard: BackendGuard,
}

/// A backend response body that returns its connection to the pool once read to the end.
struct ReturningBody {
    inner: Incoming,
    on_end: Option<ReturnToPool>,
}

impl ReturningBody {
    fn finish(&mut self) {
        if let Some(back) = self.on_end.take() {
            back.client.give_back(back.index, back.conn);
        }
    }
}

impl Drop for ReturningBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty (HEAD, 204, 304) is complete.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ReturningBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                self.on_end = None;
            }
            _ => {
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A backend response body that keeps its (non-reusable) connection alive while read.
struct HoldingBody {
    inner: Incoming,
    _held: Option<(SendRequest<ProxyBody>, BackendGuard)>,
}

impl Body for HoldingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
