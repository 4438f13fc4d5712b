//! TLS termination for `terminate` routes: loads every `certificates` entry (PEM chain
//! and key, checked to match), picks the certificate by SNI (explicit `names:`, else
//! the certificate's DNS SANs; exact, then wildcard, then the first certificate), and
//! runs the rustls handshake over the bytes the peek already read, under
//! `timeouts.handshake`. TLS 1.2 and 1.3, ALPN `http/1.1`, session tickets on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::peek::ReplayStream;
use crate::config::{CertificateSpec, Config, ListenerKind, SniAction};
use crate::error::ConfigError;
use std::collections::HashMap;

use crate::route::{normalize_host, HostPattern};

/// The TLS stream a terminated connection runs on.
pub type TerminatedStream = TlsStream<ReplayStream<TcpStream>>;

/// Why a termination handshake failed; the name is the `outcome` label of
/// `tollgate_tls_handshakes_total`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not done within `timeouts.handshake`.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The client or rustls gave up (bad version, no common cipher, alert, EOF).
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl HandshakeError {
    /// Label value.
    pub fn outcome(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Failed(_) => "error",
        }
    }
}

/// Certificates by SNI and the rustls config that serves them.
pub struct Terminator {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

/// Certificates by name: exact names, and wildcard names (`*.example.com`) that, as in
/// certificate validation (RFC 6125), cover exactly one label (`a.example.com`, not
/// `a.b.example.com` nor `example.com`). No match: the first certificate.
#[derive(Debug)]
struct CertResolver {
    /// Normalized `name` or `*.suffix` → certificate.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    fallback: Arc<CertifiedKey>,
}

impl CertResolver {
    fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let name = normalize_host(sni);
        if let Some(found) = self.by_name.get(&name) {
            return Some(found);
        }
        let (_, parent) = name.split_once('.')?;
        self.by_name.get(&format!("*.{parent}"))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.lookup(name))
            .unwrap_or(&self.fallback);
        Some(Arc::clone(chosen))
    }
}

/// Loads one certificate entry; errors name the entry and the file.
pub fn load_certified_key(
    index: usize,
    spec: &CertificateSpec,
) -> Result<(CertifiedKey, Vec<String>), ConfigError> {
    let cert_path = format!("certificates[{index}].cert");
    let key_path = format!("certificates[{index}].key");
    let chain = read_chain(&spec.cert).map_err(|m| ConfigError::new(&cert_path, m))?;
    let key = PrivateKeyDer::from_pem_file(&spec.key).map_err(|e| {
        ConfigError::new(
            &key_path,
            format!("{}: cannot read a PEM private key: {e}", spec.key.display()),
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        ConfigError::new(
            &key_path,
            format!(
                "{} does not fit {}: {e}",
                spec.key.display(),
                spec.cert.display()
            ),
        )
    })?;
    let names = match &spec.names {
        Some(names) => names.clone(),
        None => {
            let leaf = &certified.cert[0];
            let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
                ConfigError::new(
                    &cert_path,
                    format!(
                        "{}: cannot parse the leaf certificate: {e:?}",
                        spec.cert.display()
                    ),
                )
            })?;
            let names: Vec<String> = parsed.valid_dns_names().map(str::to_string).collect();
            if names.is_empty() {
                return Err(ConfigError::new(
                    &cert_path,
                    format!(
                        "{}: the certificate has no DNS names; list them under names:",
                        spec.cert.display()
                    ),
                ));
            }
            names
        }
    };
    Ok((certified, names))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let chain: Vec<CertificateDer<'static>> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(chain)
}

impl Terminator {
    /// Builds the terminator when any listener terminates; `None` otherwise (certificates
    /// are still loaded and checked).
    pub fn for_config(config: &Config) -> Result<Option<Terminator>, ConfigError> {
        let mut by_name = HashMap::new();
        let mut fallback = None;
        for (index, spec) in config.certificates.iter().enumerate() {
            let (certified, names) = load_certified_key(index, spec)?;
            let certified = Arc::new(certified);
            for name in &names {
                if HostPattern::parse(name).is_none() {
                    return Err(ConfigError::new(
                        format!("certificates[{index}].names"),
                        format!("{name:?} is not a host name or *.suffix"),
                    ));
                }
                // Earlier certificates win for a name listed twice.
                by_name
                    .entry(normalize_host(name))
                    .or_insert_with(|| Arc::clone(&certified));
            }
            fallback.get_or_insert(certified);
        }
        let terminates = config.listeners.iter().any(|l| match &l.kind {
            ListenerKind::Tls { sni } => sni.values().any(|a| matches!(a, SniAction::Terminate(_))),
            _ => false,
        });
        if !terminates {
            return Ok(None);
        }
        let Some(fallback) = fallback else {
            return Err(ConfigError::new(
                "certificates",
                "a listener terminates TLS but no certificate is configured",
            ));
        };
        let resolver = CertResolver { by_name, fallback };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError::new("certificates", format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        server.session_storage = ServerSessionMemoryCache::new(16 * 1024);
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| ConfigError::new("certificates", format!("TLS session tickets: {e}")))?;
        Ok(Some(Terminator {
            acceptor: TlsAcceptor::from(Arc::new(server)),
        }))
    }

    /// Runs the handshake on `stream`, replaying `peeked` first.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peeked: Vec<u8>,
        timeout: Duration,
    ) -> Result<TerminatedStream, HandshakeError> {
        let replay = ReplayStream::new(peeked, stream);
        match tokio::time::timeout(timeout, self.acceptor.accept(replay)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout),
        }
    }
}

/// Writes a fatal `unrecognized_name` alert (TLS 1.2 framing, which every version
/// accepts before the handshake) and closes.
pub async fn send_unrecognized_name(stream: &mut TcpStream) {
    const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
    let _ = stream.write_all(&ALERT).await;
    let _ = stream.shutdown().await;
}
