//! Turns the file model into the runtime `Config`: every reference resolves, addresses
//! parse, durations read as `500ms`/`5s`/`2m`, and every error names its key path.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::file::{
    FileConfig, HealthFile, ListenerFile, PoolFile, ProtocolFile, RouteRuleFile, SniRuleFile,
};
use crate::error::ConfigError;
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
    /// Pool name.
    pub pool: String,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_request_header_bytes: 16_384,
        }
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

fn duration_at(
    path: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(text).ok_or_else(|| {
            ConfigError::new(
                path,
                format!("{text:?} is not a duration (write 500ms, 5s, 2m or 1h)"),
            )
        }),
    }
}

/// Quotes a map key for a key path when it holds dots or a `*`.
fn key(name: &str) -> String {
    if name.contains(['.', '*', ' ', '"']) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// Resolves `host:port` (IP or name) to its first address.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!("{text:?} has no port (write host:port)"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(err) => Err(format!("cannot resolve {text:?}: {err}")),
    }
}

/// Validates the file model into a runtime `Config`.
pub fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let defaults = Timeouts::default();
    let t = &file.timeouts;
    let timeouts = Timeouts {
        client_hello: duration_at(
            "timeouts.client_hello",
            &t.client_hello,
            defaults.client_hello,
        )?,
        handshake: duration_at("timeouts.handshake", &t.handshake, defaults.handshake)?,
        connect: duration_at("timeouts.connect", &t.connect, defaults.connect)?,
        request_header: duration_at(
            "timeouts.request_header",
            &t.request_header,
            defaults.request_header,
        )?,
        client_idle: duration_at("timeouts.client_idle", &t.client_idle, defaults.client_idle)?,
        backend_response: duration_at(
            "timeouts.backend_response",
            &t.backend_response,
            defaults.backend_response,
        )?,
        tunnel_idle: duration_at("timeouts.tunnel_idle", &t.tunnel_idle, defaults.tunnel_idle)?,
    };
    for (path, d) in [
        ("timeouts.client_hello", timeouts.client_hello),
        ("timeouts.handshake", timeouts.handshake),
        ("timeouts.connect", timeouts.connect),
        ("timeouts.request_header", timeouts.request_header),
        ("timeouts.client_idle", timeouts.client_idle),
        ("timeouts.backend_response", timeouts.backend_response),
        ("timeouts.tunnel_idle", timeouts.tunnel_idle),
    ] {
        if d.is_zero() {
            return Err(ConfigError::new(path, "must be greater than zero"));
        }
    }

    let default_limits = Limits::default();
    let limits = Limits {
        max_connections: file
            .limits
            .max_connections
            .unwrap_or(default_limits.max_connections),
        max_request_header_bytes: file
            .limits
            .max_request_header_bytes
            .unwrap_or(default_limits.max_request_header_bytes),
    };
    if limits.max_connections == 0 {
        return Err(ConfigError::new(
            "limits.max_connections",
            "must be at least 1",
        ));
    }
    if limits.max_request_header_bytes < 1024 {
        return Err(ConfigError::new(
            "limits.max_request_header_bytes",
            "must be at least 1024",
        ));
    }

    if file.runtime.worker_threads == Some(0) {
        return Err(ConfigError::new(
            "runtime.worker_threads",
            "must be at least 1",
        ));
    }
    let shutdown_grace = duration_at(
        "runtime.shutdown_grace",
        &file.runtime.shutdown_grace,
        Duration::from_secs(30),
    )?;

    let access_log = match file.access_log.as_deref() {
        None | Some("stderr") => AccessLog::Stderr,
        Some("off") => AccessLog::Off,
        Some("") => {
            return Err(ConfigError::new(
                "access_log",
                "empty: write off, stderr or a file path",
            ))
        }
        Some(path) => AccessLog::File(PathBuf::from(path)),
    };

    let access_log_format = match file.access_log_format.as_deref() {
        None | Some("json") => crate::access_log::Format::Json,
        Some("text") => crate::access_log::Format::Text,
        Some(other) => {
            return Err(ConfigError::new(
                "access_log_format",
                format!("unknown format {other:?} (json, text)"),
            ))
        }
    };
    let admin = match &file.admin {
        None => None,
        Some(a) => Some(a.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{:?} is not an ip:port address", a.listen),
            )
        })?),
    };

    let certificates = file
        .certificates
        .iter()
        .map(|c| CertificateSpec {
            cert: PathBuf::from(&c.cert),
            key: PathBuf::from(&c.key),
            names: c.names.clone(),
        })
        .collect();

    let mut pools = BTreeMap::new();
    for (name, pool) in &file.pools {
        pools.insert(name.clone(), validate_pool(name, pool)?);
    }

    let mut routes = BTreeMap::new();
    for (name, rules) in &file.routes {
        routes.insert(name.clone(), validate_routes(name, rules, &pools)?);
    }

    if file.listeners.is_empty() {
        return Err(ConfigError::new(
            "listeners",
            "at least one listener is needed",
        ));
    }
    let mut listeners: Vec<ListenerSpec> = Vec::new();
    for (index, l) in file.listeners.iter().enumerate() {
        let spec = validate_listener(index, l, &limits, &pools, &routes)?;
        if let Some(prev) = listeners.iter().position(|p| p.name == spec.name) {
            return Err(ConfigError::new(
                format!("listeners[{index}].name"),
                format!("{:?} is already the name of listeners[{prev}]", spec.name),
            ));
        }
        if let Some(prev) = listeners
            .iter()
            .position(|p| p.listen == spec.listen && spec.listen.port() != 0)
        {
            return Err(ConfigError::new(
                format!("listeners[{index}].listen"),
                format!(
                    "{} is already the address of listeners[{prev}]",
                    spec.listen
                ),
            ));
        }
        listeners.push(spec);
    }

    Ok(Config {
        worker_threads: file.runtime.worker_threads,
        shutdown_grace,
        access_log,
        access_log_format,
        admin,
        certificates,
        listeners,
        routes,
        pools,
        timeouts,
        limits,
    })
}

fn validate_pool(name: &str, pool: &PoolFile) -> Result<PoolSpec, ConfigError> {
    let base = format!("pools.{}", key(name));
    let balance = match pool.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("weighted") => Balance::Weighted,
        Some("least_conn") => Balance::LeastConn,
        Some("p2c") => Balance::P2c,
        Some("source_hash") => Balance::SourceHash,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{base}.balance"),
                format!(
                "unknown algorithm {other:?} (round_robin, weighted, least_conn, p2c, source_hash)"
            ),
            ))
        }
    };
    let backend_connections = match pool.backend_connections.as_deref() {
        None | Some("per_request") => BackendConnections::PerRequest,
        Some("pooled") => BackendConnections::Pooled,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{base}.backend_connections"),
                format!("unknown mode {other:?} (per_request, pooled)"),
            ))
        }
    };
    let idle_timeout = duration_at(
        &format!("{base}.idle_timeout"),
        &pool.idle_timeout,
        Duration::from_secs(5),
    )?;
    if idle_timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{base}.idle_timeout"),
            "must be greater than zero",
        ));
    }
    if pool.servers.is_empty() {
        return Err(ConfigError::new(
            format!("{base}.servers"),
            "a pool needs at least one server",
        ));
    }
    let mut servers = Vec::with_capacity(pool.servers.len());
    for (i, s) in pool.servers.iter().enumerate() {
        let path = format!("{base}.servers[{i}].addr");
        let addr = resolve_addr(&s.addr).map_err(|m| ConfigError::new(&path, m))?;
        servers.push(ServerSpec {
            name: s.addr.clone(),
            addr,
            weight: s.weight.unwrap_or(1),
            sni: s.sni.clone(),
        });
    }
    let health = match &pool.health {
        None => None,
        Some(h) => Some(validate_health(&format!("{base}.health"), h)?),
    };
    Ok(PoolSpec {
        name: name.to_string(),
        balance,
        backend_connections,
        idle_timeout,
        servers,
        health,
        fail_open: pool.fail_open.unwrap_or(false),
    })
}

fn validate_health(base: &str, h: &HealthFile) -> Result<HealthSpec, ConfigError> {
    if h.path.is_some() && h.check != "http" {
        return Err(ConfigError::new(
            format!("{base}.path"),
            "only used by check: http",
        ));
    }
    let check = match h.check.as_str() {
        "tcp" => CheckKind::Tcp,
        "tls" => CheckKind::Tls,
        "http" => {
            let path = h.path.clone().unwrap_or_else(|| "/health".to_string());
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{base}.path"),
                    "must start with /",
                ));
            }
            CheckKind::Http { path }
        }
        other => {
            return Err(ConfigError::new(
                format!("{base}.check"),
                format!("unknown check {other:?} (tcp, http, tls)"),
            ))
        }
    };
    let interval = duration_at(
        &format!("{base}.interval"),
        &h.interval,
        Duration::from_secs(2),
    )?;
    let timeout = duration_at(
        &format!("{base}.timeout"),
        &h.timeout,
        Duration::from_secs(1),
    )?;
    let rise = h.rise.unwrap_or(2);
    let fall = h.fall.unwrap_or(3);
    if interval.is_zero() {
        return Err(ConfigError::new(
            format!("{base}.interval"),
            "must be greater than zero",
        ));
    }
    if rise == 0 {
        return Err(ConfigError::new(
            format!("{base}.rise"),
            "must be at least 1",
        ));
    }
    if fall == 0 {
        return Err(ConfigError::new(
            format!("{base}.fall"),
            "must be at least 1",
        ));
    }
    let expect_status = h.expect_status.clone().unwrap_or_default();
    if let Some(bad) = expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        return Err(ConfigError::new(
            format!("{base}.expect_status"),
            format!("{bad} is not an HTTP status"),
        ));
    }
    if !expect_status.is_empty() && !matches!(check, CheckKind::Http { .. }) {
        return Err(ConfigError::new(
            format!("{base}.expect_status"),
            "only used by check: http",
        ));
    }
    Ok(HealthSpec {
        check,
        interval,
        timeout,
        rise,
        fall,
        expect_status,
        passive_fall: h.passive_fall.unwrap_or(fall),
        passive_5xx: h.passive_5xx.unwrap_or(false),
    })
}

fn validate_routes(
    name: &str,
    rules: &[RouteRuleFile],
    pools: &BTreeMap<String, PoolSpec>,
) -> Result<Vec<RouteRule>, ConfigError> {
    let base = format!("routes.{}", key(name));
    if rules.is_empty() {
        return Err(ConfigError::new(
            base,
            "a routing table needs at least one rule",
        ));
    }
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let host = match &r.host {
            None => None,
            Some(h) => Some(HostPattern::parse(h).ok_or_else(|| {
                ConfigError::new(
                    format!("{base}[{i}].host"),
                    format!("{h:?} is not a host name or *.suffix"),
                )
            })?),
        };
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".to_string());
        if !path_prefix.starts_with('/') {
            return Err(ConfigError::new(
                format!("{base}[{i}].path_prefix"),
                "must start with /",
            ));
        }
        if !pools.contains_key(&r.pool) {
            return Err(ConfigError::new(
                format!("{base}[{i}].pool"),
                format!("no pool named {:?}", r.pool),
            ));
        }
        out.push(RouteRule {
            host,
            path_prefix,
            pool: r.pool.clone(),
        });
    }
    Ok(out)
}

fn sni_action(
    path: &str,
    rule: &SniRuleFile,
    pools: &BTreeMap<String, PoolSpec>,
    routes: &BTreeMap<String, Vec<RouteRule>>,
) -> Result<SniAction, ConfigError> {
    match rule {
        SniRuleFile::Passthrough(pool) => {
            if !pools.contains_key(pool) {
                return Err(ConfigError::new(
                    format!("{path}.passthrough"),
                    format!("no pool named {pool:?}"),
                ));
            }
            Ok(SniAction::Passthrough(pool.clone()))
        }
        SniRuleFile::Terminate(table) => {
            if !routes.contains_key(table) {
                return Err(ConfigError::new(
                    format!("{path}.terminate"),
                    format!("no routing table named {table:?} under routes"),
                ));
            }
            Ok(SniAction::Terminate(table.clone()))
        }
        SniRuleFile::Reject => Ok(SniAction::Reject),
    }
}

fn validate_listener(
    index: usize,
    l: &ListenerFile,
    limits: &Limits,
    pools: &BTreeMap<String, PoolSpec>,
    routes: &BTreeMap<String, Vec<RouteRule>>,
) -> Result<ListenerSpec, ConfigError> {
    let base = format!("listeners[{index}]");
    if l.name.is_empty() {
        return Err(ConfigError::new(
            format!("{base}.name"),
            "must not be empty",
        ));
    }
    let listen = l.listen.parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            format!("{base}.listen"),
            format!("{:?} is not an ip:port address", l.listen),
        )
    })?;
    let max_connections = l.max_connections.unwrap_or(limits.max_connections);
    if max_connections == 0 {
        return Err(ConfigError::new(
            format!("{base}.max_connections"),
            "must be at least 1",
        ));
    }
    let unexpected = |field: &str, protocol: &str| {
        ConfigError::new(
            format!("{base}.{field}"),
            format!("not used by a {protocol} listener"),
        )
    };
    let kind = match l.protocol {
        ProtocolFile::Tls => {
            if l.pool.is_some() {
                return Err(unexpected("pool", "tls"));
            }
            if l.routes.is_some() {
                return Err(unexpected("routes", "tls"));
            }
            if l.redirect_https.is_some() {
                return Err(unexpected("redirect_https", "tls"));
            }
            let mut table = HostTable::new();
            for (name, rule) in l.sni.iter().flatten() {
                let path = format!("{base}.sni.{}", key(name));
                let pattern = HostPattern::parse(name).ok_or_else(|| {
                    ConfigError::new(&path, format!("{name:?} is not a host name or *.suffix"))
                })?;
                table.insert(pattern, sni_action(&path, rule, pools, routes)?);
            }
            if let Some(rule) = &l.default {
                table.set_default(sni_action(&format!("{base}.default"), rule, pools, routes)?);
            }
            if l.sni.as_ref().is_none_or(|m| m.is_empty()) && l.default.is_none() {
                return Err(ConfigError::new(
                    format!("{base}.sni"),
                    "a tls listener needs sni rules or a default",
                ));
            }
            ListenerKind::Tls { sni: table }
        }
        ProtocolFile::Tcp => {
            if l.sni.is_some() {
                return Err(unexpected("sni", "tcp"));
            }
            if l.default.is_some() {
                return Err(unexpected("default", "tcp"));
            }
            if l.routes.is_some() {
                return Err(unexpected("routes", "tcp"));
            }
            if l.redirect_https.is_some() {
                return Err(unexpected("redirect_https", "tcp"));
            }
            let Some(pool) = &l.pool else {
                return Err(ConfigError::new(
                    format!("{base}.pool"),
                    "a tcp listener needs a pool",
                ));
            };
            if !pools.contains_key(pool) {
                return Err(ConfigError::new(
                    format!("{base}.pool"),
                    format!("no pool named {pool:?}"),
                ));
            }
            ListenerKind::Tcp { pool: pool.clone() }
        }
        ProtocolFile::Http => {
            if l.sni.is_some() {
                return Err(unexpected("sni", "http"));
            }
            if l.default.is_some() {
                return Err(unexpected("default", "http"));
            }
            if l.pool.is_some() {
                return Err(unexpected("pool", "http"));
            }
            let action = match (&l.routes, l.redirect_https) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{base}.redirect_https"),
                        "set either routes or redirect_https, not both",
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        format!("{base}.routes"),
                        "an http listener needs routes or redirect_https",
                    ))
                }
                (Some(table), None) => {
                    if !routes.contains_key(table) {
                        return Err(ConfigError::new(
                            format!("{base}.routes"),
                            format!("no routing table named {table:?} under routes"),
                        ));
                    }
                    HttpAction::Routes(table.clone())
                }
                (None, Some(port)) => {
                    if port == 0 {
                        return Err(ConfigError::new(
                            format!("{base}.redirect_https"),
                            "must be a port, 1-65535",
                        ));
                    }
                    HttpAction::RedirectHttps(port)
                }
            };
            ListenerKind::Http { action }
        }
    };
    Ok(ListenerSpec {
        name: l.name.clone(),
        listen,
        max_connections,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s", "5 sec"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
