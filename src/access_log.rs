//! The access log: one line per HTTP request and per L4 connection (time, listener,
//! mode, client, SNI, route, pool, backend, status or outcome, bytes each way,
//! duration), as JSON or text, to stderr or a file. Lines go through a bounded channel
//! to one writer task, so a slow disk never blocks a connection (a full channel drops
//! the line and counts it). With `access_log: off` there is no sink and callers skip
//! all formatting.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs.
    Text,
}

/// One finished exchange.
#[derive(Debug, Default)]
pub struct Record<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// passthrough | terminate | http | tcp | rejected.
    pub mode: &'a str,
    /// Client address.
    pub client: Option<std::net::SocketAddr>,
    /// SNI, when TLS.
    pub sni: Option<&'a str>,
    /// Routing table (HTTP).
    pub route: Option<&'a str>,
    /// Pool.
    pub pool: Option<&'a str>,
    /// Backend that served it.
    pub backend: Option<&'a str>,
    /// HTTP method and path (HTTP).
    pub method: Option<&'a str>,
    /// Path (HTTP).
    pub path: Option<&'a str>,
    /// HTTP status (HTTP).
    pub status: Option<u16>,
    /// How an L4 connection ended (closed, idle_timeout, no_backend, ...).
    pub outcome: Option<&'a str>,
    /// Bytes client → backend.
    pub bytes_in: u64,
    /// Bytes backend → client.
    pub bytes_out: u64,
    /// Duration.
    pub duration: Duration,
}

impl Record<'_> {
    /// The fields a line carries only when set, in line order.
    fn optional_fields(&self) -> [(&'static str, Option<&str>); 7] {
        [
            ("sni", self.sni),
            ("route", self.route),
            ("pool", self.pool),
            ("backend", self.backend),
            ("method", self.method),
            ("path", self.path),
            ("outcome", self.outcome),
        ]
    }
}

/// Where lines go; `None` sender = off.
#[derive(Debug)]
pub struct AccessLog {
    sender: Option<mpsc::Sender<String>>,
    format: Format,
    dropped: AtomicU64,
    dropped_metric: Option<prometheus::IntCounter>,
}

/// The destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// No access log.
    Off,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
}

impl AccessLog {
    /// An access log that writes nothing and costs nothing.
    pub fn off() -> Self {
        AccessLog {
            sender: None,
            format: Format::Json,
            dropped: AtomicU64::new(0),
            dropped_metric: None,
        }
    }

    /// Opens the sink and starts its writer thread; dropped lines also count in
    /// `dropped_metric` (`tollgate_access_log_dropped_total`).
    pub fn start(
        sink: &Sink,
        format: Format,
        dropped_metric: Option<prometheus::IntCounter>,
    ) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok(Self::off()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, mut receiver) = mpsc::channel::<String>(QUEUE);
        // A plain thread: writes are blocking and must not stall a runtime worker.
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || {
                let mut buffer = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
                while let Some(line) = receiver.blocking_recv() {
                    let _ = buffer.write_all(line.as_bytes());
                    // Drain what is queued, then flush once.
                    while let Ok(more) = receiver.try_recv() {
                        let _ = buffer.write_all(more.as_bytes());
                    }
                    let _ = buffer.flush();
                }
            })?;
        Ok(AccessLog {
            sender: Some(sender),
            format,
            dropped: AtomicU64::new(0),
            dropped_metric,
        })
    }

    /// Whether lines are written (callers skip building records otherwise).
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes one line for `record`.
    pub fn log(&self, record: &Record<'_>) {
        let Some(sender) = &self.sender else {
            return;
        };
        let line = match self.format {
            Format::Json => json_line(record),
            Format::Text => text_line(record),
        };
        if sender.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(metric) = &self.dropped_metric {
                metric.inc();
            }
        }
    }
}

fn json_line(r: &Record<'_>) -> String {
    let mut v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "listener": r.listener,
        "mode": r.mode,
        "client": r.client.map(|c| c.to_string()),
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "duration_ms": r.duration.as_secs_f64() * 1000.0,
    });
    if let Some(map) = v.as_object_mut() {
        for (k, val) in r.optional_fields() {
            if let Some(val) = val {
                map.insert(k.to_string(), serde_json::json!(val));
            }
        }
        if let Some(status) = r.status {
            map.insert("status".to_string(), serde_json::json!(status));
        }
    }
    let mut line = v.to_string();
    line.push('\n');
    line
}

fn text_line(r: &Record<'_>) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(200);
    let _ = write!(
        line,
        "{} listener={} mode={} client={}",
        humantime::format_rfc3339_millis(SystemTime::now()),
        r.listener,
        r.mode,
        r.client.map_or_else(|| "-".to_string(), |c| c.to_string())
    );
    for (k, val) in r.optional_fields() {
        if let Some(val) = val {
            // Quote values that could break the key=value shape.
            if val.contains([' ', '"', '=']) || val.is_empty() {
                let _ = write!(line, " {k}={val:?}");
            } else {
                let _ = write!(line, " {k}={val}");
            }
        }
    }
    if let Some(status) = r.status {
        let _ = write!(line, " status={status}");
    }
    let _ = writeln!(
        line,
        " bytes_in={} bytes_out={} duration_ms={:.3}",
        r.bytes_in,
        r.bytes_out,
        r.duration.as_secs_f64() * 1000.0
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            listener: "edge",
            mode: "terminate",
            client: Some("192.0.2.1:5000".parse().unwrap()),
            sni: Some("app.example.com"),
            route: Some("web"),
            pool: Some("app"),
            backend: Some("10.0.0.1:80"),
            method: Some("GET"),
            path: Some("/a b\"c"),
            status: Some(200),
            bytes_in: 10,
            bytes_out: 20,
            duration: Duration::from_millis(3),
            ..Record::default()
        }
    }

    #[test]
    fn json_line_is_one_parseable_object() {
        let line = json_line(&record());
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["listener"], "edge");
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/a b\"c");
        assert_eq!(v["bytes_out"], 20);
        assert!(v.get("outcome").is_none());
    }

    #[test]
    fn text_line_quotes_awkward_values() {
        let line = text_line(&record());
        assert!(line.contains(" mode=terminate "), "{line}");
        assert!(line.contains(r#" path="/a b\"c""#), "{line}");
        assert!(line.contains(" status=200 "), "{line}");
        assert!(line.ends_with("duration_ms=3.000\n"), "{line}");
    }

    #[test]
    fn off_writes_nothing() {
        let log = AccessLog::off();
        assert!(!log.enabled());
        log.log(&record());
        assert_eq!(log.dropped(), 0);
    }
}
