//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz` (200 while
//! serving, 503 while draining), `GET /status` (JSON: listeners, pools, backends) and
//! `POST /reload` (re-read the config file, like SIGHUP).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::Context;

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/reload" {
                        return Ok::<_, Infallible>(reload(&ctx).await);
                    }
                    Ok::<_, Infallible>(answer(&req, &ctx))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `POST /reload`: re-reads the config file; 200 `reloaded` or 500 with the error.
async fn reload(ctx: &Arc<Context>) -> Response<Full<Bytes>> {
    match ctx.reload_file().await {
        Ok(()) => reply(StatusCode::OK, "text/plain", "reloaded\n".into()),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reload refused: {e}\n"),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn answer(req: &Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET, or POST /reload\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            ctx.metrics.render(),
        ),
        "/healthz" => {
            if ctx.shutdown.is_cancelled() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        "/status" => reply(StatusCode::OK, "application/json", status_json(ctx)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn status_json(ctx: &Context) -> String {
    let snapshot = ctx.state.load();
    let listeners: Vec<serde_json::Value> = snapshot
        .listeners
        .iter()
        .map(|l| serde_json::json!({ "name": l.spec.name, "listen": l.spec.listen.to_string() }))
        .collect();
    let mut names: Vec<&String> = snapshot.pools.keys().collect();
    names.sort();
    let pools: Vec<serde_json::Value> = names
        .into_iter()
        .filter_map(|name| snapshot.pools.get(name))
        .map(|pool| {
            let backends: Vec<serde_json::Value> = pool
                .backends
                .iter()
                .map(|b| {
                    let last = b.last_check().map(|c| {
                        let at =
                            c.at.duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs())
                                .unwrap_or(0);
                        serde_json::json!({ "ok": c.ok, "detail": c.detail, "at_unix": at })
                    });
                    serde_json::json!({
                        "name": b.name,
                        "addr": b.addr.to_string(),
                        "state": if b.is_up() { "up" } else { "down" },
                        "weight": b.weight,
                        "draining": b.weight == 0,
                        "active": b.active(),
                        "last_check": last,
                    })
                })
                .collect();
            serde_json::json!({
                "name": pool.name,
                "balance": format!("{:?}", pool.spec.balance),
                "backend_connections": format!("{:?}", pool.spec.backend_connections),
                "fail_open": pool.spec.fail_open,
                "health": pool.spec.health.as_ref().map(|h| format!("{:?}", h.check)),
                "backends": backends,
            })
        })
        .collect();
    let now = std::time::Instant::now();
    let bans: Vec<serde_json::Value> = snapshot
        .listeners
        .iter()
        .filter_map(|l| l.protection.ban.as_ref().map(|b| (l, b)))
        .flat_map(|(l, table)| {
            table.current(now).into_iter().map(move |(ip, left)| {
                serde_json::json!({
                    "listener": l.spec.name,
                    "address": ip.to_string(),
                    "on": table.spec().on.as_str(),
                    "remaining_seconds": left.as_secs_f64().ceil() as u64,
                })
            })
        })
        .collect();
    serde_json::json!({
        "draining": ctx.shutdown.is_cancelled(),
        "listeners": listeners,
        "pools": pools,
        "bans": bans,
    })
    .to_string()
}
