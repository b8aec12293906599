//! The three fields ingest reads from a Stripe event (`id`, `type`, and the order id for its
//! log line), read in one pass over the raw bytes without building a JSON document: strings
//! are borrowed from the body unless they contain escapes, everything else is skipped.
//!
//! It answers exactly as [`parse_stripe_event`](super::stripe::parse_stripe_event) followed by
//! `order_id()` does (the worker still parses the whole event that way): the body must be one
//! JSON object; a field that is missing, empty or not a string counts as missing; a key given
//! twice counts with its last value; a `data` or `object` that is not an object holds nothing.

use std::borrow::Cow;

use serde::de::MapAccess;

use super::pick::{skip, Lenient, Object, Pick, Text};
use super::stripe::{CLIENT_REFERENCE_ID, METADATA_ORDER_ID};
use super::{check_identifier, PayloadError};

/// What ingest needs from a Stripe event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEventHead<'a> {
    /// `evt_...`, the dedupe key.
    pub id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// `data.object.client_reference_id`, else `data.object.metadata.order_id`.
    pub order_id: Option<Cow<'a, str>>,
}

/// Reads `id`, `type` and the order id of a Stripe event.
pub fn parse_stripe_event_head(body: &[u8]) -> Result<StripeEventHead<'_>, PayloadError> {
    // The full parser refuses invalid UTF-8 anywhere; skipped strings are not checked by the
    // JSON reader, so the whole body is checked first (and then read as text).
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotJsonObject)?;
    let Object(root) = serde_json::from_str::<Object<EventFields>>(text).map_err(|_| PayloadError::NotJsonObject)?;
    let id = root.id.ok_or(PayloadError::MissingField("id"))?;
    let event_type = root.event_type.ok_or(PayloadError::MissingField("type"))?;
    check_identifier("id", &id)?;
    check_identifier("type", &event_type)?;
    let object = root.data.object;
    let order_id = match (object.client_reference_id, object.metadata.order_id) {
        (Some(order), _) => check_identifier(CLIENT_REFERENCE_ID, &order).map(|()| Some(order))?,
        (None, Some(order)) => check_identifier(METADATA_ORDER_ID, &order).map(|()| Some(order))?,
        (None, None) => None,
    };
    Ok(StripeEventHead { id, event_type, order_id })
}

#[derive(Default)]
struct EventFields<'a> {
    id: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    data: DataFields<'a>,
}

#[derive(Default)]
struct DataFields<'a> {
    object: ObjectFields<'a>,
}

#[derive(Default)]
struct ObjectFields<'a> {
    client_reference_id: Option<Cow<'a, str>>,
    metadata: MetadataFields<'a>,
}

#[derive(Default)]
struct MetadataFields<'a> {
    order_id: Option<Cow<'a, str>>,
}

impl<'de> Pick<'de> for EventFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "id" => self.id = map.next_value::<Text>()?.0,
            "type" => self.event_type = map.next_value::<Text>()?.0,
            "data" => self.data = map.next_value::<Lenient<DataFields>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> Pick<'de> for DataFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "object" => self.object = map.next_value::<Lenient<ObjectFields>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> Pick<'de> for ObjectFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "client_reference_id" => self.client_reference_id = map.next_value::<Text>()?.0,
            "metadata" => self.metadata = map.next_value::<Lenient<MetadataFields>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> Pick<'de> for MetadataFields<'de> {
    fn pick<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "order_id" => self.order_id = map.next_value::<Text>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::stripe::parse_stripe_event;
    use super::*;

    /// The full parser's answer, in the head parser's terms.
    fn full(body: &[u8]) -> Result<(String, String, Option<String>), PayloadError> {
        parse_stripe_event(body).map(|e| (e.id.clone(), e.event_type.clone(), e.order_id().map(str::to_string)))
    }

    fn head(body: &[u8]) -> Result<(String, String, Option<String>), PayloadError> {
        parse_stripe_event_head(body)
            .map(|h| (h.id.into_owned(), h.event_type.into_owned(), h.order_id.map(Cow::into_owned)))
    }

    #[test]
    fn reads_a_checkout_session_without_copying_plain_strings() {
        let body =
            crate::samples::stripe_session_event("evt_1", "checkout.session.completed", "order_7", "paid", 3000, "usd");
        let h = parse_stripe_event_head(&body).unwrap();
        assert!(matches!(h.id, Cow::Borrowed("evt_1")));
        assert_eq!(h.event_type, "checkout.session.completed");
        assert_eq!(h.order_id.as_deref(), Some("order_7"));
    }

    #[test]
    fn agrees_with_the_full_parser_on_awkward_bodies() {
        let bodies: &[&[u8]] = &[
            b"[]",
            b"not json",
            b"",
            br#"{"id":"evt","type":"t"} trailing"#,
            br#"{"type":"x"}"#,
            br#"{"id":"evt"}"#,
            br#"{"id":7,"type":"x"}"#,
            br#"{"id":"","type":"x"}"#,
            br#"{"id":"a","id":"b","type":"x"}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":"o1"}},"data":{"object":{}}}"#,
            br#"{"id":"a","type":"x","data":[1,2]}"#,
            br#"{"id":"a","type":"x","data":{"object":"str"}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":"","metadata":{"order_id":"m"}}}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":5,"metadata":{"order_id":"m"}}}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"metadata":{"order_id":{"nested":1}}}}}"#,
            br#"{"id":"e\u0076t\n","type":"x\"y","data":{"object":{"client_reference_id":"\u00e9"}}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":null}}}"#,
            br#"{"id":"a\u0000","type":"x\u0001"}"#,
            br#"{"id":"a","type":"x\u0001"}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":"\u001b","metadata":{"order_id":"m"}}}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"client_reference_id":"o","metadata":{"order_id":"\u0000"}}}}"#,
            br#"{"id":"a","type":"x","data":{"object":{"metadata":{"order_id":"\u007f"}}}}"#,
            b"{\"id\":\"a\",\"type\":\"x\",\"skipped\":\"\xff\"}",
        ];
        for body in bodies {
            assert_eq!(head(body), full(body), "{}", String::from_utf8_lossy(body));
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\é\\x00\\x1b\\x7f\\u{85}]{0,4}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("id".to_string()),
                            Just("type".to_string()),
                            Just("data".to_string()),
                            Just("object".to_string()),
                            Just("metadata".to_string()),
                            Just("order_id".to_string()),
                            Just("client_reference_id".to_string()),
                            "[a-z]{1,3}"
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_the_full_parser_on_any_json(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(head(&body), full(&body));
        }
    }
}
