//! Passthrough and `protocol: tcp` tunnels through a running balancer, with plain TCP
//! backends the test accepts itself: half-close both ways, 10 MB each way with matching
//! SHA-256, byte and connection counts, the connection limit, the idle timeout,
//! graceful shutdown; and backends that refuse or never answer the connect.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::server::Server;

/// A tls listener `edge` passing everything to `backend`, with extra top-level YAML.
async fn edge_to(backend: SocketAddr, extra: &str) -> (Server, SocketAddr) {
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{backend}" }} ] }}
{extra}
"#
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    (server, edge)
}

/// Opens a tunnel: connects, sends the curl ClientHello, accepts the backend side and
/// checks it received the hello.
async fn open_tunnel(edge: SocketAddr, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let hello = fixture("curl-clienthello.bin");
    let mut client = TcpStream::connect(edge).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let mut upstream = accept_within(backend).await;
    assert_eq!(read_n(&mut upstream, hello.len()).await, hello);
    (client, upstream)
}

fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&server.metrics().render(), name, labels).unwrap_or(0.0)
}

fn bytes(server: &Server, listener: &str, mode: &str, direction: &str) -> f64 {
    metric(
        server,
        "tollgate_bytes_total",
        &[
            ("listener", listener),
            ("mode", mode),
            ("direction", direction),
        ],
    )
}

fn connections(server: &Server, listener: &str, mode: &str) -> f64 {
    metric(
        server,
        "tollgate_connections_total",
        &[("listener", listener), ("mode", mode)],
    )
}

#[tokio::test]
async fn client_half_close_still_gets_the_whole_reply() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "").await;
    let hello = fixture("curl-clienthello.bin");
    let mut client = TcpStream::connect(edge).await.unwrap();
    client.write_all(&hello).await.unwrap();
    client.write_all(b"the whole request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut upstream = accept_within(&backend).await;
    // The client's EOF reaches the backend...
    let (got, eof) = read_to_close(&mut upstream).await;
    assert!(eof, "the client's EOF never reached the backend");
    assert_eq!(got, [&hello[..], b"the whole request"].concat());
    // ...which answers after it, and the answer reaches the client in full.
    let reply = vec![b'r'; 100_000];
    upstream.write_all(&reply).await.unwrap();
    upstream.shutdown().await.unwrap();
    let (got, eof) = read_to_close(&mut client).await;
    assert!(
        eof && got == reply,
        "client got {} of {} reply bytes",
        got.len(),
        reply.len()
    );
    wait_until("tunnel closed", || server.open_connections() == 0).await;
    let c2b = (hello.len() + 17) as f64;
    wait_until("bytes counted", || {
        bytes(&server, "edge", "passthrough", "client_to_backend") == c2b
            && bytes(&server, "edge", "passthrough", "backend_to_client") == 100_000.0
    })
    .await;
    assert_eq!(connections(&server, "edge", "passthrough"), 1.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn backend_half_close_lets_the_client_keep_sending() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "").await;
    let (mut client, mut upstream) = open_tunnel(edge, &backend).await;
    upstream.write_all(b"banner, then EOF").await.unwrap();
    upstream.shutdown().await.unwrap();
    let (got, eof) = read_to_close(&mut client).await;
    assert!(eof && got == b"banner, then EOF");
    // The other direction is still open.
    client.write_all(b"still talking").await.unwrap();
    assert_eq!(read_n(&mut upstream, 13).await, b"still talking");
    client.shutdown().await.unwrap();
    let (rest, eof) = read_to_close(&mut upstream).await;
    assert!(eof && rest.is_empty());
    wait_until("tunnel closed", || server.open_connections() == 0).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// Writes `prefix`, then `total` pseudo-random bytes from `seed`, then EOF; returns the
/// SHA-256 of everything written.
async fn write_random<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    prefix: &[u8],
    seed: u64,
    total: usize,
) -> Vec<u8> {
    let mut state = seed;
    let mut hash = Sha256::new();
    hash.update(prefix);
    out.write_all(prefix).await.unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        for word in chunk[..n].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        hash.update(&chunk[..n]);
        out.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    out.shutdown().await.unwrap();
    hash.finalize().to_vec()
}

/// Reads to EOF; returns the byte count and SHA-256.
async fn read_hashing<R: tokio::io::AsyncRead + Unpin>(input: &mut R) -> (usize, Vec<u8>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = input.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hash.finalize().to_vec());
        }
        hash.update(&buf[..n]);
        total += n;
    }
}

#[tokio::test]
async fn ten_megabytes_each_way_arrive_intact_and_are_counted() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "").await;
    let hello = fixture("curl-clienthello.bin");
    let hello_len = hello.len();
    let client = TcpStream::connect(edge).await.unwrap();
    let (mut read, mut write) = client.into_split();
    // The client's stream: the ClientHello, then 10 MB.
    let sender =
        tokio::spawn(async move { write_random(&mut write, &hello, 0xc11e, TEN_MB).await });
    let upstream = accept_within(&backend).await;
    let backend_side = tokio::spawn(async move {
        let (mut read, mut write) = upstream.into_split();
        let sender =
            tokio::spawn(async move { write_random(&mut write, b"", 0xbac0, TEN_MB).await });
        let received = read_hashing(&mut read).await;
        (received, sender.await.unwrap())
    });
    let client_received = tokio::time::timeout(Duration::from_secs(60), read_hashing(&mut read))
        .await
        .expect("download stalled");
    let (backend_received, backend_sent) =
        tokio::time::timeout(Duration::from_secs(60), backend_side)
            .await
            .expect("upload stalled")
            .unwrap();
    let client_sent = sender.await.unwrap();
    assert_eq!(
        backend_received.0,
        hello_len + TEN_MB,
        "bytes the backend received"
    );
    assert_eq!(backend_received.1, client_sent, "upload SHA-256");
    assert_eq!(client_received.0, TEN_MB, "bytes the client received");
    assert_eq!(client_received.1, backend_sent, "download SHA-256");

    wait_until("tunnel closed", || server.open_connections() == 0).await;
    wait_until("bytes counted", || {
        bytes(&server, "edge", "passthrough", "client_to_backend") == (hello_len + TEN_MB) as f64
            && bytes(&server, "edge", "passthrough", "backend_to_client") == TEN_MB as f64
    })
    .await;
    assert_eq!(connections(&server, "edge", "passthrough"), 1.0);
    assert_eq!(
        metric(
            &server,
            "tollgate_connections_active",
            &[("listener", "edge"), ("mode", "passthrough")]
        ),
        0.0
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connection_limit_holds_the_next_connection_until_one_closes() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "limits: { max_connections: 1 }").await;
    let (first, first_upstream) = open_tunnel(edge, &backend).await;
    let hello = fixture("curl-clienthello.bin");
    let mut second = TcpStream::connect(edge).await.unwrap();
    second.write_all(&hello).await.unwrap();
    // While the first is open the second is not served: no backend connection for it.
    let early = tokio::time::timeout(Duration::from_millis(500), backend.accept()).await;
    assert!(
        early.is_err(),
        "a second connection was served beyond max_connections: 1"
    );
    drop(first);
    drop(first_upstream);
    let mut upstream = accept_within(&backend).await;
    assert_eq!(read_n(&mut upstream, hello.len()).await, hello);
    upstream.write_all(b"served").await.unwrap();
    assert_eq!(read_n(&mut second, 6).await, b"served");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tcp_listener_splices_plain_tcp_without_a_peek() {
    let (backend, backend_addr) = tcp_backend().await;
    let yaml = format!(
        r#"
listeners:
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    pool: db
pools:
  db: {{ servers: [ {{ addr: "{backend_addr}" }} ] }}
timeouts: {{ client_hello: 30s }}
"#
    );
    let server = start(&yaml).await;
    let db = server.listener_addr("db").unwrap();
    // A server-speaks-first protocol: the client sends nothing until it gets a banner.
    let mut client = TcpStream::connect(db).await.unwrap();
    let mut upstream = accept_within(&backend).await;
    upstream.write_all(b"220 ready\r\n").await.unwrap();
    assert_eq!(read_n(&mut client, 11).await, b"220 ready\r\n");
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_n(&mut upstream, 18).await, b"GET / HTTP/1.1\r\n\r\n");
    client.shutdown().await.unwrap();
    let (rest, eof) = read_to_close(&mut upstream).await;
    assert!(eof && rest.is_empty());
    drop(upstream);
    let (rest, eof) = read_to_close(&mut client).await;
    assert!(eof && rest.is_empty());
    wait_until("tcp bytes counted", || {
        bytes(&server, "db", "tcp", "client_to_backend") == 18.0
            && bytes(&server, "db", "tcp", "backend_to_client") == 11.0
    })
    .await;
    assert_eq!(connections(&server, "db", "tcp"), 1.0);
    assert_eq!(connections(&server, "db", "rejected"), 0.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_tunnel_idle_and_traffic_keeps_it_open() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "timeouts: { tunnel_idle: 400ms }").await;
    let (mut client, mut upstream) = open_tunnel(edge, &backend).await;
    // Traffic every 50 ms (pacing, not synchronisation) for well past 400 ms: the idle
    // clock restarts with each byte, so the tunnel stays open.
    let started = Instant::now();
    let mut i = 0u8;
    let mut from_client = true;
    let last_byte = loop {
        if from_client {
            client.write_all(&[i]).await.unwrap();
            assert_eq!(read_n(&mut upstream, 1).await, [i]);
        } else {
            upstream.write_all(&[i]).await.unwrap();
            assert_eq!(read_n(&mut client, 1).await, [i]);
        }
        i = i.wrapping_add(1);
        from_client = !from_client;
        if started.elapsed() >= Duration::from_millis(1000) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Then silence: both sides are closed once 400 ms pass without a byte.
    let (got, eof) = read_to_close(&mut client).await;
    let elapsed = last_byte.elapsed();
    assert!(eof && got.is_empty(), "client not closed");
    assert!(
        elapsed >= Duration::from_millis(350),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed too late: {elapsed:?}"
    );
    let (got, eof) = read_to_close(&mut upstream).await;
    assert!(eof && got.is_empty(), "backend side not closed");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tunnel_to_a_client_that_stops_reading_is_closed_after_tunnel_idle() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "timeouts: { tunnel_idle: 300ms }").await;
    let (mut client, upstream) = open_tunnel(edge, &backend).await;
    // The client sends its EOF and then never reads; the backend keeps sending until
    // every buffer on the way is full. From then on no byte moves either way.
    client.shutdown().await.unwrap();
    let (mut up_read, mut up_write) = upstream.into_split();
    let (rest, eof) = read_to_close(&mut up_read).await;
    assert!(
        eof && rest.is_empty(),
        "the client's EOF reaches the backend"
    );
    let flood = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while up_write.write_all(&chunk).await.is_ok() {}
    });
    // The flood ends when the balancer closes the backend side.
    tokio::time::timeout(DEADLINE, flood)
        .await
        .expect("a stalled tunnel was never closed")
        .unwrap();
    wait_until("tunnel closed", || server.open_connections() == 0).await;
    drop(client);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_lets_open_tunnels_finish() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "").await;
    let (mut client, mut upstream) = open_tunnel(edge, &backend).await;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(30)));
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(edge).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the listener still accepts after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open tunnel still works both ways.
    client.write_all(b"still here?").await.unwrap();
    assert_eq!(read_n(&mut upstream, 11).await, b"still here?");
    upstream.write_all(b"yes").await.unwrap();
    assert_eq!(read_n(&mut client, 3).await, b"yes");
    assert!(
        !shutdown.is_finished(),
        "shutdown returned while a tunnel was open"
    );
    // It ends; shutdown then returns, reporting every connection drained.
    client.shutdown().await.unwrap();
    upstream.shutdown().await.unwrap();
    let drained = tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("shutdown hung")
        .unwrap();
    assert!(drained, "shutdown says connections were cut");
}

#[tokio::test]
async fn shutdown_cuts_a_tunnel_that_outlives_the_grace_period() {
    let (backend, backend_addr) = tcp_backend().await;
    let (server, edge) = edge_to(backend_addr, "").await;
    let (mut client, _upstream) = open_tunnel(edge, &backend).await;
    let started = Instant::now();
    let drained = tokio::time::timeout(DEADLINE, server.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown hung past its grace period");
    let elapsed = started.elapsed();
    assert!(!drained, "shutdown claims a drain while a tunnel was open");
    assert!(
        elapsed >= Duration::from_millis(300),
        "cut before the grace period: {elapsed:?}"
    );
    let (got, eof) = read_to_close(&mut client).await;
    assert!(eof && got.is_empty(), "the tunnel was not cut");
}

// ---- backends that are down or silent ----

#[tokio::test]
async fn first_backend_down_the_next_one_serves() {
    let pki = Pki::new();
    let cert = pki.issue(&["svc.example.com"]);
    let live = origin("live", Some(&cert)).await;
    let dead = dead_addr();
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      svc.example.com: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{dead}" }}, {{ addr: "{}" }} ] }}
"#,
        live.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    // Round robin starts on each backend in turn: every start must still be served.
    for i in 0..4 {
        let got = https_get(edge, "svc.example.com", "/", pki.client_config()).await;
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(
            got.header("x-backend").as_deref(),
            Some("live"),
            "request {i}"
        );
    }
    let errors = metric(
        &server,
        "tollgate_backend_connect_errors_total",
        &[("pool", "p"), ("backend", &dead.to_string())],
    );
    assert!(
        errors >= 1.0,
        "the dead backend's refusals are counted: {errors}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn backend_that_never_answers_is_skipped_after_the_connect_timeout() {
    let pki = Pki::new();
    let cert = pki.issue(&["svc.example.com"]);
    let live = origin("live", Some(&cert)).await;
    let (_hole, _fillers, hole) = blackhole().await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{hole}" }}, {{ addr: "{}" }} ] }}
timeouts: {{ connect: 300ms }}
"#,
        live.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let mut slow = 0;
    for i in 0..4 {
        let started = Instant::now();
        let got = https_get(edge, "svc.example.com", "/", pki.client_config()).await;
        assert_eq!(
            got.header("x-backend").as_deref(),
            Some("live"),
            "request {i}"
        );
        if started.elapsed() >= Duration::from_millis(300) {
            slow += 1;
        }
    }
    // Those that tried the silent backend first waited for the connect timeout, once.
    assert!(slow >= 1, "no request waited for the connect timeout");
    let errors = metric(
        &server,
        "tollgate_backend_connect_errors_total",
        &[("pool", "p"), ("backend", &hole.to_string())],
    );
    assert!(errors >= 1.0, "connect timeouts are counted: {errors}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn all_backends_down_closes_the_client_at_once() {
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{}" }}, {{ addr: "{}" }} ] }}
timeouts: {{ connect: 5s }}
"#,
        dead_addr(),
        dead_addr()
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let mut client = TcpStream::connect(edge).await.unwrap();
        client
            .write_all(&fixture("curl-clienthello.bin"))
            .await
            .unwrap();
        let (got, closed) = read_to_close(&mut client).await;
        assert!(closed && got.is_empty(), "closed without a byte");
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(2),
            "client kept waiting: {elapsed:?}"
        );
    }
    wait_until("no connection left open", || server.open_connections() == 0).await;
    assert!(server.shutdown(Duration::from_secs(1)).await);
}
