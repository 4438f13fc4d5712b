//! Shared test support: throwaway PKI, built-in origins on 127.0.0.1:0, the balancer
//! started in-process from YAML, TLS and HTTP clients, and polling with a deadline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tollgate::origin::{self, OriginOptions};
use tollgate::server::Server;
use tollgate::tls::certgen::{IssuedCert, TestCa};

pub mod l7;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A CA, a temp dir for PEM files, and helpers to issue certificates.
pub struct Pki {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            ca: TestCa::new("tollgate test CA").expect("CA"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Issues a leaf for `names`.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        self.ca.issue(names).expect("leaf")
    }

    /// Issues a leaf and writes it as `file.pem` / `file.key`; returns the paths.
    pub fn issue_files(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue(names)
            .write(self.dir.path(), file)
            .expect("write cert")
    }

    /// A rustls client config trusting only this CA, offering ALPN http/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(self.ca.root_store())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A built-in origin running on 127.0.0.1:0 until dropped.
pub struct Origin {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Origin {
    /// Stops accepting and closes its connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Starts a built-in origin named `name`, plain or TLS with `cert`.
pub async fn origin(name: &str, cert: Option<&IssuedCert>) -> Origin {
    let listener = tollgate::listener::bind("127.0.0.1:0".parse().unwrap()).expect("bind origin");
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let options = OriginOptions {
        name: name.to_string(),
        body_bytes: 0,
        tls: cert.map(|c| c.server_config().expect("origin TLS")),
    };
    tokio::spawn(origin::serve(listener, options, stop.clone()));
    Origin { addr, stop }
}

/// A local address nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Starts the balancer from YAML text (listeners should use 127.0.0.1:0).
pub async fn start(yaml: &str) -> Server {
    // Tests keep stderr quiet unless they test the access log.
    let quiet;
    let yaml = if yaml.contains("access_log") {
        yaml
    } else {
        quiet = format!("access_log: off\n{yaml}");
        quiet.as_str()
    };
    let config =
        tollgate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
    Server::start(config).await.expect("server start")
}

/// Polls `cond` until it holds, failing the test after `DEADLINE`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens TLS to `addr` with SNI `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    tokio::time::timeout(DEADLINE, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS connect timed out"))?
}

/// A simple response: status, headers, whole body.
pub struct Got {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// An HTTP/1.1 client connection over any stream (keep-alive: send several requests).
pub struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn over<S>(stream: S) -> HttpConn
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        HttpConn { sender }
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Got, hyper::Error> {
        self.sender.ready().await?;
        let response: Response<hyper::body::Incoming> = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// GET `path` with Host `host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Got, hyper::Error> {
        let request = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(request).await
    }
}

/// One GET over a fresh TLS connection to `addr` with SNI and Host `host`.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> Got {
    let tls = tls_connect(addr, host, config).await.expect("tls connect");
    let mut conn = HttpConn::over(tls).await;
    conn.get(host, path).await.expect("response")
}

/// Reads until EOF or error; returns what arrived and whether it ended in EOF (not error)
/// within `DEADLINE`.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let result = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    match result {
        Ok(Ok(_)) => (out, true),
        Ok(Err(_)) => (out, true),
        Err(_) => (out, false),
    }
}

/// The value of one sample in a Prometheus text exposition, e.g.
/// `metric_value(&text, "tollgate_connections_total", &[("listener","edge"),("mode","passthrough")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// The bytes of `tests/data/NAME` (a captured ClientHello).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A minimal, well-formed ClientHello in one TLS record: the SNI `sni` sent byte for byte
/// as given (so tests can send an empty, upper-case or dotted name), and the ALPN list.
pub fn build_client_hello(sni: Option<&[u8]>, alpn: &[&[u8]]) -> Vec<u8> {
    fn with_u16_len(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8]; // name_type host_name
        entry.extend(with_u16_len(name));
        extensions.extend_from_slice(&0u16.to_be_bytes());
        extensions.extend(with_u16_len(&with_u16_len(&entry)));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for protocol in alpn {
            list.push(u8::try_from(protocol.len()).unwrap());
            list.extend_from_slice(protocol);
        }
        extensions.extend_from_slice(&16u16.to_be_bytes());
        extensions.extend(with_u16_len(&with_u16_len(&list)));
    }
    let mut hello = vec![3, 3]; // legacy_version TLS 1.2
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // empty session id
    hello.extend(with_u16_len(&[0x13, 0x01, 0xc0, 0x2f])); // cipher suites
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend(with_u16_len(&extensions));
    let mut message = vec![1]; // client_hello
    message.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    message.extend(hello);
    let mut record = vec![22, 3, 1];
    record.extend(with_u16_len(&message));
    record
}

/// A plain TCP listener on 127.0.0.1:0 the test accepts from itself (a raw backend).
pub async fn tcp_backend() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accepts one connection within `DEADLINE`.
pub async fn accept_within(listener: &tokio::net::TcpListener) -> TcpStream {
    let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("timed out waiting for a connection")
        .expect("accept");
    stream
}

/// Reads exactly `n` bytes within `DEADLINE`.
pub async fn read_n<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("timed out reading {n} bytes"))
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// A local address whose connects hang: a listener with a zero backlog that never
/// accepts, its queue filled by `fillers` (keep them alive), so the kernel drops SYNs.
pub async fn blackhole() -> (std::net::TcpListener, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("blackhole connect: {e}"),
            Err(_) => return (listener, fillers, addr),
        }
    }
    panic!("the zero-backlog listener kept accepting connects");
}
