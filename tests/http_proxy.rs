//! The L7 module's client side through a running balancer (terminated TLS and a plain
//! `protocol: http` listener on the same routes): routing by Host and path, the header
//! rules, framing errors (400), 404, the two client clocks (request_header, client_idle),
//! 431, HTTP/1.0, `Connection: close`, pipelining, the https redirect, and the request
//! metrics.

mod common;

use std::time::{Duration, Instant};

use common::l7::*;
use common::*;
use tokio::net::TcpStream;

/// Headers of a request head as a backend received it (lower-cased names).
fn head_headers(text: &str) -> Vec<(String, String)> {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_end_matches('\r').to_string(),
            )
        })
        .collect()
}

fn get_header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn routes_by_host_and_path_first_match_wins() {
    let names = ["api", "static", "apiall", "wild", "public"];
    let mut origins = Vec::new();
    let mut pools = String::new();
    for name in names {
        let o = origin(name, None).await;
        pools += &format!("  {name}: {{ servers: [ {{ addr: \"{}\" }} ] }}\n", o.addr);
        origins.push(o);
    }
    let routes = r#"    - { host: api.example.com, path_prefix: /v1, pool: api }
    - { host: "*.example.com", path_prefix: /static, pool: static }
    - { host: api.example.com, pool: apiall }
    - { host: "*.example.com", pool: wild }
    - { path_prefix: /public, pool: public }"#;
    let edge = Edge::start(routes, &pools, "").await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("api.example.com", "/v1/users", Some("api")),
        ("api.example.com", "/v1", Some("api")),
        ("API.Example.com:8443", "/v1/x", Some("api")),
        ("api.example.com", "/v2/users", Some("apiall")),
        // Rule 2 comes before rule 3, although rule 3 names the host exactly.
        ("api.example.com", "/static/app.js", Some("static")),
        ("www.example.com", "/static/app.js", Some("static")),
        ("a.b.example.com", "/index.html", Some("wild")),
        ("example.com", "/index.html", None),
        ("other.org", "/public/a", Some("public")),
        ("other.org", "/private", None),
    ];
    let mut conn = edge.https().await;
    for (host, path, pool) in cases {
        let got = conn.get(host, path).await.expect("response");
        match pool {
            Some(pool) => {
                assert_eq!(got.status, 200, "{host}{path}");
                assert_eq!(
                    got.header("x-backend").as_deref(),
                    Some(*pool),
                    "{host}{path}"
                );
                assert!(
                    got.text().contains(&format!("GET {path} ")),
                    "{}",
                    got.text()
                );
            }
            // No match: 404 from the balancer, and the connection stays usable.
            None => {
                assert_eq!(got.status, 404, "{host}{path}");
                assert_eq!(got.header("x-backend"), None);
            }
        }
    }
    // Same table on the plain listener.
    let mut plain = HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await;
    let got = plain.get("api.example.com", "/v1/x").await.unwrap();
    assert_eq!(got.header("x-backend").as_deref(), Some("api"));
    let got = plain.get("nothing.test", "/").await.unwrap();
    assert_eq!(got.status, 404);
}

#[tokio::test]
async fn forwarding_headers_added_and_appended() {
    let (backend, _) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "").await;
    for (proto, mut conn) in [
        ("https", edge.https().await),
        (
            "http",
            HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await,
        ),
    ] {
        let request = hyper::Request::get("/fwd")
            .header("host", "app.example.com:8443")
            .header("x-forwarded-for", "10.1.2.3")
            .header("forwarded", "for=10.1.2.3")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let got = conn.send(request).await.unwrap();
        let seen = head_headers(got.text().split_once('\n').unwrap().1);
        assert_eq!(
            get_header(&seen, "x-forwarded-for"),
            ["10.1.2.3, 127.0.0.1"],
            "{proto}"
        );
        assert_eq!(get_header(&seen, "x-forwarded-proto"), [proto]);
        assert_eq!(
            get_header(&seen, "x-forwarded-host"),
            ["app.example.com:8443"]
        );
        assert_eq!(
            get_header(&seen, "forwarded"),
            [format!(
                "for=10.1.2.3, for=127.0.0.1;proto={proto};host=app.example.com:8443"
            )]
        );
        assert_eq!(get_header(&seen, "host"), ["app.example.com:8443"]);
        // Without a client-sent list, the list starts with the client (these four go
        // out as prebuilt lines: each once).
        let got = conn.get("app.example.com", "/fwd").await.unwrap();
        let seen = head_headers(got.text().split_once('\n').unwrap().1);
        assert_eq!(get_header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(get_header(&seen, "x-forwarded-proto"), [proto]);
        assert_eq!(get_header(&seen, "x-forwarded-host"), ["app.example.com"]);
        assert_eq!(
            get_header(&seen, "forwarded"),
            [format!("for=127.0.0.1;proto={proto};host=app.example.com")]
        );
    }
}

#[tokio::test]
async fn hop_by_hop_request_headers_not_forwarded() {
    let (backend, seen) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "").await;
    let mut raw = edge.raw_tls().await;
    raw.write(
        b"GET /hop HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive, X-Secret\r\n\
          X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          Trailer: X-Sum\r\nX-Kept: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let response = raw.read_response().await.expect("response");
    assert_eq!(response.status(), 200);
    let head = seen.lock().unwrap()[0].clone();
    let headers = head_headers(&head);
    assert_eq!(get_header(&headers, "x-kept"), ["yes"], "{head}");
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
    ] {
        assert!(
            get_header(&headers, gone).is_empty(),
            "{gone} reached the backend:\n{head}"
        );
    }
    // per_request: the only Connection token the backend sees is the proxy's own close.
    assert_eq!(get_header(&headers, "connection"), ["close"], "{head}");
}

#[tokio::test]
async fn hop_by_hop_response_headers_not_passed_back() {
    let backend = raw_backend(|mut conn, _| async move {
        while conn.read_request().await.is_some() {
            let _ = conn
                .write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop-Resp\r\nX-Hop-Resp: 1\r\n\
                      Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
                      Trailer: X-Sum\r\nX-End: kept\r\n\r\nok",
                )
                .await;
        }
    })
    .await;
    let edge = Edge::single(backend.addr, "").await;
    let mut raw = edge.raw_tls().await;
    raw.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    let response = raw.read_response().await.expect("response");
    assert_eq!((response.status(), response.text().as_str()), (200, "ok"));
    assert_eq!(response.header("x-end"), Some("kept"), "{}", response.head);
    for gone in [
        "x-hop-resp",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(
            !response.has(gone),
            "{gone} reached the client:\n{}",
            response.head
        );
    }
    assert!(
        !response.has_token("connection", "x-hop-resp"),
        "{}",
        response.head
    );
}

#[tokio::test]
async fn response_fields_reach_the_client_as_the_backend_wrote_them() {
    // No compression and no cache on the route: the fields are copied, not re-encoded.
    let backend = raw_backend(|mut conn, _| async move {
        while conn.read_request().await.is_some() {
            let _ = conn
                .write(
                    b"HTTP/1.1 200 OK\r\nX-First: One\r\nKeep-Alive: timeout=5\r\n\
                      Date: Mon, 23 Nov 2026 12:13:16 GMT\r\nConnection: keep-alive\r\n\
                      Content-Length: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\
                      Proxy-Connection: keep-alive\r\nX-Last:\r\n\r\nok",
                )
                .await;
        }
    })
    .await;
    let edge = Edge::single_mode(backend.addr, "pooled", "").await;
    let mut raw = edge.raw_plain().await;
    for _ in 0..2 {
        raw.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            .await
            .unwrap();
        let response = raw.read_response().await.expect("response");
        assert_eq!((response.status(), response.text().as_str()), (200, "ok"));
        // In the backend's order and case; hop-by-hop fields out, no second Date.
        assert_eq!(
            response.head,
            "HTTP/1.1 200 OK\r\nX-First: One\r\nDate: Mon, 23 Nov 2026 12:13:16 GMT\r\n\
             Content-Length: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Last:\r\n\r\n"
        );
    }
}

/// Sends `request` on a fresh connection: 400, then the connection closes, and the
/// backend saw nothing.
async fn assert_refused<S>(mut raw: RawConn<S>, request: &str, seen: &std::sync::Mutex<Vec<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    raw.write(request.as_bytes()).await.unwrap();
    let response = raw.read_response().await.expect("a response");
    assert_eq!(response.status(), 400, "{request:?} got {}", response.head);
    assert!(
        raw.closed().await,
        "connection left open after 400 for {request:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "{request:?} reached the backend"
    );
}

#[tokio::test]
async fn ambiguous_framing_refused_with_400_and_close() {
    let (backend, seen) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "").await;
    let h = "POST /up HTTP/1.1\r\nHost: app.example.com\r\n";
    let requests = [
        format!("{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        format!("{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("{h}Content-Length: 5, 6\r\n\r\nhello!"),
    ];
    for request in &requests {
        assert_refused(edge.raw_tls().await, request, &seen).await;
        assert_refused(edge.raw_plain().await, request, &seen).await;
    }
    // Well-framed requests whose bodies look like a conflicting head go through, also
    // pipelined behind each other (the check follows bodies, it does not grep them).
    let fake = format!("{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunked = format!(
        "{h}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{fake}\r\n0\r\n\r\n",
        fake.len()
    );
    let sized = format!("{h}Content-Length: {}\r\n\r\n{fake}", fake.len());
    let mut raw = edge.raw_tls().await;
    raw.write(format!("{chunked}{sized}{chunked}").as_bytes())
        .await
        .unwrap();
    for _ in 0..3 {
        let response = raw.read_response().await.expect("response");
        assert_eq!(response.status(), 200, "{}", response.head);
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn malformed_requests_get_400_and_close() {
    let (backend, seen) = inspecting_backend("app").await;
    let edge = Edge::single(backend.addr, "").await;
    for request in [
        "GET /no-host HTTP/1.1\r\n\r\n",
        "GET /bad header HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        assert_refused(edge.raw_tls().await, request, &seen).await;
    }
}

#[tokio::test]
async fn slow_headers_closed_while_idle_keep_alive_survives() {
    let app = origin("app", None).await;
    let edge = Edge::single(
        app.addr,
        "timeouts: { request_header: 300ms, client_idle: 5s }",
    )
    .await;

    // Half a request head, then nothing.
    let mut slow = edge.raw_tls().await;
    slow.write(b"GET /slow HTTP/1.1\r\nHost: app.exa")
        .await
        .unwrap();
    let started = Instant::now();
    let (bytes, closed) = read_to_close(&mut slow.stream).await;
    let elapsed = started.elapsed();
    assert!(closed, "slow head never closed");
    assert!(
        elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}: the client_idle clock, not request_header"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        bytes.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // A keep-alive connection idle between requests is governed by client_idle (5s).
    let mut idle = edge.raw_tls().await;
    let get = format!("GET / HTTP/1.1\r\nHost: {SNI}\r\n\r\n");
    idle.write(get.as_bytes()).await.unwrap();
    assert_eq!(idle.read_response().await.unwrap().status(), 200);
    // Waiting past request_header proves its clock does not run while idle.
    tokio::time::sleep(Duration::from_millis(800)).await;
    idle.write(get.as_bytes()).await.unwrap();
    assert_eq!(
        idle.read_response().await.expect("still open").status(),
        200
    );
    // The next head on the same connection, stalled half way, starts the clock again.
    idle.write(b"GET /next HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    let (bytes, closed) = read_to_close(&mut idle.stream).await;
    assert!(
        closed && started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(bytes.is_empty() || bytes.starts_with(b"HTTP/1.1 408"));
}

#[tokio::test]
async fn idle_keep_alive_closed_after_client_idle() {
    let app = origin("app", None).await;
    let edge = Edge::single(app.addr, "timeouts: { client_idle: 300ms }").await;
    let mut raw = edge.raw_tls().await;
    raw.write(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw.read_response().await.unwrap().status(), 200);
    let started = Instant::now();
    assert!(raw.closed().await, "idle connection not closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // Also a plain connection that never sent a byte.
    let mut raw = edge.raw_plain().await;
    assert!(raw.closed().await, "silent connection not closed");
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let app = origin("app", None).await;
    let edge = Edge::single(app.addr, "limits: { max_request_header_bytes: 8192 }").await;
    let mut conn = edge.https().await;
    let fits = hyper::Request::get("/")
        .header("host", SNI)
        .header("x-pad", "a".repeat(7000))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(conn.send(fits).await.unwrap().status, 200);
    let mut raw = edge.raw_tls().await;
    raw.write(
        format!(
            "GET / HTTP/1.1\r\nHost: {SNI}\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(raw.read_response().await.expect("431").status(), 431);
    assert!(raw.closed().await);
    // A plain listener, the head arriving in small pieces.
    let mut raw = edge.raw_plain().await;
    raw.write(format!("GET / HTTP/1.1\r\nHost: {SNI}\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..10 {
        raw.write(format!("X-Pad: {}\r\n", "b".repeat(1000)).as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(raw.read_response().await.expect("431").status(), 431);
}

#[tokio::test]
async fn header_limit_below_hyper_buffer_and_its_validation() {
    // Values from 1024 up are accepted and enforced exactly; below that, a config error.
    let app = origin("app", None).await;
    let edge = Edge::single(app.addr, "limits: { max_request_header_bytes: 2048 }").await;
    let mut raw = edge.raw_tls().await;
    raw.write(
        format!(
            "GET / HTTP/1.1\r\nHost: {SNI}\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(1500)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(raw.read_response().await.unwrap().status(), 200);
    raw.write(
        format!(
            "GET / HTTP/1.1\r\nHost: {SNI}\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(2500)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(raw.read_response().await.unwrap().status(), 431);

    let yaml =
        "listeners: [ { name: p, listen: 127.0.0.1:0, protocol: http, redirect_https: 443 } ]\n\
                limits: { max_request_header_bytes: 512 }\n";
    let err = tollgate::config::from_yaml(yaml)
        .expect_err("512 is too small")
        .to_string();
    assert!(err.contains("limits.max_request_header_bytes"), "{err}");
}

#[tokio::test]
async fn http10_and_connection_close_answered_then_closed() {
    let app = origin("app", None).await;
    let edge = Edge::single(app.addr, "").await;
    for request in [
        "GET /old HTTP/1.0\r\nHost: app.example.com\r\n\r\n",
        "GET /old HTTP/1.0\r\n\r\n",
        "GET /old HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    ] {
        let mut raw = edge.raw_tls().await;
        raw.write(request.as_bytes()).await.unwrap();
        let response = raw.read_response().await.expect("response");
        assert_eq!(response.status(), 200, "{request:?}");
        assert!(response.text().contains("GET /old"), "{}", response.text());
        assert!(raw.closed().await, "{request:?} left the connection open");
    }
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() {
    let app = origin("app", None).await;
    let edge = Edge::single(app.addr, "").await;
    let three: String = (1..=3)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: {SNI}\r\n\r\n"))
        .collect();
    let mut tls = edge.raw_tls().await;
    let mut plain = edge.raw_plain().await;
    tls.write(three.as_bytes()).await.unwrap();
    plain.write(three.as_bytes()).await.unwrap();
    for i in 1..=3 {
        let (a, b) = (tls.read_response().await, plain.read_response().await);
        for response in [a, b] {
            let response = response.expect("response");
            assert_eq!(response.status(), 200);
            assert!(
                response.text().contains(&format!("GET /p{i} ")),
                "#{i}: {}",
                response.text()
            );
        }
    }
}

#[tokio::test]
async fn plain_listener_redirects_to_https() {
    let yaml = "listeners: [ { name: plain, listen: 127.0.0.1:0, protocol: http, redirect_https: 8443 } ]\n";
    let server = start(yaml).await;
    let addr = server.listener_addr("plain").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    let got = conn.get("www.example.com:8080", "/path?q=1").await.unwrap();
    assert_eq!(got.status, 308);
    assert_eq!(
        got.header("location").as_deref(),
        Some("https://www.example.com:8443/path?q=1")
    );
    let got = conn.get("www.example.com", "/").await.unwrap();
    assert_eq!(
        got.header("location").as_deref(),
        Some("https://www.example.com:8443/")
    );
    // Ambiguous framing is refused here too.
    let mut raw = RawConn::new(TcpStream::connect(addr).await.unwrap());
    let request = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    raw.write(request.as_bytes()).await.unwrap();
    assert_eq!(raw.read_response().await.unwrap().status(), 400);
    assert!(raw.closed().await);
}

#[tokio::test]
async fn request_and_handshake_metrics_after_known_traffic() {
    let app = origin("app", None).await;
    let pools = format!("  app: {{ servers: [ {{ addr: \"{}\" }} ] }}", app.addr);
    let edge = Edge::start("    - { host: app.example.com, pool: app }", &pools, "").await;
    let mut conn = edge.https().await;
    for _ in 0..3 {
        assert_eq!(conn.get(SNI, "/").await.unwrap().status, 200);
    }
    assert_eq!(conn.get("nope.example.com", "/").await.unwrap().status, 404);
    let mut second = edge.https().await;
    assert_eq!(second.get(SNI, "/").await.unwrap().status, 200);
    let mut plain = HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await;
    assert_eq!(plain.get(SNI, "/").await.unwrap().status, 200);

    let requests = |pool, code| {
        edge.metric(
            "tollgate_http_requests_total",
            &[("route", "web"), ("pool", pool), ("code", code)],
        )
    };
    assert_eq!(requests("app", "200"), Some(5.0));
    assert_eq!(requests("none", "404"), Some(1.0));
    assert_eq!(
        edge.metric(
            "tollgate_tls_handshakes_total",
            &[("listener", "edge"), ("outcome", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(
        edge.metric(
            "tollgate_connections_total",
            &[("listener", "plain"), ("mode", "http")]
        ),
        Some(1.0)
    );
}
