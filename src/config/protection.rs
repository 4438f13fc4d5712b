//! Validation of the protection keys (`rate_limit:`, `ban:`), at the top level and per
//! listener, each error naming its key path.

use std::time::Duration;

use super::file::{BanFile, BanOnFile, RateLimitFile};
use super::model::*;
use super::validate::duration_at;
use crate::error::ConfigError;

/// Checks a `rate_limit:` block at `path`; `burst` defaults to twice the rate (at least 1).
pub(super) fn validate_rate_limit(path: &str, r: &RateLimitFile) -> Result<RateLimit, ConfigError> {
    if !r.rate.is_finite() || r.rate <= 0.0 {
        return Err(ConfigError::new(
            format!("{path}.rate"),
            "must be a number greater than zero (per second)",
        ));
    }
    let burst = match r.burst {
        Some(0) => {
            return Err(ConfigError::new(
                format!("{path}.burst"),
                "must be at least 1",
            ))
        }
        Some(b) => b,
        None => ((r.rate * 2.0).ceil() as u32).max(1),
    };
    Ok(RateLimit {
        rate: r.rate,
        burst,
    })
}

/// Checks a `ban:` block at `path`.
pub(super) fn validate_ban(path: &str, b: &BanFile) -> Result<BanSpec, ConfigError> {
    if b.threshold == 0 {
        return Err(ConfigError::new(
            format!("{path}.threshold"),
            "must be at least 1",
        ));
    }
    let window = duration_at(
        &format!("{path}.window"),
        &Some(b.window.clone()),
        Duration::ZERO,
    )?;
    let duration = duration_at(
        &format!("{path}.duration"),
        &Some(b.duration.clone()),
        Duration::ZERO,
    )?;
    for (key, d) in [("window", window), ("duration", duration)] {
        if d.is_zero() {
            return Err(ConfigError::new(
                format!("{path}.{key}"),
                "must be greater than zero",
            ));
        }
    }
    let on = match b.on {
        None | Some(BanOnFile::Connections) => BanOn::Connections,
        Some(BanOnFile::Requests) => BanOn::Requests,
        Some(BanOnFile::HandshakeFailures) => BanOn::HandshakeFailures,
    };
    let mut allow = Vec::with_capacity(b.allow.len());
    for (i, text) in b.allow.iter().enumerate() {
        allow.push(crate::protect::Cidr::parse(text).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.allow[{i}]"),
                format!("{text:?} is not an address or CIDR block (10.0.0.0/8, 2001:db8::/32)"),
            )
        })?);
    }
    Ok(BanSpec {
        threshold: b.threshold,
        window,
        duration,
        on,
        allow,
    })
}
