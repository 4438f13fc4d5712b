//! The report of `tollgate compare`: per-scenario arithmetic (CPU-seconds per 1,000
//! requests, the load generator's CPU share), the trust checks, and the two text forms:
//! `report.md` (machine, options, one table, how to read it) and `report.json` (the same
//! data; each scenario carries the `tollgate bench` JSON keys plus the CPU/RSS fields).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bench::load::LoadResult;
use crate::bench::procstat::{clock_ticks_per_sec as tick_rate, Machine};

/// Below this much measured time a scenario is not trusted.
pub const MIN_MEASURED: Duration = Duration::from_secs(2);
/// Below this many correct answers a scenario is not trusted.
pub const MIN_REQUESTS: u64 = 100;
/// Below this many clock ticks (`/proc` counts CPU time in ticks, 10 ms at 100 Hz), a
/// CPU-per-request figure is coarser than ±2 % and is flagged.
pub const MIN_CPU_TICKS: u64 = 50;
/// At or above this share of its cores, the load generator may be the bottleneck.
pub const LOAD_SATURATED: f64 = 0.90;

/// The percentiles the chart draws (x axis: 50, 90, 99, 99.9, 99.99).
pub const CURVE_PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// What one scenario measured.
#[derive(Debug)]
pub struct ScenarioReport {
    /// Full name (`passthrough-keepalive`).
    pub name: String,
    /// Base name (`passthrough`).
    pub base: String,
    /// `keepalive` or `newconn`.
    pub connection: String,
    /// The URL the load generator requested.
    pub url: String,
    /// Where it connected.
    pub target: String,
    /// The load generator's result.
    pub result: LoadResult,
    /// The balancer's CPU-seconds during the run (`None`: direct scenario, or unreadable).
    pub balancer_cpu_s: Option<f64>,
    /// The balancer's largest sampled VmRSS during the run, kB.
    pub balancer_peak_rss_kb: Option<u64>,
    /// The balancer's VmHWM (peak over its whole life so far) after the run, kB.
    pub balancer_hwm_kb: Option<u64>,
    /// CPU-seconds of the backends that served the scenario.
    pub backends_cpu_s: Option<f64>,
    /// Which backends served it.
    pub backends: Vec<String>,
    /// The load generator's (this process's) CPU-seconds during the run.
    pub load_cpu_s: Option<f64>,
    /// Cores the load generator may use (min of its threads and its CPUs).
    pub load_cores: f64,
    /// How busy the load generator's CPUs were (all processes), when pinned.
    pub load_cpus_busy: Option<f64>,
    /// Share of the balancer's CPUs used by other processes, when pinned.
    pub balancer_cpus_others: Option<f64>,
}

/// CPU-seconds per 1,000 correct answers.
pub fn cpu_per_1k(cpu_s: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_s * 1000.0 / requests as f64)
}

/// CPU-seconds as a share of `cores` over `elapsed`.
pub fn cpu_share(cpu_s: f64, elapsed: Duration, cores: f64) -> Option<f64> {
    let capacity = elapsed.as_secs_f64() * cores;
    (capacity > 0.0).then(|| cpu_s / capacity)
}

/// At or above this share, other processes on the balancer's CPUs make the run noisy.
pub const NOISY_OTHERS: f64 = 0.10;

/// What the trust checks look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustInputs {
    /// Failed requests.
    pub errors: u64,
    /// Correct answers.
    pub requests: u64,
    /// Measured time.
    pub measured: Duration,
    /// The load generator's CPU as a share of its cores.
    pub load_share: Option<f64>,
    /// How busy the load generator's CPUs were, all processes (load generator, backends
    /// pinned there, anything else).
    pub load_cpus_busy: Option<f64>,
    /// Share of the balancer's CPUs used by processes other than the balancer.
    pub balancer_cpus_others: Option<f64>,
    /// Clock ticks of CPU time the balancer's figure rests on.
    pub balancer_cpu_ticks: Option<u64>,
    /// Clock ticks of CPU time the backends' figure rests on.
    pub backends_cpu_ticks: Option<u64>,
}

/// The reasons a scenario's figures cannot be taken at face value (empty: trusted).
pub fn trust_notes(t: &TrustInputs) -> Vec<String> {
    let mut notes = Vec::new();
    if t.errors > 0 {
        notes.push(format!("{} errors", t.errors));
    }
    if t.measured < MIN_MEASURED {
        notes.push(format!("< 2 s of data ({:.1} s)", t.measured.as_secs_f64()));
    }
    if t.requests < MIN_REQUESTS {
        notes.push(format!("only {} requests (< {MIN_REQUESTS})", t.requests));
    }
    let load_saturated = t.load_share.is_some_and(|s| s >= LOAD_SATURATED);
    if let Some(share) = t.load_share.filter(|_| load_saturated) {
        notes.push(format!(
            "load generator at {:.0}% of its CPU: it may be the bottleneck, figures are a floor",
            share * 100.0
        ));
    }
    if let Some(busy) = t
        .load_cpus_busy
        .filter(|b| *b >= LOAD_SATURATED && !load_saturated)
    {
        notes.push(format!(
            "load generator's CPU {:.0}% busy (shared with the backends): req/s may be a client-side floor",
            busy * 100.0
        ));
    }
    if let Some(others) = t.balancer_cpus_others.filter(|o| *o >= NOISY_OTHERS) {
        notes.push(format!(
            "other processes took {:.0}% of the balancer's CPU: noisy machine",
            others * 100.0
        ));
    }
    for (whose, ticks) in [
        ("the balancer's", t.balancer_cpu_ticks),
        ("the backends'", t.backends_cpu_ticks),
    ] {
        if let Some(ticks) = ticks.filter(|t| *t < MIN_CPU_TICKS) {
            notes.push(format!(
                "{whose} CPU from only {ticks} clock ticks: coarse, run longer"
            ));
        }
    }
    notes
}

/// CPU-seconds as whole clock ticks at `ticks_per_sec`.
pub fn cpu_ticks(cpu_s: f64, ticks_per_sec: u64) -> u64 {
    (cpu_s * ticks_per_sec as f64).round() as u64
}

impl ScenarioReport {
    /// Balancer CPU-seconds per 1,000 requests.
    pub fn balancer_cpu_per_1k(&self) -> Option<f64> {
        cpu_per_1k(self.balancer_cpu_s?, self.result.requests)
    }

    /// The balancer's CPU as a share of one core over the run (1.0: one core busy).
    pub fn balancer_cpu_share(&self) -> Option<f64> {
        cpu_share(self.balancer_cpu_s?, self.result.elapsed, 1.0)
    }

    /// Backends' CPU-seconds per 1,000 requests.
    pub fn backends_cpu_per_1k(&self) -> Option<f64> {
        cpu_per_1k(self.backends_cpu_s?, self.result.requests)
    }

    /// The load generator's CPU as a share of its cores.
    pub fn load_cpu_share(&self) -> Option<f64> {
        cpu_share(self.load_cpu_s?, self.result.elapsed, self.load_cores)
    }

    /// Why this scenario cannot be trusted (empty: it can).
    pub fn trust_notes(&self) -> Vec<String> {
        trust_notes(&TrustInputs {
            errors: self.result.errors.total(),
            requests: self.result.requests,
            measured: self.result.elapsed,
            load_share: self.load_cpu_share(),
            load_cpus_busy: self.load_cpus_busy,
            balancer_cpus_others: self.balancer_cpus_others,
            balancer_cpu_ticks: self.balancer_cpu_s.map(|s| cpu_ticks(s, tick_rate())),
            backends_cpu_ticks: self.backends_cpu_s.map(|s| cpu_ticks(s, tick_rate())),
        })
    }

    /// (percentile, latency ms) points of the latency curve.
    pub fn latency_curve(&self) -> Vec<(f64, f64)> {
        CURVE_PERCENTILES
            .iter()
            .map(|p| (*p, self.result.latency_ms(p / 100.0)))
            .collect()
    }

    /// This scenario in `report.json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = self.result.to_json(&self.url);
        let mb = |kb: Option<u64>| kb.map(|k| k as f64 / 1024.0);
        let extra = serde_json::json!({
            "scenario": self.name,
            "base": self.base,
            "connection": self.connection,
            "target": self.target,
            "latency_curve_ms": self.latency_curve().iter().map(|(p, ms)| serde_json::json!({"percentile": p, "ms": ms})).collect::<Vec<_>>(),
            "balancer_cpu_s": self.balancer_cpu_s,
            "balancer_cpu_s_per_1k_requests": self.balancer_cpu_per_1k(),
            "balancer_cpu_share_of_one_core": self.balancer_cpu_share(),
            "balancer_peak_rss_mb": mb(self.balancer_peak_rss_kb),
            "balancer_vm_hwm_mb": mb(self.balancer_hwm_kb),
            "backends": self.backends,
            "backends_cpu_s": self.backends_cpu_s,
            "backends_cpu_s_per_1k_requests": self.backends_cpu_per_1k(),
            "load_generator_cpu_s": self.load_cpu_s,
            "load_generator_cores": self.load_cores,
            "load_generator_cpu_share": self.load_cpu_share(),
            "load_generator_cpus_busy_share": self.load_cpus_busy,
            "balancer_cpus_used_by_others_share": self.balancer_cpus_others,
            "trusted": self.trust_notes().is_empty(),
            "trust_notes": self.trust_notes(),
        });
        if let (Some(object), serde_json::Value::Object(more)) = (json.as_object_mut(), extra) {
            object.extend(more);
        }
        json
    }
}

/// A whole run.
#[derive(Debug)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// When the run started.
    pub started: SystemTime,
    /// The command line as typed.
    pub command_line: String,
    /// Effective options, (name, value) in display order.
    pub options: Vec<(String, String)>,
    /// The same options, machine-readable.
    pub options_json: serde_json::Value,
    /// Pinning asked for, and what the kernel reports per process.
    pub pinning: Vec<String>,
    /// Scenarios in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// Scenarios selected (the run may have stopped early).
    pub selected: usize,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a time.
pub fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Report {
    /// The results table (Markdown).
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | LB CPU-s/1k req | LB CPU % | LB peak RSS MB | LB VmHWM MB | backends CPU-s/1k req | load-gen CPU % | trust notes |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
        );
        for s in &self.scenarios {
            let r = &s.result;
            let notes = s.trust_notes();
            out.push_str(&format!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                s.name,
                r.requests_per_sec(),
                r.latency_ms(0.50),
                r.latency_ms(0.90),
                r.latency_ms(0.99),
                r.latency_ms(0.999),
                r.latency_us.max() as f64 / 1000.0,
                r.errors.total(),
                opt(s.balancer_cpu_per_1k(), 4),
                opt(s.balancer_cpu_share().map(|f| f * 100.0), 0),
                opt(s.balancer_peak_rss_kb.map(|k| k as f64 / 1024.0), 1),
                opt(s.balancer_hwm_kb.map(|k| k as f64 / 1024.0), 1),
                opt(s.backends_cpu_per_1k(), 4),
                opt(s.load_cpu_share().map(|f| f * 100.0), 0),
                if notes.is_empty() { "ok".to_string() } else { notes.join("; ") },
            ));
        }
        out
    }

    /// `report.md`.
    pub fn to_markdown(&self) -> String {
        let untrusted: Vec<&str> = self
            .scenarios
            .iter()
            .filter(|s| !s.trust_notes().is_empty())
            .map(|s| s.name.as_str())
            .collect();
        let mut md = String::new();
        md.push_str("# tollgate compare\n\n");
        md.push_str(&format!(
            "Run {} with tollgate {}.\n\n",
            utc_timestamp(self.started),
            env!("CARGO_PKG_VERSION")
        ));
        if self.interrupted {
            md.push_str(&format!(
                "**Interrupted (Ctrl-C): {} of {} scenarios ran.**\n\n",
                self.scenarios.len(),
                self.selected
            ));
        }
        if untrusted.is_empty() {
            md.push_str("**Trust: every scenario passed the checks** (no errors, ≥ 2 s and ≥ 100 requests of data, load generator below 90% of its CPU).\n\n");
        } else {
            md.push_str(&format!(
                "**Trust: {} of {} scenarios cannot be taken at face value: {}.** See the trust notes column.\n\n",
                untrusted.len(),
                self.scenarios.len(),
                untrusted.join(", ")
            ));
        }
        md.push_str("## Machine\n\n");
        md.push_str(&format!("- CPU: {}\n", self.machine.cpu_model));
        md.push_str(&format!(
            "- cores: {} online, {} usable by this run ({})\n",
            self.machine.cpus_online,
            self.machine.cpus_usable.len(),
            crate::bench::pinning::CpuList::new(self.machine.cpus_usable.clone())
        ));
        md.push_str(&format!("- kernel: {}\n", self.machine.kernel));
        for line in &self.pinning {
            md.push_str(&format!("- {line}\n"));
        }
        md.push_str("\n## Options\n\n");
        md.push_str(&format!("```\n{}\n```\n\n", self.command_line));
        for (name, value) in &self.options {
            md.push_str(&format!("- {name}: {value}\n"));
        }
        md.push_str("\n## Results\n\n");
        md.push_str(&self.table());
        md.push_str(
            "\nLatencies in milliseconds, from the load generator (closed loop unless a rate is set: then \
             corrected for coordinated omission). CPU-s/1k req: CPU-seconds (user + system, from /proc) per \
             1,000 correct answers. LB CPU %: the balancer's CPU time over the run, in % of one core \
             (near 100: the balancer is the limit). LB peak RSS: the largest VmRSS sampled every 100 ms during the run; \
             VmHWM: the balancer's peak since it started (it ran every scenario before this one). \
             Load-gen CPU: this process's CPU as a share of the cores it was given. Trust notes also \
             flag a busy load CPU (all processes, from /proc/stat) and other processes on the \
             balancer's CPU. n/a: not measured \
             (direct scenarios have no balancer).\n\n",
        );
        md.push_str("## How to read this\n\n");
        md.push_str(
            "Compare rows, not absolutes. `direct-*` rows are the backends alone: the ceiling the balancer \
             is measured against. `passthrough` splices the encrypted bytes, so the TLS cost stays on the \
             backends: expect the balancer's CPU per request to be small and the backends' to match \
             `direct-tls`. `terminate-*` moves the TLS cost onto the balancer (its CPU per request rises, \
             the backends' falls to the `direct-plain` level) and adds an HTTP hop; `per_request` also \
             opens a backend connection for every request, `pooled` reuses them. `newconn` rows are \
             dominated by connection setup (TCP and the TLS handshake, resumed like wrk does): their \
             requests/s measure handshakes, not proxying. A row with trust notes is a floor or noise, not \
             a result.\n",
        );
        md
    }

    /// `report.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tollgate_version": env!("CARGO_PKG_VERSION"),
            "started_utc": utc_timestamp(self.started),
            "command_line": self.command_line,
            "interrupted": self.interrupted,
            "machine": {
                "cpu_model": self.machine.cpu_model,
                "cpus_online": self.machine.cpus_online,
                "cpus_usable": self.machine.cpus_usable,
                "kernel": self.machine.kernel,
            },
            "pinning": self.pinning,
            "options": self.options_json,
            "scenarios": self.scenarios.iter().map(ScenarioReport::to_json).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thousand_requests() {
        assert_eq!(cpu_per_1k(2.0, 40_000), Some(0.05));
        assert_eq!(cpu_per_1k(1.0, 0), None);
        let share = cpu_share(4.5, Duration::from_secs(5), 1.0).unwrap();
        assert!((share - 0.9).abs() < 1e-12);
        assert_eq!(cpu_share(1.0, Duration::ZERO, 1.0), None);
    }

    fn inputs(requests: u64, secs: f64) -> TrustInputs {
        TrustInputs {
            requests,
            measured: Duration::from_secs_f64(secs),
            load_share: Some(0.5),
            ..TrustInputs::default()
        }
    }

    #[test]
    fn trust_checks_fire() {
        assert!(trust_notes(&inputs(50_000, 5.0)).is_empty());
        assert_eq!(
            trust_notes(&inputs(50_000, 1.5)),
            vec!["< 2 s of data (1.5 s)".to_string()]
        );
        let all = trust_notes(&TrustInputs {
            errors: 3,
            load_share: Some(0.95),
            balancer_cpus_others: Some(0.25),
            ..inputs(20, 1.0)
        });
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(all[0], "3 errors");
        assert!(all[2].starts_with("only 20 requests"));
        assert!(all[3].contains("95%"));
        assert!(all[4].contains("25%") && all[4].contains("noisy"));
        // Exactly at the threshold counts as saturated.
        let at = TrustInputs {
            load_share: Some(0.90),
            ..inputs(1000, 5.0)
        };
        assert_eq!(trust_notes(&at).len(), 1);
        let unknown = TrustInputs {
            load_share: None,
            ..inputs(1000, 5.0)
        };
        assert!(trust_notes(&unknown).is_empty());
        // A busy shared CPU is reported once, and not on top of a saturated load generator.
        let shared = TrustInputs {
            load_cpus_busy: Some(0.97),
            ..inputs(1000, 5.0)
        };
        let notes = trust_notes(&shared);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("97% busy"), "{notes:?}");
        let both = TrustInputs {
            load_share: Some(0.95),
            load_cpus_busy: Some(0.99),
            ..inputs(1000, 5.0)
        };
        assert_eq!(trust_notes(&both).len(), 1);
        let quiet = TrustInputs {
            balancer_cpus_others: Some(0.05),
            ..inputs(1000, 5.0)
        };
        assert!(trust_notes(&quiet).is_empty());
    }

    #[test]
    fn coarse_cpu_figures_are_flagged() {
        assert_eq!(cpu_ticks(0.494, 100), 49);
        assert_eq!(cpu_ticks(0.5, 100), 50);
        let coarse = TrustInputs {
            balancer_cpu_ticks: Some(49),
            backends_cpu_ticks: Some(12),
            ..inputs(1000, 5.0)
        };
        let notes = trust_notes(&coarse);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("the balancer's CPU from only 49 clock ticks"));
        assert!(notes[1].starts_with("the backends' CPU from only 12 clock ticks"));
        let enough = TrustInputs {
            balancer_cpu_ticks: Some(MIN_CPU_TICKS),
            backends_cpu_ticks: None,
            ..inputs(1000, 5.0)
        };
        assert!(trust_notes(&enough).is_empty());
    }

    /// A scenario whose latencies are 1, 2, ..., 10,000 µs, one each, over 5 s, with 2.5
    /// CPU-seconds on the balancer and 1.0 on the backends.
    fn known_scenario() -> ScenarioReport {
        let mut latency_us = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=10_000 {
            latency_us.record(us).unwrap();
        }
        ScenarioReport {
            name: "terminate-pooled-keepalive".into(),
            base: "terminate-pooled".into(),
            connection: "keepalive".into(),
            url: "https://pooled.compare.test/".into(),
            target: "127.0.0.1:1".into(),
            result: LoadResult {
                requests: 10_000,
                bytes: 10_000 * 1024,
                errors: Default::default(),
                elapsed: Duration::from_secs(5),
                latency_us,
                open_loop: false,
            },
            balancer_cpu_s: Some(2.5),
            balancer_peak_rss_kb: Some(12_288),
            balancer_hwm_kb: Some(12_800),
            backends_cpu_s: Some(1.0),
            backends: vec!["plain-a".into(), "plain-b".into()],
            load_cpu_s: Some(4.0),
            load_cores: 1.0,
            load_cpus_busy: None,
            balancer_cpus_others: None,
        }
    }

    #[test]
    fn percentiles_and_per_thousand_figures_of_a_known_scenario() {
        let scenario = known_scenario();
        // HdrHistogram at 3 significant digits: within 0.1 % of the exact percentile.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        let curve = scenario.latency_curve();
        let want = [5.0, 9.0, 9.9, 9.99, 9.999];
        assert_eq!(curve.len(), want.len());
        for ((p, ms), w) in curve.iter().zip(want) {
            assert!(close(*ms, w), "p{p}: {ms} ms, want {w}");
        }
        let json = scenario.to_json();
        let latency = &json["latency_ms"];
        for (key, w) in [
            ("p50", 5.0),
            ("p90", 9.0),
            ("p99", 9.9),
            ("p999", 9.99),
            ("max", 10.0),
        ] {
            let got = latency[key].as_f64().unwrap();
            assert!(close(got, w), "{key}: {got} ms, want {w}");
        }
        assert_eq!(json["requests_per_sec"].as_f64(), Some(2000.0));
        // 2.5 CPU-s over 10,000 requests: 0.25 per 1,000; backends 0.1; half a core.
        assert_eq!(scenario.balancer_cpu_per_1k(), Some(0.25));
        assert_eq!(scenario.backends_cpu_per_1k(), Some(0.1));
        assert_eq!(scenario.balancer_cpu_share(), Some(0.5));
        assert_eq!(scenario.load_cpu_share(), Some(0.8));
        assert!(scenario.trust_notes().is_empty());
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc_timestamp(t), "2024-02-29 12:34:56 UTC");
    }
}
