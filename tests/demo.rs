//! `tollgate demo`: one TLS port, a passthrough name answered by a TLS backend and a
//! terminated name answered by a plain backend through tollgate, and curl lines that
//! name the CA file and the port.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tollgate::demo::{self, PASSTHROUGH_NAME, TERMINATE_NAME};

fn client_trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn demo_serves_a_passthrough_and_a_terminated_name_on_one_port() {
    let demo = demo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = client_trusting(&demo.ca_pem);

    let passthrough = https_get(demo.edge, PASSTHROUGH_NAME, "/", Arc::clone(&client)).await;
    assert_eq!(passthrough.status, 200);
    let body = passthrough.text();
    assert!(body.starts_with("backend secure-"), "{body}");
    // The TLS backend saw the client directly: no X-Forwarded-For.
    assert!(body.contains("xff=-"), "{body}");

    let terminated = https_get(demo.edge, TERMINATE_NAME, "/", Arc::clone(&client)).await;
    assert_eq!(terminated.status, 200);
    let body = terminated.text();
    assert!(body.starts_with("backend app-"), "{body}");
    assert!(
        body.contains("xff=127.0.0.1"),
        "tollgate proxied it: {body}"
    );

    // An unknown name is refused.
    assert!(tls_connect(demo.edge, "other.demo.test", client)
        .await
        .is_err());

    let lines = demo.curl_lines();
    assert_eq!(lines.len(), 2);
    for (name, line) in &lines {
        assert!(
            line.contains(&format!("--cacert {}", demo.ca_file.display())),
            "{line}"
        );
        assert!(
            line.contains(&format!("--resolve {name}:{}:127.0.0.1", demo.edge.port())),
            "{line}"
        );
        assert!(
            line.ends_with(&format!("https://{name}:{}/", demo.edge.port())),
            "{line}"
        );
    }
    assert!(demo.ca_file.exists());
    assert!(std::fs::read_to_string(&demo.config_file)
        .unwrap()
        .contains("passthrough"));
    demo.stop(Duration::from_secs(1)).await;
}
