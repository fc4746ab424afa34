//! Log lines nobody else can write: every field of every event (the message included)
//! is written with its control characters escaped, so a client id, user name or topic
//! that holds a newline, a carriage return or a terminal escape sequence can neither
//! forge a whole line in the journal nor colour or rewrite a terminal.
//!
//! The gateway logs what clients send with `?` (Debug, escaped) already; this formatter
//! is the guarantee for every other line, rmqtt's own (`log` records bridged into
//! `tracing`, which print client ids raw) and any `%` field. `\n` becomes the two
//! characters `\n`, ESC becomes `\u{1b}`, and so on for every control character, the
//! Unicode line and paragraph separators and the bidirectional overrides.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{format::Writer, FormatFields},
};

/// The field formatter of every log line (`tracing_subscriber::fmt` with
/// `.fmt_fields(EscapedFields)`): `message` first, then `name=value`, as the default
/// one writes them, with control characters escaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // `log` records bridged into `tracing` carry their origin as fields; the
        // formatter shows the target already.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let mut out = Escaping(&mut self.writer);
        self.result = match name {
            "message" => write!(out, "{sep}{value:?}"),
            name => write!(
                out,
                "{sep}{}={value:?}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}

/// Whether `c` must not reach a log line as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A writer that escapes, as Rust's `escape_debug` does, each character that
/// [`unsafe_char`] names.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(unsafe_char) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                // `escape_debug` writes these as they are.
                '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    write!(self.0, "\\u{{{:x}}}", u32::from(c))?;
                }
                c => write!(self.0, "{}", c.escape_debug())?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// `s` with the characters a log line must not carry escaped (for text that is not
/// written through the formatter, such as a line built by hand).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = Escaping(&mut out).write_str(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\nb\r\x1b[31mc\u{7}d"),
            "a\\nb\\r\\u{1b}[31mc\\u{7}d"
        );
        assert_eq!(escape("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
        assert_eq!(escape("sala/temperatura °C ✓"), "sala/temperatura °C ✓");
    }

    #[test]
    fn every_field_and_the_message_are_escaped() {
        use std::sync::{Arc, Mutex};
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let b2 = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .with_writer(move || Sink(b2.clone()))
            .finish();
        tracing::subscriber::with_default(sub, || {
            let id = "evil\nERROR forged line\x1b[2J";
            tracing::warn!(client = %id, user = id, n = 3, "Login refused for {id}.");
        });
        let out = String::from_utf8(buf.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(
            out.contains(r#"Login refused for evil\nERROR forged line\u{1b}[2J. client=evil\nERROR forged line\u{1b}[2J user="evil\nERROR forged line\u{1b}[2J" n=3"#),
            "{out}"
        );
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
