//! Accept loop of one listener: binds with socket2 (SO_REUSEADDR, a real backlog),
//! holds `max_connections` permits (when full, a new connection closes the oldest one
//! still opening, see `protect::shed`, or waits with the kernel's backlog), sets TCP_NODELAY, and runs a task per connection that dispatches by
//! protocol: `tls` peeks the ClientHello and routes by SNI, `tcp` splices to its pool.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{BanOn, ListenerKind, ListenerSpec, SniAction};
use crate::conn_task::ConnTask;
use crate::l4::passthrough::{self, Origin, TunnelJob};
use crate::metrics::Metrics;
use crate::protect::shed::{OpeningGuard, OpeningStage};
use crate::protect::{Limit, Protection};
use crate::server::{Context, Snapshot};
use crate::tls::peek::{peek_client_hello, PeekError, PeekFailure};

/// Pending connections the kernel queues for us.
const BACKLOG: i32 = 4096;

/// Binds `addr` with SO_REUSEADDR and a 4096 backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The mode a connection ends up in: the `mode` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spliced to a TLS backend.
    Passthrough = 0,
    /// TLS terminated, L7.
    Terminate = 1,
    /// Plain HTTP, L7.
    Http = 2,
    /// Plain TCP splice.
    Tcp = 3,
    /// Closed before reaching a backend.
    Rejected = 4,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Passthrough,
        Mode::Terminate,
        Mode::Http,
        Mode::Tcp,
        Mode::Rejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Passthrough => "passthrough",
            Mode::Terminate => "terminate",
            Mode::Http => "http",
            Mode::Tcp => "tcp",
            Mode::Rejected => "rejected",
        }
    }
}

const FAILURES: [PeekFailure; 4] = [
    PeekFailure::NotTls,
    PeekFailure::Timeout,
    PeekFailure::TooLarge,
    PeekFailure::Malformed,
];

/// Pre-resolved metric handles of one listener (no label lookup on the hot path).
#[derive(Debug, Clone)]
pub struct ListenerCounters {
    connections: Vec<IntCounter>,
    active: Vec<IntGauge>,
    bytes_c2b: Vec<IntCounter>,
    bytes_b2c: Vec<IntCounter>,
    hello_failures: Vec<IntCounter>,
}

impl ListenerCounters {
    /// Resolves every label combination of listener `name`.
    pub fn new(metrics: &Metrics, name: &str) -> Self {
        let per_mode =
            |f: &dyn Fn(&str) -> IntCounter| Mode::ALL.iter().map(|m| f(m.as_str())).collect();
        ListenerCounters {
            connections: per_mode(&|m| metrics.connections_total.with_label_values(&[name, m])),
            active: Mode::ALL
                .iter()
                .map(|m| {
                    metrics
                        .connections_active
                        .with_label_values(&[name, m.as_str()])
                })
                .collect(),
            bytes_c2b: per_mode(&|m| {
                metrics
                    .bytes_total
                    .with_label_values(&[name, m, "client_to_backend"])
            }),
            bytes_b2c: per_mode(&|m| {
                metrics
                    .bytes_total
                    .with_label_values(&[name, m, "backend_to_client"])
            }),
            hello_failures: FAILURES
                .iter()
                .map(|f| {
                    metrics
                        .client_hello_failures_total
                        .with_label_values(&[name, f.reason()])
                })
                .collect(),
        }
    }

    /// Counts a connection in `mode` and holds it in the active gauge until dropped.
    pub fn open(&self, mode: Mode) -> ActiveConnection {
        self.connections[mode as usize].inc();
        let gauge = self.active[mode as usize].clone();
        gauge.inc();
        ActiveConnection { gauge }
    }

    /// Adds relayed bytes.
    pub fn add_bytes(&self, mode: Mode, client_to_backend: u64, backend_to_client: u64) {
        self.bytes_c2b[mode as usize].inc_by(client_to_backend);
        self.bytes_b2c[mode as usize].inc_by(backend_to_client);
    }

    /// Counts a failed ClientHello peek (and the rejected connection).
    pub fn hello_failure(&self, failure: PeekFailure) {
        let index = FAILURES.iter().position(|f| *f == failure).unwrap_or(0);
        self.hello_failures[index].inc();
        self.connections[Mode::Rejected as usize].inc();
    }

    /// Counts a connection rejected by routing or for lack of a backend.
    pub fn rejected(&self) {
        self.connections[Mode::Rejected as usize].inc();
    }
}

/// Decrements the active-connections gauge when dropped.
#[derive(Debug)]
pub struct ActiveConnection {
    gauge: IntGauge,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Runs the accept loop of listener `name` until shutdown or `stop` (a reload removed
/// it). Each connection is served with the snapshot current when it was accepted.
pub async fn accept_loop(
    listener: TcpListener,
    name: String,
    max_connections: usize,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let opening = Arc::new(OpeningStage::default());
    let mut last_index = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => break,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let snapshot = ctx.state.load_full();
        let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
        // The listener's index rarely changes (only a reload can move it): check the
        // last one by name before hashing the name.
        let index = match snapshot.listeners.get(last_index) {
            Some(l) if l.spec.name == name => last_index,
            _ => {
                let Some(&index) = snapshot.listener_index.get(&name) else {
                    continue;
                };
                last_index = index;
                index
            }
        };
        let Some(listener_rt) = snapshot.listeners.get(index) else {
            continue;
        };
        // Protections that act at accept, before any TLS work: the connection is
        // closed (dropped) at once.
        let protection = &listener_rt.protection;
        if let Some(ban) = &protection.ban {
            let now = std::time::Instant::now();
            let banned = if ban.spec().on == BanOn::Connections {
                ban.record(peer.ip(), now)
            } else {
                ban.is_banned(peer.ip().to_canonical(), now)
            };
            if banned {
                refuse_at_accept(listener_rt, Limit::Ban, peer, stream);
                continue;
            }
        }
        let per_ip_guard = match &protection.per_ip {
            None => None,
            Some((max, table)) => match table.try_acquire(peer.ip(), *max) {
                Some(guard) => Some(guard),
                None => {
                    refuse_at_accept(listener_rt, Limit::PerIp, peer, stream);
                    continue;
                }
            },
        };
        if let (Some(rate), false) = (
            &protection.rate,
            matches!(listener_rt.spec.kind, ListenerKind::Http { .. }),
        ) {
            if rate.check(peer.ip(), std::time::Instant::now()).is_err() {
                refuse_at_accept(listener_rt, Limit::Rate, peer, stream);
                continue;
            }
        }
        // At max_connections the oldest connection still opening (no complete ClientHello,
        // no complete first request head) makes room; when none is, this one waits for a slot (and the
        // ones behind it in the kernel's backlog).
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                opening.shed_oldest();
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p,
                    _ = ctx.shutdown.cancelled() => break,
                    _ = stop.cancelled() => break,
                };
                let Ok(permit) = permit else { break };
                permit
            }
        };
        let opening_guard = match listener_rt.spec.kind {
            ListenerKind::Tcp { .. } => None,
            _ => Some(opening.enter()),
        };
        let span = tracing::info_span!(
            "conn",
            conn,
            peer = %crate::peer_field::PeerField(peer),
            listener = %listener_rt.spec.name,
            sni = tracing::field::Empty
        );
        let hard_stop = ctx.hard_stop.clone().cancelled_owned();
        let task_ctx = Arc::clone(&ctx);
        ctx.tracker.spawn(ConnTask::new(
            span,
            hard_stop,
            (permit, per_ip_guard),
            handle(stream, peer, index, snapshot, task_ctx, opening_guard),
        ));
    }
    tracing::debug!("accept loop stopped");
}

/// Completes when the connection was shed to make room (never without a guard).
pub async fn shed_signal(opening: Option<&OpeningGuard>) {
    match opening {
        Some(guard) => guard.shed().cancelled_owned().await,
        None => std::future::pending().await,
    }
}

/// Records `sni` on the current span (the connection's). The same as
/// `Span::current().record("sni", name)` without taking a second reference to the span
/// and releasing it again (about 300 instructions per TLS connection).
fn record_sni(name: &str) {
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        let (Some(id), Some(meta)) = (current.id(), current.metadata()) else {
            return;
        };
        let fields = meta.fields();
        let Some(field) = fields.field("sni") else {
            return;
        };
        let values = [(&field, Some(&name as &dyn tracing::Value))];
        dispatch.record(id, &tracing::span::Record::new(&fields.value_set(&values)));
    });
}

/// Closes a connection a protection refused at accept, and counts it.
fn refuse_at_accept(listener: &ListenerRuntime, limit: Limit, peer: SocketAddr, stream: TcpStream) {
    listener.counters.rejected();
    listener.protection.count(limit);
    tracing::debug!(listener = %listener.spec.name, peer = %peer, limit = limit.as_str(), "connection refused at accept");
    drop(stream);
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    snapshot: Arc<Snapshot>,
    ctx: Arc<Context>,
    opening: Option<OpeningGuard>,
) -> Option<TunnelJob> {
    let listener = snapshot.listeners.get(index)?;
    match &listener.spec.kind {
        ListenerKind::Tcp { pool } => {
            let origin = Origin {
                peer,
                sni: None,
                access: &ctx.access_log,
                listener: index,
                mode: Mode::Tcp,
            };
            // Each branch is boxed: a connection's task then holds only the state of the
            // path it takes, not the largest (terminate + hyper), which matters for idle
            // connections by the thousand.
            Box::pin(passthrough::connect(stream, origin, &[], pool, &snapshot)).await
        }
        ListenerKind::Tls { sni } => {
            Box::pin(handle_tls(
                stream, peer, index, sni, listener, &snapshot, &ctx, opening,
            ))
            .await
        }
        ListenerKind::Http { .. } => {
            Box::pin(crate::http::serve_plain(
                stream, peer, listener, &snapshot, &ctx, opening,
            ))
            .await;
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_tls(
    mut stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    sni: &crate::route::HostTable<SniAction>,
    listener: &ListenerRuntime,
    snapshot: &Arc<Snapshot>,
    ctx: &Arc<Context>,
    opening: Option<OpeningGuard>,
) -> Option<TunnelJob> {
    let timeouts = snapshot.config.timeouts;
    let peeked = tokio::select! {
        peeked = peek_client_hello(&mut stream, timeouts.client_hello) => peeked,
        _ = shed_signal(opening.as_ref()) => {
            listener.counters.rejected();
            listener.protection.count(Limit::Shed);
            tracing::debug!("listener at max_connections: closing the oldest connection still sending its ClientHello");
            return None;
        }
    };
    drop(opening);
    let mut hello = match peeked {
        Ok(hello) => hello,
        Err(PeekError::Failure(failure)) => {
            listener.counters.hello_failure(failure);
            listener.protection.handshake_failed(peer.ip());
            tracing::info!(
                reason = failure.reason(),
                "ClientHello refused: {failure}; closing"
            );
            return None;
        }
        Err(PeekError::Io(err)) => {
            listener.counters.hello_failure(PeekFailure::Timeout);
            listener.protection.handshake_failed(peer.ip());
            tracing::info!(error = %err, "client failed before its ClientHello was complete");
            return None;
        }
    };
    let name = hello.sni.as_deref();
    record_sni(name.unwrap_or(""));
    match sni.lookup(name) {
        Some(SniAction::Passthrough(pool)) => {
            let origin = Origin {
                peer,
                sni: hello.sni.take(),
                access: &ctx.access_log,
                listener: index,
                mode: Mode::Passthrough,
            };
            passthrough::connect(stream, origin, &hello.buffered, pool, snapshot).await
        }
        Some(SniAction::Terminate(routes)) => {
            Box::pin(crate::http::serve_tls(
                stream, peer, hello, routes, listener, snapshot, ctx,
            ))
            .await;
            None
        }
        Some(SniAction::Reject) => {
            listener.counters.rejected();
            tracing::info!(sni = name.unwrap_or(""), "SNI rule says reject; closing");
            None
        }
        None => {
            listener.counters.rejected();
            tracing::info!(
                sni = name.unwrap_or(""),
                "no SNI rule and no default; closing"
            );
            if listener.has_terminate {
                crate::tls::terminate::send_unrecognized_name(&mut stream).await;
            }
            None
        }
    }
}

/// A listener in the running state: its spec and metric handles.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// The validated spec.
    pub spec: ListenerSpec,
    /// Metric handles.
    pub counters: ListenerCounters,
    /// Whether any SNI rule terminates (decides the no-match answer: alert or close).
    pub has_terminate: bool,
    /// Per-address protections (connections per IP, rate limit).
    pub protection: Arc<Protection>,
}

impl ListenerRuntime {
    /// Builds the runtime of `spec`.
    pub fn new(spec: &ListenerSpec, metrics: &Metrics) -> Self {
        let has_terminate = match &spec.kind {
            ListenerKind::Tls { sni } => sni.values().any(|a| matches!(a, SniAction::Terminate(_))),
            _ => false,
        };
        ListenerRuntime {
            spec: spec.clone(),
            counters: ListenerCounters::new(metrics, &spec.name),
            has_terminate,
            protection: Arc::new(Protection::new(spec, metrics)),
        }
    }

    /// Keeps the protection tables of `old`, the same listener before a reload.
    pub fn inherit_protection(&mut self, old: &ListenerRuntime) {
        if let Some(protection) = Arc::get_mut(&mut self.protection) {
            protection.inherit(&old.protection);
        }
    }
}
