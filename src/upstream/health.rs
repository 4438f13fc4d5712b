//! Active health checks: one task per backend of every pool with `health:`, checking
//! every `interval` (with ±10% jitter and a random first delay, so checks do not fire in
//! lockstep) under `timeout`: `tcp` connects, `http` sends `GET path` with a Host header
//! and expects 2xx (or `expect_status`), `tls` completes a handshake with the backend's
//! SNI (any certificate is accepted: this checks liveness, not identity). Results go
//! through the backend's hysteresis (`rise`/`fall`).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::pool::{Backend, Pool};
use crate::config::{CheckKind, HealthSpec};

/// Starts the checkers of every pool that has `health:`; abort the handles to stop them.
pub fn spawn_all<'a>(pools: impl Iterator<Item = &'a Arc<Pool>>) -> Vec<JoinHandle<()>> {
    let tls = tls_client();
    let mut tasks = Vec::new();
    for pool in pools {
        let Some(spec) = pool.spec.health.clone() else {
            continue;
        };
        for index in 0..pool.backends.len() {
            let pool = Arc::clone(pool);
            let spec = spec.clone();
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                check_loop(pool, index, spec, tls).await;
            }));
        }
    }
    tasks
}

fn jittered(interval: Duration) -> Duration {
    let ms = interval.as_millis() as u64;
    let spread = ms / 10;
    let low = ms - spread;
    Duration::from_millis(low + fastrand::u64(0..=2 * spread))
}

async fn check_loop(pool: Arc<Pool>, index: usize, spec: HealthSpec, tls: TlsConnector) {
    // Spread the first checks over the first half interval.
    let first = fastrand::u64(0..=spec.interval.as_millis() as u64 / 2);
    tokio::time::sleep(Duration::from_millis(first)).await;
    loop {
        let backend = &pool.backends[index];
        let (ok, detail) = run_check(backend, &spec, &tls).await;
        tracing::trace!(pool = %pool.name, backend = %backend.name, ok, detail, "health check");
        backend.record_check(ok, detail);
        tokio::time::sleep(jittered(spec.interval)).await;
    }
}

/// Runs one check against `backend`; returns (passed, what happened).
pub async fn run_check(backend: &Backend, spec: &HealthSpec, tls: &TlsConnector) -> (bool, String) {
    match tokio::time::timeout(spec.timeout, check_once(backend, spec, tls)).await {
        Ok(result) => result,
        Err(_) => (
            false,
            format!("timeout after {}ms", spec.timeout.as_millis()),
        ),
    }
}

/// The host part of a backend's name (`app.internal:9001` → `app.internal`).
fn host_of(backend: &Backend) -> String {
    if let Some(sni) = &backend.sni {
        return sni.clone();
    }
    crate::http::headers::strip_port(&backend.name).to_string()
}

async fn check_once(backend: &Backend, spec: &HealthSpec, tls: &TlsConnector) -> (bool, String) {
    let stream = match TcpStream::connect(backend.addr).await {
        Ok(s) => s,
        Err(e) => return (false, format!("connect: {e}")),
    };
    match &spec.check {
        CheckKind::Tcp => (true, "connected".to_string()),
        CheckKind::Http { path } => {
            http_check(stream, &host_of(backend), path, &spec.expect_status).await
        }
        CheckKind::Tls => {
            let host = host_of(backend);
            let name = match ServerName::try_from(host.clone()) {
                Ok(n) => n,
                Err(_) => ServerName::IpAddress(backend.addr.ip().into()),
            };
            match tls.connect(name, stream).await {
                Ok(mut s) => {
                    let _ = s.shutdown().await;
                    (true, "handshake ok".to_string())
                }
                Err(e) => (false, format!("handshake: {e}")),
            }
        }
    }
}

async fn http_check(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    expect: &[u16],
) -> (bool, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-health-check\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return (false, format!("write: {e}"));
    }
    // The status line fits in the first bytes; read at most 1 KiB.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        match stream.read(&mut buf[len..]).await {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if buf[..len].windows(2).any(|w| w == b"\r\n") || len == buf.len() {
                    break;
                }
            }
            Err(e) => return (false, format!("read: {e}")),
        }
    }
    let Some(status) = parse_status(&buf[..len]) else {
        return (false, "no HTTP status line".to_string());
    };
    let ok = if expect.is_empty() {
        (200..300).contains(&status)
    } else {
        expect.contains(&status)
    };
    (ok, format!("status {status}"))
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// A TLS client for checks: the provider's algorithms, any certificate.
pub fn tls_client() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(any_certificate_verifier())
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A verifier that accepts any certificate (checks and `bench --insecure`), still
/// checking handshake signatures.
pub fn any_certificate_verifier() -> Arc<dyn ServerCertVerifier> {
    Arc::new(AnyCertificate(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    )))
}

/// Accepts any server certificate but still checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(1000));
            assert!((900..=1100).contains(&(d.as_millis() as u64)), "{d:?}");
        }
    }
}
