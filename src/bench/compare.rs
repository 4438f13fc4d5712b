//! `tollgate compare`: runs every mode side by side over the same backends and writes
//! the report. It starts the [`Testbed`] (backends and balancer as separate, pinned
//! processes), pins itself, then for each scenario runs the in-process load generator
//! ([`load::run`]) for a warm-up and a measured run while reading the processes' CPU
//! time and the balancer's memory from `/proc`, and finally writes `report.md`,
//! `report.json` and `chart.svg` into the output directory. This file owns that run loop,
//! its errors, progress events and Ctrl-C handling; the scenarios and options are in
//! `scenarios.rs` (re-exported here), the memory and CPU sampling in `sampling.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::bench::chart::{self, ChartSeries};
use crate::bench::load::{self, LoadOptions, LoadResult};
use crate::bench::pinning::{self, CpuList, Pinning};
use crate::bench::procstat::{self, ticks_to_duration, Machine, Proc};
use crate::bench::report::{self, Report, ScenarioReport};
use crate::bench::sampling::{cpu_ticks_sum, Sampler};
use crate::bench::scenarios::{describe_options, options_json};
pub use crate::bench::scenarios::{CompareOptions, Connection, Mode, Scenario};
use crate::bench::testbed::{self, Testbed, TestbedError, TestbedOptions};

/// Why compare failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The processes.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// The load generator refused a scenario.
    #[error("scenario {scenario}: {source}")]
    Load {
        /// Which.
        scenario: String,
        /// Why.
        source: load::BenchError,
    },
    /// Writing the report, building the runtime.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The chart.
    #[error("chart: {0}")]
    Chart(String),
}

/// What a finished run wrote.
#[derive(Debug)]
pub struct CompareOutcome {
    /// The report.
    pub report: Report,
    /// `report.md`, `report.json`, `chart.svg`.
    pub files: Vec<PathBuf>,
    /// Stopped by Ctrl-C (a partial report was written when any scenario finished).
    pub interrupted: bool,
}

/// Progress events for the caller's progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Starting the processes.
    Starting,
    /// A phase is running: overall position and total in ms, and a message.
    Running {
        /// Done so far (ms of load).
        position_ms: u64,
        /// Total (ms of load).
        total_ms: u64,
        /// Scenario and phase.
        message: String,
    },
    /// A scenario finished: one summary line.
    Finished(String),
    /// The run is over (the bar can go).
    Done,
}

/// Runs the comparison. `stop` is set on Ctrl-C (the caller installs the handler).
pub fn run(
    options: CompareOptions,
    stop: Arc<AtomicBool>,
    progress: impl Fn(Progress) + Send + Sync + 'static,
) -> Result<CompareOutcome, CompareError> {
    options.check().map_err(CompareError::Options)?;
    let started = SystemTime::now();
    let machine = Machine::read();
    let pinning = Pinning::resolve(
        &machine.cpus_usable,
        options.balancer_cpus.clone(),
        options.load_cpus.clone(),
        options.backend_cpus.clone(),
        options.no_pin,
    )
    .map_err(CompareError::Options)?;
    let everywhere = CpuList::new(machine.cpus_usable.clone());
    if let Some(load_cpus) = &pinning.load {
        // Before the runtime exists, so its threads inherit the mask.
        pinning::pin_current_thread(load_cpus).map_err(|source| CompareError::Io {
            what: format!("cannot pin the load generator to CPU {load_cpus}"),
            source,
        })?;
    }
    let load_cores = options
        .load_threads
        .min(
            pinning
                .load
                .as_ref()
                .map_or(machine.cpus_usable.len(), CpuList::len),
        )
        .max(1) as f64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.load_threads.max(1))
        .enable_all()
        .build()
        .map_err(|source| CompareError::Io {
            what: "cannot start the load generator's runtime".to_string(),
            source,
        })?;

    progress(Progress::Starting);
    // Children are started from this (main) thread: PR_SET_PDEATHSIG follows the thread.
    let mut bed = Testbed::start(
        &TestbedOptions {
            executable: options.executable.clone(),
            body_bytes: options.body_bytes,
            balancer_cpus: Some(
                pinning
                    .balancer
                    .clone()
                    .unwrap_or_else(|| everywhere.clone()),
            ),
            backend_cpus: Some(
                pinning
                    .backends
                    .clone()
                    .unwrap_or_else(|| everywhere.clone()),
            ),
        },
        &stop,
    )?;
    let mut pin_lines = vec![format!("pinning asked: {}", pinning.describe())];
    pin_lines.push(format!(
        "pinning seen by the kernel (Cpus_allowed_list): balancer {}; backends {}; load generator {} ({} thread{})",
        Proc::Pid(bed.balancer.pid()).cpus_allowed().unwrap_or_else(|| "?".into()),
        Proc::Pid(bed.plain[0].pid()).cpus_allowed().unwrap_or_else(|| "?".into()),
        Proc::Own.cpus_allowed().unwrap_or_else(|| "?".into()),
        options.load_threads,
        if options.load_threads == 1 { "" } else { "s" },
    ));
    pin_lines.push(
        "balancer: `tollgate run`, runtime.worker_threads 1, access_log off; backends: `tollgate backend --threads 1`, 2 plain + 2 TLS"
            .to_string(),
    );

    let per_scenario = options.warmup + options.duration;
    let total_ms = per_scenario.as_millis() as u64 * options.scenarios.len() as u64;
    let progress = Arc::new(progress);
    let mut reports = Vec::new();
    let mut interrupted = false;
    for (index, scenario) in options.scenarios.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        bed.check_alive()?;
        let base_ms = per_scenario.as_millis() as u64 * index as u64;
        let label = format!(
            "[{}/{}] {}",
            index + 1,
            options.scenarios.len(),
            scenario.name()
        );
        let plan = plan(&bed, scenario, &options);
        if !options.warmup.is_zero() {
            let mut warm = plan.load.clone();
            warm.duration = options.warmup;
            let p = Arc::clone(&progress);
            let message = format!("{label} warm-up");
            let outcome = run_load(&runtime, warm, &stop, move |elapsed, _| {
                p(Progress::Running {
                    position_ms: base_ms
                        + (elapsed.as_millis() as u64).min(per_scenario.as_millis() as u64),
                    total_ms,
                    message: message.clone(),
                })
            });
            match outcome {
                Ok(Some(_)) => {}
                Ok(None) => {
                    interrupted = true;
                    break;
                }
                Err(source) => {
                    return Err(CompareError::Load {
                        scenario: scenario.name(),
                        source,
                    })
                }
            }
        }
        let balancer = Proc::Pid(bed.balancer.pid());
        let backends: Vec<Proc> = plan.backends.iter().map(|pid| Proc::Pid(*pid)).collect();
        let before = (
            balancer.cpu_ticks(),
            cpu_ticks_sum(&backends),
            Proc::Own.cpu_ticks(),
        );
        let cpus_before = procstat::cpu_times();
        let sampler = Sampler::start(bed.balancer.pid());
        let p = Arc::clone(&progress);
        let warm_ms = options.warmup.as_millis() as u64;
        let message = label.clone();
        let outcome = run_load(
            &runtime,
            plan.load.clone(),
            &stop,
            move |elapsed, requests| {
                p(Progress::Running {
                    position_ms: base_ms
                        + warm_ms
                        + (elapsed.as_millis() as u64)
                            .min(per_scenario.as_millis() as u64 - warm_ms),
                    total_ms,
                    message: format!("{message}: {requests} requests"),
                })
            },
        );
        let peak_rss = sampler.finish();
        let after = (
            balancer.cpu_ticks(),
            cpu_ticks_sum(&backends),
            Proc::Own.cpu_ticks(),
        );
        let cpus_after = procstat::cpu_times();
        let result = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => {
                interrupted = true;
                break;
            }
            Err(source) => {
                return Err(CompareError::Load {
                    scenario: scenario.name(),
                    source,
                })
            }
        };
        let delta = |a: Option<u64>, b: Option<u64>| {
            Some(ticks_to_duration(b?.saturating_sub(a?)).as_secs_f64())
        };
        let through = scenario.mode.through_balancer();
        let balancer_cpu_s = delta(before.0.map(|t| t.total()), after.0.map(|t| t.total()));
        // What else ran on the balancer's CPUs: their busy share minus the balancer's own.
        let balancer_cpus_others = pinning.balancer.as_ref().and_then(|cpus| {
            let busy = procstat::busy_share(&cpus_before, &cpus_after, cpus.cpus())?;
            let own = report::cpu_share(balancer_cpu_s?, result.elapsed, cpus.len() as f64)?;
            Some((busy - own).max(0.0))
        });
        let load_cpus_busy = pinning
            .load
            .as_ref()
            .and_then(|cpus| procstat::busy_share(&cpus_before, &cpus_after, cpus.cpus()));
        let report = ScenarioReport {
            name: scenario.name(),
            base: scenario.mode.name().to_string(),
            connection: scenario.connection.suffix().to_string(),
            url: plan.load.url.clone(),
            target: plan.target,
            result,
            balancer_cpu_s: if through { balancer_cpu_s } else { None },
            balancer_peak_rss_kb: if through { peak_rss } else { None },
            balancer_hwm_kb: if through { balancer.hwm_kb() } else { None },
            backends_cpu_s: delta(before.1, after.1),
            backends: plan.backend_names,
            load_cpu_s: delta(before.2.map(|t| t.total()), after.2.map(|t| t.total())),
            load_cores,
            load_cpus_busy,
            balancer_cpus_others,
        };
        progress(Progress::Finished(summary_line(&report)));
        reports.push(report);
    }
    drop(bed);
    progress(Progress::Done);
    let report = Report {
        machine,
        started,
        command_line: options.command_line.clone(),
        options: describe_options(&options),
        options_json: options_json(&options, &pinning),
        pinning: pin_lines,
        selected: options.scenarios.len(),
        scenarios: reports,
        interrupted,
    };
    let files = if report.scenarios.is_empty() {
        Vec::new()
    } else {
        write(&report, &options.out)?
    };
    Ok(CompareOutcome {
        report,
        files,
        interrupted,
    })
}

/// Sets the returned flag on Ctrl-C or SIGTERM (a small thread with its own runtime), so
/// `run` stops between phases, drops the testbed (killing the children) and writes what
/// it has.
pub fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("compare-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    if let Ok(mut term) = signal(SignalKind::terminate()) {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                        return;
                    }
                }
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::Relaxed);
        });
    if spawned.is_err() {
        tracing::warn!("no signal thread: Ctrl-C will not write a partial report");
    }
    stop
}

/// An indicatif bar on stderr for [`run`]: overall position, scenario in the message,
/// one line per finished scenario.
pub fn stderr_progress() -> impl Fn(Progress) + Send + Sync + 'static {
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(1), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% eta {eta:>4} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    move |event| match event {
        Progress::Starting => bar.set_message("starting the backends and the balancer"),
        Progress::Running {
            position_ms,
            total_ms,
            message,
        } => {
            bar.set_length(total_ms.max(1));
            bar.set_position(position_ms);
            bar.set_message(message);
        }
        Progress::Finished(line) => bar.suspend(|| eprintln!("{line}")),
        Progress::Done => bar.finish_and_clear(),
    }
}

/// What one scenario sends where.
struct Plan {
    load: LoadOptions,
    target: String,
    backends: Vec<u32>,
    backend_names: Vec<String>,
}

fn plan(bed: &Testbed, scenario: &Scenario, options: &CompareOptions) -> Plan {
    let edge = bed.balancer.addr;
    let (url, connect_to, serving, target) = match scenario.mode {
        Mode::DirectPlain => {
            let b = &bed.plain[0];
            (
                format!("http://{}/", b.addr),
                b.addr,
                vec![b],
                format!("backend {} (plain)", b.name),
            )
        }
        Mode::DirectTls => {
            let b = &bed.tls[0];
            (
                format!("https://{}:{}/", testbed::PASSTHROUGH_NAME, b.addr.port()),
                b.addr,
                vec![b],
                format!("backend {} (TLS)", b.name),
            )
        }
        Mode::Passthrough => (
            format!("https://{}:{}/", testbed::PASSTHROUGH_NAME, edge.port()),
            edge,
            bed.tls.iter().collect(),
            "balancer, passthrough to tls-a, tls-b".to_string(),
        ),
        Mode::TerminatePerRequest => (
            format!("https://{}:{}/", testbed::TERMINATE_NAME, edge.port()),
            edge,
            bed.plain.iter().collect(),
            "balancer, terminate, per_request to plain-a, plain-b".to_string(),
        ),
        Mode::TerminatePooled => (
            format!("https://{}:{}/", testbed::POOLED_NAME, edge.port()),
            edge,
            bed.plain.iter().collect(),
            "balancer, terminate, pooled to plain-a, plain-b".to_string(),
        ),
    };
    let https = url.starts_with("https");
    Plan {
        load: LoadOptions {
            url,
            connect_to: Some(connect_to),
            connections: options.connections.max(1),
            duration: options.duration,
            rate: options.rate,
            new_connection: scenario.connection == Connection::NewConn,
            resume: true,
            sni: None,
            cacert: https.then(|| bed.ca_file.clone()),
            insecure: false,
            expect_status: Some(200),
            // The backends make every body exactly body_bytes long (padded or cut).
            expect_length: Some(options.body_bytes as u64),
            timeout: Duration::from_secs(10),
        },
        target,
        backends: serving.iter().map(|b| b.pid()).collect(),
        backend_names: serving.iter().map(|b| b.name.clone()).collect(),
    }
}

/// Runs the load unless Ctrl-C comes first (`Ok(None)`).
fn run_load(
    runtime: &tokio::runtime::Runtime,
    options: LoadOptions,
    stop: &AtomicBool,
    progress: impl Fn(Duration, u64) + Send + 'static,
) -> Result<Option<LoadResult>, load::BenchError> {
    runtime.block_on(async {
        let work = load::run(options, progress);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                result = &mut work => return result.map(Some),
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                }
            }
        }
    })
}

fn summary_line(r: &ScenarioReport) -> String {
    let notes = r.trust_notes();
    format!(
        "{:<32} {:>9.0} req/s  p99 {:>8.3} ms  errors {}{}",
        r.name,
        r.result.requests_per_sec(),
        r.result.latency_ms(0.99),
        r.result.errors.total(),
        if notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", notes.join("; "))
        }
    )
}

/// Writes report.md, report.json and chart.svg into `out`.
pub fn write(report: &Report, out: &std::path::Path) -> Result<Vec<PathBuf>, CompareError> {
    let io = |what: String| move |source| CompareError::Io { what, source };
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let series: Vec<ChartSeries> = report
        .scenarios
        .iter()
        .map(|s| ChartSeries {
            name: s.name.clone(),
            colour: Mode::ALL
                .iter()
                .find(|m| m.name() == s.base)
                .map_or(0, |m| m.index()),
            keepalive: s.connection == Connection::KeepAlive.suffix(),
            latency_curve: s.latency_curve(),
            requests_per_sec: s.result.requests_per_sec(),
        })
        .collect();
    let svg = chart::render_svg(&series).map_err(CompareError::Chart)?;
    let json = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default() + "\n";
    let files = [
        (out.join("report.md"), report.to_markdown()),
        (out.join("report.json"), json),
        (out.join("chart.svg"), svg),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).map_err(io(format!("cannot write {}", path.display())))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}
