//! Measurement sampling while `tollgate compare` runs a scenario: [`Sampler`] polls the
//! balancer's resident memory for its peak, and [`cpu_ticks_sum`] adds up the CPU time of
//! several processes from `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bench::procstat::Proc;

pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Option<u64>>,
}

impl Sampler {
    /// Samples VmRSS of `pid` every 100 ms; `finish` returns the largest.
    pub(super) fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = Proc::Pid(pid).rss_kb();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Some(kb) = Proc::Pid(pid).rss_kb() {
                    peak = Some(peak.map_or(kb, |p| p.max(kb)));
                }
            }
            peak
        });
        Sampler { stop, handle }
    }

    pub(super) fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// Summed CPU ticks of several processes (`None` if any is unreadable).
pub(super) fn cpu_ticks_sum(procs: &[Proc]) -> Option<u64> {
    procs.iter().map(|p| p.cpu_ticks().map(|t| t.total())).sum()
}
