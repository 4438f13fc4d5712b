//! The HTTP request path on arbitrary client bytes, in two layers:
//!
//! 1. Sans-io: the raw-stream framing scanner (`tollgate::http::framing`) fed the bytes
//!    whole and again in data-derived pieces — it must not panic, and for input below its
//!    1 MiB line bound it must reach the same verdicts however the reads were split (each
//!    request line found in the input is asked `take_conflicting` on both scanners and
//!    the answers must agree). Then the header helpers (`tollgate::http::headers`) on
//!    the bytes and on `Name: value` lines cut from them: `valid_host_header` may only
//!    accept what its doc allows (≤ 255 bytes, no space, `/`, `@` or control byte, at most
//!    one `:` outside brackets); the other helpers must answer any header map.
//! 2. The real thing: the bytes are what a client sends on a `protocol: http` listener,
//!    over an in-memory duplex, into `tollgate::http::conn::serve_connection` (hyper's
//!    HTTP/1.1 server with tollgate's clocks, limits and framing scanner) with
//!    `tollgate::http::proxy::handle` as the service and a routing table compiled from a
//!    real config: `static.test/s/…` → a static directory (compressed), `/c…` → a cached pool route, anything
//!    else → a pool whose backend is an in-process hyper server. No panic (libFuzzer's
//!    panic hook aborts, spawned tasks included), no hang (run with `-timeout`), and
//!    whatever tollgate writes back starts with an HTTP/1.1 status line.

#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::http::conn::{serve_connection, ConnLimits};
use tollgate::http::framing::FramingScanner;
use tollgate::http::headers;
use tollgate::http::proxy::{self, ConnInfo, ProxyContext};
use tollgate::http::routes::RouteTable;
use tollgate::protect::Protection;

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// (method, target) of every line of `data` that looks like a request line.
fn request_lines(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    text.split('\n')
        .filter_map(|line| {
            let line = line.trim_start_matches(['\r', '\n']).trim_end_matches('\r');
            let mut parts = line.split(' ');
            let method = parts.next()?;
            let target = parts.next()?;
            (!method.is_empty()).then(|| (method.to_string(), target.to_string()))
        })
        .take(80)
        .collect()
}

fn scanner_layer(data: &[u8]) {
    let mut whole = FramingScanner::default();
    whole.feed(data);
    let mut pieces = FramingScanner::default();
    let mut h = fnv(data) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        let n = 1 + (h % 97) as usize;
        let n = n.min(rest.len());
        pieces.feed(&rest[..n]);
        rest = &rest[n..];
    }
    if data.len() >= 1 << 20 {
        // Past the scanner's 1 MiB line bound, where it stops depends on read sizes.
        return;
    }
    for (method, target) in request_lines(data) {
        let a = whole.take_conflicting(&method, &target);
        let b = pieces.take_conflicting(&method, &target);
        assert_eq!(
            a, b,
            "scanner verdict for {method} {target} depends on read sizes"
        );
    }
}

fn headers_layer(data: &[u8]) {
    if headers::valid_host_header(data) {
        assert!(data.len() <= 255);
        assert!(
            !data
                .iter()
                .any(|&b| b == b' ' || b == b'/' || b == b'@' || b.is_ascii_control()),
            "accepted Host {data:?}"
        );
        let outside = match data.iter().position(|&b| b == b']') {
            Some(end) if data[0] == b'[' => &data[end + 1..],
            _ => data,
        };
        assert!(
            outside.iter().filter(|&&b| b == b':').count() <= 1,
            "accepted Host {data:?}"
        );
        let text = std::str::from_utf8(data).expect("an accepted Host is ASCII");
        assert!(
            !headers::strip_port(text).is_empty(),
            "accepted Host {data:?}"
        );
    }
    let _ = headers::strip_port(&String::from_utf8_lossy(data));

    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(100) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let _ = headers::has_conflicting_framing(&map);
    let _ = headers::keep_alive_timeout(&map);
    let _ = headers::connection_has_token(&map, "close");
    let uri = hyper::Uri::from_static("/");
    let _ = headers::request_host(&uri, &map);
    let upgrade = headers::is_upgrade_request(&map);
    headers::strip_hop_by_hop(&mut map, upgrade);
    // (`add_forwarding` runs on every request the proxy layer below forwards.)
}

/// What the proxy layer needs, built once per process.
struct World {
    rt: tokio::runtime::Runtime,
    table: Arc<RouteTable>,
    timeouts: tollgate::config::Timeouts,
    limits: ConnLimits,
    max_body: Option<u64>,
    conn: Arc<ConnInfo>,
    client: Arc<headers::ClientIdentity>,
    shutdown: tokio_util::sync::CancellationToken,
    // Keeps the pools (and their metrics) alive.
    _snapshot: tollgate::server::Snapshot,
}

async fn backend(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    // Read the body to its end (bounded by tollgate's max_request_body_bytes).
    let _ = req.into_body().collect().await;
    Ok(hyper::Response::builder()
        .header("content-type", "text/plain")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(
            format!("backend saw {method}\n").repeat(40),
        )))
        .unwrap())
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The backend: an in-process hyper server on loopback.
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let backend_addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let io = hyper_util_io(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, hyper::service::service_fn(backend))
                        .await;
                });
            }
        });
        // A static directory.
        let root =
            std::env::temp_dir().join(format!("tollgate-fuzz-static-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "<html>index</html>\n".repeat(100)).unwrap();
        std::fs::write(root.join("sub/a.txt"), "static file\n".repeat(300)).unwrap();
        let yaml = format!(
            r#"
listeners:
  - name: web
    listen: 127.0.0.1:1
    protocol: http
    routes: web
limits:
  max_request_header_bytes: 4096
  max_request_body_bytes: 2048
  max_requests_per_connection: 16
timeouts: {{ connect: 200ms, backend_response: 500ms, request_header: 1s, client_idle: 1s }}
routes:
  web:
    - host: static.test
      path_prefix: /s
      static: {{ root: "{root}" }}
      compress: {{ algorithms: [gzip, br, zstd], min_bytes: 16 }}
    - path_prefix: /c
      pool: app
      cache: {{ max_bytes: 64KiB }}
    - {{ path_prefix: /, pool: app, compress: {{ algorithms: [gzip], min_bytes: 16 }} }}
pools:
  app:
    backend_connections: pooled
    servers: [ {{ addr: "{backend_addr}" }} ]
"#,
            root = root.display()
        );
        let config = Arc::new(tollgate::config::from_yaml(&yaml).expect("fuzz config"));
        let metrics = tollgate::metrics::Metrics::new();
        let snapshot =
            tollgate::server::Snapshot::build(Arc::clone(&config), &metrics).expect("snapshot");
        let table = Arc::clone(snapshot.l7.table("web").expect("table web"));
        let listener = &snapshot.listeners[0];
        let protection: Arc<Protection> = Arc::clone(&listener.protection);
        let conn = Arc::new(ConnInfo {
            listener: "web".to_string(),
            mode: "http",
            sni: None,
            access: Arc::new(tollgate::access_log::AccessLog::off()),
            tracker: tokio_util::task::TaskTracker::new(),
            hard_stop: tokio_util::sync::CancellationToken::new(),
            rate_per_request: protection.rate.clone(),
            protection,
        });
        let limits = ConnLimits {
            request_header: config.timeouts.request_header,
            client_idle: config.timeouts.client_idle,
            max_header_bytes: config.limits.max_request_header_bytes,
            stalled: config
                .timeouts
                .client_idle
                .max(config.timeouts.backend_response),
            max_requests: config.limits.max_requests_per_connection,
        };
        World {
            rt,
            table,
            timeouts: config.timeouts,
            limits,
            max_body: config.limits.max_request_body_bytes,
            conn,
            client: Arc::new(headers::ClientIdentity::new(PEER.ip())),
            shutdown: tokio_util::sync::CancellationToken::new(),
            _snapshot: snapshot,
        }
    })
}

fn hyper_util_io(stream: tokio::net::TcpStream) -> hyper_util::rt::TokioIo<tokio::net::TcpStream> {
    hyper_util::rt::TokioIo::new(stream)
}

/// The client's address as the proxy sees it.
const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
    40000,
);

/// How long the client waits for more of an answer before it half-closes.
const QUIET: Duration = Duration::from_millis(3);

fn proxy_layer(data: &[u8]) {
    let w = world();
    let peer = PEER;
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let written = w.rt.block_on(async {
        let serve = serve_connection(server, w.limits, &w.shutdown, |activity| {
            let cx = ProxyContext {
                table: Arc::clone(&w.table),
                peer,
                client: Arc::clone(&w.client),
                proto: "http",
                timeouts: w.timeouts,
                max_body: w.max_body,
                activity,
                conn: Arc::clone(&w.conn),
            };
            hyper::service::service_fn(move |req| proxy::handle(req, cx.clone()))
        });
        let talk = async {
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            // Send everything, keep the connection open while answers keep coming (a
            // quiet spell of QUIET ends it), then half-close and read to the end: an
            // immediate half-close would make hyper drop a request still in flight.
            let sent = std::cell::Cell::new(false);
            let quiet = tokio::sync::Notify::new();
            let send = async {
                let _ = wr.write_all(data).await;
                sent.set(true);
                quiet.notified().await;
                let _ = wr.shutdown().await;
            };
            let mut got = Vec::new();
            let recv = async {
                let mut buf = [0u8; 8192];
                let mut open = true;
                loop {
                    let read = if open {
                        match tokio::time::timeout(QUIET, rd.read(&mut buf)).await {
                            Ok(r) => r,
                            Err(_) => {
                                if sent.get() {
                                    open = false;
                                    quiet.notify_one();
                                }
                                continue;
                            }
                        }
                    } else {
                        rd.read(&mut buf).await
                    };
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) if got.len() < (4 << 20) => got.extend_from_slice(&buf[..n]),
                        Ok(_) => {}
                    }
                }
                if open {
                    quiet.notify_one();
                }
            };
            tokio::join!(send, recv);
            got
        };
        let (_end, got) = tokio::join!(serve, talk);
        got
    });
    if std::env::var_os("TOLLGATE_FUZZ_SHOW").is_some() {
        // Debug aid: show the status lines tollgate answered with.
        for line in String::from_utf8_lossy(&written)
            .lines()
            .filter(|l| l.starts_with("HTTP/"))
        {
            eprintln!("answer: {line}");
        }
    }
    if !written.is_empty() {
        assert!(
            written.starts_with(b"HTTP/1.1 ") || written.starts_with(b"HTTP/1.0 "),
            "tollgate wrote {:?}",
            String::from_utf8_lossy(&written[..written.len().min(200)])
        );
    }
}

fuzz_target!(|data: &[u8]| {
    scanner_layer(data);
    headers_layer(data);
    proxy_layer(data);
});
