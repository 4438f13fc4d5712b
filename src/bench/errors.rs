//! What went wrong in a load run: failed requests counted by kind, and the first error
//! of each kind kept as text, so that a report can say why (a count alone does not say
//! why every TLS handshake failed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The kinds of failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed.
    Connect,
    /// TLS handshake failed.
    Tls,
    /// The exchange broke (reset, EOF, protocol error).
    Io,
    /// Unexpected status.
    Status,
    /// Unexpected body length.
    Length,
    /// No complete answer within the timeout (connect and handshake included).
    Timeout,
}

impl ErrorKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Io,
        ErrorKind::Status,
        ErrorKind::Length,
        ErrorKind::Timeout,
    ];

    /// The kind's name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::Status => "status",
            ErrorKind::Length => "length",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// Counts of failed requests by kind, and the first error of each kind as text (a
/// count alone does not say why a TLS handshake fails).
#[derive(Debug, Default)]
pub struct ErrorCounts {
    counts: [AtomicU64; 6],
    first: [OnceLock<String>; 6],
}

impl ErrorCounts {
    /// Counts one failed request of `kind`; `why` is asked for the first of its kind only.
    pub fn add(&self, kind: ErrorKind, why: impl FnOnce() -> String) {
        let index = kind as usize;
        if self.counts[index].fetch_add(1, Ordering::Relaxed) == 0 {
            let _ = self.first[index].set(why());
        }
    }

    /// The count of `kind`.
    pub fn count(&self, kind: ErrorKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// (kind, count) pairs.
    pub fn pairs(&self) -> [(&'static str, u64); 6] {
        ErrorKind::ALL.map(|kind| (kind.name(), self.count(kind)))
    }

    /// (kind, first error) for each kind that occurred.
    pub fn first_errors(&self) -> Vec<(&'static str, &str)> {
        ErrorKind::ALL
            .iter()
            .filter_map(|kind| {
                let first = self.first[*kind as usize].get()?;
                Some((kind.name(), first.as_str()))
            })
            .collect()
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.pairs().iter().map(|(_, n)| n).sum()
    }

    /// A copy of the counts and messages so far.
    pub fn copied(&self) -> ErrorCounts {
        let copy = ErrorCounts::default();
        for (index, count) in self.counts.iter().enumerate() {
            copy.counts[index].store(count.load(Ordering::Relaxed), Ordering::Relaxed);
            if let Some(first) = self.first[index].get() {
                let _ = copy.first[index].set(first.clone());
            }
        }
        copy
    }
}
