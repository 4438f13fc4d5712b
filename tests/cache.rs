//! The response cache (`cache:` on a route) through a running balancer, against a
//! scripted backend that counts the requests it gets: each storability rule
//! (`private`, `no-store`, `Set-Cookie`, `Authorization` with and without `public` /
//! `s-maxage`, `max-age`, `s-maxage` precedence, `Expires`), expiry, `Age`, `X-Cache`
//! (and switched off), `Vary`, revalidation with `ETag`, LRU eviction under a small
//! budget, collapsed concurrent misses (and waiters released when the leader fails),
//! HEAD from a stored GET, query strings, unsafe-method invalidation and the metrics.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::l7::*;
use common::*;
use http_body_util::Full;
use hyper::Request;
use tokio::net::TcpStream;

const HOST: &str = "app.example.com";

/// What the scripted backend answers: status line tail, extra header lines, body, and
/// how long it waits first.
struct Reply {
    status: &'static str,
    headers: String,
    body: Vec<u8>,
    delay: Duration,
    /// Send only half the body, then close (a backend dying mid-body).
    truncate: bool,
}

fn reply(headers: &str, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status: "200 OK",
        headers: headers.to_string(),
        body: body.into(),
        delay: Duration::ZERO,
        truncate: false,
    }
}

/// A keep-alive backend answering each request with `script(request, n)`, where `n`
/// counts requests from 0; every request is recorded.
struct Scripted {
    _raw: RawBackend,
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<RawMessage>>>,
}

impl Scripted {
    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn requests_for(&self, path: &str) -> usize {
        let line = format!(" {path} ");
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|r| r.start.contains(&line)).count()
    }
    fn last(&self) -> RawMessage {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn scripted<F>(script: F) -> Scripted
where
    F: Fn(&RawMessage, usize) -> Reply + Send + Sync + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let log = Arc::clone(&seen);
    let raw = raw_backend(move |mut conn, _| {
        let (log, count, script) = (Arc::clone(&log), Arc::clone(&count), Arc::clone(&script));
        async move {
            while let Some(req) = conn.read_request().await {
                log.lock().unwrap().push(req.clone());
                let n = count.fetch_add(1, Ordering::SeqCst);
                let r = script(&req, n);
                tokio::time::sleep(r.delay).await;
                let head = format!(
                    "HTTP/1.1 {}\r\ncontent-length: {}\r\n{}\r\n",
                    r.status,
                    r.body.len(),
                    r.headers
                );
                let body = if req.start.starts_with("HEAD ") {
                    &[][..]
                } else if r.truncate {
                    &r.body[..r.body.len() / 2]
                } else {
                    &r.body[..]
                };
                if conn.write(head.as_bytes()).await.is_err()
                    || conn.write(body).await.is_err()
                    || r.truncate
                {
                    return;
                }
            }
        }
    })
    .await;
    Scripted {
        addr: raw.addr,
        _raw: raw,
        seen,
    }
}

fn path_of(req: &RawMessage) -> String {
    req.start.split(' ').nth(1).unwrap_or("/").to_string()
}

/// A balancer whose every request goes to `backend` through a route with `cache`.
async fn edge(backend: &Scripted, cache: &str) -> Edge {
    let pools = format!(
        "  app: {{ backend_connections: pooled, servers: [ {{ addr: \"{}\" }} ] }}",
        backend.addr
    );
    let routes = format!("    - {{ pool: app, cache: {cache} }}");
    Edge::start(&routes, &pools, "").await
}

const CACHE: &str = "{ max_bytes: 1MiB }";

/// One request over a fresh plain connection.
async fn send(edge: &Edge, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut conn = HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(DEADLINE, conn.send(request))
        .await
        .expect("response in time")
        .expect("response")
}

async fn get(edge: &Edge, path: &str) -> Got {
    send(edge, "GET", path, &[]).await
}

fn x_cache(got: &Got) -> Option<String> {
    got.header("x-cache")
}

fn outcome(edge: &Edge, outcome: &str) -> f64 {
    edge.metric(
        "tollgate_cache_requests_total",
        &[("route", "web"), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Body naming the request number, so a cached answer shows the first one's.
fn numbered(n: usize) -> String {
    format!("response {n}")
}

#[tokio::test]
async fn max_age_is_stored_and_hits_carry_age_and_x_cache() {
    let backend =
        scripted(|_, n| reply("cache-control: max-age=60\r\nage: 10\r\n", numbered(n))).await;
    let edge = edge(&backend, CACHE).await;
    let first = get(&edge, "/a").await;
    assert_eq!((first.status, first.text()), (200, numbered(0)));
    assert_eq!(x_cache(&first).as_deref(), Some("MISS"));
    for _ in 0..3 {
        let hit = get(&edge, "/a").await;
        assert_eq!((hit.status, hit.text()), (200, numbered(0)));
        assert_eq!(x_cache(&hit).as_deref(), Some("HIT"));
        assert_eq!(hit.header("cache-control").as_deref(), Some("max-age=60"));
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!(
            (10..60).contains(&age),
            "age {age}: the backend's 10 s plus time held"
        );
        assert_eq!(
            hit.header("content-length"),
            Some(numbered(0).len().to_string())
        );
    }
    assert_eq!(backend.requests(), 1);
    assert_eq!((outcome(&edge, "miss"), outcome(&edge, "hit")), (1.0, 3.0));
    let bytes = edge
        .metric("tollgate_cache_bytes", &[("route", "web")])
        .unwrap();
    assert!(bytes > numbered(0).len() as f64, "{bytes}");
}

#[tokio::test]
async fn hits_count_as_answers_and_schemes_keep_apart() {
    let backend = scripted(|_, n| reply("cache-control: max-age=60\r\n", numbered(n))).await;
    let edge = edge(&backend, CACHE).await;
    assert_eq!(get(&edge, "/s").await.text(), numbered(0));
    assert_eq!(get(&edge, "/s").await.text(), numbered(0));
    // Every answer counts in the route's requests, hits included.
    assert_eq!(
        edge.metric(
            "tollgate_http_requests_total",
            &[("route", "web"), ("pool", "app"), ("code", "200")]
        ),
        Some(2.0)
    );
    // The same URL over TLS is another entry (the scheme is part of the key).
    let mut tls = edge.https().await;
    let got = tls.get(HOST, "/s").await.unwrap();
    assert_eq!(got.text(), numbered(1));
    assert_eq!(x_cache(&got).as_deref(), Some("MISS"));
    let got = tls.get(HOST, "/s").await.unwrap();
    assert_eq!(
        (got.text(), x_cache(&got)),
        (numbered(1), Some("HIT".into()))
    );
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn private_no_store_set_cookie_and_no_freshness_are_not_stored() {
    let backend = scripted(|req, n| {
        let headers = match path_of(req).as_str() {
            "/private" => "cache-control: private, max-age=60\r\n",
            "/no-store" => "cache-control: no-store, max-age=60\r\n",
            "/cookie" => "cache-control: max-age=60\r\nset-cookie: session=1\r\n",
            "/no-freshness" => "etag: \"x\"\r\n",
            "/vary-star" => "cache-control: max-age=60\r\nvary: *\r\n",
            "/201" => "cache-control: max-age=60\r\n",
            _ => "cache-control: max-age=60\r\n",
        };
        let mut r = reply(headers, numbered(n));
        if path_of(req) == "/201" {
            r.status = "201 Created";
        }
        r
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    for path in [
        "/private",
        "/no-store",
        "/cookie",
        "/no-freshness",
        "/vary-star",
        "/201",
    ] {
        for _ in 0..2 {
            let got = get(&edge, path).await;
            assert_eq!(x_cache(&got).as_deref(), Some("MISS"), "{path}");
        }
        assert_eq!(backend.requests_for(path), 2, "{path} stored");
    }
    // The control: the same route stores a plain max-age response.
    get(&edge, "/control").await;
    assert_eq!(
        x_cache(&get(&edge, "/control").await).as_deref(),
        Some("HIT")
    );
    assert_eq!(backend.requests_for("/control"), 1);
}

#[tokio::test]
async fn authorization_is_served_only_public_or_s_maxage_responses() {
    let backend = scripted(|req, n| {
        let headers = match path_of(req).as_str() {
            "/public" => "cache-control: public, max-age=60\r\n",
            "/shared" => "cache-control: s-maxage=60\r\n",
            _ => "cache-control: max-age=60\r\n",
        };
        reply(headers, numbered(n))
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    let auth = [("authorization", "Bearer secret")];
    for path in ["/plain", "/public", "/shared"] {
        for _ in 0..2 {
            send(&edge, "GET", path, &auth).await;
        }
    }
    assert_eq!(
        backend.requests_for("/plain"),
        2,
        "max-age alone: not for credentials"
    );
    assert_eq!(backend.requests_for("/public"), 1);
    assert_eq!(backend.requests_for("/shared"), 1);
    // What answered credentials without `public` was not stored for anyone else either.
    let anon = get(&edge, "/plain").await;
    assert_eq!(x_cache(&anon).as_deref(), Some("MISS"));
    assert_eq!(backend.requests_for("/plain"), 3);
    // A response stored for an anonymous request does not answer one with credentials.
    get(&edge, "/anon").await;
    assert_eq!(x_cache(&get(&edge, "/anon").await).as_deref(), Some("HIT"));
    let got = send(&edge, "GET", "/anon", &auth).await;
    assert_eq!(x_cache(&got).as_deref(), Some("MISS"));
    assert_eq!(backend.requests_for("/anon"), 2);
    // Credentials not answered from the cache count as bypass: /plain twice, the first
    // /public and /shared, /anon.
    assert_eq!(outcome(&edge, "bypass"), 5.0);
    assert_eq!(outcome(&edge, "hit"), 2.0 + 1.0);
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_and_expires_counts_from_date() {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
    let backend = scripted(move |req, n| {
        let headers = match path_of(req).as_str() {
            "/s-maxage" => "cache-control: max-age=0, s-maxage=60\r\n".to_string(),
            "/max-age-zero" => "cache-control: max-age=0\r\n".to_string(),
            "/expires" => format!("date: {date}\r\nexpires: {later}\r\n"),
            "/expired" => format!("date: {date}\r\nexpires: {earlier}\r\n"),
            "/max-age-over-expires" => {
                format!("cache-control: max-age=60\r\ndate: {date}\r\nexpires: {earlier}\r\n")
            }
            _ => String::new(),
        };
        reply(&headers, numbered(n))
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    for (path, stored) in [
        ("/s-maxage", true),
        ("/max-age-zero", false),
        ("/expires", true),
        ("/expired", false),
        ("/max-age-over-expires", true),
    ] {
        get(&edge, path).await;
        let second = get(&edge, path).await;
        let expected = if stored { "HIT" } else { "MISS" };
        assert_eq!(x_cache(&second).as_deref(), Some(expected), "{path}");
        assert_eq!(
            backend.requests_for(path),
            if stored { 1 } else { 2 },
            "{path}"
        );
    }
}

#[tokio::test]
async fn entries_expire_after_max_age() {
    let backend = scripted(|_, n| reply("cache-control: max-age=1\r\n", numbered(n))).await;
    let edge = edge(&backend, CACHE).await;
    let stored_at = Instant::now();
    assert_eq!(get(&edge, "/short").await.text(), numbered(0));
    assert_eq!(x_cache(&get(&edge, "/short").await).as_deref(), Some("HIT"));
    let deadline = Instant::now() + DEADLINE;
    let fetched = loop {
        let got = get(&edge, "/short").await;
        if x_cache(&got).as_deref() == Some("MISS") {
            break got;
        }
        assert_eq!(got.text(), numbered(0), "a hit serves the stored body");
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stored_at.elapsed() >= Duration::from_secs(1),
        "expired early"
    );
    assert_eq!(fetched.text(), numbered(1));
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn x_cache_header_can_be_switched_off() {
    let backend = scripted(|_, n| reply("cache-control: max-age=60\r\n", numbered(n))).await;
    let edge = edge(&backend, "{ max_bytes: 1MiB, x_cache_header: false }").await;
    let first = get(&edge, "/a").await;
    let second = get(&edge, "/a").await;
    assert_eq!(second.text(), numbered(0), "still cached");
    assert!(x_cache(&first).is_none() && x_cache(&second).is_none());
    assert!(second.header("age").is_some());
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn vary_keeps_one_entry_per_header_value() {
    let backend = scripted(|req, n| {
        let lang = req.header("accept-language").unwrap_or("none").to_string();
        reply(
            "cache-control: max-age=60\r\nvary: Accept-Language\r\n",
            format!("{lang} {n}"),
        )
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    let lang = |v| [("accept-language", v)];
    assert_eq!(send(&edge, "GET", "/v", &lang("fr")).await.text(), "fr 0");
    assert_eq!(send(&edge, "GET", "/v", &lang("de")).await.text(), "de 1");
    for _ in 0..2 {
        let fr = send(&edge, "GET", "/v", &lang("fr")).await;
        assert_eq!(
            (fr.text().as_str(), x_cache(&fr).as_deref()),
            ("fr 0", Some("HIT"))
        );
        let de = send(&edge, "GET", "/v", &lang("de")).await;
        assert_eq!(
            (de.text().as_str(), x_cache(&de).as_deref()),
            ("de 1", Some("HIT"))
        );
    }
    assert_eq!(backend.requests(), 2);
    // No Accept-Language is a third variant.
    assert_eq!(get(&edge, "/v").await.text(), "none 2");
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_if_none_match() {
    // max-age=0 with an ETag: stored, revalidated on every use; the backend answers
    // 304 to the right validator and a new version to anything else.
    let backend = scripted(|req, n| {
        if req.header("if-none-match") == Some("\"v1\"") {
            let mut r = reply(
                "cache-control: max-age=0\r\netag: \"v1\"\r\nx-refreshed: yes\r\n",
                "",
            );
            r.status = "304 Not Modified";
            return r;
        }
        reply(
            "cache-control: max-age=0\r\netag: \"v1\"\r\n",
            format!("full body {n}"),
        )
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    assert_eq!(get(&edge, "/doc").await.text(), "full body 0");
    assert!(!backend.last().has("if-none-match"));
    for i in 0..2 {
        let got = get(&edge, "/doc").await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.text(),
            "full body 0",
            "the stored body, confirmed by a 304"
        );
        assert_eq!(x_cache(&got).as_deref(), Some("HIT"));
        assert_eq!(
            got.header("x-refreshed").as_deref(),
            Some("yes"),
            "304 headers merged"
        );
        assert_eq!(backend.last().header("if-none-match"), Some("\"v1\""));
        assert_eq!(backend.requests(), 2 + i);
    }
    assert_eq!(outcome(&edge, "revalidated"), 2.0);
    // The client's own validator is answered from the revalidated entry.
    let got = send(&edge, "GET", "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((got.status, got.body.len()), (304, 0));
}

#[tokio::test]
async fn request_no_cache_forces_revalidation_and_a_new_version_replaces_the_entry() {
    let version = Arc::new(AtomicUsize::new(1));
    let v = Arc::clone(&version);
    let backend = scripted(move |req, _| {
        let current = format!("\"v{}\"", v.load(Ordering::SeqCst));
        let headers = format!("cache-control: max-age=60\r\netag: {current}\r\n");
        if req.header("if-none-match") == Some(current.as_str()) {
            let mut r = reply(&headers, "");
            r.status = "304 Not Modified";
            return r;
        }
        reply(&headers, format!("body {current}"))
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    let no_cache = [("cache-control", "no-cache")];
    get(&edge, "/r").await;
    assert_eq!(x_cache(&get(&edge, "/r").await).as_deref(), Some("HIT"));
    assert_eq!(backend.requests(), 1);
    let got = send(&edge, "GET", "/r", &no_cache).await;
    assert_eq!(got.text(), "body \"v1\"");
    assert_eq!(backend.requests(), 2);
    assert_eq!(backend.last().header("if-none-match"), Some("\"v1\""));
    version.store(2, Ordering::SeqCst);
    let got = send(&edge, "GET", "/r", &[("cache-control", "max-age=0")]).await;
    assert_eq!(got.text(), "body \"v2\"", "a 200 to the revalidation");
    let got = get(&edge, "/r").await;
    assert_eq!(
        (got.text().as_str(), x_cache(&got).as_deref()),
        ("body \"v2\"", Some("HIT"))
    );
    assert_eq!(backend.requests(), 3);
    // no-store in the request: straight to the backend, nothing stored or served.
    let got = send(&edge, "GET", "/r", &[("cache-control", "no-store")]).await;
    assert_eq!(x_cache(&got).as_deref(), Some("MISS"));
    assert_eq!(backend.requests(), 4);
}

#[tokio::test]
async fn lru_evicts_the_oldest_under_a_small_budget() {
    let backend =
        scripted(|_, _| reply("cache-control: max-age=60\r\n", vec![b'x'; 20 * 1024])).await;
    let edge = edge(&backend, "{ max_bytes: 64KiB, max_object_bytes: 32KiB }").await;
    for path in ["/1", "/2", "/3"] {
        get(&edge, path).await;
    }
    for path in ["/1", "/2", "/3"] {
        assert_eq!(
            x_cache(&get(&edge, path).await).as_deref(),
            Some("HIT"),
            "{path}"
        );
    }
    // /1 was used first: storing /4 evicts it.
    assert_eq!(x_cache(&get(&edge, "/2").await).as_deref(), Some("HIT"));
    assert_eq!(x_cache(&get(&edge, "/3").await).as_deref(), Some("HIT"));
    get(&edge, "/4").await;
    assert_eq!(x_cache(&get(&edge, "/4").await).as_deref(), Some("HIT"));
    let again = get(&edge, "/1").await;
    assert_eq!(x_cache(&again).as_deref(), Some("MISS"));
    assert_eq!(again.body.len(), 20 * 1024);
    assert_eq!(backend.requests_for("/1"), 2);
    let evictions = edge.metric("tollgate_cache_evictions_total", &[("route", "web")]);
    assert!(evictions.unwrap_or(0.0) >= 2.0, "{evictions:?}");
    let bytes = edge
        .metric("tollgate_cache_bytes", &[("route", "web")])
        .unwrap();
    assert!((60.0 * 1024.0..=64.0 * 1024.0).contains(&bytes), "{bytes}");
}

#[tokio::test]
async fn bodies_over_max_object_bytes_are_not_stored() {
    let backend =
        scripted(|_, _| reply("cache-control: max-age=60\r\n", vec![b'y'; 40 * 1024])).await;
    let edge = edge(&backend, "{ max_bytes: 64KiB, max_object_bytes: 32KiB }").await;
    for _ in 0..2 {
        let got = get(&edge, "/big").await;
        assert_eq!(got.body.len(), 40 * 1024, "passed through whole");
    }
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn concurrent_misses_collapse_into_one_backend_request() {
    let backend = scripted(|req, n| {
        let headers = if path_of(req) == "/private" {
            "cache-control: private\r\n"
        } else {
            "cache-control: max-age=60\r\n"
        };
        let mut r = reply(headers, numbered(n));
        r.delay = Duration::from_millis(600);
        r
    })
    .await;
    let edge = Arc::new(edge(&backend, CACHE).await);
    let burst = |path: &'static str| {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let edge = Arc::clone(&edge);
                tokio::spawn(async move { get(&edge, path).await })
            })
            .collect();
        async move {
            let mut bodies = Vec::new();
            for t in tasks {
                let got = t.await.unwrap();
                assert_eq!(got.status, 200);
                bodies.push(got.text());
            }
            bodies
        }
    };
    let bodies = burst("/slow").await;
    assert!(bodies.iter().all(|b| *b == numbered(0)), "{bodies:?}");
    assert_eq!(
        backend.requests_for("/slow"),
        1,
        "20 misses, one backend request"
    );
    assert_eq!(outcome(&edge, "miss"), 1.0);
    assert_eq!(outcome(&edge, "collapsed"), 19.0);
    // Uncacheable: the waiters go to the backend themselves once the leader's answer
    // turned out private.
    burst("/private").await;
    assert_eq!(backend.requests_for("/private"), 20);
}

#[tokio::test]
async fn waiters_are_released_when_the_leader_fails_mid_body() {
    let backend = scripted(|_, n| {
        let mut r = reply("cache-control: max-age=60\r\n", vec![b'z'; 1000]);
        if n == 0 {
            r.delay = Duration::from_millis(300);
            r.truncate = true;
        }
        r
    })
    .await;
    let edge = Arc::new(edge(&backend, CACHE).await);
    let leader = {
        let edge = Arc::clone(&edge);
        tokio::spawn(async move {
            let mut conn = HttpConn::over(TcpStream::connect(edge.plain).await.unwrap()).await;
            let request = Request::get("/t")
                .header("host", HOST)
                .body(Full::new(Bytes::new()))
                .unwrap();
            conn.send(request).await.is_err()
        })
    };
    wait_until("leader forwarded", || backend.requests() == 1).await;
    let started = Instant::now();
    let waiter = get(&edge, "/t").await;
    assert!(leader.await.unwrap(), "the leader's body was cut");
    assert_eq!((waiter.status, waiter.body.len()), (200, 1000));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.requests(), 2, "the waiter fetched for itself");
    // Its complete answer was stored.
    assert_eq!(x_cache(&get(&edge, "/t").await).as_deref(), Some("HIT"));
}

#[tokio::test]
async fn head_is_served_from_a_stored_get() {
    let backend = scripted(|_, n| reply("cache-control: max-age=60\r\n", numbered(n))).await;
    let edge = edge(&backend, CACHE).await;
    get(&edge, "/h").await;
    let head = send(&edge, "HEAD", "/h", &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(x_cache(&head).as_deref(), Some("HIT"));
    assert_eq!(
        head.header("content-length"),
        Some(numbered(0).len().to_string())
    );
    assert_eq!(backend.requests(), 1);
    // A HEAD miss goes to the backend and stores nothing.
    let head = send(&edge, "HEAD", "/other", &[]).await;
    assert_eq!(x_cache(&head).as_deref(), Some("MISS"));
    assert_eq!(
        x_cache(&get(&edge, "/other").await).as_deref(),
        Some("MISS")
    );
}

#[tokio::test]
async fn query_strings_distinguish_entries() {
    let backend = scripted(|req, _| reply("cache-control: max-age=60\r\n", path_of(req))).await;
    let edge = edge(&backend, CACHE).await;
    for path in ["/q?a=1", "/q?a=2", "/q?a=1", "/q?a=2", "/q"] {
        assert_eq!(get(&edge, path).await.text(), path);
    }
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn unsafe_methods_bypass_and_invalidate() {
    let backend = scripted(|_, n| reply("cache-control: max-age=60\r\n", numbered(n))).await;
    let edge = edge(&backend, CACHE).await;
    get(&edge, "/item").await;
    assert_eq!(x_cache(&get(&edge, "/item").await).as_deref(), Some("HIT"));
    let posted = send(&edge, "POST", "/item", &[]).await;
    assert_eq!(x_cache(&posted).as_deref(), Some("MISS"));
    assert_eq!(outcome(&edge, "bypass"), 1.0);
    let after = get(&edge, "/item").await;
    assert_eq!(
        (after.text(), x_cache(&after)),
        (numbered(2), Some("MISS".into()))
    );
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn waiters_are_released_when_the_leaders_client_goes_away() {
    let backend = scripted(|_, n| {
        let mut r = reply("cache-control: max-age=60\r\n", numbered(n));
        if n == 0 {
            r.delay = Duration::from_secs(4);
        }
        r
    })
    .await;
    let edge = edge(&backend, CACHE).await;
    let request = format!("GET /gone HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    let mut leader = edge.raw_plain().await;
    leader.write(request.as_bytes()).await.unwrap();
    wait_until("leader forwarded", || backend.requests() == 1).await;
    let mut waiter = edge.raw_plain().await;
    waiter.write(request.as_bytes()).await.unwrap();
    // Both requests are in; yielding (one runtime thread) lets the edge read the
    // waiter's request and queue it behind the leader.
    let accepted = || {
        edge.metric("tollgate_connections_total", &[("listener", "plain")])
            .unwrap_or(0.0)
    };
    wait_until("waiter accepted", || accepted() == 2.0).await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        backend.requests(),
        1,
        "the waiter did not go to the backend"
    );
    let started = Instant::now();
    drop(leader);
    let got = waiter.read_response().await.expect("waiter answered");
    assert_eq!(got.text(), numbered(1), "fetched for itself");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?}: not released by the leader's drop",
        started.elapsed()
    );
}
