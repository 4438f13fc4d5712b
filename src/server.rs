//! The running server: builds the state snapshot (pools, listeners, TLS acceptors) from a
//! `Config`, binds every listener, keeps the snapshot behind one `ArcSwap`, reloads
//! (build the whole new state off the hot path, bind new listeners, swap, stop removed
//! ones; health state carries over), and shuts down gracefully: stop accepting, let
//! open connections finish up to a grace period, then cut what is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{ConfigError, LoadError, StartError};
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
    /// Listener name → index in `listeners`.
    pub listener_index: HashMap<String, usize>,
    /// TLS termination state (certificates by SNI), when any route terminates.
    pub tls: Option<Arc<crate::tls::terminate::Terminator>>,
    /// L7 state: routing tables and backend clients.
    pub l7: crate::http::L7State,
}

impl Snapshot {
    /// Builds the state for `config`. Reads certificates; fails on a bad one.
    pub fn build(config: Arc<Config>, metrics: &Metrics) -> Result<Snapshot, StartError> {
        Self::build_after(config, metrics, None)
    }

    /// Builds the state for `config` on a reload: unchanged backends of `previous` are
    /// shared with it (see [`Pool::after`]).
    pub fn build_after(
        config: Arc<Config>,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, StartError> {
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .values()
            .map(|spec| {
                let old = previous
                    .and_then(|p| p.pools.get(&spec.name))
                    .map(|p| p.as_ref());
                (
                    spec.name.clone(),
                    Arc::new(Pool::after(spec, Some(metrics), old)),
                )
            })
            .collect();
        let listeners: Vec<ListenerRuntime> = config
            .listeners
            .iter()
            .map(|spec| ListenerRuntime::new(spec, metrics))
            .collect();
        let listener_index = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.spec.name.clone(), i))
            .collect();
        let tls = crate::tls::terminate::Terminator::for_config(&config)?.map(Arc::new);
        let l7 = crate::http::L7State::new(&config, &pools, metrics);
        Ok(Snapshot {
            config,
            pools,
            listeners,
            listener_index,
            tls,
            l7,
        })
    }
}

/// A listener's accept loop, as running now.
#[derive(Debug)]
struct RunningListener {
    /// The configured address (what a reload compares).
    configured: SocketAddr,
    /// The bound address.
    local: SocketAddr,
    /// Stops this accept loop alone (listener removed by a reload).
    stop: CancellationToken,
    task: JoinHandle<()>,
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
    /// The file the config came from (reload re-reads it).
    pub config_path: Option<PathBuf>,
    /// Access log sink (fixed at start; changing it needs a restart).
    pub access_log: Arc<crate::access_log::AccessLog>,
    listeners: Mutex<HashMap<String, RunningListener>>,
    health_tasks: Mutex<Vec<JoinHandle<()>>>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Context {
    fn spawn_listener(
        self: &Arc<Self>,
        name: &str,
        configured: SocketAddr,
        max: usize,
        socket: tokio::net::TcpListener,
    ) {
        let local = socket.local_addr().unwrap_or(configured);
        tracing::info!(listener = %name, addr = %local, "listening");
        let stop = CancellationToken::new();
        let task = tokio::spawn(listener::accept_loop(
            socket,
            name.to_string(),
            max,
            Arc::clone(self),
            stop.clone(),
        ));
        if let Ok(mut running) = self.listeners.lock() {
            running.insert(
                name.to_string(),
                RunningListener {
                    configured,
                    local,
                    stop,
                    task,
                },
            );
        }
    }

    fn restart_health_checks(&self) {
        let new_tasks = crate::upstream::health::spawn_all(self.state.load().pools.values());
        if let Ok(mut tasks) = self.health_tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
            *tasks = new_tasks;
        }
    }

    /// Re-reads the config file and applies it; see [`Context::reload`].
    pub async fn reload_file(self: &Arc<Self>) -> Result<(), ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ReloadError::NoFile);
        };
        let config = match crate::config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.count_reload(false);
                tracing::error!(file = %path.display(), error = %e, "reload refused; the running config keeps serving");
                return Err(ReloadError::Load(e));
            }
        };
        self.reload(config).await
    }

    fn count_reload(&self, ok: bool) {
        self.metrics
            .config_reloads_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Applies `config`: builds the new state (certificates re-read), binds new
    /// listeners, then swaps the snapshot at once. Listeners whose name and address
    /// did not change keep their socket; removed ones stop accepting (their open
    /// connections finish on the snapshot they started with). Health state carries
    /// over for unchanged backends. On any error nothing changes.
    pub async fn reload(self: &Arc<Self>, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        match self.apply(config) {
            Ok(()) => {
                self.count_reload(true);
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(e) => {
                self.count_reload(false);
                tracing::error!(error = %e, "reload refused; the running config keeps serving");
                Err(e)
            }
        }
    }

    fn apply(self: &Arc<Self>, config: Config) -> Result<(), ReloadError> {
        if self.shutdown.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        let config = Arc::new(config);
        let old = self.state.load_full();
        let mut snapshot = Snapshot::build_after(Arc::clone(&config), &self.metrics, Some(&old))
            .map_err(ReloadError::Start)?;
        for listener in &mut snapshot.listeners {
            if let Some(previous) = old
                .listener_index
                .get(&listener.spec.name)
                .and_then(|&i| old.listeners.get(i))
            {
                listener.inherit_protection(previous);
            }
        }
        // Which listeners to keep, bind, and stop.
        let running: HashMap<String, SocketAddr> = match self.listeners.lock() {
            Ok(r) => r.iter().map(|(n, l)| (n.clone(), l.configured)).collect(),
            Err(_) => HashMap::new(),
        };
        let mut to_bind = Vec::new();
        for (index, spec) in config.listeners.iter().enumerate() {
            if running.get(&spec.name) == Some(&spec.listen) {
                continue;
            }
            // An address that moved to another listener name is released first.
            let taken_by_other = running
                .iter()
                .any(|(n, a)| *a == spec.listen && *n != spec.name && spec.listen.port() != 0);
            let socket = if taken_by_other {
                None
            } else {
                Some(listener::bind(spec.listen).map_err(|source| {
                    ReloadError::Start(StartError::Bind {
                        index,
                        name: spec.name.clone(),
                        addr: spec.listen,
                        source,
                    })
                })?)
            };
            to_bind.push((spec.name.clone(), spec.listen, spec.max_connections, socket));
        }
        let keep: HashMap<&str, SocketAddr> = config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.listen))
            .collect();
        self.state.store(Arc::new(snapshot));
        // Stop listeners that are gone or moved.
        let stopped: Vec<RunningListener> = match self.listeners.lock() {
            Ok(mut r) => {
                let gone: Vec<String> = r
                    .iter()
                    .filter(|(n, l)| keep.get(n.as_str()) != Some(&l.configured))
                    .map(|(n, _)| n.clone())
                    .collect();
                gone.into_iter().filter_map(|n| r.remove(&n)).collect()
            }
            Err(_) => Vec::new(),
        };
        for l in &stopped {
            tracing::info!(addr = %l.local, "listener removed by reload; it stops accepting");
            l.stop.cancel();
        }
        for (name, configured, max, socket) in to_bind {
            let socket = match socket {
                Some(s) => s,
                // Its address was just released by a stopped listener.
                None => listener::bind(configured).map_err(|source| {
                    ReloadError::Start(StartError::Bind {
                        index: 0,
                        name: name.clone(),
                        addr: configured,
                        source,
                    })
                })?,
            };
            self.spawn_listener(&name, configured, max, socket);
        }
        self.restart_health_checks();
        Ok(())
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was started without a config file.
    #[error("no config file to re-read")]
    NoFile,
    /// The file did not load or validate.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The new state could not be built (certificates, a listener address).
    #[error(transparent)]
    Start(StartError),
    /// Shutdown has begun.
    #[error("shutting down")]
    ShuttingDown,
}

impl From<ConfigError> for ReloadError {
    fn from(e: ConfigError) -> Self {
        ReloadError::Load(LoadError::Invalid(e))
    }
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Context>,
    admin_addr: Option<SocketAddr>,
    admin_task: Option<JoinHandle<()>>,
}

impl Server {
    /// Builds the state, binds every listener (and the admin listener) and starts
    /// accepting. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        Self::start_with_file(config, None).await
    }

    /// Like [`Server::start`], remembering `path` so a reload can re-read it.
    pub async fn start_with_file(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let snapshot = Snapshot::build(Arc::clone(&config), &metrics)?;
        let sink = match &config.access_log {
            crate::config::AccessLog::Off => crate::access_log::Sink::Off,
            crate::config::AccessLog::Stderr => crate::access_log::Sink::Stderr,
            crate::config::AccessLog::File(p) => crate::access_log::Sink::File(p.clone()),
        };
        let dropped = metrics
            .access_log_dropped_total
            .with_label_values::<&str>(&[]);
        let access_log =
            crate::access_log::AccessLog::start(&sink, config.access_log_format, Some(dropped))
                .map_err(|e| {
                    StartError::Config(ConfigError::new("access_log", format!("cannot open: {e}")))
                })?;
        let ctx = Arc::new(Context {
            access_log: Arc::new(access_log),
            state: ArcSwap::from_pointee(snapshot),
            metrics,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            config_path: path,
            listeners: Mutex::new(HashMap::new()),
            health_tasks: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
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
        for (spec, socket) in config.listeners.iter().zip(bound) {
            ctx.spawn_listener(&spec.name, spec.listen, spec.max_connections, socket);
        }
        ctx.restart_health_checks();
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
            admin_addr,
            admin_task,
        })
    }

    /// The bound address of the listener named `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.ctx
            .listeners
            .lock()
            .ok()
            .and_then(|r| r.get(name).map(|l| l.local))
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

    /// The shared context (reload, state).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Applies a new config (see [`Context::reload`]).
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.ctx.reload(config).await
    }

    /// Re-reads the config file given at start (see [`Context::reload_file`]).
    pub async fn reload_file(&self) -> Result<(), ReloadError> {
        self.ctx.reload_file().await
    }

    /// Connection tasks still running.
    pub fn open_connections(&self) -> usize {
        self.ctx.tracker.len()
    }

    /// Graceful shutdown: `/healthz` turns 503, listeners stop accepting, keep-alive
    /// connections close after their current response (`Connection: close`), and the
    /// call returns when the last connection ended or `grace` is over (then the rest
    /// are cut). Returns true when every connection finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.ctx.shutdown.cancel();
        let accept_tasks: Vec<JoinHandle<()>> = match self.ctx.listeners.lock() {
            Ok(mut r) => r.drain().map(|(_, l)| l.task).collect(),
            Err(_) => Vec::new(),
        };
        for task in accept_tasks {
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
        if let Ok(mut tasks) = self.ctx.health_tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        drained
    }
}
