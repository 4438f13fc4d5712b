//! What `tollgate bench` aims at, worked out once per run: the address (the URL's host
//! resolved, or `--connect-to`), the TLS client (trusting `--cacert`, or anything with
//! `--insecure`; session resumption unless `--no-resume`) and the request bytes every
//! exchange sends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::load::{BenchError, LoadOptions};

/// The parsed target.
#[derive(Clone)]
pub struct Target {
    /// The TLS connector and server name (https).
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The request every exchange sends, built once.
    pub request: Vec<u8>,
}

/// Parses the URL, resolves it (unless `--connect-to`) and builds the TLS client and the
/// request.
pub async fn target(options: &LoadOptions) -> Result<Target, BenchError> {
    let bad = |why: &str| BenchError::Url {
        url: options.url.clone(),
        why: why.to_string(),
    };
    let uri: hyper::Uri = options.url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.as_str().to_string());
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let addr = match options.connect_to {
        Some(a) => a,
        None => {
            let host_for_dns = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let mut addrs = tokio::net::lookup_host((host_for_dns.as_str(), port))
                .await
                .map_err(|e| BenchError::Resolve {
                    host: host.clone(),
                    why: e.to_string(),
                })?;
            addrs.next().ok_or_else(|| BenchError::Resolve {
                host: host.clone(),
                why: "no address".to_string(),
            })?
        }
    };
    let tls = if https {
        let name_text = options.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        let name = ServerName::try_from(name_text).map_err(|_| bad("SNI is not a valid name"))?;
        Some((TlsConnector::from(client_config(options)?), name))
    } else {
        None
    };
    Ok(Target {
        tls,
        addr,
        request: request_bytes(&path, &host_header, options.new_connection),
    })
}

/// `GET path HTTP/1.1` with Host (and `Connection: close` for a new connection per
/// request), as wrk sends it.
fn request_bytes(path: &str, host: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n").into_bytes()
}

fn client_config(options: &LoadOptions) -> Result<Arc<rustls::ClientConfig>, BenchError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Url {
            url: options.url.clone(),
            why: e.to_string(),
        })?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(crate::upstream::health::any_certificate_verifier())
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let Some(path) = &options.cacert else {
            return Err(BenchError::CaFile {
                path: PathBuf::from("(none)"),
                why: "https needs --cacert FILE (or --insecure)".to_string(),
            });
        };
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
            BenchError::CaFile {
                path: path.clone(),
                why: e.to_string(),
            }
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| BenchError::CaFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| BenchError::CaFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !options.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}
