//! The bodies the request path wraps around a request or a response: `LimitedBody` cuts a
//! request body at `limits.max_request_body_bytes`; `TrackedBody` ties the in-flight
//! count and the pending access-log line to a response body, and passes a failure on only
//! after the connection flushed what arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::Response;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, Served};
use crate::access_log::{AccessLog, Record};
use crate::http::client::{BoxError, ProxyBody};
use crate::http::conn::InFlight;

/// The request body crossed `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body over limits.max_request_body_bytes")]
struct BodyOverLimit;

/// A request body cut at the limit: past `left` bytes it cancels `tripped` and ends with
/// [`BodyOverLimit`], which aborts the backend exchange (a truncated body is never passed
/// off as complete, which ending the stream would do).
pub(super) struct LimitedBody {
    pub(super) inner: crate::http::conn::RequestBody,
    pub(super) left: u64,
    pub(super) tripped: CancellationToken,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.tripped.is_cancelled() {
            return std::task::Poll::Ready(Some(Err(BodyOverLimit.into())));
        }
        let polled = std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                if len > self.left {
                    // The error aborts the backend exchange (the connection is dropped);
                    // the token tells the proxy to answer 413 if no response came yet.
                    self.tripped.cancel();
                    return std::task::Poll::Ready(Some(Err(BodyOverLimit.into())));
                }
                self.left -= len;
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

/// An access-log line waiting for its response body to end (to count bytes out).
pub(super) struct PendingLog {
    pub(super) access: Arc<AccessLog>,
    pub(super) conn: Arc<ConnInfo>,
    pub(super) route: String,
    pub(super) client: SocketAddr,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) bytes_in: u64,
    pub(super) status: u16,
    pub(super) served: Served,
    pub(super) started: Instant,
    pub(super) bytes_out: u64,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        self.access.log(&Record {
            listener: &self.conn.listener,
            mode: self.conn.mode,
            client: Some(self.client),
            sni: self.conn.sni.as_deref(),
            route: Some(&self.route),
            pool: self.served.pool.as_deref(),
            backend: self.served.backend.as_deref(),
            method: Some(&self.method),
            path: Some(&self.path),
            status: Some(self.status),
            outcome: None,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration: self.started.elapsed(),
        });
    }
}

/// Ties the in-flight count (and the access-log line) to the response body: both end
/// when the client connection drops the body (written, or abandoned).
pub(super) fn track(
    response: Response<ProxyBody>,
    in_flight: InFlight,
    log: Option<PendingLog>,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let body = TrackedBody {
        inner: body,
        log,
        failed: None,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

struct TrackedBody {
    inner: ProxyBody,
    log: Option<PendingLog>,
    /// An error of `inner`, passed on one poll later (see `poll_frame`).
    failed: Option<BoxError>,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(err) = self.failed.take() {
            return std::task::Poll::Ready(Some(Err(err)));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            std::task::Poll::Ready(Some(Ok(ref frame))) => {
                if let (Some(log), Some(data)) = (self.log.as_mut(), frame.data_ref()) {
                    log.bytes_out += data.len() as u64;
                }
            }
            std::task::Poll::Ready(Some(Err(err))) => {
                // A body that fails (a backend cut mid-body) ends the connection. Pending
                // first lets the connection flush the head and the bytes that did arrive
                // (`conn/driver.rs` also flushes before closing on an error), as HAProxy and nginx
                // pass on a truncated response before cutting the connection. This is
                // the outermost body: a wrapper (the compressor turns every pending
                // read into output) cannot swallow the pause.
                self.failed = Some(err);
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            _ => {}
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
