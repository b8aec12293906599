//! Stripe event envelopes: `{id, object: "event", type, created, data: {object}}`.

use rust_decimal::Decimal;
use serde_json::Value;

use super::{decimal_field, parse_object, str_field, PayloadError};

/// What the pipeline reads from a Stripe event. `object` is `data.object` as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    /// `evt_...`: the dedupe key. Stripe retries for days and sends duplicates.
    pub id: String,
    pub event_type: String,
    pub livemode: bool,
    pub object: Value,
}

/// Parses an event envelope; `id` and `type` are required, everything else is optional.
pub fn parse_stripe_event(body: &[u8]) -> Result<StripeEvent, PayloadError> {
    let map = parse_object(body)?;
    let root = Value::Object(map);
    let id = str_field(&root, "id").ok_or(PayloadError::MissingField("id"))?.to_string();
    let event_type = str_field(&root, "type").ok_or(PayloadError::MissingField("type"))?.to_string();
    let livemode = root.get("livemode").and_then(Value::as_bool).unwrap_or(false);
    let object = root.get("data").and_then(|d| d.get("object")).cloned().unwrap_or(Value::Null);
    Ok(StripeEvent { id, event_type, livemode, object })
}

impl StripeEvent {
    /// `checkout.session`, `payment_intent`, ...
    pub fn object_kind(&self) -> Option<&str> {
        str_field(&self.object, "object")
    }

    /// The object's own id (`cs_...`, `pi_...`).
    pub fn object_id(&self) -> Option<&str> {
        str_field(&self.object, "id")
    }

    /// The app's order id: `client_reference_id`, else `metadata.order_id`.
    pub fn order_id(&self) -> Option<&str> {
        str_field(&self.object, "client_reference_id")
            .or_else(|| self.object.get("metadata").and_then(|m| str_field(m, "order_id")))
    }

    /// The payment intent behind the event: a session's `payment_intent` (id or expanded
    /// object), or the payment intent itself.
    pub fn payment_intent_id(&self) -> Option<&str> {
        if self.object_kind() == Some("payment_intent") {
            return self.object_id();
        }
        match self.object.get("payment_intent") {
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            Some(obj @ Value::Object(_)) => str_field(obj, "id"),
            _ => None,
        }
    }

    /// Amount in minor units: a session's `amount_total`, a payment intent's `amount`.
    pub fn amount(&self) -> Option<Decimal> {
        decimal_field(&self.object, "amount_total").or_else(|| decimal_field(&self.object, "amount"))
    }

    /// Lower-case ISO currency.
    pub fn currency(&self) -> Option<&str> {
        str_field(&self.object, "currency")
    }

    /// A session's `payment_status` (`paid`, `unpaid`, `no_payment_required`).
    pub fn session_payment_status(&self) -> Option<&str> {
        str_field(&self.object, "payment_status")
    }

    /// Why a payment intent failed, from `last_payment_error`.
    pub fn failure_reason(&self) -> Option<String> {
        let err = self.object.get("last_payment_error")?;
        let parts: Vec<&str> = ["code", "decline_code", "message"].iter().filter_map(|k| str_field(err, k)).collect();
        (!parts.is_empty()).then(|| parts.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &[u8] =
        br#"{"id":"evt_1PXaX2","object":"event","api_version":"2024-06-20","created":1719800000,"livemode":false,
 "pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"checkout.session.completed",
 "data":{"object":{"id":"cs_test_a1","object":"checkout.session","mode":"payment","status":"complete",
  "payment_status":"paid","client_reference_id":"order_7f3a9c","metadata":{"order_id":"order_7f3a9c"},
  "payment_intent":"pi_1MoS6f","amount_total":3000,"currency":"usd","livemode":false}}}"#;

    #[test]
    fn reads_the_documented_checkout_session_event() {
        let e = parse_stripe_event(SESSION).unwrap();
        assert_eq!(e.id, "evt_1PXaX2");
        assert_eq!(e.event_type, "checkout.session.completed");
        assert_eq!(e.object_kind(), Some("checkout.session"));
        assert_eq!(e.object_id(), Some("cs_test_a1"));
        assert_eq!(e.order_id(), Some("order_7f3a9c"));
        assert_eq!(e.payment_intent_id(), Some("pi_1MoS6f"));
        assert_eq!(e.amount(), Some(Decimal::from(3000)));
        assert_eq!(e.currency(), Some("usd"));
        assert_eq!(e.session_payment_status(), Some("paid"));
    }

    #[test]
    fn payment_intents_carry_the_order_in_metadata_only() {
        let body = br#"{"id":"evt_2","type":"payment_intent.payment_failed","data":{"object":{
            "id":"pi_9","object":"payment_intent","amount":500,"currency":"krw","metadata":{"order_id":"o-9"},
            "last_payment_error":{"code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}}}"#;
        let e = parse_stripe_event(body).unwrap();
        assert_eq!(e.order_id(), Some("o-9"));
        assert_eq!(e.payment_intent_id(), Some("pi_9"));
        assert_eq!(e.amount(), Some(Decimal::from(500)));
        assert_eq!(
            e.failure_reason().as_deref(),
            Some("card_declined: insufficient_funds: Your card has insufficient funds.")
        );
    }

    #[test]
    fn an_expanded_payment_intent_is_read_by_its_id() {
        let body = br#"{"id":"evt_3","type":"checkout.session.completed","data":{"object":{"object":"checkout.session","payment_intent":{"id":"pi_x","object":"payment_intent"}}}}"#;
        assert_eq!(parse_stripe_event(body).unwrap().payment_intent_id(), Some("pi_x"));
    }

    #[test]
    fn id_and_type_are_required() {
        assert_eq!(parse_stripe_event(b"[]"), Err(PayloadError::NotJsonObject));
        assert_eq!(parse_stripe_event(b"not json"), Err(PayloadError::NotJsonObject));
        assert_eq!(parse_stripe_event(br#"{"type":"x"}"#), Err(PayloadError::MissingField("id")));
        assert_eq!(parse_stripe_event(br#"{"id":"evt"}"#), Err(PayloadError::MissingField("type")));
        assert_eq!(parse_stripe_event(br#"{"id":7,"type":"x"}"#), Err(PayloadError::MissingField("id")));
    }
}
