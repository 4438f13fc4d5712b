//! TLS termination through a running balancer: the certificate chosen by SNI (SANs,
//! wildcard, `names:`, fallback), unknown names (alert or close), TLS 1.2 and 1.3, ALPN,
//! session resumption, the handshake timeout, passthrough and termination on one port,
//! and one client keep-alive connection over per_request and pooled backend connections.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::l7::*;
use common::*;
use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion};

/// A `certificates:` entry.
fn cert_entry((cert, key): &(PathBuf, PathBuf), names: Option<&str>) -> String {
    let names = names.map(|n| format!(", names: [{n}]")).unwrap_or_default();
    format!(
        "  - {{ cert: \"{}\", key: \"{}\"{names} }}\n",
        cert.display(),
        key.display()
    )
}

/// One tls listener `edge` with `sni_rules` (YAML lines under `sni:`) and `default`,
/// routing everything terminated to pool `app` at `backend` (`mode` connections).
fn edge_yaml(
    certs: &str,
    sni_rules: &str,
    default: &str,
    backend: std::net::SocketAddr,
    mode: &str,
) -> String {
    format!(
        r#"
certificates:
{certs}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
{sni_rules}
{default}
routes:
  web:
    - {{ pool: app }}
pools:
  app: {{ backend_connections: {mode}, servers: [ {{ addr: "{backend}" }} ] }}
"#
    )
}

fn leaf(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

#[tokio::test]
async fn certificate_chosen_by_sni_exact_wildcard_and_fallback() {
    let pki = Pki::new();
    let wild = pki.issue(&["*.example.com"]);
    let exact = pki.issue(&["special.example.com"]);
    let wild_files = wild.write(pki.dir.path(), "wild").unwrap();
    let exact_files = exact.write(pki.dir.path(), "exact").unwrap();
    let app = origin("app", None).await;
    let certs = cert_entry(&wild_files, None) + &cert_entry(&exact_files, None);
    let yaml = edge_yaml(
        &certs,
        "      \"*.example.com\": { terminate: web }",
        "    default: { terminate: web }",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    // Verified against the CA for the name asked, and the expected leaf.
    let tls = tls_connect(edge, "foo.example.com", pki.client_config())
        .await
        .expect("wildcard name");
    assert_eq!(leaf(&tls), wild.cert_der);
    let mut conn = HttpConn::over(tls).await;
    let got = conn.get("foo.example.com", "/x").await.unwrap();
    assert_eq!(
        (got.status, got.header("x-backend").as_deref()),
        (200, Some("app"))
    );

    // The exact SAN of the second certificate beats the first one's wildcard.
    let tls = tls_connect(edge, "special.example.com", pki.client_config())
        .await
        .expect("exact name");
    assert_eq!(leaf(&tls), exact.cert_der);
    // Case and a trailing dot do not matter.
    let tls = tls_connect(edge, "SPECIAL.Example.COM", pki.client_config())
        .await
        .expect("upper case");
    assert_eq!(leaf(&tls), exact.cert_der);

    // A name no certificate holds (served by the default rule) gets the first certificate.
    let tls = tls_connect(edge, "unknown.test", any_cert_client_config())
        .await
        .expect("fallback");
    assert_eq!(leaf(&tls), wild.cert_der);
    // ... which a verifying client refuses for that name.
    assert!(tls_connect(edge, "unknown.test", pki.client_config())
        .await
        .is_err());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn names_list_replaces_the_certificate_sans() {
    let pki = Pki::new();
    let first = pki.issue(&["first.example.net"]);
    let named = pki.issue(&["alt.example.org", "hidden.example.org"]);
    let first_files = first.write(pki.dir.path(), "first").unwrap();
    let named_files = named.write(pki.dir.path(), "named").unwrap();
    let app = origin("app", None).await;
    let certs = cert_entry(&first_files, None)
        + &cert_entry(&named_files, Some("alt.example.org, extra.example.org"));
    let yaml = edge_yaml(
        &certs,
        "      first.example.net: { terminate: web }",
        "    default: { terminate: web }",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    let tls = tls_connect(edge, "alt.example.org", pki.client_config())
        .await
        .expect("listed SAN");
    assert_eq!(leaf(&tls), named.cert_der);
    // Listed under names: but not a SAN: still chosen.
    let tls = tls_connect(edge, "extra.example.org", any_cert_client_config())
        .await
        .unwrap();
    assert_eq!(leaf(&tls), named.cert_der);
    // A SAN left out of names: is not used for selection: the fallback is.
    let tls = tls_connect(edge, "hidden.example.org", any_cert_client_config())
        .await
        .unwrap();
    assert_eq!(leaf(&tls), first.cert_der);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_name_without_default_gets_unrecognized_name_alert() {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let app = origin("app", None).await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    let err = tls_connect(edge, "other.example.com", pki.client_config())
        .await
        .expect_err("no rule");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::UnrecognisedName
        )),
        "{err:?}"
    );
    // The named route still works.
    let got = https_get(edge, "app.example.com", "/", pki.client_config()).await;
    assert_eq!(got.status, 200);
    let text = server.metrics().render();
    assert_eq!(
        metric_value(
            &text,
            "tollgate_connections_total",
            &[("listener", "edge"), ("mode", "rejected")]
        ),
        Some(1.0)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn default_reject_closes_without_a_handshake() {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let app = origin("app", None).await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "    default: reject",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    let err = tls_connect(edge, "other.example.com", pki.client_config())
        .await
        .expect_err("rejected");
    // Closed, not an alert and not a certificate.
    assert!(
        rustls_error(&err).is_none(),
        "expected a plain close, got {err:?}"
    );
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    let text = server.metrics().render();
    assert_eq!(
        metric_value(
            &text,
            "tollgate_connections_total",
            &[("listener", "edge"), ("mode", "rejected")]
        ),
        Some(1.0)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn missing_or_mismatched_certificate_files_are_config_errors_naming_the_file() {
    let pki = Pki::new();
    let (cert, key) = pki.issue_files("good", &["app.example.com"]);
    let (_, other_key) = pki.issue_files("other", &["other.example.com"]);
    let missing = pki.dir.path().join("missing.pem");
    let app = dead_addr();
    for (files, key_path, file) in [
        (
            (missing.clone(), key.clone()),
            "certificates[0].cert",
            missing.clone(),
        ),
        (
            (cert.clone(), pki.dir.path().join("missing.key")),
            "certificates[0].key",
            pki.dir.path().join("missing.key"),
        ),
        (
            (cert.clone(), other_key.clone()),
            "certificates[0].key",
            other_key.clone(),
        ),
        // A key where the chain should be.
        (
            (key.clone(), key.clone()),
            "certificates[0].cert",
            key.clone(),
        ),
    ] {
        let yaml = edge_yaml(
            &cert_entry(&files, None),
            "      app.example.com: { terminate: web }",
            "",
            app,
            "per_request",
        );
        let config = tollgate::config::from_yaml(&yaml).expect("valid YAML");
        let err = tollgate::server::Server::start(config)
            .await
            .expect_err("bad certificate")
            .to_string();
        assert!(err.starts_with(key_path), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}

#[tokio::test]
async fn tls12_and_tls13_clients_negotiate_http11_and_resume() {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let app = origin("app", None).await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        // One ClientConfig: its session cache carries the ticket to the second connection.
        let config = pki.client_config_versions(&[version]);
        for round in 0..2 {
            let tls = tls_connect(edge, "app.example.com", Arc::clone(&config))
                .await
                .expect("handshake");
            let (_, session) = tls.get_ref();
            assert_eq!(session.protocol_version(), Some(expected));
            assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
            let kind = session.handshake_kind();
            let want = if round == 0 {
                HandshakeKind::Full
            } else {
                HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{expected:?} round {round}");
            // A request, so the TLS 1.3 ticket (sent after the handshake) is read.
            let mut conn = HttpConn::over(tls).await;
            let got = conn.get("app.example.com", "/v").await.unwrap();
            assert_eq!(got.status, 200);
        }
    }
    let text = server.metrics().render();
    assert_eq!(
        metric_value(
            &text,
            "tollgate_tls_handshakes_total",
            &[("listener", "edge"), ("outcome", "ok")]
        ),
        Some(4.0)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_hello_in_tiny_segments_is_replayed_into_the_handshake() {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let app = origin("app", None).await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "",
        app.addr,
        "per_request",
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle { inner: tcp, max: 3 };
    let tls = tokio_rustls::TlsConnector::from(pki.client_config())
        .connect("app.example.com".try_into().unwrap(), trickle)
        .await
        .expect("handshake over 3-byte writes");
    let got = HttpConn::over(tls)
        .await
        .get("app.example.com", "/slow-hello")
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(got.text().contains("GET /slow-hello"), "{}", got.text());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn handshake_not_finished_in_time_is_closed_and_counted() {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let app = origin("app", None).await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "",
        app.addr,
        "per_request",
    ) + "timeouts: { handshake: 300ms }\n";
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    // A real ClientHello, then silence: the server flight is sent, the client never finishes.
    let mut client =
        rustls::ClientConnection::new(pki.client_config(), "app.example.com".try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let mut raw = RawConn::new(tcp);
    raw.write(&hello).await.unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_to_close(&mut raw.stream).await;
    assert!(closed, "the stalled handshake was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    wait_until("handshake timeout counted", || {
        let text = server.metrics().render();
        metric_value(
            &text,
            "tollgate_tls_handshakes_total",
            &[("listener", "edge"), ("outcome", "timeout")],
        ) == Some(1.0)
    })
    .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn passthrough_and_terminate_share_one_port() {
    let pki = Pki::new();
    let edge_files = pki.issue_files("edge", &["app.example.com"]);
    let vault_cert = pki.issue(&["vault.example.com"]);
    let vault = origin("vault", Some(&vault_cert)).await;
    let app = origin("app", None).await;
    let yaml = format!(
        r#"
certificates:
{}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      vault.example.com: {{ passthrough: vault }}
      app.example.com: {{ terminate: web }}
routes:
  web: [ {{ pool: app }} ]
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
  vault: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        cert_entry(&edge_files, None),
        app.addr,
        vault.addr
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    // Passthrough: the backend's own certificate, and the backend sees no X-Forwarded-For.
    let tls = tls_connect(edge, "vault.example.com", pki.client_config())
        .await
        .unwrap();
    assert_eq!(leaf(&tls), vault_cert.cert_der);
    let got = HttpConn::over(tls)
        .await
        .get("vault.example.com", "/p")
        .await
        .unwrap();
    assert_eq!(got.header("x-backend").as_deref(), Some("vault"));
    assert!(got.text().contains("xff=-"), "{}", got.text());

    // Terminated: the balancer's certificate and a plain backend behind it.
    let tls = tls_connect(edge, "app.example.com", pki.client_config())
        .await
        .unwrap();
    assert_ne!(leaf(&tls), vault_cert.cert_der);
    let got = HttpConn::over(tls)
        .await
        .get("app.example.com", "/t")
        .await
        .unwrap();
    assert_eq!(got.header("x-backend").as_deref(), Some("app"));
    assert!(
        got.text()
            .contains("GET /t host=app.example.com xff=127.0.0.1"),
        "{}",
        got.text()
    );

    let text = server.metrics().render();
    for mode in ["passthrough", "terminate"] {
        assert_eq!(
            metric_value(
                &text,
                "tollgate_connections_total",
                &[("listener", "edge"), ("mode", mode)]
            ),
            Some(1.0),
            "{mode}"
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// 100 requests over one client connection; returns the backend connections seen and the
/// request heads the backend received.
async fn hundred_requests(mode: &str) -> (usize, Vec<String>) {
    let pki = Pki::new();
    let files = pki.issue_files("app", &["app.example.com"]);
    let (backend, seen) = inspecting_backend("app").await;
    let yaml = edge_yaml(
        &cert_entry(&files, None),
        "      app.example.com: { terminate: web }",
        "",
        backend.addr,
        mode,
    );
    let server = start(&yaml).await;
    let edge = server.listener_addr("edge").unwrap();

    let tls = tls_connect(edge, "app.example.com", pki.client_config())
        .await
        .unwrap();
    let mut conn = HttpConn::over(tls).await;
    for i in 0..100 {
        let got = conn
            .get("app.example.com", &format!("/r{i}"))
            .await
            .expect("response");
        assert_eq!(got.status, 200, "request {i}");
        assert!(
            got.text().contains(&format!("GET /r{i} HTTP/1.1")),
            "request {i}: {}",
            got.text()
        );
    }
    let text = server.metrics().render();
    // One client connection, one handshake.
    assert_eq!(
        metric_value(
            &text,
            "tollgate_connections_total",
            &[("listener", "edge"), ("mode", "terminate")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_tls_handshakes_total",
            &[("listener", "edge"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    let heads = seen.lock().unwrap().clone();
    server.shutdown(Duration::from_secs(1)).await;
    (backend.accepted(), heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_per_request_backend_connections() {
    let (connections, heads) = hundred_requests("per_request").await;
    assert_eq!(connections, 100, "one backend connection per request");
    assert_eq!(heads.len(), 100);
    for head in &heads {
        assert!(
            head.to_ascii_lowercase().contains("connection: close\r\n"),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_pooled_backend_connections() {
    let (connections, heads) = hundred_requests("pooled").await;
    assert!(
        (1..=2).contains(&connections),
        "pooled used {connections} backend connections"
    );
    assert_eq!(heads.len(), 100);
    for head in &heads {
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
}
