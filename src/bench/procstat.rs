//! What `tollgate compare` reads from `/proc` about a process and the machine: CPU time
//! (`/proc/PID/stat` utime + stime, in clock ticks), memory (`VmRSS`, `VmHWM` from
//! `/proc/PID/status`), the CPUs a process may run on (`Cpus_allowed_list`), and the
//! machine's CPU model and kernel. Parsing is separate from reading so it can be tested
//! on captured text. Linux only: elsewhere every reading is `None`.

use std::time::Duration;

/// CPU time of a process (all its threads), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// User-mode ticks (field 14 of `/proc/PID/stat`).
    pub utime: u64,
    /// Kernel-mode ticks (field 15).
    pub stime: u64,
}

impl CpuTicks {
    /// utime + stime.
    pub fn total(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Parses a `/proc/PID/stat` line. The process name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted from the LAST `)`.
pub fn parse_stat(line: &str) -> Option<CpuTicks> {
    let close = line.rfind(')')?;
    let mut fields = line[close + 1..].split_whitespace();
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime (15) 12.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some(CpuTicks { utime, stime })
}

/// Reads a value in kB from `/proc/PID/status` text (`VmRSS:\t  1234 kB`).
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let number = rest.split_whitespace().next()?;
        number.parse().ok()
    })
}

/// Reads a text value from `/proc/PID/status` (`Cpus_allowed_list:\t0-1`).
pub fn parse_status_text(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().to_string())
    })
}

/// Which process to read: a PID, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// This process (`/proc/self`).
    Own,
    /// Another process.
    Pid(u32),
}

impl Proc {
    fn path(&self, file: &str) -> String {
        match self {
            Proc::Own => format!("/proc/self/{file}"),
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// CPU ticks used so far.
    pub fn cpu_ticks(&self) -> Option<CpuTicks> {
        parse_stat(&std::fs::read_to_string(self.path("stat")).ok()?)
    }

    /// Resident set size now, in kB.
    pub fn rss_kb(&self) -> Option<u64> {
        parse_status_kb(&std::fs::read_to_string(self.path("status")).ok()?, "VmRSS")
    }

    /// Peak resident set size over the process's life (`VmHWM`), in kB.
    pub fn hwm_kb(&self) -> Option<u64> {
        parse_status_kb(&std::fs::read_to_string(self.path("status")).ok()?, "VmHWM")
    }

    /// The CPUs the process may run on, as the kernel prints them (`0-1`).
    pub fn cpus_allowed(&self) -> Option<String> {
        parse_status_text(
            &std::fs::read_to_string(self.path("status")).ok()?,
            "Cpus_allowed_list",
        )
    }
}

/// Busy and total ticks of one CPU, from a `/proc/stat` `cpuN` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

/// Parses the per-CPU lines of `/proc/stat` (`cpu0 user nice system idle iowait irq
/// softirq steal ...`) into (CPU number, times); the all-CPU `cpu` line is skipped.
pub fn parse_cpu_times(stat: &str) -> Vec<(usize, CpuTime)> {
    stat.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu: usize = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = fields
                .take(8)
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 8 {
                return None;
            }
            let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            Some((
                cpu,
                CpuTime {
                    busy,
                    total: busy + v[3] + v[4],
                },
            ))
        })
        .collect()
}

/// Per-CPU times now (empty when `/proc/stat` is unreadable).
pub fn cpu_times() -> Vec<(usize, CpuTime)> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_cpu_times(&t))
        .unwrap_or_default()
}

/// Share of `cpus` that was busy (any process) between two [`cpu_times`] readings.
pub fn busy_share(
    before: &[(usize, CpuTime)],
    after: &[(usize, CpuTime)],
    cpus: &[usize],
) -> Option<f64> {
    let pick = |readings: &[(usize, CpuTime)]| {
        cpus.iter().try_fold(CpuTime::default(), |sum, cpu| {
            let t = readings.iter().find(|(c, _)| c == cpu)?.1;
            Some(CpuTime {
                busy: sum.busy + t.busy,
                total: sum.total + t.total,
            })
        })
    };
    let (a, b) = (pick(before)?, pick(after)?);
    let total = b.total.checked_sub(a.total)?;
    (total > 0).then(|| b.busy.saturating_sub(a.busy) as f64 / total as f64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, usually 100).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Converts ticks to a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// The CPU model from `/proc/cpuinfo` text (`model name`, else `Model`/`cpu model`).
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "cpu model", "Processor"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

/// A description of the machine for the report.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs online.
    pub cpus_online: usize,
    /// CPUs this process may use (its affinity mask at start).
    pub cpus_usable: Vec<usize>,
    /// Kernel release and version (`/proc/sys/kernel/osrelease`, `version`).
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| parse_cpu_model(&t))
            .unwrap_or_else(|| "unknown".to_string());
        // SAFETY: sysconf only reads a value of the running system.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus_usable = crate::bench::pinning::usable_cpus();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .ok()
        };
        let kernel = match (
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
            read("/proc/sys/kernel/version"),
        ) {
            (os, Some(release), version) => format!(
                "{} {release} {}",
                os.unwrap_or_else(|| "Linux".to_string()),
                version.unwrap_or_default()
            )
            .trim()
            .to_string(),
            _ => std::env::consts::OS.to_string(),
        };
        Machine {
            cpu_model,
            cpus_online: if online > 0 {
                online as usize
            } else {
                cpus_usable.len()
            },
            cpus_usable,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        // Captured from a process renamed with prctl(PR_SET_NAME, "tg (x) y)").
        let line = "48213 (tg (x) y)) S 48200 48213 48200 34816 48213 4194304 1789 0 0 0 \
                    1234 567 0 0 20 0 3 0 9087654 1100000000 6120 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17475 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(CpuTicks {
                utime: 1234,
                stime: 567
            })
        );
        assert_eq!(parse_stat(line).map(|t| t.total()), Some(1801));
    }

    #[test]
    fn stat_of_a_plain_name_and_garbage() {
        let line =
            "1 (init) S 0 1 1 0 -1 4194560 38015 1284920 83 1318 90 40 3466 1087 20 0 1 0 28 0";
        assert_eq!(
            parse_stat(line),
            Some(CpuTicks {
                utime: 90,
                stime: 40
            })
        );
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(
            parse_stat("no parenthesis 1 2 3 4 5 6 7 8 9 10 11 12 13 14"),
            None
        );
        assert_eq!(parse_stat("1 (x) S 0 1 1 0 -1 4 3 1 8 1 ab 40"), None);
    }

    #[test]
    fn status_values() {
        let status =
            "Name:\ttollgate\nVmPeak:\t  100 kB\nVmHWM:\t    24576 kB\nVmRSS:\t    20480 kB\n\
                      Cpus_allowed_list:\t0-1\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(24576));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        assert_eq!(
            parse_status_text(status, "Cpus_allowed_list").as_deref(),
            Some("0-1")
        );
    }

    #[test]
    fn per_cpu_times() {
        let stat = "cpu  300 0 100 1000 10 0 5 0 0 0\n\
                    cpu0 200 0 50 400 5 0 5 0 0 0\n\
                    cpu1 100 0 50 600 5 0 0 0 0 0\n\
                    intr 12345 0 0\nctxt 999\n";
        let times = parse_cpu_times(stat);
        assert_eq!(times.len(), 2);
        assert_eq!(
            times[0],
            (
                0,
                CpuTime {
                    busy: 255,
                    total: 660
                }
            )
        );
        assert_eq!(
            times[1],
            (
                1,
                CpuTime {
                    busy: 150,
                    total: 755
                }
            )
        );
        let later = vec![
            (
                0,
                CpuTime {
                    busy: 255 + 90,
                    total: 660 + 100,
                },
            ),
            (
                1,
                CpuTime {
                    busy: 150 + 10,
                    total: 755 + 100,
                },
            ),
        ];
        assert_eq!(busy_share(&times, &later, &[0]), Some(0.9));
        assert_eq!(busy_share(&times, &later, &[0, 1]), Some(0.5));
        assert_eq!(busy_share(&times, &later, &[7]), None);
        assert_eq!(busy_share(&times, &times, &[0]), None);
    }

    #[test]
    fn cpu_model() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            parse_cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(parse_cpu_model("nothing here"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        assert!(Proc::Own.cpu_ticks().is_some());
        assert!(Proc::Own.rss_kb().unwrap_or(0) > 0);
        assert!(Proc::Pid(std::process::id()).hwm_kb().unwrap_or(0) > 0);
        assert!(clock_ticks_per_sec() > 0);
    }
}
