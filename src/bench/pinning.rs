//! CPU pinning for `tollgate compare`: CPU lists as the kernel writes them (`0`, `0,1`,
//! `0-3,6`), and `sched_setaffinity`. Threads inherit the mask of the thread that creates
//! them, so a process is pinned before its threads exist: child processes in the forked
//! child before `exec` (see [`pin_after_fork`]), this process on the main thread before
//! the load generator's runtime is built.

use std::fmt;

/// A set of CPU numbers, sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(Vec<usize>);

/// The largest CPU number a list may name (what `cpu_set_t` holds).
pub const MAX_CPU: usize = 1023;

impl CpuList {
    /// A list of these CPUs.
    pub fn new(mut cpus: Vec<usize>) -> CpuList {
        cpus.sort_unstable();
        cpus.dedup();
        CpuList(cpus)
    }

    /// Parses `0`, `0,1`, `0-3`, `0-1,4` (whitespace around items allowed).
    pub fn parse(text: &str) -> Result<CpuList, String> {
        let bad =
            |why: &str| format!("{text:?} is not a CPU list ({why}); write e.g. 0 or 0,1 or 0-3");
        if text.trim().is_empty() {
            return Err(bad("empty"));
        }
        let mut cpus = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            let number = |s: &str| -> Result<usize, String> {
                let n: usize = s
                    .trim()
                    .parse()
                    .map_err(|_| bad(&format!("{s:?} is not a number")))?;
                if n > MAX_CPU {
                    return Err(bad(&format!("CPU {n} is above {MAX_CPU}")));
                }
                Ok(n)
            };
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return Err(bad(&format!("range {lo}-{hi} runs backwards")));
                    }
                    cpus.extend(lo..=hi);
                }
                None => cpus.push(number(item)?),
            }
        }
        Ok(CpuList::new(cpus))
    }

    /// The CPUs.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No CPUs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mask for `sched_setaffinity`.
    pub fn to_cpu_set(&self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &self.0 {
            // SAFETY: CPU_SET writes one bit; cpu <= MAX_CPU fits in cpu_set_t (1024 bits).
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        set
    }
}

impl fmt::Display for CpuList {
    /// Compact form: `0-3,6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
            i += 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// The CPUs this thread may run on (its affinity mask); all online CPUs when unknown.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        // SAFETY: CPU_ISSET reads one bit of an initialised set.
        (0..=MAX_CPU)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    }
}

/// Pins the calling thread (and the threads it creates from now on) to `cpus`.
pub fn pin_current_thread(cpus: &CpuList) -> std::io::Result<()> {
    let set = cpus.to_cpu_set();
    // SAFETY: `set` is an initialised cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// For `CommandExt::pre_exec`: pins the forked child before `exec`, so every thread the
/// program later starts inherits the mask. Only async-signal-safe calls (one syscall).
pub fn pin_after_fork(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is an initialised cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where each part of `tollgate compare` runs; `None`: wherever the kernel puts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinning {
    /// The balancer process.
    pub balancer: Option<CpuList>,
    /// The built-in backend processes.
    pub backends: Option<CpuList>,
    /// The load generator (the compare process itself).
    pub load: Option<CpuList>,
}

impl Pinning {
    /// The default: with two usable CPUs or more, the balancer on the first and the load
    /// generator and backends on the second; with one, no pinning. Explicit lists win;
    /// backends follow the load generator unless given.
    pub fn resolve(
        usable: &[usize],
        balancer: Option<CpuList>,
        load: Option<CpuList>,
        backends: Option<CpuList>,
        no_pin: bool,
    ) -> Result<Pinning, String> {
        if no_pin {
            return Ok(Pinning::default());
        }
        for (what, list) in [
            ("--balancer-cpus", &balancer),
            ("--load-cpus", &load),
            ("--backend-cpus", &backends),
        ] {
            if let Some(list) = list {
                if let Some(cpu) = list.cpus().iter().find(|c| !usable.contains(c)) {
                    return Err(format!(
                        "{what} {list}: CPU {cpu} is not usable here (usable: {})",
                        CpuList::new(usable.to_vec())
                    ));
                }
            }
        }
        let (default_balancer, default_load) = match usable {
            [first, second, ..] => (
                Some(CpuList::new(vec![*first])),
                Some(CpuList::new(vec![*second])),
            ),
            _ => (None, None),
        };
        let load = load.or(default_load);
        Ok(Pinning {
            balancer: balancer.or(default_balancer),
            backends: backends.or_else(|| load.clone()),
            load,
        })
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let show = |l: &Option<CpuList>| {
            l.as_ref()
                .map_or("not pinned".to_string(), |l| format!("CPU {l}"))
        };
        format!(
            "balancer {}; backends {}; load generator {}",
            show(&self.balancer),
            show(&self.backends),
            show(&self.load)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(CpuList::parse("0").unwrap().cpus(), &[0]);
        assert_eq!(CpuList::parse("0,1").unwrap().cpus(), &[0, 1]);
        assert_eq!(CpuList::parse("0-1").unwrap().cpus(), &[0, 1]);
        assert_eq!(
            CpuList::parse("0-2,5, 7-8").unwrap().cpus(),
            &[0, 1, 2, 5, 7, 8]
        );
        assert_eq!(CpuList::parse("3,1,3").unwrap().cpus(), &[1, 3]);
        assert_eq!(CpuList::parse("4-4").unwrap().cpus(), &[4]);
    }

    #[test]
    fn rejects_bad_cpu_lists() {
        for bad in [
            "", " ", "a", "1,,2", "3-1", "-1", "1-", "0-1-2", "1.5", "2048",
        ] {
            assert!(CpuList::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn prints_compactly() {
        assert_eq!(
            CpuList::parse("0,1,2,5,7,8").unwrap().to_string(),
            "0-2,5,7-8"
        );
        assert_eq!(CpuList::parse("3").unwrap().to_string(), "3");
        assert_eq!(CpuList::default().to_string(), "");
    }

    #[test]
    fn cpu_set_has_the_bits() {
        let set = CpuList::parse("0,3").unwrap().to_cpu_set();
        // SAFETY: reading bits of an initialised set.
        unsafe {
            assert!(libc::CPU_ISSET(0, &set));
            assert!(!libc::CPU_ISSET(1, &set));
            assert!(libc::CPU_ISSET(3, &set));
        }
    }

    #[test]
    fn default_pinning() {
        let two = Pinning::resolve(&[0, 1], None, None, None, false).unwrap();
        assert_eq!(two.balancer, Some(CpuList::new(vec![0])));
        assert_eq!(two.load, Some(CpuList::new(vec![1])));
        assert_eq!(two.backends, Some(CpuList::new(vec![1])));
        // A restricted mask: the first two usable CPUs.
        let odd = Pinning::resolve(&[2, 5, 7], None, None, None, false).unwrap();
        assert_eq!(odd.balancer, Some(CpuList::new(vec![2])));
        assert_eq!(odd.load, Some(CpuList::new(vec![5])));
        assert_eq!(
            Pinning::resolve(&[0], None, None, None, false).unwrap(),
            Pinning::default()
        );
        assert_eq!(
            Pinning::resolve(&[0, 1], None, None, None, true).unwrap(),
            Pinning::default()
        );
    }

    #[test]
    fn explicit_pinning() {
        let p = Pinning::resolve(
            &[0, 1, 2, 3],
            Some(CpuList::new(vec![3])),
            Some(CpuList::new(vec![0, 1])),
            Some(CpuList::new(vec![2])),
            false,
        )
        .unwrap();
        assert_eq!(p.balancer.unwrap().to_string(), "3");
        assert_eq!(p.load.unwrap().to_string(), "0-1");
        assert_eq!(p.backends.unwrap().to_string(), "2");
        let err =
            Pinning::resolve(&[0, 1], Some(CpuList::new(vec![5])), None, None, false).unwrap_err();
        assert!(err.contains("--balancer-cpus 5"), "{err}");
    }
}
