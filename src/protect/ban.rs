//! Temporary bans (`ban:`), mod_dosdetector-like: count an address's events
//! (requests, new connections or failed handshakes) in a window, ban it for a while when
//! it crosses the threshold, never ban the `allow` CIDR blocks. The window and ban
//! tables are sharded and bounded; expiry costs only the bans actually lifted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::{shard_of, SHARDS};
use crate::config::BanSpec;
use crate::metrics::Metrics;

/// Bans in force: end time by address, and (end, address) in start order.
#[derive(Debug, Default)]
struct Bans {
    until: HashMap<IpAddr, Instant>,
    order: std::collections::VecDeque<(Instant, IpAddr)>,
}

impl Bans {
    /// Lifts the ban of `ip` that ends at `until` (a stale queue entry does nothing).
    fn lift(&mut self, ip: IpAddr, until: Instant, listener: &str, unbanned: &IntCounter) {
        if self.until.get(&ip) == Some(&until) {
            self.until.remove(&ip);
            unbanned.inc();
            tracing::warn!(listener = %listener, client = %ip, "ban lifted");
        }
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ip/prefix` or a bare `ip` (a block of one).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr: ip, prefix })
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Temporary bans (mod_dosdetector-like): an address seen more than `threshold` times
/// (requests, connections or failed handshakes) within `window` is banned for
/// `duration`. Both tables are bounded; expired bans are swept (and logged) when the
/// earliest one is due.
#[derive(Debug)]
pub struct BanTable {
    spec: BanSpec,
    listener: String,
    per_shard: usize,
    windows: Vec<Mutex<HashMap<IpAddr, Window>>>,
    bans: Mutex<Bans>,
    /// Bans held now (read without the lock on the accept path).
    active: std::sync::atomic::AtomicUsize,
    banned: IntCounter,
    unbanned: IntCounter,
}

impl BanTable {
    /// An empty table for listener `listener`.
    pub fn new(spec: BanSpec, listener: &str, metrics: &Metrics, max_entries: usize) -> Self {
        let event = |e: &str| metrics.ban_events_total.with_label_values(&[listener, e]);
        BanTable {
            spec,
            listener: listener.to_string(),
            per_shard: (max_entries / SHARDS).max(1),
            windows: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            bans: Mutex::new(Bans::default()),
            active: std::sync::atomic::AtomicUsize::new(0),
            banned: event("ban"),
            unbanned: event("unban"),
        }
    }

    /// Its settings.
    pub fn spec(&self) -> &BanSpec {
        &self.spec
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.spec.allow.iter().any(|c| c.contains(ip))
    }

    /// Whether `ip` is banned at `now`. Sweeps expired bans first (each logged once).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.active.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(mut bans) = self.bans.lock() else {
            return false;
        };
        self.sweep(&mut bans, now);
        bans.until.contains_key(&ip.to_canonical())
    }

    /// Lifts the bans due by `now`: O(bans lifted), as every ban lasts `duration` and
    /// `order` holds them by start.
    fn sweep(&self, bans: &mut Bans, now: Instant) {
        while let Some(&(until, ip)) = bans.order.front() {
            if until > now {
                break;
            }
            bans.order.pop_front();
            bans.lift(ip, until, &self.listener, &self.unbanned);
        }
        self.active
            .store(bans.until.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one event of `ip` at `now`; true when `ip` is banned now (it just crossed
    /// the threshold, or was already: then the event is not counted).
    pub fn record(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        if self.allowed(ip) {
            return false;
        }
        // Events of a banned address are not counted: a ban runs its course.
        if self.is_banned(ip, now) {
            return true;
        }
        let crossed = {
            let Some(shard) = self.windows.get(shard_of(&ip)) else {
                return false;
            };
            let Ok(mut map) = shard.lock() else {
                return false;
            };
            if !map.contains_key(&ip) && map.len() >= self.per_shard {
                let window = self.spec.window;
                let before = map.len();
                map.retain(|_, w| now.saturating_duration_since(w.start) < window);
                if map.len() == before {
                    if let Some(oldest) = map.iter().min_by_key(|(_, w)| w.start).map(|(ip, _)| *ip)
                    {
                        map.remove(&oldest);
                    }
                }
            }
            let w = map.entry(ip).or_insert(Window {
                start: now,
                count: 0,
            });
            if now.saturating_duration_since(w.start) >= self.spec.window {
                *w = Window {
                    start: now,
                    count: 0,
                };
            }
            w.count = w.count.saturating_add(1);
            let crossed = w.count > self.spec.threshold;
            if crossed {
                map.remove(&ip);
            }
            crossed
        };
        if !crossed {
            return false;
        }
        let Ok(mut bans) = self.bans.lock() else {
            return true;
        };
        self.sweep(&mut bans, now);
        if bans.until.len() >= self.per_shard * SHARDS && !bans.until.contains_key(&ip) {
            // Full: the ban that ends first makes room.
            if let Some((until, first)) = bans.order.pop_front() {
                bans.lift(first, until, &self.listener, &self.unbanned);
            }
        }
        let until = now + self.spec.duration;
        bans.order.push_back((until, ip));
        if bans.until.insert(ip, until).is_none() {
            self.banned.inc();
            tracing::warn!(
                listener = %self.listener,
                client = %ip,
                threshold = self.spec.threshold,
                window_ms = self.spec.window.as_millis() as u64,
                duration_s = self.spec.duration.as_secs(),
                on = self.spec.on.as_str(),
                "address banned"
            );
        }
        self.active
            .store(bans.until.len(), std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Current bans: address and time left, soonest first.
    pub fn current(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        let Ok(mut bans) = self.bans.lock() else {
            return Vec::new();
        };
        self.sweep(&mut bans, now);
        let mut out: Vec<(IpAddr, Duration)> = bans
            .until
            .iter()
            .map(|(ip, until)| (*ip, until.saturating_duration_since(now)))
            .collect();
        out.sort_by_key(|(_, left)| *left);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BanOn;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/", "/8"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ban_after_threshold_then_lifted() {
        let metrics = Metrics::new();
        let spec = BanSpec {
            threshold: 3,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            on: BanOn::Connections,
            allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        };
        let table = BanTable::new(spec, "l", &metrics, 1000);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!table.record(ip(0xc000_0201), t0));
        }
        assert!(
            table.record(ip(0xc000_0201), t0),
            "fourth crosses the threshold"
        );
        assert!(table.is_banned(ip(0xc000_0201), t0 + Duration::from_secs(59)));
        assert!(!table.is_banned(ip(0xc000_0202), t0));
        assert_eq!(table.current(t0).len(), 1);
        assert!(!table.is_banned(ip(0xc000_0201), t0 + Duration::from_secs(61)));
        assert!(table.current(t0 + Duration::from_secs(61)).is_empty());
        // Allowlisted: never banned.
        for _ in 0..10 {
            assert!(!table.record(ip(0x0a00_0001), t0));
        }
        // Events spread over windows do not add up.
        for n in 0..10 {
            assert!(!table.record(ip(0xc000_0203), t0 + Duration::from_secs(10 * n)));
        }
    }

    #[test]
    fn ban_tables_stay_bounded() {
        let metrics = Metrics::new();
        let spec = BanSpec {
            threshold: 1,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            on: BanOn::Connections,
            allow: Vec::new(),
        };
        let table = BanTable::new(spec, "l", &metrics, SHARDS * 2);
        let t0 = Instant::now();
        for n in 0..1_000 {
            table.record(ip(n), t0);
            table.record(ip(n), t0);
        }
        assert!(table.current(t0).len() <= SHARDS * 2);
        let windows: usize = table.windows.iter().map(|w| w.lock().unwrap().len()).sum();
        assert!(windows <= SHARDS * 2, "{windows} windows");
        assert!(table.current(t0 + Duration::from_secs(61)).is_empty());
    }
}
