//! The runtime configuration: what `validate.rs` produces from the file model and what
//! the server runs on. Plain data, with the defaults of DESIGN §4.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::route::{HostPattern, HostTable};

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tokio worker threads (`None`: one per core).
    pub worker_threads: Option<usize>,
    /// How long open connections may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Where access log lines go.
    pub access_log: AccessLog,
    /// Access log line format.
    pub access_log_format: crate::access_log::Format,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// Certificates for terminate routes.
    pub certificates: Vec<CertificateSpec>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerSpec>,
    /// L7 routing tables by name.
    pub routes: BTreeMap<String, Vec<RouteRule>>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolSpec>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
}

/// Access log destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log, and no per-request formatting work.
    Off,
    /// One line per request / connection on stderr.
    Stderr,
    /// Appended to this file.
    File(PathBuf),
}

/// A certificate and key for termination.
#[derive(Debug, Clone)]
pub struct CertificateSpec {
    /// PEM chain file.
    pub cert: PathBuf,
    /// PEM key file.
    pub key: PathBuf,
    /// Explicit names (`None`: the SANs).
    pub names: Option<Vec<String>>,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Name for logs and metrics.
    pub name: String,
    /// Bind address.
    pub listen: SocketAddr,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (`None`: no limit).
    pub max_connections_per_ip: Option<u32>,
    /// Token bucket per client address (`None`: no rate limit).
    pub rate_limit: Option<RateLimit>,
    /// Temporary bans (`None`: none).
    pub ban: Option<BanSpec>,
    /// What it does with a connection.
    pub kind: ListenerKind,
}

/// What a listener does with a connection.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// Peek the ClientHello, route by SNI.
    Tls {
        /// SNI → action, with the `default` rule as the table default.
        sni: HostTable<SniAction>,
    },
    /// Splice to a pool.
    Tcp {
        /// Pool name.
        pool: String,
    },
    /// Plain HTTP.
    Http {
        /// Routing table name, or a redirect.
        action: HttpAction,
    },
}

/// An action for a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniAction {
    /// Splice to this pool.
    Passthrough(String),
    /// Terminate and route with this routing table.
    Terminate(String),
    /// Close.
    Reject,
}

/// What a `protocol: http` listener does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAction {
    /// Proxy with this routing table.
    Routes(String),
    /// 308 to `https://HOST:port/PATH?QUERY`.
    RedirectHttps(u16),
}

/// One L7 routing rule.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// Host pattern; `None` matches any host.
    pub host: Option<HostPattern>,
    /// Path prefix.
    pub path_prefix: String,
    /// Where its requests go.
    pub target: RouteTarget,
    /// Response compression (`None`: off).
    pub compress: Option<CompressSpec>,
    /// Response cache (`None`: off).
    pub cache: Option<CacheSpec>,
    /// Token bucket per client address for this route's requests (`None`: none).
    pub rate_limit: Option<RateLimit>,
}

impl RouteRule {
    /// The pool label of its metrics: the pool name, or `static`.
    pub fn pool_label(&self) -> &str {
        match &self.target {
            RouteTarget::Pool(name) => name,
            RouteTarget::Static(_) => "static",
        }
    }
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Forward to this pool.
    Pool(String),
    /// Serve files from a directory.
    Static(StaticSpec),
}

/// A directory served by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSpec {
    /// The directory (canonical, absolute).
    pub root: PathBuf,
    /// The file served for a directory.
    pub index: String,
}

/// A content coding tollgate can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Coding {
    /// The token of `Content-Encoding` / `Accept-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// Parses a token as written in the config or a header (case-insensitive).
    pub fn parse(token: &str) -> Option<Coding> {
        match token.to_ascii_lowercase().as_str() {
            "gzip" => Some(Coding::Gzip),
            "br" => Some(Coding::Brotli),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }
}

/// Compression of a route's responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressSpec {
    /// Codings offered, the server's preference first (breaks q-value ties).
    pub algorithms: Vec<Coding>,
    /// Responses smaller than this (by Content-Length) are sent as they are.
    pub min_bytes: u64,
    /// Media types compressed (lower case, without parameters; `text/*` allowed).
    pub types: Vec<String>,
}

/// The default `compress.types`.
pub const DEFAULT_COMPRESS_TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "text/plain",
    "text/javascript",
    "text/xml",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "image/svg+xml",
];

/// An in-memory response cache of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSpec {
    /// Total bytes held (bodies plus headers); least recently used entries go first.
    pub max_bytes: u64,
    /// Largest single response stored.
    pub max_object_bytes: u64,
    /// Whether responses carry `X-Cache: HIT|MISS`.
    pub x_cache_header: bool,
}

/// Balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn.
    RoundRobin,
    /// Smooth weighted round robin.
    Weighted,
    /// Fewest open connections.
    LeastConn,
    /// Power of two random choices.
    P2c,
    /// Consistent hash of the client address.
    SourceHash,
}

/// How the L7 module connects to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendConnections {
    /// A new connection per request, `Connection: close`.
    PerRequest,
    /// Reuse idle connections.
    Pooled,
}

/// A pool of backends.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Name.
    pub name: String,
    /// Algorithm.
    pub balance: Balance,
    /// L7 backend connection mode.
    pub backend_connections: BackendConnections,
    /// Longest a pooled idle backend connection is kept.
    pub idle_timeout: Duration,
    /// `pooled` only: body-less requests on reused connections are queued and written
    /// once per scheduler turn (`http/exchange/batch.rs`).
    pub batch_sends: bool,
    /// Backends in file order.
    pub servers: Vec<ServerSpec>,
    /// Active health check.
    pub health: Option<HealthSpec>,
    /// Keep trying every backend when all are down.
    pub fail_open: bool,
}

/// One backend.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// As written (`host:port`), for logs and metrics.
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative weight; 0 drains.
    pub weight: u32,
    /// SNI for TLS checks.
    pub sni: Option<String>,
}

/// Kind of active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Connect.
    Tcp,
    /// GET path, 2xx.
    Http {
        /// Path.
        path: String,
    },
    /// TLS handshake.
    Tls,
}

/// Active health check of a pool.
#[derive(Debug, Clone)]
pub struct HealthSpec {
    /// Kind.
    pub check: CheckKind,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Successes to go up.
    pub rise: u32,
    /// Failures to go down.
    pub fall: u32,
    /// Statuses an http check accepts (empty: any 2xx).
    pub expect_status: Vec<u16>,
    /// Consecutive passive failures that mark a backend down (0: off).
    pub passive_fall: u32,
    /// 5xx answers count as passive failures.
    pub passive_5xx: bool,
}

/// All timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Whole ClientHello.
    pub client_hello: Duration,
    /// TLS handshake (terminate).
    pub handshake: Duration,
    /// Backend connect.
    pub connect: Duration,
    /// Request headers (slowloris).
    pub request_header: Duration,
    /// Keep-alive idle.
    pub client_idle: Duration,
    /// Backend response.
    pub backend_response: Duration,
    /// Tunnel idle (passthrough, tcp).
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_hello: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(2),
            request_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            backend_response: Duration::from_secs(30),
            tunnel_idle: Duration::from_secs(300),
        }
    }
}

/// Limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per listener, open at once.
    pub max_connections: usize,
    /// Request header block.
    pub max_request_header_bytes: usize,
    /// Per listener, open at once from one client address (`None`: no limit).
    pub max_connections_per_ip: Option<u32>,
    /// Request body (`None`: no limit).
    pub max_request_body_bytes: Option<u64>,
    /// Requests per client connection (`None`: no limit).
    pub max_requests_per_connection: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_request_header_bytes: 16_384,
            max_connections_per_ip: None,
            max_request_body_bytes: None,
            max_requests_per_connection: None,
        }
    }
}

/// What a ban rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanOn {
    /// HTTP requests.
    Requests,
    /// New connections.
    Connections,
    /// Refused ClientHellos and failed TLS handshakes.
    HandshakeFailures,
}

impl BanOn {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            BanOn::Requests => "requests",
            BanOn::Connections => "connections",
            BanOn::HandshakeFailures => "handshake_failures",
        }
    }
}

/// A temporary-ban rule.
#[derive(Debug, Clone, PartialEq)]
pub struct BanSpec {
    /// Events allowed within `window`; one more bans.
    pub threshold: u32,
    /// Counting window.
    pub window: Duration,
    /// Ban length.
    pub duration: Duration,
    /// What counts.
    pub on: BanOn,
    /// Never banned.
    pub allow: Vec<crate::protect::Cidr>,
}

/// A token bucket per client address: `rate` tokens a second, `burst` at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub rate: f64,
    /// Bucket capacity.
    pub burst: u32,
}
