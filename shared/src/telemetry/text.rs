//! Text lines (the default format): `tracing-subscriber`'s own, with every field value and the
//! message escaped so that no value can break a line or forge one.
//!
//! Field values come from outside (order ids, event ids and types, error texts that quote a
//! provider's answer). `tracing-subscriber` quotes `&str` fields, but writes `%value` fields
//! and the message as they are: a newline in an order id would end the line there and start
//! one the attacker wrote (`[Stripe Webhook] Payment updated ...`). Here every control
//! character (C0, DEL, C1, and the Unicode line and paragraph separators) in a value is written
//! as an escape (`\n`, `\r`, `\t`, `\u{1b}`), so one event is one line and no value reaches a
//! terminal as an escape sequence.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use super::writer::Notice;

/// Formats fields as `tracing-subscriber`'s default does (`name=value`, the message first,
/// field names in italics on a terminal), with every value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Escaped(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

/// Passes every value to the default visitor through [`escape`].
struct Escaped<'a>(DefaultVisitor<'a>);

impl Visit for Escaped<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            // Quoted, as tracing-subscriber writes a string.
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(error) = source {
            let _ = write!(text, ": {error}");
            source = error.source();
        }
        self.record_debug(field, &format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &EscapedDebug(value));
    }
}

/// A value's `Debug` output, escaped.
struct EscapedDebug<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for EscapedDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{:?}", self.0)
    }
}

/// Escapes what is written through it.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

/// Writes `value` with every control character escaped; other text is written as it is.
pub fn escape(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    // Most values have nothing to escape: one pass over the bytes finds that out. A control
    // character is a byte below 0x20 or 0x7f, or starts with 0xc2 (C1, U+0080..U+009F) or
    // 0xe2 (U+2028, U+2029) in UTF-8.
    if !value.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2 || b == 0xe2) {
        return writer.write_str(value);
    }
    let mut clean = 0;
    for (i, c) in value.char_indices() {
        if !(c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
            continue;
        }
        writer.write_str(&value[clean..i])?;
        match c {
            '\n' => writer.write_str("\\n")?,
            '\r' => writer.write_str("\\r")?,
            '\t' => writer.write_str("\\t")?,
            c => write!(writer, "\\u{{{:x}}}", c as u32)?,
        }
        clean = i + c.len_utf8();
    }
    writer.write_str(&value[clean..])
}

/// A notice of the log writer as a text line, in the shape of the others.
pub fn notice(notice: Notice, out: &mut Vec<u8>) {
    let mut line = String::with_capacity(160);
    let _ = SystemTime.format_time(&mut Writer::new(&mut line));
    let _ = write!(line, "  WARN {}", notice.message());
    if let Notice::Dropped(lines) = notice {
        let _ = write!(line, " dropped={lines}");
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

#[cfg(test)]
mod tests;
