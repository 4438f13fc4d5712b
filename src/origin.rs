//! The built-in origin server (`tollgate backend`), used by the demo, the tests and the
//! benchmarks. Plain HTTP/1.1 or HTTPS (a given certificate or a self-signed one).
//! Every path answers 200 with a short body naming the backend and what it received
//! (method, path, Host, X-Forwarded-For), exactly `body_bytes` long when set (padded, or
//! cut, so that every path and every proxy in front sees the same size); `GET /health`
//! answers `ok`; `POST /echo` streams the request body back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::http::client::{full_body, ProxyBody};

/// What the origin answers with.
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// Name put in every body and in `X-Backend`.
    pub name: String,
    /// Make bodies exactly this many bytes, padded or cut (0: the text line as it is).
    pub body_bytes: usize,
    /// Serve TLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves connections from `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, options: OriginOptions, stop: CancellationToken) {
    let options = Arc::new(options);
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let options = Arc::clone(&options);
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let options = Arc::clone(&options);
                async move { Ok::<_, Infallible>(answer(req, &options, peer).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades();
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    options: &OriginOptions,
    _peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return text(StatusCode::OK, &options.name, "ok\n".to_string());
    }
    if path == "/echo" && req.method() == Method::POST {
        let mut response = Response::new(
            req.into_body()
                .map_err(crate::http::client::BoxError::from)
                .boxed_unsync(),
        );
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(&options.name) {
            response.headers_mut().insert("x-backend", v);
        }
        return response;
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = req.method().clone();
    // Drain any request body so keep-alive keeps working.
    let _ = req.into_body().collect().await;
    let body = format!(
        "backend {} {} {} host={} xff={}\n",
        options.name, method, path, host, xff
    );
    let body = sized(body.into_bytes(), options.body_bytes);
    text(StatusCode::OK, &options.name, body)
}

/// `line` padded with dots and a final newline, or cut, to exactly `size` bytes (0: as
/// it is).
fn sized(mut line: Vec<u8>, size: usize) -> Vec<u8> {
    if size == 0 {
        return line;
    }
    if line.len() < size {
        line.resize(size - 1, b'.');
        line.push(b'\n');
    } else {
        line.truncate(size);
    }
    line
}

fn text(status: StatusCode, name: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(name) {
        response.headers_mut().insert("x-backend", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::sized;

    #[test]
    fn bodies_are_exactly_the_size_asked_for() {
        let line = b"backend a GET / host=x xff=-\n".to_vec();
        assert_eq!(sized(line.clone(), 0), line, "0: the line as it is");
        for size in [1, 5, line.len() - 1, line.len(), line.len() + 1, 1024] {
            let body = sized(line.clone(), size);
            assert_eq!(body.len(), size);
            let kept = size.min(line.len());
            if size <= line.len() {
                assert_eq!(body[..], line[..kept]);
            } else {
                assert_eq!(body[..line.len() - 1], line[..line.len() - 1]);
                assert_eq!(body.last(), Some(&b'\n'));
            }
        }
    }
}
