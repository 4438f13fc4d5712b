//! Sans-io ClientHello parser (on tls-parser): given the bytes read so far from a new
//! connection, answers whether they hold a complete ClientHello and, if so, its SNI and
//! ALPN. Handles a ClientHello fragmented over several TLS records and over any number of
//! reads; never reads past the bytes it is given, and never buffers on its own.

use std::borrow::Cow;

use tls_parser::{
    parse_tls_client_hello_extension, parse_tls_handshake_client_hello, SNIType, TlsExtension,
};

/// Largest ClientHello stream (records and headers) the peek accepts.
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// Records a ClientHello may be split into before it is called malformed (real clients
/// use one or two; this bounds the work on hostile input).
pub const MAX_CLIENT_HELLO_RECORDS: usize = 256;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension types the router reads (RFC 6066 server_name, RFC 7301 ALPN).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// Record bodies above 2^14 + 2048 are not TLS (RFC 8446 §5.2 allows 2^14 + 256 for
/// plaintext; be lenient).
const MAX_RECORD_BODY: usize = 16_384 + 2048;

/// What the bytes read so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloParse {
    /// A complete ClientHello with a host_name SNI.
    Sni {
        /// The server name, as sent (not normalized).
        name: String,
        /// ALPN protocols offered, in order.
        alpn: Vec<Vec<u8>>,
    },
    /// A complete ClientHello without a (usable) SNI.
    NoSni {
        /// ALPN protocols offered, in order.
        alpn: Vec<Vec<u8>>,
    },
    /// The bytes are not a TLS handshake.
    NotTls,
    /// TLS framing, but not a well-formed ClientHello.
    Malformed,
    /// More bytes are needed; `needed` is the total stream length the records seen so far
    /// announce (at least one more byte). The answer may become final before that many
    /// bytes (a malformed next record header, or records announcing more than the hello
    /// needs); a final answer never changes with more bytes.
    Incomplete {
        /// Total bytes the records seen so far announce.
        needed: usize,
    },
    /// The ClientHello would exceed [`MAX_CLIENT_HELLO_BYTES`].
    TooLarge,
}

impl HelloParse {
    /// The SNI, if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            HelloParse::Sni { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Parses the start of a connection's byte stream.
pub fn parse_client_hello(stream: &[u8]) -> HelloParse {
    // First record header: decide quickly whether this is TLS at all.
    if let Some(&first) = stream.first() {
        if first != CONTENT_HANDSHAKE {
            return HelloParse::NotTls;
        }
    }
    if stream.len() >= 2 && stream[1] != 3 {
        return HelloParse::NotTls;
    }

    // Walk records, collecting handshake fragments until the handshake message is whole.
    let mut offset = 0usize;
    // Almost every ClientHello fits one record: the first fragment needs no vector.
    let mut first: &[u8] = &[];
    let mut more: Vec<&[u8]> = Vec::new();
    let mut records = 0usize;
    let mut body_len = 0usize;
    let mut message_len: Option<usize> = None;
    loop {
        if let Some(total) = message_len {
            if body_len >= total {
                break;
            }
        }
        if records >= MAX_CLIENT_HELLO_RECORDS {
            return HelloParse::Malformed;
        }
        let header_end = offset + RECORD_HEADER;
        if stream.len() < header_end {
            // A partial header: check what there is of it.
            let partial = &stream[offset..];
            if partial.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
                return HelloParse::Malformed;
            }
            if partial.len() >= 2 && partial[1] != 3 {
                return HelloParse::Malformed;
            }
            return incomplete(header_end);
        }
        let header = &stream[offset..header_end];
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            return if offset == 0 {
                HelloParse::NotTls
            } else {
                HelloParse::Malformed
            };
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_BODY {
            return HelloParse::Malformed;
        }
        let record_end = header_end + len;
        if record_end > MAX_CLIENT_HELLO_BYTES {
            return HelloParse::TooLarge;
        }
        let available = &stream[header_end..stream.len().min(record_end)];
        body_len += available.len();
        if records == 0 {
            first = available;
        } else {
            more.push(available);
        }
        records += 1;
        if message_len.is_none() {
            let mut joined_head = [0u8; 4];
            let mut head_len = 0;
            for &byte in std::iter::once(first)
                .chain(more.iter().copied())
                .flatten()
                .take(4)
            {
                joined_head[head_len] = byte;
                head_len += 1;
            }
            if head_len > 0 && joined_head[0] != HANDSHAKE_CLIENT_HELLO {
                return HelloParse::Malformed;
            }
            if head_len == 4 {
                let total = 4
                    + (usize::from(joined_head[1]) << 16
                        | usize::from(joined_head[2]) << 8
                        | usize::from(joined_head[3]));
                // Each record adds a header; a message this long cannot fit in 64 KiB.
                if total + RECORD_HEADER > MAX_CLIENT_HELLO_BYTES {
                    return HelloParse::TooLarge;
                }
                message_len = Some(total);
            }
        }
        if stream.len() < record_end {
            // The record is still arriving; unless it already completes the message,
            // ask for the rest of it.
            if let Some(total) = message_len {
                if body_len >= total {
                    break;
                }
            }
            return incomplete(record_end);
        }
        offset = record_end;
    }

    let Some(total) = message_len else {
        return HelloParse::Malformed;
    };
    let message: Cow<'_, [u8]> = if more.is_empty() {
        Cow::Borrowed(&first[..total])
    } else {
        let mut joined = Vec::with_capacity(total);
        for f in std::iter::once(first).chain(more.iter().copied()) {
            joined.extend_from_slice(f);
        }
        joined.truncate(total);
        Cow::Owned(joined)
    };
    parse_message(&message)
}

fn incomplete(needed: usize) -> HelloParse {
    if needed > MAX_CLIENT_HELLO_BYTES {
        HelloParse::TooLarge
    } else {
        HelloParse::Incomplete { needed }
    }
}

/// Parses one complete handshake message that should be a ClientHello.
///
/// tls-parser is lenient where a damaged ClientHello would turn into one without SNI
/// (and so route to the default): it drops an extensions block whose length overruns the
/// message. That leaves bytes unconsumed, and any unconsumed byte makes the message
/// malformed; so does an extension whose length overruns the block, or a server_name or
/// ALPN extension tls-parser cannot parse. Other extensions are not looked into (as
/// HAProxy and nginx do): their content is the backend's to judge.
fn parse_message(message: &[u8]) -> HelloParse {
    if message.len() < 4 || message[0] != HANDSHAKE_CLIENT_HELLO {
        return HelloParse::Malformed;
    }
    let Ok((rest, hello)) = parse_tls_handshake_client_hello(&message[4..]) else {
        return HelloParse::Malformed;
    };
    if !rest.is_empty() {
        return HelloParse::Malformed;
    }
    let Some(ext_bytes) = hello.ext else {
        return HelloParse::NoSni { alpn: Vec::new() };
    };
    // Walk the extension framing (type, length, data) and parse only the two the router
    // reads: building every extension (key shares, groups, signature algorithms) was a
    // seventh of the instructions of a passthrough connection. The framing is checked
    // end to end as before; the content of the others is left to the backend.
    let mut sni: Option<String> = None;
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    let mut rest = ext_bytes;
    while !rest.is_empty() {
        let [t0, t1, l0, l1, ..] = *rest else {
            return HelloParse::Malformed;
        };
        let end = 4 + usize::from(u16::from_be_bytes([l0, l1]));
        if rest.len() < end {
            return HelloParse::Malformed;
        }
        let (one, next) = rest.split_at(end);
        rest = next;
        if !matches!(u16::from_be_bytes([t0, t1]), EXT_SERVER_NAME | EXT_ALPN) {
            continue;
        }
        let Ok((_, ext)) = parse_tls_client_hello_extension(one) else {
            return HelloParse::Malformed;
        };
        match ext {
            TlsExtension::SNI(names) => {
                for (kind, raw) in names {
                    if kind == SNIType::HostName {
                        match valid_host_name(raw) {
                            Some(name) => sni = Some(name),
                            None => return HelloParse::Malformed,
                        }
                        break;
                    }
                }
            }
            TlsExtension::ALPN(protocols) => {
                alpn = protocols.into_iter().map(<[u8]>::to_vec).collect();
            }
            _ => {}
        }
    }
    match sni {
        Some(name) => HelloParse::Sni { name, alpn },
        None => HelloParse::NoSni { alpn },
    }
}

/// An SNI host name is printable ASCII without spaces (RFC 6066: a DNS host name).
fn valid_host_name(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    if !raw.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(raw).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_incomplete() {
        assert_eq!(
            parse_client_hello(&[]),
            HelloParse::Incomplete { needed: 5 }
        );
    }

    #[test]
    fn http_is_not_tls() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n"),
            HelloParse::NotTls
        );
        assert_eq!(parse_client_hello(b"G"), HelloParse::NotTls);
        assert_eq!(parse_client_hello(&[22, 9]), HelloParse::NotTls);
    }

    #[test]
    fn handshake_that_is_not_client_hello_is_malformed() {
        // server_hello (2) in a handshake record
        let bytes = [22, 3, 1, 0, 4, 2, 0, 0, 0];
        assert_eq!(parse_client_hello(&bytes), HelloParse::Malformed);
    }

    #[test]
    fn oversized_message_is_too_large() {
        // ClientHello claiming 70,000 bytes.
        let bytes = [22, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70];
        assert_eq!(parse_client_hello(&bytes), HelloParse::TooLarge);
    }

    #[test]
    fn zero_length_record_is_malformed() {
        assert_eq!(parse_client_hello(&[22, 3, 1, 0, 0]), HelloParse::Malformed);
    }
}
