//! One HTTP/1.1 exchange with a backend, on a connection tollgate owns: write the request
//! head and body, read the response head (skipping 1xx interim responses), and hand back
//! the head and how its body is framed; `body.rs` then streams the body from the same
//! socket. This replaces a second hyper state machine (and its task and channels) per
//! backend connection: the response is read in the task of the client connection.
//!
//! A response that arrives while the request body is still being sent is taken as it
//! comes (an early 413, or an echo answering as it reads): the rest of the body keeps
//! going out while the response body is read, and the connection is not reused.

pub mod batch;
pub mod body;
pub mod chunked;
pub mod head;
pub mod raw_fields;
pub mod request;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body;
use hyper::{Method, Request};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::http::client::{BoxError, ProxyBody};
use batch::{QueuedSend, SendBatcher};
use head::{HeadError, ResponseHead};
use request::RequestFraming;

/// Initial room of a connection's read buffer.
const HEAD_BUFFER: usize = 8 * 1024;

/// A backend connection: the socket and the bytes read from it but not used yet.
#[derive(Debug)]
pub struct BackendConn {
    /// The socket.
    pub stream: TcpStream,
    /// Read but not consumed.
    pub buf: BytesMut,
    /// A duplicate of the socket's descriptor for batched sends (`batch.rs`), made at
    /// the connection's first reuse.
    writer: Option<Arc<std::net::TcpStream>>,
}

impl BackendConn {
    /// A connection with an empty buffer.
    pub fn new(stream: TcpStream) -> Self {
        BackendConn {
            stream,
            buf: BytesMut::new(),
            writer: None,
        }
    }

    /// The descriptor batched sends write through (shares the socket's non-blocking
    /// mode). `None` if it cannot be duplicated: the exchange then writes itself.
    fn batch_writer(&mut self) -> Option<Arc<std::net::TcpStream>> {
        if self.writer.is_none() {
            use std::os::fd::AsFd;
            let fd = self.stream.as_fd().try_clone_to_owned().ok()?;
            self.writer = Some(Arc::new(std::net::TcpStream::from(fd)));
        }
        self.writer.clone()
    }

    /// Whether an idle connection still looks usable: nothing arrived on it since its
    /// last response (no close, no stray bytes). Costs no system call unless the
    /// reactor saw it become readable.
    pub fn looks_idle(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why an exchange failed before a response head was complete.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The backend closed or reset the connection before any byte of a response.
    #[error("backend closed the connection before answering")]
    NoResponse(#[source] Option<io::Error>),
    /// The backend closed or failed in the middle of its response head.
    #[error("backend closed the connection in the middle of its response head")]
    Truncated(#[source] Option<io::Error>),
    /// The response head was refused.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The client's request body failed (malformed chunked coding, cut connection).
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

impl ExchangeError {
    /// Whether nothing of a response arrived, so an idempotent request may be sent again.
    pub fn before_response(&self) -> bool {
        matches!(self, ExchangeError::NoResponse(_))
    }
}

/// The response head, and what is left of the request when the answer came early.
pub struct Answer {
    /// The final (non-1xx, or 101) response head.
    pub head: ResponseHead,
    /// The rest of the request, still to be sent while the response body is read (a
    /// backend that answers as it reads, like an echo). The connection is then not
    /// reused.
    pub unsent: Option<RequestSender>,
}

/// A request ready to go out: its head encoded once (a retry sends the same bytes).
pub struct Outgoing {
    head: Bytes,
    method: Method,
    body: Option<(ProxyBody, RequestFraming)>,
    /// The response's fields are kept as they arrive (`raw_fields::RawFields`) instead of
    /// going into a header map: nothing on the way to the client reads them.
    raw_fields: bool,
}

impl Outgoing {
    /// Encodes the head of `request`, with `extra_fields` (CRLF-ended lines) after its
    /// own. `raw_fields`: its response's fields are written to the client as they
    /// arrive, not read by any content feature.
    pub fn new(request: Request<ProxyBody>, extra_fields: &[u8], raw_fields: bool) -> Self {
        let (parts, body) = request.into_parts();
        let framing = request::framing(&parts, &body);
        let mut out = BytesMut::with_capacity(512);
        request::encode_head(&parts, framing, extra_fields, &mut out);
        Outgoing {
            head: out.freeze(),
            method: parts.method,
            body: (framing != RequestFraming::None).then_some((body, framing)),
            raw_fields,
        }
    }

    /// What may be written as soon as a new connection's connect has started: the
    /// whole head of a request without a body (one with a body goes out with its first
    /// frames in one write).
    pub fn sendable_at_connect(&self) -> &[u8] {
        match self.body {
            None => &self.head,
            Some(_) => &[],
        }
    }

    /// Records that the first `n` bytes of the head were written already.
    pub fn sent(&mut self, n: usize) {
        self.head.advance(n.min(self.head.len()));
    }

    /// A copy to send again after a failure before any response byte: only for an
    /// idempotent request without a body.
    pub fn retry_copy(&self) -> Option<Outgoing> {
        let idempotent = matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        (idempotent && self.body.is_none()).then(|| Outgoing {
            head: self.head.clone(),
            method: self.method.clone(),
            body: None,
            raw_fields: self.raw_fields,
        })
    }
}

/// Sends `request` on `conn` and reads the response head. With `batch`, a request
/// without a body is queued for the pool's flusher instead of written at once.
pub async fn exchange(
    conn: &mut BackendConn,
    request: Outgoing,
    batch: Option<&Arc<SendBatcher>>,
) -> Result<Answer, ExchangeError> {
    let Outgoing {
        head,
        method,
        body,
        raw_fields,
    } = request;
    if conn.buf.capacity() < HEAD_BUFFER {
        conn.buf.reserve(HEAD_BUFFER);
    }
    let mut queued = QueuedGuard(match (batch, &body) {
        (Some(batcher), None) => conn
            .batch_writer()
            .and_then(|writer| batcher.queue(writer, head.clone())),
        _ => None,
    });
    let mut sender = match queued.0 {
        Some(_) => None,
        None => Some(RequestSender::new(head.clone(), body)),
    };
    let mut answered = false;
    let head_result = std::future::poll_fn(|cx| {
        if let Some(send) = queued.0.as_ref() {
            match send.poll_state(cx.waker()) {
                // Still queued: the answer cannot come before it goes out.
                None => {}
                Some(outcome) => {
                    sender = rest_after_flush(&head, outcome);
                    queued.0 = None;
                }
            }
        }
        if let Some(sending) = sender.as_mut() {
            match sending.poll_send(&mut conn.stream, cx) {
                Poll::Ready(Ok(())) => sender = None,
                Poll::Ready(Err(SendError::Body(err))) => {
                    return Poll::Ready(Err(ExchangeError::RequestBody(err)))
                }
                // The backend stopped reading: its answer (or its close) tells why.
                Poll::Ready(Err(SendError::Io(err))) => {
                    tracing::trace!(error = %err, "writing the request failed");
                    sender = None;
                }
                Poll::Pending => {}
            }
        }
        let reading = (&mut conn.stream, &mut conn.buf);
        poll_head(reading, &method, raw_fields, &mut answered, cx)
    })
    .await;
    let answer = head_result?;
    if let Some(send) = queued.0.take() {
        if send.cancel() {
            // Bytes from the backend before the request went out are no answer to it:
            // nothing of it was sent, so it may be sent again elsewhere.
            return Err(ExchangeError::NoResponse(None));
        }
        // The flusher wrote it meanwhile; what the socket did not take is still to send.
        if let Some(outcome) = send.poll_state(std::task::Waker::noop()) {
            sender = rest_after_flush(&head, outcome);
        }
    }
    Ok(Answer {
        head: answer,
        unsent: sender.filter(|s| !s.failed),
    })
}

/// What the exchange still has to write after the flusher's attempt: the part of the
/// head the socket did not take, or all of it after a failed write (on a dead socket
/// that fails again, and the backend's close tells why).
fn rest_after_flush(head: &Bytes, outcome: Result<usize, io::ErrorKind>) -> Option<RequestSender> {
    match outcome {
        Ok(written) if written >= head.len() => None,
        Ok(written) => Some(RequestSender::new(head.slice(written..), None)),
        Err(kind) => {
            tracing::trace!(error = ?kind, "writing the batched request failed");
            Some(RequestSender::new(head.clone(), None))
        }
    }
}

/// Cancels a batched send still queued when its exchange ends or is dropped.
struct QueuedGuard(Option<Arc<QueuedSend>>);

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        if let Some(send) = self.0.take() {
            send.cancel();
        }
    }
}

/// Sends a request head and its body as the client's frames arrive. Frames already
/// there join the head in one write; nothing waits for the whole body.
pub struct RequestSender {
    /// What is left to write of the encoded head (shared with a retry copy, never copied).
    head: Bytes,
    /// Body bytes gathered from ready frames, framed for the wire.
    out: BytesMut,
    body: Option<ProxyBody>,
    chunked: bool,
    left: u64,
    failed: bool,
}

/// Bytes gathered from ready frames before they are written.
const GATHER: usize = 64 * 1024;

enum SendError {
    Io(io::Error),
    Body(BoxError),
}

impl RequestSender {
    fn new(head: Bytes, body: Option<(ProxyBody, RequestFraming)>) -> Self {
        let (body, framing) = match body {
            Some((body, framing)) => (Some(body), framing),
            None => (None, RequestFraming::None),
        };
        RequestSender {
            head,
            out: BytesMut::new(),
            body,
            chunked: framing == RequestFraming::Chunked,
            left: match framing {
                RequestFraming::Length(n) => n,
                _ => 0,
            },
            failed: false,
        }
    }

    /// Moves the request along; `Ready(Ok)` once all of it is written.
    fn poll_send(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        let polled = self.poll_send_inner(stream, cx);
        if matches!(polled, Poll::Ready(Err(_))) {
            self.failed = true;
        }
        polled
    }

    fn poll_send_inner(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            while self.head.len() + self.out.len() < GATHER {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                let frame = if body.is_end_stream() {
                    Poll::Ready(None)
                } else {
                    Pin::new(body).poll_frame(cx)
                };
                match frame {
                    Poll::Pending => break,
                    Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(SendError::Body(err))),
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        } else if self.left != 0 {
                            return Poll::Ready(Err(SendError::Body(
                                "request body shorter than its Content-Length".into(),
                            )));
                        }
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers of a chunked request are not forwarded.
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            use std::fmt::Write;
                            let _ = write!(self.out, "{:x}\r\n", data.len());
                            self.out.extend_from_slice(&data);
                            self.out.extend_from_slice(b"\r\n");
                        } else {
                            let len = data.len() as u64;
                            if len > self.left {
                                return Poll::Ready(Err(SendError::Body(
                                    "request body longer than its Content-Length".into(),
                                )));
                            }
                            self.left -= len;
                            self.out.extend_from_slice(&data);
                        }
                    }
                }
            }
            if self.head.is_empty() && self.out.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            // The head and the gathered body go out in one write.
            let written = match (self.head.is_empty(), self.out.is_empty()) {
                (false, false) => Pin::new(&mut *stream).poll_write_vectored(
                    cx,
                    &[io::IoSlice::new(&self.head), io::IoSlice::new(&self.out)],
                ),
                (false, true) => Pin::new(&mut *stream).poll_write(cx, &self.head),
                _ => Pin::new(&mut *stream).poll_write(cx, &self.out),
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    let from_head = n.min(self.head.len());
                    self.head.advance(from_head);
                    self.out.advance(n - from_head);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(SendError::Io(err))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads until a final response head is complete; 1xx interim responses are dropped.
fn poll_head(
    (stream, buf): (&mut TcpStream, &mut BytesMut),
    method: &Method,
    raw_fields: bool,
    answered: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, ExchangeError>> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = head::parse(buf, method, raw_fields)? {
                if head.parts.status.is_informational()
                    && head.parts.status != hyper::StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(HEAD_BUFFER);
        }
        let read = match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(read) => read,
        };
        let failure = match read {
            Ok(0) => None,
            Ok(_) => {
                *answered = true;
                continue;
            }
            Err(err) => Some(err),
        };
        return Poll::Ready(Err(if *answered {
            ExchangeError::Truncated(failure)
        } else {
            ExchangeError::NoResponse(failure)
        }));
    }
}
