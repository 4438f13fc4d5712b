//! Header rules of the L7 module: framing checks on requests (conflicting
//! Content-Length / Transfer-Encoding → 400), hop-by-hop headers stripped both ways
//! (and any header named in `Connection`), and the forwarding headers added to each
//! request: X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host, Forwarded
//! (`headers/forwarding.rs`).

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

mod forwarding;

pub use forwarding::{add_forwarding, forwarding_lines, ClientIdentity};

/// Where each field of a parsed head sits in the head's buffer: (name start, name
/// length, value start, value length). Up to 32 fields stay on the stack, and only the
/// fields present are written (a zeroed array of `MAX_FIELDS` would be 1.6 KiB per parse).
pub type FieldSpans = smallvec::SmallVec<[(u32, u32, u32, u32); 32]>;

/// Where each parsed field's name and value sit in the head `base` points at, as
/// (name start, name length, value start, value length): the fields are then sliced out
/// of one frozen buffer. A head is at most 64 KiB, so the offsets fit.
pub fn field_spans(base: *const u8, fields: &[httparse::Header<'_>]) -> FieldSpans {
    let base = base as usize;
    fields
        .iter()
        .map(|field| {
            (
                (field.name.as_ptr() as usize - base) as u32,
                field.name.len() as u32,
                (field.value.as_ptr() as usize - base) as u32,
                field.value.len() as u32,
            )
        })
        .collect()
}

/// Whether `name` describes one hop only (RFC 9110 §7.6.1), legacy ones included.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// What a field is to the proxy, told from its name's bytes in any case: the head parser
/// that writes a backend's fields through as they came (`exchange/raw_fields.rs`) needs
/// this without building a `HeaderName` per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    /// Another hop-by-hop field (`is_hop_by_hop`).
    HopByHop,
    Date,
    /// An end-to-end field the proxy does not look at.
    Other,
}

/// The kind of the field named `name` (any case), as `is_hop_by_hop` and
/// `FramingFields::note` see it.
pub fn field_kind(name: &[u8]) -> FieldKind {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        2 if is("te") => FieldKind::HopByHop,
        4 if is("date") => FieldKind::Date,
        7 if is("trailer") || is("upgrade") => FieldKind::HopByHop,
        10 if is("connection") => FieldKind::Connection,
        10 if is("keep-alive") => FieldKind::KeepAlive,
        14 if is("content-length") => FieldKind::ContentLength,
        16 if is("proxy-connection") => FieldKind::HopByHop,
        17 if is("transfer-encoding") => FieldKind::TransferEncoding,
        18 if is("proxy-authenticate") => FieldKind::HopByHop,
        19 if is("proxy-authorization") => FieldKind::HopByHop,
        _ => FieldKind::Other,
    }
}

/// Whether a request's framing headers are ambiguous: both Content-Length and
/// Transfer-Encoding, or Content-Length values that disagree. Such a request is the
/// raw material of request smuggling and is refused with 400.
pub fn has_conflicting_framing(headers: &HeaderMap) -> bool {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return false;
    };
    if has_te {
        return true;
    }
    // Comma-separated lists inside one value count as several values too.
    let mut seen: Option<&[u8]> = None;
    for value in std::iter::once(first).chain(lengths) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            match seen {
                None => seen = Some(part),
                Some(prev) if prev == part => {}
                Some(_) => return true,
            }
        }
    }
    false
}

/// The tokens of Connection fields that matter to the connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Another token: it names a field that is hop-by-hop for this message.
    pub names_fields: bool,
}

impl Tokens {
    /// Notes the tokens of one Connection field value.
    pub fn note(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() {
                self.names_fields = true;
            }
        }
    }
}

/// The last non-empty token of a comma-separated list.
fn last_token(value: &[u8]) -> Option<&[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .rfind(|t| !t.is_empty())
}

/// What a message's framing and connection depend on, noted while its head's fields go
/// into a map (comparing a known name is cheap; looking the field up again would hash it).
/// Shared by the client's request head and the backend's response head.
#[derive(Debug, Default, Clone, Copy)]
pub struct FramingFields {
    /// The Content-Length: `Err` when its values are not one number.
    pub length: Option<Result<u64, ()>>,
    /// A Transfer-Encoding was present: whether its final coding is chunked.
    pub coding: Option<bool>,
    /// The tokens of the Connection fields.
    pub tokens: Tokens,
}

impl FramingFields {
    /// Notes the field `name: value`; `false` when `name` is none of the three.
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        let kind = if *name == CONTENT_LENGTH {
            FieldKind::ContentLength
        } else if *name == TRANSFER_ENCODING {
            FieldKind::TransferEncoding
        } else if *name == CONNECTION {
            FieldKind::Connection
        } else {
            return false;
        };
        self.note_kind(kind, value)
    }

    /// Notes a field of kind `kind`; `false` when it is none of the three.
    pub fn note_kind(&mut self, kind: FieldKind, value: &[u8]) -> bool {
        match kind {
            FieldKind::ContentLength => {
                self.length = Some(match (self.length, parse_content_length(value)) {
                    (None, Some(n)) => Ok(n),
                    (Some(Ok(seen)), Some(n)) if seen == n => Ok(n),
                    _ => Err(()),
                });
            }
            FieldKind::TransferEncoding => {
                // The final coding of the last field is the message's final coding.
                if let Some(last) = last_token(value) {
                    self.coding = Some(last.eq_ignore_ascii_case(b"chunked"));
                } else if self.coding.is_none() {
                    self.coding = Some(false);
                }
            }
            FieldKind::Connection => self.tokens.note(value),
            _ => return false,
        }
        true
    }
}

/// A Content-Length value: one number, or a list of equal numbers (RFC 9110 §8.6).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &b in item {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        if length.is_some_and(|seen| seen != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

/// Whether `Connection` lists `token` (case-insensitive).
pub fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop headers and every header `Connection` names. When `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` are kept (a WebSocket handshake passes through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The usual message has none: one pass over the names, nothing removed or allocated.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    // Headers `Connection` names beyond the hop-by-hop ones removed below (rare:
    // `Connection: keep-alive` or `close` name nothing else, and nothing is built then).
    let mut named: smallvec::SmallVec<[HeaderName; 2]> = smallvec::SmallVec::new();
    for value in headers.get_all(CONNECTION) {
        for token in value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
        {
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if !is_hop_by_hop(&name) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(&name);
    }
    // Remove each hop-by-hop name present, one at a time, without collecting them.
    while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
        headers.remove(&name);
    }
    if let Some(value) = upgrade {
        headers.insert(UPGRADE, value);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's host without port, lower-cased: from the URI authority
/// (absolute-form) or the Host header.
pub fn request_host<'a>(
    uri: &'a hyper::Uri,
    headers: &'a HeaderMap,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(h) = uri.host() {
        return Some(crate::route::normalized_host(h));
    }
    let raw = headers.get(HOST)?.to_str().ok()?;
    let host = strip_port(raw);
    if host.is_empty() {
        return None;
    }
    Some(crate::route::normalized_host(host))
}

/// Whether a Host header value is a plausible `host[:port]`: a registered name, an IPv4
/// address or a bracketed IPv6 address, and an optional numeric port. Anything else
/// (spaces, slashes, `@`, control bytes, several colons outside brackets) is refused
/// with 400 before it reaches routing or a redirect's Location, as nginx does.
pub fn valid_host_header(raw: &[u8]) -> bool {
    if raw.is_empty() || raw.len() > 255 {
        return false;
    }
    let (host, port) = if raw[0] == b'[' {
        let Some(end) = raw.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &raw[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        (&raw[..=end], &raw[end + 1..])
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(i) => (&raw[..i], &raw[i..]),
            None => (raw, &raw[raw.len()..]),
        }
    };
    let port_ok = port.is_empty()
        || (port.len() > 1
            && port.len() <= 6
            && port[0] == b':'
            && port[1..].iter().all(u8::is_ascii_digit));
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b)));
    host_ok && port_ok
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The `timeout=` of a `Keep-Alive` response field's value, in seconds.
pub fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    let value = std::str::from_utf8(value).ok()?;
    value.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests;
