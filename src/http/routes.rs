//! Compiled L7 routing tables: each rule's match (host, path prefix), its target (a
//! pool's client or a static directory), its content features (compression, cache),
//! its own rate limit, and its pre-resolved metric handles. Built once per config
//! snapshot by [`compile`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hyper::StatusCode;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::client::PoolClient;
use crate::config::{Config, RouteTarget};
use crate::content::cache::ResponseCache;
use crate::content::compress::Compressor;
use crate::content::static_files::StaticRoot;
use crate::metrics::Metrics;
use crate::protect::{RateLimiter, MAX_BUCKETS};
use crate::route::HostPattern;
use crate::upstream::Pool;

/// Metric handles of one (route table, pool) pair, resolved once per status code.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    pool: String,
    requests: IntCounterVec,
    by_code: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
}

impl RouteMetrics {
    /// Handles for `route` → `pool`.
    pub fn new(metrics: &Metrics, route: &str, pool: &str) -> Self {
        RouteMetrics {
            route: route.to_string(),
            pool: pool.to_string(),
            requests: metrics.http_requests_total.clone(),
            by_code: (0..600).map(|_| OnceLock::new()).collect(),
            duration: metrics
                .http_request_duration_seconds
                .with_label_values(&[pool]),
        }
    }

    /// Counts one answered request.
    pub fn count(&self, status: StatusCode, started: Instant) {
        let code = usize::from(status.as_u16());
        if let Some(slot) = self.by_code.get(code) {
            slot.get_or_init(|| {
                self.requests
                    .with_label_values(&[&self.route, &self.pool, status.as_str()])
            })
            .inc();
        }
        self.duration.observe(started.elapsed().as_secs_f64());
    }
}

/// Where a compiled rule sends its requests.
#[derive(Debug)]
pub enum Target {
    /// A pool's client.
    Pool(Arc<PoolClient>),
    /// A directory tollgate serves itself.
    Static(Arc<StaticRoot>),
}

/// One compiled routing rule.
#[derive(Debug)]
pub struct CompiledRule {
    /// Host pattern (`None`: any).
    pub host: Option<HostPattern>,
    /// Path prefix.
    pub path_prefix: String,
    /// Where requests go.
    pub target: Target,
    /// Response compression.
    pub compress: Option<Arc<Compressor>>,
    /// Response cache (pool targets only).
    pub cache: Option<Arc<ResponseCache>>,
    /// The rule's own rate limit per client address.
    pub rate: Option<Arc<RateLimiter>>,
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
}

impl CompiledRule {
    /// The pool label: the pool's name, or `static`.
    pub fn pool_name(&self) -> &str {
        match &self.target {
            Target::Pool(client) => &client.pool().name,
            Target::Static(_) => "static",
        }
    }
}

/// A routing table: first match wins.
#[derive(Debug)]
pub struct RouteTable {
    /// Its name (the `route` label).
    pub name: String,
    /// Rules in order.
    pub rules: Vec<CompiledRule>,
    /// Counts requests no rule matched (pool label "none").
    pub unmatched: Arc<RouteMetrics>,
}

impl RouteTable {
    /// The first rule matching `host` and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&CompiledRule> {
        self.rules.iter().find(|rule| {
            let host_ok = match (&rule.host, host) {
                (None, _) => true,
                (Some(pattern), Some(h)) => pattern.matches(h),
                (Some(_), None) => false,
            };
            host_ok && path.starts_with(rule.path_prefix.as_str())
        })
    }
}

/// Compiles every routing table of `config` against `pools` (one client per pool).
pub fn compile(
    config: &Config,
    pools: &HashMap<String, Arc<Pool>>,
    metrics: &Metrics,
) -> HashMap<String, Arc<RouteTable>> {
    let clients: HashMap<String, Arc<PoolClient>> = pools
        .iter()
        .map(|(name, pool)| (name.clone(), PoolClient::new(Arc::clone(pool))))
        .collect();
    let mut tables = HashMap::new();
    for (name, rules) in &config.routes {
        let compiled = rules
            .iter()
            .filter_map(|rule| {
                let target = match &rule.target {
                    RouteTarget::Pool(pool) => Target::Pool(Arc::clone(clients.get(pool)?)),
                    RouteTarget::Static(spec) => Target::Static(Arc::new(StaticRoot::new(
                        spec,
                        &rule.path_prefix,
                        name,
                        metrics,
                    ))),
                };
                Some(CompiledRule {
                    host: rule.host.clone(),
                    path_prefix: rule.path_prefix.clone(),
                    target,
                    compress: rule
                        .compress
                        .as_ref()
                        .map(|spec| Arc::new(Compressor::new(spec, name, metrics))),
                    cache: rule
                        .cache
                        .as_ref()
                        .map(|spec| Arc::new(ResponseCache::new(spec, name, metrics))),
                    rate: rule
                        .rate_limit
                        .map(|limit| Arc::new(RateLimiter::new(limit, MAX_BUCKETS))),
                    metrics: Arc::new(RouteMetrics::new(metrics, name, rule.pool_label())),
                })
            })
            .collect();
        tables.insert(
            name.clone(),
            Arc::new(RouteTable {
                name: name.clone(),
                rules: compiled,
                unmatched: Arc::new(RouteMetrics::new(metrics, name, "none")),
            }),
        );
    }
    tables
}
