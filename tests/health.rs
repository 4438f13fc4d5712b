//! Balancing and health through real sockets: each check kind against listeners that
//! answer well, badly, slowly and not at all; a backend killed under traffic leaves
//! within fall × interval (+ one interval) without a failed idempotent request or a hung
//! tunnel, and returns after `rise` good checks; all down → 503 at once / closed at
//! once; `fail_open`; `weight: 0` drains.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tollgate::config::from_yaml;
use tollgate::origin::{self, OriginOptions};
use tollgate::upstream::health::{run_check, tls_client};
use tollgate::upstream::Pool;

/// A pool of one backend at `addr` with `health` (YAML flow map).
fn pool(addr: SocketAddr, health: &str) -> Arc<Pool> {
    let yaml = format!(
        "listeners: [ {{ name: t, listen: 127.0.0.1:0, protocol: tcp, pool: p }} ]\npools:\n  p: {{ servers: [ {{ addr: \"{addr}\", sni: backend.test }} ], health: {health} }}\n"
    );
    let config = from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Pool::new(&config.pools["p"], None))
}

async fn check(addr: SocketAddr, health: &str) -> (bool, String) {
    let p = pool(addr, health);
    let spec = p.spec.health.clone().unwrap();
    run_check(&p.backends[0], &spec, &tls_client()).await
}

/// A listener that accepts and then runs `behave` on each connection.
async fn behaving<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(behave(s));
        }
    });
    addr
}

async fn silent() -> SocketAddr {
    behaving(|s| async move {
        // Hold the connection open and say nothing.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await
}

async fn answering(reply: &'static [u8]) -> SocketAddr {
    behaving(move |mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(reply).await;
    })
    .await
}

const FAST: &str = "{ check: CHECK, interval: 100ms, timeout: 300ms, rise: 1, fall: 1 }";

fn spec(kind: &str) -> String {
    FAST.replace("CHECK", kind)
}

#[tokio::test]
async fn tcp_check_well_slowly_and_not_at_all() {
    let live = answering(b"").await;
    assert!(check(live, &spec("tcp")).await.0);
    let (ok, detail) = check(dead_addr(), &spec("tcp")).await;
    assert!(!ok);
    assert!(detail.contains("connect"), "{detail}");
    // Slowly: a connect the kernel never completes ends at the check timeout.
    let (_hold, _fillers, hanging) = blackhole().await;
    let (ok, detail) = check(hanging, &spec("tcp")).await;
    assert!(!ok);
    assert!(detail.contains("timeout"), "{detail}");
}

#[tokio::test]
async fn http_check_well_badly_slowly_and_not_at_all() {
    let good = origin("good", None).await;
    assert_eq!(
        check(good.addr, &spec("http")).await,
        (true, "status 200".to_string())
    );
    let bad = answering(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
    assert_eq!(
        check(bad, &spec("http")).await,
        (false, "status 500".to_string())
    );
    // expect_status makes a 500 acceptable (and a 200 not).
    let expect_500 = "{ check: http, expect_status: [500], timeout: 300ms }";
    assert!(check(bad, expect_500).await.0);
    assert!(!check(good.addr, expect_500).await.0);
    let garbage = answering(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    assert!(!check(garbage, &spec("http")).await.0);
    let (ok, detail) = check(silent().await, &spec("http")).await;
    assert!(!ok);
    assert!(detail.contains("timeout"), "{detail}");
    assert!(!check(dead_addr(), &spec("http")).await.0);
}

#[tokio::test]
async fn http_check_sends_path_and_host() {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let log = Arc::clone(&seen);
    let addr = behaving(move |mut s| {
        let log = Arc::clone(&log);
        async move {
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).await.unwrap_or(0);
            *log.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        }
    })
    .await;
    assert!(
        check(addr, "{ check: http, path: /ready, timeout: 1s }")
            .await
            .0
    );
    let head = seen.lock().unwrap().clone();
    assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("host: backend.test\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn tls_check_well_badly_slowly_and_not_at_all() {
    let pki = Pki::new();
    let cert = pki.issue(&["backend.test"]);
    let good = origin("tls", Some(&cert)).await;
    assert_eq!(
        check(good.addr, &spec("tls")).await,
        (true, "handshake ok".to_string())
    );
    // A plain HTTP server is not a TLS backend.
    let plain = origin("plain", None).await;
    assert!(!check(plain.addr, &spec("tls")).await.0);
    let (ok, detail) = check(silent().await, &spec("tls")).await;
    assert!(!ok);
    assert!(detail.contains("timeout"), "{detail}");
    assert!(!check(dead_addr(), &spec("tls")).await.0);
}

/// A built-in origin on a given address that can be stopped and started again.
async fn origin_at(addr: SocketAddr, name: &str) -> CancellationToken {
    let listener = tollgate::listener::bind(addr).expect("rebind origin");
    let stop = CancellationToken::new();
    let options = OriginOptions {
        name: name.to_string(),
        body_bytes: 0,
        tls: None,
    };
    tokio::spawn(origin::serve(listener, options, stop.clone()));
    stop
}

fn backend_up(server: &tollgate::server::Server, pool: &str, index: usize) -> bool {
    server.snapshot().pools[pool].backends[index].is_up()
}

#[tokio::test]
async fn killed_backend_leaves_in_time_without_failed_requests_and_returns_after_rise() {
    let a_addr = dead_addr();
    let stop_a = origin_at(a_addr, "a").await;
    let b = origin("b", None).await;
    let (interval_ms, fall, rise) = (100u64, 3u64, 2u64);
    let yaml = format!(
        r#"
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }}
  - {{ name: raw, listen: 127.0.0.1:0, protocol: tcp, pool: app }}
routes:
  main: [ {{ pool: app }} ]
pools:
  app:
    backend_connections: pooled
    servers: [ {{ addr: "{a_addr}" }}, {{ addr: "{}" }} ]
    health: {{ check: http, path: /health, interval: {interval_ms}ms, timeout: 100ms, rise: {rise}, fall: {fall} }}
"#,
        b.addr
    );
    let server = start(&yaml).await;
    let web = server.listener_addr("web").unwrap();
    let raw = server.listener_addr("raw").unwrap();

    // Idempotent traffic on keep-alive connections throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        workers.push(tokio::spawn(async move {
            let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
            while !stop.load(Ordering::Relaxed) {
                match conn.get("x.test", "/").await {
                    Ok(got) if got.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    wait_until("traffic flows", || ok.load(Ordering::Relaxed) > 30).await;

    let killed = Instant::now();
    stop_a.cancel();
    wait_until("backend a marked down", || !backend_up(&server, "app", 0)).await;
    let took = killed.elapsed();
    let bound = Duration::from_millis(
        interval_ms * (fall + 1) + 100 /* timeout */ + 200, /* jitter, scheduling */
    );
    assert!(took <= bound, "down after {took:?}, bound {bound:?}");

    // A passthrough of the same pool never hangs on the dead backend.
    for _ in 0..4 {
        let mut s = TcpStream::connect(raw).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (bytes, ended) = read_to_close(&mut s).await;
        assert!(ended, "tunnel hung");
        assert!(
            bytes.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }

    // Bring it back: up after `rise` good checks.
    let stop_a = origin_at(a_addr, "a").await;
    wait_until("backend a back up", || backend_up(&server, "app", 0)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "idempotent requests failed while a backend died"
    );
    stop_a.cancel();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn passive_health_marks_a_refusing_backend_down_before_any_check() {
    let b = origin("b", None).await;
    let yaml = format!(
        r#"
listeners: [ {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }} ]
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app:
    servers: [ {{ addr: "{}" }}, {{ addr: "{}" }} ]
    health: {{ check: tcp, interval: 1h, rise: 1, fall: 3, passive_fall: 2 }}
"#,
        dead_addr(),
        b.addr
    );
    let server = start(&yaml).await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    for _ in 0..6 {
        let got = conn.get("x.test", "/").await.unwrap();
        assert_eq!(got.header("x-backend").as_deref(), Some("b"));
    }
    assert!(
        !backend_up(&server, "app", 0),
        "two refused connects should mark it down"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn all_down_answers_503_and_closes_tunnels_at_once_unless_fail_open() {
    let a = origin("a", None).await;
    let yaml = |fail_open: bool| {
        format!(
            r#"
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }}
  - {{ name: raw, listen: 127.0.0.1:0, protocol: tcp, pool: app }}
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app: {{ fail_open: {fail_open}, servers: [ {{ addr: "{}" }} ] }}
"#,
            a.addr
        )
    };
    for fail_open in [false, true] {
        let server = start(&yaml(fail_open)).await;
        server.snapshot().pools["app"].backends[0].set_up(false);
        let web = server.listener_addr("web").unwrap();
        let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
        let started = Instant::now();
        let got = conn.get("x.test", "/").await.unwrap();
        let mut raw = TcpStream::connect(server.listener_addr("raw").unwrap())
            .await
            .unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (bytes, ended) = read_to_close(&mut raw).await;
        assert!(ended);
        if fail_open {
            assert_eq!(got.status, 200, "fail_open still tries the down backend");
            assert!(bytes.starts_with(b"HTTP/1.1 200"));
        } else {
            assert_eq!(got.status, 503);
            assert!(bytes.is_empty(), "tunnel should close without a byte");
            assert!(started.elapsed() < Duration::from_secs(1), "not at once");
        }
        server.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn weight_zero_drains_a_backend() {
    let a = origin("a", None).await;
    let b = origin("b", None).await;
    let yaml = format!(
        r#"
listeners: [ {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }} ]
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app: {{ balance: weighted, servers: [ {{ addr: "{}", weight: 0 }}, {{ addr: "{}", weight: 1 }} ] }}
"#,
        a.addr, b.addr
    );
    let server = start(&yaml).await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    for _ in 0..10 {
        assert_eq!(
            conn.get("x.test", "/")
                .await
                .unwrap()
                .header("x-backend")
                .as_deref(),
            Some("b")
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn weighted_and_source_hash_through_the_proxy() {
    let a = origin("a", None).await;
    let b = origin("b", None).await;
    let yaml = |balance: &str| {
        format!(
            r#"
listeners: [ {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }} ]
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app: {{ balance: {balance}, servers: [ {{ addr: "{}", weight: 1 }}, {{ addr: "{}", weight: 3 }} ] }}
"#,
            a.addr, b.addr
        )
    };
    let server = start(&yaml("weighted")).await;
    let mut conn = HttpConn::over(
        TcpStream::connect(server.listener_addr("web").unwrap())
            .await
            .unwrap(),
    )
    .await;
    let mut b_count = 0;
    for _ in 0..40 {
        if conn
            .get("x.test", "/")
            .await
            .unwrap()
            .header("x-backend")
            .as_deref()
            == Some("b")
        {
            b_count += 1;
        }
    }
    assert_eq!(b_count, 30, "weights 1:3 over 40 requests");
    server.shutdown(Duration::from_secs(1)).await;

    // One client address always lands on one backend.
    let server = start(&yaml("source_hash")).await;
    let web = server.listener_addr("web").unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
        seen.insert(conn.get("x.test", "/").await.unwrap().header("x-backend"));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn passive_5xx_marks_a_failing_backend_down_with_per_request_connections() {
    let failing = answering(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let b = origin("b", None).await;
    let yaml = format!(
        r#"
listeners: [ {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }} ]
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app:
    backend_connections: per_request
    servers: [ {{ addr: "{failing}" }}, {{ addr: "{}" }} ]
    health: {{ check: tcp, interval: 1h, rise: 1, fall: 3, passive_fall: 2, passive_5xx: true }}
"#,
        b.addr
    );
    let server = start(&yaml).await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(conn.get("x.test", "/").await.unwrap().status);
    }
    // Round robin alternates until the second 500 takes backend 0 down; then only b answers.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 500).count(),
        2,
        "{statuses:?}"
    );
    assert!(!backend_up(&server, "app", 0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn http_connect_timeout_moves_to_the_next_backend_then_502() {
    let (_hold, _fillers, hanging) = blackhole().await;
    let b = origin("b", None).await;
    let yaml = |servers: String| {
        format!(
            r#"
listeners: [ {{ name: web, listen: 127.0.0.1:0, protocol: http, routes: main }} ]
routes: {{ main: [ {{ pool: app }} ] }}
pools:
  app: {{ servers: [ {servers} ] }}
timeouts: {{ connect: 200ms }}
"#
        )
    };
    let server = start(&yaml(format!(
        "{{ addr: \"{hanging}\" }}, {{ addr: \"{}\" }}",
        b.addr
    )))
    .await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    for _ in 0..4 {
        let got = conn.get("x.test", "/").await.unwrap();
        assert_eq!(got.header("x-backend").as_deref(), Some("b"));
    }
    server.shutdown(Duration::from_secs(1)).await;

    let server = start(&yaml(format!("{{ addr: \"{hanging}\" }}"))).await;
    let web = server.listener_addr("web").unwrap();
    let mut conn = HttpConn::over(TcpStream::connect(web).await.unwrap()).await;
    let started = Instant::now();
    assert_eq!(conn.get("x.test", "/").await.unwrap().status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.shutdown(Duration::from_secs(1)).await;
}
