//! The one list of metric names (kept in step with `docs/metrics.md` by a test) and the
//! Prometheus registry that holds them. Hot paths hold pre-resolved handles
//! (`IntCounter` clones) so counting is one atomic add: no lock, no allocation.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric tollgate exports: (name, type, labels, help).
pub const METRICS: &[(&str, &str, &[&str], &str)] = &[
    (
        "tollgate_connections_total",
        "counter",
        &["listener", "mode"],
        "Client connections accepted, by the mode that took them",
    ),
    (
        "tollgate_connections_active",
        "gauge",
        &["listener", "mode"],
        "Client connections open now",
    ),
    (
        "tollgate_bytes_total",
        "counter",
        &["listener", "mode", "direction"],
        "Bytes relayed, by direction (client_to_backend, backend_to_client)",
    ),
    (
        "tollgate_client_hello_failures_total",
        "counter",
        &["listener", "reason"],
        "Connections closed before routing: not_tls, timeout, too_large, malformed",
    ),
    (
        "tollgate_tls_handshakes_total",
        "counter",
        &["listener", "outcome"],
        "TLS handshakes on terminate routes, by outcome",
    ),
    (
        "tollgate_http_requests_total",
        "counter",
        &["route", "pool", "code"],
        "HTTP requests answered, by status code",
    ),
    (
        "tollgate_http_request_duration_seconds",
        "histogram",
        &["pool"],
        "Time from request headers to response headers",
    ),
    (
        "tollgate_backend_up",
        "gauge",
        &["pool", "backend"],
        "1 when the backend is healthy, 0 when not",
    ),
    (
        "tollgate_backend_connect_errors_total",
        "counter",
        &["pool", "backend"],
        "Backend connects refused or timed out",
    ),
    (
        "tollgate_backend_connections_total",
        "counter",
        &["pool", "backend"],
        "New backend connections opened",
    ),
    (
        "tollgate_limit_rejections_total",
        "counter",
        &["listener", "limit"],
        "Connections or requests refused by a protection: per_ip, rate, ban, body, requests",
    ),
    (
        "tollgate_ban_events_total",
        "counter",
        &["listener", "event"],
        "Temporary bans: event ban (an address crossed the threshold) or unban (its ban ended)",
    ),
    (
        "tollgate_access_log_dropped_total",
        "counter",
        &[],
        "Access log lines dropped because the writer fell behind",
    ),
    (
        "tollgate_static_bytes_total",
        "counter",
        &["route"],
        "Bytes of files sent by static routes (bodies of 200 and 206 answers)",
    ),
    (
        "tollgate_compressed_responses_total",
        "counter",
        &["route", "coding"],
        "Responses compressed, by content coding (gzip, br, zstd)",
    ),
    (
        "tollgate_compression_bytes_total",
        "counter",
        &["route", "stage"],
        "Bytes of compressed responses before (stage in) and after (stage out) compression",
    ),
    (
        "tollgate_cache_requests_total",
        "counter",
        &["route", "outcome"],
        "Requests of cached routes: hit, miss, revalidated, collapsed, bypass",
    ),
    (
        "tollgate_cache_bytes",
        "gauge",
        &["route"],
        "Bytes held by response caches (bodies and headers)",
    ),
    (
        "tollgate_cache_evictions_total",
        "counter",
        &["route"],
        "Cache entries evicted to stay within max_bytes",
    ),
    (
        "tollgate_config_reloads_total",
        "counter",
        &["outcome"],
        "Config reloads, by outcome (ok, error)",
    ),
];

/// The metric families, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// tollgate_connections_total
    pub connections_total: IntCounterVec,
    /// tollgate_connections_active
    pub connections_active: IntGaugeVec,
    /// tollgate_bytes_total
    pub bytes_total: IntCounterVec,
    /// tollgate_client_hello_failures_total
    pub client_hello_failures_total: IntCounterVec,
    /// tollgate_tls_handshakes_total
    pub tls_handshakes_total: IntCounterVec,
    /// tollgate_http_requests_total
    pub http_requests_total: IntCounterVec,
    /// tollgate_http_request_duration_seconds
    pub http_request_duration_seconds: HistogramVec,
    /// tollgate_backend_up
    pub backend_up: IntGaugeVec,
    /// tollgate_backend_connect_errors_total
    pub backend_connect_errors_total: IntCounterVec,
    /// tollgate_backend_connections_total
    pub backend_connections_total: IntCounterVec,
    /// tollgate_limit_rejections_total
    pub limit_rejections_total: IntCounterVec,
    /// tollgate_ban_events_total
    pub ban_events_total: IntCounterVec,
    /// tollgate_config_reloads_total
    pub config_reloads_total: IntCounterVec,
    /// tollgate_access_log_dropped_total
    pub access_log_dropped_total: IntCounterVec,
    /// tollgate_static_bytes_total
    pub static_bytes_total: IntCounterVec,
    /// tollgate_compressed_responses_total
    pub compressed_responses_total: IntCounterVec,
    /// tollgate_compression_bytes_total
    pub compression_bytes_total: IntCounterVec,
    /// tollgate_cache_requests_total
    pub cache_requests_total: IntCounterVec,
    /// tollgate_cache_bytes
    pub cache_bytes: IntGaugeVec,
    /// tollgate_cache_evictions_total
    pub cache_evictions_total: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn spec(name: &str) -> (&'static str, &'static [&'static str], &'static str) {
    let Some((n, _, labels, help)) = METRICS.iter().find(|m| m.0 == name) else {
        panic!("metric {name} is not in METRICS");
    };
    (n, labels, help)
}

fn counter(registry: &Registry, name: &str) -> IntCounterVec {
    let (n, labels, help) = spec(name);
    let vec = IntCounterVec::new(Opts::new(n, help), labels).expect("valid metric spec");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn gauge(registry: &Registry, name: &str) -> IntGaugeVec {
    let (n, labels, help) = spec(name);
    let vec = IntGaugeVec::new(Opts::new(n, help), labels).expect("valid metric spec");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl Metrics {
    /// A fresh registry with every metric of [`METRICS`].
    pub fn new() -> Self {
        let registry = Registry::new();
        let (n, labels, help) = spec("tollgate_http_request_duration_seconds");
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(n, help).buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            labels,
        )
        .expect("valid metric spec");
        registry
            .register(Box::new(http_request_duration_seconds.clone()))
            .expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Metrics {
            connections_total: counter(&registry, "tollgate_connections_total"),
            connections_active: gauge(&registry, "tollgate_connections_active"),
            bytes_total: counter(&registry, "tollgate_bytes_total"),
            client_hello_failures_total: counter(&registry, "tollgate_client_hello_failures_total"),
            tls_handshakes_total: counter(&registry, "tollgate_tls_handshakes_total"),
            http_requests_total: counter(&registry, "tollgate_http_requests_total"),
            http_request_duration_seconds,
            backend_up: gauge(&registry, "tollgate_backend_up"),
            backend_connect_errors_total: counter(
                &registry,
                "tollgate_backend_connect_errors_total",
            ),
            backend_connections_total: counter(&registry, "tollgate_backend_connections_total"),
            limit_rejections_total: counter(&registry, "tollgate_limit_rejections_total"),
            ban_events_total: counter(&registry, "tollgate_ban_events_total"),
            config_reloads_total: counter(&registry, "tollgate_config_reloads_total"),
            access_log_dropped_total: counter(&registry, "tollgate_access_log_dropped_total"),
            static_bytes_total: counter(&registry, "tollgate_static_bytes_total"),
            compressed_responses_total: counter(&registry, "tollgate_compressed_responses_total"),
            compression_bytes_total: counter(&registry, "tollgate_compression_bytes_total"),
            cache_requests_total: counter(&registry, "tollgate_cache_requests_total"),
            cache_bytes: gauge(&registry, "tollgate_cache_bytes"),
            cache_evictions_total: counter(&registry, "tollgate_cache_evictions_total"),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_list_every_metric() {
        let doc = include_str!("../docs/metrics.md");
        for (name, kind, labels, _) in METRICS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("docs/metrics.md has no row for {name}"));
            assert!(
                row.contains(&format!("| {kind} |")),
                "{name}: type {kind} not in its row"
            );
            for label in *labels {
                assert!(
                    row.contains(&format!("`{label}`")),
                    "{name}: label {label} not in its row"
                );
            }
        }
        for line in doc.lines().filter(|l| l.starts_with("| `tollgate_")) {
            let name = line
                .trim_start_matches("| `")
                .split('`')
                .next()
                .unwrap_or("");
            assert!(
                METRICS.iter().any(|m| m.0 == name),
                "docs/metrics.md lists {name}, which src/metrics.rs does not export"
            );
        }
    }
}
