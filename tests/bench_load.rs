//! The load generator against a real local server: closed loop counts every answer and
//! checks status and length; open loop measures from each request's intended send time,
//! so a stall shows in every request scheduled during it (coordinated omission corrected),
//! while a closed loop hides it in a single sample.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tollgate::bench::load::{run, LoadOptions};

/// A server whose request number `stall_at` (0-based) waits `stall` before answering;
/// answers 500 for the path `/fail`.
async fn server(stall_at: usize, stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if n == stall_at {
                                tokio::time::sleep(stall).await;
                            }
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"0123456789")));
                            if req.uri().path() == "/fail" {
                                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn options(url: String, rate: Option<f64>, duration: Duration) -> LoadOptions {
    LoadOptions {
        url,
        connect_to: None,
        connections: 1,
        duration,
        rate,
        new_connection: false,
        resume: true,
        sni: None,
        cacert: None,
        insecure: false,
        expect_status: None,
        expect_length: None,
        timeout: Duration::from_secs(5),
    }
}

/// Samples at or above `ms` milliseconds.
fn slow_samples(result: &tollgate::bench::load::LoadResult, ms: u64) -> u64 {
    result
        .latency_us
        .iter_recorded()
        .filter(|v| v.value_iterated_to() >= ms * 1000)
        .map(|v| v.count_at_value())
        .sum()
}

#[tokio::test]
async fn open_loop_charges_a_stall_to_every_request_scheduled_during_it() {
    // 100 req/s for 1.5 s on one connection; the 10th request stalls 500 ms, so about 50
    // requests were due during the stall.
    let stall = Duration::from_millis(500);
    let open_addr = server(10, stall).await;
    let open = run(
        options(
            format!("http://{open_addr}/"),
            Some(100.0),
            Duration::from_millis(1500),
        ),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(open.errors.total(), 0);
    assert!(open.requests >= 140, "open loop sent {}", open.requests);
    let open_slow = slow_samples(&open, 200);
    assert!(
        open_slow >= 20,
        "only {open_slow} samples carry the stall in open loop"
    );

    // The same stall in a closed loop shows in one sample only.
    let closed_addr = server(10, stall).await;
    let closed = run(
        options(
            format!("http://{closed_addr}/"),
            None,
            Duration::from_millis(1500),
        ),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(closed.errors.total(), 0);
    assert_eq!(
        slow_samples(&closed, 200),
        1,
        "closed loop hides the stall in one sample"
    );
    let json = open.to_json("x");
    assert_eq!(json["open_loop"], true);
    assert!(json["latency_ms"]["p99"].as_f64().unwrap() >= 200.0);
    assert!(json["requests_per_sec"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn wrong_status_and_length_count_as_errors() {
    let addr = server(usize::MAX, Duration::ZERO).await;
    let failing = run(
        options(
            format!("http://{addr}/fail"),
            None,
            Duration::from_millis(300),
        ),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(failing.requests, 0);
    assert!(failing
        .errors
        .pairs()
        .iter()
        .any(|(k, n)| *k == "status" && *n > 0));
    assert_eq!(
        failing.errors.first_errors(),
        [("status", "status 500, expected 2xx")],
        "the report says why"
    );

    let mut wrong_length = options(format!("http://{addr}/"), None, Duration::from_millis(300));
    wrong_length.expect_length = Some(11);
    let result = run(wrong_length, |_, _| {}).await.unwrap();
    assert_eq!(result.requests, 0);
    assert!(result
        .errors
        .pairs()
        .iter()
        .any(|(k, n)| *k == "length" && *n > 0));
    assert_eq!(
        result.errors.first_errors(),
        [("length", "a body of 10 bytes, expected 11")]
    );

    let refused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let result = run(
        options(
            format!("http://{refused}/"),
            None,
            Duration::from_millis(200),
        ),
        |_, _| {},
    )
    .await
    .unwrap();
    assert!(result
        .errors
        .pairs()
        .iter()
        .any(|(k, n)| *k == "connect" && *n > 0));
    let first = result.errors.first_errors();
    assert_eq!(first.len(), 1);
    assert!(
        first[0].0 == "connect" && first[0].1.starts_with(&refused.to_string()),
        "{first:?}"
    );
    let text = result.render_text();
    assert!(text.contains("first connect"), "{text}");
    assert!(result.to_json("x")["first_errors"]["connect"].is_string());
}

/// How [`raw_server`] answers.
#[derive(Clone, Copy)]
enum RawMode {
    /// A 10-byte chunked body; every third answer on a connection says `Connection: close`
    /// and the connection closes.
    ChunkedClosingEveryThird,
    /// A 10-byte body, then the connection closes without saying so (as a server does
    /// with an idle keep-alive connection).
    SilentClose,
    /// Reads requests and never answers.
    Mute,
}

/// A hand-written HTTP/1.1 server, for answers hyper's server does not give.
async fn raw_server(mode: RawMode) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut answered = 0usize;
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        answered += 1;
                        let (answer, close): (&[u8], bool) = match mode {
                            RawMode::ChunkedClosingEveryThird if answered % 3 == 0 => (
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n",
                                true,
                            ),
                            RawMode::ChunkedClosingEveryThird => (
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n",
                                false,
                            ),
                            RawMode::SilentClose => (
                                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789",
                                true,
                            ),
                            RawMode::Mute => continue,
                        };
                        if stream.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn chunked_answers_and_announced_closes_are_not_errors() {
    let addr = raw_server(RawMode::ChunkedClosingEveryThird).await;
    let mut opts = options(format!("http://{addr}/"), None, Duration::from_millis(300));
    opts.connections = 2;
    let result = run(opts, |_, _| {}).await.unwrap();
    assert_eq!(result.errors.total(), 0, "{:?}", result.errors.pairs());
    assert!(result.requests >= 6, "{} requests", result.requests);
    assert_eq!(result.bytes, result.requests * 10);
}

#[tokio::test]
async fn a_keep_alive_connection_the_server_dropped_is_retried_on_a_new_one() {
    let addr = raw_server(RawMode::SilentClose).await;
    let result = run(
        options(format!("http://{addr}/"), None, Duration::from_millis(300)),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(result.errors.total(), 0, "{:?}", result.errors.pairs());
    assert!(result.requests >= 2, "{} requests", result.requests);
}

#[tokio::test]
async fn an_answer_that_never_comes_is_a_timeout() {
    let addr = raw_server(RawMode::Mute).await;
    let mut opts = options(format!("http://{addr}/"), None, Duration::from_millis(500));
    opts.timeout = Duration::from_millis(100);
    let result = run(opts, |_, _| {}).await.unwrap();
    assert_eq!(result.requests, 0);
    let timeouts = result
        .errors
        .pairs()
        .iter()
        .find(|(k, _)| *k == "timeout")
        .map_or(0, |(_, n)| *n);
    // One per 100 ms of the run's 500, give or take the last one.
    assert!((2..=6).contains(&timeouts), "{timeouts} timeouts");
    assert_eq!(result.errors.total(), timeouts);
}

#[tokio::test]
async fn a_tls_handshake_that_never_completes_is_a_timeout() {
    // The server takes the connection and reads the ClientHello, and never answers.
    let addr = raw_server(RawMode::Mute).await;
    let mut opts = options(format!("https://{addr}/"), None, Duration::from_millis(500));
    opts.insecure = true;
    opts.timeout = Duration::from_millis(100);
    let result = run(opts, |_, _| {}).await.unwrap();
    assert_eq!(result.requests, 0);
    let timeouts = result
        .errors
        .count(tollgate::bench::load::ErrorKind::Timeout);
    assert!((2..=6).contains(&timeouts), "{timeouts} timeouts");
    assert_eq!(result.errors.total(), timeouts);
    assert_eq!(
        result.errors.first_errors(),
        [(
            "timeout",
            "connect and TLS handshake not done within the timeout (100ms)"
        )]
    );
}

#[tokio::test]
async fn the_run_ends_with_its_window_and_requests_still_in_flight_are_not_counted() {
    // Request 5 is held for 30 s, far past the 400 ms window and within the timeout:
    // the run must still end with its window, count the answers it had, and neither
    // wait for that one nor call it an error.
    let addr = server(5, Duration::from_secs(30)).await;
    let mut opts = options(format!("http://{addr}/"), None, Duration::from_millis(400));
    opts.connections = 2;
    opts.timeout = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(20), run(opts, |_, _| {}));
    let result = run.await.expect("the run ends with its window").unwrap();
    // It did not wait for the held request (30 s) or its timeout (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result.elapsed, Duration::from_millis(400));
    assert_eq!(result.errors.total(), 0, "{:?}", result.errors.pairs());
    assert!(result.requests >= 5, "{} requests", result.requests);
    let per_sec = result.requests_per_sec();
    assert!((per_sec - result.requests as f64 / 0.4).abs() < 1e-6);
}

#[tokio::test]
async fn options_that_cannot_run_are_refused() {
    let addr = server(usize::MAX, Duration::ZERO).await;
    let url = format!("http://{addr}/");
    for (rate, duration, timeout) in [
        (Some(0.0), 100, 1_000),
        (Some(1e12), 100, 1_000),
        (Some(f64::NAN), 100, 1_000),
        (None, 0, 1_000),
        (None, 100, 0),
        (None, u64::MAX, 1_000),
        (None, 100, u64::MAX),
    ] {
        let mut opts = options(url.clone(), rate, Duration::from_millis(duration));
        opts.timeout = Duration::from_millis(timeout);
        let refused = tokio::time::timeout(Duration::from_secs(10), run(opts, |_, _| {}))
            .await
            .expect("refused at once");
        assert!(
            matches!(refused, Err(tollgate::bench::load::BenchError::Options(_))),
            "{rate:?} {duration} {timeout}: {refused:?}"
        );
    }
}
