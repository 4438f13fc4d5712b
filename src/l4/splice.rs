//! Bidirectional byte copy between a client and a backend: each direction runs until
//! EOF, then shuts down the other side's write half (half-close); the tunnel ends when
//! both directions are done, on an error, or when no byte moved either way for
//! `tunnel_idle`. Returns the bytes moved each way. Used for upgraded L7 tunnels (TLS
//! streams); passthrough and tcp tunnels use `tcp_tunnel`, which shares the read-through
//! step here.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::woken::PollWhenWoken;

/// Largest read: the thread's scratch buffer.
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

pub(super) enum DirEnd {
    Eof,
    ReadError(io::Error),
    WriteError(io::Error),
}

thread_local! {
    /// One read's worth of bytes on the way through a worker thread. Bytes stay in it
    /// only within one poll: read, then written straight on; what the destination cannot
    /// take at once moves to the direction's own backlog. An idle or a flowing tunnel
    /// therefore holds no buffer of its own, and a new connection allocates none
    /// (HAProxy, likewise, takes a buffer when bytes arrive and releases it when empty).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// What one read-through poll did.
pub(super) enum Step {
    /// The source sent EOF.
    Eof,
    /// Bytes read; `written` of them went straight on, the rest are in the backlog.
    Moved { written: usize },
}

/// Reads once from `from` and writes what it got to `to` in the same poll; the bytes
/// `to` does not take now are appended to `backlog`.
pub(super) fn poll_read_through<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    backlog: &mut Vec<u8>,
) -> Poll<Result<Step, DirEnd>>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let shared = SCRATCH.try_with(|cell| {
        let Ok(mut scratch) = cell.try_borrow_mut() else {
            return None;
        };
        Some(read_through_with(cx, from, to, backlog, &mut scratch))
    });
    match shared {
        Ok(Some(step)) => step,
        // The thread's buffer is gone (thread exit) or in use: a buffer of our own.
        _ => read_through_with(cx, from, to, backlog, &mut vec![0; CHUNK]),
    }
}

fn read_through_with<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    backlog: &mut Vec<u8>,
    buf: &mut [u8],
) -> Poll<Result<Step, DirEnd>>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut read = ReadBuf::new(buf);
    match Pin::new(&mut *from).poll_read(cx, &mut read) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(DirEnd::ReadError(e))),
        Poll::Ready(Ok(())) => {}
    }
    let bytes = read.filled();
    if bytes.is_empty() {
        return Poll::Ready(Ok(Step::Eof));
    }
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *to).poll_write(cx, &bytes[written..]) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(DirEnd::WriteError(io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(k)) => written += k,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(DirEnd::WriteError(e))),
            Poll::Pending => break,
        }
    }
    backlog.extend_from_slice(&bytes[written..]);
    Poll::Ready(Ok(Step::Moved { written }))
}

/// Copies `from` → `to` until EOF, then shuts `to`'s write side down. Never ends on its
/// own while the peers are silent: the tunnel's one idle timer ([`splice_halves`])
/// bounds reads and stuck writes alike.
async fn copy_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &Activity,
    moved: &AtomicU64,
) -> DirEnd
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    // Bytes read but not yet taken by `to`; allocated only while some wait.
    let mut backlog: Vec<u8> = Vec::new();
    loop {
        match std::future::poll_fn(|cx| poll_read_through(cx, from, to, &mut backlog)).await {
            Err(end) => return end,
            Ok(Step::Eof) => {
                // Half-close: pass the EOF on, keep the other direction going.
                let _ = to.shutdown().await;
                return DirEnd::Eof;
            }
            Ok(Step::Moved { written }) => {
                moved.fetch_add(written as u64, Ordering::Relaxed);
                activity.touch();
            }
        }
        if backlog.is_empty() {
            continue;
        }
        let mut written = 0;
        while written < backlog.len() {
            match to.write(&backlog[written..]).await {
                Ok(0) => return DirEnd::WriteError(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    moved.fetch_add(k as u64, Ordering::Relaxed);
                    activity.touch();
                }
                Err(e) => return DirEnd::WriteError(e),
            }
        }
        // Drained: give the memory back until the destination falls behind again.
        backlog = Vec::new();
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
    )
    .await
}

/// Splices already-split halves.
pub async fn splice_halves<CR, CW, BR, BW>(
    client_read: &mut CR,
    client_write: &mut CW,
    backend_read: &mut BR,
    backend_write: &mut BW,
    idle: Duration,
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
    };
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    // Each direction, and the timer below, is polled only when its own waker fired:
    // `select!` polls every branch at each wake of the task, and a wake is for one
    // direction at a time.
    let upstream = PollWhenWoken::new(copy_one_way(client_read, backend_write, &activity, &up));
    let downstream = PollWhenWoken::new(copy_one_way(backend_read, client_write, &activity, &down));
    tokio::pin!(upstream);
    tokio::pin!(downstream);
    // One timer for the tunnel, armed at the idle deadline known when it was set. Bytes
    // moving push the real deadline later without touching the timer (no timer-wheel
    // work per chunk); when it fires before the real deadline it is re-armed there. It
    // also bounds a stuck write: a peer that stops reading stalls its direction, and a
    // stalled tunnel moves no byte either way.
    let idle_timer = PollWhenWoken::new(tokio::time::sleep_until(activity.idle_deadline(idle)));
    tokio::pin!(idle_timer);

    // Run both; an error on either side, or the idle deadline, ends the tunnel at once.
    let mut up_end: Option<DirEnd> = None;
    let mut down_end: Option<DirEnd> = None;
    let end = loop {
        tokio::select! {
            biased;
            e = &mut upstream, if up_end.is_none() => {
                match e {
                    DirEnd::Eof => up_end = Some(DirEnd::Eof),
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
            _ = &mut idle_timer => {
                if idle_or_rearm(idle_timer.as_mut().rearm(), &activity, idle) {
                    break SpliceEnd::Idle;
                }
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A wide client pipe and a 100-byte backend pipe: each read brings up to 32 KiB and
    /// the backend side takes at most 100 bytes per write, so most bytes go through the
    /// backlog.
    #[tokio::test]
    async fn bytes_the_destination_cannot_take_at_once_arrive_whole_and_in_order() {
        let (mut client_far, mut client_near) = tokio::io::duplex(64 * 1024);
        let (mut backend_near, mut backend_far) = tokio::io::duplex(100);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let tunnel = tokio::spawn(async move {
            splice(&mut client_near, &mut backend_near, Duration::from_secs(30)).await
        });
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_far.write_all(&sent).await.unwrap();
            client_far.shutdown().await.unwrap();
            client_far
        });
        let mut got = Vec::new();
        backend_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "bytes reordered or damaged");
        // The backend's EOF reaches the client and ends the tunnel.
        backend_far.shutdown().await.unwrap();
        let mut client_far = writer.await.unwrap();
        let mut rest = Vec::new();
        client_far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let outcome = tunnel.await.unwrap();
        assert_eq!(outcome.end, SpliceEnd::Closed);
        assert_eq!(outcome.client_to_backend, payload.len() as u64);
        assert_eq!(outcome.backend_to_client, 0);
    }

    /// A destination that takes nothing: the backlog holds the bytes and the idle clock
    /// still ends the tunnel.
    #[tokio::test]
    async fn a_destination_that_never_reads_ends_the_tunnel_when_idle() {
        let (mut client_far, mut client_near) = tokio::io::duplex(64 * 1024);
        let (mut backend_near, _backend_far) = tokio::io::duplex(100);
        client_far.write_all(&[7u8; 10_000]).await.unwrap();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            splice(
                &mut client_near,
                &mut backend_near,
                Duration::from_millis(200),
            ),
        )
        .await
        .unwrap();
        assert_eq!(outcome.end, SpliceEnd::Idle);
        assert_eq!(outcome.client_to_backend, 100);
    }
}
