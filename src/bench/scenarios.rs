//! What `tollgate compare` can run and with what: the modes ([`Mode`]), the client
//! connection kinds ([`Connection`]), their ten combinations ([`Scenario`]) with names and
//! `--scenarios` selection, and [`CompareOptions`] with how the report states them.

use std::path::PathBuf;
use std::time::Duration;

use crate::bench::pinning::{CpuList, Pinning};

/// What the load generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP straight to a plain backend.
    DirectPlain,
    /// HTTPS straight to a TLS backend (it terminates TLS itself).
    DirectTls,
    /// HTTPS to the balancer, spliced to the TLS backends.
    Passthrough,
    /// HTTPS to the balancer, terminated, a new backend connection per request.
    TerminatePerRequest,
    /// HTTPS to the balancer, terminated, pooled backend connections.
    TerminatePooled,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 5] = [
        Mode::DirectPlain,
        Mode::DirectTls,
        Mode::Passthrough,
        Mode::TerminatePerRequest,
        Mode::TerminatePooled,
    ];

    /// The base name (`terminate-pooled`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::DirectPlain => "direct-plain",
            Mode::DirectTls => "direct-tls",
            Mode::Passthrough => "passthrough",
            Mode::TerminatePerRequest => "terminate-per-request",
            Mode::TerminatePooled => "terminate-pooled",
        }
    }

    /// Whether the balancer is in the path.
    pub fn through_balancer(self) -> bool {
        !matches!(self, Mode::DirectPlain | Mode::DirectTls)
    }

    pub(super) fn index(self) -> usize {
        Mode::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// Client connection handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Keep-alive: many requests per connection.
    KeepAlive,
    /// A new connection per request (TLS sessions resumed, as wrk does).
    NewConn,
}

impl Connection {
    /// The name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Connection::KeepAlive => "keepalive",
            Connection::NewConn => "newconn",
        }
    }
}

/// One measured combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// The mode.
    pub mode: Mode,
    /// The connection handling.
    pub connection: Connection,
}

impl Scenario {
    /// Full name (`passthrough-keepalive`).
    pub fn name(&self) -> String {
        format!("{}-{}", self.mode.name(), self.connection.suffix())
    }

    /// All ten, keep-alive rows first, in mode order.
    pub fn all() -> Vec<Scenario> {
        [Connection::KeepAlive, Connection::NewConn]
            .iter()
            .flat_map(|c| {
                Mode::ALL.iter().map(move |m| Scenario {
                    mode: *m,
                    connection: *c,
                })
            })
            .collect()
    }

    /// Parses `--scenarios a,b`: full names or base names (a base selects both
    /// connection kinds); kept in the canonical order.
    pub fn select(text: &str) -> Result<Vec<Scenario>, String> {
        let all = Scenario::all();
        let mut chosen = vec![false; all.len()];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut hit = false;
            for (i, s) in all.iter().enumerate() {
                if s.name() == item || s.mode.name() == item {
                    chosen[i] = true;
                    hit = true;
                }
            }
            if !hit {
                let bases: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                return Err(format!(
                    "unknown scenario {item:?}: use {} (each alone or with -keepalive / -newconn)",
                    bases.join(", ")
                ));
            }
        }
        let selected: Vec<Scenario> = all
            .into_iter()
            .zip(chosen)
            .filter(|(_, c)| *c)
            .map(|(s, _)| s)
            .collect();
        if selected.is_empty() {
            return Err("no scenario selected".to_string());
        }
        Ok(selected)
    }
}

/// Everything `tollgate compare` takes.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Measured time per scenario.
    pub duration: Duration,
    /// Unmeasured load before each scenario.
    pub warmup: Duration,
    /// Concurrent client connections.
    pub connections: usize,
    /// Open loop at this total rate (`None`: closed loop).
    pub rate: Option<f64>,
    /// Response body size of every backend.
    pub body_bytes: usize,
    /// What to run.
    pub scenarios: Vec<Scenario>,
    /// Where the report goes.
    pub out: PathBuf,
    /// CPUs asked for (`None`: the default).
    pub balancer_cpus: Option<CpuList>,
    /// CPUs of the load generator.
    pub load_cpus: Option<CpuList>,
    /// CPUs of the backends (default: the load generator's).
    pub backend_cpus: Option<CpuList>,
    /// Pin nothing.
    pub no_pin: bool,
    /// Load generator threads.
    pub load_threads: usize,
    /// The tollgate executable to start children from.
    pub executable: PathBuf,
    /// The command line, for the report.
    pub command_line: String,
}

impl CompareOptions {
    /// Refuses what cannot be measured: no measured time, an empty body (the load
    /// generator checks every answer's exact length), a rate that cannot be scheduled.
    pub fn check(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if self.body_bytes == 0 {
            return Err("--body-bytes must be at least 1".into());
        }
        if let Some(rate) = self.rate {
            super::schedule::check_rate(rate)?;
        }
        Ok(())
    }
}

pub(super) fn describe_options(o: &CompareOptions) -> Vec<(String, String)> {
    let list = |l: &Option<CpuList>| l.as_ref().map_or("default".to_string(), |l| l.to_string());
    vec![
        ("duration per scenario".into(), format!("{:?}", o.duration)),
        (
            "warm-up per scenario (not measured)".into(),
            format!("{:?}", o.warmup),
        ),
        ("connections".into(), o.connections.to_string()),
        (
            "rate".into(),
            o.rate
                .map_or("closed loop (as fast as answers come)".to_string(), |r| {
                    format!("open loop, {r} req/s in total")
                }),
        ),
        ("response body bytes".into(), o.body_bytes.to_string()),
        ("load generator threads".into(), o.load_threads.to_string()),
        (
            "CPU options".into(),
            if o.no_pin {
                "--no-pin".to_string()
            } else {
                format!(
                    "--balancer-cpus {}, --load-cpus {}, --backend-cpus {}",
                    list(&o.balancer_cpus),
                    list(&o.load_cpus),
                    list(&o.backend_cpus)
                )
            },
        ),
        (
            "scenarios".into(),
            o.scenarios
                .iter()
                .map(Scenario::name)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "new-connection rows".into(),
            "Connection: close on every request, TLS session resumption on".into(),
        ),
    ]
}

pub(super) fn options_json(o: &CompareOptions, pinning: &Pinning) -> serde_json::Value {
    let cpus = |l: &Option<CpuList>| l.as_ref().map(|l| l.cpus().to_vec());
    serde_json::json!({
        "duration_s": o.duration.as_secs_f64(),
        "warmup_s": o.warmup.as_secs_f64(),
        "connections": o.connections,
        "rate": o.rate,
        "body_bytes": o.body_bytes,
        "load_threads": o.load_threads,
        "scenarios": o.scenarios.iter().map(Scenario::name).collect::<Vec<_>>(),
        "no_pin": o.no_pin,
        "balancer_cpus": cpus(&pinning.balancer),
        "backend_cpus": cpus(&pinning.backends),
        "load_cpus": cpus(&pinning.load),
        "newconn_tls_resumption": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_scenarios_with_the_documented_names() {
        let names: Vec<String> = Scenario::all().iter().map(Scenario::name).collect();
        assert_eq!(
            names,
            [
                "direct-plain-keepalive",
                "direct-tls-keepalive",
                "passthrough-keepalive",
                "terminate-per-request-keepalive",
                "terminate-pooled-keepalive",
                "direct-plain-newconn",
                "direct-tls-newconn",
                "passthrough-newconn",
                "terminate-per-request-newconn",
                "terminate-pooled-newconn",
            ]
        );
    }

    #[test]
    fn selects_by_full_or_base_name() {
        let names =
            |t: &str| Scenario::select(t).map(|v| v.iter().map(Scenario::name).collect::<Vec<_>>());
        assert_eq!(
            names("passthrough, direct-plain-newconn").unwrap(),
            [
                "passthrough-keepalive",
                "direct-plain-newconn",
                "passthrough-newconn"
            ]
        );
        assert_eq!(
            names("terminate-pooled-keepalive,terminate-pooled-keepalive")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            names("direct-plain,direct-tls,passthrough,terminate-per-request,terminate-pooled")
                .unwrap()
                .len(),
            10
        );
        assert!(names("terminate")
            .unwrap_err()
            .contains("unknown scenario \"terminate\""));
        assert!(names("").is_err());
    }
}
