//! `LOG_FORMAT=json` lines: one object per event with the timestamp, the level, the event's
//! fields at the top level and the current span's fields under `"span"`, the shape of
//! `tracing-subscriber`'s JSON format with `flatten_event` and `with_current_span`.
//!
//! Written here because that format keeps each span's fields as a JSON text which it parses
//! and serialises again on every `Span::record` and on every event inside the span: ingest's
//! request span records three fields, and those round trips were a sixth of its CPU per
//! webhook. Here a span's fields are kept as the members of a JSON object (`"a":1,"b":"x"`),
//! a recorded field is appended, and an event copies them as they are. Only a field recorded a
//! second time takes the slow way: the members are read back and written again without it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{span, Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::writer::Notice;

/// Formats span fields as JSON object members, appending on `record`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

/// Formats events as JSON lines; use with [`JsonFields`].
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut members = Members { writer, first: true, result: Ok(()), of_span: true };
        fields.record(&mut members);
        members.result
    }

    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &span::Record<'_>) -> fmt::Result {
        let mut repeats = Repeats { members: &current.fields, found: false };
        fields.record(&mut repeats);
        if repeats.found {
            let mut names = Names::default();
            fields.record(&mut names);
            current.fields = without_members(&current.fields, &names.0)?;
        }
        let before = current.fields.len();
        let mut members = Members { writer: current.as_writer(), first: before == 0, result: Ok(()), of_span: true };
        fields.record(&mut members);
        let result = members.result;
        if result.is_err() {
            // A value whose `Debug` failed half-way: keep the members valid without it.
            current.fields.truncate(before);
        }
        result
    }
}

/// Whether a record sets a field that `members` already has.
struct Repeats<'a> {
    members: &'a str,
    found: bool,
}

impl Visit for Repeats<'_> {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        self.found |= has_member(self.members, member_name(field.name()));
    }
}

/// The names of the fields a record sets.
#[derive(Default)]
struct Names(Vec<&'static str>);

impl Visit for Names {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        self.0.push(member_name(field.name()));
    }
}

/// Whether `members` has a member called `name`. Inside a string value a quote is escaped, so
/// `name":` right after a `"` can only be a member's name.
fn has_member(members: &str, name: &str) -> bool {
    if name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // A name that is escaped when written: look for it as written.
        let mut key = String::with_capacity(name.len() + 8);
        return string(&mut key, name).is_ok() && members.contains(&(key + ":"));
    }
    members
        .match_indices(name)
        .any(|(at, _)| members[..at].ends_with('"') && members[at + name.len()..].starts_with("\":"))
}

/// `members` written again without the members called `names`.
fn without_members(members: &str, names: &[&str]) -> Result<String, fmt::Error> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&format!("{{{members}}}")).map_err(|_| fmt::Error)?;
    let mut kept = String::with_capacity(members.len());
    for (name, value) in object.iter().filter(|(name, _)| !names.contains(&name.as_str())) {
        if !kept.is_empty() {
            kept.push(',');
        }
        string(&mut kept, name)?;
        kept.push(':');
        kept.push_str(&value.to_string());
    }
    Ok(kept)
}

/// A field's name as written: without the `r#` of a raw identifier.
fn member_name(name: &'static str) -> &'static str {
    name.strip_prefix("r#").unwrap_or(name)
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", event.metadata().level())?;
        let mut members = Members { writer: writer.by_ref(), first: false, result: Ok(()), of_span: false };
        event.record(&mut members);
        members.result?;
        // The event's explicit parent, else the current span (as tracing-subscriber does).
        if let Some(span) = event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current()) {
            writer.write_str(",\"span\":{")?;
            if let Some(fields) = span.extensions().get::<FormattedFields<JsonFields>>() {
                if !fields.fields.is_empty() {
                    writer.write_str(&fields.fields)?;
                    writer.write_char(',')?;
                }
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes visited fields as `"name":value` members separated by commas; the same JSON values
/// as `tracing-subscriber`'s format (128-bit integers as strings; bytes as an array in spans
/// and as hexadecimal text in events).
struct Members<'a> {
    writer: Writer<'a>,
    /// No member written yet (no comma before the next one).
    first: bool,
    result: fmt::Result,
    /// Span fields, not an event's.
    of_span: bool,
}

impl Members<'_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let name = field.name();
        // A span's `log.*` fields carry a `log` record's metadata; events keep theirs.
        if self.result.is_err() || (self.of_span && name.starts_with("log.")) {
            return;
        }
        let name = member_name(name);
        let comma = !std::mem::replace(&mut self.first, false);
        self.result = (|| {
            if comma {
                self.writer.write_char(',')?;
            }
            string(&mut self.writer, name)?;
            self.writer.write_char(':')?;
            value(&mut self.writer)
        })();
    }
}

impl Visit for Members<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaping(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaping(w), "{value}")?;
            w.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // `Debug` keeps a float a float (`1.0`, `1e300`); JSON has no NaN or infinity, which
        // serde_json writes as null too.
        self.member(field, |w| if value.is_finite() { write!(w, "{value:?}") } else { w.write_str("null") });
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        // tracing-subscriber has a span's bytes as an array of numbers and an event's as
        // hexadecimal text.
        let (open, separator, close, hex) =
            if self.of_span { ("[", ",", "]", false) } else { ("\"[", " ", "]\"", true) };
        self.member(field, |w| {
            w.write_str(open)?;
            for (i, byte) in value.iter().enumerate() {
                if i > 0 {
                    w.write_str(separator)?;
                }
                if hex {
                    write!(w, "{byte:02x}")?;
                } else {
                    write!(w, "{byte}")?;
                }
            }
            w.write_str(close)
        });
    }
}

/// A notice of the log writer as a JSON line, in the shape of the others.
pub fn notice(notice: Notice, out: &mut Vec<u8>) {
    let mut line = String::with_capacity(192);
    line.push_str("{\"timestamp\":\"");
    let _ = SystemTime.format_time(&mut Writer::new(&mut line));
    line.push_str("\",\"level\":\"WARN\",\"message\":");
    let _ = string(&mut line, notice.message());
    if let Notice::Dropped(lines) = notice {
        let _ = write!(line, ",\"dropped\":{lines}");
    }
    line.push_str("}\n");
    out.extend_from_slice(line.as_bytes());
}

/// Writes `value` as a JSON string literal.
fn string(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    escape(writer, value)?;
    writer.write_char('"')
}

/// Writes `value` escaped for the inside of a JSON string (RFC 8259, section 7).
fn escape(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let mut clean = 0;
    for (i, byte) in value.bytes().enumerate() {
        let replacement = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `i` is a character boundary.
        writer.write_str(&value[clean..i])?;
        if replacement.is_empty() {
            write!(writer, "\\u{byte:04x}")?;
        } else {
            writer.write_str(replacement)?;
        }
        clean = i + 1;
    }
    writer.write_str(&value[clean..])
}

/// Escapes everything written through it (`Debug` and `Display` output of field values).
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

#[cfg(test)]
mod tests;
