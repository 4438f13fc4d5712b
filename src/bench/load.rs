//! The load generator behind `tollgate bench`: HTTP/1.1 over TCP or TLS (rustls),
//! `connections` concurrent connections, closed loop (each connection sends its next
//! request when the previous answer is complete) or open loop at a fixed total rate with
//! latency measured from each request's intended send time (coordinated omission
//! corrected, as wrk2 does). Keep-alive or a new connection per request, with or
//! without TLS session resumption. Every response's status and body length are
//! checked; anything else counts as an error. Latencies go into an HdrHistogram. The
//! HTTP/1.1 exchange itself is `http1.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;

pub use super::errors::{ErrorCounts, ErrorKind};
use super::http1;
use super::schedule::{self, Schedule};
use super::target::{target, Target};

/// Longest `--duration` or `--timeout` accepted.
const MAX_SPAN: Duration = Duration::from_secs(365 * 24 * 3600);

/// Highest latency the histogram records (60 s, in microseconds).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Target URL (`http://` or `https://`).
    pub url: String,
    /// Connect here instead of resolving the URL's host (like curl's `--resolve`).
    pub connect_to: Option<SocketAddr>,
    /// Concurrent connections.
    pub connections: usize,
    /// Measured duration.
    pub duration: Duration,
    /// Open loop at this many requests per second in total (`None`: closed loop).
    pub rate: Option<f64>,
    /// A new connection for every request (`Connection: close`).
    pub new_connection: bool,
    /// TLS session resumption on reconnects (with `new_connection`).
    pub resume: bool,
    /// SNI / certificate name (default: the URL's host).
    pub sni: Option<String>,
    /// CA file to trust (PEM); needed for https unless `insecure`.
    pub cacert: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Status every response must have (default: any 2xx).
    pub expect_status: Option<u16>,
    /// Body length every response must have (default: the first good response's).
    pub expect_length: Option<u64>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl LoadOptions {
    /// Refuses what cannot be run: no measured time, a rate that cannot be scheduled, a
    /// zero timeout.
    pub fn check(&self) -> Result<(), BenchError> {
        if self.duration.is_zero() {
            return Err(BenchError::Options("--duration must be above 0".into()));
        }
        if self.timeout.is_zero() {
            return Err(BenchError::Options("--timeout must be above 0".into()));
        }
        if self.duration > MAX_SPAN || self.timeout > MAX_SPAN {
            return Err(BenchError::Options(
                "--duration and --timeout must be at most 365 days".into(),
            ));
        }
        if let Some(rate) = self.rate {
            schedule::check_rate(rate).map_err(BenchError::Options)?;
        }
        Ok(())
    }
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The URL cannot be used.
    #[error("URL {url:?}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The CA file.
    #[error("--cacert {path}: {why}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// An option out of range.
    #[error("{0}")]
    Options(String),
    /// Name resolution.
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered correctly.
    pub requests: u64,
    /// Body bytes received (correct answers).
    pub bytes: u64,
    /// Failed requests by kind.
    pub errors: ErrorCounts,
    /// The measured window (`--duration`); answers that complete after it are not
    /// counted, as with wrk.
    pub elapsed: Duration,
    /// Latency of correct answers, microseconds.
    pub latency_us: Histogram<u64>,
    /// Whether the run was open loop.
    pub open_loop: bool,
}

impl LoadResult {
    /// Correct answers per second.
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency at quantile `q` in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// The human summary `tollgate bench` prints.
    pub fn render_text(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut errors: Vec<String> = self
            .errors
            .pairs()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if errors.is_empty() {
            errors.push("none".to_string());
        }
        let mut first_errors = String::new();
        for (kind, why) in self.errors.first_errors() {
            first_errors.push_str(&format!("  first {kind:<7} {why}\n"));
        }
        format!(
            "  requests     {} in {:.2}s\n  requests/s   {:.1}\n  transfer/s   {:.2} MB (bodies)\n  errors       {} ({})\n{}  latency{}    p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms\n",
            self.requests,
            secs,
            self.requests_per_sec(),
            self.bytes as f64 / secs / 1e6,
            self.errors.total(),
            errors.join(", "),
            first_errors,
            if self.open_loop { "*" } else { " " },
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
        )
    }

    /// The JSON summary (`requests_per_sec`, `errors`, `latency_ms.{p50,p90,p99,p999,max}`).
    pub fn to_json(&self, url: &str) -> serde_json::Value {
        let by_kind: serde_json::Map<String, serde_json::Value> = self
            .errors
            .pairs()
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::json!(n)))
            .collect();
        serde_json::json!({
            "url": url,
            "requests": self.requests,
            "duration_s": self.elapsed.as_secs_f64(),
            "requests_per_sec": self.requests_per_sec(),
            "bytes_per_sec": self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "errors": self.errors.total(),
            "errors_by_kind": by_kind,
            "first_errors": self
                .errors
                .first_errors()
                .into_iter()
                .map(|(k, why)| (k.to_string(), serde_json::json!(why)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "open_loop": self.open_loop,
            "latency_ms": {
                "p50": self.latency_ms(0.50),
                "p90": self.latency_ms(0.90),
                "p99": self.latency_ms(0.99),
                "p999": self.latency_ms(0.999),
                "max": self.latency_us.max() as f64 / 1000.0,
                "mean": self.latency_us.mean() / 1000.0,
            },
        })
    }
}

/// Shared state of one run.
struct Shared {
    target: Target,
    options: LoadOptions,
    errors: ErrorCounts,
    requests: AtomicU64,
    /// Expected body length, learned from the first good answer when not given (+1; 0 = unknown).
    expect_length: AtomicU64,
}

/// One open connection: its stream, and what was read from it and not yet used.
struct Conn {
    stream: Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>,
    buf: BytesMut,
}

/// When a request must be done: its timeout, or the end of the run if that comes first
/// (a request the end cuts off is neither an answer nor an error, as with wrk).
#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    end_of_run: bool,
}

impl Due {
    /// The due time of a request started at `now`.
    fn new(shared: &Shared, end: Instant, now: Instant) -> Due {
        let timeout = now + shared.options.timeout;
        Due {
            at: timeout.min(end),
            end_of_run: end <= timeout,
        }
    }

    /// Counts a timeout unless the end of the run cut the request off.
    fn expired(&self, shared: &Shared, what: &str) {
        if !self.end_of_run {
            let timeout = shared.options.timeout;
            shared.errors.add(ErrorKind::Timeout, || {
                format!("{what} not done within the timeout ({timeout:?})")
            });
        }
    }
}

/// Opens a connection (TCP, then TLS if the target is https) by `due`; failures are
/// counted.
async fn open(shared: &Shared, deadline: &mut Deadline, due: Due) -> Option<Conn> {
    let opening = async {
        let stream = match TcpStream::connect(shared.target.addr).await {
            Ok(s) => s,
            Err(err) => {
                shared.errors.add(ErrorKind::Connect, || {
                    format!("{}: {err}", shared.target.addr)
                });
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = match &shared.target.tls {
            Some((connector, name)) => match connector.connect(name.clone(), stream).await {
                Ok(tls) => Either::Right(tls),
                Err(err) => {
                    shared.errors.add(ErrorKind::Tls, || err.to_string());
                    return None;
                }
            },
            None => Either::Left(stream),
        };
        Some(Conn {
            stream,
            buf: BytesMut::new(),
        })
    };
    tokio::select! {
        biased;
        opened = opening => opened,
        () = deadline.reached(due.at) => {
            due.expired(shared, "connect and TLS handshake");
            None
        }
    }
}

/// A connection's request deadlines on one timer: armed at the first deadline and
/// re-armed only when it fires before the current one (they only move later), so that a
/// request costs no timer insert and removal.
#[derive(Default)]
struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Completes at `at`.
    async fn reached(&mut self, at: Instant) {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            timer.as_mut().reset(at);
        }
        loop {
            timer.as_mut().await;
            if Instant::now() >= at {
                return;
            }
            timer.as_mut().reset(at);
        }
    }
}

/// How one request went.
enum Exchanged {
    /// A correct answer with this many body bytes; whether the connection may be reused.
    Answered { len: u64, keep_alive: bool },
    /// A reused connection failed before any byte of the answer arrived (the server had
    /// closed it while idle, mostly): the request goes again on a new connection, once,
    /// without counting an error.
    Stale,
    /// Counted as an error, or cut off by the end of the run.
    Failed,
}

/// Sends the request on `conn` and checks the answer (status and body length) by `due`.
async fn exchange(
    shared: &Shared,
    conn: &mut Conn,
    reused: bool,
    deadline: &mut Deadline,
    due: Due,
) -> Exchanged {
    let request = &shared.target.request;
    let answer = tokio::select! {
        biased;
        answer = http1::exchange(&mut conn.stream, &mut conn.buf, request) => answer,
        () = deadline.reached(due.at) => {
            due.expired(shared, "the answer");
            return Exchanged::Failed;
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(err) if reused && !err.answered() => return Exchanged::Stale,
        Err(err) => {
            shared.errors.add(ErrorKind::Io, || err.to_string());
            return Exchanged::Failed;
        }
    };
    let status_ok = match shared.options.expect_status {
        Some(s) => answer.status == s,
        None => (200..300).contains(&answer.status),
    };
    if !status_ok {
        shared.errors.add(ErrorKind::Status, || {
            let wanted = match shared.options.expect_status {
                Some(s) => s.to_string(),
                None => "2xx".to_string(),
            };
            format!("status {}, expected {wanted}", answer.status)
        });
        return Exchanged::Failed;
    }
    let len = answer.body_len;
    let expected = match shared.expect_length.load(Ordering::Relaxed) {
        0 => {
            // First good answer sets the expectation for the rest of the run.
            let _ = shared.expect_length.compare_exchange(
                0,
                len + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            shared.expect_length.load(Ordering::Relaxed) - 1
        }
        n => n - 1,
    };
    if len != expected {
        shared.errors.add(ErrorKind::Length, || {
            format!("a body of {len} bytes, expected {expected}")
        });
        return Exchanged::Failed;
    }
    Exchanged::Answered {
        len,
        keep_alive: answer.keep_alive,
    }
}

/// One connection's loop; returns its histogram and body bytes.
async fn connection_loop(
    shared: Arc<Shared>,
    index: usize,
    start: Instant,
    end: Instant,
) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let mut bytes = 0u64;
    let options = &shared.options;
    let mut schedule = Schedule::new(start, end, options.rate, options.connections, index);
    let mut kept: Option<Conn> = None;
    let mut deadline = Deadline::default();
    // Open loop: sends are timed with a timerfd (tokio's timer ticks once a millisecond,
    // and each request is charged from the time it was due).
    let timer = schedule
        .open_loop()
        .then(super::timer::PreciseTimer::new)
        .and_then(Result::ok);
    loop {
        // One clock read per request on a kept connection in closed loop.
        let mut now = Instant::now();
        let Some(slot) = schedule.next(now) else {
            break;
        };
        if now < slot.send_at {
            let precise = match &timer {
                Some(timer) => timer.sleep_until(slot.send_at).await.is_ok(),
                None => false,
            };
            if !precise {
                tokio::time::sleep_until(slot.send_at).await;
            }
            now = Instant::now();
        }
        let due = Due::new(&shared, end, now);
        let (mut conn, reused) = match kept.take() {
            Some(conn) => (conn, true),
            None => match open(&shared, &mut deadline, due).await {
                Some(conn) => (conn, false),
                None => {
                    // Do not spin on a refused connect.
                    if !schedule.open_loop() && Instant::now() < end {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            },
        };
        // Keep-alive in closed loop counts from the write, as wrk does: opening the
        // connection is not the request's time. A new connection per request counts the
        // connect and the handshake; open loop counts from the time the request was due.
        let mut sent = if reused || options.new_connection {
            now
        } else {
            Instant::now()
        };
        let mut outcome = exchange(&shared, &mut conn, reused, &mut deadline, due).await;
        if let Exchanged::Stale = outcome {
            let Some(fresh) = open(&shared, &mut deadline, due).await else {
                continue;
            };
            conn = fresh;
            if !options.new_connection {
                sent = Instant::now();
            }
            outcome = exchange(&shared, &mut conn, false, &mut deadline, due).await;
        }
        if let Exchanged::Answered { len, keep_alive } = outcome {
            let us = slot.latency_origin(sent).elapsed().as_micros() as u64;
            let _ = hist.record(us.clamp(1, MAX_LATENCY_US));
            bytes += len;
            shared.requests.fetch_add(1, Ordering::Relaxed);
            if keep_alive && !options.new_connection {
                kept = Some(conn);
            }
        }
    }
    (hist, bytes)
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Runs the load; `progress` is called about every 100 ms with (elapsed, requests).
pub async fn run(
    options: LoadOptions,
    progress: impl Fn(Duration, u64) + Send + 'static,
) -> Result<LoadResult, BenchError> {
    options.check()?;
    let target = target(&options).await?;
    let shared = Arc::new(Shared {
        target,
        expect_length: AtomicU64::new(options.expect_length.map_or(0, |l| l + 1)),
        options,
        errors: ErrorCounts::default(),
        requests: AtomicU64::new(0),
    });
    let start = Instant::now();
    let end = start + shared.options.duration;
    let mut tasks = Vec::with_capacity(shared.options.connections);
    for index in 0..shared.options.connections.max(1) {
        tasks.push(tokio::spawn(connection_loop(
            Arc::clone(&shared),
            index,
            start,
            end,
        )));
    }
    let ticker_shared = Arc::clone(&shared);
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            progress(
                start.elapsed(),
                ticker_shared.requests.load(Ordering::Relaxed),
            );
        }
    });
    let mut latency_us = new_histogram();
    let mut bytes = 0;
    for task in tasks {
        if let Ok((hist, b)) = task.await {
            let _ = latency_us.add(&hist);
            bytes += b;
        }
    }
    ticker.abort();
    let _ = ticker.await;
    let open_loop = shared.options.rate.is_some();
    let requests = shared.requests.load(Ordering::Relaxed);
    let elapsed = shared.options.duration;
    let errors = match Arc::try_unwrap(shared) {
        Ok(s) => s.errors,
        Err(still_shared) => still_shared.errors.copied(),
    };
    Ok(LoadResult {
        requests,
        bytes,
        errors,
        elapsed,
        latency_us,
        open_loop,
    })
}
