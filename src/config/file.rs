//! The config file's serde model: exactly the YAML an operator writes (DESIGN §4),
//! with unknown keys rejected. The YAML library lives only here, so replacing it is a
//! one-line change. `validate.rs` turns this model into the runtime `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::ConfigError;

/// Parses YAML text into the file model. Errors name the key path.
pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    let yaml = serde_yaml::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(yaml, &mut track);
    // Enums are written as one-key maps (`{ passthrough: vault }`) or bare words (`reject`).
    let parsed: Result<FileConfig, serde_yaml::Error> =
        serde_yaml::with::singleton_map_recursive::deserialize(tracked);
    parsed.map_err(|err| {
        let path = track.path().to_string();
        let path = if path == "." || path.is_empty() {
            "(top)".to_string()
        } else {
            path
        };
        // serde_yaml prefixes its own idea of the path; keep one.
        let text = err.to_string();
        let message = match text.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
            _ => text,
        };
        ConfigError::new(path, message)
    })
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Runtime sizing.
    #[serde(default)]
    pub runtime: RuntimeFile,
    /// `off`, `stderr` or a file path.
    pub access_log: Option<String>,
    /// `json` (default) or `text`.
    pub access_log_format: Option<String>,
    /// The admin listener.
    pub admin: Option<AdminFile>,
    /// Certificates for terminate routes.
    #[serde(default)]
    pub certificates: Vec<CertificateFile>,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// L7 routing tables by name.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<RouteRuleFile>>,
    /// Backend pools by name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolFile>,
    /// Timeouts (durations as `500ms`, `5s`, `2m`).
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Global limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Default per-client-address rate limit of every listener.
    pub rate_limit: Option<RateLimitFile>,
    /// Default temporary-ban rule of every listener.
    pub ban: Option<BanFile>,
}

/// `ban:` (top level or per listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanFile {
    /// Events allowed within `window`; one more bans the address.
    pub threshold: u32,
    /// The counting window (`10s`).
    pub window: String,
    /// How long a ban lasts (`5m`).
    pub duration: String,
    /// What counts: requests | connections | handshake_failures (default connections).
    pub on: Option<BanOnFile>,
    /// Addresses never banned (CIDR blocks or single addresses).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `ban.on:`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanOnFile {
    /// HTTP requests (http listeners and terminate routes).
    Requests,
    /// New connections.
    Connections,
    /// ClientHellos refused and TLS handshakes failed (tls listeners).
    HandshakeFailures,
}

/// `rate_limit:` (top level or per listener): a token bucket per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Tokens added per second (requests or connections per second, sustained).
    pub rate: f64,
    /// Bucket size: how many may arrive at once.
    pub burst: Option<u32>,
}

/// `runtime:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// Tokio worker threads; default one per core.
    pub worker_threads: Option<usize>,
    /// How long open connections may finish after SIGTERM.
    pub shutdown_grace: Option<String>,
}

/// `admin:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin listener.
    pub listen: String,
}

/// One entry of `certificates:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Names this certificate serves; default: its SANs.
    pub names: Option<Vec<String>>,
}

/// `protocol:` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolFile {
    /// Peek the ClientHello and route by SNI.
    Tls,
    /// Plain HTTP into the L7 module.
    Http,
    /// Plain TCP to a pool.
    Tcp,
}

/// What to do with a connection: one SNI rule or a listener's default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SniRuleFile {
    /// Splice raw TCP to this pool.
    Passthrough(String),
    /// Terminate TLS, then route with this routing table.
    Terminate(String),
    /// Close the connection.
    Reject,
}

/// One entry of `listeners:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Name used in logs and metrics.
    pub name: String,
    /// Address to bind.
    pub listen: String,
    /// tls | http | tcp.
    pub protocol: ProtocolFile,
    /// SNI name (exact or `*.suffix`) → rule (tls listeners).
    pub sni: Option<BTreeMap<String, SniRuleFile>>,
    /// Rule for no SNI or an unknown one (tls listeners).
    pub default: Option<SniRuleFile>,
    /// Pool (tcp listeners).
    pub pool: Option<String>,
    /// Routing table (http listeners).
    pub routes: Option<String>,
    /// Answer 308 to https on this port (http listeners).
    pub redirect_https: Option<u16>,
    /// Per-listener connection limit (overrides `limits.max_connections`).
    pub max_connections: Option<usize>,
    /// Per-listener limit of connections open at once from one client address
    /// (overrides `limits.max_connections_per_ip`).
    pub max_connections_per_ip: Option<u32>,
    /// Per-listener rate limit (overrides the top-level `rate_limit`).
    pub rate_limit: Option<RateLimitFile>,
    /// Per-listener ban rule (overrides the top-level `ban`).
    pub ban: Option<BanFile>,
}

/// One rule of a routing table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRuleFile {
    /// Host (exact or `*.suffix`); absent: any host.
    pub host: Option<String>,
    /// Path prefix; absent: `/`.
    pub path_prefix: Option<String>,
    /// Pool to forward to (or `static`).
    pub pool: Option<String>,
    /// Serve files from a directory instead of a pool.
    #[serde(rename = "static")]
    pub static_files: Option<StaticFile>,
    /// Compress responses of this route.
    pub compress: Option<CompressFile>,
    /// Cache responses of this route in memory.
    pub cache: Option<CacheFile>,
    /// A token bucket per client address for the requests of this route.
    pub rate_limit: Option<RateLimitFile>,
}

/// `static:` of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    /// The directory served; the path after the route's prefix is looked up under it.
    pub root: String,
    /// File served for a directory (default `index.html`).
    pub index: Option<String>,
}

/// A size: a number of bytes, or text with a unit (`64MiB`, `512KiB`, `1GiB`, `10MB`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeFile {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// `compress:` of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressFile {
    /// Codings offered, in the server's order of preference: gzip, br, zstd.
    pub algorithms: Option<Vec<String>>,
    /// Smallest response compressed (bytes; default 1024).
    pub min_bytes: Option<u64>,
    /// Content types compressed (default: text and JSON/JS/XML/SVG types).
    pub types: Option<Vec<String>>,
}

/// `cache:` of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Total bytes held (`64MiB`, `512KiB`, or a number of bytes).
    pub max_bytes: SizeFile,
    /// Largest single response stored (default: an eighth of max_bytes, at most 8 MiB).
    pub max_object_bytes: Option<SizeFile>,
    /// Add `X-Cache: HIT|MISS` to responses (default true).
    pub x_cache_header: Option<bool>,
}

/// One entry of `pools:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Balancing algorithm.
    pub balance: Option<String>,
    /// `per_request` | `pooled`.
    pub backend_connections: Option<String>,
    /// How long a pooled idle backend connection is kept (default 5s).
    pub idle_timeout: Option<String>,
    /// `pooled` only: queue body-less requests on reused connections and write them
    /// once per scheduler turn (default false).
    pub batch_sends: Option<bool>,
    /// The backends.
    #[serde(default)]
    pub servers: Vec<ServerFile>,
    /// Active health check.
    pub health: Option<HealthFile>,
    /// When every backend is down, keep trying all of them instead of refusing.
    pub fail_open: Option<bool>,
}

/// One backend server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// `ip:port` or `host:port`.
    pub addr: String,
    /// Relative weight, default 1; 0 drains.
    pub weight: Option<u32>,
    /// SNI to send to this backend (TLS health checks); default: the host part of addr.
    pub sni: Option<String>,
}

/// `health:` of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// tcp | http | tls.
    pub check: String,
    /// HTTP path for `check: http`.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Option<String>,
    /// Time a check may take.
    pub timeout: Option<String>,
    /// Successes to mark a backend up.
    pub rise: Option<u32>,
    /// Failures to mark a backend down.
    pub fall: Option<u32>,
    /// Statuses an http check accepts (default: any 2xx).
    pub expect_status: Option<Vec<u16>>,
    /// Consecutive failed connects (or 5xx, with `passive_5xx`) that mark a backend down
    /// between checks; default `fall`; 0 turns passive health off.
    pub passive_fall: Option<u32>,
    /// Count 5xx answers of an HTTP pool as passive failures (default false).
    pub passive_5xx: Option<bool>,
}

/// `timeouts:` — each a duration string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub client_hello: Option<String>,
    pub handshake: Option<String>,
    pub connect: Option<String>,
    pub request_header: Option<String>,
    pub client_idle: Option<String>,
    pub backend_response: Option<String>,
    pub tunnel_idle: Option<String>,
}

/// `limits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections open at once per listener.
    pub max_connections: Option<usize>,
    /// Largest request header block.
    pub max_request_header_bytes: Option<usize>,
    /// Connections open at once from one client address, per listener.
    pub max_connections_per_ip: Option<u32>,
    /// Largest request body (413 above it).
    pub max_request_body_bytes: Option<u64>,
    /// Requests served on one client connection; the last one says `Connection: close`.
    pub max_requests_per_connection: Option<u64>,
}
