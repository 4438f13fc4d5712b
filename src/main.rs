//! The `tollgate` binary: parses the command line (clap) and calls into the library.
//! `run`, `check`, `demo`, `backend`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// tollgate — an edge load balancer: TLS passthrough and TLS offloading on one port.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the load balancer.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
    },
    /// Validate a config file (files, certificates, references): prints `ok` or the
    /// key path and what is wrong, and exits 1.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Self-contained edge on embedded defaults: throwaway CA, built-in backends, the
    /// balancer on localhost, and curl lines to paste. Runs until Ctrl-C.
    Demo {
        /// Address of the balancer's TLS port.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
    /// Load generator: closed or open loop (--rate), keep-alive or a new connection per
    /// request, TLS; prints requests/s and latency percentiles (HdrHistogram).
    Bench(BenchArgs),
    /// Side-by-side benchmark on embedded defaults: starts built-in backends and the
    /// balancer as separate pinned processes, measures direct, passthrough and terminate
    /// (per_request and pooled), each with keep-alive and a new connection per request,
    /// and writes report.md, report.json and chart.svg.
    Compare(CompareArgs),
    /// The built-in origin server: answers every path with a small body naming itself;
    /// `GET /health` answers 200, `POST /echo` echoes the body.
    Backend {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Serve HTTPS (with --cert/--key, else a self-signed certificate).
        #[arg(long)]
        tls: bool,
        /// Name in bodies and the X-Backend header.
        #[arg(long, default_value = "backend")]
        name: String,
        /// PEM certificate chain (with --tls).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key (with --tls).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Pad response bodies to this many bytes.
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Target URL (http:// or https://).
    url: String,
    /// Concurrent connections.
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// Measured duration (500ms, 10s, 2m).
    #[arg(short, long, default_value = "10s", value_parser = parse_duration_arg)]
    duration: Duration,
    /// Load generator threads (default: one per core).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Open loop: total requests per second, latency corrected for coordinated omission.
    #[arg(long)]
    rate: Option<f64>,
    /// A new connection for every request (Connection: close).
    #[arg(long)]
    new_connection: bool,
    /// With --new-connection: a full TLS handshake each time (no session resumption).
    #[arg(long)]
    no_resume: bool,
    /// TLS server name (default: the URL's host).
    #[arg(long)]
    sni: Option<String>,
    /// PEM file of the CA to trust for https.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Connect to this address instead of resolving the URL's host.
    #[arg(long)]
    connect_to: Option<SocketAddr>,
    /// Status every response must have (default: any 2xx).
    #[arg(long)]
    expect_status: Option<u16>,
    /// Body length every response must have (default: the first answer's).
    #[arg(long)]
    expect_length: Option<u64>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    timeout: Duration,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Scenarios: direct-plain, direct-tls, passthrough, terminate-per-request, terminate-pooled, \
each as NAME-keepalive and NAME-newconn (a new connection per request, TLS sessions resumed). \
Default pinning with 2+ CPUs: balancer on the first usable CPU, load generator and backends on the second. \
See docs/benchmarking.md for the method and how to read the report."
)]
struct CompareArgs {
    /// Measured time per scenario (500ms, 5s, 2m).
    #[arg(short, long, default_value = "5s", value_parser = parse_duration_arg)]
    duration: Duration,
    /// Unmeasured load before each scenario (0s: none).
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    warmup: Duration,
    /// Concurrent client connections.
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// Open loop: total requests per second (latency corrected for coordinated omission);
    /// default: closed loop, as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// Response body size of every backend, bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Comma-separated scenarios, by full name (passthrough-newconn) or base name
    /// (passthrough: both); default all ten.
    #[arg(long)]
    scenarios: Option<String>,
    /// Directory for report.md, report.json and chart.svg.
    #[arg(short, long, default_value = "compare-out")]
    out: PathBuf,
    /// CPUs of the balancer process (0, 0,1, 0-3); default: the first usable CPU.
    #[arg(long, value_parser = tollgate::bench::pinning::CpuList::parse)]
    balancer_cpus: Option<tollgate::bench::pinning::CpuList>,
    /// CPUs of the load generator (this process); default: the second usable CPU.
    #[arg(long, value_parser = tollgate::bench::pinning::CpuList::parse)]
    load_cpus: Option<tollgate::bench::pinning::CpuList>,
    /// CPUs of the backend processes; default: the load generator's.
    #[arg(long, value_parser = tollgate::bench::pinning::CpuList::parse)]
    backend_cpus: Option<tollgate::bench::pinning::CpuList>,
    /// Pin nothing (the default with a single usable CPU).
    #[arg(long, conflicts_with_all = ["balancer_cpus", "load_cpus", "backend_cpus"])]
    no_pin: bool,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
}

fn run_compare(args: CompareArgs) -> Result<ExitCode> {
    use tollgate::bench::compare::{self, CompareOptions, Scenario};
    let scenarios = match &args.scenarios {
        Some(text) => Scenario::select(text).map_err(anyhow::Error::msg)?,
        None => Scenario::all(),
    };
    let options = CompareOptions {
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections.max(1),
        rate: args.rate,
        body_bytes: args.body_bytes,
        scenarios,
        out: args.out,
        balancer_cpus: args.balancer_cpus,
        load_cpus: args.load_cpus,
        backend_cpus: args.backend_cpus,
        no_pin: args.no_pin,
        load_threads: args.load_threads.max(1),
        executable: std::env::current_exe().context("cannot find the tollgate executable")?,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let stop = compare::stop_on_signal();
    let outcome = compare::run(options, stop, compare::stderr_progress())?;
    print!("{}", outcome.report.table());
    for file in &outcome.files {
        println!("wrote {}", file.display());
    }
    if outcome.interrupted {
        eprintln!("interrupted: the report holds the scenarios that finished");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    tollgate::config::validate::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (500ms, 10s, 2m)"))
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    use tollgate::bench::load::{self, LoadOptions};
    let options = LoadOptions {
        url: args.url.clone(),
        connect_to: args.connect_to,
        connections: args.connections.max(1),
        duration: args.duration,
        rate: args.rate,
        new_connection: args.new_connection,
        resume: !args.no_resume,
        sni: args.sni,
        cacert: args.cacert,
        insecure: args.insecure,
        expect_status: args.expect_status,
        expect_length: args.expect_length,
        timeout: args.timeout,
    };
    options.check()?;
    let mode = format!(
        "{} connections, {}, {}",
        options.connections,
        if options.new_connection {
            if options.resume {
                "new connection per request"
            } else {
                "new connection per request, no TLS resumption"
            }
        } else {
            "keep-alive"
        },
        match options.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_string(),
        }
    );
    eprintln!("bench {} for {:?} ({mode})", args.url, options.duration);
    let bar = indicatif::ProgressBar::new(options.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // One thread: a current-thread runtime, without work-stealing overhead (like wrk -t1).
    let rt = runtime(args.threads)?;
    let progress_bar = bar.clone();
    let result = rt.block_on(load::run(options, move |elapsed, requests| {
        progress_bar.set_position(elapsed.as_millis() as u64);
        progress_bar.set_message(format!("{requests} requests"));
    }))?;
    bar.finish_and_clear();
    print!("{}", result.render_text());
    if result.open_loop {
        println!(
            "  (* latency from each request's intended send time: coordinated omission corrected)"
        );
    }
    if let Some(path) = args.json {
        let json = result.to_json(&args.url);
        std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if result.requests == 0 {
        eprintln!("bench: no request was answered correctly");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // RUST_LOG with targets and levels only (or none: `info`) is a static filter.
    // EnvFilter looks every span up under a lock at each enter and exit, which is each
    // poll of each connection, whether or not a directive names a span; it is kept for
    // the directives only it understands (`target[span{field=value}]=level`).
    let directives = std::env::var("RUST_LOG").ok();
    let targets: Option<tracing_subscriber::filter::Targets> = match directives.as_deref() {
        None | Some("") => Some(
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::INFO),
        ),
        Some(d) if !d.contains('[') => d.parse().ok(),
        Some(_) => None,
    };
    let env_filter = targets.is_none().then(|| {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    });
    tracing_subscriber::registry()
        .with(targets)
        .with(env_filter)
        .with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(tollgate::log_fields::CompactFields)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

/// The runtime for `worker_threads` (default: one per core). One thread is tokio's
/// current-thread scheduler: one event loop on the main thread, as HAProxy runs with
/// `nbthread 1` and nginx with one worker, without the multi-thread scheduler's
/// per-task and per-park work (callgrind: 6 % fewer instructions and 11 % fewer L1i
/// misses per new passthrough connection, 3 % and 6 % per pooled request).
fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder.build().context("cannot start the tokio runtime")
}

/// Resolves when SIGTERM or SIGINT (Ctrl-C) arrives.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads on SIGHUP; drains and returns on SIGTERM or Ctrl-C.
async fn serve_until_stopped(server: tollgate::server::Server) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            let stop = stop_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the config");
                        // Errors are logged and counted by the reload itself.
                        let _ = server.reload_file().await;
                    }
                }
            }
        } else {
            stop_signal().await;
        }
    }
    #[cfg(not(unix))]
    stop_signal().await;
    let grace = server.snapshot().config.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining"
    );
    server.shutdown(grace).await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bench(args) => run_bench(args),
        Command::Compare(args) => run_compare(args),
        Command::Check { config } => {
            let loaded = tollgate::config::load(&config).and_then(|c| {
                tollgate::server::Snapshot::build(
                    std::sync::Arc::new(c),
                    &tollgate::metrics::Metrics::new(),
                )
                .map(|_| ())
                .map_err(|e| match e {
                    tollgate::error::StartError::Config(c) => c.into(),
                    other => tollgate::error::ConfigError::new("(start)", other.to_string()).into(),
                })
            });
            match loaded {
                Ok(()) => {
                    println!("ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    eprintln!("{}: {err}", config.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run { config } => {
            let loaded = match tollgate::config::load(&config) {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("{}: {err}", config.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let rt = runtime(loaded.worker_threads)?;
            rt.block_on(async move {
                let server =
                    tollgate::server::Server::start_with_file(loaded, Some(config.clone()))
                        .await
                        .with_context(|| format!("{}", config.display()))?;
                serve_until_stopped(server).await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen } => {
            let rt = runtime(None)?;
            rt.block_on(async move {
                let demo = tollgate::demo::start(listen).await.with_context(|| {
                    format!("demo could not start on {listen} (is the port taken? try --listen 127.0.0.1:0)")
                })?;
                println!("tollgate demo: one TLS port ({}) serving two names", demo.edge);
                println!("config: {}", demo.config_file.display());
                for (name, line) in demo.curl_lines() {
                    let what = if name == tollgate::demo::PASSTHROUGH_NAME {
                        "passthrough (TLS spliced untouched to a TLS backend)"
                    } else {
                        "terminated (TLS offloaded, HTTP proxied to a plain backend)"
                    };
                    println!("\n# {name}: {what}\n{line}");
                }
                println!("\nCtrl-C stops the demo.");
                stop_signal().await;
                demo.stop(Duration::from_secs(5)).await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backend {
            listen,
            tls,
            name,
            cert,
            key,
            body_bytes,
            threads,
        } => {
            let tls_config = if tls {
                let issued = match (cert, key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    _ => None,
                };
                Some(backend_tls(issued)?)
            } else {
                None
            };
            let rt = runtime(threads)?;
            rt.block_on(async move {
                let listener = tollgate::listener::bind(listen)
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let local = listener.local_addr()?;
                eprintln!(
                    "backend {name} listening on {local}{}",
                    if tls { " (TLS)" } else { "" }
                );
                let stop = CancellationToken::new();
                let options = tollgate::origin::OriginOptions {
                    name,
                    body_bytes,
                    tls: tls_config,
                };
                let serving =
                    tokio::spawn(tollgate::origin::serve(listener, options, stop.clone()));
                stop_signal().await;
                stop.cancel();
                let _ = serving.await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn backend_tls(files: Option<(PathBuf, PathBuf)>) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    let Some((cert, key)) = files else {
        let issued = tollgate::tls::certgen::self_signed(&["localhost", "127.0.0.1"])?;
        return Ok(issued.server_config()?);
    };
    let spec = tollgate::config::CertificateSpec {
        cert,
        key,
        names: Some(vec!["localhost".into()]),
    };
    let (certified, _) = tollgate::tls::terminate::load_certified_key(0, &spec)?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(std::sync::Arc::new(rustls::sign::SingleCertAndKey::from(
        certified,
    )));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(std::sync::Arc::new(config))
}
