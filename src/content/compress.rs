//! SCAFFOLD (being written): compresses a route's responses.

use hyper::{Request, Response};

use crate::config::CompressSpec;
use crate::http::client::ProxyBody;
use crate::metrics::Metrics;

/// Compression of one route's responses.
#[derive(Debug)]
pub struct Compressor {
    spec: CompressSpec,
}

/// What the request allows, taken before the request is forwarded.
#[derive(Debug)]
pub struct RequestFacts {}

impl Compressor {
    /// Compression per `spec` for routing table `route`.
    pub fn new(spec: &CompressSpec, route: &str, metrics: &Metrics) -> Self {
        let _ = (route, metrics);
        Compressor { spec: spec.clone() }
    }

    /// Reads what `request` accepts.
    pub fn request_facts<B>(&self, request: &Request<B>) -> RequestFacts {
        let _ = (&self.spec, request);
        RequestFacts {}
    }

    /// Compresses `response` when the request, the route and the response allow it.
    pub fn apply(&self, facts: RequestFacts, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let _ = facts;
        response
    }
}
