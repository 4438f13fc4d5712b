//! The `tollgate run` binary as an operator drives it: it serves, SIGHUP reloads the
//! file (a new route appears, a bad file is refused and the old config keeps serving),
//! SIGTERM drains and exits 0.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process id we own.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

async fn get(addr: SocketAddr, path: &str) -> Option<Got> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let mut conn = HttpConn::over(stream).await;
    conn.get("x.test", path).await.ok()
}

#[tokio::test]
async fn run_serves_reloads_on_sighup_and_drains_on_sigterm() {
    let a = origin("a", None).await;
    let b = origin("b", None).await;
    let listen = free_port();
    let yaml = |extra_route: &str| {
        format!(
            "access_log: off\nlisteners: [ {{ name: web, listen: \"{listen}\", protocol: http, routes: main }} ]\nroutes:\n  main:\n{extra_route}    - {{ pool: a }}\npools:\n  a: {{ servers: [ {{ addr: \"{}\" }} ] }}\n  b: {{ servers: [ {{ addr: \"{}\" }} ] }}\n",
            a.addr, b.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, yaml("")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let first = loop {
        if let Some(got) = get(listen, "/b/x").await {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tollgate run never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.header("x-backend").as_deref(), Some("a"));

    // SIGHUP with a new route.
    std::fs::write(&file, yaml("    - { path_prefix: /b, pool: b }\n")).unwrap();
    signal(pid, libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = get(listen, "/b/x").await.expect("served during reload");
        if got.header("x-backend").as_deref() == Some("b") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGHUP with a broken file: still serving the last good config.
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(b"listeners: [ broken").unwrap();
    drop(f);
    signal(pid, libc::SIGHUP);
    for _ in 0..5 {
        let got = get(listen, "/b/x")
            .await
            .expect("still serving after a bad reload");
        assert_eq!(got.header("x-backend").as_deref(), Some("b"));
    }

    // SIGTERM: drains and exits 0.
    signal(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tollgate did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

/// Starts `tollgate run` with `rust_log` (None: unset) on an http listener, waits until
/// it serves, stops it with SIGTERM and returns what it wrote to stderr.
async fn run_and_collect_logs(rust_log: Option<&str>) -> String {
    let listener = |listen: SocketAddr| {
        format!("{{ name: web, listen: \"{listen}\", protocol: http, routes: main }}")
    };
    run_with_listener_and_collect_logs(rust_log, listener, None).await
}

/// Starts `tollgate run` with `rust_log` and the listener `listener(addr)` (next to a
/// route `main` and a pool `p` whose backend is down), waits until it listens, sends
/// `hello` on a connection and waits for tollgate to close it, then stops it with
/// SIGTERM and returns what it wrote to stderr.
async fn run_with_listener_and_collect_logs(
    rust_log: Option<&str>,
    listener: impl Fn(SocketAddr) -> String,
    hello: Option<Vec<u8>>,
) -> String {
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(
        &file,
        format!(
            "access_log: off\nlisteners: [ {} ]\nroutes: {{ main: [ {{ pool: p }} ] }}\npools: {{ p: {{ servers: [ {{ addr: \"127.0.0.1:9\" }} ] }} }}\n",
            listener(listen)
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["run", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match rust_log {
        Some(value) => command.env("RUST_LOG", value),
        None => command.env_remove("RUST_LOG"),
    };
    let child = command.spawn().unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut first = loop {
        if let Ok(stream) = TcpStream::connect(listen).await {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tollgate run never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(hello) = hello {
        use tokio::io::AsyncWriteExt as _;
        first.write_all(&hello).await.unwrap();
        let (_, closed) = read_to_close(&mut first).await;
        assert!(closed, "tollgate did not close the connection");
    }
    drop(first);
    signal(child.id(), libc::SIGTERM);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A connection's log line carries its span: `conn`, `peer`, `listener`, and the SNI
/// recorded once the ClientHello is read.
#[tokio::test]
async fn a_connection_log_line_carries_its_span_fields_with_the_sni() {
    let listener = |listen: SocketAddr| {
        format!(
            "{{ name: edge, listen: \"{listen}\", protocol: tls, sni: {{ \"app.test\": {{ passthrough: p }} }}, default: reject }}"
        )
    };
    let hello = build_client_hello(Some(b"nope.test"), &[]);
    let logs = run_with_listener_and_collect_logs(None, listener, Some(hello)).await;
    let Some(line) = logs
        .lines()
        .find(|line| line.contains("SNI rule says reject"))
    else {
        panic!("no reject line in: {logs}");
    };
    assert!(line.contains(" conn{conn="), "{line}");
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");
    assert!(
        line.contains(r#" listener=edge sni="nope.test"}: "#),
        "{line}"
    );
}

/// RUST_LOG: unset is `info`; levels and targets go through a static filter, span
/// directives through EnvFilter; each is obeyed.
#[tokio::test]
async fn rust_log_levels_targets_and_span_directives_are_obeyed() {
    let listening = |logs: &str| logs.contains("listening");
    assert!(listening(&run_and_collect_logs(None).await), "unset: info");
    assert!(
        !listening(&run_and_collect_logs(Some("warn")).await),
        "warn"
    );
    assert!(listening(
        &run_and_collect_logs(Some("warn,tollgate=info")).await
    ));
    assert!(!listening(
        &run_and_collect_logs(Some("info,tollgate=warn")).await
    ));
    let span_directive = run_and_collect_logs(Some("info,tollgate[conn]=debug")).await;
    assert!(
        listening(&span_directive),
        "EnvFilter directive: {span_directive}"
    );
}
