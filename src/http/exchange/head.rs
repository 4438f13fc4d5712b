//! Sans-io parser of a backend's response head (status line and fields) into
//! `http::response::Parts`, with how its body is framed (RFC 9112 §6.3) and whether the
//! connection may carry another request. Field values share one buffer with the head
//! instead of being copied one by one. The hop-by-hop fields (RFC 9110 §7.6.1) never
//! enter the map, except in a 101 answer, whose upgrade fields may pass through.

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, CONNECTION};
use hyper::{HeaderMap, Method, StatusCode, Version};

use super::raw_fields::RawFields;
use crate::http::headers::{
    field_spans, is_hop_by_hop, keep_alive_timeout, strip_hop_by_hop, FramingFields,
};

/// Largest response head accepted from a backend.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response header fields accepted from a backend (hyper's default).
pub const MAX_FIELDS: usize = 100;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the backend closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and the end-to-end fields (all fields in a 101).
    pub parts: hyper::http::response::Parts,
    /// The `timeout=` of a Keep-Alive field, in seconds.
    pub keep_alive_secs: Option<u64>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
    /// A final response's end-to-end fields as they arrived, when the caller asked for
    /// them (the header map is then empty).
    pub raw_fields: Option<RawFields>,
}

/// Why a response head was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or a status line or field that does not parse.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// A head over `MAX_HEAD_BYTES` or with more than `MAX_FIELDS` fields.
    #[error("response head over {MAX_HEAD_BYTES} bytes or {MAX_FIELDS} fields")]
    TooLarge,
    /// A field name or value the header map refuses.
    #[error("invalid response header field")]
    BadField,
    /// Content-Length values that are not one number.
    #[error("invalid Content-Length")]
    BadContentLength,
}

/// Parses the head at the front of `buf`. `Ok(None)`: incomplete, read more. On success
/// the head's bytes are taken off `buf`; what follows (body bytes) stays. With
/// `raw_fields`, a final response's end-to-end fields are kept as they arrived
/// (`ResponseHead::raw_fields`), and its header map stays empty.
pub fn parse(
    buf: &mut BytesMut,
    method: &Method,
    raw_fields: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    // Left uninitialised: httparse writes only the fields it finds.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let used = match parsed {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(err) => return Err(HeadError::Malformed(err)),
    };
    if used > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let code = response.code.unwrap_or(0);
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field's name and value sit in the head (on the stack: no allocation
    // per response).
    let count = response.headers.len();
    let spans = field_spans(buf.as_ptr(), response.headers);
    let head: Bytes = buf.split_to(used).freeze();
    let Ok(status) = StatusCode::from_u16(code) else {
        return Err(HeadError::Malformed(httparse::Error::Status));
    };
    if raw_fields && code >= 200 {
        if let Some(collected) = RawFields::collect(&head, &spans) {
            let mut head = finish(method, status, version, collected.framing)?;
            head.keep_alive_secs = collected.keep_alive_secs;
            head.raw_fields = Some(collected.fields);
            return Ok(Some(head));
        }
    }
    let mut headers = HeaderMap::with_capacity(count);
    // What framing and keep-alive depend on, noted while the fields go into the map.
    let mut fields = FramingFields::default();
    // Hop-by-hop fields are dropped here rather than looked for in the map afterwards;
    // a 101 keeps them for the proxy to pass an upgrade through.
    let end_to_end_only = code != 101;
    let mut keep_alive_secs = None;
    for &(name_start, name_len, value_start, value_len) in &spans {
        let name_range = name_start as usize..name_start as usize + name_len as usize;
        let Some(name_bytes) = head.get(name_range) else {
            return Err(HeadError::BadField);
        };
        let Ok(name) = HeaderName::from_bytes(name_bytes) else {
            return Err(HeadError::BadField);
        };
        let value_range = value_start as usize..value_start as usize + value_len as usize;
        let Some(raw) = head.get(value_range.clone()) else {
            return Err(HeadError::BadField);
        };
        fields.note(&name, raw);
        if end_to_end_only && is_hop_by_hop(&name) {
            if name.as_str() == "keep-alive" {
                keep_alive_secs = keep_alive_timeout(raw);
            }
            // A Connection field that names other fields stays until they are removed
            // with it (below).
            if !(name == CONNECTION && fields.tokens.names_fields) {
                continue;
            }
        }
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(value_range)) else {
            return Err(HeadError::BadField);
        };
        headers.append(name, value);
    }
    if end_to_end_only && fields.tokens.names_fields {
        strip_hop_by_hop(&mut headers, false);
    }
    let mut head = finish(method, status, version, fields)?;
    head.keep_alive_secs = keep_alive_secs;
    head.parts.headers = headers;
    Ok(Some(head))
}

/// The head of a `status` response with what its fields said about framing and the
/// connection, without fields yet.
fn finish(
    method: &Method,
    status: StatusCode,
    version: Version,
    fields: FramingFields,
) -> Result<ResponseHead, HeadError> {
    let FramingFields {
        length,
        coding,
        tokens,
    } = fields;
    let framing = framing(method, status, coding, length)?;
    let keep_alive = match framing {
        BodyFraming::UntilClose => false,
        // Both framings at once: the response is read as chunked, the connection not
        // trusted again.
        _ if coding.is_some() && length.is_some() => false,
        _ if version == Version::HTTP_10 => tokens.keep_alive && !tokens.close,
        _ => !tokens.close,
    } && status != StatusCode::SWITCHING_PROTOCOLS;
    let mut parts = hyper::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    Ok(ResponseHead {
        parts,
        keep_alive_secs: None,
        framing,
        keep_alive,
        raw_fields: None,
    })
}

/// The response's body framing (RFC 9112 §6.3) from what the parse noted: `coding` is
/// `Some(chunked?)` when a Transfer-Encoding field was present, `length` the
/// Content-Length (an error when its values are not one number).
fn framing(
    method: &Method,
    status: StatusCode,
    coding: Option<bool>,
    length: Option<Result<u64, ()>>,
) -> Result<BodyFraming, HeadError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Empty);
    }
    // Chunked only when it is the final coding; anything else runs to the close.
    if let Some(chunked) = coding {
        return Ok(if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        });
    }
    Ok(match length {
        None => BodyFraming::UntilClose,
        Some(Err(())) => return Err(HeadError::BadContentLength),
        Some(Ok(0)) => BodyFraming::Empty,
        Some(Ok(n)) => BodyFraming::Length(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 12:13:16 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Backend: a\r\n\r\nhello";

    fn parse_all(
        input: &[u8],
        method: &Method,
    ) -> Result<Option<(ResponseHead, Vec<u8>)>, HeadError> {
        let mut buf = BytesMut::from(input);
        Ok(parse(&mut buf, method, false)?.map(|h| (h, buf.to_vec())))
    }

    /// Parses with the fields kept as they arrived; `None` while incomplete.
    fn parse_raw(input: &[u8], method: &Method) -> Result<Option<ResponseHead>, HeadError> {
        parse(&mut BytesMut::from(input), method, true)
    }

    fn raw(head: &ResponseHead) -> &RawFields {
        head.raw_fields.as_ref().unwrap()
    }

    fn written(head: &ResponseHead) -> String {
        let mut out = BytesMut::new();
        raw(head).write(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn raw_fields_on_every_prefix_of_a_real_head() {
        let head_len = NGINX.len() - 5;
        for cut in 0..head_len {
            assert!(
                parse_raw(&NGINX[..cut], &Method::GET).unwrap().is_none(),
                "prefix {cut}"
            );
        }
        let mut buf = BytesMut::from(NGINX);
        let head = parse(&mut buf, &Method::GET, true).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello");
        assert_eq!(head.parts.status, 200);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert!(head.parts.headers.is_empty());
        let fields = raw(&head);
        assert_eq!((fields.length, fields.dated), (Some(5), true));
        // As the backend wrote them, in its order and case, without Connection.
        assert_eq!(
            written(&head),
            "Server: nginx\r\nDate: Mon, 23 Nov 2026 12:13:16 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Backend: a\r\n"
        );
    }

    #[test]
    fn raw_fields_leave_hop_by_hop_fields_out_and_note_them() {
        let input = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nTE: trailers\r\nX-Backend: a\r\nProxy-Authenticate: Basic\r\n\r\n";
        let head = parse_raw(input, &Method::GET).unwrap().unwrap();
        assert_eq!(written(&head), "X-Backend: a\r\n");
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(head.keep_alive);
        assert_eq!(head.keep_alive_secs, Some(5));
        assert_eq!(raw(&head).length, None);
        assert!(!raw(&head).dated);
    }

    #[test]
    fn raw_fields_end_each_line_in_crlf() {
        // Bare LF line ends, an empty value, trailing whitespace.
        let input = b"HTTP/1.1 200 OK\nA: 1\nB:\r\nC: 3  \r\nD: 4\r\nContent-Length: 0\r\n\r\n";
        let head = parse_raw(input, &Method::GET).unwrap().unwrap();
        assert_eq!(
            written(&head),
            "A: 1\r\nB:\r\nC: 3\r\nD: 4\r\nContent-Length: 0\r\n"
        );
        assert_eq!(
            raw(&head).pairs(),
            [
                ("A", "1"),
                ("B", ""),
                ("C", "3"),
                ("D", "4"),
                ("Content-Length", "0")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn fields_a_connection_field_names_take_the_map_path() {
        let input = b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: close, X-Before\r\nX-Kept: 3\r\nContent-Length: 0\r\n\r\n";
        let head = parse_raw(input, &Method::GET).unwrap().unwrap();
        assert!(head.raw_fields.is_none());
        let mut kept = names(&head);
        kept.sort_unstable();
        assert_eq!(kept, ["content-length", "x-kept"]);
        assert!(!head.keep_alive);
    }

    #[test]
    fn interim_and_switching_heads_keep_the_map() {
        for input in [
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n",
        ] {
            let head = parse_raw(input, &Method::GET).unwrap().unwrap();
            assert!(head.raw_fields.is_none());
            assert!(!head.parts.headers.is_empty());
        }
    }

    #[test]
    fn every_prefix_of_a_real_head() {
        let head_len = NGINX.len() - 5;
        for cut in 0..head_len {
            assert!(
                parse_all(&NGINX[..cut], &Method::GET).unwrap().is_none(),
                "prefix {cut}"
            );
        }
        let (head, rest) = parse_all(NGINX, &Method::GET).unwrap().unwrap();
        assert_eq!(rest, b"hello");
        assert_eq!(head.parts.status, 200);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.parts.headers.get("x-backend").unwrap(), "a");
        // Server, Date, Content-Type, Content-Length, X-Backend: not Connection.
        assert_eq!(head.parts.headers.len(), 5);
        assert!(!head.parts.headers.contains_key("connection"));
    }

    fn names(head: &ResponseHead) -> Vec<&str> {
        head.parts.headers.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_fields_stay_out_of_the_map() {
        let input = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nTE: trailers\r\nX-Backend: a\r\n\r\n";
        let (head, _) = parse_all(input, &Method::GET).unwrap().unwrap();
        assert_eq!(names(&head), ["x-backend"]);
        // What they said is still noted.
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(head.keep_alive);
        assert_eq!(head.keep_alive_secs, Some(5));
    }

    #[test]
    fn fields_a_connection_field_names_are_dropped_with_it() {
        // Named before and after the Connection field, and by a second one.
        let input = b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: close, X-Before\r\nX-After: 2\r\nX-Kept: 3\r\nConnection: x-after\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = parse_all(input, &Method::GET).unwrap().unwrap();
        let mut kept = names(&head);
        kept.sort_unstable();
        assert_eq!(kept, ["content-length", "x-kept"]);
        assert!(!head.keep_alive);
    }

    #[test]
    fn a_101_keeps_its_upgrade_fields() {
        let input = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let (head, _) = parse_all(input, &Method::GET).unwrap().unwrap();
        assert_eq!(
            names(&head),
            ["connection", "upgrade", "sec-websocket-accept"]
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: &[(&[u8], Method, BodyFraming, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                BodyFraming::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Method::GET,
                BodyFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                BodyFraming::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                BodyFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nConnection: close\r\n\r\n",
                Method::GET,
                BodyFraming::Length(7),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                BodyFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n",
                Method::GET,
                BodyFraming::Length(1),
                true,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Method::GET,
                BodyFraming::Empty,
                false,
            ),
            // Equal lengths in two fields are one length.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                BodyFraming::Length(5),
                true,
            ),
            // The final coding of the last Transfer-Encoding field decides.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                BodyFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                BodyFraming::Chunked,
                true,
            ),
            // No body follows a HEAD answer, whatever its Content-Length says.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                Method::HEAD,
                BodyFraming::Empty,
                true,
            ),
            // Connection tokens are matched without regard to case, in any field.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-foo\r\nConnection: CLOSE\r\n\r\n",
                Method::GET,
                BodyFraming::Length(1),
                false,
            ),
        ];
        for (input, method, framing, keep) in cases {
            let text = String::from_utf8_lossy(input);
            let (head, _) = parse_all(input, method).unwrap().unwrap();
            assert_eq!(head.framing, *framing, "{text}");
            assert_eq!(head.keep_alive, *keep, "{text}");
            // The same with the fields kept as they arrived.
            let head = parse_raw(input, method).unwrap().unwrap();
            assert_eq!(head.framing, *framing, "raw: {text}");
            assert_eq!(head.keep_alive, *keep, "raw: {text}");
        }
    }

    #[test]
    fn refuses_bad_heads() {
        for input in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(matches!(
                parse_all(input, &Method::GET),
                Err(HeadError::BadContentLength)
            ));
            assert!(matches!(
                parse_raw(input, &Method::GET),
                Err(HeadError::BadContentLength)
            ));
        }
        assert!(matches!(
            parse_all(b"SSH-2.0-OpenSSH\r\n\r\n", &Method::GET),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            many.extend(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert!(matches!(
            parse_all(&many, &Method::GET),
            Err(HeadError::TooLarge)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert!(matches!(
            parse_all(&huge, &Method::GET),
            Err(HeadError::TooLarge)
        ));
    }
}
