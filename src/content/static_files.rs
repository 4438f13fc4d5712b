//! Static file serving for a route with `static: { root, index }` (docs/config.md):
//! maps the request path under the root (the route's prefix stripped, like nginx's
//! `alias`), never outside it (dot segments, encoded slashes and symlinks out of the
//! root answer 404), and answers GET/HEAD with `Content-Type`, `Last-Modified`, `ETag`,
//! conditional 304s and single byte ranges (206/416), streaming the file in chunks.
//! The pure parsing lives in `parse`; bytes sent count in `tollgate_static_bytes_total`.

mod open;
mod parse;

use std::fs::Metadata;
use std::io::{self, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::IntCounter;
use std::io::{Read, Seek};
use thiserror::Error;

use self::open::{OpenError, RootDir};
use self::parse::RangeRequest;
use crate::config::StaticSpec;
use crate::http::client::{empty_body, full_body, BoxError, ProxyBody};
use crate::http::proxy::plain_response;
use crate::metrics::Metrics;

/// Bytes read from the file per body chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Files up to this size are read whole when opened and sent from memory.
const SMALL_FILE_BYTES: u64 = 64 * 1024;

/// A directory served by a route.
#[derive(Debug)]
pub struct StaticRoot {
    root: RootDir,
    index: String,
    prefix: String,
    route: String,
    bytes: IntCounter,
}

/// Why a file body ended before its length.
#[derive(Debug, Error)]
enum BodyError {
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Read(#[source] io::Error),
    /// The file got shorter while it was sent.
    #[error("the file ended {0} bytes early")]
    Short(u64),
}

/// The request headers that matter here, copied out before any await.
struct Conditions {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    range: Option<Vec<u8>>,
    if_range: Option<String>,
}

impl Conditions {
    fn of(headers: &HeaderMap) -> Self {
        let text = |name: HeaderName| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        let mut ranges = headers.get_all(RANGE).iter();
        // Several Range fields are as malformed as a bad one: ignored.
        let range = match (ranges.next(), ranges.next()) {
            (Some(one), None) => Some(one.as_bytes().to_vec()),
            _ => None,
        };
        Conditions {
            if_none_match: text(IF_NONE_MATCH),
            if_modified_since: headers
                .get(IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            range,
            if_range: headers
                .get(IF_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

impl StaticRoot {
    /// Serves `spec.root` for the paths under `path_prefix` of routing table `route`.
    pub fn new(spec: &StaticSpec, path_prefix: &str, route: &str, metrics: &Metrics) -> Self {
        StaticRoot {
            root: RootDir::new(&spec.root),
            index: spec.index.clone(),
            prefix: path_prefix.to_string(),
            route: route.to_string(),
            bytes: metrics.static_bytes_total.with_label_values(&[route]),
        }
    }

    /// Answers `request` (its body is ignored): the file, a 301 to add a directory's
    /// trailing `/`, 304, 206, 404 (missing or refused), 403, 405, 416 or 500.
    pub async fn serve<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut response =
                    plain_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        let path = request.uri().path().to_string();
        let query = request.uri().query().map(str::to_string);
        let conditions = Conditions::of(request.headers());
        let rel = match parse::map_path(&path, &self.prefix) {
            Ok(rel) => rel,
            Err(reason) => {
                tracing::debug!(route = %self.route, path = %path, %reason, "static path refused");
                return not_found();
            }
        };
        let mut target = PathBuf::new();
        for segment in &rel.segments {
            target.push(std::ffi::OsStr::from_bytes(segment));
        }
        let opened = match self.open(target.clone(), &path) {
            Ok(opened) => opened,
            Err(response) => return response,
        };
        let name: Vec<u8> = rel.segments.last().cloned().unwrap_or_default();
        if opened.meta.is_dir() {
            drop(opened);
            if !rel.trailing_slash {
                return redirect_to_dir(&path, query.as_deref());
            }
            let index = target.join(&self.index);
            let opened = match self.open(index, &path) {
                Ok(opened) => opened,
                Err(response) => return response,
            };
            if !opened.meta.is_file() {
                return not_found();
            }
            return self.file_response(opened, self.index.as_bytes(), head, &conditions, path);
        }
        if !opened.meta.is_file() || rel.trailing_slash {
            return not_found();
        }
        self.file_response(opened, &name, head, &conditions, path)
    }

    /// Opens `target` (relative to the root) if it resolves under the root, or the
    /// error response to send. Opening and reading a small file happen on the worker
    /// thread, like nginx without `aio`: from the page cache that is a few microseconds,
    /// while a hand-off to the blocking pool and back costs more than the read.
    // The error is the answer itself, built once and moved out: no cost to box away.
    #[allow(clippy::result_large_err)]
    fn open(&self, target: PathBuf, path: &str) -> Result<Opened, Response<ProxyBody>> {
        match self
            .root
            .open(&target)
            .and_then(|file| read_small(file).map_err(OpenError::Io))
        {
            Ok(opened) => Ok(opened),
            Err(OpenError::Outside) => {
                tracing::debug!(route = %self.route, path = %path, "static path resolves outside the root");
                Err(not_found())
            }
            Err(OpenError::Io(error)) => Err(self.io_error(&error, path)),
        }
    }

    /// 404 for what does not exist, 403 for what may not be read, else 500 (logged).
    fn io_error(&self, error: &io::Error, path: &str) -> Response<ProxyBody> {
        match io_status(error) {
            StatusCode::NOT_FOUND => not_found(),
            StatusCode::FORBIDDEN => plain_response(StatusCode::FORBIDDEN, "forbidden"),
            status => {
                tracing::warn!(route = %self.route, path = %path, %error, "static file I/O error");
                plain_response(status, "internal error")
            }
        }
    }

    /// The answer for an opened regular file: 304, 416, 206 or 200.
    fn file_response(
        &self,
        opened: Opened,
        name: &[u8],
        head: bool,
        conditions: &Conditions,
        path: String,
    ) -> Response<ProxyBody> {
        let Opened {
            file,
            meta,
            content,
        } = opened;
        let size = meta.len();
        let mtime = meta.modified().ok().and_then(parse::epoch_secs);
        let etag = mtime.map(|m| parse::etag_for(m, size));
        let last_modified = mtime.map(parse::http_date);
        let validators = |response: &mut Response<ProxyBody>| {
            let headers = response.headers_mut();
            if let Some(v) = etag.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(ETAG, v);
            }
            if let Some(v) = last_modified
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert(LAST_MODIFIED, v);
            }
        };

        let not_modified = match (&conditions.if_none_match, &conditions.if_modified_since) {
            (Some(list), _) => {
                list.trim() == "*" || etag.as_deref().is_some_and(|e| parse::none_match(list, e))
            }
            (None, Some(since)) => match (parse::http_date_secs(since), mtime) {
                (Some(since), Some(mtime)) => mtime <= since,
                _ => false,
            },
            (None, None) => false,
        };
        if not_modified {
            let mut response = Response::new(empty_body());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            validators(&mut response);
            return response;
        }

        // Range applies to GET only; If-Range that no longer matches means the whole file.
        let range = match &conditions.range {
            Some(value) if !head => {
                let current = conditions
                    .if_range
                    .as_deref()
                    .is_none_or(|v| parse::if_range_matches(v, etag.as_deref(), mtime));
                if current {
                    parse::parse_range(value, size)
                } else {
                    RangeRequest::Full
                }
            }
            _ => RangeRequest::Full,
        };
        let (status, start, len) = match range {
            RangeRequest::Full => (StatusCode::OK, 0, size),
            RangeRequest::Partial { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => {
                let mut response =
                    plain_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                set(&mut response, CONTENT_RANGE, &format!("bytes */{size}"));
                validators(&mut response);
                return response;
            }
        };

        let body = if head || len == 0 {
            empty_body()
        } else if let Some(content) = content {
            self.bytes.inc_by(len);
            full_body(content.slice(start as usize..(start + len) as usize))
        } else {
            let mut file = file;
            if start > 0 {
                if let Err(error) = file.seek(SeekFrom::Start(start)) {
                    return self.io_error(&error, &path);
                }
            }
            FileBody {
                file,
                remaining: len,
                counter: self.bytes.clone(),
                path,
                route: self.route.clone(),
            }
            .boxed_unsync()
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        set(&mut response, CONTENT_TYPE, &parse::content_type(name));
        set(&mut response, CONTENT_LENGTH, &len.to_string());
        set(&mut response, ACCEPT_RANGES, "bytes");
        if status == StatusCode::PARTIAL_CONTENT {
            let end = start + len - 1;
            set(
                &mut response,
                CONTENT_RANGE,
                &format!("bytes {start}-{end}/{size}"),
            );
        }
        validators(&mut response);
        response
    }
}

/// The file's metadata and, for a regular file of at most [`SMALL_FILE_BYTES`], its
/// whole content: its answer then needs no further read.
fn read_small(file: std::fs::File) -> io::Result<Opened> {
    let meta = file.metadata()?;
    let mut content = None;
    if meta.is_file() && meta.len() <= SMALL_FILE_BYTES {
        use std::io::Read;
        let mut buf = Vec::with_capacity(meta.len() as usize);
        (&file).take(meta.len()).read_to_end(&mut buf)?;
        // A file that changed size meanwhile is streamed (and checked) instead.
        if buf.len() as u64 == meta.len() {
            content = Some(Bytes::from(buf));
        }
    }
    Ok(Opened {
        file,
        meta,
        content,
    })
}

/// An opened file under the root.
struct Opened {
    file: std::fs::File,
    meta: Metadata,
    /// The whole content, for a regular file of at most [`SMALL_FILE_BYTES`].
    content: Option<Bytes>,
}

/// The status for a filesystem error: 404 when the path does not lead to a file
/// (missing, a file used as a directory, a symlink loop, a name too long), 403 when
/// permission is denied, 500 otherwise.
fn io_status(error: &io::Error) -> StatusCode {
    let missing = matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(
        error.raw_os_error(),
        Some(libc::ELOOP | libc::ENAMETOOLONG | libc::ENOTDIR | libc::ENOENT)
    );
    if missing {
        StatusCode::NOT_FOUND
    } else if error.kind() == io::ErrorKind::PermissionDenied {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

fn set(response: &mut Response<ProxyBody>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn not_found() -> Response<ProxyBody> {
    plain_response(StatusCode::NOT_FOUND, "not found")
}

/// 301 to the directory's path with `/` appended (and the query kept), like nginx.
fn redirect_to_dir(path: &str, query: Option<&str>) -> Response<ProxyBody> {
    let mut location = parse::collapse_slashes(path);
    location.push('/');
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let mut response = plain_response(StatusCode::MOVED_PERMANENTLY, "moved permanently");
    set(&mut response, LOCATION, &location);
    response
}

/// A file (or a byte range of it) streamed in chunks; ends with an error, never short,
/// if the file cannot be read to the promised length.
struct FileBody {
    file: std::fs::File,
    remaining: u64,
    counter: IntCounter,
    path: String,
    route: String,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    /// Reads the next chunk on the worker thread (page-cache reads, like nginx without
    /// `aio`); hyper asks for it only once the previous one was written.
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(CHUNK_BYTES as u64) as usize;
        let mut chunk = vec![0u8; want];
        let error = loop {
            match this.file.read(&mut chunk) {
                Ok(0) => break BodyError::Short(this.remaining),
                Ok(n) => {
                    chunk.truncate(n);
                    this.remaining -= n as u64;
                    this.counter.inc_by(n as u64);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break BodyError::Read(e),
            }
        };
        this.remaining = 0;
        tracing::warn!(route = %this.route, path = %this.path, %error, "static file body cut");
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_errors_map_to_statuses() {
        let os = io::Error::from_raw_os_error;
        for (errno, want) in [
            (libc::ENOENT, StatusCode::NOT_FOUND),
            (libc::ENOTDIR, StatusCode::NOT_FOUND),
            (libc::ELOOP, StatusCode::NOT_FOUND),
            (libc::ENAMETOOLONG, StatusCode::NOT_FOUND),
            (libc::EACCES, StatusCode::FORBIDDEN),
            (libc::EPERM, StatusCode::FORBIDDEN),
            (libc::EIO, StatusCode::INTERNAL_SERVER_ERROR),
            (libc::EMFILE, StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            assert_eq!(io_status(&os(errno)), want, "errno {errno}");
        }
    }

    #[test]
    fn opening_beneath_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::fs::write(root.join("file"), b"yes").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("file", root.join("in")).unwrap();
        // An absolute symlink that stays inside (openat2 refuses it; the portable check
        // lets it through).
        std::os::unix::fs::symlink(root.join("file"), root.join("abs-in")).unwrap();
        let held = RootDir::new(&root);
        let rel = std::path::Path::new;
        for name in ["file", "in", "abs-in"] {
            assert!(held.open(rel(name)).is_ok(), "{name}");
        }
        for name in ["out", "../secret"] {
            assert!(
                matches!(held.open(rel(name)), Err(OpenError::Outside)),
                "{name}"
            );
            assert!(matches!(
                open::open_checked(&root, &root.join(name)),
                Err(OpenError::Outside)
            ));
        }
        assert!(matches!(
            held.open(rel("missing")),
            Err(OpenError::Io(e)) if io_status(&e) == StatusCode::NOT_FOUND
        ));
    }
}
