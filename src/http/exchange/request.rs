//! Writes a request head for a backend: `METHOD target HTTP/1.1`, the fields as the
//! proxy left them, and the framing of the body that follows. A Content-Length the
//! client sent is kept (the body must match it); a body of unknown length goes chunked;
//! an empty body gets no framing field unless its method expects a body.

use bytes::{BufMut, BytesMut};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::Method;

use crate::http::client::ProxyBody;

/// How the request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// The framing for `body`, sent with the head in `parts`.
pub fn framing(parts: &Parts, body: &ProxyBody) -> RequestFraming {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared {
        return RequestFraming::Length(n);
    }
    if let Some(n) = body.size_hint().exact() {
        let expects_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
        return if n == 0 && !expects_body {
            RequestFraming::None
        } else {
            RequestFraming::Length(n)
        };
    }
    if body.is_end_stream() {
        return RequestFraming::None;
    }
    RequestFraming::Chunked
}

/// Appends the head of the request in `parts` to `out`, with `extra_fields` (CRLF-ended
/// field lines) after its own fields.
pub fn encode_head(
    parts: &Parts,
    framing: RequestFraming,
    extra_fields: &[u8],
    out: &mut BytesMut,
) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    match parts.uri.path_and_query() {
        Some(target) => out.put_slice(target.as_str().as_bytes()),
        None => out.put_u8(b'/'),
    }
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(extra_fields);
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            use std::fmt::Write;
            // Writing to a BytesMut cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::{empty_body, full_body};
    use hyper::Request;

    fn head(request: Request<ProxyBody>) -> (RequestFraming, String) {
        let (parts, body) = request.into_parts();
        let framing = framing(&parts, &body);
        let mut out = BytesMut::new();
        encode_head(&parts, framing, b"", &mut out);
        (framing, String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn get_without_body_has_no_framing_field() {
        let request = Request::get("/a?b=1")
            .header("host", "app")
            .header("x-forwarded-for", "10.0.0.1")
            .body(empty_body())
            .unwrap();
        let (framing, text) = head(request);
        assert_eq!(framing, RequestFraming::None);
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nhost: app\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn bodies_are_framed() {
        let post = Request::post("/").body(full_body("abc")).unwrap();
        let (framing, text) = head(post);
        assert_eq!(framing, RequestFraming::Length(3));
        assert!(text.ends_with("content-length: 3\r\n\r\n"), "{text}");

        let empty_post = Request::post("/").body(empty_body()).unwrap();
        assert_eq!(head(empty_post).0, RequestFraming::Length(0));

        let declared = Request::put("/")
            .header("content-length", "10")
            .header("transfer-encoding", "chunked")
            .body(empty_body())
            .unwrap();
        let (framing, text) = head(declared);
        assert_eq!(framing, RequestFraming::Length(10));
        assert!(!text.contains("transfer-encoding"), "{text}");

        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, crate::http::client::BoxError>,
        >(1);
        drop(tx);
        let streamed = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let request = Request::post("/")
            .body(http_body_util::BodyExt::boxed_unsync(streamed))
            .unwrap();
        let (framing, text) = head(request);
        assert_eq!(framing, RequestFraming::Chunked);
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
    }

    /// A stream over a receiver, without pulling in tokio-stream.
    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
