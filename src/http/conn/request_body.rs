//! A client's request body as the request path sees it (`RequestBody`, an
//! `http_body::Body`), fed by the connection that owns the socket (`BodyFeed`): the body
//! asks for a frame, the connection reads and decodes one (Content-Length or chunked) from
//! the client and hands it over. Reading happens only when asked, so a backend that reads
//! slowly slows the client down instead of filling a buffer; `Expect: 100-continue` is
//! answered when the body is first asked for.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::request_head::RequestFraming;
use crate::http::client::BoxError;
use crate::http::exchange::chunked::{ChunkedDecoder, Decoded};

/// Why a request body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client closed (or the connection failed) before the body was complete.
    #[error("client closed before the request body was complete")]
    Incomplete,
    /// A chunked body that does not decode.
    #[error("malformed chunked request body: {0}")]
    Chunked(#[from] crate::http::exchange::chunked::ChunkError),
}

/// What passes between the body and the connection feeding it.
#[derive(Debug, Default)]
struct Exchange {
    /// A frame handed over and not taken yet.
    frame: Option<Result<Bytes, RequestBodyError>>,
    /// The body asked for a frame.
    wanted: bool,
    /// The last frame was handed over (or an error).
    ended: bool,
    /// The body was dropped: nobody reads further.
    dropped: bool,
    /// Wakes the body when a frame arrives.
    waker: Option<Waker>,
}

/// A request body read from the client connection.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: no body at all.
    shared: Option<Arc<Mutex<Exchange>>>,
    /// Bytes still to come under a Content-Length.
    left: Option<u64>,
    /// Nothing more will come.
    done: bool,
}

impl RequestBody {
    /// A request without a body.
    pub fn empty() -> Self {
        RequestBody {
            shared: None,
            left: Some(0),
            done: true,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        let Ok(mut exchange) = shared.lock() else {
            return Poll::Ready(Some(Err(RequestBodyError::Incomplete.into())));
        };
        match exchange.frame.take() {
            Some(Ok(data)) => {
                let ended = exchange.ended;
                drop(exchange);
                if let Some(left) = self.left.as_mut() {
                    *left = left.saturating_sub(data.len() as u64);
                }
                self.done = ended;
                if data.is_empty() && ended {
                    // The end of a chunked body.
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(err)) => {
                drop(exchange);
                self.done = true;
                Poll::Ready(Some(Err(err.into())))
            }
            None if exchange.ended => {
                drop(exchange);
                self.done = true;
                Poll::Ready(None)
            }
            None => {
                exchange.wanted = true;
                if !exchange
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    exchange.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            if let Ok(mut exchange) = shared.lock() {
                exchange.dropped = true;
            }
        }
    }
}

/// How the feed decodes the body from the client's bytes.
#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The connection's side of a request body.
#[derive(Debug)]
pub struct BodyFeed {
    shared: Arc<Mutex<Exchange>>,
    decoder: Decoder,
    /// `100 Continue` is owed when the body is first asked for.
    continue_owed: bool,
    /// The whole body was read from the client.
    complete: bool,
    /// The body failed (malformed, or the client closed): the connection cannot go on.
    failed: bool,
}

/// What the feed needs from the connection on a turn.
pub enum FeedStep {
    /// Nothing to do now (not asked, or a frame waits to be taken).
    Idle,
    /// A frame was handed over.
    Fed,
    /// Read more from the client into the buffer, then call `feed` again.
    NeedBytes,
    /// Write `100 Continue` first.
    SendContinue,
}

/// A body for a request framed as `framing`, and the feed that fills it (`None` when the
/// request has no body).
pub fn channel(framing: RequestFraming, expect_continue: bool) -> (RequestBody, Option<BodyFeed>) {
    let (decoder, left) = match framing {
        RequestFraming::Empty => return (RequestBody::empty(), None),
        RequestFraming::Length(n) => (Decoder::Length(n), Some(n)),
        RequestFraming::Chunked => (Decoder::Chunked(ChunkedDecoder::default()), None),
    };
    let shared = Arc::new(Mutex::new(Exchange::default()));
    let body = RequestBody {
        shared: Some(Arc::clone(&shared)),
        left,
        done: false,
    };
    let feed = BodyFeed {
        shared,
        decoder,
        continue_owed: expect_continue,
        complete: false,
        failed: false,
    };
    (body, Some(feed))
}

impl BodyFeed {
    /// The whole body was read from the client.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The body failed (malformed, or the client closed mid-body).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether the connection may read the next request after this body: the body was
    /// read to its end without an error.
    pub fn is_clean(&self) -> bool {
        self.complete && !self.failed
    }

    /// Whether the request path dropped the body.
    pub fn is_dropped(&self) -> bool {
        self.shared.lock().map_or(true, |e| e.dropped)
    }

    /// Hands over the next frame from `buf` if the body asked for one.
    pub fn feed(&mut self, buf: &mut BytesMut) -> FeedStep {
        if self.complete || self.failed {
            return FeedStep::Idle;
        }
        let Ok(mut exchange) = self.shared.lock() else {
            self.failed = true;
            return FeedStep::Idle;
        };
        if exchange.dropped || !exchange.wanted || exchange.frame.is_some() {
            return FeedStep::Idle;
        }
        if self.continue_owed {
            self.continue_owed = false;
            // Bytes already here: the client did not wait for the 100.
            if buf.is_empty() {
                return FeedStep::SendContinue;
            }
        }
        let frame = match take(&mut self.decoder, &mut self.complete, buf) {
            Ok(Some(data)) => Ok(data),
            Ok(None) => return FeedStep::NeedBytes,
            Err(err) => {
                self.failed = true;
                Err(err)
            }
        };
        exchange.ended = self.complete || self.failed;
        exchange.frame = Some(frame);
        exchange.wanted = false;
        if let Some(waker) = exchange.waker.take() {
            waker.wake();
        }
        FeedStep::Fed
    }

    /// Discards what is left of the body when all of it is already in `buf` (the request
    /// path answered without reading it). Whether the body is now complete.
    pub fn discard_buffered(&mut self, buf: &mut BytesMut) -> bool {
        while !self.complete && !self.failed {
            match take(&mut self.decoder, &mut self.complete, buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        self.is_clean()
    }

    /// The client closed before the body was complete.
    pub fn client_closed(&mut self) {
        if self.complete || self.failed {
            return;
        }
        self.failed = true;
        if let Ok(mut exchange) = self.shared.lock() {
            exchange.frame = Some(Err(RequestBodyError::Incomplete));
            exchange.ended = true;
            if let Some(waker) = exchange.waker.take() {
                waker.wake();
            }
        }
    }
}

/// Decodes the next piece of body from `buf`: `Ok(None)` when more bytes are needed. The
/// last piece may be empty (the end of a chunked body); `complete` is set with it.
fn take(
    decoder: &mut Decoder,
    complete: &mut bool,
    buf: &mut BytesMut,
) -> Result<Option<Bytes>, RequestBodyError> {
    match decoder {
        Decoder::Length(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            *left -= take as u64;
            *complete = *left == 0;
            Ok(Some(buf.split_to(take).freeze()))
        }
        Decoder::Chunked(decoder) => loop {
            match decoder.decode(buf)? {
                Decoded::Data(data) => return Ok(Some(data)),
                // Trailers of a request are not forwarded (hyper did the same).
                Decoded::Trailers(_) => continue,
                Decoded::End => {
                    *complete = true;
                    return Ok(Some(Bytes::new()));
                }
                Decoded::NeedMore => return Ok(None),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Polls `body` to its end, feeding it from `buf` whenever it waits.
    fn collect(
        body: &mut RequestBody,
        feed: &mut BodyFeed,
        buf: &mut BytesMut,
    ) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        for _ in 0..100 {
            match Pin::new(&mut *body).poll_frame(&mut noop()) {
                Poll::Ready(Some(Ok(frame))) => {
                    out.extend_from_slice(&frame.into_data().unwrap_or_default())
                }
                Poll::Ready(Some(Err(err))) => return Err(err),
                Poll::Ready(None) => return Ok(out),
                Poll::Pending => {
                    feed.feed(buf);
                }
            }
        }
        panic!("body never ended");
    }

    #[test]
    fn length_body_is_fed_on_demand_and_ends() {
        let (mut body, feed) = channel(RequestFraming::Length(5), false);
        let mut feed = feed.unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert!(
            matches!(feed.feed(&mut buf), FeedStep::Idle),
            "not asked yet"
        );
        assert!(Pin::new(&mut body).poll_frame(&mut noop()).is_pending());
        assert!(matches!(feed.feed(&mut buf), FeedStep::Fed));
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut noop()) else {
            panic!("a frame");
        };
        assert_eq!(frame.into_data().unwrap(), &b"hel"[..]);
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(Pin::new(&mut body).poll_frame(&mut noop()).is_pending());
        assert!(matches!(feed.feed(&mut buf), FeedStep::NeedBytes));
        buf.extend_from_slice(b"loGET");
        assert_eq!(collect(&mut body, &mut feed, &mut buf).unwrap(), b"lo");
        assert!(feed.is_clean());
        assert_eq!(&buf[..], b"GET", "the next request stays");
        assert!(body.is_end_stream());
    }

    #[test]
    fn chunked_body_decodes_and_errors_reach_the_body() {
        let (mut body, feed) = channel(RequestFraming::Chunked, true);
        let mut feed = feed.unwrap();
        let mut buf = BytesMut::new();
        assert!(Pin::new(&mut body).poll_frame(&mut noop()).is_pending());
        assert!(matches!(feed.feed(&mut buf), FeedStep::SendContinue));
        assert!(matches!(feed.feed(&mut buf), FeedStep::NeedBytes));
        buf.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET");
        assert_eq!(
            collect(&mut body, &mut feed, &mut buf).unwrap(),
            b"hello world"
        );
        assert!(feed.is_clean());
        assert_eq!(&buf[..], b"GET");

        let (mut body, feed) = channel(RequestFraming::Chunked, false);
        let mut feed = feed.unwrap();
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(collect(&mut body, &mut feed, &mut buf).is_err());
        assert!(!feed.is_clean());
    }

    #[test]
    fn a_client_close_fails_the_body_and_discard_takes_what_is_buffered() {
        let (mut body, feed) = channel(RequestFraming::Length(10), false);
        let mut feed = feed.unwrap();
        feed.client_closed();
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut noop()),
            Poll::Ready(Some(Err(_)))
        ));

        let (body, feed) = channel(RequestFraming::Length(4), false);
        let mut feed = feed.unwrap();
        drop(body);
        assert!(feed.is_dropped());
        let mut buf = BytesMut::from(&b"abcdGET"[..]);
        assert!(feed.discard_buffered(&mut buf));
        assert_eq!(&buf[..], b"GET");
        let (_body, feed) = channel(RequestFraming::Length(40), false);
        let mut buf = BytesMut::from(&b"abcd"[..]);
        assert!(!feed.unwrap().discard_buffered(&mut buf));
    }
}
