//! The running server: builds the state snapshot (pools, listeners, TLS acceptors) from a
//! `Config`, binds every listener, keeps the snapshot behind one `ArcSwap`, and shuts
//! down gracefully: stop accepting, let open connections finish up to a grace period,
//! then cut what is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::StartError;
use crate::listener::{self, ListenerRuntime};
use crate::metrics::Metrics;
use crate::upstream::Pool;

/// Everything a connection needs, fixed for its lifetime: it keeps the snapshot it
/// started with even if a reload swaps in a new one.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated config.
    pub config: Arc<Config>,
    /// Pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Listeners, by config index.
    pub listeners: Vec<ListenerRuntime>,
    /// TLS termination state (certificates by SNI), when any route terminates.
    pub tls: Option<Arc<crate::tls::terminate::Terminator>>,
    /// L7 state: routing tables and backend clients.
    pub l7: crate::http::L7State,
}

impl Snapshot {
    /// Builds the state for `config`. Reads certificates; fails on a bad one.
    pub fn build(config: Arc<Config>, metrics: &Metrics) -> Result<Snapshot, StartError> {
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .values()
            .map(|spec| (spec.name.clone(), Arc::new(Pool::new(spec, Some(metrics)))))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|spec| ListenerRuntime::new(spec, metrics))
            .collect();
        let tls = crate::tls::terminate::Terminator::for_config(&config)?.map(Arc::new);
        let l7 = crate::http::L7State::new(&config, &pools, metrics);
        Ok(Snapshot {
            config,
            pools,
            listeners,
            tls,
            l7,
        })
    }
}

/// Shared by the accept loops and every connection task.
#[derive(Debug)]
pub struct Context {
    /// The current snapshot.
    pub state: ArcSwap<Snapshot>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown starts: stop accepting, close idle keep-alives.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period ends: cut every connection.
    pub hard_stop: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Connection ids for logs.
    pub next_conn: AtomicU64,
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Context>,
    listener_addrs: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
    admin_task: Option<JoinHandle<()>>,
    health_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Builds the state, binds every listener (and the admin listener) and starts
    /// accepting. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let snapshot = Snapshot::build(Arc::clone(&config), &metrics)?;
        let ctx = Arc::new(Context {
            state: ArcSwap::from_pointee(snapshot),
            metrics,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        });

        let mut bound = Vec::with_capacity(config.listeners.len());
        for (index, spec) in config.listeners.iter().enumerate() {
            let socket = listener::bind(spec.listen).map_err(|source| StartError::Bind {
                index,
                name: spec.name.clone(),
                addr: spec.listen,
                source,
            })?;
            bound.push(socket);
        }
        let admin = match config.admin {
            Some(addr) => Some(
                listener::bind(addr).map_err(|source| StartError::AdminBind { addr, source })?,
            ),
            None => None,
        };

        let mut listener_addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for (index, socket) in bound.into_iter().enumerate() {
            let spec = &config.listeners[index];
            let local = socket.local_addr().unwrap_or(spec.listen);
            tracing::info!(listener = %spec.name, addr = %local, "listening");
            listener_addrs.push((spec.name.clone(), local));
            let task_ctx = Arc::clone(&ctx);
            accept_tasks.push(tokio::spawn(listener::accept_loop(
                socket,
                index,
                spec.max_connections,
                task_ctx,
            )));
        }
        let health_tasks = crate::upstream::health::spawn_all(ctx.state.load().pools.values());
        let (admin_addr, admin_task) = match admin {
            Some(socket) => {
                let local = socket.local_addr().ok();
                tracing::info!(addr = ?local, "admin listening");
                let task = tokio::spawn(crate::admin::serve(socket, Arc::clone(&ctx)));
                (local, Some(task))
            }
            None => (None, None),
        };
        Ok(Server {
            ctx,
            listener_addrs,
            admin_addr,
            accept_tasks,
            admin_task,
            health_tasks,
        })
    }

    /// The bound address of the listener named `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.ctx.state.load_full()
    }

    /// Connection tasks still running.
    pub fn open_connections(&self) -> usize {
        self.ctx.tracker.len()
    }

    /// Graceful shutdown: stop accepting, wait up to `grace` for open connections to
    /// finish, then cut the rest. Returns true when every connection finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.ctx.shutdown.cancel();
        for task in self.accept_tasks {
            let _ = task.await;
        }
        self.ctx.tracker.close();
        let open = self.ctx.tracker.len();
        if open > 0 {
            tracing::info!(
                open,
                grace_ms = grace.as_millis() as u64,
                "draining open connections"
            );
        }
        let drained = tokio::time::timeout(grace, self.ctx.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                open = self.ctx.tracker.len(),
                "grace period over; cutting the remaining connections"
            );
            self.ctx.hard_stop.cancel();
            self.ctx.tracker.wait().await;
        }
        if let Some(task) = self.admin_task {
            task.abort();
        }
        for task in self.health_tasks {
            task.abort();
        }
        drained
    }
}
