//! The in-memory response cache of a route (`cache:`): looks requests up, answers
//! fresh hits with `Age` and `X-Cache: HIT`, revalidates stale entries that carry a
//! validator with a conditional request, collapses concurrent misses of one key into
//! one backend request, and stores what `cache_policy` allows by copying the body
//! while it streams to the first client (`Tee`). The entries live in `cache_store`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::{
    HeaderName, HeaderValue, AGE, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use prometheus::IntCounter;
use tokio::sync::watch;

use super::cache_policy::{self as policy, CacheControl};
use super::cache_store::{Entry, Fill, Store, Tee};
use crate::config::CacheSpec;
use crate::http::client::{empty_body, full_body, ProxyBody};
use crate::metrics::Metrics;

/// How long a request waits for a concurrent miss of its key before going to the
/// backend itself (nginx's `proxy_cache_lock_timeout` default).
const COLLAPSE_WAIT: Duration = Duration::from_secs(5);

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The response cache of one route.
#[derive(Debug)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    spec: CacheSpec,
    store: Arc<Mutex<Store>>,
    /// Keys being fetched by a leader; waiters watch its channel close.
    inflight: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
    outcomes: Outcomes,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("spec", &self.spec).finish()
    }
}

struct Outcomes {
    hit: IntCounter,
    miss: IntCounter,
    revalidated: IntCounter,
    collapsed: IntCounter,
    bypass: IntCounter,
}

/// What a cacheable request is looked up as.
struct Lookup {
    primary: String,
    head: bool,
    authorized: bool,
    cc: CacheControl,
}

impl Lookup {
    /// `None` when the request bypasses the cache: not GET/HEAD, an upgrade, a body,
    /// `Cache-Control: no-store`, or no host.
    fn of<B>(request: &Request<B>, scheme: &str) -> Option<Lookup> {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        let headers = request.headers();
        let has_body = headers.contains_key(TRANSFER_ENCODING)
            || headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        let cc = CacheControl::from_headers(headers);
        if has_body || headers.contains_key(UPGRADE) || cc.no_store {
            return None;
        }
        Some(Lookup {
            primary: primary_key(request, scheme)?,
            head,
            authorized: policy::authorized(headers),
            cc,
        })
    }
}

/// Scheme + host (lower-case, no port) + path + query, like nginx's default
/// `$scheme$proxy_host$request_uri`.
fn primary_key<B>(request: &Request<B>, scheme: &str) -> Option<String> {
    let host = crate::http::headers::request_host(request.uri(), request.headers())?;
    let pq = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    Some(format!("{scheme}://{host}{pq}"))
}

enum Join {
    Lead(Lead),
    Wait(watch::Receiver<()>),
    Alone,
}

/// The first miss of a key: while it lives, other misses of the key wait. Dropping it
/// (stored, not storable, failed, or the client went away) wakes them.
struct Lead {
    inner: Arc<Inner>,
    key: Arc<str>,
    _done: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inner.inflight.lock() {
            map.remove(&self.key);
        }
    }
}

impl ResponseCache {
    /// A cache per `spec` for routing table `route`.
    pub fn new(spec: &CacheSpec, route: &str, metrics: &Metrics) -> Self {
        let outcome = |o: &str| metrics.cache_requests_total.with_label_values(&[route, o]);
        let store = Store::new(
            spec.max_bytes,
            metrics.cache_bytes.with_label_values(&[route]),
            metrics.cache_evictions_total.with_label_values(&[route]),
        );
        ResponseCache {
            inner: Arc::new(Inner {
                spec: *spec,
                store: Arc::new(Mutex::new(store)),
                inflight: Mutex::new(HashMap::new()),
                outcomes: Outcomes {
                    hit: outcome("hit"),
                    miss: outcome("miss"),
                    revalidated: outcome("revalidated"),
                    collapsed: outcome("collapsed"),
                    bypass: outcome("bypass"),
                },
            }),
        }
    }

    /// Answers `request` (which arrived over `scheme`, `http` or `https`: entries are
    /// kept apart by it) from the cache, or through `fetch` (the backend), storing what
    /// may be stored.
    pub async fn serve<B, F, Fut>(
        &self,
        request: Request<B>,
        scheme: &str,
        fetch: F,
    ) -> Response<ProxyBody>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let inner = &self.inner;
        let Some(req) = Lookup::of(&request, scheme) else {
            inner.outcomes.bypass.inc();
            let invalidates = !request.method().is_safe();
            let primary = primary_key(&request, scheme);
            let response = fetch(request).await;
            // A successful unsafe request invalidates the stored target (RFC 9111 §4.4).
            let status = response.status();
            if invalidates && (status.is_success() || status.is_redirection()) {
                if let (Some(primary), Ok(mut store)) = (primary, inner.store.lock()) {
                    store.invalidate(&primary);
                }
            }
            return inner.mark(response, "MISS");
        };
        let (mut key, found) = inner.lookup(&req, request.headers());
        if let Some(entry) = found.as_ref().filter(|e| inner.usable(e, &req)) {
            inner.outcomes.hit.inc();
            return inner.answer(entry, req.head, request.headers());
        }
        if req.cc.only_if_cached {
            inner.outcomes.miss.inc();
            let mut response = Response::new(empty_body());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return inner.mark(response, "MISS");
        }
        let mut stale = found;
        let mut guard = None;
        // Credentials never wait for, nor lead, anyone else's fetch.
        if !req.authorized {
            match inner.join(&key, !req.head) {
                Join::Lead(lead) => guard = Some(lead),
                Join::Alone => {}
                Join::Wait(mut done) => {
                    let _ = tokio::time::timeout(COLLAPSE_WAIT, done.changed()).await;
                    // The Vary list may be known now: the key can change.
                    let (again, found) = inner.lookup(&req, request.headers());
                    key = again;
                    if let Some(entry) = found.as_ref().filter(|e| inner.usable(e, &req)) {
                        inner.outcomes.collapsed.inc();
                        return inner.answer(entry, req.head, request.headers());
                    }
                    stale = found.or(stale);
                }
            }
        }
        let client_headers = request.headers().clone();
        let had_entry = stale.is_some();
        let stale = stale.filter(|e| policy::has_validator(&e.headers));
        let mut request = request;
        if let Some(entry) = &stale {
            let headers = request.headers_mut();
            headers.remove(IF_NONE_MATCH);
            headers.remove(IF_MODIFIED_SINCE);
            if let Some(etag) = entry.headers.get(ETAG) {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = entry.headers.get(LAST_MODIFIED) {
                headers.insert(IF_MODIFIED_SINCE, lm.clone());
            }
        }
        let response = fetch(request).await;
        if let Some(entry) = stale {
            if response.status() == StatusCode::NOT_MODIFIED {
                let entry = inner.refresh(&req, &client_headers, &key, &entry, response.headers());
                inner.outcomes.revalidated.inc();
                drop(guard);
                return inner.answer(&entry, req.head, &client_headers);
            }
        }
        // A new response replaces (or drops) what the key held.
        if had_entry {
            if let Ok(mut store) = inner.store.lock() {
                store.remove(&key);
            }
        }
        match req.authorized {
            true => inner.outcomes.bypass.inc(),
            false => inner.outcomes.miss.inc(),
        }
        if req.head {
            return inner.mark(response, "MISS");
        }
        Arc::clone(inner).keep(response, req, client_headers, guard)
    }
}

impl Inner {
    fn lookup(&self, req: &Lookup, headers: &HeaderMap) -> (Arc<str>, Option<Arc<Entry>>) {
        let Ok(mut store) = self.store.lock() else {
            return (Arc::from(req.primary.as_str()), None);
        };
        let (key, entry) = store.lookup(&req.primary, headers);
        (key, entry.filter(|e| !req.authorized || e.shared_with_auth))
    }

    /// Whether `entry` may answer `req` without asking the backend.
    fn usable(&self, entry: &Entry, req: &Lookup) -> bool {
        if entry.no_cache || req.cc.no_cache {
            return false;
        }
        let age = policy::current_age(entry.initial_age, entry.stored_at.elapsed());
        policy::is_fresh(entry.lifetime, age)
            && req
                .cc
                .max_age
                .is_none_or(|max| age < Duration::from_secs(max))
    }

    fn join(self: &Arc<Self>, key: &Arc<str>, may_lead: bool) -> Join {
        let Ok(mut map) = self.inflight.lock() else {
            return Join::Alone;
        };
        if let Some(done) = map.get(key) {
            return Join::Wait(done.clone());
        }
        if !may_lead {
            return Join::Alone;
        }
        let (tx, rx) = watch::channel(());
        map.insert(Arc::clone(key), rx);
        Join::Lead(Lead {
            inner: Arc::clone(self),
            key: Arc::clone(key),
            _done: tx,
        })
    }

    /// The stored response for a request with `client` headers: 304 when the request's
    /// own validators match, the body left out for HEAD.
    fn answer(&self, entry: &Entry, head: bool, client: &HeaderMap) -> Response<ProxyBody> {
        let not_modified =
            entry.status == StatusCode::OK && policy::not_modified(client, &entry.headers);
        let body = if head || not_modified {
            empty_body()
        } else {
            full_body(entry.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            entry.status
        };
        *response.headers_mut() = entry.headers.clone();
        let age = policy::current_age(entry.initial_age, entry.stored_at.elapsed());
        let headers = response.headers_mut();
        headers.insert(AGE, HeaderValue::from(age.as_secs()));
        if !not_modified && entry.status != StatusCode::NO_CONTENT {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        }
        self.mark(response, "HIT")
    }

    fn mark(&self, mut response: Response<ProxyBody>, value: &'static str) -> Response<ProxyBody> {
        if self.spec.x_cache_header {
            response
                .headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(value));
        }
        response
    }

    /// Stores a refreshed copy of `entry` with the headers of a 304 merged in (RFC 9111
    /// §4.3.4), or drops it when they no longer allow storing.
    fn refresh(
        &self,
        req: &Lookup,
        client: &HeaderMap,
        key: &str,
        entry: &Entry,
        update: &HeaderMap,
    ) -> Arc<Entry> {
        let mut headers = entry.headers.clone();
        for name in update.keys() {
            let ours = *name == X_CACHE && self.spec.x_cache_header;
            if *name != CONTENT_LENGTH && *name != TRANSFER_ENCODING && !ours {
                headers.remove(name);
                for value in update.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let verdict = policy::storable(entry.status, &headers, req.authorized, SystemTime::now());
        headers.remove(AGE);
        let mut fresh = Entry {
            status: entry.status,
            headers,
            body: entry.body.clone(),
            stored_at: Instant::now(),
            initial_age: policy::age_value(update),
            lifetime: Duration::ZERO,
            no_cache: true,
            shared_with_auth: entry.shared_with_auth,
        };
        let Ok(mut store) = self.store.lock() else {
            return Arc::new(fresh);
        };
        match verdict {
            Ok(s) => {
                (fresh.lifetime, fresh.no_cache) = (s.lifetime, s.no_cache);
                fresh.shared_with_auth = s.shared_with_auth;
                let fresh = Arc::new(fresh);
                store.insert(&req.primary, &s.vary, client, Arc::clone(&fresh));
                fresh
            }
            Err(_) => {
                store.remove(key);
                Arc::new(fresh)
            }
        }
    }

    /// Passes a fetched response on, copying its body into the cache when it may be
    /// stored and fits.
    fn keep(
        self: Arc<Self>,
        response: Response<ProxyBody>,
        req: Lookup,
        client: HeaderMap,
        guard: Option<Lead>,
    ) -> Response<ProxyBody> {
        let received = Instant::now();
        let verdict = policy::storable(
            response.status(),
            response.headers(),
            req.authorized,
            SystemTime::now(),
        );
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let max = self.spec.max_object_bytes;
        let storable = match verdict {
            Ok(s) if declared.is_none_or(|len| len <= max) => s,
            _ => return self.mark(response, "MISS"),
        };
        let response = self.mark(response, "MISS");
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers.clone();
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING, AGE] {
            headers.remove(name);
        }
        if self.spec.x_cache_header {
            headers.remove(X_CACHE);
        }
        let capacity = declared.unwrap_or(0).min(max).min(64 * 1024) as usize;
        let store = Arc::clone(&self.store);
        let entry = Entry {
            status: parts.status,
            headers,
            body: Bytes::new(),
            stored_at: received,
            initial_age: storable.initial_age,
            lifetime: storable.lifetime,
            no_cache: storable.no_cache,
            shared_with_auth: storable.shared_with_auth,
        };
        let fill = Fill {
            store,
            max_object_bytes: max,
            primary: req.primary,
            vary: storable.vary,
            request: client,
            entry,
            guard,
        };
        Response::from_parts(parts, ProxyBody::new(Tee::new(body, fill, capacity)))
    }
}
