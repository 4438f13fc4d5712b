//! Every timeout of DESIGN §4 on every path: a connection is held open at each stage
//! (ClientHello, TLS handshake, request header over plain HTTP and TLS, keep-alive idle,
//! backend connect for passthrough / tcp / HTTP, backend response, tunnel idle for
//! passthrough / tcp / an upgraded HTTP connection) and must be closed (or answered
//! 502/504) no earlier than its timeout and well before the test's deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::l7::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every timeout of the balancer under test.
const T: Duration = Duration::from_millis(500);
/// How late a close may come (a loaded 2-core CI machine).
const SLACK: Duration = Duration::from_secs(4);
/// How early, as the test sees it: the balancer's clock starts when its side of the
/// stage began (a response's last byte written, say), a moment before the test's.
const EARLY: Duration = Duration::from_millis(100);

/// The balancer with every timeout at `T`, and the ends the tests hold.
struct Bed {
    server: tollgate::server::Server,
    pki: Pki,
    _origin: Origin,
    _hole: (std::net::TcpListener, Vec<TcpStream>),
    _silent: RawBackend,
    _upgrading: RawBackend,
    raw: tokio::net::TcpListener,
}

impl Bed {
    async fn start() -> Bed {
        let pki = Pki::new();
        let (cert, key) = pki.issue_files("edge", &["app.example.com", "*.example.com"]);
        let origin = origin("app", None).await;
        let (hole_listener, fillers, hole) = blackhole().await;
        // Reads the request and never answers.
        let silent = raw_backend(|mut conn, _| async move {
            let _ = conn.read_request().await;
            let _ = conn.closed().await;
        })
        .await;
        // Answers 101, then holds the tunnel without a byte either way.
        let upgrading = raw_backend(|mut conn, _| async move {
            let _ = conn.read_request().await;
            let _ = conn
                .write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            let _ = conn.closed().await;
        })
        .await;
        let (raw, raw_addr) = tcp_backend().await;
        let ms = T.as_millis();
        let yaml = format!(
            r#"
timeouts: {{ client_hello: {ms}ms, handshake: {ms}ms, connect: {ms}ms, request_header: {ms}ms,
            client_idle: {ms}ms, backend_response: {ms}ms, tunnel_idle: {ms}ms }}
certificates:
  - {{ cert: "{cert}", key: "{key}" }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      raw.example.com: {{ passthrough: raw }}
      hole.example.com: {{ passthrough: hole }}
    default: {{ terminate: web }}
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
  - name: tcp
    listen: 127.0.0.1:0
    protocol: tcp
    pool: raw
  - name: tcphole
    listen: 127.0.0.1:0
    protocol: tcp
    pool: hole
routes:
  web:
    - {{ host: hole.example.com, pool: hole }}
    - {{ host: silent.example.com, pool: silent }}
    - {{ host: ws.example.com, pool: upgrading }}
    - {{ pool: app }}
pools:
  app: {{ servers: [ {{ addr: "{app}" }} ] }}
  raw: {{ servers: [ {{ addr: "{raw_addr}" }} ] }}
  hole: {{ servers: [ {{ addr: "{hole}" }} ] }}
  silent: {{ servers: [ {{ addr: "{silent}" }} ] }}
  upgrading: {{ servers: [ {{ addr: "{upgrading}" }} ] }}
"#,
            cert = cert.display(),
            key = key.display(),
            app = origin.addr,
            silent = silent.addr,
            upgrading = upgrading.addr,
        );
        let server = start(&yaml).await;
        Bed {
            server,
            pki,
            _origin: origin,
            _hole: (hole_listener, fillers),
            _silent: silent,
            _upgrading: upgrading,
            raw,
        }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.server.listener_addr(listener).unwrap()
    }

    async fn connect(&self, listener: &str) -> TcpStream {
        TcpStream::connect(self.addr(listener)).await.unwrap()
    }
}

/// Waits for `stream` to be closed by the balancer (EOF or reset, whatever arrived
/// before), and checks when: not before `since + T - EARLY`, not after `since + T + SLACK`.
async fn closed_on_time<S: tokio::io::AsyncRead + Unpin>(
    stage: &str,
    stream: &mut S,
    since: Instant,
) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(T + SLACK, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let waited = since.elapsed();
    assert!(closed.is_ok(), "{stage}: still open after {waited:?}");
    assert!(
        waited + EARLY >= T,
        "{stage}: closed after {waited:?}, before its timeout {T:?}"
    );
    got
}

/// Checks that an answer arrived with `status`, no earlier than `T` after `since`.
fn answered_on_time(stage: &str, got: &[u8], status: &str, since: Instant) {
    let waited = since.elapsed();
    let text = String::from_utf8_lossy(got);
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status}")),
        "{stage}: {text}"
    );
    assert!(
        waited + EARLY >= T,
        "{stage}: answered after {waited:?}, before its timeout {T:?}"
    );
    assert!(waited < T + SLACK, "{stage}: answered after {waited:?}");
}

#[tokio::test]
async fn client_hello_stage() {
    let bed = Bed::start().await;
    // Nothing sent at all.
    let mut silent = bed.connect("edge").await;
    let since = Instant::now();
    let got = closed_on_time("client_hello (no bytes)", &mut silent, since).await;
    assert!(got.is_empty());
    // Half a ClientHello.
    let hello = build_client_hello(Some(b"app.example.com"), &[b"http/1.1"]);
    let mut half = bed.connect("edge").await;
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let since = Instant::now();
    let got = closed_on_time("client_hello (half)", &mut half, since).await;
    assert!(
        got.is_empty(),
        "nothing is sent to a client whose hello never completed"
    );
}

#[tokio::test]
async fn tls_handshake_stage() {
    let bed = Bed::start().await;
    // A real rustls ClientHello; the server's flight is read, the client never answers.
    let name = rustls::pki_types::ServerName::try_from("app.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(bed.pki.client_config(), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut stream = bed.connect("edge").await;
    stream.write_all(&hello).await.unwrap();
    let since = Instant::now();
    let got = closed_on_time("handshake", &mut stream, since).await;
    assert!(
        !got.is_empty(),
        "the server's handshake flight arrived first"
    );
    assert_eq!(got[0], 22, "a handshake record, not an alert");
}

#[tokio::test]
async fn request_header_stage_plain_and_tls() {
    let bed = Bed::start().await;
    let mut plain = bed.connect("plain").await;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n")
        .await
        .unwrap();
    let since = Instant::now();
    closed_on_time("request_header (http)", &mut plain, since).await;

    let mut tls = tls_connect(bed.addr("edge"), "app.example.com", bed.pki.client_config())
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app.exa")
        .await
        .unwrap();
    let since = Instant::now();
    closed_on_time("request_header (terminate)", &mut tls, since).await;
}

#[tokio::test]
async fn client_idle_stage() {
    let bed = Bed::start().await;
    let mut conn = RawConn::new(bed.connect("plain").await);
    conn.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = conn.read_head().await.expect("response");
    assert_eq!(head.status(), 200);
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    conn.read_exact_body(len).await;
    let since = Instant::now();
    let mut rest = conn.take_buffered();
    rest.extend(closed_on_time("client_idle", &mut conn.stream, since).await);
    assert!(
        rest.is_empty(),
        "nothing more was sent on the idle connection"
    );
}

#[tokio::test]
async fn connect_stage_passthrough_tcp_and_http() {
    let bed = Bed::start().await;
    // Passthrough to a backend whose connects hang: closed once connect gives up.
    let mut pass = bed.connect("edge").await;
    pass.write_all(&build_client_hello(Some(b"hole.example.com"), &[]))
        .await
        .unwrap();
    let since = Instant::now();
    let got = closed_on_time("connect (passthrough)", &mut pass, since).await;
    assert!(got.is_empty());
    // A tcp listener to the same backend.
    let mut tcp = bed.connect("tcphole").await;
    let since = Instant::now();
    closed_on_time("connect (tcp)", &mut tcp, since).await;
    // HTTP: 502 once connect gives up.
    let mut http = bed.connect("plain").await;
    http.write_all(b"GET / HTTP/1.1\r\nHost: hole.example.com\r\n\r\n")
        .await
        .unwrap();
    let since = Instant::now();
    let (got, _) = read_head_only(&mut http).await;
    answered_on_time("connect (http)", &got, "502", since);
}

#[tokio::test]
async fn backend_response_stage() {
    let bed = Bed::start().await;
    let mut http = bed.connect("plain").await;
    http.write_all(b"GET /slow HTTP/1.1\r\nHost: silent.example.com\r\n\r\n")
        .await
        .unwrap();
    let since = Instant::now();
    let (got, _) = read_head_only(&mut http).await;
    answered_on_time("backend_response", &got, "504", since);
}

#[tokio::test]
async fn tunnel_idle_stage_passthrough_tcp_and_upgrade() {
    let bed = Bed::start().await;
    // Passthrough: the backend got the hello; then neither side sends a byte.
    let hello = build_client_hello(Some(b"raw.example.com"), &[]);
    let mut pass = bed.connect("edge").await;
    pass.write_all(&hello).await.unwrap();
    let mut backend = accept_within(&bed.raw).await;
    assert_eq!(read_n(&mut backend, hello.len()).await, hello);
    let since = Instant::now();
    closed_on_time("tunnel_idle (passthrough, client side)", &mut pass, since).await;
    closed_on_time(
        "tunnel_idle (passthrough, backend side)",
        &mut backend,
        since,
    )
    .await;

    // tcp listener.
    let mut tcp = bed.connect("tcp").await;
    tcp.write_all(b"hi").await.unwrap();
    let mut backend = accept_within(&bed.raw).await;
    assert_eq!(read_n(&mut backend, 2).await, b"hi");
    let since = Instant::now();
    closed_on_time("tunnel_idle (tcp)", &mut tcp, since).await;

    // An upgraded HTTP connection.
    let mut ws = RawConn::new(bed.connect("plain").await);
    ws.write(b"GET /ws HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = ws.read_head().await.expect("101");
    assert_eq!(head.status(), 101);
    let since = Instant::now();
    closed_on_time("tunnel_idle (upgrade)", &mut ws.stream, since).await;
}

/// Reads until the end of a response head (or close) within the deadline.
async fn read_head_only(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let done = tokio::time::timeout(DEADLINE, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, done)
}
