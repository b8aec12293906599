use std::io::Write;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde_json::Value;
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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Each line parsed, without its timestamp (which differs between two formatters).
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "every line ends with a newline: {text:?}");
        text.lines()
            .map(|line| {
                let mut value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                let timestamp = value.as_object_mut().unwrap().remove("timestamp").expect("a timestamp");
                let timestamp = timestamp.as_str().unwrap();
                chrono::DateTime::parse_from_rfc3339(timestamp).unwrap_or_else(|e| panic!("{e}: {timestamp}"));
                value
            })
            .collect()
    }
}

#[derive(Debug)]
struct Failure;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection \"reset\"\nby peer")
    }
}

impl std::error::Error for Failure {}

/// Spans, records and events of every value kind, with text that needs escaping.
fn emit() {
    tracing::info!("outside any span");
    let span = tracing::info_span!(
        "webhook",
        request_id = "req \"1\"",
        provider = "stripe",
        event_id = tracing::field::Empty,
        status = tracing::field::Empty
    );
    let _entered = span.enter();
    tracing::warn!(code = "too_large", detail = %"tab\there", "webhook rejected");
    span.record("event_id", "evt_\u{1}\u{7f}é😀");
    span.record("status", 200u16);
    // Recorded again: the later value replaces the earlier one.
    span.record("status", 503u16);
    span.record("event_id", "evt_2");
    tracing::info!(
        r#type = "checkout.session.completed",
        count = -3i64,
        size = 18_446_744_073_709_551_615u64,
        wide = 170_141_183_460_469_231_731_687_303_715_884_105_727i128,
        ratio = 0.25f64,
        whole = 2.0f64,
        huge = 1e300f64,
        nan = f64::NAN,
        ok = true,
        bytes = &b"\x00\xff"[..],
        debug = ?vec!["a\\b"],
        error = &Failure as &(dyn std::error::Error + 'static),
        "[Stripe Webhook] Event received"
    );
    let inner = tracing::info_span!("delivery", attempt = 2);
    inner.in_scope(|| tracing::error!("inside a span with no string field"));
    let bare = tracing::info_span!("bare", bytes = &b"\x01\x80"[..]);
    bare.in_scope(|| tracing::info!(line = "multi\r\nline", "a span with bytes"));
    drop(_entered);
    tracing::info!(parent: &span, "an explicit parent outside the span");
}

#[test]
fn lines_carry_the_same_json_values_as_tracing_subscribers_json_format() {
    let reference = Captured::default();
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(reference.clone())
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);

    let ours = Captured::default();
    let layer =
        tracing_subscriber::fmt::layer().with_writer(ours.clone()).fmt_fields(JsonFields).event_format(JsonLines);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);

    let (expected, actual) = (reference.lines(), ours.lines());
    assert_eq!(actual.len(), 6);
    assert_eq!(actual, expected);
    // Spot checks, so that a change shared by both formats still shows.
    assert_eq!(actual[2]["span"]["event_id"], "evt_2");
    assert_eq!(actual[2]["span"]["status"], 503);
    assert_eq!(actual[4]["span"]["bytes"], serde_json::json!([1, 128]));
    assert_eq!(actual[5]["span"]["request_id"], "req \"1\"");
    // What a parsed value hides: each member once, and floats written as floats.
    let text = ours.text();
    let line = text.lines().nth(2).unwrap();
    assert_eq!(line.matches("\"status\":").count(), 1, "{line}");
    assert_eq!(line.matches("\"event_id\":").count(), 1, "{line}");
    assert!(line.contains("\"whole\":2.0,") && line.contains("\"huge\":1e300,"), "{line}");
    assert_eq!(actual[2]["type"], "checkout.session.completed");
    assert_eq!(actual[2]["error"], "connection \"reset\"\nby peer");
    assert_eq!(actual[1]["span"]["request_id"], "req \"1\"");
    assert!(actual[0].get("span").is_none());
}

/// The text format's hostile-value test, for JSON lines: newlines and escape codes in an order
/// id, an event id and the message stay inside their line's JSON strings, and come back as they
/// were when the line is parsed.
#[test]
fn hostile_values_cannot_break_or_forge_a_json_line() {
    let forged = "order-1\n{\"level\":\"INFO\",\"message\":\"[Stripe Webhook] Payment updated\"}\r\u{1b}[2J\u{2028}";
    let ours = Captured::default();
    let layer =
        tracing_subscriber::fmt::layer().with_writer(ours.clone()).fmt_fields(JsonFields).event_format(JsonLines);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = tracing::info_span!("delivery", event_id = %forged);
        let _entered = span.enter();
        tracing::warn!(order_id = %forged, "payment has no booking; no notification");
        tracing::info!("order {forged} not found");
    });
    let text = ours.text();
    assert_eq!(text.matches('\n').count(), 2, "two events, two lines: {text:?}");
    assert!(!text.contains('\r') && !text.contains('\u{1b}'), "{text:?}");
    let lines = ours.lines();
    assert_eq!(lines[0]["order_id"], forged);
    assert_eq!(lines[0]["span"]["event_id"], forged);
    assert_eq!(lines[1]["message"], format!("order {forged} not found"));
}

#[test]
fn notices_are_json_lines_like_the_others() {
    let captured = Captured::default();
    notice(Notice::Dropping, &mut captured.0.lock().unwrap());
    notice(Notice::Dropped(42), &mut captured.0.lock().unwrap());
    let lines = captured.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], serde_json::json!({"level": "WARN", "message": Notice::Dropping.message()}));
    assert_eq!(lines[1]["dropped"], 42);
}

#[test]
fn a_member_is_found_by_its_name_and_never_inside_a_value_or_a_longer_name() {
    assert!(has_member(r#""a":1,"status":2"#, "status"));
    assert!(!has_member(r#""order_status":1"#, "status"));
    assert!(!has_member(r#""status_code":1"#, "status"));
    assert!(!has_member(r#""a":"x\"status\":1""#, "status"));
    assert!(has_member(r#""say \"hi\"":1"#, "say \"hi\""));
    assert!(!has_member(r#""a":"say \"hi\""#, "say \"hi\""));
}

/// A value whose `Debug` fails half-way.
struct Failing;

impl std::fmt::Debug for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("half")?;
        Err(std::fmt::Error)
    }
}

#[test]
fn a_value_that_fails_to_format_leaves_the_span_valid() {
    let ours = Captured::default();
    let layer =
        tracing_subscriber::fmt::layer().with_writer(ours.clone()).fmt_fields(JsonFields).event_format(JsonLines);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = tracing::info_span!("s", good = 1, bad = tracing::field::Empty, later = tracing::field::Empty);
        span.record("bad", tracing::field::debug(Failing));
        span.record("later", "x");
        span.in_scope(|| tracing::info!("after"));
    });
    let lines = ours.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["span"], serde_json::json!({"good": 1, "later": "x", "name": "s"}));
}

proptest! {
    #[test]
    fn any_text_is_read_back_as_itself(text in any::<String>()) {
        let mut literal = String::new();
        string(&mut literal, &text).unwrap();
        prop_assert_eq!(serde_json::from_str::<String>(&literal).unwrap(), text);
    }

    #[test]
    fn debug_output_written_in_pieces_is_escaped_as_a_whole(pieces in proptest::collection::vec(any::<String>(), 0..5)) {
        let mut literal = String::from('"');
        for piece in &pieces {
            Escaping(&mut literal).write_str(piece).unwrap();
        }
        literal.push('"');
        prop_assert_eq!(serde_json::from_str::<String>(&literal).unwrap(), pieces.concat());
    }
}
