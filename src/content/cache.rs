//! SCAFFOLD (being written): an in-memory response cache of a route.

use std::future::Future;

use hyper::{Request, Response};

use crate::config::CacheSpec;
use crate::http::client::ProxyBody;
use crate::metrics::Metrics;

/// The response cache of one route.
#[derive(Debug)]
pub struct ResponseCache {
    spec: CacheSpec,
}

impl ResponseCache {
    /// A cache per `spec` for routing table `route`.
    pub fn new(spec: &CacheSpec, route: &str, metrics: &Metrics) -> Self {
        let _ = (route, metrics);
        ResponseCache { spec: *spec }
    }

    /// Answers `request` from the cache, or through `fetch` (the backend), storing what
    /// may be stored.
    pub async fn serve<B, F, Fut>(&self, request: Request<B>, fetch: F) -> Response<ProxyBody>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let _ = self.spec;
        fetch(request).await
    }
}
