//! Compiled L7 routing tables: each rule's match (host, path prefix), its target (a
//! pool's client or a static directory), its content features (compression, cache),
//! its own rate limit, and its pre-resolved metric handles. Built once per config
//! snapshot by [`compile`]. First match wins; a table of more than [`SCAN_MAX`] rules is
//! looked up through an index by host, so that 100,000 virtual hosts cost a few hash
//! probes per request, not a scan.

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
use crate::route::{wildcard_suffixes, HostPattern};
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

/// Up to this many rules a table is scanned in order; above, looked up by host.
pub const SCAN_MAX: usize = 16;

/// A routing table: first match wins.
#[derive(Debug)]
pub struct RouteTable {
    /// Its name (the `route` label).
    pub name: String,
    /// Rules in order.
    rules: Vec<CompiledRule>,
    /// The rules by host, when there are more than [`SCAN_MAX`].
    index: Option<RuleIndex>,
    /// Counts requests no rule matched (pool label "none").
    pub unmatched: Arc<RouteMetrics>,
}

/// Positions of a table's rules by their host pattern, each list in rule order.
#[derive(Debug, Default)]
struct RuleIndex {
    exact: HashMap<String, Vec<usize>>,
    /// By `".suffix"`.
    wildcard: HashMap<String, Vec<usize>>,
    /// The longest key of `wildcard`.
    longest_wildcard: usize,
    any_host: Vec<usize>,
}

impl RuleIndex {
    fn new(rules: &[CompiledRule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (position, rule) in rules.iter().enumerate() {
            let list = match &rule.host {
                None => &mut index.any_host,
                Some(HostPattern::Exact(name)) => index.exact.entry(name.clone()).or_default(),
                Some(HostPattern::Wildcard(suffix)) => {
                    index.longest_wildcard = index.longest_wildcard.max(suffix.len());
                    index.wildcard.entry(suffix.clone()).or_default()
                }
            };
            list.push(position);
        }
        index
    }
}

impl RouteTable {
    /// A table of `rules`, in order.
    pub fn new(name: String, rules: Vec<CompiledRule>, unmatched: Arc<RouteMetrics>) -> Self {
        let index = (rules.len() > SCAN_MAX).then(|| RuleIndex::new(&rules));
        RouteTable {
            name,
            rules,
            index,
            unmatched,
        }
    }

    /// The first rule matching `host` (normalized) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&CompiledRule> {
        let Some(index) = &self.index else {
            return self.rules.iter().find(|rule| rule.matches(host, path));
        };
        // The first rule in each list that could match `host` and matches `path`; the
        // earliest of them is the table's first match.
        let path_ok =
            |position: &usize| path.starts_with(self.rules[*position].path_prefix.as_str());
        let mut first = index.any_host.iter().copied().find(|p| path_ok(p));
        let mut consider = |list: Option<&Vec<usize>>| {
            let Some(list) = list else { return };
            let bound = first.unwrap_or(usize::MAX);
            if let Some(p) = list
                .iter()
                .copied()
                .take_while(|p| *p < bound)
                .find(|p| path_ok(p))
            {
                first = Some(p);
            }
        };
        if let Some(host) = host {
            consider(index.exact.get(host));
            if !index.wildcard.is_empty() {
                for suffix in wildcard_suffixes(host, index.longest_wildcard) {
                    consider(index.wildcard.get(suffix));
                }
            }
        }
        first.map(|p| &self.rules[p])
    }
}

impl CompiledRule {
    /// Whether this rule takes `host` (normalized) and `path`.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(h)) => pattern.matches(h),
            (Some(_), None) => false,
        };
        host_ok && path.starts_with(self.path_prefix.as_str())
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
            Arc::new(RouteTable::new(
                name.clone(),
                compiled,
                Arc::new(RouteMetrics::new(metrics, name, "none")),
            )),
        );
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `hosts` virtual hosts (exact, wildcard, and some with two path rules),
    /// a host-less rule in the middle and a catch-all at the end.
    fn table(hosts: usize) -> (Arc<RouteTable>, Metrics) {
        let mut rules = String::new();
        for i in 0..hosts {
            match i % 4 {
                0 => rules.push_str(&format!(
                    "    - {{ host: h{i}.example.com, path_prefix: /api, pool: p }}\n    - {{ host: h{i}.example.com, pool: p }}\n"
                )),
                1 => rules.push_str(&format!("    - {{ host: \"*.w{i}.example.com\", pool: p }}\n")),
                2 => rules.push_str(&format!("    - {{ host: \"*.example.com\", path_prefix: /only{i}, pool: p }}\n")),
                _ => rules.push_str(&format!("    - {{ host: H{i}.Example.com., path_prefix: /x, pool: p }}\n")),
            }
            if i == hosts / 2 {
                rules.push_str("    - { path_prefix: /anyhost, pool: p }\n");
            }
        }
        rules.push_str("    - { path_prefix: /, host: last.example.com, pool: p }\n");
        rules.push_str("    - { path_prefix: /, pool: p }\n");
        let yaml = format!(
            "listeners: [ {{ name: web, listen: \"127.0.0.1:0\", protocol: http, routes: web }} ]\nroutes:\n  web:\n{rules}pools:\n  p: {{ servers: [ {{ addr: \"127.0.0.1:9\" }} ] }}\n"
        );
        let config = crate::config::from_yaml(&yaml).expect("config");
        let metrics = Metrics::new();
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .values()
            .map(|spec| (spec.name.clone(), Arc::new(Pool::new(spec, None))))
            .collect();
        let mut tables = compile(&config, &pools, &metrics);
        (tables.remove("web").expect("web"), metrics)
    }

    #[test]
    fn the_index_finds_what_a_scan_in_order_finds() {
        for hosts in [3, 40, 400] {
            let (table, _metrics) = table(hosts);
            assert_eq!(table.index.is_some(), table.rules.len() > SCAN_MAX);
            let mut names: Vec<String> = vec![
                "nothing.org".into(),
                "example.com".into(),
                "last.example.com".into(),
            ];
            for i in (0..hosts).step_by(3).chain([hosts / 2, hosts - 1]) {
                names.push(format!("h{i}.example.com"));
                names.push(format!("a.w{i}.example.com"));
                names.push(format!("a.b.w{i}.example.com"));
                names.push(format!("w{i}.example.com"));
            }
            let paths = [
                "/",
                "/api/v1",
                "/x",
                "/anyhost/1",
                "/only2",
                "/only6/a",
                "/y",
            ];
            for name in names.iter().map(|n| Some(n.as_str())).chain([None]) {
                for path in paths {
                    let scanned = table.rules.iter().position(|r| r.matches(name, path));
                    let found = table
                        .find(name, path)
                        .map(|rule| std::ptr::from_ref(rule) as usize);
                    let want = scanned.map(|p| std::ptr::from_ref(&table.rules[p]) as usize);
                    assert_eq!(found, want, "{hosts} hosts: {name:?} {path}");
                }
            }
        }
    }
}
