//! Operations: metrics on the admin listener after known traffic, hot reload under
//! traffic (and an invalid reload that changes nothing), the access log, and the
//! graceful drain on shutdown with a tunnel and a keep-alive client open.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::server::Server;

/// GET `path` on the admin listener; (status, body).
async fn admin_get(server: &Server, path: &str) -> (u16, String) {
    let addr = server.admin_addr().expect("admin listener");
    let stream = TcpStream::connect(addr).await.expect("admin connect");
    let mut conn = HttpConn::over(stream).await;
    let got = conn.get("admin", path).await.expect("admin answer");
    (got.status, got.text())
}

fn http_yaml(pool_a: std::net::SocketAddr, extra_route: &str, extra_pool: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    routes: main
routes:
  main:
{extra_route}    - {{ path_prefix: /, pool: a }}
pools:
  a: {{ servers: [ {{ addr: "{pool_a}" }} ] }}
{extra_pool}"#
    )
}

#[tokio::test]
async fn metrics_on_the_admin_listener_follow_known_traffic() {
    let a = origin("a", None).await;
    let server = start(&http_yaml(a.addr, "", "")).await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    for _ in 0..5 {
        assert_eq!(conn.get("x.test", "/").await.unwrap().status, 200);
    }
    let (status, text) = admin_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let requests = metric_value(
        &text,
        "tollgate_http_requests_total",
        &[("route", "main"), ("pool", "a"), ("code", "200")],
    );
    assert_eq!(requests, Some(5.0), "{text}");
    let conns = metric_value(
        &text,
        "tollgate_backend_connections_total",
        &[("pool", "a")],
    );
    assert_eq!(
        conns,
        Some(5.0),
        "per_request opens one backend connection per request"
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_connections_total",
            &[("listener", "web"), ("mode", "http")]
        ),
        Some(1.0)
    );
    assert!(
        text.contains("process_resident_memory_bytes"),
        "process metrics missing"
    );
    // backend_up flips when the backend dies and a health check notices.
    let (status, body) = admin_get(&server, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = admin_get(&server, "/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pools"][0]["name"], "a");
    assert_eq!(v["pools"][0]["backends"][0]["state"], "up");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn backend_up_metric_follows_a_dying_backend() {
    let a = origin("a", None).await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }}
routes:
  main: [ {{ pool: a }} ]
pools:
  a:
    servers: [ {{ addr: "{}" }} ]
    health: {{ check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
"#,
        a.addr
    );
    let server = start(&yaml).await;
    let up = |server: &Server| {
        metric_value(
            &server.metrics().render(),
            "tollgate_backend_up",
            &[("pool", "a")],
        )
    };
    assert_eq!(up(&server), Some(1.0));
    a.stop();
    // The origin's listener is gone once its accept loop ends: checks fail to connect.
    wait_until("backend_up turns 0", || up(&server) == Some(0.0)).await;
    let (_, body) = admin_get(&server, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pools"][0]["backends"][0]["state"], "down");
    assert_eq!(v["pools"][0]["backends"][0]["last_check"]["ok"], false);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn reload_adds_a_route_and_a_pool_under_traffic_without_a_failed_request() {
    let a = origin("a", None).await;
    let b = origin("b", None).await;
    let pki = Pki::new();
    let cert = pki.issue(&["secure.test"]);
    let tls_origin = origin("secure", Some(&cert)).await;
    let tunnel_listener = "  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni: { secure.test: { passthrough: secure } }
";
    let before = http_yaml(
        a.addr,
        "",
        &format!(
            "  secure: {{ servers: [ {{ addr: \"{}\" }} ] }}\n",
            tls_origin.addr
        ),
    )
    .replace(
        "routes:\n  main:",
        &format!("{tunnel_listener}routes:\n  main:"),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, &before).unwrap();
    let config = tollgate::config::load(&file).unwrap();
    let server = Server::start_with_file(config, Some(file.clone()))
        .await
        .unwrap();
    let web = server.listener_addr("web").unwrap();
    let edge = server.listener_addr("edge").unwrap();

    // A passthrough tunnel open across the reload.
    let tls = tls_connect(edge, "secure.test", pki.client_config())
        .await
        .unwrap();
    let mut tunnel = HttpConn::over(tls).await;
    assert_eq!(tunnel.get("secure.test", "/").await.unwrap().status, 200);

    // Continuous traffic: new connections, one request each, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let stream = TcpStream::connect(web).await.ok()?;
                    let mut conn = HttpConn::over(stream).await;
                    conn.get("x.test", "/").await.ok()
                }
                .await;
                match result {
                    Some(got) if got.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    wait_until("traffic flows", || ok.load(Ordering::Relaxed) > 50).await;

    let after = before
        .replace("  main:\n", "  main:\n    - { path_prefix: /b, pool: b }\n")
        .replace(
            "pools:\n",
            &format!(
                "pools:\n  b: {{ servers: [ {{ addr: \"{}\" }} ] }}\n",
                b.addr
            ),
        );
    let old_snapshot = server.snapshot();
    std::fs::write(&file, &after).unwrap();
    server.reload_file().await.expect("reload");
    // An unchanged backend is the same object in both snapshots: connections still on the
    // old one see its health and open connections as they are now.
    let new_snapshot = server.snapshot();
    assert!(std::sync::Arc::ptr_eq(
        &old_snapshot.pools["a"].backends[0],
        &new_snapshot.pools["a"].backends[0]
    ));
    let at_reload = ok.load(Ordering::Relaxed);
    wait_until("traffic goes on after the reload", || {
        ok.load(Ordering::Relaxed) > at_reload + 50
    })
    .await;

    // The new route answers from the new pool on a new connection.
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    let got = conn.get("x.test", "/b/x").await.unwrap();
    assert_eq!(
        got.header("x-backend").as_deref(),
        Some("b"),
        "{}",
        got.text()
    );
    // The tunnel opened before the reload still works.
    assert_eq!(
        tunnel.get("secure.test", "/again").await.unwrap().status,
        200
    );
    // The listeners kept their sockets.
    assert_eq!(server.listener_addr("web"), Some(web));
    assert_eq!(server.listener_addr("edge"), Some(edge));

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the reload"
    );
    let text = server.metrics().render();
    assert_eq!(
        metric_value(&text, "tollgate_config_reloads_total", &[("outcome", "ok")]),
        Some(1.0)
    );
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn invalid_reloads_change_nothing_and_are_counted() {
    let a = origin("a", None).await;
    let good = http_yaml(a.addr, "", "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, &good).unwrap();
    let server =
        Server::start_with_file(tollgate::config::load(&file).unwrap(), Some(file.clone()))
            .await
            .unwrap();
    let web = server.listener_addr("web").unwrap();
    let bad_versions = [
        "listeners: [ this is not: yaml".to_string(),
        good.replace("protocol: http", "protocol: http\n    bogus_key: 1"),
        good.replace("pool: a }", "pool: nowhere }"),
        format!(
            "certificates: [ {{ cert: /nonexistent/x.pem, key: /nonexistent/x.key }}\n]\n{good}"
        )
        .replace("routes: main", "routes: main"),
    ];
    for (i, bad) in bad_versions.iter().enumerate() {
        std::fs::write(&file, bad).unwrap();
        let err = server.reload_file().await;
        assert!(err.is_err(), "bad config {i} was accepted");
        let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
        assert_eq!(
            conn.get("x.test", "/").await.unwrap().status,
            200,
            "not serving after bad reload {i}"
        );
    }
    let text = server.metrics().render();
    assert_eq!(
        metric_value(
            &text,
            "tollgate_config_reloads_total",
            &[("outcome", "error")]
        ),
        Some(bad_versions.len() as f64)
    );
    // The admin endpoint reloads too; a good file is accepted again.
    std::fs::write(&file, &good).unwrap();
    let addr = server.admin_addr().unwrap();
    let mut admin = HttpConn::over(TcpStream::connect(addr).await.unwrap()).await;
    let request = hyper::Request::post("/reload")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let got = admin.send(request).await.unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request_and_per_tunnel() {
    let a = origin("a", None).await;
    let (backend, backend_addr) = tcp_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        r#"
access_log: "{}"
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }}
  - {{ name: raw, listen: 127.0.0.1:0, protocol: tcp, pool: raw }}
routes:
  main: [ {{ pool: a }} ]
pools:
  a: {{ servers: [ {{ addr: "{}" }} ] }}
  raw: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        log.display(),
        a.addr,
        backend_addr
    );
    let server = start(&yaml).await;
    let mut conn = HttpConn::over(
        TcpStream::connect(server.listener_addr("web").unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(conn.get("x.test", "/hello").await.unwrap().status, 200);
    let mut client = TcpStream::connect(server.listener_addr("raw").unwrap())
        .await
        .unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut inside = accept_within(&backend).await;
    assert_eq!(read_n(&mut inside, 4).await, b"ping");
    inside.write_all(b"pong!").await.unwrap();
    drop(inside);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"pong!");
    drop(client);

    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect::<Vec<_>>()
    };
    wait_until("two access lines", || lines().len() >= 2).await;
    let all = lines();
    let http = all
        .iter()
        .find(|l| l["mode"] == "http")
        .expect("an http line");
    assert_eq!(http["status"], 200);
    assert_eq!(http["path"], "/hello");
    assert_eq!(http["pool"], "a");
    assert_eq!(http["route"], "main");
    let tcp = all.iter().find(|l| l["mode"] == "tcp").expect("a tcp line");
    assert_eq!(tcp["bytes_in"], 4);
    assert_eq!(tcp["bytes_out"], 5);
    assert_eq!(tcp["pool"], "raw");
    assert!(tcp["time"].as_str().unwrap().ends_with('Z'));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_drains_a_tunnel_and_a_keep_alive_client() {
    let a = origin("a", None).await;
    let (backend, backend_addr) = tcp_backend().await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }}
  - {{ name: raw, listen: 127.0.0.1:0, protocol: tcp, pool: raw }}
routes:
  main: [ {{ pool: a }} ]
pools:
  a: {{ servers: [ {{ addr: "{}" }} ] }}
  raw: {{ servers: [ {{ addr: "{}" }} ] }}
timeouts: {{ client_idle: 30s }}
"#,
        a.addr, backend_addr
    );
    let server = start(&yaml).await;
    let web = server.listener_addr("web").unwrap();
    let raw = server.listener_addr("raw").unwrap();
    let admin = server.admin_addr().unwrap();

    // A keep-alive client mid-conversation and an open tunnel.
    let mut keep_alive = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    assert_eq!(keep_alive.get("x.test", "/1").await.unwrap().status, 200);
    let mut tunnel = TcpStream::connect(raw).await.unwrap();
    tunnel.write_all(b"a").await.unwrap();
    let mut inside = accept_within(&backend).await;
    assert_eq!(read_n(&mut inside, 1).await, b"a");

    let draining = tokio::spawn(server.shutdown(Duration::from_secs(20)));

    // /healthz turns 503 while draining.
    let healthz = || async move {
        let stream = TcpStream::connect(admin).await.ok()?;
        let mut conn = HttpConn::over(stream).await;
        conn.get("admin", "/healthz").await.ok().map(|g| g.status)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if healthz().await == Some(503) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections are no longer served.
    let refused = match TcpStream::connect(web).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            ) || buf.is_empty()
        }
    };
    assert!(refused, "a new connection was served during the drain");

    // The keep-alive client gets its next answer, told to close.
    let got = keep_alive
        .get("x.test", "/2")
        .await
        .expect("answer during drain");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("connection").as_deref(), Some("close"));

    // The tunnel still carries bytes both ways.
    tunnel.write_all(b"b").await.unwrap();
    assert_eq!(read_n(&mut inside, 1).await, b"b");
    inside.write_all(b"c").await.unwrap();
    assert_eq!(read_n(&mut tunnel, 1).await, b"c");
    assert!(
        !draining.is_finished(),
        "shutdown returned while a tunnel was open"
    );

    // When the tunnel ends, the drain completes in time.
    drop(inside);
    drop(tunnel);
    drop(keep_alive);
    let drained = tokio::time::timeout(DEADLINE, draining)
        .await
        .expect("drain finished")
        .unwrap();
    assert!(
        drained,
        "connections did not finish within the grace period"
    );
}
