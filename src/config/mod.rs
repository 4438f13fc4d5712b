//! Configuration: `file.rs` is the YAML model (unknown keys rejected), `validate.rs`
//! turns it into the runtime [`Config`] whose types live in `model.rs`. [`load`] does
//! both for a path.

pub mod content;
pub mod file;
pub mod model;
mod pools;
mod protection;
pub mod validate;

use std::path::Path;

pub use model::{CacheSpec, Coding, CompressSpec, RouteTarget, StaticSpec};
pub use validate::{
    AccessLog, BackendConnections, Balance, BanOn, BanSpec, CertificateSpec, CheckKind, Config,
    HealthSpec, HttpAction, Limits, ListenerKind, ListenerSpec, PoolSpec, RateLimit, RouteRule,
    ServerSpec, SniAction, Timeouts,
};

use crate::error::LoadError;

/// Parses and validates YAML text.
pub fn from_yaml(text: &str) -> Result<Config, LoadError> {
    let file = file::parse(text)?;
    Ok(validate::validate(file)?)
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text)
}
