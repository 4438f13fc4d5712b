//! The L7 module's backend side through a running balancer: 502 (every backend refuses,
//! the next one is tried first), 503 (none up), 504 (too slow), a backend dying
//! mid-response, pooled connections (retry on a reused connection the backend closed,
//! `Keep-Alive: timeout=` honoured), 10 MB bodies both ways, and the WebSocket-style
//! upgrade splice.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::l7::*;
use common::*;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn requests(edge: &Edge, pool: &str, code: &str) -> Option<f64> {
    edge.metric(
        "tollgate_http_requests_total",
        &[("route", "web"), ("pool", pool), ("code", code)],
    )
}

#[tokio::test]
async fn refused_connects_try_the_next_backend_then_502() {
    let live = origin("live", None).await;
    let (dead1, dead2) = (dead_addr(), dead_addr());
    let pools = format!(
        "  dead: {{ servers: [ {{ addr: \"{dead1}\" }}, {{ addr: \"{dead2}\" }} ] }}\n  \
           mixed: {{ servers: [ {{ addr: \"{dead1}\" }}, {{ addr: \"{}\" }} ] }}\n",
        live.addr
    );
    let routes = "    - { host: dead.example.com, pool: dead }\n    - { pool: mixed }";
    let edge = Edge::start(routes, &pools, "").await;
    let mut conn = edge.https().await;
    for _ in 0..4 {
        // Round robin starts on the dead one every other time: always moved on.
        let got = conn.get("mixed.example.com", "/").await.unwrap();
        assert_eq!(
            (got.status, got.header("x-backend").as_deref()),
            (200, Some("live"))
        );
    }
    let got = conn.get("dead.example.com", "/").await.unwrap();
    assert_eq!(got.status, 502);
    assert_eq!(requests(&edge, "dead", "502"), Some(1.0));
    assert_eq!(requests(&edge, "mixed", "200"), Some(4.0));
    let dead1_name = dead1.to_string();
    let errors = edge.metric(
        "tollgate_backend_connect_errors_total",
        &[("pool", "mixed"), ("backend", &dead1_name)],
    );
    assert_eq!(errors, Some(2.0));
}

#[tokio::test]
async fn no_backend_up_gives_503() {
    let app = origin("app", None).await;
    for mode in ["per_request", "pooled"] {
        let edge = Edge::single_mode(app.addr, mode, "").await;
        let mut conn = edge.https().await;
        assert_eq!(conn.get(SNI, "/").await.unwrap().status, 200);
        // No health checking yet: mark the only backend down by hand.
        edge.server.snapshot().pools["app"].backends[0].set_up(false);
        let got = conn.get(SNI, "/").await.unwrap();
        assert_eq!(got.status, 503, "{mode}");
        assert_eq!(requests(&edge, "app", "503"), Some(1.0));
        edge.server.snapshot().pools["app"].backends[0].set_up(true);
        assert_eq!(conn.get(SNI, "/").await.unwrap().status, 200, "{mode}");
    }
}

#[tokio::test]
async fn backend_answering_garbage_or_nothing_gives_502() {
    let garbage = raw_backend(|mut conn, _| async move {
        let _ = conn.read_request().await;
        let _ = conn.write(b"SPDY/9 what\r\n\r\n").await;
    })
    .await;
    let mute = raw_backend(|mut conn, _| async move {
        let _ = conn.read_request().await;
    })
    .await;
    for addr in [garbage.addr, mute.addr] {
        for mode in ["per_request", "pooled"] {
            let edge = Edge::single_mode(addr, mode, "").await;
            let got = edge.https().await.get(SNI, "/").await.unwrap();
            assert_eq!(got.status, 502, "{mode}");
        }
    }
}

#[tokio::test]
async fn backend_slower_than_backend_response_gives_504() {
    // Accepts, reads the request, never answers.
    let silent = raw_backend(|mut conn, _| async move {
        let _ = conn.read_request().await;
        std::future::pending::<()>().await;
    })
    .await;
    for mode in ["per_request", "pooled"] {
        let edge =
            Edge::single_mode(silent.addr, mode, "timeouts: { backend_response: 300ms }").await;
        let mut conn = edge.https().await;
        let started = Instant::now();
        let got = conn.get(SNI, "/").await.unwrap();
        assert_eq!(got.status, 504, "{mode}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode}: {:?}",
            started.elapsed()
        );
        assert_eq!(requests(&edge, "app", "504"), Some(1.0));
    }
}

#[tokio::test]
async fn request_in_flight_is_not_cut_by_client_idle() {
    // Answers after 700 ms, longer than client_idle.
    let slow = raw_backend(|mut conn, _| async move {
        while conn.read_request().await.is_some() {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = conn
                .write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                .await;
        }
    })
    .await;
    let edge = Edge::single(slow.addr, "timeouts: { client_idle: 300ms }").await;
    let got = edge.https().await.get(SNI, "/").await.expect("answered");
    assert_eq!((got.status, got.text().as_str()), (200, "slow"));
}

/// A backend that promises 1000 bytes (or chunks), sends 10 and closes.
async fn dying_backend(chunked: bool) -> RawBackend {
    raw_backend(move |mut conn, _| async move {
        let _ = conn.read_request().await;
        let head: &[u8] = if chunked {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"
        };
        let _ = conn.write(head).await;
        let _ = conn.stream.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn backend_dying_mid_response_closes_the_client_connection() {
    for chunked in [false, true] {
        let backend = dying_backend(chunked).await;
        for mode in ["per_request", "pooled"] {
            let edge = Edge::single_mode(backend.addr, mode, "").await;
            // hyper client: the body read fails; it never completes as a 200.
            let mut conn = edge.https().await;
            let result = conn.get(SNI, "/").await;
            assert!(
                result.is_err(),
                "chunked={chunked} {mode}: truncated body passed off as complete"
            );
            // Raw: the head arrives, then the connection closes before the body is whole.
            let mut raw = edge.raw_tls().await;
            raw.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                .await
                .unwrap();
            let head = raw.read_head().await.expect("head");
            assert_eq!(head.status(), 200);
            let mut rest = raw.take_buffered();
            let (tail, closed) = read_to_close(&mut raw.stream).await;
            assert!(
                closed,
                "chunked={chunked} {mode}: client connection left open"
            );
            rest.extend(tail);
            if chunked {
                assert!(
                    !rest.ends_with(b"0\r\n\r\n"),
                    "{mode}: terminal chunk invented"
                );
            } else {
                assert!(rest.len() < 1000, "{mode}");
            }
        }
    }
}

#[tokio::test]
async fn pooled_retries_an_idempotent_request_the_reused_connection_lost() {
    // Written at once, and queued for the batch writer (whose write then fails or whose
    // answer is the backend's close): the retry rule is the same.
    for mode in ["pooled", "pooled, batch_sends: true"] {
        retry_on_a_lost_reused_connection(mode).await;
    }
}

async fn retry_on_a_lost_reused_connection(mode: &str) {
    // Each connection answers its first request (keep-alive, no Connection: close), then
    // reads the next request and closes without a word: a keep-alive race, every time.
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lost_count = std::sync::Arc::clone(&lost);
    let flaky = raw_backend(move |mut conn, index| {
        let lost = std::sync::Arc::clone(&lost_count);
        async move {
            if conn.read_request().await.is_none() {
                return;
            }
            let body = format!("conn {index}");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write(head.as_bytes()).await.is_err() {
                return;
            }
            if conn.read_request().await.is_some() {
                lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .await;
    let lost = move || lost.load(std::sync::atomic::Ordering::SeqCst);
    let edge = Edge::single_mode(flaky.addr, mode, "").await;
    let mut conn = edge.https().await;
    for i in 0..5 {
        let got = conn.get(SNI, "/").await.unwrap();
        assert_eq!(got.status, 200, "{mode}: GET {i}");
        // GET i > 0 went first to connection i-1 (reused, lost), then to a new one.
        assert_eq!(got.text(), format!("conn {i}"), "{mode}: GET {i}");
    }
    assert_eq!(
        (flaky.accepted(), lost()),
        (5, 4),
        "{mode}: (connections, requests lost on reuse)"
    );
    // A POST is not retried: the failure on the reused connection is a 502.
    let post = hyper::Request::post("/")
        .header("host", SNI)
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    assert_eq!(conn.send(post).await.unwrap().status, 502, "{mode}");
    assert_eq!(
        (flaky.accepted(), lost()),
        (5, 5),
        "{mode}: the POST was sent again"
    );
}

#[tokio::test]
async fn pooled_expires_connections_before_the_backend_keep_alive_timeout() {
    // Keeps connections open forever but announces `Keep-Alive: timeout=2`.
    let backend = raw_backend(|mut conn, index| async move {
        while conn.read_request().await.is_some() {
            let body = format!("conn {index}");
            let head = format!(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write(head.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let edge = Edge::single_mode(backend.addr, "pooled", "").await;
    let mut conn = edge.https().await;
    assert_eq!(conn.get(SNI, "/").await.unwrap().text(), "conn 0");
    assert_eq!(
        conn.get(SNI, "/").await.unwrap().text(),
        "conn 0",
        "reused at once"
    );
    // Past timeout minus a second: the pool must have let the connection go, although
    // the backend still holds it open.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(conn.get(SNI, "/").await.unwrap().text(), "conn 1");
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn pooled_connection_reused_after_head_and_get() {
    let (backend, seen) = inspecting_backend("app").await;
    let edge = Edge::single_mode(backend.addr, "pooled", "").await;
    let mut conn = edge.https().await;
    for method in ["HEAD", "GET", "HEAD", "GET"] {
        let request = hyper::Request::builder()
            .method(method)
            .uri("/h")
            .header("host", SNI)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = conn.send(request).await.unwrap();
        assert_eq!(got.status, 200, "{method}");
        assert_eq!(got.body.is_empty(), method == "HEAD", "{method}");
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(
        backend.accepted(),
        1,
        "HEAD responses must not cost the pooled connection"
    );
}

#[tokio::test]
async fn bodies_stream_without_waiting_for_their_end() {
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let got_first = std::sync::Arc::new(tokio::sync::Notify::new());
    let (go2, got_first2) = (
        std::sync::Arc::clone(&go),
        std::sync::Arc::clone(&got_first),
    );
    let backend = raw_backend(move |mut conn, _| {
        let (go, got_first) = (
            std::sync::Arc::clone(&go2),
            std::sync::Arc::clone(&got_first2),
        );
        async move {
            let Some(head) = conn.read_head().await else {
                return;
            };
            if head.start.starts_with("POST") {
                // The first half of the upload arrives before the client sends the rest.
                let first = conn.read_exact_body(5).await;
                got_first.notify_one();
                let rest = conn.read_exact_body(5).await;
                let body = format!(
                    "got {}{}",
                    String::from_utf8_lossy(&first),
                    String::from_utf8_lossy(&rest)
                );
                let _ = conn
                    .write(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            } else {
                // The first half of the download reaches the client before the rest is sent.
                let _ = conn
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
                    .await;
                go.notified().await;
                let _ = conn.write(b"-last").await;
            }
        }
    })
    .await;
    let edge = Edge::single(backend.addr, "").await;
    let window = Duration::from_secs(3);

    let mut raw = edge.raw_tls().await;
    raw.write(format!("GET / HTTP/1.1\r\nHost: {SNI}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(raw.read_head().await.unwrap().status(), 200);
    let first = tokio::time::timeout(window, raw.read_exact_body(5))
        .await
        .expect("first half held back");
    assert_eq!(first, b"first");
    go.notify_one();
    assert_eq!(
        tokio::time::timeout(window, raw.read_exact_body(5))
            .await
            .unwrap(),
        b"-last"
    );

    let mut raw = edge.raw_tls().await;
    raw.write(
        format!("POST / HTTP/1.1\r\nHost: {SNI}\r\nContent-Length: 10\r\n\r\nfirst").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::timeout(window, got_first.notified())
        .await
        .expect("upload held back");
    raw.write(b"-half").await.unwrap();
    let response = raw.read_response().await.unwrap();
    assert_eq!(response.text(), "got first-half");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bodies_both_ways() {
    const SIZE: usize = 10 * 1024 * 1024;
    let app = origin("app", None).await;
    let big = raw_backend(|mut conn, _| async move {
        while let Some(req) = conn.read_request().await {
            let close = req.has_token("connection", "close");
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            if conn.write(head.as_bytes()).await.is_err() {
                return;
            }
            let body = pattern(SIZE);
            for chunk in body.chunks(64 * 1024) {
                if conn.write(chunk).await.is_err() {
                    return;
                }
            }
            if close {
                return;
            }
        }
    })
    .await;
    let upload: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 253) as u8).collect();
    let upload_sha = Sha256::digest(&upload);
    let download_sha = Sha256::digest(pattern(SIZE));
    for mode in ["per_request", "pooled"] {
        let pools = format!(
            "  app: {{ backend_connections: {mode}, servers: [ {{ addr: \"{}\" }} ] }}\n  \
               big: {{ backend_connections: {mode}, servers: [ {{ addr: \"{}\" }} ] }}\n",
            app.addr, big.addr
        );
        let routes = "    - { path_prefix: /echo, pool: app }\n    - { pool: big }";
        let edge = Edge::start(routes, &pools, "").await;
        let mut conn = edge.https().await;
        for round in 0..2 {
            let request = hyper::Request::post("/echo")
                .header("host", SNI)
                .body(Full::new(Bytes::from(upload.clone())))
                .unwrap();
            let got = conn.send(request).await.expect("echo");
            assert_eq!(got.status, 200);
            assert_eq!(got.body.len(), SIZE, "{mode} round {round}");
            assert_eq!(
                Sha256::digest(&got.body),
                upload_sha,
                "{mode} round {round}"
            );
            let got = conn.get(SNI, "/big").await.expect("download");
            assert_eq!(got.body.len(), SIZE, "{mode} round {round}");
            assert_eq!(
                Sha256::digest(&got.body),
                download_sha,
                "{mode} round {round}"
            );
        }
    }
}

#[tokio::test]
async fn upgrade_is_spliced_both_ways() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let ws = raw_backend(move |mut conn, _| {
        let log = std::sync::Arc::clone(&log);
        async move {
            let Some(req) = conn.read_request().await else { return };
            log.lock().unwrap().push(req.clone());
            let _ = conn
                .write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                .await;
            let mut pending = conn.take_buffered();
            let mut buf = [0u8; 4096];
            loop {
                if !pending.is_empty() && conn.write(&std::mem::take(&mut pending)).await.is_err() {
                    return;
                }
                match conn.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
        }
    })
    .await;
    for mode in ["per_request", "pooled"] {
        let edge = Edge::single_mode(ws.addr, mode, "").await;
        let mut raw = edge.raw_tls().await;
        raw.write(
            b"GET /ws HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let head = raw.read_head().await.expect("101");
        assert_eq!(head.status(), 101, "{mode}: {}", head.head);
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert!(head.has_token("connection", "upgrade"), "{}", head.head);
        for message in [
            &b"ping-1"[..],
            b"a second, longer message",
            &[0u8, 255, 13, 10, 13, 10],
        ] {
            raw.write(message).await.unwrap();
            let echoed = tokio::time::timeout(DEADLINE, raw.read_exact_body(message.len()))
                .await
                .unwrap();
            assert_eq!(echoed, message, "{mode}");
        }
        let req = seen.lock().unwrap().last().cloned().unwrap();
        assert!(
            req.has_token("connection", "upgrade") && req.header("upgrade") == Some("websocket"),
            "{}",
            req.head
        );
        assert_eq!(
            req.header("sec-websocket-key"),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        // Closing the client side ends the tunnel: the backend's EOF closes us too.
        raw.stream.shutdown().await.unwrap();
        assert!(raw.closed().await, "{mode}: tunnel not closed");
    }
}

#[tokio::test]
async fn pooled_requests_get_their_own_answers_with_and_without_batched_sends() {
    // With `batch_sends: true`, requests on reused pooled connections are queued and
    // written once per batch (`exchange/batch.rs`); without it (the default) each is
    // written at once. Either way, under concurrency every request must get the answer
    // to itself, on connections that are reused.
    for mode in ["pooled, batch_sends: true", "pooled"] {
        let (backend, seen) = inspecting_backend("app").await;
        let edge = Edge::single_mode(backend.addr, mode, "").await;
        let mut clients = Vec::new();
        for client in 0..8 {
            let mut conn = edge.https().await;
            clients.push(tokio::spawn(async move {
                for request in 0..25 {
                    let path = format!("/c{client}/r{request}");
                    let got = conn.get(SNI, &path).await.unwrap();
                    assert_eq!(got.status, 200, "{path}");
                    let body = String::from_utf8_lossy(&got.body).into_owned();
                    assert!(
                        body.contains(&format!("GET {path} HTTP/1.1")),
                        "{mode}: {path} answered with {body}"
                    );
                }
            }));
        }
        for client in clients {
            tokio::time::timeout(Duration::from_secs(20), client)
                .await
                .expect("clients finish")
                .unwrap();
        }
        assert_eq!(seen.lock().unwrap().len(), 200, "{mode}");
        assert!(
            backend.accepted() <= 16,
            "{mode}: pooled connections were not reused: {} for 200 requests",
            backend.accepted()
        );
    }
}

#[test]
fn batch_sends_is_off_unless_asked_for() {
    let yaml = |extra: &str| {
        format!(
            "listeners: [ {{ name: t, listen: 127.0.0.1:0, protocol: tcp, pool: p }} ]\npools:\n  p: {{ backend_connections: pooled{extra}, servers: [ {{ addr: \"127.0.0.1:1\" }} ] }}\n"
        )
    };
    let batch = |extra: &str| {
        let config = tollgate::config::from_yaml(&yaml(extra)).unwrap_or_else(|e| panic!("{e}"));
        config.pools["p"].batch_sends
    };
    assert!(!batch(""));
    assert!(!batch(", batch_sends: false"));
    assert!(batch(", batch_sends: true"));
    let Err(err) = tollgate::config::from_yaml(&yaml(", batch_sends: sometimes")) else {
        panic!("a non-boolean batch_sends was accepted");
    };
    assert!(err.to_string().contains("batch_sends"), "{err}");
}
