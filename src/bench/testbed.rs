//! The processes `tollgate compare` measures: in a temp dir, a throwaway CA and
//! certificates, two plain and two TLS built-in backends and the balancer, each a
//! separate process of the current executable (`tollgate backend ...`,
//! `tollgate run -c DIR/tollgate.yaml`), pinned before `exec`. Ports are picked free on
//! 127.0.0.1, then each child is waited for until its port accepts a connection. The
//! [`Testbed`] owns the children: dropping it (normal end, error, Ctrl-C) kills and
//! reaps them, and each child also gets SIGKILL if this process dies first
//! (`PR_SET_PDEATHSIG`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench::pinning::{pin_after_fork, CpuList};
use crate::tls::certgen::TestCa;

/// The passthrough name: the balancer splices TLS to the TLS backends.
pub const PASSTHROUGH_NAME: &str = "pass.compare.test";
/// The terminate name whose pool opens a backend connection per request.
pub const TERMINATE_NAME: &str = "term.compare.test";
/// The terminate name whose pool reuses backend connections.
pub const POOLED_NAME: &str = "pooled.compare.test";

/// How long a child may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// What the testbed runs.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// The tollgate executable (normally `std::env::current_exe()`).
    pub executable: PathBuf,
    /// Response body size of every backend.
    pub body_bytes: usize,
    /// CPUs of the balancer.
    pub balancer_cpus: Option<CpuList>,
    /// CPUs of the backends.
    pub backend_cpus: Option<CpuList>,
}

/// One running child.
#[derive(Debug)]
pub struct ChildProcess {
    /// What it is (`balancer`, `plain-a`, ...).
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Child,
}

impl ChildProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

/// The running processes and their files. Dropping it kills and reaps every child (each
/// [`ChildProcess`] does on drop), then removes the temp dir.
#[derive(Debug)]
pub struct Testbed {
    /// The balancer (`tollgate run`).
    pub balancer: ChildProcess,
    /// Plain HTTP backends (the terminate pools).
    pub plain: Vec<ChildProcess>,
    /// TLS backends (the passthrough pool and direct-tls).
    pub tls: Vec<ChildProcess>,
    /// The CA file clients trust.
    pub ca_file: PathBuf,
    /// The balancer's config file.
    pub config_file: PathBuf,
    dir: tempfile::TempDir,
}

/// Why the testbed did not start.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Files, sockets, spawning.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Certificates.
    #[error(transparent)]
    Certs(#[from] crate::tls::certgen::CertGenError),
    /// A child exited or never accepted connections.
    #[error("{name} did not start ({why}); its log ends with:\n{log}")]
    Child {
        /// Which child.
        name: String,
        /// What happened.
        why: String,
        /// Its last log lines.
        log: String,
    },
    /// Ctrl-C while starting.
    #[error("interrupted")]
    Interrupted,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// Picks `n` distinct free ports on 127.0.0.1 (bound together, then released).
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, TestbedError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("cannot pick a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("cannot pick a free port on 127.0.0.1"))
}

/// The balancer's config: one TLS listener, three names, three pools over four backends.
pub fn render_config(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    plain: &[SocketAddr],
    tls: &[SocketAddr],
) -> String {
    let servers = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("{{ addr: \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"# Written by `tollgate compare`: one worker thread, no access log, one TLS port.
runtime:
  worker_threads: 1
  shutdown_grace: 1s
access_log: off
certificates:
  - {{ cert: "{cert}", key: "{key}" }}
listeners:
  - name: edge
    listen: "{listen}"
    protocol: tls
    sni:
      {pass}: {{ passthrough: tls_backends }}
      {term}: {{ terminate: per_request }}
      {pooled}: {{ terminate: pooled }}
    default: reject
routes:
  per_request:
    - {{ path_prefix: /, pool: plain_per_request }}
  pooled:
    - {{ path_prefix: /, pool: plain_pooled }}
pools:
  tls_backends:
    servers: [ {tls} ]
  plain_per_request:
    backend_connections: per_request
    servers: [ {plain} ]
  plain_pooled:
    backend_connections: pooled
    servers: [ {plain} ]
"#,
        cert = cert.display(),
        key = key.display(),
        pass = PASSTHROUGH_NAME,
        term = TERMINATE_NAME,
        pooled = POOLED_NAME,
        tls = servers(tls),
        plain = servers(plain),
    )
}

fn spawn(
    name: &str,
    executable: &Path,
    args: &[String],
    addr: SocketAddr,
    cpus: Option<&CpuList>,
    dir: &Path,
) -> Result<ChildProcess, TestbedError> {
    let log = dir.join(format!("{name}.log"));
    let log_file =
        std::fs::File::create(&log).map_err(io(format!("cannot create {}", log.display())))?;
    let mut command = Command::new(executable);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        // Its own process group: a terminal's Ctrl-C reaches only `compare`, which then
        // stops the children itself (no half-shut-down balancer mid-scenario).
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let set = cpus.map(CpuList::to_cpu_set);
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe syscalls (prctl, sched_setaffinity) on data copied beforehand.
    unsafe {
        command.pre_exec(move || {
            #[cfg(target_os = "linux")]
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(set) = &set {
                pin_after_fork(set)?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(io(format!(
        "cannot start {} ({name})",
        executable.display()
    )))?;
    Ok(ChildProcess {
        name: name.to_string(),
        addr,
        log,
        child,
    })
}

impl Testbed {
    /// Starts everything; returns when every child accepts connections. `stop` is polled
    /// while waiting (Ctrl-C).
    pub fn start(options: &TestbedOptions, stop: &AtomicBool) -> Result<Testbed, TestbedError> {
        // A port picked free can be taken by someone else before the child binds it:
        // then start again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(options, stop) {
                Err(TestbedError::Child { .. }) if attempt < 3 && !stop.load(Ordering::Relaxed) => {
                    tracing::warn!(
                        attempt,
                        "a compare process did not start; retrying on new ports"
                    );
                }
                other => return other,
            }
        }
    }

    fn start_once(options: &TestbedOptions, stop: &AtomicBool) -> Result<Testbed, TestbedError> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-compare-")
            .tempdir()
            .map_err(io("cannot make a temp dir"))?;
        let ca = TestCa::new("tollgate compare CA")?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).map_err(io("cannot write the CA"))?;
        let backend_cert = ca.issue(&[PASSTHROUGH_NAME, "localhost", "127.0.0.1"])?;
        let (backend_cert_file, backend_key_file) = backend_cert.write(dir.path(), "backend")?;
        let edge_cert = ca.issue(&[TERMINATE_NAME, POOLED_NAME])?;
        let (edge_cert_file, edge_key_file) = edge_cert.write(dir.path(), "edge")?;

        let addrs = free_addrs(5)?;
        let (edge, plain_addrs, tls_addrs) =
            (addrs[0], vec![addrs[1], addrs[2]], vec![addrs[3], addrs[4]]);
        let config_file = dir.path().join("tollgate.yaml");
        let yaml = render_config(
            edge,
            &edge_cert_file,
            &edge_key_file,
            &plain_addrs,
            &tls_addrs,
        );
        std::fs::write(&config_file, yaml).map_err(io("cannot write the balancer's config"))?;

        let backend_args = |name: &str, addr: SocketAddr, tls: bool| {
            let mut args = vec![
                "backend".to_string(),
                "--listen".to_string(),
                addr.to_string(),
                "--name".to_string(),
                name.to_string(),
                "--body-bytes".to_string(),
                options.body_bytes.to_string(),
                "--threads".to_string(),
                "1".to_string(),
            ];
            if tls {
                args.extend([
                    "--tls".to_string(),
                    "--cert".to_string(),
                    backend_cert_file.display().to_string(),
                    "--key".to_string(),
                    backend_key_file.display().to_string(),
                ]);
            }
            args
        };
        let cpus = options.backend_cpus.as_ref();
        let exe = &options.executable;
        let mut plain = Vec::new();
        for (name, addr) in ["plain-a", "plain-b"].iter().zip(&plain_addrs) {
            plain.push(spawn(
                name,
                exe,
                &backend_args(name, *addr, false),
                *addr,
                cpus,
                dir.path(),
            )?);
        }
        let mut tls = Vec::new();
        for (name, addr) in ["tls-a", "tls-b"].iter().zip(&tls_addrs) {
            tls.push(spawn(
                name,
                exe,
                &backend_args(name, *addr, true),
                *addr,
                cpus,
                dir.path(),
            )?);
        }
        let balancer_args = vec![
            "run".to_string(),
            "-c".to_string(),
            config_file.display().to_string(),
        ];
        let balancer = spawn(
            "balancer",
            exe,
            &balancer_args,
            edge,
            options.balancer_cpus.as_ref(),
            dir.path(),
        )?;
        let mut testbed = Testbed {
            balancer,
            plain,
            tls,
            ca_file,
            config_file,
            dir,
        };
        testbed.wait_ready(stop)?;
        Ok(testbed)
    }

    /// The temp dir holding certificates, config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn children_mut(&mut self) -> impl Iterator<Item = &mut ChildProcess> {
        self.plain
            .iter_mut()
            .chain(self.tls.iter_mut())
            .chain(std::iter::once(&mut self.balancer))
    }

    /// Waits until every child's port accepts a TCP connection, or a child exits, or the
    /// deadline passes.
    fn wait_ready(&mut self, stop: &AtomicBool) -> Result<(), TestbedError> {
        let deadline = Instant::now() + START_DEADLINE;
        for child in self.children_mut() {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Err(TestbedError::Interrupted);
                }
                if let Ok(Some(status)) = child.child.try_wait() {
                    return Err(TestbedError::Child {
                        name: child.name.clone(),
                        why: format!("exited with {status}"),
                        log: child.log_tail(),
                    });
                }
                if TcpStream::connect_timeout(&child.addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(TestbedError::Child {
                        name: child.name.clone(),
                        why: format!(
                            "{} did not accept connections within {START_DEADLINE:?}",
                            child.addr
                        ),
                        log: child.log_tail(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Whether every child is still running; else the first that is not, with its log.
    pub fn check_alive(&mut self) -> Result<(), TestbedError> {
        for child in self.children_mut() {
            if let Ok(Some(status)) = child.child.try_wait() {
                return Err(TestbedError::Child {
                    name: child.name.clone(),
                    why: format!("exited with {status} during the run"),
                    log: child.log_tail(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for ChildProcess {
    /// Kills and reaps the child: on a normal end, an error or Ctrl-C, and also when a
    /// half-started testbed is dropped.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
