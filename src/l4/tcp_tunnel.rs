//! The tunnel of a passthrough or plain TCP connection, as one hand-written future over
//! its two sockets: each direction copies until EOF and passes the EOF on (half-close);
//! the tunnel ends when both have, on an error, or when no byte moved either way for
//! `tunnel_idle`. A client that fails (a reset, or a write it refuses) is passed on to the
//! backend as a reset, and once the backend has finished sending, a client reset is
//! checked for before its last bytes are read, so that they are not forwarded to a
//! backend that is about to be reset anyway. It is what `splice::splice` does for any
//! two streams, made lean for the hot path: a wake polls only the direction (or the timer) whose waker fired
//! (`tunnel_wakers`), the idle clock is the kernel's coarse monotonic clock (no
//! `clock_gettime` through the vDSO's precise path per read), and the connection task
//! polls it directly, outside the connection's span (`conn_task`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::splice::{poll_read_through, SpliceEnd, SpliceOutcome, Step};
use super::tunnel_wakers::{PartWakers, DOWN, TIMER, UP};

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet taken by the destination; allocated only while some wait.
    backlog: Vec<u8>,
    /// Bytes that reached the destination.
    moved: u64,
    /// The source sent EOF and it was passed on.
    eof: bool,
}

/// Why a tunnel failed, for the connection's log line.
#[derive(Debug)]
pub struct TunnelFailure {
    /// Which side and operation: "client read", "backend write", ...
    pub what: &'static str,
    /// The error.
    pub error: io::Error,
}

/// What a finished tunnel did: the bytes, how it ended, and the error that ended it.
#[derive(Debug)]
pub struct TunnelDone {
    /// Bytes each way and the end reason.
    pub outcome: SpliceOutcome,
    /// Set when a read or write failed.
    pub failure: Option<TunnelFailure>,
}

pin_project_lite::pin_project! {
    /// Splices a client and a backend socket; both close when it is dropped.
    pub struct TcpTunnel {
        client: TcpStream,
        backend: TcpStream,
        up: Direction,
        down: Direction,
        idle: Duration,
        // Coarse milliseconds of the last byte moved either way.
        last_activity_ms: u64,
        wakers: PartWakers,
        // Armed at the idle deadline known when it was set; moving bytes push the real
        // deadline later without touching it, and it is re-armed there when it fires
        // early (no timer work per read).
        #[pin]
        timer: Sleep,
    }
}

impl TcpTunnel {
    /// A tunnel between `client` and a connected `backend`, idle after `idle`.
    pub fn new(client: TcpStream, backend: TcpStream, idle: Duration) -> Self {
        TcpTunnel {
            client,
            backend,
            up: Direction::default(),
            down: Direction::default(),
            idle,
            last_activity_ms: coarse_now_ms(),
            wakers: PartWakers::new(),
            timer: tokio::time::sleep_until(Instant::now() + idle),
        }
    }
}

/// How a direction's failures are named and how they end the tunnel.
struct Sides {
    read: (SpliceEnd, &'static str),
    write: (SpliceEnd, &'static str),
    /// Once the other direction is done, look for a reset of the source before reading
    /// it (see [`pending_error`]). Only for the client: once the backend has finished
    /// sending, what a client still sends is a TLS close_notify or the tail of an
    /// upload, and it often comes with the client's reset (a client that closes with
    /// the backend's last bytes unread); then the tunnel ends without forwarding it.
    reset_first_once_other_done: bool,
}

const CLIENT_TO_BACKEND: Sides = Sides {
    read: (SpliceEnd::ClientError, "client read"),
    write: (SpliceEnd::BackendError, "backend write"),
    reset_first_once_other_done: true,
};

const BACKEND_TO_CLIENT: Sides = Sides {
    read: (SpliceEnd::BackendError, "backend read"),
    write: (SpliceEnd::ClientError, "client write"),
    reset_first_once_other_done: false,
};

/// Polls one direction with its own waker; the end reason and failure when it failed.
fn step(
    waker: &std::task::Waker,
    (from, to): (&mut TcpStream, &mut TcpStream),
    dir: &mut Direction,
    last_activity_ms: &mut u64,
    other_done: bool,
    sides: &Sides,
) -> Option<(SpliceEnd, TunnelFailure)> {
    if other_done && sides.reset_first_once_other_done {
        if let Some(error) = pending_error(from) {
            let (end, what) = sides.read;
            return Some((end, TunnelFailure { what, error }));
        }
    }
    let mut cx = Context::from_waker(waker);
    let ((end, what), error) =
        match poll_direction(&mut cx, from, to, dir, last_activity_ms, other_done) {
            Poll::Ready(Err(DirFailure::Read(e))) => (sides.read, e),
            Poll::Ready(Err(DirFailure::Write(e))) => (sides.write, e),
            Poll::Ready(Ok(())) | Poll::Pending => return None,
        };
    Some((end, TunnelFailure { what, error }))
}

impl Future for TcpTunnel {
    type Output = TunnelDone;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelDone> {
        let mut this = self.project();
        let fired = this.wakers.take_fired(cx.waker());
        let mut failed = None;
        if fired & UP != 0 && !this.up.eof {
            let other_done = this.down.eof;
            failed = step(
                &this.wakers.up,
                (this.client, this.backend),
                this.up,
                this.last_activity_ms,
                other_done,
                &CLIENT_TO_BACKEND,
            );
        }
        if failed.is_none() && fired & DOWN != 0 && !this.down.eof {
            let other_done = this.up.eof;
            failed = step(
                &this.wakers.down,
                (this.backend, this.client),
                this.down,
                this.last_activity_ms,
                other_done,
                &BACKEND_TO_CLIENT,
            );
        }
        let end = match failed {
            Some((end, why)) => Some((end, Some(why))),
            None if this.up.eof && this.down.eof => Some((SpliceEnd::Closed, None)),
            None if fired & TIMER != 0
                && idle_timer_expired(
                    this.timer.as_mut(),
                    this.wakers,
                    *this.last_activity_ms,
                    *this.idle,
                ) =>
            {
                Some((SpliceEnd::Idle, None))
            }
            None => None,
        };
        let Some((end, failure)) = end else {
            return Poll::Pending;
        };
        if end == SpliceEnd::ClientError {
            // The client is gone: the backend learns it as it would from the client
            // itself, by a reset (the close with a zero linger sends it), and stops
            // work on a request nobody will read. Not the other way round: a client
            // may still be reading what a backend sent before its reset.
            let _ = socket2::SockRef::from(&*this.backend).set_linger(Some(Duration::ZERO));
        }
        Poll::Ready(TunnelDone {
            outcome: SpliceOutcome {
                client_to_backend: this.up.moved,
                backend_to_client: this.down.moved,
                end,
            },
            failure,
        })
    }
}

/// Polls the idle timer (with its own waker): true when it fired and nothing moved for
/// `idle`; when it fired early, it is re-armed at the real deadline and polled again so
/// that it registers.
fn idle_timer_expired(
    mut timer: Pin<&mut Sleep>,
    wakers: &PartWakers,
    last_activity_ms: u64,
    idle: Duration,
) -> bool {
    let mut part = Context::from_waker(&wakers.timer);
    loop {
        if timer.as_mut().poll(&mut part).is_pending() {
            return false;
        }
        let quiet_for = Duration::from_millis(coarse_now_ms().saturating_sub(last_activity_ms));
        let Some(left) = idle.checked_sub(quiet_for).filter(|left| !left.is_zero()) else {
            return true;
        };
        timer.as_mut().reset(Instant::now() + left);
    }
}

/// The error pending on `socket` (the kernel's `SO_ERROR`, taken; a reset, mostly). Checked
/// only in a half-closed tunnel, before reading the side that may have reset: the reset
/// ends the tunnel at once, without the read of what came before it, its write to the
/// other side, and the read that would then report the reset.
fn pending_error(socket: &TcpStream) -> Option<io::Error> {
    match socket.take_error() {
        Ok(pending) => pending,
        Err(error) => Some(error),
    }
}

/// A direction's read or write failed.
enum DirFailure {
    Read(io::Error),
    Write(io::Error),
}

/// Moves bytes `from` → `to` until `from` has nothing more now (`Pending`, with this
/// direction's waker registered) or sent EOF (`Ready(Ok)`, the EOF passed on unless the
/// other direction is done too: then the sockets close at once and the close sends the
/// FIN, one `shutdown` less per connection and no ENOTCONN from a peer already gone).
fn poll_direction(
    cx: &mut Context<'_>,
    from: &mut TcpStream,
    to: &mut TcpStream,
    dir: &mut Direction,
    last_activity_ms: &mut u64,
    other_done: bool,
) -> Poll<Result<(), DirFailure>> {
    loop {
        if !dir.backlog.is_empty() {
            let mut written = 0;
            while written < dir.backlog.len() {
                match Pin::new(&mut *to).poll_write(cx, &dir.backlog[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(DirFailure::Write(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(k)) => written += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(DirFailure::Write(e))),
                    Poll::Pending => {
                        dir.backlog.drain(..written);
                        dir.moved += written as u64;
                        if written > 0 {
                            *last_activity_ms = coarse_now_ms();
                        }
                        return Poll::Pending;
                    }
                }
            }
            dir.moved += written as u64;
            *last_activity_ms = coarse_now_ms();
            // Drained: give the memory back until the destination falls behind again.
            dir.backlog = Vec::new();
        }
        match poll_read_through(cx, from, to, &mut dir.backlog) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(super::splice::DirEnd::ReadError(e))) => {
                return Poll::Ready(Err(DirFailure::Read(e)))
            }
            Poll::Ready(Err(super::splice::DirEnd::WriteError(e))) => {
                return Poll::Ready(Err(DirFailure::Write(e)))
            }
            Poll::Ready(Err(super::splice::DirEnd::Eof)) | Poll::Ready(Ok(Step::Eof)) => {
                dir.eof = true;
                if !other_done {
                    // A TCP stream's shutdown completes at once; a failure (the peer is
                    // gone) shows up on the other direction's next read or write.
                    let _ = Pin::new(&mut *to).poll_shutdown(cx);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(Step::Moved { written })) => {
                dir.moved += written as u64;
                *last_activity_ms = coarse_now_ms();
            }
        }
    }
}

/// Milliseconds of the kernel's coarse monotonic clock: the time of the last tick, read
/// without the precise clock's counter read and conversion (a few ms behind at most,
/// plenty for an idle timeout in seconds). The same time base as `Instant`.
#[cfg(target_os = "linux")]
pub fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        // Unreachable on Linux ≥ 2.6.32; the precise clock has the same time base.
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Milliseconds since the first call (no coarse clock outside Linux).
#[cfg(not(target_os = "linux"))]
pub fn coarse_now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets: (near end for the tunnel, far end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// A tunnel between two fresh pairs, running: (client, backend, the tunnel's task).
    async fn running() -> (TcpStream, TcpStream, tokio::task::JoinHandle<TunnelDone>) {
        let (client_near, client) = pair().await;
        let (backend_near, backend) = pair().await;
        let tunnel = tokio::spawn(TcpTunnel::new(
            client_near,
            backend_near,
            Duration::from_secs(30),
        ));
        (client, backend, tunnel)
    }

    /// `from` sends `bytes` and its EOF; `to` reads them all through the tunnel.
    async fn send_and_finish(from: &mut TcpStream, to: &mut TcpStream, bytes: &[u8]) {
        from.write_all(bytes).await.unwrap();
        from.shutdown().await.unwrap();
        let mut got = Vec::new();
        to.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, bytes);
    }

    /// Closes `stream` with SO_LINGER 0: the close sends a reset.
    fn reset(stream: TcpStream) {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }

    async fn finished(tunnel: tokio::task::JoinHandle<TunnelDone>) -> TunnelDone {
        tokio::time::timeout(Duration::from_secs(10), tunnel)
            .await
            .unwrap()
            .unwrap()
    }

    async fn assert_reset(stream: &mut TcpStream) {
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn half_close_each_way_and_the_bytes_counted() {
        let (mut client, mut backend, tunnel) = running().await;
        send_and_finish(&mut client, &mut backend, b"request").await;
        // The client's EOF reached the backend; the backend can still answer.
        send_and_finish(&mut backend, &mut client, b"a longer response").await;
        let done = finished(tunnel).await;
        assert_eq!(done.outcome.end, SpliceEnd::Closed);
        assert_eq!(done.outcome.client_to_backend, 7);
        assert_eq!(done.outcome.backend_to_client, 17);
        assert!(done.failure.is_none());
    }

    #[tokio::test]
    async fn a_client_reset_ends_the_tunnel_as_a_client_error() {
        let (client, mut backend, tunnel) = running().await;
        reset(client);
        let done = finished(tunnel).await;
        assert_eq!(done.outcome.end, SpliceEnd::ClientError);
        let failure = done.failure.expect("the reset is reported");
        assert_eq!(failure.what, "client read");
        // The backend is reset too, as the client would have reset it.
        assert_reset(&mut backend).await;
    }

    #[tokio::test]
    async fn a_client_reset_after_the_backend_finished_is_not_preceded_by_its_last_bytes() {
        let (mut client, mut backend, tunnel) = running().await;
        send_and_finish(&mut backend, &mut client, b"response").await;
        // The backend's EOF reached the client; the client sends one more record (a
        // TLS close_notify) and resets, both before the tunnel runs again (this
        // runtime has one thread and the test does not yield in between).
        client.write_all(b"close_notify").await.unwrap();
        reset(client);
        let done = finished(tunnel).await;
        assert_eq!(done.outcome.end, SpliceEnd::ClientError);
        assert_eq!(done.outcome.client_to_backend, 0);
        assert_eq!(done.outcome.backend_to_client, 8);
        assert_eq!(
            done.failure.expect("the reset is reported").what,
            "client read"
        );
        // The backend, still reading, gets the reset, not the bytes and an EOF.
        assert_reset(&mut backend).await;
    }

    #[tokio::test]
    async fn after_the_backend_finished_a_client_still_sends_and_half_closes() {
        let (mut client, mut backend, tunnel) = running().await;
        send_and_finish(&mut backend, &mut client, b"ready").await;
        // No reset: what the client sends now still reaches the backend, then its EOF.
        send_and_finish(&mut client, &mut backend, b"the upload").await;
        let done = finished(tunnel).await;
        assert_eq!(done.outcome.end, SpliceEnd::Closed);
        assert!(done.failure.is_none());
    }

    #[tokio::test]
    async fn a_silent_tunnel_ends_idle() {
        let (client_near, _client) = pair().await;
        let (backend_near, _backend) = pair().await;
        let started = std::time::Instant::now();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            TcpTunnel::new(client_near, backend_near, Duration::from_millis(200)),
        )
        .await
        .unwrap();
        assert_eq!(done.outcome.end, SpliceEnd::Idle);
        // The coarse clock may run a tick (a few ms) behind.
        assert!(started.elapsed() >= Duration::from_millis(180));
    }

    #[test]
    fn the_coarse_clock_keeps_the_monotonic_clocks_time_base() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only into `ts`.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
            0
        );
        let precise = (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000;
        let coarse = coarse_now_ms();
        assert!(
            coarse <= precise + 1 && precise.saturating_sub(coarse) < 100,
            "{coarse} vs {precise}"
        );
    }
}
