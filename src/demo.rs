//! `tollgate demo`: a self-contained edge on embedded defaults. Makes a throwaway CA and
//! certificates in a temp dir, starts two TLS built-in backends (for the passthrough
//! name) and two plain ones (for the terminated name), writes the balancer's config next
//! to them, starts the balancer, and returns curl lines that work as pasted.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config;
use crate::listener::bind;
use crate::origin::{self, OriginOptions};
use crate::server::Server;
use crate::tls::certgen::{CertGenError, TestCa};

/// The passthrough name: TLS reaches the backends untouched.
pub const PASSTHROUGH_NAME: &str = "secure.demo.test";
/// The terminated name: tollgate terminates TLS and proxies HTTP.
pub const TERMINATE_NAME: &str = "app.demo.test";

/// Errors starting the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Certificates.
    #[error(transparent)]
    Certs(#[from] CertGenError),
    /// The temp dir or a socket.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The generated config did not load (a bug).
    #[error(transparent)]
    Config(#[from] crate::error::LoadError),
    /// The balancer did not start.
    #[error(transparent)]
    Start(#[from] crate::error::StartError),
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The balancer.
    pub server: Server,
    /// The balancer's TLS port.
    pub edge: SocketAddr,
    /// The CA file clients trust.
    pub ca_file: PathBuf,
    /// The config file the balancer runs.
    pub config_file: PathBuf,
    /// PEM of the CA.
    pub ca_pem: String,
    backends_stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// The curl lines to paste: (name, command).
    pub fn curl_lines(&self) -> Vec<(String, String)> {
        [PASSTHROUGH_NAME, TERMINATE_NAME]
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    format!(
                        "curl --cacert {} --resolve {name}:{}:{} https://{name}:{}/",
                        self.ca_file.display(),
                        self.edge.port(),
                        self.edge.ip(),
                        self.edge.port()
                    ),
                )
            })
            .collect()
    }

    /// Stops the balancer (with `grace`) and the backends.
    pub async fn stop(self, grace: std::time::Duration) {
        self.server.shutdown(grace).await;
        self.backends_stop.cancel();
    }
}

async fn start_origin(
    name: &str,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    stop: &CancellationToken,
) -> Result<SocketAddr, std::io::Error> {
    let listener = bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
    let addr = listener.local_addr()?;
    let options = OriginOptions {
        name: name.to_string(),
        body_bytes: 0,
        tls,
    };
    tokio::spawn(origin::serve(listener, options, stop.clone()));
    Ok(addr)
}

/// Starts the demo with the balancer's TLS listener on `listen`.
pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()?;
    let ca = TestCa::new("tollgate demo CA")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let backend_cert = ca.issue(&[PASSTHROUGH_NAME])?;
    let edge_cert = ca.issue(&[TERMINATE_NAME])?;
    let (edge_cert_file, edge_key_file) = edge_cert.write(dir.path(), "app")?;
    let backend_tls = backend_cert.server_config()?;

    let stop = CancellationToken::new();
    let tls_a = start_origin("secure-a", Some(backend_tls.clone()), &stop).await?;
    let tls_b = start_origin("secure-b", Some(backend_tls), &stop).await?;
    let plain_a = start_origin("app-a", None, &stop).await?;
    let plain_b = start_origin("app-b", None, &stop).await?;

    let yaml = format!(
        r#"# Written by `tollgate demo`: one TLS port, one passthrough name, one terminated name.
access_log: stderr
certificates:
  - {{ cert: "{cert}", key: "{key}" }}
listeners:
  - name: edge
    listen: "{listen}"
    protocol: tls
    sni:
      {pass}: {{ passthrough: secure }}
      {term}: {{ terminate: web }}
    default: reject
routes:
  web:
    - {{ path_prefix: /, pool: app }}
pools:
  secure:
    servers: [ {{ addr: "{tls_a}" }}, {{ addr: "{tls_b}" }} ]
  app:
    backend_connections: per_request
    servers: [ {{ addr: "{plain_a}" }}, {{ addr: "{plain_b}" }} ]
"#,
        cert = edge_cert_file.display(),
        key = edge_key_file.display(),
        pass = PASSTHROUGH_NAME,
        term = TERMINATE_NAME,
    );
    let config_file = dir.path().join("tollgate.yaml");
    std::fs::write(&config_file, &yaml)?;
    let config = config::load(&config_file)?;
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            stop.cancel();
            return Err(e.into());
        }
    };
    let Some(edge) = server.listener_addr("edge") else {
        stop.cancel();
        return Err(DemoError::Io(std::io::Error::other(
            "edge listener missing",
        )));
    };
    Ok(Demo {
        server,
        edge,
        ca_file,
        config_file,
        ca_pem: ca.cert_pem(),
        backends_stop: stop,
        _dir: dir,
    })
}
