//! When one connection of the load generator sends its requests, and from when each
//! request's latency counts. Closed loop: the next request goes as soon as the previous
//! answer is in, and its latency counts from when it is sent. Open loop (`--rate`): the
//! connection's requests are due at fixed intervals, and each latency counts from the
//! time the request was due, not from when it could go out, so a stall charges every
//! request it delayed (the coordinated-omission correction wrk2 makes). Sans-io: the
//! caller passes the clock.

use std::time::Duration;

use tokio::time::Instant;

/// Highest total rate `--rate` accepts, requests per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// Whether `rate` can be scheduled: finite, above zero, at most [`MAX_RATE`].
pub fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
        Ok(())
    } else {
        Err(format!(
            "--rate {rate}: must be a number of requests per second above 0 and at most {MAX_RATE}"
        ))
    }
}

/// One connection's schedule between `start` and `end`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Open loop: time between this connection's requests.
    interval: Option<Duration>,
    /// Open loop: when the next request is due.
    due: Instant,
    end: Instant,
}

/// The next request: when to send it, and from when its latency counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Send at this time, or at once if it has passed.
    pub send_at: Instant,
    /// Open loop: the time the request was due.
    due: Option<Instant>,
}

impl Slot {
    /// Where the request's latency counts from, given when it was actually sent: the
    /// time it was due in open loop, the send time in closed loop.
    pub fn latency_origin(&self, sent: Instant) -> Instant {
        self.due.unwrap_or(sent)
    }
}

impl Schedule {
    /// The schedule of connection `index` of `connections`. Open loop at a total `rate`
    /// (checked with [`check_rate`]): each connection sends every `connections / rate`
    /// seconds, and the connections' first requests are spread over one interval.
    pub fn new(
        start: Instant,
        end: Instant,
        rate: Option<f64>,
        connections: usize,
        index: usize,
    ) -> Self {
        let connections = connections.max(1);
        let interval = rate.map(|r| {
            let every = Duration::from_secs_f64(connections as f64 / r.max(1e-9));
            every.max(Duration::from_nanos(1))
        });
        let due = match interval {
            Some(every) => start + every.mul_f64(index as f64 / connections as f64),
            None => start,
        };
        Schedule { interval, due, end }
    }

    /// Whether the schedule is open loop.
    pub fn open_loop(&self) -> bool {
        self.interval.is_some()
    }

    /// The next request at `now`, or `None` once the run is over: when `now` has reached
    /// the end, and in open loop also when the next request would be due at or after it
    /// (a connection that fell behind does not send its backlog after the window).
    pub fn next(&mut self, now: Instant) -> Option<Slot> {
        if now >= self.end {
            return None;
        }
        match self.interval {
            None => Some(Slot {
                send_at: now,
                due: None,
            }),
            Some(every) => {
                if self.due >= self.end {
                    return None;
                }
                let due = self.due;
                self.due += every;
                Some(Slot {
                    send_at: due,
                    due: Some(due),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one connection against a server that answers in 1 ms, except that the request
    /// sent at `stall_at` takes 1 s; returns each answered request's latency.
    fn simulate(rate: Option<f64>, stall_at: Duration) -> Vec<Duration> {
        let start = Instant::now();
        let end = start + Duration::from_secs(3);
        let mut schedule = Schedule::new(start, end, rate, 1, 0);
        let mut now = start;
        let mut stalled = false;
        let mut latencies = Vec::new();
        while let Some(slot) = schedule.next(now) {
            now = now.max(slot.send_at);
            let sent = now;
            let service = if !stalled && sent >= start + stall_at {
                stalled = true;
                Duration::from_secs(1)
            } else {
                Duration::from_millis(1)
            };
            now = sent + service;
            latencies.push(now - slot.latency_origin(sent));
        }
        latencies
    }

    #[test]
    fn open_loop_charges_every_request_a_stall_delayed() {
        // 100 requests/s: the 1 s stall delays the 99 requests due during it, and the
        // catch-up after it (1 ms each, 9 ms gained per request) those due until it ends:
        // the k-th after the stalled one waits 1000 - 9k ms, 20 ms or more up to k = 108.
        let latencies = simulate(Some(100.0), Duration::from_millis(500));
        assert_eq!(latencies.len(), 300, "one request every 10 ms for 3 s");
        let slow = latencies
            .iter()
            .filter(|l| **l >= Duration::from_millis(20))
            .count();
        assert_eq!(slow, 1 + 108, "requests charged by the stall");
        // The first request after the stall was due 990 ms before it went out.
        let mut sorted = latencies.clone();
        sorted.sort();
        assert_eq!(sorted[sorted.len() - 1], Duration::from_millis(1000));
        assert!(sorted[sorted.len() - 2] >= Duration::from_millis(990));
        // The 30 slowest of 300 (p90 and above) all waited 730 ms or more.
        let p90 = sorted[sorted.len() * 90 / 100];
        assert!(p90 >= Duration::from_millis(720), "p90 {p90:?}");
    }

    #[test]
    fn closed_loop_counts_from_the_send_so_one_request_carries_the_stall() {
        let latencies = simulate(None, Duration::from_millis(500));
        let slow: Vec<_> = latencies
            .iter()
            .filter(|l| **l >= Duration::from_millis(20))
            .collect();
        assert_eq!(slow, [&Duration::from_secs(1)]);
        assert!(latencies.iter().all(|l| *l >= Duration::from_millis(1)));
    }

    #[test]
    fn open_loop_spreads_connections_over_one_interval_and_stops_before_the_end() {
        let start = Instant::now();
        let end = start + Duration::from_millis(100);
        // 4 connections at 400/s in total: each every 10 ms, first ones 2.5 ms apart.
        let firsts: Vec<Duration> = (0..4)
            .map(|i| {
                let mut s = Schedule::new(start, end, Some(400.0), 4, i);
                s.next(start)
                    .map(|slot| slot.send_at - start)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            firsts,
            [0, 2_500, 5_000, 7_500].map(Duration::from_micros).to_vec()
        );
        let mut s = Schedule::new(start, end, Some(400.0), 4, 3);
        let mut count = 0;
        while let Some(slot) = s.next(start) {
            assert!(slot.send_at < end);
            count += 1;
        }
        assert_eq!(count, 10);
        // Behind schedule at the end: nothing more is sent.
        let mut late = Schedule::new(start, end, Some(400.0), 4, 0);
        assert!(late.next(start).is_some());
        assert!(late.next(end).is_none());
    }

    #[test]
    fn closed_loop_ends_at_the_end() {
        let start = Instant::now();
        let end = start + Duration::from_secs(1);
        let mut s = Schedule::new(start, end, None, 1, 0);
        assert!(!s.open_loop());
        assert!(s.next(end - Duration::from_millis(1)).is_some());
        assert!(s.next(end).is_none());
    }

    #[test]
    fn rates_that_cannot_be_scheduled_are_refused() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(check_rate(bad).is_err(), "{bad}");
        }
        for good in [0.5, 1.0, 10_000.0, MAX_RATE] {
            assert!(check_rate(good).is_ok(), "{good}");
        }
    }
}
