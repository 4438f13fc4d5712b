//! The L7 module: HTTP/1.1 on terminated TLS connections and on `protocol: http`
//! listeners. `conn.rs` drives a client connection (its own HTTP/1.1 server side,
//! keep-alive, clocks, drain), `proxy.rs` handles each request, `headers.rs` holds the
//! header rules, `client.rs` the backend side (`per_request` or `pooled`) and `exchange.rs` one HTTP/1.1
//! exchange on a backend connection.

pub mod client;
pub mod conn;
pub mod exchange;
pub mod headers;
pub mod proxy;
pub mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::{Config, HttpAction, ListenerKind};
use crate::listener::{ListenerRuntime, Mode};
use crate::metrics::Metrics;
use crate::server::{Context, Snapshot};
use crate::tls::peek::PeekedHello;
use crate::upstream::Pool;
use conn::{serve_connection, ConnEnd, ConnLimits};
use proxy::{ConnInfo, ProxyContext};
use routes::RouteTable;

/// L7 state in a snapshot: compiled routing tables and one client per pool.
#[derive(Debug, Default)]
pub struct L7State {
    tables: HashMap<String, Arc<RouteTable>>,
    /// Handshake outcome counters per listener name: (ok, error, timeout).
    handshakes: HashMap<String, [IntCounter; 3]>,
}

impl L7State {
    /// Compiles every routing table of `config` against `pools`.
    pub fn new(config: &Config, pools: &HashMap<String, Arc<Pool>>, metrics: &Metrics) -> Self {
        let tables = routes::compile(config, pools, metrics);
        let handshakes = config
            .listeners
            .iter()
            .filter(|l| matches!(l.kind, ListenerKind::Tls { .. }))
            .map(|l| {
                let c = |outcome: &str| {
                    metrics
                        .tls_handshakes_total
                        .with_label_values(&[&l.name, outcome])
                };
                (l.name.clone(), [c("ok"), c("error"), c("timeout")])
            })
            .collect();
        L7State { tables, handshakes }
    }

    /// The routing table named `name`.
    pub fn table(&self, name: &str) -> Option<&Arc<RouteTable>> {
        self.tables.get(name)
    }
}

fn limits(snapshot: &Snapshot) -> ConnLimits {
    ConnLimits {
        request_header: snapshot.config.timeouts.request_header,
        client_idle: snapshot.config.timeouts.client_idle,
        max_header_bytes: snapshot.config.limits.max_request_header_bytes,
        stalled: snapshot
            .config
            .timeouts
            .client_idle
            .max(snapshot.config.timeouts.backend_response),
        max_requests: snapshot.config.limits.max_requests_per_connection,
    }
}

fn conn_info(
    listener: &ListenerRuntime,
    mode: &'static str,
    sni: Option<String>,
    ctx: &Arc<Context>,
) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        listener: listener.spec.name.clone(),
        mode,
        sni,
        access: Arc::clone(&ctx.access_log),
        tracker: ctx.tracker.clone(),
        hard_stop: ctx.hard_stop.clone(),
        protection: Arc::clone(&listener.protection),
        // tls listeners apply their rate limit to connections, at accept.
        rate_per_request: match mode {
            "http" => listener.protection.rate.clone(),
            _ => None,
        },
    })
}

/// Counts what a connection's end says about a request tollgate did not route: the
/// connection's own 400/414/431 answers to a bad head and heads that never completed (closed; counted as 408).
fn count_end(end: ConnEnd, table: Option<&RouteTable>, listener: &ListenerRuntime) {
    let status = match end {
        ConnEnd::RequestLimit => {
            listener.protection.count(crate::protect::Limit::Requests);
            return;
        }
        ConnEnd::Shed => {
            listener.protection.count(crate::protect::Limit::Shed);
            return;
        }
        ConnEnd::Refused(code) => code,
        ConnEnd::HeaderTimeout => 408,
        _ => return,
    };
    if let (Some(table), Ok(status)) = (table, hyper::StatusCode::from_u16(status)) {
        table.unmatched.count(status, std::time::Instant::now());
    }
}

/// Terminates TLS on a routed connection and serves HTTP on it with routing table `routes`.
pub async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    hello: PeekedHello,
    routes: &str,
    listener: &ListenerRuntime,
    snapshot: &Arc<Snapshot>,
    ctx: &Arc<Context>,
) {
    let (Some(terminator), Some(table)) = (&snapshot.tls, snapshot.l7.table(routes)) else {
        listener.counters.rejected();
        tracing::error!(
            routes,
            "terminate route without TLS state or routing table; closing"
        );
        return;
    };
    let _active = listener.counters.open(Mode::Terminate);
    let counters = snapshot.l7.handshakes.get(&listener.spec.name);
    let tls = match terminator
        .accept(stream, hello.buffered, snapshot.config.timeouts.handshake)
        .await
    {
        Ok(tls) => {
            if let Some(c) = counters {
                c[0].inc();
            }
            tls
        }
        Err(err) => {
            if let Some(c) = counters {
                let i = if err.outcome() == "timeout" { 2 } else { 1 };
                c[i].inc();
            }
            listener.protection.handshake_failed(peer.ip());
            tracing::info!(error = %err, "TLS handshake failed; closing");
            return;
        }
    };
    let conn = conn_info(listener, "terminate", hello.sni, ctx);
    let counted = Arc::clone(table);
    let table = Arc::clone(table);
    let timeouts = snapshot.config.timeouts;
    let end = Box::pin(serve_connection(
        tls,
        limits(snapshot),
        &ctx.shutdown,
        |activity| {
            let cx = Arc::new(ProxyContext {
                table,
                peer,
                client: Arc::new(headers::ClientIdentity::new(peer.ip())),
                proto: "https",
                timeouts,
                max_body: snapshot.config.limits.max_request_body_bytes,
                activity,
                conn,
            });
            move |req| proxy::handle(req, Arc::clone(&cx))
        },
    ))
    .await;
    count_end(end, Some(&counted), listener);
    tracing::debug!(end = ?end, "terminated connection closed");
}

/// Serves a `protocol: http` connection: proxy with its routing table, or redirect.
pub async fn serve_plain(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &ListenerRuntime,
    snapshot: &Arc<Snapshot>,
    ctx: &Arc<Context>,
    opening: Option<crate::protect::shed::OpeningGuard>,
) {
    let ListenerKind::Http { action } = &listener.spec.kind else {
        return;
    };
    let _active = listener.counters.open(Mode::Http);
    // The connection allocates its read buffer (8 KiB) at its first read: an idle client that has sent nothing yet costs only the socket and this
    // task until its first byte (bounded by client_idle, like any idle connection).
    // (`readable()` may wake without data on a fresh socket; a one-byte MSG_PEEK waits for
    // a real byte and consumes nothing.)
    let mut probe = [0u8; 1];
    let first_byte = tokio::select! {
        peeked = tokio::time::timeout(snapshot.config.timeouts.client_idle, stream.peek(&mut probe)) => peeked,
        _ = ctx.shutdown.cancelled() => return,
        _ = crate::listener::shed_signal(opening.as_ref()) => {
            listener.protection.count(crate::protect::Limit::Shed);
            tracing::debug!("listener at max_connections: closing the oldest connection that has sent nothing");
            return;
        }
    };
    // Still sheddable until its first request head is complete (conn.rs).
    let mut opening = opening;
    if !matches!(first_byte, Ok(Ok(n)) if n > 0) {
        tracing::debug!("connection closed or idle before its first request");
        return;
    }
    let end = match action {
        HttpAction::Routes(routes) => {
            let Some(table) = snapshot.l7.table(routes) else {
                tracing::error!(routes, "routing table missing; closing");
                return;
            };
            let conn = conn_info(listener, "http", None, ctx);
            let counted = Arc::clone(table);
            let table = Arc::clone(table);
            let timeouts = snapshot.config.timeouts;
            let end = Box::pin(serve_connection(
                stream,
                limits(snapshot),
                &ctx.shutdown,
                |activity| {
                    if let Some(guard) = opening.take() {
                        activity.hold_opening(guard);
                    }
                    let cx = Arc::new(ProxyContext {
                        table,
                        peer,
                        client: Arc::new(headers::ClientIdentity::new(peer.ip())),
                        proto: "http",
                        timeouts,
                        max_body: snapshot.config.limits.max_request_body_bytes,
                        activity,
                        conn,
                    });
                    move |req| proxy::handle(req, Arc::clone(&cx))
                },
            ))
            .await;
            count_end(end, Some(&counted), listener);
            end
        }
        HttpAction::RedirectHttps(port) => {
            let port = *port;
            let end = Box::pin(serve_connection(
                stream,
                limits(snapshot),
                &ctx.shutdown,
                |activity| {
                    if let Some(guard) = opening.take() {
                        activity.hold_opening(guard);
                    }
                    move |req| {
                        activity.request_started();
                        let response = if proxy::has_ambiguous_framing(&req, &activity) {
                            proxy::ambiguous_framing_response()
                        } else {
                            proxy::redirect(&req, port)
                        };
                        activity.request_finished();
                        std::future::ready(conn::Answer::from(response))
                    }
                },
            ))
            .await;
            count_end(end, None, listener);
            end
        }
    };
    tracing::debug!(end = ?end, "http connection closed");
}
