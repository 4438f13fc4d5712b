//! Typed errors of the library. Each runtime error says whose fault it is
//! (`Fault::Downstream` = the client, `Upstream` = a backend, `Internal` = us),
//! which decides the log level and, in the L7 module, the status code.

use std::io;
use std::path::PathBuf;

/// Whose fault an error is: decides how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong, or went away.
    Downstream,
    /// A backend refused, timed out or misbehaved.
    Upstream,
    /// Our own configuration or a local resource.
    Internal,
}

/// An invalid configuration: the key path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Key path in the YAML, as `listeners[0].sni."a.example.com".passthrough`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A config error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Reading a config file failed before or during validation.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The YAML does not fit the file model (syntax, unknown key, wrong type).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("listeners[{index}] ({name}): cannot listen on {addr}: {source}")]
    Bind {
        /// Listener index in the config.
        index: usize,
        /// Listener name.
        name: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The admin listener could not be bound.
    #[error("admin.listen: cannot listen on {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Building runtime state (pools, certificates) failed.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why a proxied connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The route's pool has no backend that is up.
    #[error("pool {pool}: no healthy backend")]
    NoHealthyBackend {
        /// The pool.
        pool: String,
    },
    /// Every candidate backend refused or timed out on connect.
    #[error("pool {pool}: all {tried} candidate backends failed to connect")]
    AllConnectsFailed {
        /// The pool.
        pool: String,
        /// How many were tried.
        tried: usize,
    },
    /// The client side failed.
    #[error("client: {0}")]
    Client(io::Error),
    /// The backend side failed.
    #[error("backend: {0}")]
    Backend(io::Error),
}

impl ProxyError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoHealthyBackend { .. } | ProxyError::AllConnectsFailed { .. } => {
                Fault::Upstream
            }
            ProxyError::Backend(_) => Fault::Upstream,
            ProxyError::Client(_) => Fault::Downstream,
        }
    }
}
