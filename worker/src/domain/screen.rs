//! Hostile bytes in a delivery, caught before anything of it reaches Postgres, the Toss API or
//! a log line. Messages reach the work queue without passing ingest too (published to the
//! broker directly, or replayed from the dead letters), so the worker does not rely on
//! ingest's checks.
//!
//! A control character (C0, DEL, C1) in the message's event key or type, or in an identifier
//! the event names (order id, payment key or intent, currency, status, deposit secret), makes
//! the message permanently unprocessable. One such value in a batch's text arrays would make
//! Postgres refuse the batch (U+0000 above all), so the message is taken out of the batch's
//! work: its inbox row is written with those values escaped (`\u{0}`), it is dead-lettered with
//! the reason, and the rest of the batch commits untouched. Free text (a body, an error, a
//! provider's object) is made storable where it is written ([`crate::store::stored`]); a
//! failure reason, which also travels in notifications, is made plain text when it is parsed.

use shared::envelope::{EnvelopeError, EventEnvelope, H_EVENT_KEY, H_EVENT_TYPE};
use shared::providers::{escape_controls, first_control_char};

use crate::domain::event::{IncomingEvent, Intent, PaymentRef};
use crate::domain::outcome::HandleError;

/// Screens one delivery in place: escapes control characters in the envelope's key, type and
/// request id, and turns an event that carries one in an identifier into a permanent failure.
/// Returns the order id the event names, escaped, for its inbox row and log lines (kept when
/// the event is refused, so the refusal shows among that order's events).
pub fn screen(
    envelope: &mut Result<EventEnvelope, EnvelopeError>,
    event: &mut Result<IncomingEvent, HandleError>,
) -> Option<String> {
    let order_id = event.as_ref().ok().and_then(IncomingEvent::order_id).map(|id| escape_controls(id).into_owned());
    // An unreadable envelope is dead-lettered without a record; nothing of it is stored.
    let Ok(envelope) = envelope else { return order_id };
    let mut refusal = None;
    for (header, value) in [(H_EVENT_KEY, &mut envelope.event_key), (H_EVENT_TYPE, &mut envelope.event_type)] {
        if let Some(c) = escape_in_place(value) {
            refusal.get_or_insert_with(|| format!("message header {header} contains {}", describe(c)));
        }
    }
    // Informational, but stored with the event.
    escape_in_place(&mut envelope.request_id);
    // A failure reason is free text that travels in notifications: the parser already made it
    // plain text ([`crate::domain::notification::outside_text`]).
    if let Ok(incoming) = event {
        refusal = refusal.or_else(|| control_character_in(incoming));
    }
    if let Some(reason) = refusal {
        *event = Err(HandleError::Permanent(reason));
    }
    order_id
}

/// Escapes `value` when it holds a control character; returns the first one.
fn escape_in_place(value: &mut String) -> Option<char> {
    let first = first_control_char(value)?;
    *value = escape_controls(value).into_owned();
    Some(first)
}

/// Why an event's identifiers cannot be stored or used, if they cannot. Values are never
/// quoted: one of them may be a secret.
fn control_character_in(event: &IncomingEvent) -> Option<String> {
    let payment = match &event.intent {
        Intent::SetStatus { payment: PaymentRef::OrderId(id), .. } => Some(("order id", id)),
        Intent::SetStatus { payment: PaymentRef::ProviderPaymentId(id), .. } => Some(("provider payment id", id)),
        Intent::Ignore(_) => None,
    };
    [
        Some(("event type", &event.event_type)),
        payment,
        event.provider_payment_id.as_ref().map(|v| ("provider payment id", v)),
        event.currency.as_ref().map(|v| ("currency", v)),
        event.provider_status.as_ref().map(|v| ("provider status", v)),
        event.deposit_secret.as_ref().map(|v| ("deposit secret", v)),
    ]
    .into_iter()
    .flatten()
    .find_map(|(field, value)| first_control_char(value).map(|c| format!("event {field} contains {}", describe(c))))
}

fn describe(c: char) -> String {
    format!("a control character (U+{:04X})", u32::from(c))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use shared::envelope::IngestVerification;
    use shared::Provider;

    use super::*;

    fn envelope(key: &str, event_type: &str, body: &[u8]) -> Result<EventEnvelope, EnvelopeError> {
        Ok(EventEnvelope {
            provider: Provider::Stripe,
            event_type: event_type.into(),
            event_key: key.into(),
            verification: IngestVerification::Signature,
            received_at: Utc::now(),
            request_id: "req\u{1b}[2J".into(),
            attempt: 0,
            delivery_headers: Default::default(),
            body: body.to_vec(),
        })
    }

    fn session(payment_intent: &str, currency: &str) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {
            "object": "checkout.session", "payment_status": "paid", "client_reference_id": "o-1",
            "payment_intent": payment_intent, "amount_total": 100, "currency": currency}}}),
        )
        .unwrap()
    }

    fn screened(key: &str, body: &[u8]) -> (EventEnvelope, Result<IncomingEvent, HandleError>, Option<String>) {
        let mut envelope = envelope(key, "checkout.session.completed", body);
        let mut event = IncomingEvent::parse(envelope.as_ref().unwrap()).map_err(|e| HandleError::Permanent(e.0));
        let order_id = screen(&mut envelope, &mut event);
        (envelope.unwrap(), event, order_id)
    }

    #[test]
    fn a_clean_delivery_passes_untouched_but_for_its_request_id() {
        let (envelope, event, order_id) = screened("evt_1", &session("pi_1", "usd"));
        assert!(event.is_ok());
        assert_eq!((envelope.event_key.as_str(), order_id.as_deref()), ("evt_1", Some("o-1")));
        assert_eq!(envelope.request_id, r"req\u{1b}[2J");
    }

    #[test]
    fn a_control_character_in_the_key_is_escaped_and_refused_keeping_the_order() {
        let (envelope, event, order_id) = screened("evt\0\u{85}", &session("pi_1", "usd"));
        assert_eq!(envelope.event_key, r"evt\u{0}\u{85}");
        assert_eq!(
            event.unwrap_err(),
            HandleError::Permanent("message header x-event-key contains a control character (U+0000)".into())
        );
        assert_eq!(order_id.as_deref(), Some("o-1"), "shown among the order's events");
    }

    #[test]
    fn a_control_character_in_the_type_header_is_refused() {
        let mut envelope = envelope("evt_1", "checkout.session.completed\x7f", &session("pi_1", "usd"));
        let mut event = Ok(IncomingEvent::parse(envelope.as_ref().unwrap()).unwrap());
        screen(&mut envelope, &mut event);
        assert_eq!(envelope.unwrap().event_type, r"checkout.session.completed\u{7f}");
        assert!(event.unwrap_err().to_string().contains("x-event-type contains a control character (U+007F)"));
    }

    #[test]
    fn identifiers_the_parser_leaves_alone_are_screened_too() {
        for (body, field) in [
            (session("pi_\0", "usd"), "event provider payment id contains a control character (U+0000)"),
            (session("pi_1", "us\u{1b}d"), "event currency contains a control character (U+001B)"),
        ] {
            let (_, event, order_id) = screened("evt_1", &body);
            assert_eq!(event.unwrap_err(), HandleError::Permanent(field.into()));
            assert_eq!(order_id.as_deref(), Some("o-1"));
        }
    }

    #[test]
    fn a_nul_in_a_failure_reason_is_replaced_not_refused() {
        let mut body: serde_json::Value = serde_json::from_slice(&session("pi_1", "usd")).unwrap();
        body["type"] = "payment_intent.payment_failed".into();
        body["data"]["object"]["last_payment_error"] = serde_json::json!({"message": "declined\u{0}"});
        let (_, event, _) = screened("evt_1", &serde_json::to_vec(&body).unwrap());
        assert_eq!(event.unwrap().failure_reason.as_deref(), Some("declined "));
    }

    #[test]
    fn a_bad_key_outranks_an_earlier_failure() {
        let mut envelope = envelope("evt\0", "t", b"{}");
        let mut event = Err(HandleError::Transient("Toss API unavailable".into()));
        assert_eq!(screen(&mut envelope, &mut event), None);
        assert_eq!(envelope.unwrap().event_key, r"evt\u{0}");
        // Retrying a message that can never be stored would only walk it through every tier.
        assert!(matches!(event, Err(HandleError::Permanent(reason)) if reason.contains("x-event-key")));
    }
}
