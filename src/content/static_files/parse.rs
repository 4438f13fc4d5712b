//! The pure parsing behind static files, kept apart to be tested on its own: the
//! request path mapped to segments under the root (percent-decoding and every refusal),
//! the `Range` header, entity tags (`If-None-Match`, `If-Range`) and `Content-Type`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Why a request path cannot name anything under the root (all answered 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path does not continue the route's prefix at a `/` (prefix `/static`, path
    /// `/staticfoo`), or does not start with the prefix at all.
    #[error("the path does not continue the route's prefix at a /")]
    OutsidePrefix,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// A segment that is `.` or `..` once decoded.
    #[error("a . or .. segment")]
    DotSegment,
    /// A NUL byte, raw or encoded.
    #[error("a NUL byte")]
    Nul,
    /// A backslash, raw or encoded.
    #[error("a backslash")]
    Backslash,
    /// `%2f` inside a segment.
    #[error("an encoded slash")]
    EncodedSlash,
}

/// A request path mapped under the root: the decoded segments (never empty, `.`, `..`,
/// and free of `/`, `\` and NUL) and whether the path ended with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Decoded path segments, in order; empty segments (`//`) are dropped.
    pub segments: Vec<Vec<u8>>,
    /// The request path ended with `/` (asks for a directory).
    pub trailing_slash: bool,
}

/// Maps `path` (as received, percent-encoded) under a route's `prefix`, like nginx's
/// `alias`: the prefix is stripped and the rest, decoded once, names a path below the
/// root. A prefix not ending with `/` must be followed by `/` or the end of the path.
pub fn map_path(path: &str, prefix: &str) -> Result<RelPath, PathError> {
    let rest = path.strip_prefix(prefix).ok_or(PathError::OutsidePrefix)?;
    if !prefix.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
        return Err(PathError::OutsidePrefix);
    }
    let mut segments = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode(raw.as_bytes())?;
        if segment.contains(&0) {
            return Err(PathError::Nul);
        }
        if segment.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        if segment.contains(&b'/') {
            return Err(PathError::EncodedSlash);
        }
        if segment == b"." || segment == b".." {
            return Err(PathError::DotSegment);
        }
        segments.push(segment);
    }
    Ok(RelPath {
        segments,
        trailing_slash: path.ends_with('/'),
    })
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes once (`%252e` becomes the three bytes `%2e`).
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_digit);
            let lo = raw.get(i + 2).copied().and_then(hex_digit);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(PathError::BadEscape),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `/` runs collapsed to one, so that a redirect `Location` built from the request path
/// can never start with `//` (which a browser reads as another host).
pub fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole file with 200: the header is malformed, uses another unit, lists
    /// several ranges, or the file is empty.
    Full,
    /// Serve bytes `start..=end` with 206 (`end` is within the file).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Answer 416: the one range lies past the end of the file.
    Unsatisfiable,
}

/// Digits only (no sign, no space), saturating at `u64::MAX`; `None` if not digits.
fn parse_pos(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Reads one `Range` header value for a file of `size` bytes: `bytes=a-b`, `bytes=a-`
/// or `bytes=-n` (RFC 9110 §14.1.2). A last position past the end is clipped; a suffix
/// longer than the file means the whole file.
pub fn parse_range(value: &[u8], size: u64) -> RangeRequest {
    let Ok(value) = std::str::from_utf8(value) else {
        return RangeRequest::Full;
    };
    let Some((unit, set)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') || size == 0 {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    if first.is_empty() {
        return match parse_pos(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        };
    }
    let Some(start) = parse_pos(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        size - 1
    } else {
        match parse_pos(last) {
            Some(end) if end >= start => end.min(size - 1),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

/// The entity tag of a file, built like nginx's: `"<mtime seconds hex>-<size hex>"`.
pub fn etag_for(mtime_secs: u64, size: u64) -> String {
    format!("\"{mtime_secs:x}-{size:x}\"")
}

pub use crate::content::etag::none_match;

/// Whether an `If-Range` value still designates the file: a strong entity tag equal to
/// `etag`, or an HTTP date equal to its modification time (whole seconds).
pub fn if_range_matches(value: &str, etag: Option<&str>, mtime_secs: Option<u64>) -> bool {
    let value = value.trim();
    if value.starts_with("W/") {
        return false;
    }
    if value.starts_with('"') {
        return etag.is_some_and(|etag| value == etag);
    }
    match (http_date_secs(value), mtime_secs) {
        (Some(date), Some(mtime)) => date == mtime,
        _ => false,
    }
}

/// An HTTP date as seconds since the epoch; `None` if invalid or before 1970.
pub fn http_date_secs(value: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// `Last-Modified` text for a modification time in whole seconds.
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whole seconds since the epoch of a file time (`None` before 1970).
pub fn epoch_secs(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// `Content-Type` for a file name, from its extension: text types (and JavaScript) with
/// `; charset=utf-8`, `application/octet-stream` when unknown.
pub fn content_type(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    match mime_guess::from_path(name.as_ref()).first() {
        None => "application/octet-stream".to_string(),
        Some(mime) => {
            let charset = mime.type_() == mime_guess::mime::TEXT
                || mime.essence_str() == "application/javascript";
            if charset && mime.get_param(mime_guess::mime::CHARSET).is_none() {
                format!("{}; charset=utf-8", mime.essence_str())
            } else {
                mime.essence_str().to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str, prefix: &str) -> Result<Vec<String>, PathError> {
        map_path(path, prefix).map(|rel| {
            rel.segments
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }

    #[test]
    fn paths_map_under_the_prefix() {
        assert_eq!(
            segs("/static/css/a.css", "/static").unwrap(),
            ["css", "a.css"]
        );
        assert_eq!(
            segs("/static/css/a.css", "/static/").unwrap(),
            ["css", "a.css"]
        );
        assert_eq!(segs("/a.css", "/").unwrap(), ["a.css"]);
        assert_eq!(segs("/static", "/static").unwrap(), Vec::<String>::new());
        assert_eq!(segs("/static//x//y", "/static").unwrap(), ["x", "y"]);
        assert_eq!(segs("/static/a%20b.txt", "/static").unwrap(), ["a b.txt"]);
        assert_eq!(segs("/static/caf%C3%A9", "/static").unwrap(), ["café"]);
        // Decoded once only: a literal file name, not a parent.
        assert_eq!(segs("/static/%252e%252e", "/static").unwrap(), ["%2e%2e"]);
        assert_eq!(segs("/static/...", "/static").unwrap(), ["..."]);
        assert_eq!(segs("/static/.hidden", "/static").unwrap(), [".hidden"]);
        let rel = map_path("/static/dir/", "/static").unwrap();
        assert!(rel.trailing_slash);
        assert!(!map_path("/static/dir", "/static").unwrap().trailing_slash);
    }

    #[test]
    fn paths_refused() {
        use PathError::*;
        let cases = [
            ("/staticfoo", OutsidePrefix),
            ("/other/x", OutsidePrefix),
            ("/static/..", DotSegment),
            ("/static/../etc/passwd", DotSegment),
            ("/static/a/./b", DotSegment),
            ("/static/%2e%2e/secret", DotSegment),
            ("/static/%2E%2e/", DotSegment),
            ("/static/.%2e", DotSegment),
            ("/static/%2e", DotSegment),
            ("/static/..%2fsecret", EncodedSlash),
            ("/static/a%2Fb", EncodedSlash),
            ("/static/a%00.txt", Nul),
            ("/static/a\\b", Backslash),
            ("/static/..%5csecret", Backslash),
            ("/static/%zz", BadEscape),
            ("/static/%2", BadEscape),
            ("/static/%", BadEscape),
        ];
        for (path, want) in cases {
            assert_eq!(map_path(path, "/static"), Err(want), "{path}");
        }
    }

    #[test]
    fn every_prefix_of_a_path_is_handled() {
        for input in ["/static/%2e%2e/%252e/a%20b/..%2f/x", "/static/%C3%A9%2"] {
            for end in 0..=input.len() {
                if let Some(path) = input.get(..end) {
                    if let Ok(rel) = map_path(path, "/static") {
                        for s in &rel.segments {
                            assert!(s != b".." && s != b"." && !s.is_empty(), "{path}");
                            assert!(!s.contains(&b'/') && !s.contains(&0), "{path}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn slashes_collapse() {
        assert_eq!(collapse_slashes("//evil.com"), "/evil.com");
        assert_eq!(collapse_slashes("/a///b/"), "/a/b/");
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let p = |start, end| Partial { start, end };
        let cases: &[(&str, RangeRequest)] = &[
            ("bytes=0-499", p(0, 499)),
            ("bytes=500-", p(500, 999)),
            ("bytes=-200", p(800, 999)),
            ("bytes=-5000", p(0, 999)),
            ("bytes=0-5000", p(0, 999)),
            ("bytes=999-999", p(999, 999)),
            ("BYTES = 1-2", p(1, 2)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-2000", Unsatisfiable),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=0-1,5-6", Full),
            ("bytes=5-1", Full),
            ("bytes=a-b", Full),
            ("bytes=+1-2", Full),
            ("bytes=1", Full),
            ("bytes=", Full),
            ("bytes=-", Full),
            ("items=0-1", Full),
            ("bytes 0-1", Full),
            ("", Full),
        ];
        for (value, want) in cases {
            assert_eq!(parse_range(value.as_bytes(), 1000), *want, "{value}");
        }
        assert_eq!(parse_range(b"bytes=0-1", 0), Full);
        assert_eq!(parse_range(b"bytes=-1", 0), Full);
        assert_eq!(parse_range(b"bytes=0-\xff", 10), Full);
    }

    #[test]
    fn every_prefix_of_a_range_is_handled() {
        for input in ["bytes=123-456", "bytes=-77", "bytes=900-", "bytes=1-2, 3-4"] {
            for end in 0..=input.len() {
                let value = &input.as_bytes()[..end];
                match parse_range(value, 1000) {
                    RangeRequest::Partial { start, end } => {
                        assert!(start <= end && end < 1000, "{value:?}")
                    }
                    RangeRequest::Full | RangeRequest::Unsatisfiable => {}
                }
            }
        }
    }

    #[test]
    fn entity_tag_lists() {
        let etag = etag_for(0x5f00_0000, 0x1a4);
        assert_eq!(etag, "\"5f000000-1a4\"");
        assert!(none_match(&etag, &etag));
        assert!(none_match("*", &etag));
        assert!(none_match("W/\"5f000000-1a4\"", &etag));
        assert!(none_match("\"x\", W/\"5f000000-1a4\" ,\"y\"", &etag));
        assert!(!none_match("\"x\", \"y\"", &etag));
        assert!(!none_match("5f000000-1a4", &etag));
        assert!(!none_match("\"5f000000-1a4", &etag));
        assert!(!none_match("\"a\" junk, \"5f000000-1a4\"", &etag));
        for end in 0..=etag.len() {
            let part = &etag[..end];
            assert_eq!(none_match(part, &etag), end == etag.len(), "{part}");
        }
    }

    #[test]
    fn if_range_is_strong() {
        let etag = etag_for(100, 10);
        let date = http_date(100);
        assert!(if_range_matches(&etag, Some(&etag), Some(100)));
        assert!(!if_range_matches(
            &format!("W/{etag}"),
            Some(&etag),
            Some(100)
        ));
        assert!(!if_range_matches("\"other\"", Some(&etag), Some(100)));
        assert!(if_range_matches(&date, Some(&etag), Some(100)));
        assert!(!if_range_matches(&http_date(99), Some(&etag), Some(100)));
        assert!(!if_range_matches("yesterday", Some(&etag), Some(100)));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(b"a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type(b"index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type(b"a.png"), "image/png");
        assert_eq!(content_type(b"a.json"), "application/json");
        assert_eq!(content_type(b"a.unknownext"), "application/octet-stream");
        assert_eq!(content_type(b"README"), "application/octet-stream");
    }
}
