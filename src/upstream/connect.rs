//! One TCP connect to a backend, with the first bytes sent at once: the socket is made
//! non-blocking with `TCP_NODELAY`, `connect` starts the handshake, and `first` (a
//! request head) is offered to the socket straight away, as HAProxy does. On loopback
//! or a near backend the handshake is usually complete by then, so the request leaves
//! without waiting for the reactor to report the socket writable, and the backend is
//! woken once for the connection and its request. Otherwise (`EAGAIN`: still
//! connecting) the bytes are left to the caller and the connect completes as usual.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpStream;

/// Connects to `addr`; returns the stream and how many bytes of `first` went out.
pub async fn connect_sending(addr: SocketAddr, first: &[u8]) -> io::Result<(TcpStream, usize)> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let sent = if first.is_empty() {
        0
    } else {
        // A socket still connecting answers EAGAIN; a refused one, its error.
        match socket.send_with_flags(first, libc::MSG_NOSIGNAL) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => return Err(err),
        }
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if sent == 0 {
        // The handshake is still under way (or nothing was sent): wait for it to end.
        stream.writable().await?;
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    Ok((stream, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        (listener, addr)
    }

    #[tokio::test]
    async fn the_first_bytes_go_out_with_the_connect() {
        let (listener, addr) = listener().await;
        let Ok((stream, sent)) = connect_sending(addr, b"GET / HTTP/1.1\r\n\r\n").await else {
            panic!("connect");
        };
        assert_eq!(sent, 18, "loopback completes the handshake inside connect");
        assert!(stream.nodelay().unwrap_or(false));
        let Ok((mut server, _)) = listener.accept().await else {
            panic!("accept");
        };
        let mut got = [0u8; 18];
        assert!(server.read_exact(&mut got).await.is_ok());
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        // A port nothing listens on: bind one, then close it.
        let (_, addr) = listener().await;
        for first in [&b""[..], &b"GET / HTTP/1.1\r\n\r\n"[..]] {
            let got = connect_sending(addr, first).await;
            assert!(
                matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
                "{:?}",
                got.map(|(_, n)| n)
            );
        }
    }

    #[tokio::test]
    async fn nothing_to_send_waits_for_the_handshake() {
        let (_listener, addr) = listener().await;
        let Ok((stream, sent)) = connect_sending(addr, b"").await else {
            panic!("connect");
        };
        assert_eq!(sent, 0);
        assert!(stream.peer_addr().is_ok());
    }
}
