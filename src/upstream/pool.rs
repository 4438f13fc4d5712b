//! A pool's runtime state: its backends (address, weight, up/down with hysteresis, open
//! connections, last check, pre-resolved metric handles) and `connect`, which walks the
//! balancer's candidates under `timeouts.connect` until one accepts. Failed connects
//! (and, when configured, 5xx answers) count as passive health results.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpStream;

use super::balance::{self, Balancer};
use super::hysteresis::{Hysteresis, Transition};
use crate::config::{PoolSpec, ServerSpec};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// The outcome of the last active check of a backend.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// Whether it passed.
    pub ok: bool,
    /// What happened (`200`, `connection refused`, `timeout`, ...).
    pub detail: String,
    /// When it finished.
    pub at: SystemTime,
}

/// One backend server and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Pool name (for logs).
    pub pool: String,
    /// As written in the config (`host:port`).
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative weight; 0 takes no new connections (drain).
    pub weight: u32,
    /// SNI for TLS checks.
    pub sni: Option<String>,
    rise: u32,
    fall: u32,
    up: AtomicBool,
    active: AtomicUsize,
    passive_failures: AtomicU32,
    /// Consecutive 5xx answers (`passive_5xx`), counted apart from connect failures so
    /// that a good connect does not reset them.
    error_answers: AtomicU32,
    state: Mutex<Hysteresis>,
    last_check: Mutex<Option<LastCheck>>,
    handles: Option<BackendMetrics>,
}

#[derive(Debug)]
struct BackendMetrics {
    up: IntGauge,
    connect_errors: IntCounter,
    connections: IntCounter,
}

impl Backend {
    /// A backend that starts up, with metric handles when `metrics` is given.
    pub fn new(pool: &str, spec: &ServerSpec, metrics: Option<&Metrics>) -> Self {
        Self::with_thresholds(pool, spec, metrics, 1, 1)
    }

    fn with_thresholds(
        pool: &str,
        spec: &ServerSpec,
        metrics: Option<&Metrics>,
        rise: u32,
        fall: u32,
    ) -> Self {
        let handles = metrics.map(|m| {
            let labels = [pool, spec.name.as_str()];
            let up = m.backend_up.with_label_values(&labels);
            up.set(1);
            BackendMetrics {
                up,
                connect_errors: m.backend_connect_errors_total.with_label_values(&labels),
                connections: m.backend_connections_total.with_label_values(&labels),
            }
        });
        Backend {
            pool: pool.to_string(),
            name: spec.name.clone(),
            addr: spec.addr,
            weight: spec.weight,
            sni: spec.sni.clone(),
            rise,
            fall,
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            passive_failures: AtomicU32::new(0),
            error_answers: AtomicU32::new(0),
            state: Mutex::new(Hysteresis::new(rise, fall, true)),
            last_check: Mutex::new(None),
            handles,
        }
    }

    /// Whether the backend is considered healthy.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks the backend up or down by hand (tests, admin); returns the previous state.
    pub fn set_up(&self, up: bool) -> bool {
        if let Ok(mut state) = self.state.lock() {
            *state = Hysteresis::new(self.rise, self.fall, up);
        }
        self.publish(up)
    }

    fn publish(&self, up: bool) -> bool {
        let before = self.up.swap(up, Ordering::Relaxed);
        if let Some(h) = &self.handles {
            h.up.set(i64::from(up));
        }
        before
    }

    fn apply(&self, transition: Option<Transition>, why: &str) {
        match transition {
            Some(Transition::Up) => {
                self.publish(true);
                self.passive_failures.store(0, Ordering::Relaxed);
                self.error_answers.store(0, Ordering::Relaxed);
                tracing::info!(pool = %self.pool, backend = %self.name, why, "backend is up");
            }
            Some(Transition::Down) => {
                self.publish(false);
                tracing::warn!(pool = %self.pool, backend = %self.name, why, "backend is down");
            }
            None => {}
        }
    }

    /// Records an active check result through the hysteresis.
    pub fn record_check(&self, ok: bool, detail: String) {
        let transition = match self.state.lock() {
            Ok(mut state) => state.record(ok),
            Err(_) => None,
        };
        self.apply(transition, &detail);
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some(LastCheck {
                ok,
                detail,
                at: SystemTime::now(),
            });
        }
    }

    /// Records a passive connect result; `passive_fall` consecutive failures mark the
    /// backend down until active checks bring it back. 0 disables.
    pub fn record_passive(&self, ok: bool, passive_fall: u32, what: &str) {
        self.record_run(&self.passive_failures, ok, passive_fall, what);
    }

    /// Records an HTTP answer for `passive_5xx` (its own run of consecutive 5xx).
    pub fn record_answer(&self, ok: bool, passive_fall: u32) {
        self.record_run(&self.error_answers, ok, passive_fall, "5xx answers");
    }

    fn record_run(&self, run: &AtomicU32, ok: bool, passive_fall: u32, what: &str) {
        if passive_fall == 0 {
            return;
        }
        if ok {
            run.store(0, Ordering::Relaxed);
            return;
        }
        let failures = run.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= passive_fall && self.is_up() {
            let transition = match self.state.lock() {
                Ok(mut state) => state.force_down(),
                Err(_) => None,
            };
            self.apply(transition, &format!("{failures} consecutive {what}"));
        }
    }

    /// Takes over the health state of `previous` (the same backend before a reload).
    pub fn inherit(&self, previous: &Backend) {
        let up = previous.is_up();
        if let (Ok(mut mine), Ok(theirs)) = (self.state.lock(), previous.state.lock()) {
            mine.carry_over(&theirs);
        }
        self.passive_failures.store(
            previous.passive_failures.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if let (Ok(mut mine), Some(last)) = (self.last_check.lock(), previous.last_check()) {
            *mine = Some(last);
        }
        self.publish(up);
    }

    /// The last active check, if any ran.
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check.lock().ok().and_then(|l| l.clone())
    }

    /// Whether it may take a new connection: up and weight above 0.
    pub fn accepts_new(&self) -> bool {
        self.is_up() && self.weight > 0
    }

    /// Connections (or requests) open to it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Adds to the open-connection count (balancer tests).
    #[doc(hidden)]
    pub fn add_active(&self, n: usize) {
        self.active.fetch_add(n, Ordering::Relaxed);
    }

    fn count_connection(&self) {
        if let Some(h) = &self.handles {
            h.connections.inc();
        }
    }

    fn count_connect_error(&self) {
        if let Some(h) = &self.handles {
            h.connect_errors.inc();
        }
    }
}

/// Holds one open-connection count on a backend until dropped.
#[derive(Debug)]
pub struct BackendGuard {
    pool: Arc<Pool>,
    index: usize,
}

impl BackendGuard {
    /// The backend this guard counts on.
    pub fn backend(&self) -> &Backend {
        &self.pool.backends[self.index]
    }

    /// The name of the pool it belongs to.
    pub fn pool_name(&self) -> &str {
        &self.pool.name
    }

    /// The backend, shared.
    pub fn backend_arc(&self) -> Arc<Backend> {
        Arc::clone(&self.pool.backends[self.index])
    }

    /// The backend's index in its pool.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.pool.backends[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool of backends and the balancer that orders them.
#[derive(Debug)]
pub struct Pool {
    /// Name in the config.
    pub name: String,
    /// The backends, in config order. A reload hands an unchanged backend's `Arc` to
    /// the new pool, so connections still on the old snapshot see the same health state
    /// and open-connection counts as new ones.
    pub backends: Vec<Arc<Backend>>,
    /// The spec it was built from.
    pub spec: PoolSpec,
    balancer: Box<dyn Balancer>,
}

impl Pool {
    /// Builds a pool from its spec.
    pub fn new(spec: &PoolSpec, metrics: Option<&Metrics>) -> Self {
        Self::after(spec, metrics, None)
    }

    /// Builds a pool from its spec on a reload: a backend identical to one of
    /// `previous` (same name, address, weight, SNI and thresholds) is shared; a changed
    /// one is new but takes over the old one's health state (when the pool has checks).
    pub fn after(spec: &PoolSpec, metrics: Option<&Metrics>, previous: Option<&Pool>) -> Self {
        let (rise, fall) = spec.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
        let backends = spec
            .servers
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|b| b.name == s.name && b.addr == s.addr)
                });
                match old {
                    Some(old)
                        if old.weight == s.weight
                            && old.sni == s.sni
                            && old.rise == rise
                            && old.fall == fall =>
                    {
                        Arc::clone(old)
                    }
                    Some(old) => {
                        let fresh = Backend::with_thresholds(&spec.name, s, metrics, rise, fall);
                        if spec.health.is_some() {
                            fresh.inherit(old);
                        }
                        Arc::new(fresh)
                    }
                    None => Arc::new(Backend::with_thresholds(&spec.name, s, metrics, rise, fall)),
                }
            })
            .collect();
        Pool {
            name: spec.name.clone(),
            backends,
            spec: spec.clone(),
            balancer: balance::for_algorithm(spec.balance, spec.servers.len()),
        }
    }

    /// The backends to try for one connection, best first. Only up backends with a
    /// weight above 0; with `fail_open` and none up, every backend with a weight.
    pub fn candidates(&self, client: Option<SocketAddr>) -> super::balance::Candidates {
        let mut out = super::balance::Candidates::new();
        let any_up = self.backends.iter().any(|b| b.accepts_new());
        if any_up || !self.spec.fail_open {
            self.balancer.candidates(
                &self.backends,
                &|i| self.backends[i].accepts_new(),
                client,
                &mut out,
            );
        } else {
            self.balancer.candidates(
                &self.backends,
                &|i| self.backends[i].weight > 0,
                client,
                &mut out,
            );
        }
        out
    }

    /// Counts an open connection on backend `index` until the guard drops.
    pub fn acquire(self: &Arc<Self>, index: usize) -> BackendGuard {
        self.backends[index].active.fetch_add(1, Ordering::Relaxed);
        BackendGuard {
            pool: Arc::clone(self),
            index,
        }
    }

    fn passive_fall(&self) -> u32 {
        self.spec.health.as_ref().map_or(0, |h| h.passive_fall)
    }

    /// Records an HTTP answer of backend `index` for passive health (5xx, if configured).
    pub fn record_status(&self, index: usize, status: u16) {
        let Some(health) = &self.spec.health else {
            return;
        };
        if !health.passive_5xx {
            return;
        }
        if let Some(backend) = self.backends.get(index) {
            backend.record_answer(status < 500, health.passive_fall);
        }
    }

    /// Connects to the first candidate that accepts within `timeout`, trying each in
    /// turn, and offers `first` (passthrough: the replayed ClientHello) to the socket as
    /// soon as the connect started. Returns the stream, a guard counting the open
    /// connection, and how much of `first` went out.
    pub async fn connect_sending(
        self: &Arc<Self>,
        client: Option<SocketAddr>,
        timeout: Duration,
        first: &[u8],
    ) -> Result<(TcpStream, BackendGuard, usize), ProxyError> {
        let candidates = self.candidates(client);
        self.connect_in_order_sending(&candidates, timeout, first)
            .await
    }

    /// Connects to the first of `candidates` (indexes, best first) that accepts, offering
    /// `first` to each new connection as soon as its connect has started (`connect.rs`);
    /// also returns how much of it went out.
    pub async fn connect_in_order_sending(
        self: &Arc<Self>,
        candidates: &[usize],
        timeout: Duration,
        first: &[u8],
    ) -> Result<(TcpStream, BackendGuard, usize), ProxyError> {
        if candidates.is_empty() {
            return Err(ProxyError::NoHealthyBackend {
                pool: self.name.clone(),
            });
        }
        let passive_fall = self.passive_fall();
        for &index in candidates {
            let backend = &self.backends[index];
            let connect = super::connect::connect_sending(backend.addr, first);
            let failure = match tokio::time::timeout(timeout, connect).await {
                Ok(Ok((stream, sent))) => {
                    backend.count_connection();
                    backend.record_passive(true, passive_fall, "connect failures");
                    return Ok((stream, self.acquire(index), sent));
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {}ms", timeout.as_millis()),
            };
            backend.count_connect_error();
            backend.record_passive(false, passive_fall, "connect failures");
            tracing::warn!(pool = %self.name, backend = %backend.name, error = %failure, "backend connect failed");
        }
        Err(ProxyError::AllConnectsFailed {
            pool: self.name.clone(),
            tried: candidates.len(),
        })
    }
}
