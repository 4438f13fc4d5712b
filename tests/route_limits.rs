//! A route's own `rate_limit`: requests of that route over the bucket get 429 with
//! `Retry-After`; other routes of the same table and listener are not limited.

mod common;

use common::l7::*;
use common::*;

#[tokio::test]
async fn a_route_rate_limit_applies_to_that_route_only() {
    let o = origin("app", None).await;
    let routes = "    - { path_prefix: /api, pool: app, rate_limit: { rate: 0.5, burst: 2 } }\n    - { pool: app }";
    let pools = format!("  app: {{ servers: [ {{ addr: \"{}\" }} ] }}\n", o.addr);
    let edge = Edge::start(routes, &pools, "").await;
    let mut conn = HttpConn::over(tokio::net::TcpStream::connect(edge.plain).await.unwrap()).await;
    for _ in 0..2 {
        let got = conn.get("app.example.com", "/api/x").await.unwrap();
        assert_eq!(got.status, 200);
    }
    let got = conn.get("app.example.com", "/api/x").await.unwrap();
    assert_eq!(got.status, 429, "third request within the burst of 2");
    let retry: u64 = got.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // The rest of the table is not limited, on the same connection and address.
    for _ in 0..5 {
        let got = conn.get("app.example.com", "/other").await.unwrap();
        assert_eq!(got.status, 200);
    }
    assert_eq!(
        edge.metric(
            "tollgate_http_requests_total",
            &[("route", "web"), ("pool", "app"), ("code", "429")]
        ),
        Some(1.0)
    );
    assert_eq!(
        edge.metric(
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "rate")]
        ),
        Some(1.0)
    );
}
