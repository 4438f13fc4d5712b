//! The load generator's exchange on scripted answers, split at every byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;

/// A stream that answers with `pieces`, one per read, then EOF; it keeps what is written.
struct Scripted {
    pieces: std::collections::VecDeque<Vec<u8>>,
    written: Vec<u8>,
}

impl Scripted {
    fn new(pieces: Vec<Vec<u8>>) -> Self {
        Scripted {
            pieces: pieces.into(),
            written: Vec::new(),
        }
    }

    /// `answer` in two reads, split at `at`.
    fn split(answer: &[u8], at: usize) -> Self {
        let (a, b) = answer.split_at(at);
        Scripted::new(
            vec![a.to_vec(), b.to_vec()]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.pieces.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test:8443\r\n\r\n";

/// The built-in backend's answer with a 100-byte body, as it sends it.
fn length_answer() -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: a\r\ncontent-length: 100\r\ndate: Wed, 25 Nov 2026 04:00:00 GMT\r\n\r\n".to_vec();
    answer.extend_from_slice(&[b'x'; 100]);
    answer
}

fn run(stream: &mut Scripted) -> Result<Answer, ExchangeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut buf = BytesMut::new();
    runtime.block_on(exchange(stream, &mut buf, REQUEST))
}

#[test]
fn a_content_length_answer_split_anywhere() {
    let answer = length_answer();
    for at in 0..=answer.len() {
        let mut stream = Scripted::split(&answer, at);
        let got = run(&mut stream).expect("a complete answer");
        assert_eq!(
            got,
            Answer {
                status: 200,
                body_len: 100,
                keep_alive: true
            },
            "split at {at}"
        );
        assert_eq!(stream.written, REQUEST);
    }
}

#[test]
fn every_prefix_of_a_head_asks_for_more() {
    let answer = length_answer();
    let head_len = answer.len() - 100;
    for end in 0..head_len {
        assert!(
            matches!(parse_head(&answer[..end]), Ok(None)),
            "prefix of {end} bytes"
        );
    }
    let head = parse_head(&answer[..head_len])
        .expect("parses")
        .expect("complete");
    assert_eq!(head.len, head_len);
    assert_eq!(head.framing, Framing::Length(100));
}

#[test]
fn a_chunked_answer_with_trailers_split_anywhere() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
    for at in 0..=answer.len() {
        let got = run(&mut Scripted::split(answer, at)).expect("a complete answer");
        assert_eq!(got.body_len, 31, "split at {at}");
        assert!(got.keep_alive);
    }
}

#[test]
fn a_body_until_close_counts_everything_and_ends_the_connection() {
    let no_length: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n0123456789";
    // A final coding other than chunked delimits nothing either (RFC 9112 §6.3).
    let other_coding: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\n0123456789";
    for answer in [no_length, other_coding] {
        for at in 0..=answer.len() {
            let got = run(&mut Scripted::split(answer, at)).expect("a complete answer");
            assert_eq!(got.body_len, 10, "split at {at}");
            assert!(!got.keep_alive);
        }
    }
}

#[test]
fn keep_alive_follows_the_version_and_the_connection_field() {
    let cases: [(&[u8], bool); 5] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: x, Close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
    ];
    for (answer, keep_alive) in cases {
        let got = run(&mut Scripted::new(vec![answer.to_vec()])).expect("complete");
        assert_eq!(
            got.keep_alive,
            keep_alive,
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn interim_answers_are_skipped_and_no_body_statuses_have_none() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    for at in 0..=answer.len() {
        let got = run(&mut Scripted::split(answer, at)).expect("complete");
        assert_eq!(
            (got.status, got.body_len, got.keep_alive),
            (204, 0, true),
            "split at {at}"
        );
    }
}

#[test]
fn a_close_before_the_answer_ends_is_an_error_that_says_whether_any_came() {
    let answer = length_answer();
    for end in 0..answer.len() {
        let err =
            run(&mut Scripted::new(vec![answer[..end].to_vec()])).expect_err("incomplete answer");
        let ExchangeError::Closed { answered } = err else {
            panic!("prefix of {end}: {err:?}");
        };
        assert_eq!(answered, end > 0, "prefix of {end}");
    }
}

#[test]
fn malformed_answers_are_refused() {
    let cases: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n\x01bad: x\r\n\r\n",
    ];
    for answer in cases {
        let err = run(&mut Scripted::new(vec![answer.to_vec()])).expect_err("malformed");
        assert!(
            matches!(err, ExchangeError::Malformed(_)),
            "{}: {err:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn a_head_that_never_ends_is_refused_at_the_bound() {
    // One field whose value never ends: the size bound, not the field count, stops it.
    let mut answer = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
    answer.resize(MAX_HEAD_BYTES + 5000, b'a');
    let pieces = answer.chunks(1000).map(<[u8]>::to_vec).collect();
    let err = run(&mut Scripted::new(pieces)).expect_err("too large");
    assert!(matches!(err, ExchangeError::Malformed(_)), "{err:?}");
}

#[test]
fn bytes_after_an_answer_stay_for_the_next_one() {
    let mut both = length_answer();
    both.extend_from_slice(b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnop");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut stream = Scripted::new(vec![both]);
    let mut buf = BytesMut::new();
    let first = runtime
        .block_on(exchange(&mut stream, &mut buf, REQUEST))
        .expect("first");
    let second = runtime
        .block_on(exchange(&mut stream, &mut buf, REQUEST))
        .expect("second");
    assert_eq!((first.status, first.body_len), (200, 100));
    assert_eq!((second.status, second.body_len), (404, 3));
}
