//! Balancing: a `Balancer` orders a pool's eligible backends into the candidates a
//! connection tries in turn, so a failed connect moves on to the next one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::pool::Backend;
use crate::config::Balance;

/// Orders candidates for one connection.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Pushes the indexes of `backends` to try, best first, into `out` (cleared first).
    /// `eligible(i)` says whether backend `i` may take new connections.
    fn candidates(&self, backends: &[Backend], client: Option<SocketAddr>, out: &mut Vec<usize>);
}

/// Builds the balancer for an algorithm. Only `round_robin` exists in this version;
/// validation refuses the others until they are implemented.
pub fn for_algorithm(algorithm: Balance) -> Box<dyn Balancer> {
    match algorithm {
        Balance::RoundRobin
        | Balance::Weighted
        | Balance::LeastConn
        | Balance::P2c
        | Balance::SourceHash => Box::new(RoundRobin::default()),
    }
}

/// Each eligible backend in turn; candidates continue from the pick, wrapping around.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn candidates(&self, backends: &[Backend], _client: Option<SocketAddr>, out: &mut Vec<usize>) {
        out.clear();
        let n = backends.len();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        out.extend(
            (0..n)
                .map(|i| (start + i) % n)
                .filter(|&i| backends[i].accepts_new()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerSpec;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Backend::new(
                    "p",
                    &ServerSpec {
                        name: addr.to_string(),
                        addr,
                        weight: 1,
                        sni: None,
                    },
                    None,
                )
            })
            .collect()
    }

    #[test]
    fn round_robin_rotates_and_lists_every_candidate() {
        let b = backends(3);
        let rr = RoundRobin::default();
        let mut out = Vec::new();
        let mut firsts = Vec::new();
        for _ in 0..6 {
            rr.candidates(&b, None, &mut out);
            assert_eq!(out.len(), 3);
            firsts.push(out[0]);
        }
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_down_backends() {
        let b = backends(3);
        b[1].set_up(false);
        let rr = RoundRobin::default();
        let mut out = Vec::new();
        for _ in 0..4 {
            rr.candidates(&b, None, &mut out);
            assert!(!out.contains(&1));
            assert_eq!(out.len(), 2);
        }
    }
}
