//! A backend's response fields kept as they arrived, for a route whose responses no
//! content feature (compression, cache) reads. The head parser (`head.rs`) notes where
//! each end-to-end field line sits in the head's bytes instead of building a header map
//! (a `HeaderName` lookup, a hash and an insert per field, then a walk of the map to
//! encode it again), and the client connection's encoder (`conn/response_head.rs`)
//! copies those lines out. Hop-by-hop fields are left out as on the map path; a head
//! whose `Connection` field names other fields takes the map path, which removes them.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::http::headers::{field_kind, keep_alive_timeout, FieldKind, FieldSpans, FramingFields};

/// A run of kept field lines: where it starts and ends in the head, line ends inside it
/// included, the last one's excluded. Consecutive kept lines ending in CRLF share a run.
type Run = (u16, u16);

/// The end-to-end fields of a response head, as the backend wrote them.
#[derive(Debug, Clone)]
pub struct RawFields {
    head: Bytes,
    runs: SmallVec<[Run; 4]>,
    /// The Content-Length, when it is one number.
    pub length: Option<u64>,
    /// A Date field is among the fields.
    pub dated: bool,
}

/// What one pass over a head's fields found.
#[derive(Debug)]
pub struct Collected {
    /// The kept fields.
    pub fields: RawFields,
    /// What framing and keep-alive depend on.
    pub framing: FramingFields,
    /// The `timeout=` of a Keep-Alive field, in seconds.
    pub keep_alive_secs: Option<u64>,
}

impl RawFields {
    /// Notes the end-to-end fields of `head` (a final response's head, whose fields sit
    /// at `spans`). `None` when the header-map path must take it: a `Connection` field
    /// names other fields, or a field lies beyond what 16-bit offsets reach.
    pub fn collect(head: &Bytes, spans: &FieldSpans) -> Option<Collected> {
        let mut runs: SmallVec<[Run; 4]> = SmallVec::new();
        let mut framing = FramingFields::default();
        let mut keep_alive_secs = None;
        let mut dated = false;
        for &(name_start, name_len, value_start, value_len) in spans {
            let name_end = name_start.checked_add(name_len)?;
            let name = head.get(name_start as usize..name_end as usize)?;
            let value_end = value_start.checked_add(value_len)?;
            let value = head.get(value_start as usize..value_end as usize)?;
            let kind = field_kind(name);
            framing.note_kind(kind, value);
            match kind {
                FieldKind::Connection | FieldKind::TransferEncoding | FieldKind::HopByHop => {
                    continue
                }
                FieldKind::KeepAlive => {
                    keep_alive_secs = keep_alive_timeout(value);
                    continue;
                }
                FieldKind::Date => dated = true,
                FieldKind::ContentLength | FieldKind::Other => {}
            }
            // The line runs from the name to the end of the value; an empty value's
            // position is not reliable, so its line ends after the colon.
            let line_end = if value_len == 0 {
                if head.get(name_end as usize) != Some(&b':') {
                    return None;
                }
                name_end + 1
            } else {
                value_end
            };
            let (Ok(start), Ok(end)) = (u16::try_from(name_start), u16::try_from(line_end)) else {
                return None;
            };
            match runs.last_mut() {
                // Follows the previous kept line right after its CRLF: one run.
                Some(last)
                    if usize::from(last.1) + 2 == usize::from(start)
                        && head.get(usize::from(last.1)..usize::from(start)) == Some(b"\r\n") =>
                {
                    last.1 = end;
                }
                _ => runs.push((start, end)),
            }
        }
        if framing.tokens.names_fields {
            return None;
        }
        let length = match framing.length {
            Some(Ok(n)) => Some(n),
            _ => None,
        };
        Some(Collected {
            fields: RawFields {
                head: head.clone(),
                runs,
                length,
                dated,
            },
            framing,
            keep_alive_secs,
        })
    }

    /// Writes the fields, each line ending in CRLF.
    pub fn write(&self, out: &mut BytesMut) {
        for &(start, end) in &self.runs {
            if let Some(lines) = self.head.get(usize::from(start)..usize::from(end)) {
                out.put_slice(lines);
                out.put_slice(b"\r\n");
            }
        }
    }

    /// The fields as (name, value) pairs.
    #[cfg(test)]
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = BytesMut::new();
        self.write(&mut out);
        String::from_utf8_lossy(&out)
            .split("\r\n")
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.to_string(), value.trim().to_string()))
            })
            .collect()
    }
}
