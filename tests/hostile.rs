//! The hostile-input suite (issue 7 item 6): request smuggling variants, oversized heads,
//! malformed bytes, a slowloris, a flood of half ClientHellos against a small
//! `max_connections`, and a client that never reads its response. After every attack the
//! answer is checked (a 4xx status line or a clean close, read with a deadline) and a
//! normal request on a new connection must still get 200.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{build_client_hello, origin, read_to_close, start, tls_connect, HttpConn, Origin};
use common::{metric_value, wait_until, Pki, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::server::Server;

/// Attacks that open many sockets or measure memory run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `plain` http listener routing everything to one built-in origin `app`.
async fn http_edge(extra: &str) -> (Server, Origin, SocketAddr) {
    let o = origin("app", None).await;
    let yaml = format!(
        r#"
listeners:
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
routes:
  web: [ {{ pool: app }} ]
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
{extra}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("plain").unwrap();
    (server, o, addr)
}

/// A normal GET on a new connection gets 200 from the origin.
async fn still_serves(addr: SocketAddr) {
    let got = tokio::time::timeout(DEADLINE, async {
        let mut conn = HttpConn::over(TcpStream::connect(addr).await.expect("connect")).await;
        conn.get("a.example", "/").await.expect("response")
    })
    .await
    .expect("a normal request hung after the attack");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-backend").as_deref(), Some("app"));
}

/// Writes `bytes` on a new connection while reading everything the balancer answers until
/// it closes; returns the answer. Fails if the balancer neither answers nor closes.
async fn attack(addr: SocketAddr, bytes: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    // The balancer may answer and close before reading everything: write errors are fine.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        wr // keep the write half open until the balancer closes
    });
    let (answer, ended) = read_to_close(&mut rd).await;
    writer.abort();
    assert!(
        ended,
        "the balancer neither answered nor closed within {DEADLINE:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// The answer is one of `allowed` (then nothing more: no smuggled second response) or a
/// close without an answer.
fn assert_refused(case: &str, answer: &str, allowed: &[u16]) {
    if answer.is_empty() {
        return;
    }
    let status: u16 = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{case}: not a status line: {answer:?}"));
    assert!(
        allowed.contains(&status),
        "{case}: answered {status}, expected one of {allowed:?} or a close:\n{answer}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "{case}: more than one response (smuggled request served?):\n{answer}"
    );
    assert!(
        !answer.contains("/smuggled"),
        "{case}: smuggled request reached the origin"
    );
}

/// Runs each `(case, request bytes)` against a fresh connection, then a normal request.
async fn run_cases(cases: Vec<(&str, Vec<u8>)>, allowed: &[u16]) {
    let _serial = SERIAL.lock().await;
    let (_server, _origin, addr) = http_edge("").await;
    for (case, bytes) in cases {
        let answer = attack(addr, bytes).await;
        assert_refused(case, &answer, allowed);
        still_serves(addr).await;
    }
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n";

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: a.example\r\n{headers}\r\n{body}").into_bytes()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_both_orders() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let cl = body.len() - SMUGGLED.len();
    run_cases(
        vec![
            (
                "CL then TE",
                post(
                    &format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
                    &body,
                ),
            ),
            (
                "TE then CL",
                post(
                    &format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
                    &body,
                ),
            ),
            (
                "CL then TE, long CL",
                post(
                    &format!(
                        "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                        body.len()
                    ),
                    &body,
                ),
            ),
        ],
        &[400],
    )
    .await;
}

#[tokio::test]
async fn obfuscated_transfer_encodings_are_refused() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    run_cases(
        vec![
            (
                "TE with obs-fold",
                post("Transfer-Encoding:\r\n chunked\r\n", &body),
            ),
            (
                "TE folded after a token",
                post("Transfer-Encoding: identity\r\n chunked\r\n", &body),
            ),
            (
                "TE chunked, identity",
                post("Transfer-Encoding: chunked, identity\r\n", &body),
            ),
        ],
        &[400, 501],
    )
    .await;
}

#[tokio::test]
async fn duplicate_content_lengths_that_differ_are_refused() {
    run_cases(
        vec![
            (
                "two CL headers",
                post("Content-Length: 5\r\nContent-Length: 47\r\n", "hello"),
            ),
            ("CL list", post("Content-Length: 5, 47\r\n", "hello")),
        ],
        &[400],
    )
    .await;
}

#[tokio::test]
async fn invalid_chunk_sizes_are_refused() {
    let chunked = "Transfer-Encoding: chunked\r\n";
    run_cases(
        vec![
            ("chunk size zz", post(chunked, "zz\r\nhello\r\n0\r\n\r\n")),
            (
                "negative chunk size",
                post(chunked, "-5\r\nhello\r\n0\r\n\r\n"),
            ),
            (
                "chunk size of 20 hex digits",
                post(chunked, "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            ),
        ],
        // The head is already forwarded when the body turns bad: still the client's
        // fault, a 400 (not a 502 blaming the backend).
        &[400, 413],
    )
    .await;
}

#[tokio::test]
async fn a_chunk_extension_of_one_mib_is_refused() {
    let mut body = b"5;ext=".to_vec();
    body.extend(std::iter::repeat_n(b'a', 1 << 20));
    body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let mut request = post("Transfer-Encoding: chunked\r\n", "");
    request.extend(body);
    run_cases(vec![("1 MiB chunk extension", request)], &[400, 413]).await;
}

#[tokio::test]
async fn a_header_block_of_one_mib_is_refused() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a.example\r\n");
    let value = "v".repeat(1000);
    for i in 0..1050 {
        head.push_str(&format!("X-Pad-{i}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut one_header = String::from("GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: ");
    one_header.push_str(&"v".repeat(1 << 20));
    one_header.push_str("\r\n\r\n");
    run_cases(
        vec![
            ("1 MiB of headers", head.into_bytes()),
            ("one 1 MiB header", one_header.into_bytes()),
        ],
        &[431, 400],
    )
    .await;
}

#[tokio::test]
async fn a_request_line_of_100_kib_is_refused() {
    let line = format!(
        "GET /{} HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "a".repeat(100 << 10)
    );
    run_cases(
        vec![("100 KiB request line", line.into_bytes())],
        &[414, 431, 400],
    )
    .await;
}

#[tokio::test]
async fn malformed_bytes_are_refused() {
    run_cases(
        vec![
            (
                "NUL in a header value",
                b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: a\0b\r\n\r\n".to_vec(),
            ),
            (
                "NUL in the request target",
                b"GET /a\0b HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
            ),
            (
                "CR alone in a header value",
                b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: a\rb\r\n\r\n".to_vec(),
            ),
            (
                "space before the colon",
                b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A : b\r\n\r\n".to_vec(),
            ),
        ],
        &[400],
    )
    .await;
}

#[tokio::test]
async fn a_bare_lf_request_is_refused_or_served_whole() {
    let _serial = SERIAL.lock().await;
    let (_server, _origin, addr) = http_edge("").await;
    let answer = attack(
        addr,
        b"GET / HTTP/1.1\nHost: a.example\nConnection: close\n\n".to_vec(),
    )
    .await;
    // RFC 9112 §2.2 lets a server accept a bare LF as a line terminator; anything else
    // must be a 400 or a close.
    if !answer.starts_with("HTTP/1.1 200") {
        assert_refused("bare LF", &answer, &[400]);
    }
    still_serves(addr).await;
}

#[tokio::test]
async fn a_slowloris_of_500_connections_is_closed_while_normal_clients_are_served() {
    let _serial = SERIAL.lock().await;
    let (_server, _origin, addr) =
        http_edge("timeouts: { request_header: 500ms, client_idle: 5s }").await;
    let started = Instant::now();
    let mut loris = Vec::new();
    for i in 0..500 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        loris.push(tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            let _ = wr.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n").await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut buf = [0u8; 512];
            let deadline = tokio::time::sleep(DEADLINE);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    n = rd.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return Some(Instant::now()),
                        Ok(_) => {} // a 408 is fine; wait for the close
                    },
                    _ = tick.tick() => {
                        let _ = wr.write_all(format!("X-{i}: a\r\n").as_bytes()).await;
                    }
                    _ = &mut deadline => return None,
                }
            }
        }));
    }
    // Meanwhile a normal client is served.
    still_serves(addr).await;
    for (i, task) in loris.into_iter().enumerate() {
        let closed = task.await.unwrap();
        let at = closed.unwrap_or_else(|| panic!("slow connection {i} was never closed"));
        assert!(
            at - started < Duration::from_secs(5),
            "slow connection {i} closed only after {:?}",
            at - started
        );
    }
    still_serves(addr).await;
}

#[tokio::test]
async fn a_flood_of_half_client_hellos_does_not_lock_out_normal_tls_clients() {
    let _serial = SERIAL.lock().await;
    let flood_size = raise_fd_limit_for(10_000);
    let pki = Pki::new();
    let cert = pki.issue(&["app.example.com"]);
    let o = origin("app", Some(&cert)).await;
    // client_hello is far beyond the test's deadline: only shedding at max_connections
    // (not the ClientHello timeout) can let a normal client in.
    let yaml = format!(
        r#"
limits: {{ max_connections: 200 }}
timeouts: {{ client_hello: 60s }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: app }}
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("edge").unwrap();
    let hello = build_client_hello(Some(b"app.example.com"), &[b"http/1.1"]);
    let half = Arc::new(hello[..hello.len() / 2].to_vec());
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..flood_size {
        let half = Arc::clone(&half);
        let opened = Arc::clone(&opened);
        flood.push(tokio::spawn(async move {
            let Ok(Ok(mut stream)) = tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await
            else {
                return true; // refused or never accepted: nothing held
            };
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.write_all(&half).await;
            // Held half-open until the balancer closes it.
            tokio::time::timeout(Duration::from_secs(30), read_to_close(&mut stream))
                .await
                .is_ok()
        }));
    }
    wait_until("the flood to fill the listener", || {
        opened.load(std::sync::atomic::Ordering::Relaxed) >= 1_000
    })
    .await;
    // A normal client gets through while the flood is on.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let tls = tls_connect(addr, "app.example.com", pki.client_config()).await?;
            let mut conn = HttpConn::over(tls).await;
            conn.get("app.example.com", "/")
                .await
                .map_err(std::io::Error::other)
        })
        .await;
        match attempt {
            Ok(Ok(got)) => {
                assert_eq!(got.status, 200);
                assert_eq!(got.header("x-backend").as_deref(), Some("app"));
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no normal TLS client got through the flood"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut closed = 0;
    for task in flood {
        closed += usize::from(task.await.unwrap());
    }
    // All but the last max_connections were shed; those wait for client_hello (60s).
    assert!(
        closed + 200 >= flood_size,
        "only {closed} of {flood_size} half-open handshakes were closed"
    );
    let shed = metric_value(
        &server.metrics().render(),
        "tollgate_limit_rejections_total",
        &[("listener", "edge"), ("limit", "shed")],
    )
    .unwrap_or(0.0);
    assert!(
        shed >= (flood_size - 400) as f64,
        "shed {shed} of {flood_size}"
    );
    let tls = tls_connect(addr, "app.example.com", pki.client_config())
        .await
        .expect("tls after the flood");
    let got = HttpConn::over(tls)
        .await
        .get("app.example.com", "/")
        .await
        .unwrap();
    assert_eq!(got.status, 200);
}

/// Raises this process's open-file limit so that `want` client sockets and the
/// balancer's own fit; returns how many flood connections the limit allows.
fn raise_fd_limit_for(want: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    let fit = (limit.rlim_cur as usize).saturating_sub(2_000);
    if fit < want {
        eprintln!(
            "open-file limit {}: flood of {fit} instead of {want}",
            limit.rlim_cur
        );
    }
    want.min(fit)
}

/// The resident set of this process (the balancer runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_is_bounded_and_closed() {
    // Larger than the 20 MB of the brief: a 20 MB body fits in loopback socket buffers and
    // under the RSS bound, so buffering it all would go unnoticed.
    const BODY: u64 = 128 << 20;
    let _serial = SERIAL.lock().await;
    let (_server, _origin, addr) =
        http_edge("timeouts: { client_idle: 1s, backend_response: 1s }").await;
    still_serves(addr).await;
    let baseline = rss_bytes();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let written = Arc::new(AtomicU64::new(0));
    let progress = Arc::clone(&written);
    // Streams a large body to POST /echo and never reads the echo.
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /echo HTTP/1.1\r\nHost: a.example\r\nContent-Length: {BODY}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut left = BODY;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            wr.write_all(&chunk[..n]).await?;
            progress.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
        // Everything written (the kernel buffers can hold much of it): keep the
        // connection open, still never reading, and probe with a pipelined byte now and
        // then; a write fails once the balancer has closed.
        for _ in 0..DEADLINE.as_millis() / 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            wr.write_all(b"G").await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    // The stall clock must end it (the write fails once the balancer closes).
    let started = Instant::now();
    let mut peak = baseline;
    while !writer.is_finished() {
        peak = peak.max(rss_bytes());
        assert!(
            started.elapsed() < DEADLINE,
            "the stalled connection was never closed ({} bytes written)",
            written.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcome = writer.await.unwrap();
    assert!(outcome.is_err(), "the stalled connection was never closed");
    // Loopback socket buffers can absorb tens of MB; 128 MiB cannot all fit, so the
    // writer must have stalled on backpressure rather than the balancer buffering.
    assert!(
        written.load(Ordering::Relaxed) < BODY,
        "all {BODY} bytes were accepted although the response was never read"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 64 << 20,
        "RSS grew by {} MiB for one unread response",
        growth >> 20
    );
    drop(rd);
    still_serves(addr).await;
}
