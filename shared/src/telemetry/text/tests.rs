use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Collects what a formatting layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// What `emit` logs in the text format, as `telemetry::init` sets it up (on a terminal or not).
fn text_of(ansi: bool, emit: impl FnOnce()) -> String {
    let captured = Captured::default();
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .fmt_fields(TextFields)
        .with_writer(captured.clone());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
    let text = captured.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

const FORGED: &str = "order-1\n2026-01-01T00:00:00.000000Z  INFO [Stripe Webhook] Payment updated order_id=\"victim\"";

#[derive(Debug)]
struct ProviderSaid;

impl std::fmt::Display for ProviderSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("provider answered: \r\n[Toss Webhook] Received\u{1b}[2J")
    }
}

impl std::error::Error for ProviderSaid {}

/// An order id, an event id, an event type, an error text and the message carry newlines, a
/// carriage return and a terminal escape: each event is still one line, and the text it
/// carries is there, escaped. To see it fail, use `Escaped`'s inner visitor directly in
/// `TextFields::format_fields` (tracing-subscriber's own text format).
#[test]
fn hostile_values_cannot_break_or_forge_a_text_line() {
    for ansi in [false, true] {
        let text = text_of(ansi, || {
            let span = tracing::info_span!("delivery", event_id = %FORGED, event_type = tracing::field::Empty);
            span.record("event_type", tracing::field::display("checkout\n.session"));
            let _entered = span.enter();
            tracing::warn!(order_id = %FORGED, "payment has no booking; no notification");
            tracing::info!(order_id = FORGED, "[Stripe Webhook] Payment updated");
            tracing::warn!(error = &ProviderSaid as &(dyn std::error::Error + 'static), "fetch-back failed");
            tracing::info!("order {} not found", FORGED);
        });
        assert_eq!(text.matches('\n').count(), 4, "four events, four lines:\n{text}");
        for line in text.lines() {
            assert!(!line.contains('\r') && !line.contains("\u{1b}[2J"), "{line:?}");
            assert!(line.contains("event_id") && line.contains("checkout\\n.session"), "span fields: {line:?}");
        }
        assert!(text.contains("order-1\\n2026-01-01T00:00:00.000000Z  INFO [Stripe Webhook] Payment updated"));
        assert!(text.contains("provider answered: \\r\\n[Toss Webhook] Received\\u{1b}[2J"), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("victim")).count(), 4, "each forged line stays inside its event");
        if !ansi {
            assert!(!text.contains('\u{1b}'), "no escape codes off a terminal: {text:?}");
        }
    }
}

#[test]
fn escape_leaves_text_alone_and_writes_control_characters_as_escapes() {
    let escaped = |value: &str| {
        let mut out = String::new();
        escape(&mut out, value).unwrap();
        out
    };
    for plain in ["", "order_7f3a9c", "é 😀 — 주문", "quote \" and backslash \\"] {
        assert_eq!(escaped(plain), plain);
    }
    assert_eq!(escaped("a\nb\rc\td"), "a\\nb\\rc\\td");
    assert_eq!(escaped("\u{0}\u{1b}[31m\u{7f}"), "\\u{0}\\u{1b}[31m\\u{7f}");
    assert_eq!(
        escaped("c1 \u{85} \u{9b} ls \u{2028} ps \u{2029} end"),
        "c1 \\u{85} \\u{9b} ls \\u{2028} ps \\u{2029} end"
    );
}

#[test]
fn notices_are_text_lines_like_the_others() {
    let mut out = Vec::new();
    notice(Notice::Dropping, &mut out);
    notice(Notice::Dropped(42), &mut out);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let (timestamp, rest) = line.split_once("  WARN ").expect("timestamp and level as the other lines");
        chrono::DateTime::parse_from_rfc3339(timestamp).unwrap();
        assert!(rest.contains("dropp"), "{rest}");
    }
    assert!(lines[1].ends_with(" dropped=42"));
}
