//! SCAFFOLD (being written): serves a route's directory.

use hyper::{Request, Response, StatusCode};
use prometheus::IntCounter;

use crate::config::StaticSpec;
use crate::http::client::ProxyBody;
use crate::http::proxy::plain_response;
use crate::metrics::Metrics;

/// A directory served by a route.
#[derive(Debug)]
pub struct StaticRoot {
    spec: StaticSpec,
    prefix: String,
    bytes: IntCounter,
}

impl StaticRoot {
    /// Serves `spec.root` for the paths under `path_prefix` of routing table `route`.
    pub fn new(spec: &StaticSpec, path_prefix: &str, route: &str, metrics: &Metrics) -> Self {
        StaticRoot {
            spec: spec.clone(),
            prefix: path_prefix.to_string(),
            bytes: metrics.static_bytes_total.with_label_values(&[route]),
        }
    }

    /// Answers `request` (its body is ignored).
    pub async fn serve<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        let _ = (&self.spec, &self.prefix, &self.bytes, request);
        plain_response(StatusCode::NOT_FOUND, "not found")
    }
}
