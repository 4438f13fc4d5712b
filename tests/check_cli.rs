//! `tollgate check -c FILE` as an operator runs it: the built binary on configs written
//! into a temp dir. A good config prints `ok` and exits 0; a bad one exits 1 with a
//! message naming the key path and what is wrong. The shipped `conf/*.yaml` check `ok`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Pki;

fn check(config: &Path, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(config)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tollgate check")
}

/// Writes `yaml` to a file in `dir` and runs `check` on it.
fn check_yaml(dir: &Path, yaml: &str) -> Output {
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    check(&path, dir)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit 1, nothing on stdout, and every piece in stderr.
fn assert_rejected(out: &Output, pieces: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(stdout(out), "", "stdout of a failed check");
    for piece in pieces {
        assert!(err.contains(piece), "stderr lacks {piece:?}:\n{err}");
    }
}

/// A valid config using every listener kind, a terminate route with a certificate
/// written by rcgen into `dir`, and every timeout. `edit` replaces one piece of it.
fn good_config(pki: &Pki, edit: (&str, &str)) -> String {
    let (cert, key) = pki.issue_files("web", &["www.example.com", "*.apps.example.com"]);
    let yaml = format!(
        r#"
runtime: {{ worker_threads: 2 }}
access_log: off
admin: {{ listen: "127.0.0.1:0" }}
certificates:
  - {{ cert: "{cert}", key: "{key}" }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls
    sni:
      a.example.com: {{ passthrough: vault_pool }}
      "*.apps.example.com": {{ terminate: web }}
    default: reject
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    pool: db
routes:
  web:
    - {{ host: api.apps.example.com, path_prefix: /v1, pool: app }}
    - {{ path_prefix: /, pool: app }}
pools:
  vault_pool:
    servers: [ {{ addr: "127.0.0.1:9443" }} ]
    health: {{ check: tls, interval: 2s }}
  app:
    balance: round_robin
    servers: [ {{ addr: "127.0.0.1:9001" }}, {{ addr: "localhost:9002", weight: 2 }} ]
  db:
    servers: [ {{ addr: "127.0.0.1:5432" }} ]
timeouts:
  client_hello: 5s
  handshake: 10s
  connect: 2s
  request_header: 10s
  client_idle: 60s
  backend_response: 30s
  tunnel_idle: 300s
limits: {{ max_connections: 100, max_request_header_bytes: 16384 }}
"#,
        cert = cert.display(),
        key = key.display()
    );
    assert!(
        yaml.contains(edit.0),
        "edit target {:?} not in the config",
        edit.0
    );
    yaml.replacen(edit.0, edit.1, 1)
}

#[test]
fn good_config_prints_ok() {
    let pki = Pki::new();
    let out = check_yaml(pki.dir.path(), &good_config(&pki, ("", "")));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
}

#[test]
fn passthrough_to_a_missing_pool_names_the_sni_key_path() {
    let pki = Pki::new();
    let yaml = good_config(
        &pki,
        ("{ passthrough: vault_pool }", "{ passthrough: vault }"),
    );
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &[r#"listeners[0].sni."a.example.com".passthrough: no pool named "vault""#],
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let pki = Pki::new();
    let yaml = good_config(
        &pki,
        ("    protocol: tls\n", "    protocol: tls\n    bogus: 1\n"),
    );
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &["listeners[0].bogus: unknown field `bogus`"],
    );
    let yaml = good_config(
        &pki,
        ("  connect: 2s\n", "  connect: 2s\n  conect_retry: 2s\n"),
    );
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &["timeouts.conect_retry: unknown field"],
    );
    let yaml = good_config(&pki, ("limits:", "limitz:"));
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &["limitz: unknown field"],
    );
}

#[test]
fn bad_duration_names_the_timeout() {
    let pki = Pki::new();
    for bad in ["5 seconds", "1.5s", "-1s", "5"] {
        let yaml = good_config(&pki, ("connect: 2s", &format!("connect: \"{bad}\"")));
        assert_rejected(
            &check_yaml(pki.dir.path(), &yaml),
            &["timeouts.connect: ", &format!("{bad:?}"), "not a duration"],
        );
    }
    let yaml = good_config(&pki, ("tunnel_idle: 300s", "tunnel_idle: 0s"));
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &["timeouts.tunnel_idle: ", "greater than zero"],
    );
}

#[test]
fn bad_listen_address_names_the_listener() {
    let pki = Pki::new();
    for bad in ["localhost", "127.0.0.1", "127.0.0.1:99999", "0.0.0.0:http"] {
        let yaml = good_config(
            &pki,
            (
                "listen: 127.0.0.1:0\n    protocol: tcp",
                &format!("listen: \"{bad}\"\n    protocol: tcp"),
            ),
        );
        assert_rejected(
            &check_yaml(pki.dir.path(), &yaml),
            &[
                "listeners[1].listen: ",
                &format!("{bad:?}"),
                "not an ip:port",
            ],
        );
    }
}

#[test]
fn route_to_a_missing_pool_names_the_rule() {
    let pki = Pki::new();
    let yaml = good_config(
        &pki,
        (
            "- { path_prefix: /, pool: app }",
            "- { path_prefix: /, pool: nope }",
        ),
    );
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &[r#"routes.web[1].pool: no pool named "nope""#],
    );
    let yaml = good_config(&pki, ("/v1, pool: app", "/v1, pool: nope"));
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &[r#"routes.web[0].pool: no pool named "nope""#],
    );
}

#[test]
fn other_broken_references_name_their_key() {
    let pki = Pki::new();
    let cases: [((&str, &str), &[&str]); 5] = [
        (
            ("{ terminate: web }", "{ terminate: webb }"),
            &[r#"listeners[0].sni."*.apps.example.com".terminate"#, "webb"],
        ),
        (
            ("default: reject", "default: { passthrough: gone }"),
            &["listeners[0].default.passthrough", "gone"],
        ),
        (
            ("    pool: db\n", "    pool: dbx\n"),
            &["listeners[1].pool", "dbx"],
        ),
        (
            ("balance: round_robin", "balance: fastest"),
            &["pools.app.balance", "fastest"],
        ),
        (
            ("addr: \"127.0.0.1:5432\"", "addr: \"127.0.0.1\""),
            &["pools.db.servers[0].addr", "port"],
        ),
    ];
    for ((from, to), pieces) in cases {
        let yaml = good_config(&pki, (from, to));
        assert_rejected(&check_yaml(pki.dir.path(), &yaml), pieces);
    }
}

#[test]
fn missing_certificate_file_names_the_key_and_the_file() {
    let pki = Pki::new();
    let yaml = good_config(&pki, ("web.pem", "missing.pem"));
    let missing = pki.dir.path().join("missing.pem");
    assert_rejected(
        &check_yaml(pki.dir.path(), &yaml),
        &["certificates[0].cert", &missing.display().to_string()],
    );
}

#[test]
fn key_that_does_not_fit_the_certificate_is_rejected() {
    let pki = Pki::new();
    // Another certificate's key.
    pki.issue_files("other", &["other.example.com"]);
    let yaml = good_config(&pki, ("web.key", "other.key"));
    assert_rejected(&check_yaml(pki.dir.path(), &yaml), &["certificates[0].key"]);
}

#[test]
fn unreadable_or_unparsable_files_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.yaml");
    assert_rejected(&check(&absent, dir.path()), &["absent.yaml"]);
    assert_rejected(
        &check_yaml(dir.path(), "listeners: [ {"),
        &["tollgate.yaml"],
    );
    assert_rejected(&check_yaml(dir.path(), "pools: {}\n"), &["listeners"]);
}

#[test]
fn shipped_configs_check_ok() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "conf/tollgate.yaml",
        "conf/passthrough.yaml",
        "conf/terminate.yaml",
    ] {
        let path = root.join(file);
        assert!(path.exists(), "{file} is missing");
        let out = check(&path, root);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok\n", "{file}");
    }
}
