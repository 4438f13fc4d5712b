//! Static file routes through a running balancer: no escape from the root (dot
//! segments raw or encoded, encoded slashes, double encoding, symlinks out), symlinks
//! inside followed, index files and the directory redirect, GET/HEAD/405, content types,
//! ETag/Last-Modified with 304s, single ranges (206/416/ignored), a large file streamed
//! intact and counted, and a file that shrinks mid-stream closing the connection.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::l7::*;
use common::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::TcpStream;

const HELLO: &str = "hello world\n";
/// 2020-01-01T00:00:00Z, the modification time given to hello.txt.
const MTIME: u64 = 1_577_836_800;
const BIG: usize = 8 << 20;

/// A temp dir holding `root/` (served) and, next to it, files that must never be served.
struct Site {
    _dir: TempDir,
    root: PathBuf,
    edge: Edge,
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// Bytes gzip cannot shrink (xorshift64*), so compressed output keeps pace with input.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(&dir.path().join("SECRET.txt"), b"SECRET outside the root\n");
    write(
        &dir.path().join("outside/SECRET.txt"),
        b"SECRET in a sibling dir\n",
    );
    write(&root.join("index.html"), b"<h1>home</h1>\n");
    write(&root.join("hello.txt"), HELLO.as_bytes());
    write(&root.join("css/a.css"), b"body { color: red }\n");
    write(&root.join("sub/index.html"), b"<h1>sub</h1>\n");
    write(&root.join("img.png"), b"\x89PNG\r\n\x1a\n");
    write(&root.join("data.json"), b"{}\n");
    write(&root.join("app.js"), b"let a = 1;\n");
    write(&root.join("blob.unknownext"), b"blob");
    write(&root.join("%2e%2e"), b"a literal name\n");
    write(&root.join("big.bin"), &pattern(BIG));
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("evil.example")).unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(root.join("hello.txt"))
        .unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
    drop(file);
    let link = |to: &Path, name: &str| std::os::unix::fs::symlink(to, root.join(name)).unwrap();
    link(&dir.path().join("SECRET.txt"), "link_out");
    link(Path::new("../outside"), "link_dir_out");
    link(Path::new("/etc"), "link_etc");
    link(Path::new("hello.txt"), "link_in.txt");
    link(&root.join("css"), "link_dir_in");

    let routes = format!(
        "    - {{ host: files.example.com, static: {{ root: \"{0}\" }} }}\n    \
         - {{ path_prefix: /static, static: {{ root: \"{0}\" }} }}\n    \
         - {{ path_prefix: /z/, static: {{ root: \"{0}\" }}, \
              compress: {{ algorithms: [gzip], types: [application/octet-stream] }} }}",
        root.display()
    );
    let pools = format!("  app: {{ servers: [ {{ addr: \"{}\" }} ] }}", dead_addr());
    let edge = Edge::start(&routes, &pools, "").await;
    Site {
        _dir: dir,
        root,
        edge,
    }
}

/// One request on a fresh plain connection; for HEAD only the head is read.
async fn send_to(
    edge: &Edge,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawMessage {
    let mut conn = edge.raw_plain().await;
    let mut request = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.write(request.as_bytes()).await.unwrap();
    if method == "HEAD" {
        tokio::time::timeout(DEADLINE, conn.read_head())
            .await
            .expect("head within the deadline")
            .expect("response head")
    } else {
        conn.read_response().await.expect("complete response")
    }
}

async fn send(edge: &Edge, method: &str, target: &str, headers: &[(&str, &str)]) -> RawMessage {
    send_to(edge, SNI, method, target, headers).await
}

async fn get(edge: &Edge, target: &str) -> RawMessage {
    send(edge, "GET", target, &[]).await
}

fn static_bytes(edge: &Edge) -> f64 {
    edge.metric("tollgate_static_bytes_total", &[("route", "web")])
        .unwrap_or(0.0)
}

#[tokio::test]
async fn traversal_attempts_never_leave_the_root() {
    let site = site().await;
    let attempts = [
        "/static/../SECRET.txt",
        "/static/css/../../SECRET.txt",
        "/static/%2e%2e/SECRET.txt",
        "/static/%2E%2e/SECRET.txt",
        "/static/.%2e/SECRET.txt",
        "/static/%2e./SECRET.txt",
        "/static/..%2fSECRET.txt",
        "/static/..%2FSECRET.txt",
        "/static/%2e%2e%2fSECRET.txt",
        "/static/css%2f..%2f..%2fSECRET.txt",
        "/static/..%5cSECRET.txt",
        "/static/%252e%252e/SECRET.txt",
        "/static/%252e%252e%252fSECRET.txt",
        "/static/./hello.txt",
        "/static/hello.txt%00.png",
        "/static../SECRET.txt",
        "/static..%2fSECRET.txt",
        "/static/link_out",
        "/static/link_dir_out/SECRET.txt",
        "/static/link_etc/passwd",
        "/static/link_etc/hostname",
        "/static/link_etc/",
        "/static/%",
    ];
    for target in attempts {
        let got = get(&site.edge, target).await;
        assert_eq!(got.status(), 404, "{target}");
        assert!(!got.text().contains("SECRET"), "{target}: {}", got.text());
        assert!(!got.text().contains("root:"), "{target}: {}", got.text());
    }
    // With the route on `/` (no prefix to hide behind) too.
    for target in ["/../SECRET.txt", "/%2e%2e/SECRET.txt", "/link_out"] {
        let got = send_to(&site.edge, "files.example.com", "GET", target, &[]).await;
        assert_eq!(got.status(), 404, "{target}");
        assert!(!got.text().contains("SECRET"), "{target}");
    }
    // Decoded once only: `%252e%252e` names the file literally called `%2e%2e`.
    let got = get(&site.edge, "/static/%252e%252e").await;
    assert_eq!(
        (got.status(), got.text().as_str()),
        (200, "a literal name\n")
    );
}

#[tokio::test]
async fn symlinks_inside_the_root_are_followed() {
    let site = site().await;
    let got = get(&site.edge, "/static/link_in.txt").await;
    assert_eq!((got.status(), got.text().as_str()), (200, HELLO));
    let got = get(&site.edge, "/static/link_dir_in/a.css").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.text(), "body { color: red }\n");
}

#[tokio::test]
async fn directories_serve_their_index_or_redirect() {
    let site = site().await;
    let edge = &site.edge;
    for (target, body) in [
        ("/static/", "<h1>home</h1>\n"),
        ("/static/sub/", "<h1>sub</h1>\n"),
        ("/static//sub//", "<h1>sub</h1>\n"),
    ] {
        let got = get(edge, target).await;
        assert_eq!((got.status(), got.text().as_str()), (200, body), "{target}");
        assert_eq!(got.header("content-type"), Some("text/html; charset=utf-8"));
    }
    for (target, location) in [
        ("/static", "/static/"),
        ("/static/sub", "/static/sub/"),
        ("/static/sub?x=1&y", "/static/sub/?x=1&y"),
        ("/static/link_dir_in", "/static/link_dir_in/"),
    ] {
        let got = get(edge, target).await;
        assert_eq!(got.status(), 301, "{target}");
        assert_eq!(got.header("location"), Some(location), "{target}");
    }
    // No directory listing; a file asked for as a directory does not exist.
    assert_eq!(get(edge, "/static/empty/").await.status(), 404);
    assert_eq!(get(edge, "/static/hello.txt/").await.status(), 404);
    assert_eq!(get(edge, "/static/missing.txt").await.status(), 404);
    assert_eq!(get(edge, "/static/hello.txt/x").await.status(), 404);
    // The redirect never points at another host (`//evil.example/` would).
    let got = send_to(edge, "files.example.com", "GET", "//evil.example", &[]).await;
    assert_eq!(got.status(), 301);
    assert_eq!(got.header("location"), Some("/evil.example/"));
    let requests = edge.metric(
        "tollgate_http_requests_total",
        &[("route", "web"), ("pool", "static"), ("code", "301")],
    );
    assert_eq!(requests, Some(5.0));
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let site = site().await;
    let mut conn = site.edge.raw_plain().await;
    conn.write(
        b"HEAD /static/hello.txt HTTP/1.1\r\nhost: a\r\n\r\nGET /static/css/a.css HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let head = conn.read_head().await.expect("HEAD response");
    assert_eq!(head.status(), 200);
    assert_eq!(head.header("content-length"), Some("12"));
    assert_eq!(
        head.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert!(head.has("etag") && head.has("last-modified"));
    // No body: the next bytes are the GET's response.
    let next = conn.read_response().await.expect("GET response");
    assert_eq!(next.status(), 200);
    assert_eq!(next.text(), "body { color: red }\n");
    let get = get(&site.edge, "/static/hello.txt").await;
    for name in ["content-length", "content-type", "etag", "last-modified"] {
        assert_eq!(get.header(name), head.header(name), "{name}");
    }
}

#[tokio::test]
async fn other_methods_get_405() {
    let site = site().await;
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let got = send(
            &site.edge,
            method,
            "/static/hello.txt",
            &[("content-length", "0")],
        )
        .await;
        assert_eq!(got.status(), 405, "{method}");
        assert_eq!(got.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[tokio::test]
async fn content_type_follows_the_extension() {
    let site = site().await;
    for (target, want) in [
        ("/static/hello.txt", "text/plain; charset=utf-8"),
        ("/static/css/a.css", "text/css; charset=utf-8"),
        ("/static/index.html", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/img.png", "image/png"),
        ("/static/data.json", "application/json"),
        ("/static/blob.unknownext", "application/octet-stream"),
    ] {
        let got = get(&site.edge, target).await;
        assert_eq!(got.status(), 200, "{target}");
        assert_eq!(got.header("content-type"), Some(want), "{target}");
    }
}

#[tokio::test]
async fn etag_and_if_none_match() {
    let site = site().await;
    let edge = &site.edge;
    let got = get(edge, "/static/hello.txt").await;
    let etag = format!("\"{MTIME:x}-{:x}\"", HELLO.len());
    assert_eq!(got.header("etag"), Some(etag.as_str()));
    assert_eq!(
        got.header("last-modified"),
        Some("Wed, 01 Jan 2020 00:00:00 GMT")
    );
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for value in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let got = send(
            edge,
            "GET",
            "/static/hello.txt",
            &[("if-none-match", value)],
        )
        .await;
        assert_eq!(got.status(), 304, "{value}");
        assert!(got.body.is_empty());
        assert_eq!(got.header("etag"), Some(etag.as_str()));
        assert_eq!(
            got.header("last-modified"),
            Some("Wed, 01 Jan 2020 00:00:00 GMT")
        );
    }
    let got = send(
        edge,
        "HEAD",
        "/static/hello.txt",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(got.status(), 304);
    // Another tag: 200, and If-Modified-Since is not looked at when If-None-Match is there.
    let got = send(
        edge,
        "GET",
        "/static/hello.txt",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Wed, 01 Jan 2020 00:00:00 GMT"),
        ],
    )
    .await;
    assert_eq!((got.status(), got.text().as_str()), (200, HELLO));
}

#[tokio::test]
async fn if_modified_since() {
    let site = site().await;
    for (since, want) in [
        ("Wed, 01 Jan 2020 00:00:00 GMT", 304),
        ("Thu, 02 Jan 2020 00:00:00 GMT", 304),
        ("Tue, 31 Dec 2019 23:59:59 GMT", 200),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
        ("not a date", 200),
    ] {
        let got = send(
            &site.edge,
            "GET",
            "/static/hello.txt",
            &[("if-modified-since", since)],
        )
        .await;
        assert_eq!(got.status(), want, "{since}");
        if want == 304 {
            assert!(got.body.is_empty());
            assert!(got.has("etag") && got.has("last-modified"));
        } else {
            assert_eq!(got.text(), HELLO);
        }
    }
}

#[tokio::test]
async fn single_ranges_206_416_and_ignored() {
    let site = site().await;
    let edge = &site.edge;
    let etag = format!("\"{MTIME:x}-{:x}\"", HELLO.len());
    for (range, content_range, body) in [
        ("bytes=0-4", "bytes 0-4/12", "hello"),
        ("bytes=6-", "bytes 6-11/12", "world\n"),
        ("bytes=-6", "bytes 6-11/12", "world\n"),
        ("bytes=6-1000", "bytes 6-11/12", "world\n"),
        ("bytes=-1000", "bytes 0-11/12", HELLO),
    ] {
        let got = send(edge, "GET", "/static/hello.txt", &[("range", range)]).await;
        assert_eq!(got.status(), 206, "{range}");
        assert_eq!(got.header("content-range"), Some(content_range), "{range}");
        assert_eq!(got.text(), body, "{range}");
        let len = body.len().to_string();
        assert_eq!(got.header("content-length"), Some(len.as_str()));
    }
    for range in ["bytes=12-", "bytes=100-200", "bytes=-0"] {
        let got = send(edge, "GET", "/static/hello.txt", &[("range", range)]).await;
        assert_eq!(got.status(), 416, "{range}");
        assert_eq!(got.header("content-range"), Some("bytes */12"), "{range}");
    }
    // Several ranges, malformed ones and other units: the whole file.
    for range in [
        "bytes=0-1,4-5",
        "bytes=5-1",
        "bytes=x-y",
        "lines=1-2",
        "bytes 0-4",
    ] {
        let got = send(edge, "GET", "/static/hello.txt", &[("range", range)]).await;
        assert_eq!((got.status(), got.text().as_str()), (200, HELLO), "{range}");
        assert!(!got.has("content-range"));
    }
    // If-Range: honoured while the tag or date still matches, else the whole file.
    let old_etag = format!("\"{:x}-{:x}\"", MTIME - 1, HELLO.len());
    let weak = format!("W/{etag}");
    for (if_range, want) in [
        (etag.as_str(), 206),
        ("Wed, 01 Jan 2020 00:00:00 GMT", 206),
        (old_etag.as_str(), 200),
        (weak.as_str(), 200),
        ("Tue, 31 Dec 2019 00:00:00 GMT", 200),
    ] {
        let got = send(
            edge,
            "GET",
            "/static/hello.txt",
            &[("range", "bytes=0-4"), ("if-range", if_range)],
        )
        .await;
        assert_eq!(got.status(), want, "{if_range}");
        let body = if want == 206 { "hello" } else { HELLO };
        assert_eq!(got.text(), body, "{if_range}");
    }
    // HEAD ignores Range.
    let got = send(edge, "HEAD", "/static/hello.txt", &[("range", "bytes=0-4")]).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.header("content-length"), Some("12"));
}

#[tokio::test]
async fn large_file_streams_intact_and_is_counted() {
    let site = site().await;
    let edge = &site.edge;
    let want = pattern(BIG);
    let before = static_bytes(edge);
    let got = get(edge, "/static/big.bin").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.header("content-length"), Some(BIG.to_string().as_str()));
    assert_eq!(got.body.len(), BIG);
    assert_eq!(Sha256::digest(&got.body), Sha256::digest(&want));
    assert_eq!(static_bytes(edge) - before, BIG as f64);

    // A range across chunk boundaries.
    let (start, end) = (65_530usize, 300_001usize);
    let range = format!("bytes={start}-{end}");
    let got = send(edge, "GET", "/static/big.bin", &[("range", &range)]).await;
    assert_eq!(got.status(), 206);
    assert_eq!(got.body, want[start..=end]);
    assert_eq!(static_bytes(edge) - before, (BIG + end - start + 1) as f64);

    // 304, 416 and HEAD send no file bytes.
    let etag = got.header("etag").unwrap().to_string();
    send(edge, "GET", "/static/big.bin", &[("if-none-match", &etag)]).await;
    send(
        edge,
        "GET",
        "/static/big.bin",
        &[("range", "bytes=99999999-")],
    )
    .await;
    send(edge, "HEAD", "/static/big.bin", &[]).await;
    assert_eq!(static_bytes(edge) - before, (BIG + end - start + 1) as f64);
}

#[tokio::test]
async fn a_file_shrinking_mid_stream_closes_the_connection() {
    let site = site().await;
    // Sparse, and far larger than what socket buffers hold.
    let path = site.root.join("huge.bin");
    let len: u64 = 256 << 20;
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    let mut conn = RawConn::new(TcpStream::connect(site.edge.plain).await.unwrap());
    conn.write(b"GET /static/huge.bin HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let head = tokio::time::timeout(DEADLINE, conn.read_head())
        .await
        .unwrap()
        .expect("head");
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    let first = conn.read_exact_body(1 << 20).await;
    assert_eq!(first.len(), 1 << 20);
    shrink(&path);
    // The rest ends with the connection closed, well short of Content-Length.
    let (rest, closed) = read_to_close(&mut conn.stream).await;
    assert!(closed, "the connection is closed");
    let total = (1 << 20) + conn.take_buffered().len() + rest.len();
    assert!((total as u64) < len, "got {total} bytes");
}

fn shrink(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

/// Compressed, the answer is chunked: the file shrinking must still not end it cleanly.
#[tokio::test]
async fn a_file_shrinking_under_compression_never_ends_cleanly() {
    let site = site().await;
    // Incompressible, and far larger than what socket and coder buffers hold.
    let path = site.root.join("huge.bin");
    let block = noise(4 << 20);
    let mut file = std::fs::File::create(&path).unwrap();
    for _ in 0..16 {
        std::io::Write::write_all(&mut file, &block).unwrap();
    }
    drop(file);
    let mut conn = RawConn::new(TcpStream::connect(site.edge.plain).await.unwrap());
    conn.write(b"GET /z/huge.bin HTTP/1.1\r\nhost: a\r\naccept-encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let head = tokio::time::timeout(DEADLINE, conn.read_head())
        .await
        .unwrap()
        .expect("head");
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert!(head.has_token("transfer-encoding", "chunked"));
    let first = conn.read_exact_body(1 << 20).await;
    assert_eq!(first.len(), 1 << 20);
    shrink(&path);
    let (rest, closed) = read_to_close(&mut conn.stream).await;
    assert!(closed, "the connection is closed");
    let mut all = conn.take_buffered();
    all.extend(rest);
    assert!(!all.ends_with(b"0\r\n\r\n"), "a clean end of a short body");
}

#[tokio::test]
async fn an_unreadable_file_is_403() {
    use std::os::unix::fs::PermissionsExt;
    let site = site().await;
    let path = site.root.join("locked.txt");
    write(&path, b"locked");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&path).is_ok() {
        // Privileged (root): permissions do not apply, nothing to test.
        return;
    }
    assert_eq!(get(&site.edge, "/static/locked.txt").await.status(), 403);
}

#[tokio::test]
async fn modification_time_changes_the_validators() {
    let site = site().await;
    let edge = &site.edge;
    let first = get(edge, "/static/css/a.css").await;
    let etag = first.header("etag").unwrap().to_string();
    let later = SystemTime::now() + Duration::from_secs(3600);
    let file = std::fs::File::options()
        .write(true)
        .open(site.root.join("css/a.css"))
        .unwrap();
    file.set_modified(later).unwrap();
    drop(file);
    let got = send(
        edge,
        "GET",
        "/static/css/a.css",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(got.status(), 200);
    assert_ne!(got.header("etag"), Some(etag.as_str()));
}
