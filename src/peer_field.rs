//! [`PeerField`]: a client address as a log field, formatted the way `SocketAddr`
//! displays it but without the formatting machinery for IPv4 (the numbers go through
//! itoa). Every connection's span formats its `peer` once at accept; through `Display`
//! for `SocketAddr`, `Ipv4Addr` and each of the four octets and the port, that was about
//! a thousand instructions of a new connection's forty thousand.

use std::fmt;
use std::net::SocketAddr;

/// Displays as `SocketAddr` does: `192.0.2.7:4711`, `[2001:db8::1]:4711`.
#[derive(Debug, Clone, Copy)]
pub struct PeerField(pub SocketAddr);

impl fmt::Display for PeerField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return fmt::Display::fmt(&self.0, f);
        };
        // "255.255.255.255:65535" is 21 bytes.
        let mut text = [0u8; 21];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(room) = text.get_mut(len..len + bytes.len()) {
                room.copy_from_slice(bytes);
                len += bytes.len();
            }
        };
        let mut digits = itoa::Buffer::new();
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                put(b".");
            }
            put(digits.format(octet).as_bytes());
        }
        put(b":");
        put(digits.format(v4.port()).as_bytes());
        // Only ASCII digits, dots and a colon were written.
        match std::str::from_utf8(&text[..len]) {
            Ok(s) => f.pad(s),
            Err(_) => fmt::Display::fmt(&self.0, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_socket_addr() {
        for text in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.0.200.9:443",
            "192.0.2.7:4711",
            "[::1]:9",
            "[2001:db8::1]:65535",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(PeerField(addr).to_string(), addr.to_string(), "{text}");
            assert_eq!(format!("{:>24}", PeerField(addr)), format!("{addr:>24}"));
        }
    }
}
