//! The memory of the response cache: entries by key, the `Vary` list of each primary
//! key (host + path + query), least-recently-used order and the byte budget (plain
//! synchronous data behind the cache's mutex, keeping `tollgate_cache_bytes` and
//! `tollgate_cache_evictions_total` of its route), and `Tee`, the body wrapper that
//! fills an entry while the response streams to its first client.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::HeaderName;
use hyper::{HeaderMap, StatusCode};
use prometheus::{IntCounter, IntGauge};

use crate::http::client::{BoxError, ProxyBody};

/// Bytes counted per entry besides its body, headers and key (bookkeeping).
const ENTRY_OVERHEAD: u64 = 64;

/// One stored response. Immutable: a refresh stores a new one.
#[derive(Debug)]
pub struct Entry {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, without framing (`Content-Length`, `Transfer-Encoding`) and `Age`.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it was stored or last revalidated.
    pub stored_at: Instant,
    /// The `Age` it came with.
    pub initial_age: Duration,
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// Revalidate on every use.
    pub no_cache: bool,
    /// May answer requests with `Authorization`.
    pub shared_with_auth: bool,
}

impl Entry {
    /// Bytes it is counted for under `key`: body, headers, key and a fixed overhead.
    pub fn size(&self, key: &str) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        (self.body.len() + headers + key.len()) as u64 + ENTRY_OVERHEAD
    }
}

struct Slot {
    entry: Arc<Entry>,
    primary: Arc<str>,
    size: u64,
    tick: u64,
}

struct Primary {
    vary: Arc<[HeaderName]>,
    keys: HashSet<Arc<str>>,
}

/// Entries within a byte budget, least recently used evicted first.
pub struct Store {
    max_bytes: u64,
    total: u64,
    next_tick: u64,
    slots: HashMap<Arc<str>, Slot>,
    order: BTreeMap<u64, Arc<str>>,
    primaries: HashMap<Arc<str>, Primary>,
    bytes: IntGauge,
    evictions: IntCounter,
}

/// The full key of a request: its primary key plus the values of the `vary` headers.
pub fn full_key(primary: &str, vary: &[HeaderName], request: &HeaderMap) -> Arc<str> {
    let mut key = String::from(primary);
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        let mut values = request.get_all(name).iter().peekable();
        if values.peek().is_none() {
            key.push('!');
        }
        for (i, v) in values.enumerate() {
            key.push_str(if i == 0 { ":" } else { ", " });
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    key.into()
}

impl Store {
    /// An empty store of `max_bytes`, reporting to `bytes` and `evictions`.
    pub fn new(max_bytes: u64, bytes: IntGauge, evictions: IntCounter) -> Self {
        Store {
            max_bytes,
            total: 0,
            next_tick: 0,
            slots: HashMap::new(),
            order: BTreeMap::new(),
            primaries: HashMap::new(),
            bytes,
            evictions,
        }
    }

    /// Bytes held.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The full key of a request for `primary` (with the Vary list last stored for it)
    /// and the entry under it, marked as recently used.
    pub fn lookup(&mut self, primary: &str, request: &HeaderMap) -> (Arc<str>, Option<Arc<Entry>>) {
        let vary = self.primaries.get(primary).map(|p| Arc::clone(&p.vary));
        let key = full_key(primary, vary.as_deref().unwrap_or(&[]), request);
        let tick = self.tick();
        let entry = self.slots.get_mut(&key).map(|slot| {
            self.order.remove(&slot.tick);
            slot.tick = tick;
            self.order.insert(tick, Arc::clone(&key));
            Arc::clone(&slot.entry)
        });
        (key, entry)
    }

    /// Stores `entry` for `primary` varying on `vary`, replacing what the key held and,
    /// when the Vary list changed, every variant of `primary`. Evicts least recently
    /// used entries to fit; an entry larger than the whole budget is not stored.
    pub fn insert(
        &mut self,
        primary: &str,
        vary: &[HeaderName],
        request: &HeaderMap,
        entry: Arc<Entry>,
    ) {
        let key = full_key(primary, vary, request);
        let size = entry.size(&key);
        if size > self.max_bytes {
            return;
        }
        let same_vary = self.primaries.get(primary).map(|p| &*p.vary == vary);
        match same_vary {
            Some(true) => self.remove(&key),
            Some(false) => self.invalidate(primary),
            None => {}
        }
        while self.total + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove(&oldest);
            self.evictions.inc();
        }
        let primary: Arc<str> = match self.primaries.get_key_value(primary) {
            Some((k, _)) => Arc::clone(k),
            None => primary.into(),
        };
        self.primaries
            .entry(Arc::clone(&primary))
            .or_insert_with(|| Primary {
                vary: vary.into(),
                keys: HashSet::new(),
            })
            .keys
            .insert(Arc::clone(&key));
        let tick = self.tick();
        self.order.insert(tick, Arc::clone(&key));
        self.slots.insert(
            key,
            Slot {
                entry,
                primary,
                size,
                tick,
            },
        );
        self.total += size;
        self.bytes.add(size as i64);
    }

    /// Removes the entry under `key`, if any.
    pub fn remove(&mut self, key: &str) {
        let Some(slot) = self.slots.remove(key) else {
            return;
        };
        self.order.remove(&slot.tick);
        self.total -= slot.size;
        self.bytes.sub(slot.size as i64);
        if let Some(p) = self.primaries.get_mut(&slot.primary) {
            p.keys.remove(key);
            if p.keys.is_empty() {
                self.primaries.remove(&slot.primary);
            }
        }
    }

    /// Removes every variant stored for `primary`.
    pub fn invalidate(&mut self, primary: &str) {
        let keys: Vec<Arc<str>> = self
            .primaries
            .get(primary)
            .map(|p| p.keys.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            self.remove(&key);
        }
        self.primaries.remove(primary);
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A reload drops the old table's cache: its bytes leave the shared gauge.
        self.bytes.sub(self.total as i64);
    }
}

/// A response to store once its body, copied while it streams, is complete; `guard`
/// is dropped right after the insert (or when nothing is stored).
pub struct Fill<G> {
    /// Where it goes.
    pub store: Arc<Mutex<Store>>,
    /// Largest body copied.
    pub max_object_bytes: u64,
    /// Its primary key.
    pub primary: String,
    /// The request headers it varies on.
    pub vary: Vec<HeaderName>,
    /// The request's headers (the values of `vary`).
    pub request: HeaderMap,
    /// The entry, its body still empty.
    pub entry: Entry,
    /// Held until stored or abandoned.
    pub guard: G,
}

/// A response body passed through unchanged while a copy (up to `max_object_bytes`)
/// is kept; stored when the body ends complete. An error, trailers, an oversized body
/// or a drop before the end store nothing (and release the guard).
pub struct Tee<G> {
    inner: ProxyBody,
    copy: BytesMut,
    fill: Option<Fill<G>>,
}

impl<G> Tee<G> {
    /// Tees `inner` into `fill`, reserving `capacity` bytes for the copy.
    pub fn new(inner: ProxyBody, fill: Fill<G>, capacity: usize) -> Self {
        Tee {
            inner,
            copy: BytesMut::with_capacity(capacity),
            fill: Some(fill),
        }
    }

    fn finish(&mut self) {
        let Some(mut fill) = self.fill.take() else {
            return;
        };
        fill.entry.body = std::mem::take(&mut self.copy).freeze();
        let store = Arc::clone(&fill.store);
        if let Ok(mut store) = store.lock() {
            let entry = Arc::new(fill.entry);
            store.insert(&fill.primary, &fill.vary, &fill.request, entry);
        };
        // The rest of `fill` (its guard) drops here, after the insert.
    }

    fn abandon(&mut self) {
        self.fill = None;
        self.copy = BytesMut::new();
    }
}

impl<G: Unpin> Body for Tee<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(fill) = &this.fill {
                    match frame.data_ref() {
                        Some(data)
                            if (this.copy.len() + data.len()) as u64 <= fill.max_object_bytes =>
                        {
                            this.copy.extend_from_slice(data)
                        }
                        _ => this.abandon(),
                    }
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.abandon(),
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> Drop for Tee<G> {
    fn drop(&mut self) {
        // An empty body may never be polled.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn entry(body: usize) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            no_cache: false,
            shared_with_auth: false,
        })
    }

    #[test]
    fn lru_evicts_within_budget_and_tracks_bytes() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let evictions = IntCounter::new("e", "e").unwrap();
        let none = HeaderMap::new();
        {
            let mut store = Store::new(3000, gauge.clone(), evictions.clone());
            store.insert("a", &[], &none, entry(900));
            store.insert("b", &[], &none, entry(900));
            store.insert("c", &[], &none, entry(900));
            assert!(
                store.lookup("a", &none).1.is_some(),
                "a used: b is now the oldest"
            );
            store.insert("d", &[], &none, entry(900));
            assert!(store.lookup("b", &none).1.is_none());
            assert!(store.lookup("a", &none).1.is_some());
            assert_eq!(evictions.get(), 1);
            assert!(store.total() <= 3000);
            assert_eq!(gauge.get() as u64, store.total());
            store.insert("huge", &[], &none, entry(5000));
            assert!(store.lookup("huge", &none).1.is_none());
        }
        assert_eq!(gauge.get(), 0, "dropped store leaves the gauge");
    }

    #[test]
    fn vary_keys_variants_and_a_new_vary_list_replaces_them() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let mut store = Store::new(1 << 20, gauge, IntCounter::new("e", "e").unwrap());
        let lang = [HeaderName::from_static("accept-language")];
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        store.insert("p", &lang, &fr, entry(10));
        store.insert("p", &lang, &de, entry(20));
        assert_eq!(store.lookup("p", &fr).1.map(|e| e.body.len()), Some(10));
        assert_eq!(store.lookup("p", &de).1.map(|e| e.body.len()), Some(20));
        assert!(store.lookup("p", &HeaderMap::new()).1.is_none());
        store.insert("p", &[], &fr, entry(30));
        assert_eq!(store.lookup("p", &de).1.map(|e| e.body.len()), Some(30));
        assert_eq!(store.slots.len(), 1);
        store.invalidate("p");
        assert_eq!(store.total(), 0);
    }
}
