//! Tests of the client connection driver (`driver.rs`): when a response is written.

use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::http::client::full_body;
use hyper::Response;

fn limits() -> ConnLimits {
    ConnLimits {
        request_header: Duration::from_secs(5),
        client_idle: Duration::from_secs(5),
        max_header_bytes: 16 * 1024,
        stalled: Duration::from_secs(5),
        max_requests: None,
    }
}

/// Serves one request whose answer is ready at once, with a sibling task scheduled
/// right behind the connection's: whether the sibling found the response already
/// written, and the bytes the client received.
fn written_before_sibling(wait_turn: bool) -> (bool, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let activity = Arc::new(ConnActivity::new());
        let asked = Arc::clone(&activity);
        let driver = Driver::new(server, activity, limits());
        let connection = tokio::spawn(driver.run(move |_request| {
            if wait_turn {
                asked.write_after_turn();
            }
            async { Answer::from(Response::new(full_body("hello"))) }
        }));
        let sibling = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let early = match client.read(&mut buf).now_or_never() {
                Some(Ok(n)) => Some(buf[..n].to_vec()),
                _ => None,
            };
            (early, client)
        });
        let (early, mut client) = sibling.await.unwrap();
        let was_early = early.is_some();
        let mut received = early.unwrap_or_default();
        let mut buf = [0u8; 512];
        while !received.ends_with(b"hello") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
        drop(client);
        let _ = connection.await;
        (was_early, received)
    })
}

#[test]
fn a_response_asked_to_wait_leaves_after_the_tasks_ready_with_it() {
    let (early, received) = written_before_sibling(true);
    assert!(!early, "the response left before the sibling task ran");
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"), "{received:?}");
    assert!(received.ends_with(b"hello"), "{received:?}");
}

#[test]
fn a_response_not_asked_to_wait_leaves_at_once() {
    let (early, received) = written_before_sibling(false);
    assert!(early, "the response waited without being asked to");
    assert!(received.ends_with(b"hello"), "{received:?}");
}
