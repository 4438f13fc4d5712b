//! Bidirectional byte copy between a client and a backend: each direction runs until
//! EOF, then shuts down the other side's write half (half-close); the tunnel ends when
//! both directions are done, on an error, or when no byte moved either way for
//! `tunnel_idle`. Returns the bytes moved each way.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Buffer per direction.
const CHUNK: usize = 32 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides sent EOF.
    Closed,
    /// Nothing moved for `tunnel_idle`.
    Idle,
    /// The client side failed (reset, broken pipe).
    ClientError,
    /// The backend side failed.
    BackendError,
}

impl SpliceEnd {
    /// Label for logs and access lines.
    pub fn as_str(self) -> &'static str {
        match self {
            SpliceEnd::Closed => "closed",
            SpliceEnd::Idle => "idle_timeout",
            SpliceEnd::ClientError => "client_error",
            SpliceEnd::BackendError => "backend_error",
        }
    }
}

/// Bytes moved and how the tunnel ended.
#[derive(Debug, Clone, Copy)]
pub struct SpliceOutcome {
    /// Client → backend bytes (not counting a replayed prefix).
    pub client_to_backend: u64,
    /// Backend → client bytes.
    pub backend_to_client: u64,
    /// Why it ended.
    pub end: SpliceEnd,
}

/// Shared idle clock: milliseconds since `start` of the last byte moved either way.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Directions that reached EOF.
    eofs: AtomicU8,
    /// The caller closes both sockets as soon as the tunnel ends (raw TCP): the last
    /// direction's EOF needs no `shutdown`, the close sends the FIN (one syscall less
    /// per connection, and no ENOTCONN from a peer already gone).
    close_follows: bool,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

enum DirEnd {
    Eof,
    Idle,
    ReadError(io::Error),
    WriteError(io::Error),
}

/// Copies `from` → `to` until EOF, then shuts `to`'s write side down. Ends with `Idle`
/// when neither a read nor a write moved a byte (in either direction) for `idle`.
async fn copy_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &Activity,
    idle: Duration,
    moved: &AtomicU64,
) -> DirEnd
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    // Not zeroed: `read_buf` fills the spare capacity and only what was read is used.
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    // One timer per direction, armed at the idle deadline known when it was set. Bytes
    // moving push the real deadline later without touching the timer (no timer-wheel
    // work per chunk); when it fires before the real deadline it is re-armed there.
    let idle_timer = tokio::time::sleep_until(activity.idle_deadline(idle));
    tokio::pin!(idle_timer);
    loop {
        buf.clear();
        let n = loop {
            tokio::select! {
                biased;
                read = from.read_buf(&mut buf) => break read,
                _ = &mut idle_timer => {
                    if idle_or_rearm(idle_timer.as_mut(), activity, idle) {
                        return DirEnd::Idle;
                    }
                }
            }
        };
        let n = match n {
            Ok(0) => {
                // Half-close: pass the EOF on, keep the other direction going.
                let last = activity.eofs.fetch_add(1, Ordering::Relaxed) == 1;
                if !(last && activity.close_follows) {
                    let _ = to.shutdown().await;
                }
                return DirEnd::Eof;
            }
            Ok(n) => n,
            Err(e) => return DirEnd::ReadError(e),
        };
        activity.touch();
        // The idle clock also bounds writes: a peer that stops reading stalls the copy,
        // and a stalled tunnel moves no byte either way.
        let mut written = 0;
        while written < n {
            tokio::select! {
                biased;
                wrote = to.write(&buf[written..n]) => match wrote {
                    Ok(0) => return DirEnd::WriteError(io::ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        written += k;
                        moved.fetch_add(k as u64, Ordering::Relaxed);
                        activity.touch();
                    }
                    Err(e) => return DirEnd::WriteError(e),
                },
                _ = &mut idle_timer => {
                    if idle_or_rearm(idle_timer.as_mut(), activity, idle) {
                        return DirEnd::Idle;
                    }
                }
            }
        }
    }
}

/// The idle timer fired: true when nothing moved for `idle`; otherwise the timer is
/// re-armed at the real deadline (bytes moved since it was set).
fn idle_or_rearm(timer: Pin<&mut Sleep>, activity: &Activity, idle: Duration) -> bool {
    let deadline = activity.idle_deadline(idle);
    if Instant::now() >= deadline {
        return true;
    }
    timer.reset(deadline);
    false
}

/// Splices `client` and `backend` both ways until both have sent EOF, one fails, or the
/// tunnel is idle for `idle`.
pub async fn splice<C, B>(client: &mut C, backend: &mut B, idle: Duration) -> SpliceOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    splice_halves(
        &mut client_read,
        &mut client_write,
        &mut backend_read,
        &mut backend_write,
        idle,
        false,
    )
    .await
}

/// [`splice`] for two TCP sockets, split without locks. The caller closes both when
/// it returns.
pub async fn splice_tcp(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
) -> SpliceOutcome {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    splice_halves(
        &mut client_read,
        &mut client_write,
        &mut backend_read,
        &mut backend_write,
        idle,
        true,
    )
    .await
}

/// Splices already-split halves. `close_follows`: the caller closes both sides as soon
/// as this returns, so the second EOF is passed on by that close, not by a `shutdown`.
pub async fn splice_halves<CR, CW, BR, BW>(
    client_read: &mut CR,
    client_write: &mut CW,
    backend_read: &mut BR,
    backend_write: &mut BW,
    idle: Duration,
    close_follows: bool,
) -> SpliceOutcome
where
    CR: AsyncRead + Unpin + ?Sized,
    CW: AsyncWrite + Unpin + ?Sized,
    BR: AsyncRead + Unpin + ?Sized,
    BW: AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        eofs: AtomicU8::new(0),
        close_follows,
    };
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let upstream = copy_one_way(client_read, backend_write, &activity, idle, &up);
    let downstream = copy_one_way(backend_read, client_write, &activity, idle, &down);
    tokio::pin!(upstream);
    tokio::pin!(downstream);

    // Run both; an error or idle on either side ends the tunnel at once.
    let mut up_end: Option<DirEnd> = None;
    let mut down_end: Option<DirEnd> = None;
    let end = loop {
        tokio::select! {
            e = &mut upstream, if up_end.is_none() => {
                match e {
                    DirEnd::Eof => up_end = Some(DirEnd::Eof),
                    DirEnd::Idle => break SpliceEnd::Idle,
                    DirEnd::ReadError(e) => {
                        tracing::debug!(error = %e, "client read failed");
                        break SpliceEnd::ClientError;
                    }
                    DirEnd::WriteError(e) => {
                        tracing::debug!(error = %e, "backend write failed");
                        break SpliceEnd::BackendError;
                    }
                }
            }
            e = &mut downstream, if down_end.is_none() => {
                match e {
                    DirEnd::Eof => down_end = Some(DirEnd::Eof),
                    DirEnd::Idle => break SpliceEnd::Idle,
                    DirEnd::ReadError(e) => {
                        tracing::debug!(error = %e, "backend read failed");
                        break SpliceEnd::BackendError;
                    }
                    DirEnd::WriteError(e) => {
                        tracing::debug!(error = %e, "client write failed");
                        break SpliceEnd::ClientError;
                    }
                }
            }
        }
        if up_end.is_some() && down_end.is_some() {
            break SpliceEnd::Closed;
        }
    };
    SpliceOutcome {
        client_to_backend: up.load(Ordering::Relaxed),
        backend_to_client: down.load(Ordering::Relaxed),
        end,
    }
}
