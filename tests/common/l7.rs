//! Test support for the L7 module: hand-written HTTP/1.1 backends on 127.0.0.1:0 that
//! count their connections and can misbehave on purpose, a raw HTTP/1.1 reader/writer
//! for both sides (malformed input, pipelining), a padded built-in origin, and TLS
//! client configs (one version only, or accepting any certificate to inspect it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tollgate::origin::{self, OriginOptions};
use tollgate::server::Server;

use super::{metric_value, start, tls_connect, HttpConn, Origin, Pki, DEADLINE};

/// A hand-written backend: every accepted connection is counted and handed to a closure.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts a backend on 127.0.0.1:0 running `serve(conn, index)` for each connection
/// (`index` counts from 0).
pub async fn raw_backend<F, Fut>(serve: F) -> RawBackend
where
    F: Fn(RawConn<TcpStream>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw backend");
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = count.fetch_add(1, Ordering::SeqCst);
            let serve = Arc::clone(&serve);
            tokio::spawn(async move { serve(RawConn::new(stream), index).await });
        }
    });
    RawBackend {
        addr,
        connections,
        task,
    }
}

/// A keep-alive backend that answers every request 200 with a body holding the request
/// head exactly as received (to inspect headers) and `x-conn: N` (its connection index).
/// It closes after a request that says `Connection: close`. Heads land in `seen`.
pub async fn inspecting_backend(name: &'static str) -> (RawBackend, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let backend = raw_backend(move |mut conn, index| {
        let log = Arc::clone(&log);
        async move {
            while let Some(req) = conn.read_request().await {
                log.lock().unwrap().push(req.head.clone());
                let close = req.has_token("connection", "close");
                let head_only = req.start.starts_with("HEAD ");
                let body = format!("backend {name}\n{}", req.head);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\nx-conn: {index}\r\n{}\r\n",
                    body.len(),
                    if close { "connection: close\r\n" } else { "" }
                );
                let body = if head_only { "" } else { body.as_str() };
                if conn.write(head.as_bytes()).await.is_err() || conn.write(body.as_bytes()).await.is_err() {
                    return;
                }
                if close {
                    return;
                }
            }
        }
    })
    .await;
    (backend, seen)
}

/// A parsed HTTP/1.1 message head and its body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Start line and header lines, as received, up to and including the blank line.
    pub head: String,
    /// Request line or status line.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Whether any header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    /// Whether header `name` lists `token` (comma-separated, case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One side of a raw HTTP/1.1 exchange over any stream, with its read buffer.
pub struct RawConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(stream: S) -> Self {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more bytes into the buffer; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one message head; `None` on EOF before a complete head.
    pub async fn read_head(&mut self) -> Option<RawMessage> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let start = lines.next().unwrap_or("").to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                return Some(RawMessage {
                    head,
                    start,
                    headers,
                    body: Vec::new(),
                });
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads exactly `n` body bytes (fewer on EOF).
    pub async fn read_exact_body(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if !self.fill().await {
                break;
            }
        }
        let n = n.min(self.buf.len());
        self.buf.drain(..n).collect()
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads a body framed by Content-Length or chunked; `None` if it ended early.
    async fn read_body(&mut self, msg: &RawMessage, response: bool) -> Option<Vec<u8>> {
        if msg.has_token("transfer-encoding", "chunked") {
            let mut body = Vec::new();
            loop {
                let line = self.read_line().await?;
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    while !self.read_line().await?.is_empty() {}
                    return Some(body);
                }
                let chunk = self.read_exact_body(size).await;
                if chunk.len() < size {
                    return None;
                }
                body.extend(chunk);
                self.read_line().await?;
            }
        }
        if let Some(len) = msg.header("content-length") {
            let len: usize = len.parse().ok()?;
            let body = self.read_exact_body(len).await;
            return (body.len() == len).then_some(body);
        }
        let status = msg.status();
        if !response || status == 101 || status == 204 || status == 304 {
            return Some(Vec::new());
        }
        // Response delimited by close.
        while self.fill().await {}
        Some(std::mem::take(&mut self.buf))
    }

    /// Reads one request (head and body); `None` on EOF or a truncated body.
    pub async fn read_request(&mut self) -> Option<RawMessage> {
        let mut msg = self.read_head().await?;
        msg.body = self.read_body(&msg, false).await?;
        Some(msg)
    }

    /// Reads one response (head and body) within `DEADLINE`; `None` on EOF or truncation.
    pub async fn read_response(&mut self) -> Option<RawMessage> {
        tokio::time::timeout(DEADLINE, async {
            let mut msg = self.read_head().await?;
            msg.body = self.read_body(&msg, true).await?;
            Some(msg)
        })
        .await
        .expect("response within the deadline")
    }

    /// Takes the bytes read but not consumed yet.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Whether the peer closes the connection (EOF or error) within `DEADLINE`, with no
    /// further bytes beyond what is buffered.
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return self.buf.is_empty(),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }
}

/// A stream whose writes go out at most `max` bytes at a time (a ClientHello split over
/// many TCP segments).
pub struct Trickle<S> {
    pub inner: S,
    pub max: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Starts a built-in origin whose bodies are padded to `body_bytes`.
pub async fn origin_padded(name: &str, body_bytes: usize) -> Origin {
    let listener = tollgate::listener::bind("127.0.0.1:0".parse().unwrap()).expect("bind origin");
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let options = OriginOptions {
        name: name.to_string(),
        body_bytes,
        tls: None,
    };
    tokio::spawn(origin::serve(listener, options, stop.clone()));
    Origin { addr, stop }
}

impl Pki {
    /// Like `client_config`, offering only the given TLS versions.
    pub fn client_config_versions(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(self.ca.root_store())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A client config that accepts any server certificate (to look at which one was sent
/// when it would not verify for the name asked); the verifier is the one health checks
/// and `bench --insecure` use.
pub fn any_cert_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(tollgate::upstream::health::any_certificate_verifier())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub const SNI: &str = "app.example.com";

/// A balancer with a terminating `edge` (every SNI → routes `web`) and a `plain` http
/// listener on the same routes.
pub struct Edge {
    pub server: Server,
    pub pki: Pki,
    pub tls: SocketAddr,
    pub plain: SocketAddr,
}

impl Edge {
    pub async fn start(routes: &str, pools: &str, extra: &str) -> Edge {
        let pki = Pki::new();
        let (cert, key) = pki.issue_files("edge", &[SNI, "*.example.com"]);
        let yaml = format!(
            r#"
certificates:
  - {{ cert: "{}", key: "{}" }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ terminate: web }}
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
routes:
  web:
{routes}
pools:
{pools}
{extra}
"#,
            cert.display(),
            key.display()
        );
        let server = start(&yaml).await;
        let tls = server.listener_addr("edge").unwrap();
        let plain = server.listener_addr("plain").unwrap();
        Edge {
            server,
            pki,
            tls,
            plain,
        }
    }

    /// One pool `app` at `addr`, every request routed to it.
    pub async fn single(addr: SocketAddr, extra: &str) -> Edge {
        Edge::single_mode(addr, "per_request", extra).await
    }

    /// Like `single`, with `backend_connections: mode`.
    pub async fn single_mode(addr: SocketAddr, mode: &str, extra: &str) -> Edge {
        let pools = format!(
            "  app: {{ backend_connections: {mode}, servers: [ {{ addr: \"{addr}\" }} ] }}"
        );
        Edge::start("    - { pool: app }", &pools, extra).await
    }

    pub async fn https(&self) -> HttpConn {
        HttpConn::over(self.tls_stream().await).await
    }

    pub async fn tls_stream(&self) -> TlsStream<TcpStream> {
        tls_connect(self.tls, SNI, self.pki.client_config())
            .await
            .expect("tls")
    }

    pub async fn raw_tls(&self) -> RawConn<TlsStream<TcpStream>> {
        RawConn::new(self.tls_stream().await)
    }

    pub async fn raw_plain(&self) -> RawConn<TcpStream> {
        RawConn::new(TcpStream::connect(self.plain).await.unwrap())
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.server.metrics().render(), name, labels)
    }
}
