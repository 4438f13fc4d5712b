//! The sans-io ClientHello parser on real captured ClientHellos (every prefix, re-framed
//! into many TLS records), on garbage, truncated and oversized input; and the peek that
//! reads a connection until the parser answers, under a timeout and the 64 KiB bound.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{build_client_hello, fixture};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tollgate::tls::client_hello::{
    parse_client_hello, HelloParse, MAX_CLIENT_HELLO_BYTES, MAX_CLIENT_HELLO_RECORDS,
};
use tollgate::tls::peek::{peek_client_hello, PeekError, PeekFailure, ReplayStream};

fn sni(name: &str, alpn: &[&[u8]]) -> HelloParse {
    HelloParse::Sni {
        name: name.to_string(),
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    }
}

/// A ClientHello made now by rustls (with its default post-quantum key share) for
/// `server_name`; an IP address sends no SNI.
fn rustls_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Every captured or generated ClientHello and what the parser must answer.
fn corpus() -> Vec<(&'static str, Vec<u8>, HelloParse)> {
    vec![
        (
            "openssl-s_client",
            fixture("openssl-s_client-clienthello.bin"),
            sni("openssl.example.com", &[]),
        ),
        (
            "curl",
            fixture("curl-clienthello.bin"),
            sni("curl.example.com", &[b"h2", b"http/1.1"]),
        ),
        (
            "openssl-nosni",
            fixture("openssl-nosni-clienthello.bin"),
            HelloParse::NoSni { alpn: vec![] },
        ),
        (
            "openssl-tls12",
            fixture("openssl-tls12-clienthello.bin"),
            sni("tls12.example.com", &[b"http/1.1"]),
        ),
        (
            "chromium",
            fixture("chromium-clienthello.bin"),
            sni("capture.test", &[b"h2", b"http/1.1"]),
        ),
        (
            "rustls",
            rustls_hello("rustls.example.com", &[b"http/1.1"]),
            sni("rustls.example.com", &[b"http/1.1"]),
        ),
        (
            "rustls-ip",
            rustls_hello("127.0.0.1", &[b"h2"]),
            HelloParse::NoSni {
                alpn: vec![b"h2".to_vec()],
            },
        ),
    ]
}

/// The handshake bytes carried by the records of `stream` (headers removed).
fn handshake_body(stream: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        assert_eq!(rest[0], 22, "fixture holds only handshake records");
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        body.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    body
}

/// Re-frames a ClientHello stream into records whose bodies have the given sizes (the
/// last size repeats; the final record takes what is left).
fn reframe(stream: &[u8], sizes: &[usize]) -> Vec<u8> {
    let body = handshake_body(stream);
    let mut out = Vec::new();
    let mut rest = &body[..];
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i.min(sizes.len() - 1)].min(rest.len());
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// How many records `stream` holds.
fn record_count(stream: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while at < stream.len() {
        at += 5 + usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]]));
        count += 1;
    }
    count
}

/// Every proper prefix is `Incomplete` with `needed` past the prefix and within the
/// stream; the whole stream (and the stream with bytes after it) gives `expected`.
fn assert_every_prefix(what: &str, stream: &[u8], expected: &HelloParse) {
    for cut in 0..stream.len() {
        match parse_client_hello(&stream[..cut]) {
            HelloParse::Incomplete { needed } => assert!(
                needed > cut && needed <= stream.len(),
                "{what}: prefix {cut}/{}: needed {needed}",
                stream.len()
            ),
            other => panic!("{what}: prefix {cut}/{}: {other:?}", stream.len()),
        }
    }
    assert_eq!(&parse_client_hello(stream), expected, "{what}: whole");
    let mut longer = stream.to_vec();
    longer.extend_from_slice(&[0x17, 3, 3, 0, 4, 1, 2, 3, 4]);
    assert_eq!(
        &parse_client_hello(&longer),
        expected,
        "{what}: with bytes after it"
    );
}

#[test]
fn fixtures_are_what_the_readme_says() {
    let sizes = [
        ("openssl-s_client-clienthello.bin", 325),
        ("curl-clienthello.bin", 517),
        ("openssl-nosni-clienthello.bin", 297),
        ("openssl-tls12-clienthello.bin", 229),
        ("chromium-clienthello.bin", 2016),
    ];
    for (file, len) in sizes {
        assert_eq!(fixture(file).len(), len, "{file}");
    }
    // The rustls one carries a post-quantum key share: bigger than one Ethernet segment's
    // worth of the smaller ones, like the browser's.
    assert!(rustls_hello("rustls.example.com", &[]).len() > 1200);
}

#[test]
fn every_prefix_of_every_real_hello() {
    for (what, stream, expected) in corpus() {
        assert_every_prefix(what, &stream, &expected);
    }
}

#[test]
fn every_prefix_of_every_hello_reframed_into_many_records() {
    for (what, stream, expected) in corpus() {
        for sizes in [&[1][..], &[7], &[100], &[512], &[3, 1, 50, 2000], &[16_384]] {
            let framed = reframe(&stream, sizes);
            let what = format!("{what} in records of {sizes:?}");
            if record_count(&framed) > MAX_CLIENT_HELLO_RECORDS {
                // More records than any client sends: refused, not parsed.
                assert_eq!(parse_client_hello(&framed), HelloParse::Malformed, "{what}");
                continue;
            }
            assert_every_prefix(&what, &framed, &expected);
        }
    }
}

#[test]
fn record_count_bound_is_exact() {
    let curl = fixture("curl-clienthello.bin");
    let body_len = handshake_body(&curl).len();
    assert_eq!(body_len, 512);
    // 512 bytes in 2-byte records: exactly the bound, accepted.
    let at_bound = reframe(&curl, &[2]);
    assert_eq!(record_count(&at_bound), MAX_CLIENT_HELLO_RECORDS);
    assert_eq!(
        parse_client_hello(&at_bound),
        sni("curl.example.com", &[b"h2", b"http/1.1"])
    );
    // One more record (the first two bytes split in two): refused.
    let over = reframe(&curl, &[1, 1, 2]);
    assert_eq!(record_count(&over), MAX_CLIENT_HELLO_RECORDS + 1);
    assert_eq!(parse_client_hello(&over), HelloParse::Malformed);
    // Every prefix before the bound is reached is still only incomplete.
    let limit_offset = (MAX_CLIENT_HELLO_RECORDS) * 5 + 2 * (MAX_CLIENT_HELLO_RECORDS - 1);
    for cut in 0..limit_offset {
        assert!(
            matches!(
                parse_client_hello(&over[..cut]),
                HelloParse::Incomplete { .. }
            ),
            "prefix {cut}"
        );
    }
}

#[test]
fn not_tls_is_recognised_from_the_first_bytes() {
    let cases: [(&str, &[u8]); 7] = [
        ("http", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("http one byte", b"G"),
        ("ssh banner", b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"),
        ("tls alert record", &[21, 3, 3, 0, 2, 2, 40]),
        ("tls application data", &[23, 3, 3, 0, 3, 1, 2, 3]),
        ("sslv2 compatible hello", &[0x80, 0x2e, 0x01, 0x03, 0x01]),
        ("handshake type, wrong major version", &[22, 2, 0]),
    ];
    for (what, bytes) in cases {
        assert_eq!(parse_client_hello(bytes), HelloParse::NotTls, "{what}");
    }
}

#[test]
fn sni_forms() {
    let hello = |name: &[u8]| parse_client_hello(&build_client_hello(Some(name), &[]));
    // Sent as is: the routing table normalises, the parser does not.
    assert_eq!(hello(b"Api.Example.COM."), sni("Api.Example.COM.", &[]));
    assert_eq!(hello(&[b'a'; 255]), sni(&"a".repeat(255), &[]));
    // An empty host name, or one with a space or a control byte, is not a host name.
    for bad in [
        &b""[..],
        b"a b.example.com",
        b"a\0.example.com",
        b"caf\xc3\xa9.example",
    ] {
        assert_eq!(hello(bad), HelloParse::Malformed, "{bad:?}");
    }
    // No SNI extension at all, with and without ALPN.
    assert_eq!(
        parse_client_hello(&build_client_hello(None, &[])),
        HelloParse::NoSni { alpn: vec![] }
    );
    assert_eq!(
        parse_client_hello(&build_client_hello(None, &[b"h2", b"http/1.1"])),
        HelloParse::NoSni {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        }
    );
    assert_eq!(
        parse_client_hello(&build_client_hello(
            Some(b"x.example.com"),
            &[b"acme-tls/1"]
        )),
        sni("x.example.com", &[b"acme-tls/1"])
    );
}

#[test]
fn broken_framing_is_malformed() {
    let curl = fixture("curl-clienthello.bin");
    let framed = reframe(&curl, &[100]);
    // Second record not a handshake, or with a bad version.
    let mut wrong_type = framed.clone();
    wrong_type[105] = 23;
    assert_eq!(parse_client_hello(&wrong_type), HelloParse::Malformed);
    assert_eq!(
        parse_client_hello(&wrong_type[..106]),
        HelloParse::Malformed
    );
    let mut wrong_version = framed.clone();
    wrong_version[106] = 9;
    assert_eq!(parse_client_hello(&wrong_version), HelloParse::Malformed);
    // A zero-length record, and a record longer than TLS allows.
    assert_eq!(parse_client_hello(&[22, 3, 1, 0, 0]), HelloParse::Malformed);
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0x50, 0, 1]),
        HelloParse::Malformed
    );
    // A handshake message that is not a ClientHello (a ServerHello).
    let mut server_hello = curl.clone();
    server_hello[5] = 2;
    assert_eq!(parse_client_hello(&server_hello), HelloParse::Malformed);
    assert_eq!(
        parse_client_hello(&server_hello[..6]),
        HelloParse::Malformed
    );
}

#[test]
fn inconsistent_lengths_are_malformed() {
    // The handshake header claims less than the record carries: the message is cut in
    // the middle of its extensions.
    for file in [
        "openssl-s_client-clienthello.bin",
        "chromium-clienthello.bin",
    ] {
        let mut hello = fixture(file);
        let claimed =
            (usize::from(hello[6]) << 16) | (usize::from(hello[7]) << 8) | usize::from(hello[8]);
        let shorter = claimed - 40;
        hello[6..9].copy_from_slice(&u32::try_from(shorter).unwrap().to_be_bytes()[1..]);
        assert_eq!(parse_client_hello(&hello), HelloParse::Malformed, "{file}");
    }
    // The extensions block claims more than the message holds.
    let hello = build_client_hello(Some(b"x.example.com"), &[]);
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + 2 + 4 + 2;
    let mut overrun = hello.clone();
    overrun[ext_len_at] = 0x7f;
    assert_eq!(parse_client_hello(&overrun), HelloParse::Malformed);
    // The SNI extension claims 4 bytes more than the block holds.
    let mut sni_overrun = hello.clone();
    sni_overrun[ext_len_at + 5] += 4;
    assert_eq!(parse_client_hello(&sni_overrun), HelloParse::Malformed);
    // Bytes after the extensions block, inside the message.
    let mut trailing = hello.clone();
    trailing.extend_from_slice(&[0, 0]);
    trailing[4] += 2; // record length
    trailing[8] += 2; // handshake length
    assert_eq!(parse_client_hello(&trailing), HelloParse::Malformed);
    // Untouched, the same hello parses.
    assert_eq!(parse_client_hello(&hello), sni("x.example.com", &[]));
}

/// `hello` (from `build_client_hello`, one record) with `ext` appended to its extensions.
fn with_extension(mut hello: Vec<u8>, ext: &[u8]) -> Vec<u8> {
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + 2 + 4 + 2;
    let grow = |bytes: &mut [u8], by: usize| {
        let width = bytes.len();
        let mut value = [0u8; 8];
        value[8 - width..].copy_from_slice(bytes);
        let grown = u64::from_be_bytes(value) + by as u64;
        bytes.copy_from_slice(&grown.to_be_bytes()[8 - width..]);
    };
    grow(&mut hello[3..5], ext.len()); // record length
    grow(&mut hello[6..9], ext.len()); // handshake length
    grow(&mut hello[ext_len_at..ext_len_at + 2], ext.len()); // extensions block
    hello.extend_from_slice(ext);
    hello
}

#[test]
fn only_server_name_and_alpn_are_looked_into() {
    let hello = build_client_hello(Some(b"x.example.com"), &[b"h2"]);
    // supported_groups whose list length is odd: not the router's business (HAProxy and
    // nginx pass it on too); the backend's TLS stack answers it.
    let odd_groups = with_extension(hello.clone(), &[0, 10, 0, 3, 0, 1, 0x1d]);
    assert_eq!(
        parse_client_hello(&odd_groups),
        sni("x.example.com", &[b"h2"])
    );
    // An extension of an unknown type with arbitrary content.
    let unknown = with_extension(hello.clone(), &[0xfe, 0x01, 0, 2, 0xde, 0xad]);
    assert_eq!(parse_client_hello(&unknown), sni("x.example.com", &[b"h2"]));
    assert_every_prefix(
        "unknown extension",
        &unknown,
        &sni("x.example.com", &[b"h2"]),
    );
    // Its length overrunning the block: malformed, whatever its type.
    let mut overrun = with_extension(hello.clone(), &[0xfe, 0x01, 0, 2, 0xde, 0xad]);
    let last = overrun.len() - 3;
    overrun[last] = 3;
    assert_eq!(parse_client_hello(&overrun), HelloParse::Malformed);
    // A header cut short at the end of the block.
    let cut = with_extension(hello.clone(), &[0xfe, 0x01, 0]);
    assert_eq!(parse_client_hello(&cut), HelloParse::Malformed);
    // A second ALPN extension whose list overruns itself is still read, and refused.
    let bad_alpn = with_extension(hello, &[0, 16, 0, 3, 0, 9, 2]);
    assert_eq!(parse_client_hello(&bad_alpn), HelloParse::Malformed);
}

#[test]
fn oversized_hellos_are_too_large() {
    // A handshake message claiming 70,000 bytes: refused from its first 9 bytes.
    let claim = [22, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70];
    assert_eq!(parse_client_hello(&claim), HelloParse::TooLarge);
    // A message that fits 64 KiB with one record header, sent in full-size records: the
    // four record headers push the stream past 64 KiB. Incomplete until the record that
    // would cross the bound announces itself, then too large.
    let message_len = 65_520usize;
    let mut body = vec![1u8];
    body.extend_from_slice(&u32::try_from(message_len).unwrap().to_be_bytes()[1..]);
    body.resize(4 + message_len, 0);
    let mut stream = Vec::new();
    for chunk in body.chunks(16_384) {
        stream.extend_from_slice(&[22, 3, 3]);
        stream.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        stream.extend_from_slice(chunk);
    }
    assert_eq!(record_count(&stream), 4);
    assert!(4 + message_len + 5 <= MAX_CLIENT_HELLO_BYTES);
    assert!(stream.len() > MAX_CLIENT_HELLO_BYTES);
    let crossing_header_end = 3 * (16_384 + 5) + 5;
    for cut in (0..crossing_header_end).step_by(97) {
        assert!(
            matches!(
                parse_client_hello(&stream[..cut]),
                HelloParse::Incomplete { .. }
            ),
            "prefix {cut}"
        );
    }
    assert_eq!(
        parse_client_hello(&stream[..crossing_header_end]),
        HelloParse::TooLarge
    );
    assert_eq!(parse_client_hello(&stream), HelloParse::TooLarge);
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[test]
fn random_garbage_never_panics_and_is_never_a_hello() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5_000 {
        let len = (rng.next_u64() % 700) as usize;
        let mut bytes = rng.bytes(len);
        let answer = parse_client_hello(&bytes);
        if bytes.first().is_some_and(|&b| b != 22) {
            assert_eq!(answer, HelloParse::NotTls, "{bytes:?}");
        }
        // The same garbage behind a handshake record header.
        if bytes.len() < 3 {
            continue;
        }
        bytes[0] = 22;
        bytes[1] = 3;
        let answer = parse_client_hello(&bytes);
        assert!(
            matches!(
                answer,
                HelloParse::Malformed | HelloParse::Incomplete { .. } | HelloParse::TooLarge
            ),
            "{answer:?} from {bytes:?}"
        );
    }
}

#[test]
fn every_single_byte_corruption_of_real_hellos_is_handled() {
    for file in [
        "openssl-s_client-clienthello.bin",
        "chromium-clienthello.bin",
    ] {
        let hello = fixture(file);
        for at in 0..hello.len() {
            for flip in [0xff, 0x01, 0x80] {
                let mut bytes = hello.clone();
                bytes[at] ^= flip;
                if let HelloParse::Sni { name, .. } = parse_client_hello(&bytes) {
                    assert!(
                        !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
                        "{file}: byte {at} ^ {flip:#x}: SNI {name:?}"
                    );
                }
            }
        }
    }
}

// ---- the peek: reading a connection until the parser answers ----

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn peek_reads_one_byte_at_a_time_and_buffers_exactly_what_it_read() {
    let mut cases = corpus();
    let tls12 = fixture("openssl-tls12-clienthello.bin");
    cases.push((
        "openssl-tls12 in 1-byte records",
        reframe(&tls12, &[1]),
        sni("tls12.example.com", &[b"http/1.1"]),
    ));
    for (what, hello, expected) in cases {
        // A 1-byte pipe: every write and every read moves one byte.
        let (mut client, mut server) = tokio::io::duplex(1);
        let bytes = hello.clone();
        let writer = tokio::spawn(async move {
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
            }
            client
        });
        let peeked = peek_client_hello(&mut server, LONG).await.unwrap();
        assert_eq!(peeked.buffered, hello, "{what}: buffered");
        let got = match expected {
            HelloParse::Sni { name, alpn } => (Some(name), alpn),
            HelloParse::NoSni { alpn } => (None, alpn),
            other => panic!("{other:?}"),
        };
        assert_eq!((peeked.sni, peeked.alpn), got, "{what}");
        // Nothing was read past the hello: what the client sends next is still there.
        let mut client = writer.await.unwrap();
        let mut next = [0u8; 4];
        let (wrote, read) = tokio::join!(client.write_all(b"next"), server.read_exact(&mut next));
        wrote.unwrap();
        read.unwrap();
        assert_eq!(&next, b"next");
    }
}

#[tokio::test]
async fn peek_keeps_bytes_that_arrived_with_the_hello_and_replays_them() {
    let hello = fixture("curl-clienthello.bin");
    let mut sent = hello.clone();
    sent.extend_from_slice(b"\x14\x03\x03\x00\x01\x01early");
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&sent).await.unwrap();
    let peeked = peek_client_hello(&mut server, LONG).await.unwrap();
    assert_eq!(peeked.sni.as_deref(), Some("curl.example.com"));
    assert_eq!(peeked.buffered, sent, "every byte read is kept");
    // The replay stream yields them first, then the live stream.
    client.write_all(b" and later").await.unwrap();
    drop(client);
    let mut replay = ReplayStream::new(peeked.buffered, server);
    let mut all = Vec::new();
    replay.read_to_end(&mut all).await.unwrap();
    let mut expected = sent;
    expected.extend_from_slice(b" and later");
    assert_eq!(all, expected);
}

#[tokio::test]
async fn peek_gives_up_after_the_timeout() {
    let hello = fixture("chromium-clienthello.bin");
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let started = Instant::now();
    let result = peek_client_hello(&mut server, Duration::from_millis(200)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(PeekError::Failure(PeekFailure::Timeout))),
        "{result:?}"
    );
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    drop(client);
}

#[tokio::test]
async fn peek_fails_fast_on_bad_input() {
    let mut oversized = vec![22, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70];
    oversized.resize(4096, 0);
    let half = fixture("curl-clienthello.bin")[..200].to_vec();
    let cases: [(&str, Vec<u8>, bool, PeekFailure); 5] = [
        (
            "http",
            b"GET / HTTP/1.1\r\n".to_vec(),
            false,
            PeekFailure::NotTls,
        ),
        (
            "alert",
            vec![21, 3, 3, 0, 2, 2, 40],
            false,
            PeekFailure::NotTls,
        ),
        (
            "server hello",
            vec![22, 3, 3, 0, 4, 2, 0, 0, 0],
            false,
            PeekFailure::Malformed,
        ),
        (
            "claims 70,000 bytes",
            oversized,
            false,
            PeekFailure::TooLarge,
        ),
        ("closed half way", half, true, PeekFailure::Timeout),
    ];
    for (what, bytes, close, expected) in cases {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&bytes).await.unwrap();
        if close {
            drop(client);
        } else {
            // Keep the client open: only the bytes may end the peek, not EOF.
            tokio::spawn(async move {
                let _keep = client;
                tokio::time::sleep(LONG).await;
            });
        }
        let started = Instant::now();
        let result = peek_client_hello(&mut server, LONG).await;
        assert!(
            matches!(result, Err(PeekError::Failure(f)) if f == expected),
            "{what}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: not at once"
        );
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += buf.filled().len() - before;
        result
    }
}

#[tokio::test]
async fn peek_never_reads_more_than_64_kib() {
    // A well-formed start whose records keep coming: 16 KiB records of a message claiming
    // 65,520 bytes, 200 KiB of them offered at once.
    let mut body = vec![1u8, 0x00, 0xff, 0xf0];
    body.resize(200 * 1024, 0);
    let mut stream = Vec::new();
    for chunk in body.chunks(16_384) {
        stream.extend_from_slice(&[22, 3, 3]);
        stream.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        stream.extend_from_slice(chunk);
    }
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    client.write_all(&stream).await.unwrap();
    let mut counting = Counting {
        inner: server,
        read: 0,
    };
    let result = peek_client_hello(&mut counting, LONG).await;
    assert!(
        matches!(result, Err(PeekError::Failure(PeekFailure::TooLarge))),
        "{result:?}"
    );
    assert!(
        counting.read <= MAX_CLIENT_HELLO_BYTES,
        "read {}",
        counting.read
    );
}
