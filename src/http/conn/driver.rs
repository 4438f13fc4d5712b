//! The HTTP/1.1 server side of one client connection, on the socket it owns: read a
//! request head, call the request path, feed the request body as the path asks for it,
//! write the response (head and body gathered into as few writes as possible), then start
//! over on the same connection (keep-alive, pipelining) or close. While a request is in
//! flight it keeps reading, a head's worth ahead, so a client that closes is noticed and
//! its request abandoned (as hyper does with `half_close(false)`).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::body::Body;
use hyper::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::request_body::{self, BodyFeed, FeedStep, RequestBody};
use super::request_head::{self, RequestHead, RequestHeadError};
use super::response_head::{self, Answer, RequestFacts, ResponseFraming};
use super::upgrade::{self, UpgradeSender};
use super::{ConnActivity, ConnLimits};
use crate::http::client::ProxyBody;

/// Room added to the read buffer when it runs low.
const READ_CHUNK: usize = 8 * 1024;
/// Below this much spare room the read buffer grows before a read.
const MIN_READ: usize = 1024;
/// Body pieces up to this size are copied next to the head; larger ones are written
/// from where they are (vectored).
const COPY_MAX: usize = 4 * 1024;
/// Response bytes gathered before the body is no longer polled until they are written.
const HIGH_WATER: usize = 64 * 1024;

/// How the connection ended (the watchdog in `conn.rs` maps it to a `ConnEnd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DriveEnd {
    /// The client closed, or a response ended the connection.
    Closed,
    /// A request head was refused with this status before closing.
    Refused(u16),
    /// The connection was handed over after a 101.
    Upgraded,
}

/// What follows a response.
enum Next {
    KeepAlive,
    Close,
    /// The response was cut (a body that failed or overran its length): the connection
    /// is dropped without a TLS close_notify, so a client reading to the close can tell.
    Abort,
    ClientGone,
    Upgrade(UpgradeSender),
}

/// Response bytes waiting to be written: `stage` (heads, chunk lines and small body
/// pieces, copied) after the larger pieces queued as they are.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    stage: BytesMut,
}

impl Outbox {
    fn push(&mut self, data: Bytes) {
        if data.len() <= COPY_MAX {
            self.stage.extend_from_slice(&data);
            return;
        }
        if !self.stage.is_empty() {
            let staged = self.stage.split().freeze();
            self.queued += staged.len();
            self.queue.push_back(staged);
        }
        self.queued += data.len();
        self.queue.push_back(data);
    }

    fn len(&self) -> usize {
        self.queued + self.stage.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (written).
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                self.stage.advance(n.min(self.stage.len()));
                return;
            };
            let take = n.min(front.len());
            front.advance(take);
            self.queued -= take;
            n -= take;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }
}

/// The client socket and its buffers.
struct ConnIo<S> {
    stream: S,
    read_buf: BytesMut,
    read_closed: bool,
    out: Outbox,
    activity: Arc<ConnActivity>,
    max_head: usize,
}

/// What feeding the request body (or watching the client) did on a turn.
enum Progress {
    /// A frame went to the body: poll the request path again.
    Fed,
    /// Nothing to do until a waker fires.
    Waiting,
    /// The client closed.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ConnIo<S> {
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read_buf
        ))?;
        if n == 0 {
            self.read_closed = true;
        } else {
            self.activity.bytes_read();
        }
        Poll::Ready(Ok(n))
    }

    /// Writes everything in the outbox, then flushes the stream (a TLS stream's records).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = if self.out.queue.is_empty() {
                ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out.stage))?
            } else {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut count = 0;
                for (slot, piece) in slices.iter_mut().zip(self.out.queue.iter()) {
                    *slot = IoSlice::new(piece);
                    count += 1;
                }
                if count < slices.len() && !self.out.stage.is_empty() {
                    slices[count] = IoSlice::new(&self.out.stage);
                    count += 1;
                }
                ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.consume(n);
            self.activity.bytes_written();
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Feeds the request body if it asked for a frame; otherwise (no body, or all of it
    /// read) keeps reading a head's worth ahead to notice a client that closes.
    fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        feed: &mut Option<BodyFeed>,
    ) -> io::Result<Progress> {
        if !self.out.is_empty() {
            // A `100 Continue` owed to the client.
            if let Poll::Ready(Err(err)) = self.poll_flush(cx) {
                return Err(err);
            }
        }
        let Some(feed) = feed.as_mut().filter(|f| !f.is_complete() && !f.is_failed()) else {
            return Ok(self.watch_client(cx));
        };
        loop {
            match feed.feed(&mut self.read_buf) {
                FeedStep::Idle => return Ok(Progress::Waiting),
                FeedStep::Fed => return Ok(Progress::Fed),
                FeedStep::SendContinue => {
                    self.out.stage.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if let Poll::Ready(Err(err)) = self.poll_flush(cx) {
                        return Err(err);
                    }
                }
                FeedStep::NeedBytes => match self.poll_read_more(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        feed.client_closed();
                        return Ok(Progress::Fed);
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => return Ok(Progress::Waiting),
                },
            }
        }
    }

    fn watch_client(&mut self, cx: &mut Context<'_>) -> Progress {
        if self.read_closed {
            return Progress::Gone;
        }
        while self.read_buf.len() < self.max_head {
            match self.poll_read_more(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Progress::Gone,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Progress::Waiting
    }

    /// Polls the request path until it answers, feeding its body meanwhile. `None`: the
    /// client closed first.
    fn poll_answer<Fut: Future<Output = Answer>>(
        &mut self,
        cx: &mut Context<'_>,
        answer: Pin<&mut Fut>,
        feed: &mut Option<BodyFeed>,
    ) -> Poll<io::Result<Option<Answer>>> {
        let mut answer = answer;
        loop {
            if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(response)));
            }
            match self.poll_feed(cx, feed)? {
                Progress::Fed => {}
                Progress::Waiting => return Poll::Pending,
                Progress::Gone => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Writes the response body (the head is staged already), feeding the request body
    /// meanwhile (a backend may answer while it still reads). `false`: the client closed.
    fn poll_respond(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut BodyWriter,
        feed: &mut Option<BodyFeed>,
    ) -> Poll<io::Result<bool>> {
        loop {
            let mut body_waiting = writer.done;
            while !writer.done && self.out.len() < HIGH_WATER {
                if writer.poll_into(cx, &mut self.out).is_pending() {
                    body_waiting = true;
                    break;
                }
            }
            if writer.wait_turn {
                // Behind the tasks already ready (`ConnActivity::write_after_turn`).
                writer.wait_turn = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let flushed = match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => false,
            };
            if writer.done && flushed {
                return Poll::Ready(Ok(true));
            }
            let fed = match self.poll_feed(cx, feed)? {
                Progress::Fed => true,
                Progress::Waiting => false,
                Progress::Gone => return Poll::Ready(Ok(false)),
            };
            if !(fed || flushed && !body_waiting) {
                return Poll::Pending;
            }
        }
    }
}

/// Encodes a response body into the outbox as its framing says.
struct BodyWriter {
    body: ProxyBody,
    framing: ResponseFraming,
    /// The body ended (or failed).
    done: bool,
    /// The body failed or did not match its Content-Length: the connection closes after
    /// what was written (the client sees a truncated response, not a wrong one).
    broken: bool,
    /// The first write still waits one scheduler turn (`ConnActivity::write_after_turn`).
    wait_turn: bool,
}

impl BodyWriter {
    fn poll_into(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<()> {
        match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.put(data, out);
                }
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "response body failed; closing after what was written");
                self.broken = true;
                self.done = true;
            }
            None => {
                match self.framing {
                    ResponseFraming::Chunked => out.stage.put_slice(b"0\r\n\r\n"),
                    ResponseFraming::Length(left) if left > 0 => self.broken = true,
                    _ => {}
                }
                self.done = true;
            }
        }
        Poll::Ready(())
    }

    fn put(&mut self, mut data: Bytes, out: &mut Outbox) {
        if data.is_empty() {
            return;
        }
        match &mut self.framing {
            ResponseFraming::NoBody => {}
            ResponseFraming::Length(left) => {
                if data.len() as u64 > *left {
                    // More than the head announced: cut, and close after it.
                    data.truncate(*left as usize);
                    self.broken = true;
                }
                *left -= data.len() as u64;
                out.push(data);
            }
            ResponseFraming::Chunked => {
                response_head::chunk_size_line(data.len(), &mut out.stage);
                out.push(data);
                out.stage.put_slice(b"\r\n");
            }
            ResponseFraming::UntilClose => out.push(data),
        }
    }
}

/// One client connection's HTTP/1.1 server side.
pub(super) struct Driver<S> {
    io: ConnIo<S>,
    limits: ConnLimits,
}

// Unboxed on purpose: the head is moved once or twice on its way to `serve`, which
// costs less than an allocation and a free per request.
#[allow(clippy::large_enum_variant)]
enum ReadHead {
    Request(RequestHead),
    Closed,
    Refused(RequestHeadError),
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Driver<S> {
    pub(super) fn new(stream: S, activity: Arc<ConnActivity>, limits: ConnLimits) -> Self {
        Driver {
            io: ConnIo {
                stream,
                read_buf: BytesMut::new(),
                read_closed: false,
                out: Outbox::default(),
                activity,
                max_head: limits.max_header_bytes,
            },
            limits,
        }
    }

    /// Serves requests with `service` until the connection ends.
    pub(super) async fn run<F, Fut>(mut self, mut service: F) -> io::Result<DriveEnd>
    where
        F: FnMut(Request<RequestBody>) -> Fut,
        Fut: Future<Output = Answer>,
    {
        loop {
            let head = match self.read_head().await {
                ReadHead::Request(head) => head,
                ReadHead::Closed => return Ok(DriveEnd::Closed),
                ReadHead::Refused(err) => {
                    tracing::info!(error = %err, status = err.status(), "request head refused; closing");
                    response_head::refusal(err.status(), &mut self.io.out.stage);
                    poll_fn(|cx| self.io.poll_flush(cx)).await?;
                    self.shutdown().await;
                    return Ok(DriveEnd::Refused(err.status()));
                }
            };
            match self.serve(head, &mut service).await? {
                Next::KeepAlive => {}
                Next::Close => {
                    self.shutdown().await;
                    return Ok(DriveEnd::Closed);
                }
                Next::ClientGone | Next::Abort => return Ok(DriveEnd::Closed),
                Next::Upgrade(sender) => {
                    let ConnIo {
                        stream, read_buf, ..
                    } = self.io;
                    let _ = sender.send(upgrade::upgraded(Box::new(stream), read_buf.freeze()));
                    return Ok(DriveEnd::Upgraded);
                }
            }
        }
    }

    async fn read_head(&mut self) -> ReadHead {
        if !self.io.read_buf.is_empty() {
            // A pipelined request already started: its header clock runs.
            self.io.activity.head_started();
        }
        loop {
            if !self.io.read_buf.is_empty() {
                match request_head::parse(&mut self.io.read_buf, self.io.max_head) {
                    Ok(Some(head)) => return ReadHead::Request(head),
                    Ok(None) => {}
                    Err(err) => return ReadHead::Refused(err),
                }
            }
            if self.io.read_closed {
                return ReadHead::Closed;
            }
            match poll_fn(|cx| self.io.poll_read_more(cx)).await {
                Ok(0) => return ReadHead::Closed,
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "client read failed");
                    return ReadHead::Closed;
                }
            }
        }
    }

    async fn serve<F, Fut>(&mut self, head: RequestHead, service: &mut F) -> io::Result<Next>
    where
        F: FnMut(Request<RequestBody>) -> Fut,
        Fut: Future<Output = Answer>,
    {
        let RequestHead {
            mut parts,
            framing,
            mut keep_alive,
            expect_continue,
            upgrade,
            conflicting,
        } = head;
        let facts = RequestFacts {
            head: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
            upgrade,
        };
        let (body, mut feed) = request_body::channel(framing, expect_continue);
        self.io.activity.set_conflicting(conflicting);
        let upgrade_sender = upgrade.then(|| {
            let (sender, on_upgrade) = upgrade::pair();
            parts.extensions.insert(on_upgrade);
            sender
        });
        let Answer {
            response,
            raw_fields,
        } = {
            let mut answer = pin!(service(Request::from_parts(parts, body)));
            let io = &mut self.io;
            let answered = poll_fn(|cx| io.poll_answer(cx, answer.as_mut(), &mut feed)).await?;
            let Some(answer) = answered else {
                tracing::debug!("client closed with a request in flight; abandoning it");
                return Ok(Next::ClientGone);
            };
            answer
        };
        let (parts, body) = response.into_parts();
        let activity = &self.io.activity;
        if let Some(max) = self.limits.max_requests {
            if activity.answered.fetch_add(1, Ordering::Relaxed) + 1 >= max {
                activity.request_limit_hit.store(true, Ordering::Relaxed);
                keep_alive = false;
            }
        }
        if activity.is_draining() {
            keep_alive = false;
        }
        let framing = response_head::encode(
            &parts,
            raw_fields.as_ref(),
            &body.size_hint(),
            facts,
            &mut keep_alive,
            &mut self.io.out.stage,
        );
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        drop(parts);
        drop(raw_fields);
        if let (true, Some(sender)) = (switching && upgrade, upgrade_sender) {
            poll_fn(|cx| self.io.poll_flush(cx)).await?;
            drop(body);
            return Ok(Next::Upgrade(sender));
        }
        let mut writer = BodyWriter {
            body,
            framing,
            done: false,
            broken: false,
            wait_turn: self.io.activity.take_write_after_turn(),
        };
        let io = &mut self.io;
        let client_open = poll_fn(|cx| io.poll_respond(cx, &mut writer, &mut feed)).await?;
        // Ends the request's in-flight count and writes its access-log line.
        drop(writer.body);
        if !client_open {
            return Ok(Next::ClientGone);
        }
        if writer.broken {
            return Ok(Next::Abort);
        }
        if let Some(feed) = feed.as_mut() {
            // A body the request path did not read: skipped if it is all here already.
            if !feed.is_complete() && !feed.discard_buffered(&mut self.io.read_buf) {
                keep_alive = false;
            }
            if !feed.is_clean() {
                keep_alive = false;
            }
        }
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Ends the connection politely: a TLS close_notify, then the FIN.
    async fn shutdown(&mut self) {
        let _ = poll_fn(|cx| Pin::new(&mut self.io.stream).poll_shutdown(cx)).await;
    }
}

#[cfg(test)]
mod tests;
