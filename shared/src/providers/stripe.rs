//! Stripe event envelopes: `{id, object: "event", type, created, data: {object}}`.
//!
//! Read in one pass without building a JSON document: the fields the pipeline acts on are
//! picked out, and `data.object` is kept as the exact text Stripe sent, for the record. Reading
//! is lenient the way field access on a parsed document is: a field of another type than
//! expected counts as missing, and a key given twice counts with its last value.

use std::borrow::Cow;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::de::MapAccess;
use serde_json::value::RawValue;

use super::pick::{skip, Amount, Flag, Lenient, Object, Pick, Reference, Text};
use super::{check_identifier, PayloadError};

/// What the pipeline reads from a Stripe event.
#[derive(Debug, Clone)]
pub struct StripeEvent {
    /// `evt_...`: the dedupe key. Stripe retries for days and sends duplicates.
    pub id: String,
    pub event_type: String,
    pub livemode: bool,
    /// `created`: when Stripe created the event, in whole unix seconds. Stripe guarantees no
    /// delivery order; this is the order its events happened in (ties within a second).
    pub created: Option<i64>,
    /// The fields of `data.object` the pipeline reads.
    pub object: StripeObject,
    /// `data.object` exactly as sent (`null` when there is none).
    pub raw_object: Box<RawValue>,
}

impl PartialEq for StripeEvent {
    fn eq(&self, other: &Self) -> bool {
        (&self.id, &self.event_type, self.livemode, self.created, &self.object, self.raw_object.get())
            == (&other.id, &other.event_type, other.livemode, other.created, &other.object, other.raw_object.get())
    }
}

/// The fields of a Stripe object (a Checkout Session, a payment intent) the pipeline reads;
/// strings are present only when non-empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StripeObject {
    /// `object`: `checkout.session`, `payment_intent`, ...
    pub kind: Option<String>,
    pub id: Option<String>,
    pub client_reference_id: Option<String>,
    /// `metadata.order_id`.
    pub metadata_order_id: Option<String>,
    /// `payment_intent`, or the `id` of an expanded one.
    pub payment_intent: Option<String>,
    pub amount_total: Option<Decimal>,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    pub payment_status: Option<String>,
    pub status: Option<String>,
    /// `last_payment_error`'s `code`, `decline_code` and `message`, those present.
    pub payment_error: Vec<String>,
}

/// Parses an event envelope; `id` and `type` are required, everything else is optional. The
/// id, the type and the order id must hold no control character.
pub fn parse_stripe_event(body: &[u8]) -> Result<StripeEvent, PayloadError> {
    // Skipped strings are not checked by the JSON reader, so the whole body is checked first
    // (and then read as text): a body with invalid UTF-8 anywhere is not JSON.
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotJsonObject)?;
    let Object(root) = serde_json::from_str::<Object<EventFields>>(text).map_err(|_| PayloadError::NotJsonObject)?;
    let id = root.id.owned().ok_or(PayloadError::MissingField("id"))?;
    let event_type = root.event_type.owned().ok_or(PayloadError::MissingField("type"))?;
    check_identifier("id", &id)?;
    check_identifier("type", &event_type)?;
    let raw_object = root.object.unwrap_or_else(|| null());
    let object = serde_json::from_str::<Lenient<ObjectFields>>(raw_object.get())
        .map(|Lenient(fields)| fields.into_object())
        .unwrap_or_default();
    match (&object.client_reference_id, &object.metadata_order_id) {
        (Some(order), _) => check_identifier(CLIENT_REFERENCE_ID, order)?,
        (None, Some(order)) => check_identifier(METADATA_ORDER_ID, order)?,
        (None, None) => {}
    }
    Ok(StripeEvent {
        id,
        event_type,
        livemode: root.livemode.unwrap_or(false),
        created: root.created.filter(|c| c.fract().is_zero()).and_then(|c| c.to_i64()),
        object,
        raw_object: raw_object.to_owned(),
    })
}

/// Where a Stripe object carries the app's order id, first choice first.
pub(crate) const CLIENT_REFERENCE_ID: &str = "data.object.client_reference_id";
pub(crate) const METADATA_ORDER_ID: &str = "data.object.metadata.order_id";

fn null() -> &'static RawValue {
    serde_json::from_str("null").expect("null is JSON")
}

impl StripeEvent {
    /// `checkout.session`, `payment_intent`, ...
    pub fn object_kind(&self) -> Option<&str> {
        self.object.kind.as_deref()
    }

    /// The object's own id (`cs_...`, `pi_...`).
    pub fn object_id(&self) -> Option<&str> {
        self.object.id.as_deref()
    }

    /// The app's order id: `client_reference_id`, else `metadata.order_id`.
    pub fn order_id(&self) -> Option<&str> {
        self.object.client_reference_id.as_deref().or(self.object.metadata_order_id.as_deref())
    }

    /// The payment intent behind the event: a session's `payment_intent` (id or expanded
    /// object), or the payment intent itself.
    pub fn payment_intent_id(&self) -> Option<&str> {
        if self.object_kind() == Some("payment_intent") {
            return self.object_id();
        }
        self.object.payment_intent.as_deref()
    }

    /// Amount in minor units: a session's `amount_total`, a payment intent's `amount`.
    pub fn amount(&self) -> Option<Decimal> {
        self.object.amount_total.or(self.object.amount)
    }

    /// Lower-case ISO currency.
    pub fn currency(&self) -> Option<&str> {
        self.object.currency.as_deref()
    }

    /// A session's `payment_status` (`paid`, `unpaid`, `no_payment_required`).
    pub fn session_payment_status(&self) -> Option<&str> {
        self.object.payment_status.as_deref()
    }

    /// Why a payment intent failed, from `last_payment_error`.
    pub fn failure_reason(&self) -> Option<String> {
        let parts = &self.object.payment_error;
        (!parts.is_empty()).then(|| parts.join(": "))
    }
}

#[derive(Default)]
struct EventFields<'a> {
    id: Text<'a>,
    event_type: Text<'a>,
    livemode: Option<bool>,
    /// A number, read like an amount: a whole one is a time.
    created: Option<Decimal>,
    /// `data.object` when `data` is an object that has one.
    object: Option<&'a RawValue>,
}

impl<'de> Pick<'de> for EventFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "id" => self.id = map.next_value()?,
            "type" => self.event_type = map.next_value()?,
            "livemode" => self.livemode = map.next_value::<Flag>()?.0,
            "created" => self.created = map.next_value::<Amount>()?.0,
            "data" => self.object = map.next_value::<Lenient<DataFields>>()?.0 .0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct DataFields<'a>(Option<&'a RawValue>);

impl<'de> Pick<'de> for DataFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "object" => self.0 = Some(map.next_value()?),
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct ObjectFields<'a> {
    kind: Text<'a>,
    id: Text<'a>,
    client_reference_id: Text<'a>,
    metadata_order_id: Option<Cow<'a, str>>,
    payment_intent: Option<Cow<'a, str>>,
    amount_total: Option<Decimal>,
    amount: Option<Decimal>,
    currency: Text<'a>,
    payment_status: Text<'a>,
    status: Text<'a>,
    payment_error: PaymentErrorFields<'a>,
}

impl<'de> Pick<'de> for ObjectFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "object" => self.kind = map.next_value()?,
            "id" => self.id = map.next_value()?,
            "client_reference_id" => self.client_reference_id = map.next_value()?,
            "metadata" => self.metadata_order_id = map.next_value::<Lenient<MetadataFields>>()?.0 .0,
            "payment_intent" => self.payment_intent = map.next_value::<Reference>()?.0,
            "amount_total" => self.amount_total = map.next_value::<Amount>()?.0,
            "amount" => self.amount = map.next_value::<Amount>()?.0,
            "currency" => self.currency = map.next_value()?,
            "payment_status" => self.payment_status = map.next_value()?,
            "status" => self.status = map.next_value()?,
            "last_payment_error" => self.payment_error = map.next_value::<Lenient<PaymentErrorFields>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl ObjectFields<'_> {
    fn into_object(self) -> StripeObject {
        let e = self.payment_error;
        StripeObject {
            kind: self.kind.owned(),
            id: self.id.owned(),
            client_reference_id: self.client_reference_id.owned(),
            metadata_order_id: self.metadata_order_id.map(Cow::into_owned),
            payment_intent: self.payment_intent.map(Cow::into_owned),
            amount_total: self.amount_total,
            amount: self.amount,
            currency: self.currency.owned(),
            payment_status: self.payment_status.owned(),
            status: self.status.owned(),
            payment_error: [e.code, e.decline_code, e.message].into_iter().filter_map(Text::owned).collect(),
        }
    }
}

#[derive(Default)]
struct MetadataFields<'a>(Option<Cow<'a, str>>);

impl<'de> Pick<'de> for MetadataFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "order_id" => self.0 = map.next_value::<Text>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct PaymentErrorFields<'a> {
    code: Text<'a>,
    decline_code: Text<'a>,
    message: Text<'a>,
}

impl<'de> Pick<'de> for PaymentErrorFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "code" => self.code = map.next_value()?,
            "decline_code" => self.decline_code = map.next_value()?,
            "message" => self.message = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
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
        assert_eq!(e.created, Some(1719800000));
    }

    #[test]
    fn created_is_a_whole_number_of_seconds_or_nothing() {
        let created = |value: &str| {
            let body = format!(r#"{{"id":"evt","type":"x","created":{value}}}"#);
            parse_stripe_event(body.as_bytes()).unwrap().created
        };
        assert_eq!(created("1719800000"), Some(1719800000));
        assert_eq!(created("1719800000.5"), None);
        assert_eq!(created(r#""soon""#), None);
        assert_eq!(created("null"), None);
        assert_eq!(parse_stripe_event(br#"{"id":"evt","type":"x"}"#).unwrap().created, None);
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

    #[test]
    fn control_characters_in_the_id_type_or_order_id_are_refused_naming_the_field() {
        let cases: [(&[u8], &str, u32); 5] = [
            (br#"{"id":"evt\u0000","type":"x"}"#, "id", 0),
            (br#"{"id":"evt","type":"x\u001b"}"#, "type", 0x1b),
            (br#"{"id":"evt","type":"x","data":{"object":{"client_reference_id":"o\u0000"}}}"#, CLIENT_REFERENCE_ID, 0),
            (
                br#"{"id":"evt","type":"x","data":{"object":{"metadata":{"order_id":"o\u007f"}}}}"#,
                METADATA_ORDER_ID,
                0x7f,
            ),
            ("{\"id\":\"evt\u{9f}\",\"type\":\"x\"}".as_bytes(), "id", 0x9f),
        ];
        for (body, field, code) in cases {
            assert_eq!(parse_stripe_event(body), Err(PayloadError::ControlCharacter(field, code)));
        }
        // An order id that is not the one used, and any other field, may hold anything.
        let body = br#"{"id":"evt","type":"x","data":{"object":{"client_reference_id":"o","metadata":{"order_id":"\u0000"},"description":"\u0000"}}}"#;
        assert_eq!(parse_stripe_event(body).unwrap().order_id(), Some("o"));
    }
}
