//! Turns the file model into the runtime `Config`: every reference resolves, addresses
//! parse, durations read as `500ms`/`5s`/`2m`, and every error names its key path.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use super::model::*;

use super::file::{FileConfig, ListenerFile, ProtocolFile, RouteRuleFile, SniRuleFile};
use crate::error::ConfigError;
use crate::route::{HostPattern, HostTable};

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

pub(super) fn duration_at(
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
pub(super) fn key(name: &str) -> String {
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
        max_connections_per_ip: file.limits.max_connections_per_ip,
        max_request_body_bytes: file.limits.max_request_body_bytes,
        max_requests_per_connection: file.limits.max_requests_per_connection,
    };
    if limits.max_connections_per_ip == Some(0) {
        return Err(ConfigError::new(
            "limits.max_connections_per_ip",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    if limits.max_requests_per_connection == Some(0) {
        return Err(ConfigError::new(
            "limits.max_requests_per_connection",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let rate_limit = match &file.rate_limit {
        None => None,
        Some(r) => Some(super::protection::validate_rate_limit("rate_limit", r)?),
    };
    let ban = match &file.ban {
        None => None,
        Some(b) => Some(super::protection::validate_ban("ban", b)?),
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
        pools.insert(name.clone(), super::pools::validate_pool(name, pool)?);
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
        let spec = validate_listener(index, l, &limits, (rate_limit, &ban), &pools, &routes)?;
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
        let at = format!("{base}[{i}]");
        let target = match (&r.pool, &r.static_files) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(at, "set either pool or static, not both"))
            }
            (None, None) => return Err(ConfigError::new(at, "a rule needs a pool or static")),
            (Some(pool), None) => {
                if !pools.contains_key(pool) {
                    return Err(ConfigError::new(
                        format!("{at}.pool"),
                        format!("no pool named {pool:?}"),
                    ));
                }
                RouteTarget::Pool(pool.clone())
            }
            (None, Some(s)) => {
                RouteTarget::Static(super::content::validate_static(&format!("{at}.static"), s)?)
            }
        };
        let compress = match &r.compress {
            None => None,
            Some(c) => Some(super::content::validate_compress(
                &format!("{at}.compress"),
                c,
            )?),
        };
        let cache = match &r.cache {
            None => None,
            Some(_) if matches!(target, RouteTarget::Static(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.cache"),
                    "a static route is served from its files; cache applies to pool routes",
                ))
            }
            Some(c) => Some(super::content::validate_cache(&format!("{at}.cache"), c)?),
        };
        let rate_limit = match &r.rate_limit {
            None => None,
            Some(rl) => Some(super::protection::validate_rate_limit(
                &format!("{at}.rate_limit"),
                rl,
            )?),
        };
        out.push(RouteRule {
            host,
            path_prefix,
            target,
            compress,
            cache,
            rate_limit,
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
    (default_rate_limit, default_ban): (Option<RateLimit>, &Option<BanSpec>),
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
    let max_connections_per_ip = l.max_connections_per_ip.or(limits.max_connections_per_ip);
    if l.max_connections_per_ip == Some(0) {
        return Err(ConfigError::new(
            format!("{base}.max_connections_per_ip"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let rate_limit = match &l.rate_limit {
        None => default_rate_limit,
        Some(r) => Some(super::protection::validate_rate_limit(
            &format!("{base}.rate_limit"),
            r,
        )?),
    };
    let (ban, ban_path) = match &l.ban {
        None => (default_ban.clone(), "ban.on".to_string()),
        Some(b) => (
            Some(super::protection::validate_ban(&format!("{base}.ban"), b)?),
            format!("{base}.ban.on"),
        ),
    };
    if let Some(b) = &ban {
        let fits = match b.on {
            BanOn::Connections => true,
            BanOn::Requests => l.protocol != ProtocolFile::Tcp,
            BanOn::HandshakeFailures => l.protocol == ProtocolFile::Tls,
        };
        if !fits {
            return Err(ConfigError::new(
                ban_path,
                format!(
                    "{} does not apply to {base} ({:?}, a {} listener); give it its own ban rule",
                    b.on.as_str(),
                    l.name,
                    match l.protocol {
                        ProtocolFile::Tls => "tls",
                        ProtocolFile::Http => "http",
                        ProtocolFile::Tcp => "tcp",
                    }
                ),
            ));
        }
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
        max_connections_per_ip,
        rate_limit,
        ban,
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
