//! Property tests that run in `cargo test` (the stable-toolchain stand-in for fuzzing):
//! thousands of seeded random inputs and mutations of real inputs through the
//! ClientHello parser, the config loader and the HTTP request-path helpers. Each must
//! answer (any answer) without panicking, within its bounds. A failing seed is printed
//! so it can become a regression test.

use tollgate::http::headers;
use tollgate::tls::client_hello::{parse_client_hello, HelloParse, MAX_CLIENT_HELLO_BYTES};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Applies 1–8 random edits (flip, insert, delete, duplicate a span) to `input`.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=8) {
        if out.is_empty() {
            out.push(rng.u8(..));
            continue;
        }
        let at = rng.usize(..out.len());
        match rng.u8(..4) {
            0 => out[at] = rng.u8(..),
            1 => out.insert(at, rng.u8(..)),
            2 => {
                out.remove(at);
            }
            _ => {
                let end = (at + rng.usize(1..=32)).min(out.len());
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
        }
    }
    out
}

#[test]
fn client_hello_parser_answers_every_mutation_of_real_hellos() {
    let hellos = [
        fixture("tests/data/chromium-clienthello.bin"),
        fixture("tests/data/curl-clienthello.bin"),
        fixture("tests/data/openssl-s_client-clienthello.bin"),
        fixture("tests/data/openssl-nosni-clienthello.bin"),
        fixture("tests/data/openssl-tls12-clienthello.bin"),
    ];
    for seed in 0..4000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let base = &hellos[rng.usize(..hellos.len())];
        let input = mutate(&mut rng, base);
        let answer = std::panic::catch_unwind(|| parse_client_hello(&input))
            .unwrap_or_else(|_| panic!("parser panicked on seed {seed}"));
        if let HelloParse::Incomplete { needed } = answer {
            // Asks for more than it has, within the 64 KiB bound.
            assert!(
                needed > input.len(),
                "seed {seed}: needs {needed} of {}",
                input.len()
            );
            assert!(
                needed <= MAX_CLIENT_HELLO_BYTES,
                "seed {seed}: needs {needed}"
            );
        }
        // Every prefix answers too (a prefix of a valid hello is never a hello).
        let cut = rng.usize(..=input.len());
        let _ = parse_client_hello(&input[..cut]);
    }
}

#[test]
fn config_loader_answers_every_mutation_of_the_sample() {
    let sample = fixture("conf/tollgate.yaml");
    let mut accepted = 0;
    for seed in 0..1500u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let input = mutate(&mut rng, &sample);
        let Ok(text) = String::from_utf8(input) else {
            continue;
        };
        let answer = std::panic::catch_unwind(|| tollgate::config::from_yaml(&text))
            .unwrap_or_else(|_| panic!("config loader panicked on seed {seed}"));
        match answer {
            Ok(_) => accepted += 1,
            Err(e) => {
                // Every refusal names where: a key path or "(top)" before the colon.
                let message = e.to_string();
                assert!(message.contains(": "), "seed {seed}: {message}");
            }
        }
    }
    // Mutations of comments and whitespace keep some files valid: the property saw both.
    assert!(accepted > 0);
}

#[test]
fn request_heads_and_bodies_from_any_byte_stream_without_panicking() {
    use bytes::BytesMut;
    use hyper::body::Body;
    use tollgate::http::conn::{request_body, request_head};
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut heads = 0;
    for seed in 0..3000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let input = mutate(&mut rng, request);
        let framing =
            |buf: &mut BytesMut| request_head::parse(buf, 4096).map(|h| h.map(|h| h.framing));
        let whole = framing(&mut BytesMut::from(&input[..]));
        // Arriving in random pieces, the first answer that is not "read more" is the
        // answer for the whole input.
        let mut buf = BytesMut::new();
        let mut rest = &input[..];
        let mut in_pieces = Ok(None);
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(64));
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            in_pieces = framing(&mut buf.clone());
            if !matches!(in_pieces, Ok(None)) {
                break;
            }
        }
        assert_eq!(whole, in_pieces, "seed {seed}");
        // The body after a head that parsed is read to its end or refused, never more.
        let mut buf = BytesMut::from(&input[..]);
        let Ok(Some(head)) = request_head::parse(&mut buf, 4096) else {
            continue;
        };
        heads += 1;
        let (mut body, feed) = request_body::channel(head.framing, false);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut feed = feed;
        for _ in 0..1000 {
            match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                std::task::Poll::Ready(None | Some(Err(_))) => break,
                std::task::Poll::Ready(Some(Ok(_))) => {}
                std::task::Poll::Pending => match feed.as_mut().map(|f| f.feed(&mut buf)) {
                    Some(request_body::FeedStep::NeedBytes) => {
                        feed.as_mut().unwrap().client_closed();
                    }
                    Some(_) => {}
                    None => panic!("a body without a feed waited"),
                },
            }
        }
        assert!(
            body.is_end_stream() || feed.as_ref().is_some_and(|f| f.is_failed()),
            "seed {seed}"
        );
    }
    assert!(heads > 0);
}

#[test]
fn header_helpers_answer_any_value() {
    for seed in 0..5000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let len = rng.usize(0..300);
        let raw: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = headers::valid_host_header(&raw);
        let _ = headers::strip_port(&String::from_utf8_lossy(&raw));
        let mut map = hyper::HeaderMap::new();
        for name in [
            "connection",
            "content-length",
            "transfer-encoding",
            "keep-alive",
            "x-forwarded-for",
        ] {
            if rng.bool() {
                if let Ok(v) = hyper::header::HeaderValue::from_bytes(&raw) {
                    map.append(name, v);
                }
            }
        }
        let _ = headers::has_conflicting_framing(&map);
        let _ = headers::keep_alive_timeout(&raw);
        let upgrade = headers::is_upgrade_request(&map);
        headers::strip_hop_by_hop(&mut map, upgrade);
        let client = headers::ClientIdentity::new("192.0.2.1".parse().unwrap());
        headers::add_forwarding(&mut map, &client, "https", None);
        assert!(map.contains_key("x-forwarded-for"), "seed {seed}");
    }
}
