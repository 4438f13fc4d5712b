//! Sans-io decoder of a chunked response body (RFC 9112 §7.1): chunk-size lines (with
//! extensions, which are ignored), chunk data, and the trailer section. Every line it
//! waits for is bounded, so a backend cannot make it buffer without end.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

/// Longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 32;

/// What the buffered bytes yielded.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields (only when there are some); `End` follows.
    Trailers(HeaderMap),
    /// The last chunk and the trailer section were read: the body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Why a chunked body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line that does not parse (or overflows).
    #[error("malformed chunk size")]
    BadSize,
    /// A chunk-size line longer than the bound.
    #[error("chunk-size line over {MAX_SIZE_LINE} bytes")]
    SizeLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// A trailer section that does not parse, or a field the header map refuses.
    #[error("malformed trailer section")]
    BadTrailers,
    /// A trailer section over the bound.
    #[error("trailer section over {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// Decodes one chunked body, fed through a buffer the caller fills.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can from the front of `buf`. Bytes after the end of the body stay.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_SIZE_LINE => {
                        return Err(ChunkError::SizeLineTooLong)
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(ChunkError::BadSize),
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataCrlf => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::MissingCrlf);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => return self.trailers(buf),
                State::Done => return Ok(Decoded::End),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, parsed))) => {
                let mut map = HeaderMap::new();
                for field in parsed.iter() {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(field.name.as_bytes()),
                        HeaderValue::from_bytes(field.value),
                    ) else {
                        return Err(ChunkError::BadTrailers);
                    };
                    map.append(name, value);
                }
                buf.advance(used);
                self.state = State::Done;
                Ok(if map.is_empty() {
                    Decoded::End
                } else {
                    Decoded::Trailers(map)
                })
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                Err(ChunkError::TrailersTooLarge)
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(httparse::Error::TooManyHeaders) => Err(ChunkError::TrailersTooLarge),
            Err(_) => Err(ChunkError::BadTrailers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body, the trailers, whether the end was seen, and the bytes left over.
    type Steps = (Vec<u8>, Option<HeaderMap>, bool, Vec<u8>);

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<Steps, ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(map) => trailers = Some(map),
                Decoded::End => return Ok((body, trailers, true, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Ok((body, trailers, false, buf.to_vec()));
                    }
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    const REAL: &[u8] =
        b"7\r\nMozilla\r\n11;name=value\r\nDeveloper Network\r\n0\r\nExpires: never\r\n\r\nNEXT";

    #[test]
    fn every_prefix_and_every_step() {
        for step in 1..=REAL.len() {
            let (body, trailers, ended, rest) = decode_in_steps(REAL, step).unwrap();
            assert!(ended, "step {step}");
            assert_eq!(body, b"MozillaDeveloper Network", "step {step}");
            let trailers = trailers.unwrap();
            assert_eq!(trailers.get("expires").unwrap(), "never");
            assert!(b"NEXT".starts_with(&rest), "step {step}");
        }
        // Every strict prefix of the body is incomplete, never an error or an end.
        let end = REAL.len() - 4;
        for cut in 0..end {
            let (body, _, ended, _) = decode_in_steps(&REAL[..cut], 3).unwrap();
            assert!(!ended, "prefix {cut} passed off as complete");
            assert!(b"MozillaDeveloper Network".starts_with(&body));
        }
    }

    #[test]
    fn no_trailers_ends_without_a_trailer_frame() {
        let (body, trailers, ended, rest) = decode_in_steps(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(
            (body.as_slice(), trailers, ended),
            (&b"abc"[..], None, true)
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn refuses_what_is_malformed_or_unbounded() {
        let bad_size = decode_in_steps(b"zz\r\n", 4);
        assert_eq!(bad_size.unwrap_err(), ChunkError::BadSize);
        let missing_crlf = decode_in_steps(b"3\r\nabcX\r\n", 10);
        assert_eq!(missing_crlf.unwrap_err(), ChunkError::MissingCrlf);
        let overflow = decode_in_steps(b"ffffffffffffffffff\r\n", 30);
        assert_eq!(overflow.unwrap_err(), ChunkError::BadSize);
        let mut long_ext = b"3;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(
            decode_in_steps(&long_ext, 512).unwrap_err(),
            ChunkError::SizeLineTooLong
        );
        let mut long_trailer = b"0\r\nx: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(
            decode_in_steps(&long_trailer, 1024).unwrap_err(),
            ChunkError::TrailersTooLarge
        );
    }
}
