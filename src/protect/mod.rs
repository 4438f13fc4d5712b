//! Edge protections applied per listener, per client address: how many connections one
//! address may hold open (`max_connections_per_ip`) and a token bucket per address
//! (`rate_limit`). Both tables are sharded `Mutex<HashMap>`s, locked for a few
//! instructions and never across an await; both stay bounded: per-IP entries leave at
//! zero, and the bucket table evicts full (idle) buckets, then the longest-unused one,
//! when it reaches its size. A listener without a protection configured holds `None`
//! and pays nothing for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use crate::config::{BanOn, ListenerSpec, RateLimit};
use crate::metrics::Metrics;

mod ban;
pub mod shed;
pub use ban::{BanTable, Cidr};

/// Shards of each table (a power of two).
pub(crate) const SHARDS: usize = 16;

/// Buckets kept at most per listener, over all shards.
pub const MAX_BUCKETS: usize = 100_000;

/// Which protection refused something: the `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections_per_ip`.
    PerIp = 0,
    /// `rate_limit`.
    Rate = 1,
    /// A temporary ban.
    Ban = 2,
    /// `max_request_body_bytes`.
    Body = 3,
    /// `max_requests_per_connection`.
    Requests = 4,
    /// `max_connections` reached: the oldest connection still opening was closed.
    Shed = 5,
}

impl Limit {
    /// Every limit, in label order.
    pub const ALL: [Limit; 6] = [
        Limit::PerIp,
        Limit::Rate,
        Limit::Ban,
        Limit::Body,
        Limit::Requests,
        Limit::Shed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PerIp => "per_ip",
            Limit::Rate => "rate",
            Limit::Ban => "ban",
            Limit::Body => "body",
            Limit::Requests => "requests",
            Limit::Shed => "shed",
        }
    }
}

pub(crate) fn shard_of(ip: &IpAddr) -> usize {
    let mut h = FixedHasher(0xcbf2_9ce4_8422_2325);
    ip.hash(&mut h);
    (h.finish() as usize) & (SHARDS - 1)
}

/// FNV-1a: stable, cheap, good enough to spread addresses over shards.
struct FixedHasher(u64);

impl Hasher for FixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Open connections per client address.
#[derive(Debug)]
pub struct PerIpTable {
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl Default for PerIpTable {
    fn default() -> Self {
        PerIpTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl PerIpTable {
    /// Counts one more connection from `ip` unless it already holds `max`; the guard
    /// gives it back when dropped.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<PerIpGuard> {
        let shard = self.shards.get(shard_of(&ip))?;
        let mut map = shard.lock().ok()?;
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now from `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.shards
            .get(shard_of(&ip))
            .and_then(|s| s.lock().ok().and_then(|m| m.get(&ip).copied()))
            .unwrap_or(0)
    }

    /// Addresses with at least one connection open.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no address holds a connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, ip: IpAddr) {
        let Some(shard) = self.shards.get(shard_of(&ip)) else {
            return;
        };
        let Ok(mut map) = shard.lock() else {
            return;
        };
        if let Some(count) = map.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// One counted connection of an address; released when dropped.
#[derive(Debug)]
pub struct PerIpGuard {
    table: Arc<PerIpTable>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        self.table.release(self.ip);
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per client address, in a bounded table.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    per_shard: usize,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// A limiter with `limit`, keeping at most `max_entries` buckets.
    pub fn new(limit: RateLimit, max_entries: usize) -> Self {
        RateLimiter {
            limit,
            per_shard: (max_entries / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Its settings.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `ip` at `now`; when none is left, how long until one is.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(shard) = self.shards.get(shard_of(&ip)) else {
            return Ok(());
        };
        let Ok(mut map) = shard.lock() else {
            return Ok(());
        };
        let burst = f64::from(self.limit.burst);
        let rate = self.limit.rate;
        if !map.contains_key(&ip) && map.len() >= self.per_shard {
            evict(&mut map, now, rate, burst);
        }
        let bucket = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in a full shard: drop every bucket that has refilled (its address was
/// idle long enough that forgetting it changes nothing), else the longest-unused one.
fn evict(map: &mut HashMap<IpAddr, Bucket>, now: Instant, rate: f64, burst: f64) {
    let before = map.len();
    map.retain(|_, b| {
        b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
    });
    if map.len() < before {
        return;
    }
    if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.last).map(|(ip, _)| *ip) {
        map.remove(&oldest);
    }
}

/// The protections of one listener, shared by its accept loop and its connections.
#[derive(Debug)]
pub struct Protection {
    /// `max_connections_per_ip` and its table.
    pub per_ip: Option<(u32, Arc<PerIpTable>)>,
    /// The rate limiter.
    pub rate: Option<Arc<RateLimiter>>,
    /// Temporary bans.
    pub ban: Option<Arc<BanTable>>,
    rejections: [IntCounter; 6],
}

impl Protection {
    /// The protections `spec` configures, with fresh tables.
    pub fn new(spec: &ListenerSpec, metrics: &Metrics) -> Self {
        let rejections = Limit::ALL.map(|l| {
            metrics
                .limit_rejections_total
                .with_label_values(&[&spec.name, l.as_str()])
        });
        Protection {
            per_ip: spec
                .max_connections_per_ip
                .map(|max| (max, Arc::new(PerIpTable::default()))),
            rate: spec
                .rate_limit
                .map(|r| Arc::new(RateLimiter::new(r, MAX_BUCKETS))),
            ban: spec
                .ban
                .clone()
                .map(|b| Arc::new(BanTable::new(b, &spec.name, metrics, MAX_BUCKETS))),
            rejections,
        }
    }

    /// Keeps the tables of `old` (the same listener before a reload): open connections
    /// stay counted and buckets keep their tokens when the settings did not change.
    pub fn inherit(&mut self, old: &Protection) {
        if let (Some((_, table)), Some((_, old_table))) = (&mut self.per_ip, &old.per_ip) {
            *table = Arc::clone(old_table);
        }
        if let (Some(rate), Some(old_rate)) = (&mut self.rate, &old.rate) {
            if rate.limit() == old_rate.limit() {
                *rate = Arc::clone(old_rate);
            }
        }
        if let (Some(ban), Some(old_ban)) = (&mut self.ban, &old.ban) {
            if ban.spec() == old_ban.spec() {
                *ban = Arc::clone(old_ban);
            }
        }
    }

    /// A ClientHello refused or a TLS handshake failed from `ip`: counts towards a
    /// `handshake_failures` ban.
    pub fn handshake_failed(&self, ip: IpAddr) {
        if let Some(ban) = self.ban_on(BanOn::HandshakeFailures) {
            ban.record(ip, Instant::now());
        }
    }

    /// The ban table when bans count `on`.
    pub fn ban_on(&self, on: BanOn) -> Option<&BanTable> {
        self.ban.as_deref().filter(|b| b.spec().on == on)
    }

    /// Counts one refusal by `limit`.
    pub fn count(&self, limit: Limit) {
        if let Some(c) = self.rejections.get(limit as usize) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn per_ip_counts_and_forgets_at_zero() {
        let table = Arc::new(PerIpTable::default());
        let a = table.try_acquire(ip(1), 2).expect("first");
        let b = table.try_acquire(ip(1), 2).expect("second");
        assert!(table.try_acquire(ip(1), 2).is_none());
        let other = table.try_acquire(ip(2), 2).expect("another address");
        assert_eq!(table.count(ip(1)), 2);
        drop(a);
        let c = table.try_acquire(ip(1), 2).expect("after one closed");
        drop((b, c, other));
        assert!(table.is_empty(), "entries leave at zero");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limiter = RateLimiter::new(
            RateLimit {
                rate: 10.0,
                burst: 3,
            },
            100,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip(1), t0).is_ok());
        }
        let wait = limiter.check(ip(1), t0).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(
            limiter.check(ip(2), t0).is_ok(),
            "other addresses unaffected"
        );
        assert!(limiter
            .check(ip(1), t0 + Duration::from_millis(100))
            .is_ok());
    }

    #[test]
    fn bucket_table_stays_bounded() {
        let limiter = RateLimiter::new(
            RateLimit {
                rate: 1.0,
                burst: 5,
            },
            SHARDS * 4,
        );
        let t0 = Instant::now();
        for n in 0..10_000 {
            let _ = limiter.check(ip(n), t0 + Duration::from_micros(u64::from(n)));
        }
        assert!(limiter.len() <= SHARDS * 4, "{} buckets", limiter.len());
    }
}
