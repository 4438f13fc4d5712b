//! The forwarding fields tollgate adds to each request it sends a backend:
//! X-Forwarded-For (appended to the client's list), X-Forwarded-Proto and
//! X-Forwarded-Host (set), and a `Forwarded` element (RFC 7239, appended). A request whose
//! client sent none of them gets the four as prebuilt lines written after its own fields
//! (`forwarding_lines`); one that carries any goes through the map (`add_forwarding`).

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What a connection's client adds to the forwarding headers of each of its requests,
/// formatted once per connection: its address as an X-Forwarded-For element and as a
/// Forwarded `for=` node. The last `Forwarded` value built is kept with the Host and
/// proto it was built for: a keep-alive connection usually repeats both.
#[derive(Debug)]
pub struct ClientIdentity {
    xff: HeaderValue,
    text: String,
    forwarded_for: String,
    last_forwarded: std::sync::Mutex<Option<LastForwarded>>,
}

#[derive(Debug)]
struct LastForwarded {
    /// A copy, never a clone: a clone would share (and keep alive) the buffer the request
    /// head was read into, and the connection would then allocate a new one for every
    /// request.
    host: Option<HeaderValue>,
    proto: &'static str,
    value: HeaderValue,
    /// All four fields as lines (`forwarding_lines`), built when first asked for.
    lines: Option<Bytes>,
}

impl ClientIdentity {
    /// The identity of `client`.
    pub fn new(client: IpAddr) -> Self {
        let text = client.to_string();
        let forwarded_for = match client {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        let xff = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"));
        ClientIdentity {
            xff,
            text,
            forwarded_for,
            last_forwarded: std::sync::Mutex::new(None),
        }
    }

    /// `use_it` on the cached `Forwarded` element for `proto` and `host`, built (and the
    /// previous one dropped) when the last one was for another pair. `None` when the
    /// element is not a valid field value or the cache's lock is poisoned.
    fn with_last<R>(
        &self,
        proto: &'static str,
        host: Option<&HeaderValue>,
        use_it: impl FnOnce(&mut LastForwarded) -> R,
    ) -> Option<R> {
        let Ok(mut last) = self.last_forwarded.lock() else {
            return None;
        };
        let cached = last
            .as_ref()
            .is_some_and(|seen| seen.proto == proto && seen.host.as_ref() == host);
        if !cached {
            // This hop's element alone: the request's own list is not part of it.
            let value = forwarded_value(&HeaderMap::new(), self, proto, host)?;
            *last = Some(LastForwarded {
                host: host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok()),
                proto,
                value,
                lines: None,
            });
        }
        last.as_mut().map(use_it)
    }
}

/// Adds the forwarding headers for a request from `client` over `proto`
/// (`http`/`https`). `host` is the request's Host as the client sent it.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: &ClientIdentity,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // X-Forwarded-For: append to the existing list (several lines join into one).
    match previous_list(headers, &X_FORWARDED_FOR, client.text.len()) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client.xff.clone());
        }
        Some(mut list) => {
            list.push_str(&client.text);
            if let Ok(v) = HeaderValue::from_str(&list) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // Forwarded (RFC 7239): append an element for this hop.
    if !headers.contains_key(FORWARDED) {
        if let Some(value) = client.with_last(proto, host, |last| last.value.clone()) {
            headers.insert(FORWARDED, value);
            return;
        }
    }
    if let Some(value) = forwarded_value(headers, client, proto, host) {
        headers.insert(FORWARDED, value);
    }
}

/// The `Forwarded` value: the request's own list, then this hop's element.
fn forwarded_value(
    headers: &HeaderMap,
    client: &ClientIdentity,
    proto: &'static str,
    host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let host_text = host.and_then(|h| h.to_str().ok());
    let element_len =
        client.forwarded_for.len() + 7 + proto.len() + host_text.map_or(0, |h| h.len() + 8);
    let mut forwarded = previous_list(headers, &FORWARDED, element_len)
        .unwrap_or_else(|| String::with_capacity(element_len));
    forwarded.push_str(&client.forwarded_for);
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(h) = host_text {
        if h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            forwarded.push_str(";host=");
            forwarded.push_str(h);
        } else {
            forwarded.push_str(&format!(";host={h:?}"));
        }
    }
    HeaderValue::from_str(&forwarded).ok()
}

/// The values of a list header joined with `, `, followed by `, ` and room for `extra`
/// more bytes; `None` when the header is absent or blank (or not text).
fn previous_list(headers: &HeaderMap, name: &HeaderName, extra: usize) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let list = out.get_or_insert_with(|| String::with_capacity(text.len() + 2 + extra));
        list.push_str(text);
        list.push_str(", ");
    }
    out
}

/// Whether `name` is one of the forwarding fields tollgate writes.
fn is_forwarding_field(name: &HeaderName) -> bool {
    name == FORWARDED
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
}

/// The forwarding fields of a request from `client` over `proto` whose fields
/// (`headers`) include none of them, as lines to write after the request's own: what
/// `add_forwarding` would insert, without a map insert each. Built once per Host and
/// proto, and kept with the `Forwarded` value. `None` when the request carries one of
/// them (or a value would not be a valid field): `add_forwarding` takes it then.
pub fn forwarding_lines(
    headers: &HeaderMap,
    client: &ClientIdentity,
    proto: &'static str,
    host: Option<&HeaderValue>,
) -> Option<Bytes> {
    if headers.keys().any(is_forwarding_field) {
        return None;
    }
    client.with_last(proto, host, |last| {
        let LastForwarded { value, lines, .. } = last;
        lines
            .get_or_insert_with(|| encode_lines(client, proto, host, value))
            .clone()
    })
}

/// The four forwarding fields as CRLF-ended lines, `forwarded` being the `Forwarded`
/// value.
fn encode_lines(
    client: &ClientIdentity,
    proto: &'static str,
    host: Option<&HeaderValue>,
    forwarded: &HeaderValue,
) -> Bytes {
    let host_len = host.map_or(0, |h| h.len() + 20);
    let mut out = BytesMut::with_capacity(80 + client.xff.len() + host_len + forwarded.len());
    let mut line = |name: &[u8], value: &[u8]| {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    };
    line(b"x-forwarded-for", client.xff.as_bytes());
    line(b"x-forwarded-proto", proto.as_bytes());
    if let Some(host) = host {
        line(b"x-forwarded-host", host.as_bytes());
    }
    line(b"forwarded", forwarded.as_bytes());
    out.freeze()
}
