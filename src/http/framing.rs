//! Raw framing check of client requests, fed with the bytes hyper reads. hyper resolves a
//! request that names both Content-Length and Transfer-Encoding the RFC 9112 §6.3 way:
//! it drops the Content-Length before the service sees the request, reads the body as
//! chunked and closes afterwards. The edge refuses such requests with 400 instead
//! (DESIGN §5), so this scanner follows the client's byte stream (request heads, then
//! Content-Length or chunked bodies) and notes for each head whether it named both. The
//! proxy takes the note of the request it handles (`conn.rs` holds the scanner, matched
//! by method and target). On anything it does not follow, the scanner switches itself off
//! and hyper's own handling stands.

use std::collections::VecDeque;

/// Longest head followed (hyper's own limit is lower; past it hyper answers 431).
const MAX_HEAD: usize = 1 << 20;
/// Heads noted but not yet taken (pipelining depth) before the scanner gives up.
const MAX_NOTES: usize = 64;

/// What a request head said about its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadNote {
    /// FNV-1a of the request's method and target as sent ([`request_key`]): matches the
    /// note to the request hyper hands over without keeping strings per request.
    pub key: u64,
    /// Both Content-Length and Transfer-Encoding were present.
    pub conflicting: bool,
}

/// The key of a request line: FNV-1a over `method`, a space, and `target`.
pub fn request_key(method: &[u8], target: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in method.iter().chain(b" ").chain(target) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// Skipping a Content-Length body: bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data: bytes left.
    ChunkData(u64),
    /// Skipping the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines up to an empty one.
    Trailers,
    /// Not following the stream any more.
    Off,
}

/// Follows one client connection's request stream.
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    /// The head or line being read.
    buf: Vec<u8>,
    notes: VecDeque<HeadNote>,
}

impl Default for FramingScanner {
    fn default() -> Self {
        FramingScanner {
            state: State::Head,
            buf: Vec::new(),
            notes: VecDeque::new(),
        }
    }
}

impl FramingScanner {
    /// Stops following the stream (after an upgrade, or when out of step).
    pub fn stop(&mut self) {
        self.state = State::Off;
        self.buf = Vec::new();
        self.notes.clear();
    }

    /// Feeds bytes the client sent, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(left) | State::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.state = match (self.state, left - n) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), rest) => State::Body(rest),
                        (_, 0) => State::ChunkEnd,
                        (_, rest) => State::ChunkData(rest),
                    };
                }
                State::Head => {
                    if self.buf.is_empty() {
                        // Line ends between messages are skipped.
                        let skip = bytes
                            .iter()
                            .position(|&b| b != b'\r' && b != b'\n')
                            .unwrap_or(bytes.len());
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let Some(n) = head_end(&self.buf, bytes) else {
                        if self.buf.len() + bytes.len() > MAX_HEAD {
                            self.stop();
                            return;
                        }
                        self.buf.extend_from_slice(bytes);
                        return;
                    };
                    if self.buf.len() + n > MAX_HEAD + 1 {
                        self.stop();
                        return;
                    }
                    if self.buf.is_empty() {
                        // The usual case: the whole head is in this read; no copy.
                        self.end_head(&bytes[..n]);
                    } else {
                        self.buf.extend_from_slice(&bytes[..n]);
                        let mut head = std::mem::take(&mut self.buf);
                        self.end_head(&head);
                        if self.state != State::Off {
                            head.clear();
                            self.buf = head;
                        }
                    }
                    bytes = &bytes[n..];
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.buf.extend_from_slice(bytes);
                        if self.buf.len() > MAX_HEAD {
                            self.stop();
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.buf);
                    self.end_line(trim(&line));
                }
            }
        }
    }

    fn end_line(&mut self, line: &[u8]) {
        self.state = match self.state {
            State::ChunkEnd => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => {
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let size = std::str::from_utf8(&line[..digits])
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                }
            }
        };
        if self.state == State::Off {
            self.stop();
        }
    }

    fn end_head(&mut self, head: &[u8]) {
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut start = lines.next().unwrap_or(b"").split(|&b| b == b' ');
        let method = start.next().unwrap_or(b"");
        let target = start.next().unwrap_or(b"");
        let (mut first_length, mut last_encoding) = (None, None);
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                first_length.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                last_encoding = Some(value);
            }
        }
        let conflicting = first_length.is_some() && last_encoding.is_some();
        self.state = if let Some(last) = last_encoding {
            let chunked = last
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if chunked {
                State::ChunkSize
            } else {
                State::Off
            }
        } else if let Some(first) = first_length {
            let digits = first
                .split(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            match std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            }
        } else {
            State::Head
        };
        let note = HeadNote {
            key: request_key(method, target),
            conflicting,
        };
        if self.notes.len() >= MAX_NOTES || self.state == State::Off {
            self.stop();
            if note.conflicting {
                self.notes.push_back(note);
            }
        } else {
            self.notes.push_back(note);
        }
    }

    /// Whether the request `method target` (the next one hyper hands over) named both
    /// Content-Length and Transfer-Encoding. Out of step: stops, answers false.
    pub fn take_conflicting(&mut self, method: &str, target: &str) -> bool {
        match self.notes.pop_front() {
            Some(note) if note.key == request_key(method.as_bytes(), target.as_bytes()) => {
                note.conflicting
            }
            Some(_) => {
                self.stop();
                false
            }
            None => false,
        }
    }
}

/// Where the head ends: the length of the prefix of `bytes` that completes it (up to and
/// including the `\n` of the empty line), looking back into `prev` (the head so far).
fn head_end(prev: &[u8], bytes: &[u8]) -> Option<usize> {
    let before = |i: usize, k: usize| -> Option<u8> {
        if i >= k {
            Some(bytes[i - k])
        } else {
            prev.len().checked_sub(k - i).map(|j| prev[j])
        }
    };
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == b'\n') {
        let i = from + offset;
        let b1 = before(i, 1);
        if b1 == Some(b'\n') || (b1 == Some(b'\r') && before(i, 2) == Some(b'\n')) {
            return Some(i + 1);
        }
        from = i + 1;
    }
    None
}

fn trim(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |e| e + 1);
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(stream: &[u8], split: usize) -> Vec<HeadNote> {
        let mut s = FramingScanner::default();
        for piece in stream.chunks(split) {
            s.feed(piece);
        }
        s.notes.into_iter().collect()
    }

    #[test]
    fn follows_bodies_and_notes_conflicts() {
        // A body that looks like a conflicting head is skipped as body.
        let fake = "GET /fake HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{fake}\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
            \r\nPOST /c HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /d HTTP/1.1\r\n\r\n",
            fake.len()
        );
        let stream = stream.as_bytes();
        for split in [1, 2, 3, 7, stream.len()] {
            let got = notes(stream, split);
            let want: Vec<HeadNote> = [
                ("POST", "/a", false),
                ("POST", "/b", false),
                ("POST", "/c", true),
                ("GET", "/d", false),
            ]
            .iter()
            .map(|(m, t, c)| HeadNote {
                key: request_key(m.as_bytes(), t.as_bytes()),
                conflicting: *c,
            })
            .collect();
            assert_eq!(got, want, "split {split}");
        }
    }

    #[test]
    fn take_matches_method_and_target() {
        let mut s = FramingScanner::default();
        s.feed(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(s.take_conflicting("POST", "/c"));
        s = FramingScanner::default();
        s.feed(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(!s.take_conflicting("GET", "/other"));
        assert_eq!(s.state, State::Off);
    }
}
