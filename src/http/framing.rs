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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadNote {
    /// Request method as sent.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// Both Content-Length and Transfer-Encoding were present.
    pub conflicting: bool,
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
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    // Empty lines before a request line are skipped, as hyper does.
                    if self.buf.is_empty() && (byte == b'\r' || byte == b'\n') {
                        continue;
                    }
                    self.buf.push(byte);
                    if self.buf.ends_with(b"\n\n") || self.buf.ends_with(b"\n\r\n") {
                        self.end_head();
                    } else if self.buf.len() > MAX_HEAD {
                        self.stop();
                    }
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

    fn end_head(&mut self) {
        let head = std::mem::take(&mut self.buf);
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let mut start = lines.next().unwrap_or("").split(' ');
        let method = start.next().unwrap_or("").to_string();
        let target = start.next().unwrap_or("").to_string();
        let (mut lengths, mut encodings) = (Vec::new(), Vec::new());
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                lengths.push(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                encodings.push(value.trim().to_string());
            }
        }
        let conflicting = !lengths.is_empty() && !encodings.is_empty();
        self.state = if let Some(last) = encodings.last() {
            let chunked = last
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            if chunked {
                State::ChunkSize
            } else {
                State::Off
            }
        } else if let Some(first) = lengths.first() {
            match first.split(',').next().unwrap_or("").trim().parse::<u64>() {
                Ok(0) => State::Head,
                Ok(n) => State::Body(n),
                Err(_) => State::Off,
            }
        } else {
            State::Head
        };
        self.notes.push_back(HeadNote {
            method,
            target,
            conflicting,
        });
        if self.notes.len() > MAX_NOTES || self.state == State::Off {
            // hyper refuses what the scanner cannot follow; the note of this head stays.
            let note = self.notes.pop_back();
            self.stop();
            if let Some(note) = note.filter(|n| n.conflicting) {
                self.notes.push_back(note);
            }
        }
    }

    /// Whether the request `method target` (the next one hyper hands over) named both
    /// Content-Length and Transfer-Encoding. Out of step: stops, answers false.
    pub fn take_conflicting(&mut self, method: &str, target: &str) -> bool {
        match self.notes.pop_front() {
            Some(note) if note.method == method && note.target == target => note.conflicting,
            Some(_) => {
                self.stop();
                false
            }
            None => false,
        }
    }
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
            let summary: Vec<(&str, bool)> = got
                .iter()
                .map(|n| (n.target.as_str(), n.conflicting))
                .collect();
            assert_eq!(
                summary,
                [("/a", false), ("/b", false), ("/c", true), ("/d", false)],
                "split {split}"
            );
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
