//! Response compression of a route (`compress:`): decides per response whether to
//! compress (status, `Range`, existing `Content-Encoding`, type, size, `no-transform`),
//! rewrites the headers (`Content-Encoding`, `Vary`, weak `ETag`, no `Content-Length`
//! or `Accept-Ranges`) and streams the body through an async-compression encoder, so
//! memory stays bounded whatever the body size. Counts compressed responses and bytes
//! in/out. The coding comes from `accept_encoding`.

use std::io;

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::{future, StreamExt};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Body, Frame};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, ETAG, RANGE, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::IntCounter;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::accept_encoding::negotiate;
use crate::config::{Coding, CompressSpec};
use crate::http::client::{empty_body, BoxError, ProxyBody};
use crate::metrics::Metrics;

/// gzip level: 5 keeps most of level 6's ratio on text for about half the CPU
/// (docs/benchmarking.md, "Compression").
pub const GZIP_LEVEL: i32 = 5;
/// Brotli quality: 5, the lowest quality that beats gzip 5 on size (quality 4 came out
/// larger than gzip 5 for the same CPU); 10–11 are for compressing ahead of time.
pub const BROTLI_QUALITY: i32 = 5;
/// Brotli window (log2 bytes): 512 KiB, as ngx_brotli, to bound memory per response.
pub const BROTLI_WINDOW_LOG: i32 = 19;
/// zstd level: 3, zstd's default and its speed/ratio sweet spot.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd window (log2 bytes): 512 KiB, to bound memory per response.
pub const ZSTD_WINDOW_LOG: u32 = 19;
/// Largest chunk of compressed output handed on at once.
const OUTPUT_CHUNK: usize = 16 * 1024;

/// Compression of one route's responses.
#[derive(Debug)]
pub struct Compressor {
    algorithms: Vec<Coding>,
    min_bytes: u64,
    types: Vec<String>,
    responses: Vec<(Coding, IntCounter)>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

/// What the request allows, taken before the request is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts {
    /// The coding negotiated from `Accept-Encoding` (`None`: send as is).
    coding: Option<Coding>,
    /// A HEAD request: headers as for GET, no body to compress.
    head: bool,
    /// A CONNECT request: never touched.
    connect: bool,
    /// The request had a `Range` header.
    range: bool,
}

impl Compressor {
    /// Compression per `spec` for routing table `route` (the `route` label of its
    /// metrics).
    pub fn new(spec: &CompressSpec, route: &str, metrics: &Metrics) -> Self {
        let responses = spec
            .algorithms
            .iter()
            .map(|&coding| {
                let counter = metrics
                    .compressed_responses_total
                    .with_label_values(&[route, coding.as_str()]);
                (coding, counter)
            })
            .collect();
        let bytes = |stage: &str| {
            metrics
                .compression_bytes_total
                .with_label_values(&[route, stage])
        };
        Compressor {
            algorithms: spec.algorithms.clone(),
            min_bytes: spec.min_bytes,
            types: spec.types.clone(),
            responses,
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
        }
    }

    /// Reads what `request` accepts: the negotiated coding, HEAD, CONNECT, `Range`.
    pub fn request_facts<B>(&self, request: &Request<B>) -> RequestFacts {
        RequestFacts {
            coding: negotiate(request.headers(), &self.algorithms),
            head: request.method() == Method::HEAD,
            connect: request.method() == Method::CONNECT,
            range: request.headers().contains_key(RANGE),
        }
    }

    /// Compresses `response` when the request, the route and the response allow it.
    /// A response that could be compressed for another `Accept-Encoding` gets
    /// `Vary: Accept-Encoding` either way. HEAD answers get the headers GET would get.
    pub fn apply(&self, facts: RequestFacts, response: Response<ProxyBody>) -> Response<ProxyBody> {
        if facts.connect || !self.eligible(&response) {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        add_vary(&mut parts.headers);
        let coding = match facts.coding {
            Some(coding) if !facts.range => coding,
            _ => return Response::from_parts(parts, body),
        };
        mark_encoded(&mut parts.headers, coding);
        let body = if facts.head {
            empty_body()
        } else {
            if let Some((_, counter)) = self.responses.iter().find(|(c, _)| *c == coding) {
                counter.inc();
            }
            let counters = (self.bytes_in.clone(), self.bytes_out.clone());
            encode(coding, body, Some(counters))
        };
        Response::from_parts(parts, body)
    }

    /// Whether the response itself may be compressed: 200, not encoded yet, a listed
    /// type, at least `min_bytes` (or of unknown size), no `Cache-Control: no-transform`.
    fn eligible(&self, response: &Response<ProxyBody>) -> bool {
        let headers = response.headers();
        if response.status() != StatusCode::OK {
            return false;
        }
        if let Some(encoding) = headers.get(CONTENT_ENCODING) {
            let identity = encoding
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
            if !identity || headers.get_all(CONTENT_ENCODING).iter().count() > 1 {
                return false;
            }
        }
        if !headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| self.type_listed(v))
        {
            return false;
        }
        let length = match headers.get(CONTENT_LENGTH) {
            Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()),
            None => response.body().size_hint().exact(),
        };
        if length.is_some_and(|len| len < self.min_bytes) {
            return false;
        }
        !has_directive(headers, CACHE_CONTROL, "no-transform")
    }

    /// Whether the media type of `content_type` (parameters dropped) is in `types`.
    fn type_listed(&self, content_type: &str) -> bool {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let Some((top, _)) = media.split_once('/') else {
            return false;
        };
        self.types
            .iter()
            .any(|listed| match listed.strip_suffix("/*") {
                Some("*") => true,
                Some(prefix) => prefix.eq_ignore_ascii_case(top),
                None => listed.eq_ignore_ascii_case(media),
            })
    }
}

/// Compresses `body` with `coding` at tollgate's levels, streaming (no counting).
pub fn encode_body(coding: Coding, body: ProxyBody) -> ProxyBody {
    encode(coding, body, None)
}

/// Streams `body` through an encoder: data frames in, compressed chunks out (trailers
/// are dropped). An error of `body` ends the output with an error, never with a
/// complete-looking stream. `counters` (in, out) count bytes as they pass.
fn encode(
    coding: Coding,
    body: ProxyBody,
    counters: Option<(IntCounter, IntCounter)>,
) -> ProxyBody {
    let (count_in, count_out) = counters.unzip();
    let input = BodyStream::new(body).filter_map(move |frame| {
        let item = match frame {
            Ok(frame) => frame.into_data().ok().map(|data: Bytes| {
                if let Some(counter) = &count_in {
                    counter.inc_by(data.len() as u64);
                }
                Ok(data)
            }),
            Err(e) => Some(Err(io::Error::other(e))),
        };
        future::ready(item)
    });
    let reader = StreamReader::new(input);
    match coding {
        Coding::Gzip => output(
            GzipEncoder::with_quality(reader, Level::Precise(GZIP_LEVEL)),
            count_out,
        ),
        Coding::Brotli => {
            let params = async_compression::brotli::EncoderParams::default()
                .quality(Level::Precise(BROTLI_QUALITY))
                .window_size(BROTLI_WINDOW_LOG);
            output(BrotliEncoder::with_params(reader, params), count_out)
        }
        Coding::Zstd => {
            let window = async_compression::zstd::CParameter::window_log(ZSTD_WINDOW_LOG);
            output(
                ZstdEncoder::with_quality_and_params(reader, Level::Precise(ZSTD_LEVEL), &[window]),
                count_out,
            )
        }
    }
}

/// The body reading `encoder`'s output.
fn output<R>(encoder: R, count_out: Option<IntCounter>) -> ProxyBody
where
    R: AsyncRead + Send + 'static,
{
    let chunks = ReaderStream::with_capacity(encoder, OUTPUT_CHUNK).map(move |chunk| match chunk {
        Ok(data) => {
            if let Some(counter) = &count_out {
                counter.inc_by(data.len() as u64);
            }
            Ok(Frame::data(data))
        }
        Err(e) => Err(BoxError::from(e)),
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Headers of a response now encoded with `coding`: `Content-Encoding` set, length and
/// ranges gone (the output is streamed), a strong `ETag` made weak (the bytes differ
/// from the identity representation's).
fn mark_encoded(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    if let Some(etag) = headers.get(ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(ETAG, weak);
            }
        }
    }
}

/// Adds `Accept-Encoding` to `Vary` (one field, existing members kept) unless it is
/// there already or `Vary: *`.
fn add_vary(headers: &mut HeaderMap) {
    if has_directive(headers, VARY, "accept-encoding") || has_directive(headers, VARY, "*") {
        return;
    }
    let mut members: Vec<&[u8]> = headers
        .get_all(VARY)
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.trim_ascii().is_empty())
        .collect();
    members.push(b"Accept-Encoding");
    if let Ok(value) = HeaderValue::from_bytes(&members.join(&b", "[..])) {
        headers.insert(VARY, value);
    }
}

/// Whether any `name` field lists `token` (a comma-separated member, compared
/// case-insensitively up to any `=value`).
fn has_directive(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|member| {
            let key = member.split('=').next().unwrap_or("");
            key.trim().eq_ignore_ascii_case(token)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::full_body;
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    use tokio::io::AsyncReadExt;

    fn compressor() -> (Compressor, Metrics) {
        let spec = CompressSpec {
            algorithms: vec![Coding::Gzip, Coding::Brotli, Coding::Zstd],
            min_bytes: 100,
            types: vec!["text/*".into(), "application/json".into()],
        };
        let metrics = Metrics::new();
        (Compressor::new(&spec, "web", &metrics), metrics)
    }

    fn request(accept: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(accept) = accept {
            builder = builder.header("accept-encoding", accept);
        }
        builder.body(()).unwrap()
    }

    fn response(content_type: &str, body: &'static [u8]) -> Response<ProxyBody> {
        Response::builder()
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, body.len())
            .header(ETAG, "\"v1\"")
            .header(ACCEPT_RANGES, "bytes")
            .body(full_body(body))
            .unwrap()
    }

    async fn decode(coding: Coding, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => GzipDecoder::new(bytes).read_to_end(&mut out).await,
            Coding::Brotli => BrotliDecoder::new(bytes).read_to_end(&mut out).await,
            Coding::Zstd => ZstdDecoder::new(bytes).read_to_end(&mut out).await,
        }
        .unwrap();
        out
    }

    const TEXT: &[u8] = b"{\"items\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], \"name\": \"tollgate\"} \
        {\"items\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], \"name\": \"tollgate\"}";

    #[tokio::test]
    async fn each_coding_round_trips_and_sets_headers() {
        let (compressor, _metrics) = compressor();
        for (accept, coding) in [
            ("gzip", Coding::Gzip),
            ("br", Coding::Brotli),
            ("zstd", Coding::Zstd),
        ] {
            let facts = compressor.request_facts(&request(Some(accept)));
            let out = compressor.apply(facts, response("application/json; charset=utf-8", TEXT));
            let headers = out.headers();
            assert_eq!(headers[CONTENT_ENCODING], coding.as_str());
            assert_eq!(headers[VARY], "Accept-Encoding");
            assert_eq!(headers[ETAG], "W/\"v1\"");
            assert!(!headers.contains_key(CONTENT_LENGTH));
            assert!(!headers.contains_key(ACCEPT_RANGES));
            let bytes = out.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(decode(coding, &bytes).await, TEXT, "{accept}");
        }
    }

    #[test]
    fn eligibility_by_encoding_type_and_size() {
        let (compressor, _metrics) = compressor();
        let eligible = |content_type: &str, encoding: Option<&str>, body: &'static [u8]| {
            let mut resp = response(content_type, body);
            if let Some(encoding) = encoding {
                let value = HeaderValue::from_str(encoding).unwrap();
                resp.headers_mut().insert(CONTENT_ENCODING, value);
            }
            compressor.eligible(&resp)
        };
        assert!(eligible("Text/HTML; charset=utf-8", None, TEXT));
        assert!(eligible("application/json", Some(" Identity "), TEXT));
        assert!(!eligible("application/json", Some("br"), TEXT));
        assert!(!eligible("application/jsonx", None, TEXT));
        assert!(!eligible("image/png", None, TEXT));
        assert!(!eligible("textual", None, TEXT));
        assert!(!eligible("text/html", None, b"tiny"));
    }

    #[tokio::test]
    async fn refused_or_ranged_requests_get_vary_only() {
        let (compressor, _metrics) = compressor();
        let mut ranged = request(Some("gzip"));
        ranged
            .headers_mut()
            .insert(RANGE, HeaderValue::from_static("bytes=0-9"));
        for req in [request(None), request(Some("identity")), ranged] {
            let facts = compressor.request_facts(&req);
            let mut resp = response("text/plain", TEXT);
            resp.headers_mut()
                .insert(VARY, HeaderValue::from_static("Origin"));
            let out = compressor.apply(facts, resp);
            assert!(!out.headers().contains_key(CONTENT_ENCODING));
            assert_eq!(out.headers()[VARY], "Origin, Accept-Encoding");
            assert_eq!(out.headers()[ETAG], "\"v1\"");
        }
    }

    #[test]
    fn vary_is_not_duplicated() {
        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("origin, accept-encoding"));
        add_vary(&mut headers);
        assert_eq!(headers[VARY], "origin, accept-encoding");
        headers.insert(VARY, HeaderValue::from_static("*"));
        add_vary(&mut headers);
        assert_eq!(headers[VARY], "*");
        let mut two = HeaderMap::new();
        two.append(VARY, HeaderValue::from_static("Origin"));
        two.append(VARY, HeaderValue::from_static("Cookie"));
        add_vary(&mut two);
        assert_eq!(two[VARY], "Origin, Cookie, Accept-Encoding");
        assert_eq!(two.get_all(VARY).iter().count(), 1);
    }

    #[tokio::test]
    async fn head_gets_get_headers_without_a_body() {
        let (compressor, metrics) = compressor();
        let head = Request::head("/")
            .header("accept-encoding", "gzip")
            .body(())
            .unwrap();
        let out = compressor.apply(compressor.request_facts(&head), response("text/css", TEXT));
        assert_eq!(out.headers()[CONTENT_ENCODING], "gzip");
        assert!(!out.headers().contains_key(CONTENT_LENGTH));
        assert!(out
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        let counted = metrics
            .compressed_responses_total
            .with_label_values(&["web", "gzip"])
            .get();
        assert_eq!(counted, 0);
    }

    #[tokio::test]
    async fn inner_errors_end_the_output_with_an_error() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(TEXT))),
            Err("backend went away".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        assert!(encode_body(Coding::Gzip, body).collect().await.is_err());
    }
}
