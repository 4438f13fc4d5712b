//! The body of a backend response, read straight from the backend's socket as hyper's
//! server side polls it: by Content-Length, chunked, or until the backend closes. When it
//! ends cleanly on a connection that may carry another request, the connection is handed
//! back (to the pool); any other end closes it. A truncated body ends with an error, so
//! the client sees a cut connection, never a short body passed off as complete.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::chunked::{ChunkedDecoder, Decoded};
use super::head::BodyFraming;
use super::{BackendConn, RequestSender, SendError};
use crate::http::client::BoxError;

/// Room kept free in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Called once when the body is done with its connection: `Some` when it may carry
/// another request, `None` when it must close. The body holds it inline (a type
/// parameter, not a box): one allocation less per response.
pub trait OnEnd: FnOnce(Option<BackendConn>) + Send + Unpin {}

impl<F: FnOnce(Option<BackendConn>) + Send + Unpin> OnEnd for F {}

enum Reading {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// A response body streamed from a backend connection.
pub struct BackendBody<E: OnEnd> {
    conn: Option<BackendConn>,
    reading: Reading,
    reusable: bool,
    on_end: Option<E>,
    /// The rest of a request the backend answered early, sent as the body is read.
    sender: Option<RequestSender>,
    /// Ended with an error: never reports a clean end afterwards.
    broken: bool,
}

impl<E: OnEnd> BackendBody<E> {
    /// The body framed by `framing` on `conn`; `reusable` when the response allows
    /// another request on the connection.
    pub fn new(
        conn: BackendConn,
        framing: BodyFraming,
        reusable: bool,
        on_end: E,
        sender: Option<RequestSender>,
    ) -> Self {
        let reading = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Reading::Done,
            BodyFraming::Length(n) => Reading::Length(n),
            BodyFraming::Chunked => Reading::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => Reading::UntilClose,
        };
        let mut body = BackendBody {
            conn: Some(conn),
            reusable: reusable && !matches!(framing, BodyFraming::UntilClose),
            reading,
            on_end: Some(on_end),
            sender,
            broken: false,
        };
        if matches!(body.reading, Reading::Done) {
            body.finish();
        }
        body
    }

    /// Hands the connection on: back for reuse when clean, else to be closed.
    fn finish(&mut self) {
        self.reading = Reading::Done;
        let conn = self.conn.take();
        let Some(on_end) = self.on_end.take() else {
            return;
        };
        let clean = self.reusable && conn.as_ref().is_some_and(|c| c.buf.is_empty());
        on_end(if clean { conn } else { None });
    }

    /// Ends the body with an error (the response's outermost body passes it on after
    /// hyper has flushed what did arrive).
    fn fail(&mut self, why: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.reusable = false;
        self.broken = true;
        self.finish();
        Poll::Ready(Some(Err(why.into())))
    }
}

impl<E: OnEnd> Drop for BackendBody<E> {
    fn drop(&mut self) {
        // Not read to its end: the connection closes.
        self.reusable = false;
        self.finish();
    }
}

fn poll_fill(conn: &mut BackendConn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < 1024 {
        conn.buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
}

impl<E: OnEnd> Body for BackendBody<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Some(Err("backend response body already failed".into())));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(sending) = this.sender.as_mut() {
                match sending.poll_send(&mut conn.stream, cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) | Poll::Ready(Err(SendError::Io(_))) => this.sender = None,
                    Poll::Ready(Err(SendError::Body(err))) => return this.fail(err),
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.reading {
                Reading::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Reading::Length(left) if !conn.buf.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(map)) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(map))))
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => {
                        tracing::info!(error = %err, "backend sent a malformed chunked body; closing");
                        return this.fail(err);
                    }
                },
                Reading::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Length(_) | Reading::UntilClose => {}
            }
            match poll_fill(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.reading, Reading::UntilClose) {
                        this.reusable = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection before the end of the body",
                    ));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => return this.fail(err),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done) && !self.broken
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(left) => SizeHint::with_exact(left),
            Reading::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
