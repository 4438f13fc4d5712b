//! Response compression (`compress:` on a route) through a running balancer:
//! Accept-Encoding negotiation (gzip, br, zstd, q-values, `q=0`, `*`, identity,
//! unsupported codings, no header), what is never compressed (small, unlisted type,
//! already encoded, `Range`, 206/304/204, `no-transform`), the rewritten headers
//! (`Vary`, no `Content-Length`, weak `ETag`), streamed and huge bodies, a backend dying
//! mid-body, HEAD, cache hits and static files compressed per request, and the
//! compression metrics.

mod common;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use common::l7::*;
use common::*;
use http_body_util::Full;
use hyper::Request;
use tokio::io::AsyncReadExt;

/// A JSON document of about `items` × 70 bytes.
fn json_doc(items: usize) -> String {
    let rows: Vec<String> = (0..items)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"edge\",\"tls\"],\
                 \"price\":{}.{:02}}}",
                i * 7 % 1000,
                i % 100
            )
        })
        .collect();
    format!("{{\"items\":[{}]}}", rows.join(","))
}

/// Bytes `gzip` would never produce by accident: a body already encoded by the backend.
const PRE_ENCODED: &[u8] = b"\x1f\x8b\x08\x00pretend-this-is-gzip-from-the-backend";

/// A keep-alive backend answering by path: `/json` (ETag, Accept-Ranges; 206 for a
/// `Range` request), `/json-no-range` (ignores `Range`), `/cacheable`, `/small`, `/png`,
/// `/gzipped`, `/no-transform`, `/vary`, `/chunked` (no length), `/304`, `/204`,
/// `/truncated` (promises more than it sends, then closes).
async fn content_backend() -> RawBackend {
    raw_backend(|mut conn, _| async move {
        let doc = json_doc(500);
        while let Some(req) = conn.read_request().await {
            let path = req.start.split(' ').nth(1).unwrap_or("/").to_string();
            let head_only = req.start.starts_with("HEAD ");
            let json = "content-type: application/json; charset=utf-8\r\n";
            let ok = |extra: String, body: Vec<u8>| ("200 OK", extra, body);
            let d = || doc.clone().into_bytes();
            let (status, extra, body): (&str, String, Vec<u8>) = match path.as_str() {
                "/json" if req.has("range") => (
                    "206 Partial Content",
                    format!("{json}content-range: bytes 0-99/{}\r\n", doc.len()),
                    doc.as_bytes()[..100].to_vec(),
                ),
                "/json" | "/json-no-range" => ok(
                    format!("{json}etag: \"doc-v1\"\r\naccept-ranges: bytes\r\n"),
                    d(),
                ),
                "/cacheable" => ok(format!("{json}cache-control: max-age=60\r\n"), d()),
                "/small" => ok(json.into(), b"{\"ok\":true}".to_vec()),
                "/png" => ok("content-type: image/png\r\n".into(), d()),
                "/gzipped" => ok(
                    format!("{json}content-encoding: gzip\r\n"),
                    PRE_ENCODED.repeat(100),
                ),
                "/no-transform" => ok(format!("{json}cache-control: no-transform\r\n"), d()),
                "/vary" => ok(format!("{json}vary: Origin\r\n"), d()),
                "/304" => ("304 Not Modified", "etag: \"v\"\r\n".into(), Vec::new()),
                "/204" => ("204 No Content", json.into(), Vec::new()),
                "/chunked" => {
                    let mut out =
                        format!("HTTP/1.1 200 OK\r\n{json}transfer-encoding: chunked\r\n\r\n");
                    for piece in doc.as_bytes().chunks(3000) {
                        out.push_str(&format!(
                            "{:x}\r\n{}\r\n",
                            piece.len(),
                            String::from_utf8_lossy(piece)
                        ));
                    }
                    out.push_str("0\r\n\r\n");
                    if conn.write(out.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                "/truncated" => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\n{json}content-length: {}\r\n\r\n",
                        doc.len()
                    );
                    let _ = conn.write(head.as_bytes()).await;
                    let _ = conn.write(&doc.as_bytes()[..doc.len() / 3]).await;
                    return;
                }
                _ => ("404 Not Found", String::new(), Vec::new()),
            };
            let length = if status.starts_with("204") || status.starts_with("304") {
                String::new()
            } else {
                format!("content-length: {}\r\n", body.len())
            };
            let head = format!("HTTP/1.1 {status}\r\n{extra}{length}\r\n");
            let body = if head_only { &[][..] } else { &body[..] };
            if conn.write(head.as_bytes()).await.is_err() || conn.write(body).await.is_err() {
                return;
            }
            if req.has_token("connection", "close") {
                return;
            }
        }
    })
    .await
}

/// A balancer whose only route sends everything to `backend` with `compress` settings.
async fn edge_for(addr: std::net::SocketAddr, compress: &str) -> Edge {
    let routes = format!("    - {{ pool: app, compress: {compress} }}");
    let pools = format!("  app: {{ servers: [ {{ addr: \"{addr}\" }} ] }}");
    Edge::start(&routes, &pools, "").await
}

const ALL_THREE: &str = "{ algorithms: [gzip, br, zstd], min_bytes: 1024 }";

/// `method path` over plain http with `Accept-Encoding: accept` (none if `None`) and
/// extra headers.
async fn fetch(
    edge: &Edge,
    method: &str,
    path: &str,
    accept: Option<&str>,
    extra: &[(&str, &str)],
) -> Got {
    let stream = tokio::net::TcpStream::connect(edge.plain).await.unwrap();
    let mut conn = HttpConn::over(stream).await;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", SNI);
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    conn.send(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("response")
}

async fn get(edge: &Edge, path: &str, accept: Option<&str>) -> Got {
    fetch(edge, "GET", path, accept, &[]).await
}

/// Decodes `body` as `coding` says (`None`: as is).
async fn decode(coding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let read = match coding {
        None => return body.to_vec(),
        Some("gzip") => GzipDecoder::new(body).read_to_end(&mut out).await,
        Some("br") => BrotliDecoder::new(body).read_to_end(&mut out).await,
        Some("zstd") => ZstdDecoder::new(body).read_to_end(&mut out).await,
        Some(other) => panic!("unexpected coding {other}"),
    };
    read.expect("a valid encoded body");
    out
}

fn vary_lists_accept_encoding(got: &Got) -> bool {
    got.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.trim().eq_ignore_ascii_case("accept-encoding"))
}

/// Asserts `got` carries the JSON document, encoded with `coding` or not at all.
async fn assert_doc(got: &Got, coding: Option<&str>, why: &str) {
    let doc = json_doc(500);
    assert_eq!(got.status, 200, "{why}");
    assert_eq!(got.header("content-encoding").as_deref(), coding, "{why}");
    assert!(vary_lists_accept_encoding(got), "{why}: no Vary");
    assert_eq!(decode(coding, &got.body).await, doc.as_bytes(), "{why}");
    if coding.is_some() {
        assert_eq!(got.header("content-length"), None, "{why}");
        assert_eq!(got.header("accept-ranges"), None, "{why}");
        let size = got.body.len();
        assert!(size < doc.len() / 3, "{why}: {size} bytes");
    } else {
        let length = got.header("content-length");
        assert_eq!(length, Some(doc.len().to_string()), "{why}");
    }
}

#[tokio::test]
async fn gzip_br_and_zstd_are_negotiated_and_decode_to_the_original() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    for coding in ["gzip", "br", "zstd"] {
        let got = get(&edge, "/json", Some(coding)).await;
        assert_doc(&got, Some(coding), coding).await;
        assert_eq!(
            got.header("etag").as_deref(),
            Some("W/\"doc-v1\""),
            "{coding}"
        );
        assert_eq!(got.header("vary").as_deref(), Some("Accept-Encoding"));
    }
    // zstd only when the route offers it.
    let edge = edge_for(backend.addr, "{ algorithms: [gzip, br] }").await;
    let got = get(&edge, "/json", Some("zstd")).await;
    assert_doc(&got, None, "zstd not offered").await;
}

#[tokio::test]
async fn q_values_star_identity_and_unsupported_codings() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some("gzip;q=0.5, br;q=0.9"), Some("br")),
        (Some("gzip;q=0, br"), Some("br")),
        (Some("zstd;q=1, gzip;q=0.1, br;q=0.2"), Some("zstd")),
        (Some("br;q=0.5, zstd;q=0.5, gzip;q=0.5"), Some("gzip")),
        (Some("GZIP;Q=0.3, x-unknown;q=1"), Some("gzip")),
        (Some("*"), Some("gzip")),
        (Some("gzip;q=0, *;q=0.5"), Some("br")),
        (Some("gzip;q=zero, br;q=1.5, zstd"), Some("zstd")),
        (Some("*;q=0"), None),
        (Some("identity"), None),
        (Some("identity;q=1, gzip;q=0.5"), None),
        (Some("compress, deflate"), None),
        (Some(""), None),
        (None, None),
    ];
    for (accept, coding) in cases {
        let got = get(&edge, "/json", *accept).await;
        assert_doc(&got, *coding, &format!("{accept:?}")).await;
    }
}

#[tokio::test]
async fn small_unlisted_encoded_and_no_transform_responses_are_untouched() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    for path in ["/small", "/png", "/no-transform"] {
        let got = get(&edge, path, Some("gzip, br")).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("content-encoding"), None, "{path}");
        assert!(!vary_lists_accept_encoding(&got), "{path}");
        assert_eq!(
            got.header("content-length"),
            Some(got.body.len().to_string())
        );
    }
    let got = get(&edge, "/gzipped", Some("gzip, br")).await;
    assert_eq!(got.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(got.body, PRE_ENCODED.repeat(100));
    assert!(!vary_lists_accept_encoding(&got));
    // A listed type by wildcard, a lower threshold: /small is compressed then.
    let edge = edge_for(backend.addr, "{ min_bytes: 5, types: [application/*] }").await;
    let got = get(&edge, "/small", Some("gzip")).await;
    assert_eq!(got.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(decode(Some("gzip"), &got.body).await, b"{\"ok\":true}");
    let got = get(&edge, "/png", Some("gzip")).await;
    assert_eq!(got.header("content-encoding"), None);
}

#[tokio::test]
async fn range_requests_and_non_200_answers_are_not_compressed() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    let range = [("range", "bytes=0-99")];
    let got = fetch(&edge, "GET", "/json", Some("gzip"), &range).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.body.len(), 100);
    // A backend ignoring Range answers 200 in full: sent as is, but marked as varying.
    let got = fetch(&edge, "GET", "/json-no-range", Some("gzip"), &range).await;
    assert_doc(&got, None, "Range answered 200").await;
    for (path, status) in [("/304", 304), ("/204", 204)] {
        let got = get(&edge, path, Some("gzip")).await;
        assert_eq!(got.status, status);
        assert_eq!(got.header("content-encoding"), None, "{path}");
        assert!(!vary_lists_accept_encoding(&got), "{path}");
        assert!(got.body.is_empty());
    }
}

#[tokio::test]
async fn existing_vary_is_extended_and_head_gets_the_get_headers() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    let got = get(&edge, "/vary", Some("br")).await;
    assert_eq!(got.header("content-encoding").as_deref(), Some("br"));
    assert_eq!(
        got.header("vary").as_deref(),
        Some("Origin, Accept-Encoding")
    );
    let got = fetch(&edge, "HEAD", "/json", Some("gzip"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(got.header("content-length"), None);
    assert_eq!(got.header("etag").as_deref(), Some("W/\"doc-v1\""));
    assert!(got.body.is_empty());
    let counted = edge.metric(
        "tollgate_compressed_responses_total",
        &[("route", "web"), ("coding", "gzip")],
    );
    assert_eq!(counted.unwrap_or(0.0), 0.0, "HEAD compresses nothing");
}

#[tokio::test]
async fn streamed_and_huge_bodies_are_compressed_on_the_fly() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    let got = get(&edge, "/chunked", Some("zstd")).await;
    assert_doc(&got, Some("zstd"), "chunked backend").await;
    // 8 MB of text/plain from the built-in origin, through each coding.
    let big = origin_padded("big", 8_000_000).await;
    let edge = edge_for(big.addr, ALL_THREE).await;
    for coding in ["gzip", "br", "zstd"] {
        let got = get(&edge, "/", Some(coding)).await;
        assert_eq!(got.header("content-encoding").as_deref(), Some(coding));
        let plain = decode(Some(coding), &got.body).await;
        assert_eq!(plain.len(), 8_000_000, "{coding}");
        assert!(plain.starts_with(b"backend big GET / "), "{coding}");
        assert!(plain.ends_with(b"...\n"), "{coding}");
        assert!(
            got.body.len() < 200_000,
            "{coding}: {} bytes",
            got.body.len()
        );
    }
}

#[tokio::test]
async fn a_backend_dying_mid_body_never_yields_a_complete_compressed_body() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    for coding in ["gzip", "br", "zstd"] {
        let mut conn = edge.raw_plain().await;
        let request =
            format!("GET /truncated HTTP/1.1\r\nhost: {SNI}\r\naccept-encoding: {coding}\r\n\r\n");
        conn.write(request.as_bytes()).await.unwrap();
        let head = conn.read_head().await.expect("head");
        assert_eq!(head.status(), 200);
        assert_eq!(head.header("content-encoding"), Some(coding));
        assert!(head.has_token("transfer-encoding", "chunked"));
        // The chunked body never reaches its last chunk: the connection just closes.
        let (rest, _) = read_to_close(&mut conn.stream).await;
        let mut all = conn.take_buffered();
        all.extend(rest);
        assert!(
            !all.ends_with(b"0\r\n\r\n"),
            "{coding}: body ended as if complete"
        );
    }
}

#[tokio::test]
async fn metrics_count_responses_and_bytes_in_and_out() {
    let backend = content_backend().await;
    let edge = edge_for(backend.addr, ALL_THREE).await;
    let doc_len = json_doc(500).len() as f64;
    let mut sent = 0.0;
    for coding in ["gzip", "br", "br", "zstd"] {
        let got = get(&edge, "/json", Some(coding)).await;
        assert_eq!(got.header("content-encoding").as_deref(), Some(coding));
        sent += got.body.len() as f64;
    }
    // Not counted: identity, too small, 206.
    get(&edge, "/json", None).await;
    get(&edge, "/small", Some("gzip")).await;
    fetch(
        &edge,
        "GET",
        "/json",
        Some("gzip"),
        &[("range", "bytes=0-99")],
    )
    .await;
    let responses = |coding: &str| {
        edge.metric(
            "tollgate_compressed_responses_total",
            &[("route", "web"), ("coding", coding)],
        )
    };
    assert_eq!(responses("gzip"), Some(1.0));
    assert_eq!(responses("br"), Some(2.0));
    assert_eq!(responses("zstd"), Some(1.0));
    let bytes = |stage: &str| {
        edge.metric(
            "tollgate_compression_bytes_total",
            &[("route", "web"), ("stage", stage)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(bytes("in"), 4.0 * doc_len);
    assert_eq!(bytes("out"), sent);
    assert!(
        bytes("out") < bytes("in") / 4.0,
        "out {} in {}",
        bytes("out"),
        bytes("in")
    );
}

#[tokio::test]
async fn cache_hits_and_static_files_are_compressed_per_request() {
    let backend = content_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let page = json_doc(300);
    std::fs::write(dir.path().join("page.html"), &page).unwrap();
    let routes = format!(
        "    - {{ path_prefix: /static/, static: {{ root: \"{}\" }}, compress: {{}} }}\n    \
           - {{ pool: app, cache: {{ max_bytes: 1MiB }}, compress: {ALL_THREE} }}",
        dir.path().display()
    );
    let pools = format!("  app: {{ servers: [ {{ addr: \"{}\" }} ] }}", backend.addr);
    let edge = Edge::start(&routes, &pools, "").await;
    // The cache holds one identity copy; each answer is encoded for its own client.
    for (i, accept) in [Some("gzip"), Some("br"), None, Some("zstd")]
        .iter()
        .enumerate()
    {
        let got = get(&edge, "/cacheable", *accept).await;
        assert_doc(&got, *accept, &format!("cache {accept:?}")).await;
        let x_cache = if i == 0 { "MISS" } else { "HIT" };
        assert_eq!(
            got.header("x-cache").as_deref(),
            Some(x_cache),
            "{accept:?}"
        );
    }
    let got = get(&edge, "/static/page.html", Some("br")).await;
    assert_eq!(got.header("content-encoding").as_deref(), Some("br"));
    assert!(got.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(decode(Some("br"), &got.body).await, page.as_bytes());
    let etag = got.header("etag").unwrap();
    assert!(etag.starts_with("W/\""), "{etag}");
    // Revalidating with the weakened tag still matches: a 304, left untouched.
    let revalidate = [("if-none-match", etag.as_str())];
    let got = fetch(&edge, "GET", "/static/page.html", Some("br"), &revalidate).await;
    assert_eq!(got.status, 304);
    assert_eq!(got.header("content-encoding"), None);
    let range = [("range", "bytes=0-9")];
    let got = fetch(&edge, "GET", "/static/page.html", Some("br"), &range).await;
    assert_eq!((got.status, got.body.len()), (206, 10));
    assert_eq!(got.header("content-encoding"), None);
}
