//! Validation of `pools:`: algorithm, backend connection mode, servers (addresses
//! resolved), health checks (active and passive), each error naming its key path.

use std::time::Duration;

use super::file::{HealthFile, PoolFile};
use super::model::{BackendConnections, Balance, CheckKind, HealthSpec, PoolSpec, ServerSpec};
use super::validate::{duration_at, key, resolve_addr};
use crate::error::ConfigError;

pub(super) fn validate_pool(name: &str, pool: &PoolFile) -> Result<PoolSpec, ConfigError> {
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
        batch_sends: pool.batch_sends.unwrap_or(false),
        servers,
        health,
        fail_open: pool.fail_open.unwrap_or(false),
    })
}

pub(super) fn validate_health(base: &str, h: &HealthFile) -> Result<HealthSpec, ConfigError> {
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
    if timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{base}.timeout"),
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
