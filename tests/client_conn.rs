//! The HTTP/1.1 server side of a client connection (`src/http/conn/`) through a running
//! balancer: `Expect: 100-continue`, a request body the request path never read (skipped
//! when it is all buffered, the connection closed when it is not), a client that closes
//! with its request in flight (the backend exchange is dropped), and the close-delimited
//! body an HTTP/1.0 client gets when the length is unknown.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::l7::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_asked_for() {
    let app = origin("app", None).await;
    let edge = Edge::single_mode(app.addr, "pooled", "").await;
    let mut raw = edge.raw_plain().await;
    raw.write(
        format!(
            "POST /echo HTTP/1.1\r\nHost: {SNI}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let interim = tokio::time::timeout(DEADLINE, raw.read_head())
        .await
        .expect("an answer within the deadline")
        .expect("100 Continue");
    assert_eq!(interim.status(), 100, "{}", interim.head);
    raw.write(b"hello").await.unwrap();
    let response = raw.read_response().await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body, b"hello");
    // The connection carries the next request.
    raw.write(format!("GET /next HTTP/1.1\r\nHost: {SNI}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let next = raw.read_response().await.expect("second response");
    assert!(next.text().contains("GET /next"), "{}", next.text());
}

#[tokio::test]
async fn an_unread_body_is_skipped_when_buffered_and_closes_the_connection_when_not() {
    let app = origin("app", None).await;
    let pools = format!("  app: {{ servers: [ {{ addr: \"{}\" }} ] }}", app.addr);
    let edge = Edge::start(&format!("    - {{ host: {SNI}, pool: app }}"), &pools, "").await;
    // No route for this host: 404 without reading the body, which is all here already;
    // the pipelined request after it is served on the same connection.
    let mut raw = edge.raw_plain().await;
    raw.write(
        format!(
            "POST /x HTTP/1.1\r\nHost: other.example\r\nContent-Length: 5\r\n\r\nhello\
             GET /after HTTP/1.1\r\nHost: {SNI}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(raw.read_response().await.expect("404").status(), 404);
    let after = raw.read_response().await.expect("the pipelined request");
    assert_eq!(after.status(), 200);
    assert!(after.text().contains("GET /after"), "{}", after.text());
    // A body still on its way cannot be skipped: the connection closes after the answer.
    let mut raw = edge.raw_plain().await;
    raw.write(
        b"POST /x HTTP/1.1\r\nHost: other.example\r\nContent-Length: 100000\r\n\r\nstart of it",
    )
    .await
    .unwrap();
    assert_eq!(raw.read_response().await.expect("404").status(), 404);
    assert!(raw.closed().await, "the connection stayed open mid-body");
}

#[tokio::test]
async fn a_client_that_closes_with_its_request_in_flight_abandons_it() {
    // A backend that reads the request, never answers, and notes when the balancer
    // drops the backend connection.
    let dropped = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&dropped);
    let backend = raw_backend(move |mut conn, _| {
        let seen = Arc::clone(&seen);
        async move {
            if conn.read_request().await.is_some() && conn.closed().await {
                seen.store(true, Ordering::SeqCst);
            }
        }
    })
    .await;
    let edge = Edge::single(backend.addr, "timeouts: { backend_response: 60s }").await;
    let mut client = TcpStream::connect(edge.plain).await.unwrap();
    client
        .write_all(format!("GET /slow HTTP/1.1\r\nHost: {SNI}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    wait_until("the backend got the request", || backend.accepted() == 1).await;
    drop(client);
    wait_until("the backend connection dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn an_http10_client_gets_a_close_delimited_body_when_the_length_is_unknown() {
    // The backend answers chunked; an HTTP/1.0 client cannot read that coding.
    let backend = raw_backend(|mut conn, _| async move {
        while conn.read_request().await.is_some() {
            let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
            if conn.write(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let edge = Edge::single_mode(backend.addr, "pooled", "").await;
    let mut client = TcpStream::connect(edge.plain).await.unwrap();
    client
        .write_all(format!("GET / HTTP/1.0\r\nHost: {SNI}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut answer))
        .await
        .expect("closed within the deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "hello world");
    // An HTTP/1.1 client gets the same body chunked, on a connection that stays open.
    let mut raw = edge.raw_plain().await;
    raw.write(format!("GET / HTTP/1.1\r\nHost: {SNI}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let response = raw.read_response().await.expect("response");
    assert!(
        response.has_token("transfer-encoding", "chunked"),
        "{}",
        response.head
    );
    assert_eq!(response.body, b"hello world");
}
