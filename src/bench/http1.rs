//! The load generator's HTTP/1.1 exchange, written for its one job as wrk's is: send a
//! request prebuilt once per run, then read the answer's status and count its body bytes
//! without keeping them. The head is parsed with httparse (what hyper parses with), its
//! framing fields read as the proxy reads a backend's (`http::headers::FramingFields`),
//! and a chunked body goes through the proxy's sans-io decoder (`http::exchange::chunked`).
//! hyper's client connection cost about three times wrk's user time per request, which
//! put `tollgate bench` more than 10 % below wrk on the same target (docs/benchmarking.md,
//! "tollgate bench vs wrk"). Memory is bounded: a head over [`MAX_HEAD_BYTES`] is refused
//! and body bytes are counted, then dropped.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::exchange::chunked::{ChunkedDecoder, Decoded};
use crate::http::headers::{field_kind, FramingFields};

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in a response head.
const MAX_FIELDS: usize = 100;
/// How much room each read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// A complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The final status (interim 1xx answers are skipped).
    pub status: u16,
    /// Body bytes, after removing the chunked coding.
    pub body_len: u64,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Reading or writing failed; `answered` says whether any byte of the answer had
    /// arrived.
    #[error("{error}")]
    Io {
        /// The error.
        error: std::io::Error,
        /// Some of the answer had arrived.
        answered: bool,
    },
    /// The server closed the connection before the answer was complete; `answered` says
    /// whether any byte of it had arrived.
    #[error("connection closed mid-answer")]
    Closed {
        /// Some of the answer had arrived.
        answered: bool,
    },
    /// The answer is not HTTP/1.x as this client reads it.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

impl ExchangeError {
    /// Whether any byte of the answer had arrived: a reused connection that fails before
    /// one did was most likely closed by the server while idle, and the request can be
    /// sent again on a new one (RFC 9112 §9.3.1), as HTTP clients do.
    pub fn answered(&self) -> bool {
        match self {
            ExchangeError::Io { answered, .. } | ExchangeError::Closed { answered } => *answered,
            ExchangeError::Malformed(_) => true,
        }
    }
}

/// `error` as an exchange error.
fn io(answered: bool) -> impl FnOnce(std::io::Error) -> ExchangeError {
    move |error| ExchangeError::Io { error, answered }
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed head: status, framing, keep-alive, and its length in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    len: usize,
}

/// Parses the head at the front of `buf`: `Ok(None)` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(ExchangeError::Malformed("head over 64 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Malformed("head does not parse")),
    };
    let (Some(status), Some(minor)) = (response.code, response.version) else {
        return Err(ExchangeError::Malformed("head does not parse"));
    };
    // The proxy's own reading of the framing fields (Content-Length lists, the final
    // coding, the Connection tokens), as for a backend's answer.
    let mut framing_fields = FramingFields::default();
    for field in response.headers.iter() {
        framing_fields.note_kind(field_kind(field.name.as_bytes()), field.value);
    }
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let framing = match (no_body, framing_fields.coding, framing_fields.length) {
        (true, _, _) => Framing::Length(0),
        (false, Some(true), _) => Framing::Chunked,
        // Another final coding, or no length: the body ends with the connection
        // (RFC 9112 §6.3).
        (false, Some(false), _) | (false, None, None) => Framing::UntilClose,
        (false, None, Some(Ok(length))) => Framing::Length(length),
        (false, None, Some(Err(()))) => return Err(ExchangeError::Malformed("bad Content-Length")),
    };
    let tokens = framing_fields.tokens;
    let keep_alive = framing != Framing::UntilClose
        && status != 101
        && !tokens.close
        && (minor == 1 || tokens.keep_alive);
    Ok(Some(Head {
        status,
        framing,
        keep_alive,
        len,
    }))
}

/// Reads more into `buf`; false at EOF.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<bool> {
    buf.reserve(READ_CHUNK);
    Ok(stream.read_buf(buf).await? > 0)
}

/// Sends `request` on `stream` and reads the answer. `buf` holds what was read and not
/// yet used; it starts empty on a new connection and is kept with it.
pub async fn exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    request: &[u8],
) -> Result<Answer, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut answered = !buf.is_empty();
    stream.write_all(request).await.map_err(io(answered))?;
    stream.flush().await.map_err(io(answered))?;
    let head = loop {
        match parse_head(buf)? {
            // An interim answer (100 Continue, 103 Early Hints): the final one follows.
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                buf.advance(head.len);
            }
            Some(head) => {
                buf.advance(head.len);
                break head;
            }
            None => {
                if !fill(stream, buf).await.map_err(io(answered))? {
                    return Err(ExchangeError::Closed { answered });
                }
                answered = true;
            }
        }
    };
    let body_len = match head.framing {
        Framing::Length(length) => read_length(stream, buf, length).await?,
        Framing::Chunked => read_chunked(stream, buf).await?,
        Framing::UntilClose => read_until_close(stream, buf).await?,
    };
    Ok(Answer {
        status: head.status,
        body_len,
        keep_alive: head.keep_alive,
    })
}

/// Counts a body of `length` bytes; bytes after it stay in `buf`.
async fn read_length<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    length: u64,
) -> Result<u64, ExchangeError> {
    let mut left = length;
    loop {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        buf.advance(take);
        left -= take as u64;
        if left == 0 {
            return Ok(length);
        }
        if !fill(stream, buf).await.map_err(io(true))? {
            return Err(ExchangeError::Closed { answered: true });
        }
    }
}

/// Counts a chunked body's data; bytes after its end stay in `buf`.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<u64, ExchangeError> {
    let mut decoder = ChunkedDecoder::default();
    let mut len = 0u64;
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Data(data)) => len += data.len() as u64,
            Ok(Decoded::Trailers(_)) => {}
            Ok(Decoded::End) => return Ok(len),
            Ok(Decoded::NeedMore) => {
                if !fill(stream, buf).await.map_err(io(true))? {
                    return Err(ExchangeError::Closed { answered: true });
                }
            }
            Err(_) => return Err(ExchangeError::Malformed("bad chunked coding")),
        }
    }
}

/// Counts a body that ends when the server closes.
async fn read_until_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<u64, ExchangeError> {
    let mut len = 0u64;
    loop {
        len += buf.len() as u64;
        buf.clear();
        if !fill(stream, buf).await.map_err(io(true))? {
            return Ok(len);
        }
    }
}

#[cfg(test)]
mod tests;
