//! Reads the start of a connection until the ClientHello parser can answer, under
//! `timeouts.client_hello` and a 64 KiB bound, and keeps every byte it read so the side
//! that takes the connection (a passthrough backend, or rustls) sees them replayed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::client_hello::{parse_client_hello, HelloParse, MAX_CLIENT_HELLO_BYTES};

/// Why the peek gave up. The names are the `reason` label of
/// `tollgate_client_hello_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekFailure {
    /// The first bytes are not a TLS handshake.
    #[error("not TLS")]
    NotTls,
    /// The ClientHello did not arrive in time, or the client closed before it was whole.
    #[error("ClientHello incomplete before the timeout or EOF")]
    Timeout,
    /// The ClientHello exceeds 64 KiB.
    #[error("ClientHello larger than 64 KiB")]
    TooLarge,
    /// TLS framing, but not a valid ClientHello.
    #[error("malformed ClientHello")]
    Malformed,
}

impl PeekFailure {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            PeekFailure::NotTls => "not_tls",
            PeekFailure::Timeout => "timeout",
            PeekFailure::TooLarge => "too_large",
            PeekFailure::Malformed => "malformed",
        }
    }
}

/// A parsed ClientHello and the bytes it came in.
#[derive(Debug)]
pub struct PeekedHello {
    /// The SNI, if any (as sent).
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
    /// Every byte read from the client so far, to replay.
    pub buffered: Vec<u8>,
}

/// Reads from `stream` until a ClientHello is complete.
///
/// Errors: a [`PeekFailure`] (client's fault), or an I/O error from the socket.
pub async fn peek_client_hello<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<PeekedHello, PeekError>
where
    S: AsyncRead + Unpin,
{
    // One read's chunk: the first `reserve` below then needs no reallocation.
    let mut buffered: Vec<u8> = Vec::with_capacity(4096);
    let read_all = async {
        let mut needed = 5usize;
        loop {
            // Read in chunks, never past the 64 KiB bound (checked below).
            // Into the spare capacity, not zeroed first: only the bytes read are kept.
            let start = buffered.len();
            let chunk = 4096.min(MAX_CLIENT_HELLO_BYTES - start);
            buffered.reserve(chunk);
            let n = match stream.read_buf(&mut (&mut buffered).limit(chunk)).await {
                Ok(n) => n,
                Err(e) => return Err(PeekError::Io(e)),
            };
            if n == 0 {
                return Err(PeekError::Failure(match parse_client_hello(&buffered) {
                    HelloParse::NotTls => PeekFailure::NotTls,
                    HelloParse::Malformed => PeekFailure::Malformed,
                    HelloParse::TooLarge => PeekFailure::TooLarge,
                    _ => PeekFailure::Timeout,
                }));
            }
            // Below one record header, parse anyway: a first byte that is not a
            // handshake record is refused at once.
            if buffered.len() >= 5 && buffered.len() < needed {
                continue;
            }
            match parse_client_hello(&buffered) {
                HelloParse::Sni { name, alpn } => return Ok((Some(name), alpn)),
                HelloParse::NoSni { alpn } => return Ok((None, alpn)),
                HelloParse::NotTls => return Err(PeekError::Failure(PeekFailure::NotTls)),
                HelloParse::Malformed => return Err(PeekError::Failure(PeekFailure::Malformed)),
                HelloParse::TooLarge => return Err(PeekError::Failure(PeekFailure::TooLarge)),
                HelloParse::Incomplete { needed: n } => {
                    if buffered.len() >= MAX_CLIENT_HELLO_BYTES {
                        return Err(PeekError::Failure(PeekFailure::TooLarge));
                    }
                    needed = n;
                }
            }
        }
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(Ok((sni, alpn))) => Ok(PeekedHello {
            sni,
            alpn,
            buffered,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PeekError::Failure(PeekFailure::Timeout)),
    }
}

/// Why [`peek_client_hello`] did not return a ClientHello.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The client's bytes are not an acceptable ClientHello.
    #[error("{0}")]
    Failure(PeekFailure),
    /// The socket failed.
    #[error("read: {0}")]
    Io(io::Error),
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
/// Lets rustls (or any reader) see the bytes the peek already consumed.
#[derive(Debug)]
pub struct ReplayStream<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> ReplayStream<S> {
    /// Wraps `inner`, replaying `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        ReplayStream {
            prefix,
            position: 0,
            inner,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplayStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            if this.position == this.prefix.len() {
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplayStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
