//! Balancing: a `Balancer` orders a pool's eligible backends (up, weight above 0) into
//! the candidates one connection tries in turn, so a failed connect moves on to the
//! next. Algorithms: round robin, smooth weighted round robin (nginx's), least
//! connections (ties broken round robin), power of two random choices, and a consistent
//! source hash (weighted rendezvous hashing on the client IP).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::pool::Backend;
use crate::config::Balance;

/// The backends one connection tries, best first. Up to 8 stay inline: no allocation
/// per request for the usual pool.
pub type Candidates = smallvec::SmallVec<[usize; 8]>;

/// Orders candidates for one connection.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Pushes the indexes of `backends` to try, best first, into `out` (cleared first).
    /// Only backends for which `eligible(index)` holds are listed.
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        client: Option<SocketAddr>,
        out: &mut Candidates,
    );
}

/// Builds the balancer for an algorithm.
pub fn for_algorithm(algorithm: Balance, backends: usize) -> Box<dyn Balancer> {
    match algorithm {
        Balance::RoundRobin => Box::new(RoundRobin::default()),
        Balance::Weighted => Box::new(SmoothWeighted::new(backends)),
        Balance::LeastConn => Box::new(LeastConn::default()),
        Balance::P2c => Box::new(PowerOfTwo),
        Balance::SourceHash => Box::new(SourceHash),
    }
}

/// Every eligible backend, starting at the next position of `next` and wrapping around:
/// the rotation round robin uses, and least_conn's tie order.
fn rotated(next: &AtomicUsize, n: usize, eligible: &dyn Fn(usize) -> bool, out: &mut Candidates) {
    out.clear();
    if n == 0 {
        return;
    }
    let start = next.fetch_add(1, Ordering::Relaxed) % n;
    out.extend((0..n).map(|i| (start + i) % n).filter(|&i| eligible(i)));
}

/// Appends the eligible backends after `first`, wrapping around, skipping `first`.
fn rest_in_ring(n: usize, first: usize, eligible: &dyn Fn(usize) -> bool, out: &mut Candidates) {
    out.extend((1..n).map(|i| (first + i) % n).filter(|&i| eligible(i)));
}

/// Each eligible backend in turn; candidates continue from the pick, wrapping around.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _: Option<SocketAddr>,
        out: &mut Candidates,
    ) {
        rotated(&self.next, backends.len(), eligible, out);
    }
}

/// Smooth weighted round robin (as nginx): each pick adds every eligible backend's
/// weight to its running score, takes the highest, and subtracts the total from it.
/// Weights 1:2:3 give exactly that share over every 6 picks, interleaved, not in bursts.
#[derive(Debug)]
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    /// State for `n` backends.
    pub fn new(n: usize) -> Self {
        SmoothWeighted {
            current: Mutex::new(vec![0; n]),
        }
    }
}

impl Balancer for SmoothWeighted {
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _: Option<SocketAddr>,
        out: &mut Candidates,
    ) {
        out.clear();
        let n = backends.len();
        let picked = {
            let Ok(mut current) = self.current.lock() else {
                return;
            };
            if current.len() != n {
                current.resize(n, 0);
            }
            let mut total = 0i64;
            let mut best: Option<usize> = None;
            for i in (0..n).filter(|&i| eligible(i)) {
                let w = i64::from(backends[i].weight.max(1));
                current[i] += w;
                total += w;
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                current[b] -= total;
            }
            best
        };
        let Some(first) = picked else {
            return;
        };
        out.push(first);
        rest_in_ring(n, first, eligible, out);
    }
}

/// Fewest open connections (or in-flight requests) first; ties broken round robin.
#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Balancer for LeastConn {
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _: Option<SocketAddr>,
        out: &mut Candidates,
    ) {
        rotated(&self.next, backends.len(), eligible, out);
        // Stable sort keeps the rotated order among equals: ties go round robin.
        out.sort_by_key(|&i| backends[i].active());
    }
}

/// Power of two random choices: of two distinct random eligible backends, the one with
/// fewer open connections goes first; the rest follow in ring order.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl Balancer for PowerOfTwo {
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _: Option<SocketAddr>,
        out: &mut Candidates,
    ) {
        out.clear();
        let n = backends.len();
        let start = if n == 0 { 0 } else { fastrand::usize(..n) };
        out.extend((0..n).map(|i| (start + i) % n).filter(|&i| eligible(i)));
        if out.len() >= 2 {
            let other = 1 + fastrand::usize(..out.len() - 1);
            let (a, b) = (out[0], out[other]);
            if backends[b].active() < backends[a].active() {
                out.swap(0, other);
            }
        }
    }
}

/// Consistent hashing of the client IP by weighted rendezvous (highest random weight):
/// each backend scores `-weight / ln(hash(ip, backend))`; the best score wins and the
/// rest follow by score. Adding or removing one of N backends moves about 1/N of
/// clients; a client without an address goes round robin on index 0.
#[derive(Debug, Default)]
pub struct SourceHash;

/// FNV-1a over `bytes`, then a splitmix64 finaliser: stable across runs and builds.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

impl Balancer for SourceHash {
    fn candidates(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        client: Option<SocketAddr>,
        out: &mut Candidates,
    ) {
        out.clear();
        let key = client.map(|c| ip_bytes(c.ip())).unwrap_or_default();
        let mut scored: Vec<(f64, usize)> = (0..backends.len())
            .filter(|&i| eligible(i))
            .map(|i| {
                let h = stable_hash(&[&key, backends[i].name.as_bytes()]);
                // Map to (0, 1): never 0 or 1, so ln() is finite and negative.
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let score = -f64::from(backends[i].weight.max(1)) / u.ln();
                (score, i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out.extend(scored.into_iter().map(|(_, i)| i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerSpec;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(Backend::new(
                    "p",
                    &ServerSpec {
                        name: addr.to_string(),
                        addr,
                        weight: w,
                        sni: None,
                    },
                    None,
                ))
            })
            .collect()
    }

    fn pick(b: &dyn Balancer, backends: &[Arc<Backend>], client: Option<SocketAddr>) -> Vec<usize> {
        let mut out = Candidates::new();
        b.candidates(backends, &|i| backends[i].accepts_new(), client, &mut out);
        out.to_vec()
    }

    #[test]
    fn round_robin_rotates_and_lists_every_candidate() {
        let b = backends(&[1, 1, 1]);
        let rr = RoundRobin::default();
        let firsts: Vec<usize> = (0..6)
            .map(|_| {
                let c = pick(&rr, &b, None);
                assert_eq!(c.len(), 3);
                c[0]
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_down_and_zero_weight_backends() {
        let b = backends(&[1, 1, 0]);
        b[1].set_up(false);
        let rr = RoundRobin::default();
        for _ in 0..4 {
            assert_eq!(pick(&rr, &b, None), vec![0]);
        }
    }

    #[test]
    fn smooth_weighted_gives_exact_shares_in_every_window_without_bursts() {
        let b = backends(&[1, 2, 3]);
        let w = SmoothWeighted::new(3);
        let seq: Vec<usize> = (0..60).map(|_| pick(&w, &b, None)[0]).collect();
        for window in seq.windows(6) {
            let mut counts = [0; 3];
            for &i in window {
                counts[i] += 1;
            }
            assert_eq!(counts, [1, 2, 3], "window {window:?}");
        }
        // Smooth: the heaviest backend is never picked three times in a row.
        assert!(
            !seq.windows(3).any(|w| w.iter().all(|&i| i == 2)),
            "{seq:?}"
        );
    }

    #[test]
    fn smooth_weighted_lists_every_other_candidate_after_the_pick() {
        let b = backends(&[1, 2, 3]);
        let w = SmoothWeighted::new(3);
        let c = pick(&w, &b, None);
        assert_eq!(c.len(), 3);
        let mut sorted = c.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }

    #[test]
    fn least_conn_prefers_fewest_and_breaks_ties_round_robin() {
        let b = backends(&[1, 1, 1]);
        let lc = LeastConn::default();
        b[0].add_active(2);
        b[1].add_active(1);
        assert_eq!(pick(&lc, &b, None)[0], 2);
        b[2].add_active(1);
        // 1 and 2 tie at one connection: they alternate.
        let firsts: Vec<usize> = (0..4).map(|_| pick(&lc, &b, None)[0]).collect();
        assert!(firsts.contains(&1) && firsts.contains(&2), "{firsts:?}");
        assert!(!firsts.contains(&0));
    }

    #[test]
    fn p2c_never_picks_the_busiest_of_three_first_when_two_are_idle() {
        let b = backends(&[1, 1, 1]);
        b[1].add_active(100);
        let p = PowerOfTwo;
        let mut first_counts = [0; 3];
        for _ in 0..3000 {
            let c = pick(&p, &b, None);
            assert_eq!(c.len(), 3);
            first_counts[c[0]] += 1;
        }
        // Backend 1 goes first only when both random choices are... never: any pair
        // containing 1 has an idle alternative.
        assert_eq!(first_counts[1], 0, "{first_counts:?}");
        // The idle two share the rest about evenly.
        assert!(
            first_counts[0] > 1200 && first_counts[2] > 1200,
            "{first_counts:?}"
        );
    }

    fn client(i: u32) -> Option<SocketAddr> {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        Some(SocketAddr::new(IpAddr::V4(ip), 40000))
    }

    #[test]
    fn source_hash_is_sticky_and_spreads() {
        let b = backends(&[1, 1, 1, 1]);
        let h = SourceHash;
        let mut counts = [0; 4];
        for i in 0..4000 {
            let first = pick(&h, &b, client(i))[0];
            assert_eq!(pick(&h, &b, client(i))[0], first);
            counts[first] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn source_hash_moves_about_one_nth_when_a_backend_is_added_or_removed() {
        let four = backends(&[1, 1, 1, 1]);
        let five = backends(&[1, 1, 1, 1, 1]);
        let h = SourceHash;
        let n = 10_000;
        let moved_add = (0..n)
            .filter(|&i| pick(&h, &four, client(i))[0] != pick(&h, &five, client(i))[0])
            .count();
        // Adding a fifth backend should move about 1/5 of clients (all to the new one).
        assert!(
            (1500..2500).contains(&moved_add),
            "moved {moved_add} of {n}"
        );
        for i in 0..n {
            let before = pick(&h, &four, client(i))[0];
            let after = pick(&h, &five, client(i))[0];
            assert!(
                before == after || after == 4,
                "client {i} moved between old backends"
            );
        }
        // Removing (marking down) backend 2 moves only its clients.
        four[2].set_up(false);
        let fresh = backends(&[1, 1, 1, 1]);
        for i in 0..n {
            let before = pick(&h, &fresh, client(i))[0];
            let after = pick(&h, &four, client(i))[0];
            if before != 2 {
                assert_eq!(before, after, "client {i} moved though its backend stayed");
            }
        }
    }

    #[test]
    fn source_hash_respects_weights() {
        let b = backends(&[1, 3]);
        let h = SourceHash;
        let heavy = (0..8000)
            .filter(|&i| pick(&h, &b, client(i))[0] == 1)
            .count();
        // Expect 3/4 of 8000 = 6000.
        assert!((5600..6400).contains(&heavy), "{heavy}");
    }
}
