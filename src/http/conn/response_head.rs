//! Encodes a response head for a client: the status line, the fields as the request path
//! left them, and what HTTP/1.1 framing needs (RFC 9112 §6): `content-length` when the
//! body's size is known, `transfer-encoding: chunked` when it is not, a close-delimited
//! body for an HTTP/1.0 client, `connection: close` when the connection ends after this
//! response, and `date` when the response has none (RFC 9110 §6.6.1). Also what the
//! request path hands the encoder: an `Answer`, the response with the backend's fields
//! when they were kept as they arrived.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use hyper::body::SizeHint;
use hyper::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use hyper::http::response::Parts;
use hyper::{Response, StatusCode};

use crate::http::client::ProxyBody;
use crate::http::exchange::raw_fields::RawFields;
use crate::http::headers::parse_content_length;
use crate::http::headers::Tokens;

/// How the response body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body is written (HEAD, 1xx, 204, 304), whatever the body yields.
    NoBody,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// The body runs until the connection closes (HTTP/1.0 client, unknown length).
    UntilClose,
}

/// What the request path answers a request with: the response, and the backend's fields
/// when they were kept as they arrived (`exchange/raw_fields.rs`; the response's header
/// map is then empty of them). They travel beside the response rather than in its
/// extensions, which would cost three allocations per response.
pub struct Answer {
    /// The response to write.
    pub response: Response<ProxyBody>,
    /// The backend's end-to-end fields, written before the map's.
    pub raw_fields: Option<RawFields>,
}

impl From<Response<ProxyBody>> for Answer {
    fn from(response: Response<ProxyBody>) -> Self {
        Answer {
            response,
            raw_fields: None,
        }
    }
}

/// What the head depends on from its request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    /// The request was HEAD: the fields describe a body that is not sent.
    pub head: bool,
    /// The client speaks HTTP/1.0 (no chunked coding).
    pub http10: bool,
    /// The connection becomes a tunnel after this (101) head: no framing fields.
    pub upgrade: bool,
}

/// Writes the head of a response with `parts` (and `raw_fields`, the backend's fields as
/// they arrived, if any) and a body of `size` into `out`. Clears `keep_alive` when the
/// connection cannot carry another request after it (the response says
/// `Connection: close`, or its body runs to the close).
pub fn encode(
    parts: &Parts,
    raw_fields: Option<&RawFields>,
    size: &SizeHint,
    request: RequestFacts,
    keep_alive: &mut bool,
    out: &mut BytesMut,
) -> ResponseFraming {
    let status = parts.status;
    let headers = &parts.headers;
    // The status line and the fields are about 250 bytes for a typical proxied response.
    let reason = status.canonical_reason().unwrap_or("");
    out.reserve(256);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
    // What framing depends on, noted while the fields are written (comparing a known
    // name is cheap; looking it up again would hash it).
    let mut tokens = Tokens::default();
    let mut length = None;
    let mut coded = false;
    let mut dated = false;
    // A backend's fields kept as they arrived (`exchange/raw_fields.rs`): no framing
    // or Connection field among them, and the map is empty.
    if let Some(raw) = raw_fields {
        raw.write(out);
        length = raw.length;
        dated = raw.dated;
    }
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
        if *name == CONTENT_LENGTH {
            length = parse_content_length(value.as_bytes());
        } else if *name == CONNECTION {
            tokens.note(value.as_bytes());
        } else if *name == TRANSFER_ENCODING {
            coded = true;
        } else if *name == DATE {
            dated = true;
        }
    }
    if request.upgrade && status == StatusCode::SWITCHING_PROTOCOLS {
        put_date(dated, out);
        out.put_slice(b"\r\n");
        return ResponseFraming::NoBody;
    }
    if tokens.close {
        *keep_alive = false;
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || request.head
    {
        ResponseFraming::NoBody
    } else if coded && !request.http10 {
        // A coding the request path left in place (none does today): chunked is last.
        ResponseFraming::Chunked
    } else if let Some(n) = length {
        ResponseFraming::Length(n)
    } else if let Some(n) = size.exact() {
        put_field(out, b"content-length", itoa(n, &mut [0; 20]));
        ResponseFraming::Length(n)
    } else if request.http10 {
        *keep_alive = false;
        ResponseFraming::UntilClose
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        ResponseFraming::Chunked
    };
    if !*keep_alive && !tokens.close {
        out.put_slice(b"connection: close\r\n");
    } else if *keep_alive && request.http10 && !tokens.keep_alive {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    put_date(dated, out);
    out.put_slice(b"\r\n");
    framing
}

/// The head tollgate answers a request head it refuses with (400, 414, 431), closing.
pub fn refusal(status: u16, out: &mut BytesMut) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n");
    put_date(false, out);
    out.put_slice(b"\r\n");
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_date(dated: bool, out: &mut BytesMut) {
    if dated {
        return;
    }
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if cache.0 != secs || cache.1.is_empty() {
            cache.0 = secs;
            cache.1 = httpdate::fmt_http_date(now);
        }
        put_field(out, b"date", cache.1.as_bytes());
    });
}

thread_local! {
    /// The `date` value of the current second (formatted once per second per thread).
    static DATE_CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// `n` in decimal, written into `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes the chunk-size line of a chunk of `len` bytes.
pub fn chunk_size_line(len: usize, out: &mut BytesMut) {
    let mut buf = [0u8; 18];
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    out.put_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const GET: RequestFacts = RequestFacts {
        head: false,
        http10: false,
        upgrade: false,
    };

    fn encoded(
        status: u16,
        fields: &[(&'static str, &'static str)],
        size: SizeHint,
        request: RequestFacts,
        keep_alive: bool,
    ) -> (String, ResponseFraming, bool) {
        let mut parts = hyper::Response::new(()).into_parts().0;
        parts.status = StatusCode::from_u16(status).unwrap();
        for (name, value) in fields {
            parts.headers.append(*name, HeaderValue::from_static(value));
        }
        let mut keep = keep_alive;
        let mut out = BytesMut::new();
        let framing = encode(&parts, None, &size, request, &mut keep, &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), framing, keep)
    }

    #[test]
    fn known_length_gets_content_length_and_a_date() {
        let (head, framing, keep) = encoded(
            200,
            &[("content-type", "text/plain")],
            SizeHint::with_exact(12),
            GET,
            true,
        );
        assert!(head.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\ndate: "
        ));
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        assert_eq!(framing, ResponseFraming::Length(12));
        assert!(keep);
        // A length the fields already state is kept as it is.
        let (head, framing, _) = encoded(
            200,
            &[("content-length", "5"), ("date", "x")],
            SizeHint::default(),
            GET,
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: x\r\n\r\n"
        );
        assert_eq!(framing, ResponseFraming::Length(5));
    }

    #[test]
    fn unknown_length_is_chunked_for_1_1_and_runs_to_the_close_for_1_0() {
        let (head, framing, keep) = encoded(200, &[("date", "x")], SizeHint::default(), GET, true);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, ResponseFraming::Chunked);
        assert!(keep);
        let old = RequestFacts {
            http10: true,
            ..GET
        };
        let (head, framing, keep) = encoded(200, &[("date", "x")], SizeHint::default(), old, true);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: x\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(framing, ResponseFraming::UntilClose);
        assert!(!keep);
        let (head, _, keep) = encoded(200, &[("date", "x")], SizeHint::with_exact(0), old, true);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        );
        assert!(keep);
    }

    #[test]
    fn bodiless_statuses_and_head_and_close() {
        for (status, request) in [
            (204, GET),
            (304, GET),
            (200, RequestFacts { head: true, ..GET }),
        ] {
            let (head, framing, _) = encoded(
                status,
                &[("date", "x")],
                SizeHint::with_exact(9),
                request,
                true,
            );
            assert!(!head.contains("content-length"), "{head}");
            assert_eq!(framing, ResponseFraming::NoBody);
        }
        let (head, _, keep) = encoded(
            200,
            &[("connection", "close"), ("date", "x")],
            SizeHint::with_exact(0),
            GET,
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ndate: x\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(!keep);
        let (head, _, _) = encoded(200, &[("date", "x")], SizeHint::with_exact(0), GET, false);
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
        let up = RequestFacts {
            upgrade: true,
            ..GET
        };
        let (head, framing, _) = encoded(
            101,
            &[("upgrade", "websocket"), ("date", "x")],
            SizeHint::default(),
            up,
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\ndate: x\r\n\r\n"
        );
        assert_eq!(framing, ResponseFraming::NoBody);
    }

    #[test]
    fn refusal_and_chunk_lines() {
        let mut out = BytesMut::new();
        refusal(431, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: "));
        let mut out = BytesMut::new();
        for len in [0, 9, 10, 255, 4096, 1 << 20] {
            chunk_size_line(len, &mut out);
        }
        assert_eq!(&out[..], b"0\r\n9\r\na\r\nff\r\n1000\r\n100000\r\n");
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }
}
