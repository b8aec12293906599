//! Parsing of provider bodies into the few fields the pipeline acts on. Pure functions over
//! raw bytes; the original bytes always travel unchanged next to what is parsed from them.

pub mod event_type;
mod identifier;
mod pick;
pub mod stripe;
pub mod stripe_head;
pub mod toss;

use rust_decimal::Decimal;
use serde_json::Value;

pub use event_type::{EventType, StripeEventType, TossEventType};
pub use identifier::{check_identifier, escape_controls, first_control_char};

/// Which provider sent an event. Its name (`stripe`, `toss`) is the same in JSON, in SQL
/// (`webhook_events.provider`, `payments.provider`), in AMQP headers and routing keys, and in
/// metric labels.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", parse_err_ty = String, parse_err_fn = unknown_provider)]
pub enum Provider {
    Stripe,
    Toss,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_provider(other: &str) -> String {
    format!("unknown provider {other:?}")
}

/// Why a body could not be understood. The text is safe to show to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not a JSON object")]
    NotJsonObject,
    #[error("body has no {0}")]
    MissingField(&'static str),
    #[error("body is not a recognised Toss event (no eventType, and not a deposit callback)")]
    UnrecognisedToss,
    #[error("{0} must be 1 to {1} printable ASCII characters without spaces")]
    BadIdentifier(&'static str, usize),
    /// A value the pipeline keys, routes or stores by holds a control character (C0, DEL, C1).
    #[error("{0} contains a control character (U+{1:04X})")]
    ControlCharacter(&'static str, u32),
}

/// Longest accepted event type. Real ones are under 60 bytes; the limit keeps routing keys
/// (at most 255 bytes in AMQP) and metric labels bounded.
pub const MAX_EVENT_TYPE_LEN: usize = 100;
/// Longest accepted event id (Stripe `evt_...` ids are about 30 bytes, body hashes 71).
pub const MAX_EVENT_KEY_LEN: usize = 200;

/// Checks an event type and dedupe key before they become AMQP routing keys, message ids and
/// database keys: bounded length, printable ASCII, no spaces. A control character is named as
/// such, the most likely sign of a hostile body.
pub fn check_event_identity(event_type: &str, event_key: &str) -> Result<(), PayloadError> {
    check_identifier("event type", event_type)?;
    check_identifier("event id", event_key)?;
    let ok = |value: &str, max: usize| {
        !value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic())
    };
    if !ok(event_type, MAX_EVENT_TYPE_LEN) {
        return Err(PayloadError::BadIdentifier("event type", MAX_EVENT_TYPE_LEN));
    }
    if !ok(event_key, MAX_EVENT_KEY_LEN) {
        return Err(PayloadError::BadIdentifier("event id", MAX_EVENT_KEY_LEN));
    }
    Ok(())
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, PayloadError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(PayloadError::NotJsonObject),
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A JSON number (or numeric string) as an exact decimal; `None` for anything else.
fn decimal_field(value: &Value, key: &str) -> Option<Decimal> {
    let text = match value.get(key)? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    text.parse::<Decimal>().ok().or_else(|| Decimal::from_scientific(&text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_bounded_printable_ascii() {
        assert!(check_event_identity("checkout.session.completed", "evt_1PXaX2").is_ok());
        assert!(check_event_identity("PAYMENT_STATUS_CHANGED", &format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_event_identity(&"x".repeat(101), "k").is_err());
        assert!(check_event_identity("t", &"k".repeat(201)).is_err());
        assert!(check_event_identity("has space", "k").is_err());
        assert!(check_event_identity("t", "").is_err());
        assert!(check_event_identity("결제", "k").is_err());
        assert_eq!(check_event_identity("t\0", "k"), Err(PayloadError::ControlCharacter("event type", 0)));
        assert_eq!(check_event_identity("t", "evt_\u{85}"), Err(PayloadError::ControlCharacter("event id", 0x85)));
    }
}
