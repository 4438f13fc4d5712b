//! Drives one client connection's HTTP/1.1 server side (`driver.rs`: keep-alive,
//! pipelining, upgrades, the 400/414/431 refusals of a bad head) under a watchdog with the
//! clocks an edge needs: `timeouts.request_header` runs from the first byte of a request until its
//! headers are complete (slowloris), and `timeouts.client_idle` runs while no request is
//! in flight and no byte arrives. On shutdown, idle connections close and busy ones
//! answer their current request with `Connection: close`.

mod driver;
pub mod request_body;
pub mod request_head;
pub mod response_head;
pub mod upgrade;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use driver::{DriveEnd, Driver};
pub use request_body::RequestBody;
pub use response_head::Answer;

/// Activity of one client connection, shared by its IO wrapper, its service and its
/// watchdog.
#[derive(Debug)]
pub struct ConnActivity {
    start: Instant,
    /// Requests whose response is not fully written yet.
    in_flight: AtomicUsize,
    /// Requests still waiting for their response head (bounded by the backend
    /// timeouts, so the stall clock does not run for them).
    awaiting_head: AtomicUsize,
    /// Milliseconds since `start` of the last byte read or response finished.
    last_ms: AtomicU64,
    /// Milliseconds since `start` (+1) when the first byte of a not-yet-parsed request
    /// arrived; 0 when no request is being read.
    header_since_ms: AtomicU64,
    /// Shutdown began: the next response says `Connection: close`.
    draining: AtomicBool,
    /// The request being handed to the request path named both Content-Length and
    /// Transfer-Encoding (it answers 400 and closes).
    conflicting: AtomicBool,
    /// Responses started (counted only under `max_requests_per_connection`).
    answered: AtomicU64,
    /// The response to the last request `max_requests_per_connection` allows went out.
    request_limit_hit: AtomicBool,
    /// The connection's place in its listener's opening stage, until its first request
    /// head is complete (a full listener may shed it meanwhile; `protect::shed`).
    opening: std::sync::Mutex<Option<crate::protect::shed::OpeningGuard>>,
    /// `opening` holds a guard (checked without the lock on every request).
    opening_held: AtomicBool,
    /// Cancelled when the connection is shed.
    shed: std::sync::OnceLock<CancellationToken>,
    /// The response being handed back should wait one scheduler turn before its first
    /// write (`write_after_turn`).
    write_after_turn: AtomicBool,
}

impl ConnActivity {
    fn new() -> Self {
        ConnActivity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            awaiting_head: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            header_since_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            conflicting: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            opening: std::sync::Mutex::new(None),
            opening_held: AtomicBool::new(false),
            shed: std::sync::OnceLock::new(),
            request_limit_hit: AtomicBool::new(false),
            write_after_turn: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.header_since_ms.load(Ordering::Relaxed) == 0
        {
            // No wake-up for the watchdog: its timer is never set later than
            // `request_header` from when it was set (`next_deadline`).
            self.header_since_ms.store(now + 1, Ordering::Relaxed);
        }
    }

    /// A request head is already partly buffered (pipelined): its header clock runs.
    fn head_started(&self) {
        if self.header_since_ms.load(Ordering::Relaxed) == 0 {
            self.header_since_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn set_conflicting(&self, conflicting: bool) {
        self.conflicting.store(conflicting, Ordering::Relaxed);
    }

    /// Whether the request just handed over named both Content-Length and
    /// Transfer-Encoding (asked once per request).
    pub fn take_conflicting(&self) -> bool {
        self.conflicting.swap(false, Ordering::Relaxed)
    }

    /// Asks that the response now being handed back wait one scheduler turn before its
    /// first write. The request path asks it when the backend connection closed as the
    /// response ended: each such response comes after a close (and its connect) on this
    /// core, a gap long enough for the client to fall asleep before every write; after
    /// the turn, the responses that were ready together leave together and the client is
    /// woken once for them (docs/benchmarking.md, "Writes after the turn").
    pub fn write_after_turn(&self) {
        self.write_after_turn.store(true, Ordering::Relaxed);
    }

    /// Whether the response being written was asked to wait a turn (asked once each).
    fn take_write_after_turn(&self) -> bool {
        self.write_after_turn.swap(false, Ordering::Relaxed)
    }

    /// Bytes went out to the client: the response is moving.
    fn bytes_written(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether shutdown began (responses then carry `Connection: close`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Keeps the connection in its listener's opening stage until its first request head
    /// is complete: a full listener may close it until then.
    pub fn hold_opening(&self, guard: crate::protect::shed::OpeningGuard) {
        let _ = self.shed.set(guard.shed());
        if let Ok(mut slot) = self.opening.lock() {
            *slot = Some(guard);
            self.opening_held.store(true, Ordering::Relaxed);
        }
    }

    /// Completes when the connection was shed (never when it holds no opening guard).
    async fn shed_signal(&self) {
        match self.shed.get() {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// A request's headers were parsed; it is now in flight.
    pub fn request_started(&self) {
        if self.opening_held.load(Ordering::Relaxed) {
            self.opening_held.store(false, Ordering::Relaxed);
            // Leaves the opening stage: never shed from now on.
            if let Ok(mut slot) = self.opening.lock() {
                slot.take();
            }
        }
        self.header_since_ms.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response was written to its end (or abandoned).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// Marks a request as waiting for its response head until dropped: meanwhile
/// `timeouts.connect` and `timeouts.backend_response` bound it, not the stall clock.
#[derive(Debug)]
pub struct AwaitingHead(Arc<ConnActivity>);

impl AwaitingHead {
    /// Starts waiting.
    pub fn new(activity: &Arc<ConnActivity>) -> Self {
        activity.awaiting_head.fetch_add(1, Ordering::Relaxed);
        AwaitingHead(Arc::clone(activity))
    }
}

impl Drop for AwaitingHead {
    fn drop(&mut self) {
        self.0.awaiting_head.fetch_sub(1, Ordering::Relaxed);
        // The stall clock starts now, not when the request arrived (the watchdog picks
        // this up at its next wake; no extra wake-up per request).
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
    }
}

/// Counts a request in flight until dropped (held by the response body).
#[derive(Debug)]
pub struct InFlight(pub Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Limits and clocks of a client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Headers must be complete within this from their first byte.
    pub request_header: Duration,
    /// Idle keep-alive connections close after this.
    pub client_idle: Duration,
    /// Largest request head (431 above it).
    pub max_header_bytes: usize,
    /// A request in flight may go this long without a byte moving to or from the
    /// client (a client that stopped reading its response): the larger of
    /// `client_idle` and `backend_response`.
    pub stalled: Duration,
    /// Requests served on the connection; the response to the last says
    /// `Connection: close` (`None`: no limit).
    pub max_requests: Option<u64>,
}

/// How long an idle keep-alive connection may stay open once a drain began.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// How a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEnd {
    /// Client closed, or a response ended the connection (Connection: close, HTTP/1.0).
    Closed,
    /// Idle past `client_idle`.
    Idle,
    /// Headers not complete within `request_header`.
    HeaderTimeout,
    /// Closed for shutdown.
    Shutdown,
    /// A request in flight made no progress for `stalled`.
    Stalled,
    /// A request head was refused and answered (400, 414 or 431) before closing.
    Refused(u16),
    /// Closed after the last request `max_requests_per_connection` allows.
    RequestLimit,
    /// Shed before its first request head was complete (the listener was full).
    Shed,
}

/// Serves HTTP/1.1 on `stream`, answering each request with the service
/// `make_service(activity)` makes, until the connection ends.
pub async fn serve_connection<S, F, Svc, Fut>(
    stream: S,
    limits: ConnLimits,
    shutdown: &CancellationToken,
    make_service: F,
) -> ConnEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Arc<ConnActivity>) -> Svc,
    Svc: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Answer>,
{
    let activity = Arc::new(ConnActivity::new());
    let service = make_service(Arc::clone(&activity));
    let conn = Driver::new(stream, Arc::clone(&activity), limits).run(service);
    tokio::pin!(conn);

    let mut end = ConnEnd::Closed;
    let mut limits = limits;
    // The futures live across iterations: the loop turns only when the watchdog's timer
    // fires (or on shutdown), never once per request. The timer may fire early (see
    // `next_deadline`); it is set again only when the deadline moves earlier or it fired.
    let mut armed = next_deadline(&activity, &limits);
    let sleep = tokio::time::sleep_until(armed);
    tokio::pin!(sleep);
    let cancelled = crate::woken::PollWhenWoken::new(shutdown.cancelled());
    tokio::pin!(cancelled);
    let shed = crate::woken::PollWhenWoken::new(activity.shed_signal());
    tokio::pin!(shed);
    loop {
        let deadline = next_deadline(&activity, &limits);
        if deadline < armed || sleep.is_elapsed() {
            armed = deadline;
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                match result {
                    Ok(DriveEnd::Refused(status)) => return ConnEnd::Refused(status),
                    Ok(DriveEnd::Closed | DriveEnd::Upgraded) => {}
                    Err(err) => tracing::debug!(error = %err, "client connection ended with an error"),
                }
                if end == ConnEnd::Closed && activity.request_limit_hit.load(Ordering::Relaxed) {
                    return ConnEnd::RequestLimit;
                }
                return end;
            }
            _ = &mut cancelled, if !activity.is_draining() => {
                activity.draining.store(true, Ordering::Relaxed);
                end = ConnEnd::Shutdown;
                // In-flight requests finish and say `Connection: close`; an idle
                // keep-alive connection gets a short last chance to send its next one.
                limits.client_idle = limits.client_idle.min(DRAIN_IDLE);
            }
            _ = &mut shed => {
                tracing::debug!("listener at max_connections: closing the oldest connection whose first request is incomplete");
                return ConnEnd::Shed;
            }
            _ = &mut sleep => {
                let now = activity.now_ms();
                let last = activity.last_ms.load(Ordering::Relaxed);
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    let waiting_for_backend = activity.awaiting_head.load(Ordering::Relaxed) > 0;
                    if !waiting_for_backend && now >= last + limits.stalled.as_millis() as u64 {
                        tracing::info!(timeout_ms = limits.stalled.as_millis() as u64, "no byte moved for a request in flight; closing");
                        return ConnEnd::Stalled;
                    }
                    continue;
                }
                let header_since = activity.header_since_ms.load(Ordering::Relaxed);
                if header_since > 0 {
                    if now + 1 >= header_since + limits.request_header.as_millis() as u64 {
                        tracing::info!(timeout_ms = limits.request_header.as_millis() as u64, "request headers not complete in time; closing");
                        return ConnEnd::HeaderTimeout;
                    }
                } else if now >= last + limits.client_idle.as_millis() as u64 {
                    tracing::debug!("keep-alive connection idle; closing");
                    return if activity.is_draining() { ConnEnd::Shutdown } else { ConnEnd::Idle };
                }
            }
        }
    }
}

/// When the watchdog looks next: the deadline of the connection's current stage, but no
/// later than the shortest timeout from now. Stage changes (a request head starting, a
/// response ending) then never need to wake the watchdog: any new deadline is at least
/// that far away. Firing early costs one look every few seconds per connection.
fn next_deadline(activity: &ConnActivity, limits: &ConnLimits) -> Instant {
    let now = activity.now_ms();
    let header_since = activity.header_since_ms.load(Ordering::Relaxed);
    let stage = if activity.awaiting_head.load(Ordering::Relaxed) > 0 {
        // Waiting for a backend: its own timeouts bound that; look again later.
        now + limits.stalled.as_millis() as u64
    } else if activity.in_flight.load(Ordering::Relaxed) > 0 {
        // Busy: no byte moving for `stalled` ends it.
        activity.last_ms.load(Ordering::Relaxed) + limits.stalled.as_millis() as u64
    } else if header_since > 0 {
        header_since - 1 + limits.request_header.as_millis() as u64
    } else {
        activity.last_ms.load(Ordering::Relaxed) + limits.client_idle.as_millis() as u64
    };
    let shortest = limits
        .client_idle
        .min(limits.request_header)
        .min(limits.stalled)
        .as_millis() as u64;
    activity.start + Duration::from_millis(stage.min(now + shortest))
}
