//! Passthrough routing through a running balancer: each SNI reaches its pool (exact,
//! longest wildcard, default, reject), no SNI, and bad, slow or unfinished ClientHellos.
//! Tunnels themselves and backends that are down are in `passthrough_tunnel.rs`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tollgate::server::Server;
use tollgate::tls::client_hello::{parse_client_hello, HelloParse};

/// Plain TCP backends that read one ClientHello, report the exact bytes they got, answer
/// with their own name and close: the client learns which pool took it, the test learns
/// what the backend received.
struct NamedBackends {
    addrs: HashMap<&'static str, SocketAddr>,
    received: mpsc::UnboundedReceiver<(&'static str, Vec<u8>)>,
}

impl NamedBackends {
    async fn start(names: &[&'static str]) -> Self {
        let (tx, received) = mpsc::unbounded_channel();
        let mut addrs = HashMap::new();
        for &name in names {
            let (listener, addr) = tcp_backend().await;
            addrs.insert(name, addr);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut buf = [0u8; 4096];
                        while matches!(parse_client_hello(&got), HelloParse::Incomplete { .. }) {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = stream.write_all(name.as_bytes()).await;
                        let _ = tx.send((name, got));
                    });
                }
            });
        }
        NamedBackends { addrs, received }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// The next report: which backend, and the bytes it received.
    async fn next(&mut self) -> (&'static str, Vec<u8>) {
        tokio::time::timeout(DEADLINE, self.received.recv())
            .await
            .expect("no backend received a connection")
            .expect("channel open")
    }
}

/// Sends `hello` on a new connection and reads until the balancer or the backend closes.
/// Returns what came back (a backend's name, or nothing).
async fn send_hello(edge: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(edge).await.unwrap();
    stream.write_all(hello).await.unwrap();
    let (got, closed) = read_to_close(&mut stream).await;
    assert!(closed, "connection neither answered nor closed");
    got
}

/// Routes `hello` and asserts backend `expected` took it and received it byte for byte.
async fn assert_routed(
    edge: SocketAddr,
    backends: &mut NamedBackends,
    hello: &[u8],
    expected: &str,
) {
    let reply = send_hello(edge, hello).await;
    let (name, received) = backends.next().await;
    assert_eq!(
        name,
        expected,
        "wrong pool for {:?}",
        parse_client_hello(hello)
    );
    assert_eq!(String::from_utf8_lossy(&reply), expected);
    assert!(
        received == hello,
        "backend {name} did not receive the ClientHello intact"
    );
}

fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&server.metrics().render(), name, labels).unwrap_or(0.0)
}

fn connections(server: &Server, mode: &str) -> f64 {
    metric(
        server,
        "tollgate_connections_total",
        &[("listener", "edge"), ("mode", mode)],
    )
}

fn hello_failures(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        "tollgate_client_hello_failures_total",
        &[("listener", "edge"), ("reason", reason)],
    )
}

fn hello_for(name: &str) -> Vec<u8> {
    build_client_hello(Some(name.as_bytes()), &[b"http/1.1"])
}

#[tokio::test]
async fn exact_sni_reaches_its_pool() {
    let pki = Pki::new();
    let cert = pki.issue(&["a.example.com", "b.example.com"]);
    let a = origin("a", Some(&cert)).await;
    let b = origin("b", Some(&cert)).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      a.example.com: {{ passthrough: pa }}
      b.example.com: {{ passthrough: pb }}
pools:
  pa: {{ servers: [ {{ addr: "{}" }} ] }}
  pb: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        a.addr, b.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let got = https_get(edge, "a.example.com", "/x", pki.client_config()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-backend").as_deref(), Some("a"));
    let got = https_get(edge, "b.example.com", "/x", pki.client_config()).await;
    assert_eq!(got.header("x-backend").as_deref(), Some("b"));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn longest_wildcard_wins_with_real_tls_clients() {
    let pki = Pki::new();
    let names = [
        "exact.eu.example.com",
        "x.eu.example.com",
        "a.b.eu.example.com",
        "eu.example.com",
        "x.example.com",
    ];
    let cert = pki.issue(&names);
    let exact = origin("exact", Some(&cert)).await;
    let eu = origin("eu", Some(&cert)).await;
    let wide = origin("wide", Some(&cert)).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      "*.example.com": {{ passthrough: wide }}
      exact.eu.example.com: {{ passthrough: exact }}
      "*.eu.example.com": {{ passthrough: eu }}
pools:
  exact: {{ servers: [ {{ addr: "{}" }} ] }}
  eu: {{ servers: [ {{ addr: "{}" }} ] }}
  wide: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        exact.addr, eu.addr, wide.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    for (host, backend) in [
        ("exact.eu.example.com", "exact"),
        ("x.eu.example.com", "eu"),
        ("a.b.eu.example.com", "eu"),
        ("eu.example.com", "wide"),
        ("x.example.com", "wide"),
    ] {
        let got = https_get(edge, host, "/", pki.client_config()).await;
        assert_eq!(got.status, 200, "{host}");
        assert_eq!(got.header("x-backend").as_deref(), Some(backend), "{host}");
        assert!(
            got.text().contains(&format!("host={host}")),
            "{host}: {}",
            got.text()
        );
    }
    assert_eq!(connections(&server, "passthrough"), 5.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn routing_order_case_trailing_dot_and_default_with_raw_hellos() {
    let mut backends = NamedBackends::start(&["exact", "wide", "fallback"]).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      openssl.example.com: {{ passthrough: exact }}
      "*.example.com": {{ passthrough: wide }}
    default: {{ passthrough: fallback }}
pools:
  exact: {{ servers: [ {{ addr: "{}" }} ] }}
  wide: {{ servers: [ {{ addr: "{}" }} ] }}
  fallback: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        backends.addr("exact"),
        backends.addr("wide"),
        backends.addr("fallback")
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "openssl capture",
            fixture("openssl-s_client-clienthello.bin"),
            "exact",
        ),
        ("curl capture", fixture("curl-clienthello.bin"), "wide"),
        (
            "tls 1.2 capture",
            fixture("openssl-tls12-clienthello.bin"),
            "wide",
        ),
        (
            "chromium capture, unknown name",
            fixture("chromium-clienthello.bin"),
            "fallback",
        ),
        (
            "no SNI capture",
            fixture("openssl-nosni-clienthello.bin"),
            "fallback",
        ),
        (
            "upper case, trailing dot",
            hello_for("OpenSSL.Example.COM."),
            "exact",
        ),
        (
            "wildcard, upper case",
            hello_for("DEEP.Name.EXAMPLE.com"),
            "wide",
        ),
        ("bare suffix", hello_for("example.com"), "fallback"),
        (
            "suffix without the dot",
            hello_for("badexample.com"),
            "fallback",
        ),
        (
            "no SNI built",
            build_client_hello(None, &[b"h2"]),
            "fallback",
        ),
    ];
    for (what, hello, expected) in &cases {
        let reply = send_hello(edge, hello).await;
        let (name, received) = backends.next().await;
        assert_eq!(&name, expected, "{what}");
        assert_eq!(String::from_utf8_lossy(&reply), *expected, "{what}");
        assert!(
            received == *hello,
            "{what}: the backend did not receive the hello intact"
        );
    }
    assert_eq!(connections(&server, "passthrough"), cases.len() as f64);
    assert_eq!(connections(&server, "rejected"), 0.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn no_sni_from_a_real_client_goes_to_the_default() {
    let pki = Pki::new();
    let cert = pki.issue(&["127.0.0.1", "named.example.com"]);
    let named = origin("named", Some(&cert)).await;
    let fallback = origin("fallback", Some(&cert)).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      named.example.com: {{ passthrough: named }}
    default: {{ passthrough: fallback }}
pools:
  named: {{ servers: [ {{ addr: "{}" }} ] }}
  fallback: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        named.addr, fallback.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    // rustls sends no SNI when connecting by IP address.
    let got = https_get(edge, "127.0.0.1", "/", pki.client_config()).await;
    assert_eq!(got.header("x-backend").as_deref(), Some("fallback"));
    let got = https_get(edge, "named.example.com", "/", pki.client_config()).await;
    assert_eq!(got.header("x-backend").as_deref(), Some("named"));
    server.shutdown(Duration::from_secs(1)).await;
}

/// A listener with one named rule and the given default line; `a.example.com` routes.
async fn one_rule_listener(backends: &NamedBackends, default: &str) -> Server {
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      a.example.com: {{ passthrough: pa }}
    {default}
pools:
  pa: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        backends.addr("a")
    );
    start(&yaml).await
}

#[tokio::test]
async fn default_reject_closes_without_a_byte() {
    let mut backends = NamedBackends::start(&["a"]).await;
    let server = one_rule_listener(&backends, "default: reject").await;
    let edge = server.listener_addr("edge").unwrap();
    for hello in [
        hello_for("other.example.org"),
        fixture("openssl-nosni-clienthello.bin"),
    ] {
        let started = Instant::now();
        assert_eq!(
            send_hello(edge, &hello).await,
            b"",
            "rejected: no byte back"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "closed at once");
    }
    assert_eq!(connections(&server, "rejected"), 2.0);
    assert_eq!(connections(&server, "passthrough"), 0.0);
    // The named rule still routes.
    assert_routed(edge, &mut backends, &hello_for("a.example.com"), "a").await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_sni_without_a_default_closes() {
    let mut backends = NamedBackends::start(&["a"]).await;
    let server = one_rule_listener(&backends, "").await;
    let edge = server.listener_addr("edge").unwrap();
    for hello in [
        hello_for("b.example.com"),
        fixture("curl-clienthello.bin"),
        fixture("openssl-nosni-clienthello.bin"),
    ] {
        assert_eq!(send_hello(edge, &hello).await, b"");
    }
    assert_eq!(connections(&server, "rejected"), 3.0);
    assert_routed(edge, &mut backends, &hello_for("A.example.com"), "a").await;
    assert_eq!(connections(&server, "passthrough"), 1.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn non_tls_bytes_are_closed_at_once_and_counted() {
    let backends = NamedBackends::start(&["a"]).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: pa }}
pools:
  pa: {{ servers: [ {{ addr: "{}" }} ] }}
timeouts: {{ client_hello: 30s }}
"#,
        backends.addr("a")
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let started = Instant::now();
    assert_eq!(
        send_hello(edge, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        b""
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not closed at once"
    );
    wait_until("not_tls counted", || {
        hello_failures(&server, "not_tls") == 1.0
    })
    .await;
    // An SSH client speaks first too.
    assert_eq!(send_hello(edge, b"SSH-2.0-OpenSSH_9.6\r\n").await, b"");
    wait_until("second not_tls counted", || {
        hello_failures(&server, "not_tls") == 2.0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(connections(&server, "passthrough"), 0.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn malformed_and_oversized_hellos_are_closed_and_counted() {
    let backends = NamedBackends::start(&["a"]).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: pa }}
pools:
  pa: {{ servers: [ {{ addr: "{}" }} ] }}
timeouts: {{ client_hello: 30s }}
"#,
        backends.addr("a")
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    // A ServerHello where a ClientHello belongs.
    assert_eq!(send_hello(edge, &[22, 3, 3, 0, 4, 2, 0, 0, 0]).await, b"");
    wait_until("malformed counted", || {
        hello_failures(&server, "malformed") == 1.0
    })
    .await;
    // A ClientHello claiming 70,000 bytes.
    assert_eq!(
        send_hello(edge, &[22, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70]).await,
        b""
    );
    wait_until("too_large counted", || {
        hello_failures(&server, "too_large") == 1.0
    })
    .await;
    assert_eq!(connections(&server, "rejected"), 2.0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn hello_written_one_byte_at_a_time_still_routes() {
    let (backend, backend_addr) = tcp_backend().await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      curl.example.com: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{backend_addr}" }} ] }}
"#
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let hello = fixture("curl-clienthello.bin");
    let mut client = TcpStream::connect(edge).await.unwrap();
    client.set_nodelay(true).unwrap();
    for byte in &hello {
        client.write_all(std::slice::from_ref(byte)).await.unwrap();
        // Pacing (not synchronisation): each byte leaves as its own segment.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut upstream = accept_within(&backend).await;
    assert_eq!(read_n(&mut upstream, hello.len()).await, hello);
    // The tunnel is live both ways afterwards.
    upstream.write_all(b"server flight").await.unwrap();
    assert_eq!(read_n(&mut client, 13).await, b"server flight");
    client.write_all(b"client finished").await.unwrap();
    assert_eq!(read_n(&mut upstream, 15).await, b"client finished");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unfinished_hello_is_closed_after_the_timeout() {
    let (backend, backend_addr) = tcp_backend().await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: p }}
pools:
  p: {{ servers: [ {{ addr: "{backend_addr}" }} ] }}
timeouts: {{ client_hello: 300ms }}
"#
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let hello = fixture("chromium-clienthello.bin");
    // The clock starts before the connect, so it cannot start after the balancer's.
    let started = Instant::now();
    let mut client = TcpStream::connect(edge).await.unwrap();
    client.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let (got, closed) = read_to_close(&mut client).await;
    let elapsed = started.elapsed();
    assert!(closed && got.is_empty(), "closed without a byte");
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed long after the timeout: {elapsed:?}"
    );
    wait_until("timeout counted", || {
        hello_failures(&server, "timeout") == 1.0
    })
    .await;
    assert_eq!(connections(&server, "passthrough"), 0.0);
    drop(backend);
    server.shutdown(Duration::from_secs(1)).await;
}
