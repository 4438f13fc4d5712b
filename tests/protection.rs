//! Edge protections through a running balancer (docs/security.md): connections per
//! client address (closed at accept, before any TLS work), the request body limit (413,
//! declared or chunked), requests per connection (`Connection: close` on the last), and
//! the per-address rate limit (429 with Retry-After on http listeners, closed at accept
//! on tcp listeners). Each test fails when its protection stops working.

mod common;

use common::l7::*;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn limit_metric(server: &tollgate::server::Server, listener: &str, limit: &str) -> f64 {
    metric_value(
        &server.metrics().render(),
        "tollgate_limit_rejections_total",
        &[("listener", listener), ("limit", limit)],
    )
    .unwrap_or(0.0)
}

fn rejected_metric(server: &tollgate::server::Server, listener: &str) -> f64 {
    metric_value(
        &server.metrics().render(),
        "tollgate_connections_total",
        &[("listener", listener), ("mode", "rejected")],
    )
    .unwrap_or(0.0)
}

/// Connects, sends a GET and reads until close: what came back before the close.
async fn get_and_read_all(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The balancer may already have closed it; a failed write is an answer too.
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n")
        .await;
    let (bytes, closed) = read_to_close(&mut stream).await;
    assert!(closed, "connection neither answered nor closed in time");
    bytes
}

#[tokio::test]
async fn per_ip_limit_closes_excess_connections_at_accept() {
    let o = origin("app", None).await;
    let yaml = format!(
        r#"
listeners:
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
    max_connections_per_ip: 2
routes:
  web: [ {{ pool: app }} ]
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("plain").unwrap();
    let mut first = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    let mut second = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(first.get("a.example", "/").await.unwrap().status, 200);
    assert_eq!(second.get("a.example", "/").await.unwrap().status, 200);

    // A third from the same address is closed without an answer.
    let answer = get_and_read_all(addr).await;
    assert!(answer.is_empty(), "third connection was served: {answer:?}");
    assert_eq!(limit_metric(&server, "plain", "per_ip"), 1.0);
    assert_eq!(rejected_metric(&server, "plain"), 1.0);

    // Once one closes, its slot is free again.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = get_and_read_all(addr).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot of a closed connection was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(second.get("a.example", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn per_ip_limit_on_tls_listener_acts_before_the_client_hello() {
    let o = origin("vault", None).await;
    let yaml = format!(
        r#"
limits: {{ max_connections_per_ip: 1 }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: vault }}
pools:
  vault: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("edge").unwrap();
    // The first connection sends nothing: it sits in the ClientHello peek, holding its slot.
    let _held = TcpStream::connect(addr).await.unwrap();
    wait_until("the first connection is accepted", || {
        server.open_connections() == 1
    })
    .await;
    // The second sends a ClientHello and is closed without it being looked at.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second
        .write_all(&build_client_hello(Some(b"vault.example.com"), &[]))
        .await;
    let (bytes, closed) = read_to_close(&mut second).await;
    assert!(
        closed && bytes.is_empty(),
        "second connection not closed at once"
    );
    assert_eq!(limit_metric(&server, "edge", "per_ip"), 1.0);
    let text = server.metrics().render();
    let hello_failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("tollgate_client_hello_failures_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(hello_failures, 0.0, "the refused ClientHello was parsed");
}

#[tokio::test]
async fn request_body_over_the_limit_gets_413_declared_or_chunked() {
    let (backend, seen) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "limits: { max_request_body_bytes: 1024 }").await;

    // Declared too large: refused before the backend is contacted.
    let mut conn = edge.raw_plain().await;
    conn.write(b"POST /up HTTP/1.1\r\nhost: a.example\r\ncontent-length: 2048\r\n\r\n")
        .await
        .unwrap();
    let response = conn.read_response().await.expect("a response");
    assert_eq!(response.status(), 413);
    assert!(response.has_token("connection", "close"));
    assert!(conn.closed().await, "connection stays open after 413");
    assert_eq!(
        backend.accepted(),
        0,
        "a declared oversize body reached a backend"
    );

    // Chunked, crossing the limit in its third chunk: 413, and the backend never sees a
    // complete request.
    let mut conn = edge.raw_plain().await;
    let mut request =
        b"POST /up HTTP/1.1\r\nhost: a.example\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'x'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    conn.write(&request).await.unwrap();
    let response = conn.read_response().await.expect("a response");
    assert_eq!(response.status(), 413);
    assert!(conn.closed().await, "connection stays open after 413");
    assert!(
        seen.lock().unwrap().is_empty(),
        "a backend received the oversize chunked request"
    );

    // Within the limit, both ways: forwarded.
    let mut conn = edge.raw_plain().await;
    let mut request =
        b"POST /ok HTTP/1.1\r\nhost: a.example\r\ncontent-length: 1000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'y'; 1000]);
    request.extend_from_slice(
        b"POST /ok2 HTTP/1.1\r\nhost: a.example\r\ntransfer-encoding: chunked\r\n\r\n200\r\n",
    );
    request.extend_from_slice(&[b'z'; 0x200]);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    conn.write(&request).await.unwrap();
    assert_eq!(conn.read_response().await.expect("first").status(), 200);
    assert_eq!(conn.read_response().await.expect("second").status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(
        edge.metric(
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "body")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn last_request_per_connection_says_close() {
    let (backend, _seen) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "limits: { max_requests_per_connection: 3 }").await;
    let mut conn = edge.raw_plain().await;
    for n in 1..=3 {
        conn.write(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n")
            .await
            .unwrap();
        let response = conn.read_response().await.expect("a response");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.has_token("connection", "close"),
            n == 3,
            "request {n}: Connection: close only on the third"
        );
    }
    assert!(
        conn.closed().await,
        "connection open after its last request"
    );
    wait_until("the requests limit is counted", || {
        edge.metric(
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "requests")],
        ) == Some(1.0)
    })
    .await;
    // Over TLS too.
    let mut tls = edge.raw_tls().await;
    for n in 1..=3 {
        tls.write(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n")
            .await
            .unwrap();
        let response = tls.read_response().await.expect("a response");
        assert_eq!(response.has_token("connection", "close"), n == 3);
    }
    assert!(tls.closed().await);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let (backend, _seen) = inspecting_backend("app").await;
    // 0.1 a second: the bucket does not refill noticeably while the test runs.
    let edge = Edge::single(backend.addr, "rate_limit: { rate: 0.1, burst: 3 }").await;
    let mut conn = HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await;
    for _ in 0..3 {
        assert_eq!(conn.get("a.example", "/").await.unwrap().status, 200);
    }
    let refused = conn.get("a.example", "/").await.unwrap();
    assert_eq!(refused.status, 429);
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        backend.accepted(),
        3,
        "a refused request reached the backend"
    );
    assert_eq!(
        edge.metric(
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "rate")]
        ),
        Some(1.0)
    );
    // The keep-alive connection itself stays usable (refused again, not cut).
    assert_eq!(conn.get("a.example", "/").await.unwrap().status, 429);
}

#[tokio::test]
async fn rate_limit_on_tcp_listener_closes_new_connections_at_accept() {
    let o = origin("db", None).await;
    let yaml = format!(
        r#"
listeners:
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    pool: db
    rate_limit: {{ rate: 0.1, burst: 2 }}
pools:
  db: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("db").unwrap();
    for _ in 0..2 {
        let answer = get_and_read_all(addr).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "within the burst: served"
        );
    }
    let answer = get_and_read_all(addr).await;
    assert!(answer.is_empty(), "over the rate: served anyway");
    assert_eq!(limit_metric(&server, "db", "rate"), 1.0);
    assert_eq!(rejected_metric(&server, "db"), 1.0);
}

#[test]
fn protection_config_errors_name_the_key() {
    let base = |extra: &str, listener_extra: &str| {
        format!(
            r#"
{extra}
listeners:
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    pool: db
{listener_extra}
pools:
  db: {{ servers: [ {{ addr: "127.0.0.1:9" }} ] }}
"#
        )
    };
    let cases = [
        (
            base("limits: { max_connections_per_ip: 0 }", ""),
            "limits.max_connections_per_ip",
        ),
        (
            base("", "    max_connections_per_ip: 0"),
            "listeners[0].max_connections_per_ip",
        ),
        (
            base("limits: { max_requests_per_connection: 0 }", ""),
            "limits.max_requests_per_connection",
        ),
        (base("rate_limit: { rate: 0 }", ""), "rate_limit.rate"),
        (
            base("", "    rate_limit: { rate: 5, burst: 0 }"),
            "listeners[0].rate_limit.burst",
        ),
        (base("rate_limit: { rate: 5, brust: 9 }", ""), "rate_limit"),
        (base("limits: { max_body: 5 }", ""), "limits"),
    ];
    for (yaml, path) in cases {
        let err = tollgate::config::from_yaml(&yaml)
            .expect_err(&format!("accepted:\n{yaml}"))
            .to_string();
        assert!(err.starts_with(path), "{path}: got {err}");
    }
    let ok = tollgate::config::from_yaml(&base(
        "limits: { max_connections_per_ip: 10, max_request_body_bytes: 1048576, max_requests_per_connection: 100 }\nrate_limit: { rate: 50, burst: 100 }",
        "    rate_limit: { rate: 5 }",
    ))
    .expect("valid");
    let l = &ok.listeners[0];
    assert_eq!(l.max_connections_per_ip, Some(10));
    let r = l.rate_limit.expect("rate limit");
    assert_eq!(
        (r.rate, r.burst),
        (5.0, 10),
        "listener overrides; burst defaults to 2x"
    );
}

async fn admin_status(server: &tollgate::server::Server) -> serde_json::Value {
    let addr = server.admin_addr().expect("admin listener");
    let mut conn = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    let got = conn.get("admin", "/status").await.expect("status");
    serde_json::from_slice(&got.body).expect("json")
}

fn ban_events(server: &tollgate::server::Server, listener: &str, event: &str) -> f64 {
    metric_value(
        &server.metrics().render(),
        "tollgate_ban_events_total",
        &[("listener", listener), ("event", event)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn ban_on_connections_closes_at_accept_then_lifts() {
    let o = origin("db", None).await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
ban: {{ threshold: 2, window: 1m, duration: 1s, on: connections }}
listeners:
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    pool: db
pools:
  db: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("db").unwrap();
    for _ in 0..2 {
        assert!(get_and_read_all(addr).await.starts_with(b"HTTP/1.1 200"));
    }
    // The third crosses the threshold, the fourth finds the ban.
    assert!(get_and_read_all(addr).await.is_empty(), "third served");
    assert!(
        get_and_read_all(addr).await.is_empty(),
        "banned, yet served"
    );
    assert_eq!(ban_events(&server, "db", "ban"), 1.0);
    assert_eq!(limit_metric(&server, "db", "ban"), 2.0);
    let status = admin_status(&server).await;
    let bans = status["bans"].as_array().expect("bans listed");
    assert_eq!(bans.len(), 1, "{status}");
    assert_eq!(bans[0]["listener"], "db");
    assert_eq!(bans[0]["address"], "127.0.0.1");

    // After `duration`, it is lifted (logged and counted once) and served again.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !get_and_read_all(addr).await.starts_with(b"HTTP/1.1 200") {
        assert!(tokio::time::Instant::now() < deadline, "ban never lifted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ban_events(&server, "db", "unban"), 1.0);
    assert_eq!(ban_events(&server, "db", "ban"), 1.0);
    let status = admin_status(&server).await;
    assert_eq!(status["bans"].as_array().map(Vec::len), Some(0), "{status}");
}

#[tokio::test]
async fn ban_on_requests_refuses_then_closes_at_accept_except_allowlisted() {
    let (backend, _seen) = inspecting_backend("app").await;
    let yaml = format!(
        r#"
listeners:
  - name: strict
    listen: 127.0.0.1:0
    protocol: http
    routes: web
    ban: {{ threshold: 3, window: 1m, duration: 5m, on: requests }}
  - name: trusted
    listen: 127.0.0.1:0
    protocol: http
    routes: web
    ban: {{ threshold: 3, window: 1m, duration: 5m, on: requests, allow: [ 10.0.0.0/8, 127.0.0.0/8 ] }}
routes:
  web: [ {{ pool: app }} ]
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        backend.addr
    );
    let server = start(&yaml).await;
    let strict = server.listener_addr("strict").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(strict).await.unwrap()).await;
    for _ in 0..3 {
        assert_eq!(conn.get("a.example", "/").await.unwrap().status, 200);
    }
    let refused = conn.get("a.example", "/").await.unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("connection").as_deref(), Some("close"));
    assert!(
        get_and_read_all(strict).await.is_empty(),
        "banned, yet served"
    );
    assert_eq!(backend.accepted(), 3);
    assert_eq!(ban_events(&server, "strict", "ban"), 1.0);
    assert_eq!(limit_metric(&server, "strict", "ban"), 2.0);

    let trusted = server.listener_addr("trusted").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(trusted).await.unwrap()).await;
    for _ in 0..10 {
        assert_eq!(conn.get("a.example", "/").await.unwrap().status, 200);
    }
    assert_eq!(ban_events(&server, "trusted", "ban"), 0.0);
}

#[tokio::test]
async fn ban_on_handshake_failures_skips_the_peek_of_a_banned_address() {
    let o = origin("vault", None).await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    default: {{ passthrough: vault }}
    ban: {{ threshold: 2, window: 1m, duration: 5m, on: handshake_failures }}
pools:
  vault: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("edge").unwrap();
    let not_tls = metric_value_or_zero(&server, "tollgate_client_hello_failures_total", "not_tls");
    assert_eq!(not_tls, 0.0);
    for n in 1..=3 {
        let _ = get_and_read_all(addr).await;
        wait_until("the failure is counted", || {
            metric_value_or_zero(&server, "tollgate_client_hello_failures_total", "not_tls")
                == f64::from(n)
        })
        .await;
    }
    assert_eq!(ban_events(&server, "edge", "ban"), 1.0);
    let _ = get_and_read_all(addr).await;
    assert_eq!(limit_metric(&server, "edge", "ban"), 1.0);
    assert_eq!(
        metric_value_or_zero(&server, "tollgate_client_hello_failures_total", "not_tls"),
        3.0,
        "a banned address's bytes were parsed"
    );
}

fn metric_value_or_zero(server: &tollgate::server::Server, name: &str, reason: &str) -> f64 {
    metric_value(&server.metrics().render(), name, &[("reason", reason)]).unwrap_or(0.0)
}

#[test]
fn ban_config_errors_name_the_key() {
    let yaml = |ban: &str, protocol: &str| {
        let target = if protocol == "tcp" {
            "pool: db"
        } else {
            "routes: web"
        };
        format!(
            r#"
{ban}
listeners:
  - name: l
    listen: 127.0.0.1:0
    protocol: {protocol}
    {target}
routes:
  web: [ {{ pool: db }} ]
pools:
  db: {{ servers: [ {{ addr: "127.0.0.1:9" }} ] }}
"#
        )
    };
    let cases = [
        (
            yaml(
                "ban: { threshold: 5, window: 10s, duration: 5m, allow: [ 10.0.0.0/33 ] }",
                "tcp",
            ),
            "ban.allow[0]",
        ),
        (
            yaml("ban: { threshold: 5, window: 10x, duration: 5m }", "tcp"),
            "ban.window",
        ),
        (
            yaml("ban: { threshold: 0, window: 10s, duration: 5m }", "tcp"),
            "ban.threshold",
        ),
        (
            yaml(
                "ban: { threshold: 5, window: 10s, duration: 5m, on: requests }",
                "tcp",
            ),
            "ban.on",
        ),
        (
            yaml(
                "ban: { threshold: 5, window: 10s, duration: 5m, on: handshake_failures }",
                "http",
            ),
            "ban.on",
        ),
        (
            yaml(
                "ban: { threshold: 5, window: 10s, duration: 5m, on: packets }",
                "tcp",
            ),
            "ban.on",
        ),
    ];
    for (text, path) in cases {
        let err = tollgate::config::from_yaml(&text)
            .expect_err(&format!("accepted:\n{text}"))
            .to_string();
        assert!(err.starts_with(path), "{path}: got {err}");
    }
    let ok = tollgate::config::from_yaml(&yaml(
        "ban: { threshold: 500, window: 10s, duration: 5m, on: requests, allow: [ 127.0.0.1/32, \"::1\" ] }",
        "http",
    ))
    .expect("valid");
    let ban = ok.listeners[0].ban.as_ref().expect("inherited");
    assert_eq!(ban.threshold, 500);
    assert_eq!(ban.allow.len(), 2);
}

#[tokio::test]
async fn reload_keeps_per_ip_counts_of_open_connections() {
    let o = origin("app", None).await;
    let yaml = |per_ip: u32| {
        format!(
            r#"
limits: {{ max_connections_per_ip: {per_ip} }}
listeners:
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
routes:
  web: [ {{ pool: app }} ]
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
            o.addr
        )
    };
    let server = start(&yaml(1)).await;
    let addr = server.listener_addr("plain").unwrap();
    let mut held = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(held.get("a.example", "/").await.unwrap().status, 200);
    let config = tollgate::config::from_yaml(&format!("access_log: off\n{}", yaml(1))).unwrap();
    server.reload(config).await.expect("reload");
    // The open connection still counts: a second one is refused after the reload too.
    assert!(
        get_and_read_all(addr).await.is_empty(),
        "count lost on reload"
    );
    assert_eq!(limit_metric(&server, "plain", "per_ip"), 1.0);
    assert_eq!(held.get("a.example", "/").await.unwrap().status, 200);
}
