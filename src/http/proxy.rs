//! The L7 request path (called by the client connection for each request): check framing, route by
//! Host and path, rewrite headers, forward to the pool's backend over a new or pooled
//! connection, stream the response back, or answer 400/404/502/503/504 itself. A
//! `Connection: Upgrade` request that the backend answers with 101 becomes a spliced
//! tunnel between the two upgraded connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use hyper::{Request, Response, StatusCode, Version};

use super::client::{full_body, ForwardError, PoolClient, ProxyBody, Sending};
use super::conn::{Answer, AwaitingHead, ConnActivity, InFlight, RequestBody};
use super::headers;
use super::routes::{CompiledRule, RouteTable, Target};
use crate::access_log::AccessLog;
use crate::config::{BackendConnections, Timeouts};
use crate::error::ProxyError;
use crate::protect::Limit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod bodies;
use bodies::{track, LimitedBody, PendingLog};

/// Per-connection facts the service needs.
#[derive(Debug, Clone)]
pub struct ProxyContext {
    /// Routing table.
    pub table: Arc<RouteTable>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's address as the forwarding headers write it (formatted once).
    pub client: Arc<headers::ClientIdentity>,
    /// `https` or `http`.
    pub proto: &'static str,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// `limits.max_request_body_bytes` (`None`: no limit).
    pub max_body: Option<u64>,
    /// The connection's activity (in-flight accounting).
    pub activity: Arc<ConnActivity>,
    /// Listener, SNI, access log and task tracking of the connection.
    pub conn: Arc<ConnInfo>,
}

/// Builds an error or redirect response with a short text body.
pub fn plain_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether `request` named both Content-Length and Transfer-Encoding (the connection
/// noted it while parsing the head), or Content-Lengths that disagree.
pub fn has_ambiguous_framing<B>(request: &Request<B>, activity: &ConnActivity) -> bool {
    activity.take_conflicting() || headers::has_conflicting_framing(request.headers())
}

/// The answer to ambiguous framing: 400, and the connection closes after it.
pub fn ambiguous_framing_response() -> Response<ProxyBody> {
    tracing::info!("conflicting Content-Length / Transfer-Encoding; 400 and close");
    closing(plain_response(
        StatusCode::BAD_REQUEST,
        "bad request: ambiguous message framing",
    ))
}

/// Facts about a client connection every request on it shares.
#[derive(Debug)]
pub struct ConnInfo {
    /// Listener name.
    pub listener: String,
    /// `terminate` or `http`.
    pub mode: &'static str,
    /// SNI of a terminated connection.
    pub sni: Option<String>,
    /// Access log sink.
    pub access: Arc<AccessLog>,
    /// Upgraded tunnels are tracked like connections (drain waits for them).
    pub tracker: TaskTracker,
    /// Cancelled when the drain's grace period ends.
    pub hard_stop: CancellationToken,
    /// The listener's protections (refusals are counted there).
    pub protection: Arc<crate::protect::Protection>,
    /// The rate limiter applied per request (`http` listeners; `None`: no limit).
    pub rate_per_request: Option<Arc<crate::protect::RateLimiter>>,
}

/// Who served a request, for the access log (nothing is copied when the log is off).
#[derive(Debug, Default)]
struct Served {
    /// The access log is on: fill in the names.
    logging: bool,
    pool: Option<String>,
    backend: Option<String>,
}

impl Served {
    fn new(logging: bool) -> Self {
        Served {
            logging,
            ..Served::default()
        }
    }

    fn pool(&mut self, name: &str) {
        if self.logging {
            self.pool = Some(name.to_string());
        }
    }

    fn backend(&mut self, name: &str) {
        if self.logging {
            self.backend = Some(name.to_string());
        }
    }
}

/// Handles one request.
pub async fn handle(request: Request<RequestBody>, cx: Arc<ProxyContext>) -> Answer {
    let started = Instant::now();
    let in_flight = InFlight(Arc::clone(&cx.activity));
    cx.activity.request_started();
    // Nothing is formatted or copied for the access log when it is off.
    let pending = cx.conn.access.enabled().then(|| PendingLog {
        access: Arc::clone(&cx.conn.access),
        conn: Arc::clone(&cx.conn),
        route: cx.table.name.clone(),
        client: cx.peer,
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        bytes_in: request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        status: 0,
        served: Served::default(),
        started,
        bytes_out: 0,
    });
    let awaiting = AwaitingHead::new(&cx.activity);
    let (answer, served) = forward(request, &cx, started).await;
    drop(awaiting);
    let pending = pending.map(|mut p| {
        p.status = answer.response.status().as_u16();
        p.served = served;
        p
    });
    Answer {
        response: track(answer.response, in_flight, pending),
        raw_fields: answer.raw_fields,
    }
}

async fn forward(
    request: Request<RequestBody>,
    cx: &ProxyContext,
    started: Instant,
) -> (Answer, Served) {
    let refuse = |status: StatusCode, text: &str| {
        cx.table.unmatched.count(status, started);
        (
            closing(plain_response(status, text)).into(),
            Served::default(),
        )
    };
    if has_ambiguous_framing(&request, &cx.activity) {
        cx.table.unmatched.count(StatusCode::BAD_REQUEST, started);
        return (ambiguous_framing_response().into(), Served::default());
    }
    if let Some(raw) = request.headers().get(HOST) {
        if !headers::valid_host_header(raw.as_bytes()) {
            return refuse(StatusCode::BAD_REQUEST, "bad request: invalid Host header");
        }
    }
    let host = headers::request_host(request.uri(), request.headers());
    if host.is_none() && request.version() == Version::HTTP_11 {
        return refuse(StatusCode::BAD_REQUEST, "bad request: no Host header");
    }
    if let Some(ban) = cx.conn.protection.ban_on(crate::config::BanOn::Requests) {
        if ban.record(cx.peer.ip(), started) {
            cx.conn.protection.count(Limit::Ban);
            return refuse(StatusCode::FORBIDDEN, "address temporarily banned");
        }
    }
    if let Some(rate) = &cx.conn.rate_per_request {
        if let Err(wait) = rate.check(cx.peer.ip(), started) {
            cx.conn.protection.count(Limit::Rate);
            cx.table
                .unmatched
                .count(StatusCode::TOO_MANY_REQUESTS, started);
            return (too_many_requests(wait).into(), Served::default());
        }
    }
    // A declared Content-Length over the limit is refused before anything is forwarded;
    // a chunked body is cut where it crosses the limit (below).
    let mut body_limit = None;
    if let Some(max) = cx.max_body {
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            cx.conn.protection.count(Limit::Body);
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        if declared.is_none() && !request.body().is_end_stream() {
            body_limit = Some((max, CancellationToken::new()));
        }
    }
    let Some(rule) = cx.table.find(host.as_deref(), request.uri().path()) else {
        cx.table.unmatched.count(StatusCode::NOT_FOUND, started);
        return (
            plain_response(StatusCode::NOT_FOUND, "no route for this host and path").into(),
            Served::default(),
        );
    };
    let mut served = Served::new(cx.conn.access.enabled());
    served.pool(rule.pool_name());
    if let Some(rate) = &rule.rate {
        if let Err(wait) = rate.check(cx.peer.ip(), started) {
            cx.conn.protection.count(Limit::Rate);
            rule.metrics.count(StatusCode::TOO_MANY_REQUESTS, started);
            return (too_many_requests(wait).into(), served);
        }
    }
    let facts = rule.compress.as_ref().map(|c| c.request_facts(&request));
    let answer = match (&rule.target, &rule.cache) {
        (Target::Static(root), _) => {
            let response = root.serve(&request).await;
            rule.metrics.count(response.status(), started);
            Answer::from(response)
        }
        (Target::Pool(client), Some(cache)) => {
            let fetched = std::sync::atomic::AtomicBool::new(false);
            let served_ref = &mut served;
            // Boxed: the cache's future is the largest branch, and without the box every
            // request's future (and each move of it) would be that large.
            let response = Box::pin(cache.serve(request, cx.proto, |request| {
                fetched.store(true, std::sync::atomic::Ordering::Relaxed);
                // A cached route's fields go through the map (`Sending::raw_fields`).
                let fetch = to_pool(request, rule, client, cx, started, body_limit, served_ref);
                async move {
                    let answer = fetch.await;
                    debug_assert!(answer.raw_fields.is_none(), "raw fields on a cached route");
                    answer.response
                }
            }))
            .await;
            if !fetched.load(std::sync::atomic::Ordering::Relaxed) {
                // Answered from memory (a hit, or a collapsed miss served what the first
                // one stored): counted like any answer of the rule.
                rule.metrics.count(response.status(), started);
                served.backend("cache");
            }
            Answer::from(response)
        }
        (Target::Pool(client), None) => {
            to_pool(request, rule, client, cx, started, body_limit, &mut served).await
        }
    };
    // A compressed route's fields go through the map (`Sending::raw_fields`): there are
    // no raw fields for the compressor to leave stale.
    let answer = match (facts, &rule.compress) {
        (Some(facts), Some(compress)) => {
            debug_assert!(
                answer.raw_fields.is_none(),
                "raw fields on a compressed route"
            );
            Answer::from(compress.apply(facts, answer.response))
        }
        _ => answer,
    };
    (answer, served)
}

/// Forwards `request` to a backend of `client`'s pool and returns its response, or the
/// 400/413/502/503/504 tollgate answers itself. Fills in `served.backend`.
async fn to_pool(
    mut request: Request<RequestBody>,
    rule: &CompiledRule,
    client: &Arc<PoolClient>,
    cx: &ProxyContext,
    started: Instant,
    body_limit: Option<(u64, CancellationToken)>,
    served: &mut Served,
) -> Answer {
    // The connection marked an upgrade request (Connection: upgrade with Upgrade) with
    // its hand-over.
    let client_upgrade = super::conn::upgrade::on(&mut request);
    let upgrade = client_upgrade.is_some();

    let (mut parts, body) = request.into_parts();
    let original_host = parts.headers.get(HOST).cloned();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // The forwarding fields go out as prebuilt lines when the client sent none of them,
    // else through the map, where the client's lists are appended to.
    let forwarding =
        headers::forwarding_lines(&parts.headers, &cx.client, cx.proto, original_host.as_ref());
    if forwarding.is_none() {
        headers::add_forwarding(
            &mut parts.headers,
            &cx.client,
            cx.proto,
            original_host.as_ref(),
        );
    }
    if original_host.is_none() {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    if client.mode() == BackendConnections::PerRequest && !upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // Origin-form towards the backend.
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = hyper::Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    let body = match &body_limit {
        // Most requests have no body: an empty body of the proxy's type costs no
        // allocation, a boxed request body does.
        None if body.is_end_stream() => crate::http::client::empty_body(),
        None => body.boxed_unsync(),
        Some((max, tripped)) => LimitedBody {
            inner: body,
            left: *max,
            tripped: tripped.clone(),
        }
        .boxed_unsync(),
    };
    let backend_request = Request::from_parts(parts, body);

    // No content feature reads this response's fields: they go to the client as the
    // backend sent them, without a header map (`exchange/raw_fields.rs`).
    let how = Sending {
        upgrade,
        raw_fields: rule.compress.is_none() && rule.cache.is_none(),
        extra_fields: forwarding,
    };
    // Pinned where it is built: awaiting it by reference does not move the ~2 KiB
    // future into the await's own slot.
    let send = std::pin::pin!(client.send(
        backend_request,
        how,
        cx.peer,
        cx.timeouts.connect,
        cx.timeouts.backend_response,
    ));
    let over_limit = || {
        // Dropping the exchange aborts the backend connection mid-body: the backend
        // never sees a complete request.
        tracing::info!(pool = %client.pool().name, "request body over limits.max_request_body_bytes; 413 and close");
        cx.conn.protection.count(Limit::Body);
        rule.metrics.count(StatusCode::PAYLOAD_TOO_LARGE, started);
        closing(plain_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ))
    };
    let tripped = body_limit.as_ref().map(|(_, tripped)| tripped.clone());
    let forwarded = match &tripped {
        None => send.await,
        Some(tripped) => {
            tokio::select! {
                biased;
                _ = tripped.cancelled() => return over_limit().into(),
                r = send => r,
            }
        }
    };
    let forwarded = match forwarded {
        Ok(f) => f,
        // The exchange read the body past the limit in the same poll that ended it.
        Err(ForwardError::RequestBody(_)) if tripped.as_ref().is_some_and(|t| t.is_cancelled()) => {
            return over_limit().into();
        }
        // The request body the client sent was malformed (a bad chunk size or an
        // oversized chunk extension): the client's fault, not the backend's.
        Err(ForwardError::RequestBody(err)) => {
            tracing::info!(pool = %client.pool().name, error = %err, "malformed request body; 400 and close");
            rule.metrics.count(StatusCode::BAD_REQUEST, started);
            return closing(plain_response(
                StatusCode::BAD_REQUEST,
                "bad request: malformed body",
            ))
            .into();
        }
        Err(err) => {
            let (status, text) = match &err {
                ForwardError::Connect(ProxyError::NoHealthyBackend { .. }) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "no healthy backend")
                }
                ForwardError::Connect(_) => (StatusCode::BAD_GATEWAY, "backend unreachable"),
                ForwardError::Timeout(_) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "backend did not answer in time",
                ),
                ForwardError::Backend(_) | ForwardError::RequestBody(_) => {
                    (StatusCode::BAD_GATEWAY, "backend failed")
                }
            };
            tracing::warn!(pool = %client.pool().name, error = %err, status = status.as_u16(), "request not forwarded");
            rule.metrics.count(status, started);
            return plain_response(status, text).into();
        }
    };
    if forwarded.closes {
        cx.activity.write_after_turn();
    }
    let mut response = forwarded.response;
    let status = response.status();
    rule.metrics.count(status, started);
    client
        .pool()
        .record_status(forwarded.index, status.as_u16());
    tracing::trace!(backend = %forwarded.backend.name, status = status.as_u16(), "forwarded");
    served.backend(&forwarded.backend.name);

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let (Some(client_upgrade), Some(backend)) = (client_upgrade, forwarded.upgraded) {
            let idle = cx.timeouts.tunnel_idle;
            let hard_stop = cx.conn.hard_stop.clone();
            // Tracked like a connection: a drain waits for it, the grace period cuts it.
            cx.conn.tracker.spawn(async move {
                let Ok(mut client_io) = client_upgrade.upgraded().await else {
                    tracing::info!("upgrade failed on the client side; closing");
                    return;
                };
                let crate::http::client::Upgraded { conn, guard } = backend;
                let mut backend_io =
                    crate::tls::peek::ReplayStream::new(conn.buf.to_vec(), conn.stream);
                tokio::select! {
                    outcome = crate::l4::splice::splice(&mut client_io, &mut backend_io, idle) => {
                        tracing::debug!(
                            client_to_backend = outcome.client_to_backend,
                            backend_to_client = outcome.backend_to_client,
                            end = outcome.end.as_str(),
                            "upgraded tunnel closed"
                        );
                    }
                    _ = hard_stop.cancelled() => {}
                }
                drop(guard);
            });
            return response.into();
        }
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 that does not become a tunnel: the exchange kept its hop-by-hop fields
        // for one. Any other response came without them (`exchange/head.rs`).
        headers::strip_hop_by_hop(response.headers_mut(), false);
    }
    Answer {
        response,
        raw_fields: forwarded.raw_fields,
    }
}

/// 429 with `Retry-After` in whole seconds, rounded up.
fn too_many_requests(wait: std::time::Duration) -> Response<ProxyBody> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = plain_response(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// Answers every request with 308 to `https://HOST:port/PATH?QUERY`.
pub fn redirect<B>(request: &Request<B>, port: u16) -> Response<ProxyBody> {
    let Some(host) = headers::request_host(request.uri(), request.headers()) else {
        return closing(plain_response(
            StatusCode::BAD_REQUEST,
            "bad request: no Host header",
        ));
    };
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(value) = HeaderValue::from_str(&location) else {
        return closing(plain_response(
            StatusCode::BAD_REQUEST,
            "bad request: invalid Host",
        ));
    };
    let mut response = plain_response(
        StatusCode::PERMANENT_REDIRECT,
        &format!("moved to {location}"),
    );
    response.headers_mut().insert(LOCATION, value);
    response
}
