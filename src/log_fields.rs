//! [`CompactFields`]: how log lines write fields, `name=value` separated by spaces (the
//! message bare), as tracing-subscriber's default does without its styling. Every
//! connection's span formats its fields once at accept and again when the SNI is
//! recorded, so the fields are first written into a stack buffer and handed to the
//! span's `String` in one piece: one allocation of the right size instead of a string
//! that doubles from 8 bytes (four reallocations for a typical `conn` span).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Fields as `name=value`, space-separated; the `message` field without its name.
#[derive(Debug, Default, Clone, Copy)]
pub struct CompactFields;

impl<'writer> FormatFields<'writer> for CompactFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut line = StackLine::default();
        let mut visitor = FieldWriter {
            out: &mut line,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(line.as_str())
    }
}

/// Writes each field it visits into `out`.
struct FieldWriter<'a> {
    out: &'a mut StackLine,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// Starts a field: the delimiter, then `name=` (nothing for the message). False
    /// when an earlier write failed.
    fn begin(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        if !self.first {
            self.out.push(" ");
        }
        self.first = false;
        if field.name() != "message" {
            self.out.push(field.name());
            self.out.push("=");
        }
        true
    }
}

impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.begin(field) {
            self.result = write!(self.out, "{value:?}");
        }
    }

    /// Integers (the `conn` id) without the formatting machinery.
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.begin(field) {
            self.out.push(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.begin(field) {
            self.out.push(itoa::Buffer::new().format(value));
        }
    }

    /// A string in quotes, as its `Debug` would write it; a string with nothing to
    /// escape (an SNI name always) is copied as it is instead of char by char.
    fn record_str(&mut self, field: &Field, value: &str) {
        let plain = value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if !plain {
            return self.record_debug(field, &value);
        }
        if self.begin(field) {
            self.out.push("\"");
            self.out.push(value);
            self.out.push("\"");
        }
    }
}

/// Bytes a line's fields may take before they move to the heap.
const INLINE: usize = 128;

/// A text buffer on the stack that moves to a `String` when it outgrows [`INLINE`].
struct StackLine {
    inline: [u8; INLINE],
    len: usize,
    spilled: Option<String>,
}

impl Default for StackLine {
    fn default() -> Self {
        StackLine {
            inline: [0; INLINE],
            len: 0,
            spilled: None,
        }
    }
}

impl StackLine {
    fn push(&mut self, s: &str) {
        if let Some(spilled) = &mut self.spilled {
            spilled.push_str(s);
            return;
        }
        let end = self.len + s.len();
        match self.inline.get_mut(self.len..end) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.len = end;
            }
            None => {
                let mut spilled = String::with_capacity(end * 2);
                spilled.push_str(self.as_str());
                spilled.push_str(s);
                self.spilled = Some(spilled);
            }
        }
    }

    fn as_str(&self) -> &str {
        match &self.spilled {
            Some(spilled) => spilled,
            // Only whole `&str`s are copied in, so the bytes are UTF-8.
            None => std::str::from_utf8(&self.inline[..self.len]).unwrap_or_default(),
        }
    }
}

impl fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(body: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(CompactFields)
                .with_ansi(false)
                .without_time()
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, body);
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn span_and_event_fields_read_name_equals_value() {
        let out = logged(|| {
            let span = tracing::info_span!(
                "conn",
                conn = 7u64,
                peer = %"127.0.0.1:5000",
                listener = %"edge",
                sni = tracing::field::Empty
            );
            span.record("sni", "app.test");
            let _entered = span.enter();
            tracing::info!(reason = "not_tls", "ClientHello refused");
        });
        assert!(
            out.contains(r#"conn{conn=7 peer=127.0.0.1:5000 listener=edge sni="app.test"}: "#),
            "{out}"
        );
        assert!(
            out.contains(r#"ClientHello refused reason="not_tls""#),
            "{out}"
        );
    }

    #[test]
    fn fields_longer_than_the_stack_buffer_are_kept_whole() {
        let long = "x".repeat(INLINE * 3);
        let out = logged(|| {
            let span = tracing::info_span!("conn", conn = 1u64, listener = %long);
            let _entered = span.enter();
            tracing::info!(tail = 2u64, "done");
        });
        assert!(
            out.contains(&format!("conn{{conn=1 listener={long}}}: ")),
            "{out}"
        );
        assert!(out.contains("done tail=2"), "{out}");
    }

    #[test]
    fn strings_are_quoted_and_escaped_as_debug_writes_them() {
        let out = logged(|| {
            tracing::info!(
                plain = "app.test",
                quoted = "a\"b\\c\n",
                count = 42u64,
                delta = -3i64,
                "m"
            );
        });
        assert!(
            out.contains(r#"m plain="app.test" quoted="a\"b\\c\n" count=42 delta=-3"#),
            "{out}"
        );
    }

    #[test]
    fn the_stack_line_spills_at_its_boundary_without_losing_bytes() {
        for first in [INLINE - 1, INLINE, INLINE + 1] {
            let mut line = StackLine::default();
            line.push(&"a".repeat(first));
            line.push("bc");
            assert_eq!(line.as_str(), format!("{}bc", "a".repeat(first)));
        }
    }
}
