//! `max_connections` on a full listener: a new connection closes the oldest one still in
//! its opening stage (an http client that has sent nothing, or only part of its first
//! request head), never one that is being served; when every slot is in use by served
//! connections, new ones wait for a slot.

mod common;

use std::time::Duration;

use common::l7::*;
use common::*;
use tokio::net::TcpStream;

async fn full_listener() -> (tollgate::server::Server, Origin, std::net::SocketAddr) {
    let o = origin("app", None).await;
    let yaml = format!(
        r#"
limits: {{ max_connections: 4 }}
listeners:
  - name: plain
    listen: 127.0.0.1:0
    protocol: http
    routes: web
routes:
  web:
    - {{ pool: app }}
pools:
  app: {{ servers: [ {{ addr: "{}" }} ] }}
"#,
        o.addr
    );
    let server = start(&yaml).await;
    let addr = server.listener_addr("plain").unwrap();
    (server, o, addr)
}

async fn served(addr: std::net::SocketAddr) -> RawConn<TcpStream> {
    let mut conn = RawConn::new(TcpStream::connect(addr).await.unwrap());
    conn.write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = conn.read_head().await.expect("a response");
    assert_eq!(head.status(), 200);
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    conn.read_exact_body(len).await;
    conn
}

#[tokio::test]
async fn the_oldest_silent_connection_makes_room() {
    let (server, _o, addr) = full_listener().await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until("four silent connections accepted", || {
        metric_value(
            &server.metrics().render(),
            "tollgate_connections_active",
            &[("listener", "plain"), ("mode", "http")],
        ) == Some(4.0)
    })
    .await;
    // The listener is full of clients that sent nothing: a real one is still served.
    let _kept = served(addr).await;
    let (got, closed) = read_to_close(&mut silent[0]).await;
    assert!(
        closed && got.is_empty(),
        "the oldest silent connection was closed"
    );
    let shed = metric_value(
        &server.metrics().render(),
        "tollgate_limit_rejections_total",
        &[("listener", "plain"), ("limit", "shed")],
    );
    assert_eq!(shed, Some(1.0));
}

#[tokio::test]
async fn a_slow_first_request_head_can_be_shed_too() {
    let (server, _o, addr) = full_listener().await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET / HTTP/1.1\r\nHost: a.exa")
            .await
            .unwrap();
        slow.push(conn);
    }
    wait_until("four slow heads accepted", || {
        metric_value(
            &server.metrics().render(),
            "tollgate_connections_active",
            &[("listener", "plain"), ("mode", "http")],
        ) == Some(4.0)
    })
    .await;
    // request_header is 10 s: only shedding lets a real client in now.
    let _kept = served(addr).await;
    let (_, closed) = read_to_close(&mut slow[0]).await;
    assert!(closed, "the oldest slow head was closed");
    assert_eq!(
        metric_value(
            &server.metrics().render(),
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "shed")],
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn connections_being_served_are_never_shed() {
    let (server, _o, addr) = full_listener().await;
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(served(addr).await);
    }
    // A fifth waits: nothing is shed, the four keep working.
    let mut waiting = RawConn::new(TcpStream::connect(addr).await.unwrap());
    waiting
        .write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.read_head()).await;
    assert!(
        early.is_err(),
        "a fifth connection was served past max_connections"
    );
    for conn in &mut busy {
        conn.write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .await
            .unwrap();
        let head = conn.read_head().await.expect("still served");
        assert_eq!(head.status(), 200);
        let len: usize = head.header("content-length").unwrap().parse().unwrap();
        conn.read_exact_body(len).await;
    }
    assert_eq!(
        metric_value(
            &server.metrics().render(),
            "tollgate_limit_rejections_total",
            &[("listener", "plain"), ("limit", "shed")],
        ),
        Some(0.0)
    );
    // One leaves: the waiting one is served.
    drop(busy.pop());
    let head = waiting.read_head().await.expect("served once a slot freed");
    assert_eq!(head.status(), 200);
}
