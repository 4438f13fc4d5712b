//! Sans-io parser of a client's request head (request line and fields) into
//! `http::request::Parts`, with how its body is framed (RFC 9112 §6), whether the
//! connection may carry another request, and the facts the connection needs about it
//! (`Expect: 100-continue`, an upgrade, Content-Length next to Transfer-Encoding). Field
//! values and the target share one buffer with the head instead of being copied.

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, EXPECT, UPGRADE};
use hyper::{HeaderMap, Method, Uri, Version};

use crate::http::headers::{field_spans, FramingFields};

/// Most request header fields accepted (hyper's default; 431 above it).
pub const MAX_FIELDS: usize = 100;

/// How the request body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields.
    pub parts: hyper::http::request::Parts,
    /// How the body is delimited.
    pub framing: RequestFraming,
    /// Whether the client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field.
    pub upgrade: bool,
    /// Content-Length next to Transfer-Encoding: the request path refuses it (400 and
    /// close) so the refusal is counted and logged like any answer of the listener.
    pub conflicting: bool,
}

/// Why a request head was refused (the connection answers with `status()` and closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestHeadError {
    /// A request line or field that does not parse, or fields the header map refuses.
    #[error("malformed request head")]
    Malformed,
    /// A head over `limits.max_request_header_bytes` or with more than `MAX_FIELDS` fields.
    #[error("request head over limits.max_request_header_bytes or {MAX_FIELDS} fields")]
    TooLarge,
    /// A request target longer than a URI may be.
    #[error("request target too long")]
    UriTooLong,
    /// A Content-Length that is not one number, a Transfer-Encoding whose final coding is
    /// not chunked, or a Transfer-Encoding on HTTP/1.0 (RFC 9112 §6.1, §6.3).
    #[error("request body framing cannot be determined")]
    BadFraming,
}

impl RequestHeadError {
    /// The status the connection answers with before closing.
    pub fn status(self) -> u16 {
        match self {
            RequestHeadError::TooLarge => 431,
            RequestHeadError::UriTooLong => 414,
            RequestHeadError::Malformed | RequestHeadError::BadFraming => 400,
        }
    }
}

/// Parses the head at the front of `buf`, refusing one over `max_head` bytes.
/// `Ok(None)`: incomplete, read more. On success the head's bytes are taken off `buf`;
/// what follows (body bytes, a pipelined request) stays.
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, RequestHeadError> {
    // Left uninitialised: httparse writes only the fields it finds.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    );
    let used = match parsed {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(RequestHeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestHeadError::TooLarge),
        Err(_) => return Err(RequestHeadError::Malformed),
    };
    if used > max_head {
        return Err(RequestHeadError::TooLarge);
    }
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(RequestHeadError::Malformed);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(RequestHeadError::Malformed);
    };
    // Where the target and each field sit in the head, to slice them out of one frozen
    // buffer (on the stack: no allocation per request). The head is bounded by
    // `max_head`, far below 4 GiB, so offsets fit.
    let base = buf.as_ptr() as usize;
    let target_span = (target.as_ptr() as usize - base, target.len());
    let count = request.headers.len();
    let spans = field_spans(buf.as_ptr(), request.headers);
    let head: Bytes = buf.split_to(used).freeze();
    let Some(target) = head.get(target_span.0..target_span.0 + target_span.1) else {
        return Err(RequestHeadError::Malformed);
    };
    let uri = match Uri::from_maybe_shared(head.slice_ref(target)) {
        Ok(uri) => uri,
        // `http` refuses targets of 64 KiB and more (hyper answers those with 414).
        Err(_) if target.len() >= u16::MAX as usize - 1 => {
            return Err(RequestHeadError::UriTooLong)
        }
        Err(_) => return Err(RequestHeadError::Malformed),
    };
    // Room for the forwarding fields the request path adds, so the map does not grow.
    let mut headers = HeaderMap::with_capacity(count + 6);
    // What framing and the connection depend on, noted while the fields go into the map.
    let mut fields = FramingFields::default();
    let mut has_upgrade = false;
    let mut expect = false;
    for &(name_start, name_len, value_start, value_len) in &spans {
        let name_range = name_start as usize..(name_start + name_len) as usize;
        let value_range = value_start as usize..(value_start + value_len) as usize;
        let (Some(name), Some(value)) = (head.get(name_range), head.get(value_range)) else {
            return Err(RequestHeadError::Malformed);
        };
        let Ok(name) = HeaderName::from_bytes(name) else {
            return Err(RequestHeadError::Malformed);
        };
        if !fields.note(&name, value) {
            if name == UPGRADE {
                has_upgrade = true;
            } else if name == EXPECT {
                expect = value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice_ref(value)) else {
            return Err(RequestHeadError::Malformed);
        };
        headers.append(name, value);
    }
    let FramingFields {
        length,
        coding,
        tokens,
    } = fields;
    let framing = match (coding, length) {
        (Some(chunked), _) => {
            if version == Version::HTTP_10 || !chunked {
                return Err(RequestHeadError::BadFraming);
            }
            RequestFraming::Chunked
        }
        (None, None | Some(Ok(0))) => RequestFraming::Empty,
        (None, Some(Ok(n))) => RequestFraming::Length(n),
        (None, Some(Err(()))) => return Err(RequestHeadError::BadFraming),
    };
    let keep_alive = if version == Version::HTTP_10 {
        tokens.keep_alive && !tokens.close
    } else {
        !tokens.close
    };
    let expect_continue = version == Version::HTTP_11 && framing != RequestFraming::Empty && expect;
    let upgrade = has_upgrade && tokens.upgrade;
    let mut parts = hyper::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        conflicting: length.is_some() && framing == RequestFraming::Chunked,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request head as curl sends it, with a body after it.
    const CURL: &[u8] = b"POST /api/items?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";

    fn parse_all(
        input: &[u8],
        max: usize,
    ) -> Result<Option<(RequestHead, Vec<u8>)>, RequestHeadError> {
        let mut buf = BytesMut::from(input);
        Ok(parse(&mut buf, max)?.map(|h| (h, buf.to_vec())))
    }

    fn head(input: &str) -> Result<RequestHead, RequestHeadError> {
        Ok(parse_all(input.as_bytes(), 64 * 1024)?.expect("complete").0)
    }

    #[test]
    fn every_prefix_of_a_real_head() {
        let head_len = CURL.len() - 5;
        for cut in 0..head_len {
            assert!(
                parse_all(&CURL[..cut], 64 * 1024).unwrap().is_none(),
                "prefix {cut}"
            );
        }
        let (head, rest) = parse_all(CURL, 64 * 1024).unwrap().unwrap();
        assert_eq!(rest, b"hello");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/api/items");
        assert_eq!(head.parts.uri.query(), Some("page=2"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.framing, RequestFraming::Length(5));
        assert!(head.keep_alive && !head.expect_continue && !head.upgrade && !head.conflicting);
        assert_eq!(head.parts.headers.get("host").unwrap(), "app.example.com");
        assert_eq!(head.parts.headers.len(), 5);
    }

    #[test]
    fn pipelined_requests_leave_the_next_in_the_buffer() {
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = BytesMut::from(&two[..]);
        let first = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(first.parts.uri.path(), "/a");
        let second = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(second.parts.uri.path(), "/b");
        assert!(buf.is_empty());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let t = |extra: &str| head(&format!("POST / HTTP/1.1\r\nHost: x\r\n{extra}\r\n"));
        assert_eq!(t("").unwrap().framing, RequestFraming::Empty);
        assert_eq!(
            t("Content-Length: 0\r\n").unwrap().framing,
            RequestFraming::Empty
        );
        assert_eq!(
            t("Content-Length: 7, 7\r\n").unwrap().framing,
            RequestFraming::Length(7)
        );
        assert_eq!(
            t("Transfer-Encoding: gzip, chunked\r\n").unwrap().framing,
            RequestFraming::Chunked
        );
        let both = t("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n").unwrap();
        assert_eq!(both.framing, RequestFraming::Chunked);
        assert!(both.conflicting);
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Transfer-Encoding: chunked, identity\r\n",
            "Transfer-Encoding: xchunked\r\n",
        ] {
            assert_eq!(t(bad).unwrap_err(), RequestHeadError::BadFraming, "{bad:?}");
        }
        let old = head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(old.unwrap_err(), RequestHeadError::BadFraming);
    }

    #[test]
    fn keep_alive_expect_and_upgrade() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let expect = head("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(expect.unwrap().expect_continue);
        // No body: nothing to continue.
        assert!(
            !head("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .expect_continue
        );
        let ws = head("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(ws.unwrap().upgrade);
        assert!(
            !head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .upgrade
        );
    }

    #[test]
    fn limits_and_malformed_heads() {
        let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_all(big.as_bytes(), 1024).unwrap_err(),
            RequestHeadError::TooLarge
        );
        // Incomplete but already over the limit.
        assert_eq!(
            parse_all(&big.as_bytes()[..1500], 1024).unwrap_err(),
            RequestHeadError::TooLarge
        );
        assert!(parse_all(big.as_bytes(), 4096).unwrap().is_some());
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(&many).unwrap_err(), RequestHeadError::TooLarge);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000));
        assert_eq!(
            parse_all(long.as_bytes(), 128 * 1024).unwrap_err(),
            RequestHeadError::UriTooLong
        );
        for bad in [
            "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            "GET /a\0b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A : b\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                RequestHeadError::Malformed,
                "{bad:?}"
            );
        }
    }
}
