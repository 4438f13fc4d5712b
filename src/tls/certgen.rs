//! Throwaway certificates made with rcgen: a private CA and leaf certificates it signs,
//! for `tollgate demo`, `tollgate backend --tls` without a certificate, and the tests.
//! Nothing here is meant for production keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Errors making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the result.
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A private certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A leaf certificate and its key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM of the leaf certificate.
    pub cert_pem: String,
    /// PEM of the private key (PKCS#8).
    pub key_pem: String,
    /// DER of the leaf.
    pub cert_der: CertificateDer<'static>,
    /// DER of the key (PKCS#8).
    pub key_der: Vec<u8>,
}

impl IssuedCert {
    /// The key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// A rustls server config serving this certificate (ALPN http/1.1).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertGenError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![self.cert_der.clone()], self.private_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Arc::new(config))
    }

    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertGenError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &self.cert_pem)?;
        write_file(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), CertGenError> {
    std::fs::write(path, text).map_err(|source| CertGenError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl TestCa {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, CertGenError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(TestCa { issuer })
    }

    /// PEM of the CA certificate (what clients trust).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// DER of the CA certificate.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // A CA made a moment ago by rcgen always parses.
        let _ = roots.add(self.cert_der());
        roots
    }

    /// Issues a leaf for `names` (DNS names or IP addresses; the first is the CN).
    pub fn issue(&self, names: &[&str]) -> Result<IssuedCert, CertGenError> {
        let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(owned)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("tollgate"),
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

/// A self-signed certificate for `names` (what `tollgate backend --tls` uses by default).
pub fn self_signed(names: &[&str]) -> Result<IssuedCert, CertGenError> {
    let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let params = CertificateParams::new(owned)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    })
}
