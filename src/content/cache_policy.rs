//! What the response cache may store and for how long (RFC 9111): `Cache-Control`
//! parsing for requests and responses, the storability verdict of a response, its
//! freshness lifetime (`s-maxage`, then `max-age`, then `Expires` − `Date`), `Age`
//! arithmetic, `Vary` names and validators. Pure functions; `cache.rs` applies them.

use std::time::{Duration, SystemTime};

use hyper::header::{
    HeaderName, AUTHORIZATION, CACHE_CONTROL, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, PRAGMA, SET_COOKIE, VARY,
};
use hyper::{HeaderMap, StatusCode};

/// Delta-seconds beyond this are taken as this (RFC 9111 §1.2.2).
const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// The directives of `Cache-Control` the cache acts on (request or response).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names: the whole response is treated so).
    pub no_cache: bool,
    /// `private` (with or without field names: the whole response is treated so).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `max-age` in seconds (first occurrence; an invalid value is 0).
    pub max_age: Option<u64>,
    /// `s-maxage` in seconds (first occurrence; an invalid value is 0).
    pub s_maxage: Option<u64>,
    /// `only-if-cached` (requests).
    pub only_if_cached: bool,
}

impl CacheControl {
    /// The directives of every `Cache-Control` line of `headers`. A request with no
    /// `Cache-Control` but `Pragma: no-cache` gets `no-cache` (RFC 7234 §5.4).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            if let Ok(text) = value.to_str() {
                cc.add(text);
            }
        }
        if !any && has_token(headers, &PRAGMA, "no-cache") {
            cc.no_cache = true;
        }
        cc
    }

    /// Parses one `Cache-Control` value (directives separated by commas outside quotes).
    pub fn parse(text: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.add(text);
        cc
    }

    fn add(&mut self, text: &str) {
        for directive in split_outside_quotes(text) {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = || {
                value.map_or(0, |v| match v.parse::<u64>() {
                    Ok(n) => n.min(MAX_DELTA_SECONDS),
                    // All digits but too large: the maximum; anything else: stale.
                    Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        MAX_DELTA_SECONDS
                    }
                    Err(_) => 0,
                })
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "only-if-cached" => self.only_if_cached = true,
                "max-age" if self.max_age.is_none() => self.max_age = Some(seconds()),
                "s-maxage" if self.s_maxage.is_none() => self.s_maxage = Some(seconds()),
                _ => {}
            }
        }
    }
}

/// Splits on commas that are not inside a quoted string; empty parts are skipped.
fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Whether header `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Statuses stored (those RFC 9110 §15.1 calls heuristically cacheable, less 206: the
/// cache keeps whole representations only). Heuristic freshness itself is not used.
pub fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// A status the cache does not keep.
    Status,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// It sets a cookie.
    SetCookie,
    /// Answer to a request with `Authorization`, without `public` or `s-maxage`.
    Authorization,
    /// `Vary: *`.
    VaryStar,
    /// No explicit freshness (`max-age`, `s-maxage`, `Expires`) and nothing to
    /// revalidate with.
    NoFreshness,
}

/// How a storable response is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// How long it is fresh from its generation (its `Age` counts against it).
    pub lifetime: Duration,
    /// The `Age` the backend sent.
    pub initial_age: Duration,
    /// Revalidate on every use (`no-cache`).
    pub no_cache: bool,
    /// It may answer requests with `Authorization` (`public` or `s-maxage`).
    pub shared_with_auth: bool,
    /// The request headers it varies on, lower-case, sorted, deduplicated.
    pub vary: Vec<HeaderName>,
}

/// Whether a response (`status`, `headers`) to a request (with `Authorization` when
/// `authorized`) may be stored, received at `now`, and how.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    now: SystemTime,
) -> Result<Storable, NotStorable> {
    if !cacheable_status(status) {
        return Err(NotStorable::Status);
    }
    let cc = CacheControl::from_headers(headers);
    if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let shared_with_auth = cc.public || cc.s_maxage.is_some();
    if authorized && !shared_with_auth {
        return Err(NotStorable::Authorization);
    }
    let vary = vary_names(headers).ok_or(NotStorable::VaryStar)?;
    let lifetime = freshness_lifetime(&cc, headers, now);
    let validated = has_validator(headers);
    let worth = match lifetime {
        Some(l) if !l.is_zero() && !cc.no_cache => true,
        // Stored to be revalidated on every use: only worth it with a validator.
        Some(_) => validated,
        None => cc.no_cache && validated,
    };
    if !worth {
        return Err(NotStorable::NoFreshness);
    }
    Ok(Storable {
        lifetime: lifetime.unwrap_or(Duration::ZERO),
        initial_age: age_value(headers),
        no_cache: cc.no_cache,
        shared_with_auth,
        vary,
    })
}

/// The freshness lifetime: `s-maxage`, then `max-age`, then `Expires` − `Date` (the
/// receipt time `now` when `Date` is missing; an invalid `Expires` is already stale).
/// `None` without any of them (no heuristic freshness).
pub fn freshness_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers.get(DATE).and_then(http_date).unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The `Age` header in seconds (0 when missing or invalid).
pub fn age_value(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get(hyper::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(secs.min(MAX_DELTA_SECONDS))
}

/// The current age of a stored response: the `Age` it came with plus the time it has
/// been held (`resident`).
pub fn current_age(initial_age: Duration, resident: Duration) -> Duration {
    initial_age.saturating_add(resident)
}

/// Whether a response of `lifetime` is fresh at `age`.
pub fn is_fresh(lifetime: Duration, age: Duration) -> bool {
    age < lifetime
}

/// The header names of `Vary`, lower-case, sorted, deduplicated; `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for token in headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if token == "*" {
            return None;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Whether the response carries a validator (`ETag` or `Last-Modified`).
pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// Whether the request carries credentials.
pub fn authorized(headers: &HeaderMap) -> bool {
    headers.contains_key(AUTHORIZATION)
}

/// An HTTP-date header value as a time.
pub fn http_date(value: &hyper::header::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// Whether `If-None-Match` (a list or `*`) names entity tag `etag`, weak comparison.
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    crate::content::etag::none_match(if_none_match, etag)
}

/// Whether a request's own `If-None-Match` (or, without it, `If-Modified-Since`)
/// matches the stored response `stored`: it may be answered 304.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let etag = stored.get(ETAG).and_then(|v| v.to_str().ok());
        return etag.is_some_and(|etag| etag_matches(inm, etag));
    }
    match (
        request.get(IF_MODIFIED_SINCE).and_then(http_date),
        stored.get(LAST_MODIFIED).and_then(http_date),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, AGE};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const NOW: fn() -> SystemTime =
        || httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();

    #[test]
    fn parses_directives_case_quotes_and_duplicates() {
        let cc = CacheControl::parse(
            r#"Public, MAX-AGE="60", private="set-cookie, x", s-maxage=30, max-age=5, no-cache"#,
        );
        assert!(cc.public && cc.private && cc.no_cache && !cc.no_store);
        assert_eq!(
            cc.max_age,
            Some(60),
            "first occurrence wins, quotes stripped"
        );
        assert_eq!(cc.s_maxage, Some(30));
        assert_eq!(CacheControl::parse("max-age=abc").max_age, Some(0));
        assert_eq!(
            CacheControl::parse("max-age=99999999999999999999999").max_age,
            Some(MAX_DELTA_SECONDS)
        );
        assert!(CacheControl::parse(",,no-store ,").no_store);
        assert!(CacheControl::parse("only-if-cached").only_if_cached);
        // Several lines add up; Pragma counts only without Cache-Control.
        let h = headers(&[("cache-control", "public"), ("cache-control", "max-age=7")]);
        let cc = CacheControl::from_headers(&h);
        assert!(cc.public && cc.max_age == Some(7));
        assert!(CacheControl::from_headers(&headers(&[("pragma", "no-cache")])).no_cache);
        let both = headers(&[("pragma", "no-cache"), ("cache-control", "max-age=1")]);
        assert!(!CacheControl::from_headers(&both).no_cache);
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let h = headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:59:37 GMT"),
        ]);
        let life = |cc: &str| freshness_lifetime(&CacheControl::parse(cc), &h, NOW());
        assert_eq!(
            life("max-age=10, s-maxage=20"),
            Some(Duration::from_secs(20))
        );
        assert_eq!(life("max-age=10"), Some(Duration::from_secs(10)));
        assert_eq!(life(""), Some(Duration::from_secs(600)));
        // Expires in the past or invalid: stale at once; no Date: the receipt time.
        let past = headers(&[("expires", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(
            freshness_lifetime(&CacheControl::default(), &past, NOW()),
            Some(Duration::ZERO)
        );
        let bad = headers(&[("expires", "0")]);
        assert_eq!(
            freshness_lifetime(&CacheControl::default(), &bad, NOW()),
            Some(Duration::ZERO)
        );
        let no_date = headers(&[("expires", "Sun, 06 Nov 1994 08:50:37 GMT")]);
        assert_eq!(
            freshness_lifetime(&CacheControl::default(), &no_date, NOW()),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            freshness_lifetime(&CacheControl::default(), &HeaderMap::new(), NOW()),
            None
        );
    }

    #[test]
    fn age_arithmetic() {
        let h = headers(&[("age", "15")]);
        assert_eq!(age_value(&h), Duration::from_secs(15));
        assert_eq!(age_value(&headers(&[("age", "x")])), Duration::ZERO);
        let age = current_age(age_value(&h), Duration::from_secs(5));
        assert_eq!(age, Duration::from_secs(20));
        assert!(is_fresh(Duration::from_secs(21), age));
        assert!(!is_fresh(Duration::from_secs(20), age));
        assert!(h.contains_key(AGE));
    }

    #[test]
    fn storability_verdicts() {
        let ok = StatusCode::OK;
        let verdict =
            |pairs: &[(&str, &str)], auth: bool| storable(ok, &headers(pairs), auth, NOW());
        assert!(verdict(&[("cache-control", "max-age=60")], false).is_ok());
        assert_eq!(
            verdict(&[("cache-control", "max-age=60, private")], false),
            Err(NotStorable::Private)
        );
        assert_eq!(
            verdict(&[("cache-control", "no-store, max-age=60")], false),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            verdict(
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                false
            ),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            verdict(&[("cache-control", "max-age=60")], true),
            Err(NotStorable::Authorization)
        );
        let shared = verdict(&[("cache-control", "max-age=60, public")], true).unwrap();
        assert!(shared.shared_with_auth);
        assert!(verdict(&[("cache-control", "s-maxage=60")], true).is_ok());
        assert_eq!(verdict(&[], false), Err(NotStorable::NoFreshness));
        assert_eq!(
            verdict(&[("cache-control", "max-age=60"), ("vary", "*")], false),
            Err(NotStorable::VaryStar)
        );
        // no-cache / max-age=0: kept only with a validator, to revalidate.
        assert_eq!(
            verdict(&[("cache-control", "no-cache")], false),
            Err(NotStorable::NoFreshness)
        );
        let nc = verdict(&[("cache-control", "no-cache"), ("etag", "\"1\"")], false).unwrap();
        assert!(nc.no_cache);
        assert!(verdict(&[("cache-control", "max-age=0"), ("etag", "\"1\"")], false).is_ok());
        assert_eq!(
            storable(
                StatusCode::PARTIAL_CONTENT,
                &headers(&[("cache-control", "max-age=9")]),
                false,
                NOW()
            ),
            Err(NotStorable::Status)
        );
        let v = verdict(
            &[
                ("cache-control", "max-age=1"),
                ("vary", "Accept-Language, accept-encoding"),
                ("vary", "accept-language"),
            ],
            false,
        )
        .unwrap();
        let names: Vec<&str> = v.vary.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept-encoding", "accept-language"]);
    }

    #[test]
    fn client_validators_against_the_stored_response() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        let later = [("if-modified-since", "Sun, 06 Nov 1994 09:00:00 GMT")];
        assert!(not_modified(&headers(&later), &stored));
        let earlier = [("if-modified-since", "Sun, 06 Nov 1994 08:00:00 GMT")];
        assert!(!not_modified(&headers(&earlier), &stored));
        // If-None-Match decides alone when present.
        let both = [later[0], ("if-none-match", "\"v2\"")];
        assert!(!not_modified(&headers(&both), &stored));
        assert!(!not_modified(&HeaderMap::new(), &stored));
    }

    #[test]
    fn etag_comparison_is_weak() {
        assert!(etag_matches(r#""a", W/"b""#, r#""b""#));
        assert!(etag_matches("*", r#""x""#));
        assert!(!etag_matches(r#""a,b""#, r#""a""#));
    }
}
