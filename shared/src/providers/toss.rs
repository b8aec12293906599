//! Toss Payments bodies, in every shape they are documented or reported in:
//! - `PAYMENT_STATUS_CHANGED`: `{eventType, createdAt, data: <Payment>}`;
//! - `DEPOSIT_CALLBACK`: flat `{createdAt, secret, status, transactionKey, orderId}`, or wrapped
//!   like the above (reported by some integrations);
//! - `payout.changed` / `seller.changed`: `{eventType, createdAt, version, eventId, entityType, entityBody}`;
//! - the original guide's test body: flat `{eventType, orderId, status}`.

use chrono::{DateTime, FixedOffset, NaiveDateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{check_identifier, decimal_field, parse_object, str_field, PayloadError, TossEventType};

/// The event families the pipeline tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TossEventKind {
    PaymentStatusChanged,
    DepositCallback,
    CancelStatusChanged,
    /// `payout.changed` and `seller.changed`: signed, carry `eventId`.
    Signed,
    /// Any other `eventType`: acknowledged and recorded, not applied.
    Other,
}

/// What the pipeline reads from a Toss body. `payment` is the object the fields came from
/// (`data` when wrapped, the body itself when flat, `entityBody` for signed events).
#[derive(Debug, Clone, PartialEq)]
pub struct TossEvent {
    pub kind: TossEventKind,
    /// `PAYMENT_STATUS_CHANGED`, `DEPOSIT_CALLBACK`, `payout.changed`, ...
    pub event_type: String,
    pub event_id: Option<String>,
    /// `createdAt` as sent: no timezone, a fraction of variable length (see [`Self::event_time`]).
    pub created_at: Option<String>,
    pub order_id: Option<String>,
    pub payment_key: Option<String>,
    pub status: Option<String>,
    pub total_amount: Option<Decimal>,
    pub currency: Option<String>,
    /// `DEPOSIT_CALLBACK.secret` / `Payment.secret`: compared with the stored one, never logged.
    pub secret: Option<String>,
    pub transaction_key: Option<String>,
    pub payment: Value,
    /// The whole body without its `secret` members, canonical JSON text: what the inbox keeps
    /// and what the event key of an unsigned event hashes.
    pub stored_body: String,
}

impl TossEvent {
    /// True for event types Toss signs.
    pub fn is_signed_type(&self) -> bool {
        self.kind == TossEventKind::Signed
    }

    /// The dedupe key: `eventId` of signed event types (whose signature covers it), else a
    /// hash of the body as it is stored ([`TossEvent::stored_body`]: Toss resends the same body
    /// on retries; whether the transmission id stays the same is not documented, so it is not
    /// relied on). An unsigned body cannot pick its own key. Hashing the stored form rather
    /// than the raw bytes lets an event kept in the inbox (without its secret) be run again
    /// under the key it first had.
    pub fn event_key(&self) -> String {
        match &self.event_id {
            Some(id) if self.is_signed_type() => id.clone(),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(self.stored_body.as_bytes()))),
        }
    }

    /// When the change happened, as far as the body says: `createdAt`, else the payment's own
    /// time ([`payment_time`]); `None` for bodies that carry neither (the guide's flat test
    /// body). Toss writes `createdAt` without a timezone; Toss runs in Korea and writes its
    /// other times with `+09:00`, so a time without an offset is read as Korean time (KST,
    /// +09:00, no daylight saving). Times are cut to microseconds, as Postgres keeps them.
    pub fn event_time(&self) -> Option<DateTime<Utc>> {
        self.created_at.as_deref().and_then(toss_time).or_else(|| payment_time(&self.payment))
    }
}

/// The time a Payment object reached its present state: the latest of `approvedAt` and its
/// `cancels[].canceledAt`. A cancelled payment still carries the `approvedAt` of its approval,
/// so `approvedAt` alone would date a cancel before the approval event. `None` when the
/// payment has neither (waiting for a deposit, aborted, expired).
pub fn payment_time(payment: &Value) -> Option<DateTime<Utc>> {
    let approved = str_field(payment, "approvedAt").and_then(toss_time);
    let canceled = payment
        .get("cancels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|cancel| str_field(cancel, "canceledAt").and_then(toss_time));
    approved.into_iter().chain(canceled).max()
}

/// Korean Standard Time, the zone of Toss's times that carry none.
const KST_SECONDS: i32 = 9 * 3600;

/// A Toss time: RFC 3339 with an offset (`2026-01-02T14:46:58+09:00`), or without one
/// (`2026-01-02T14:46:59.65327`, read as KST); `None` for anything else.
pub fn toss_time(text: &str) -> Option<DateTime<Utc>> {
    let time = match DateTime::parse_from_rfc3339(text) {
        Ok(time) => time.with_timezone(&Utc),
        Err(_) => {
            let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
            let kst = FixedOffset::east_opt(KST_SECONDS).expect("a valid offset");
            local.and_local_timezone(kst).single()?.with_timezone(&Utc)
        }
    };
    Some(time.trunc_subsecs(6))
}

/// `value` as JSON text without any `secret` member (at any depth), with object keys sorted
/// and no insignificant whitespace: the same text for the same content, whatever the bytes
/// were, and the same again when it is parsed and stored a second time.
pub fn without_secrets(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| k.as_str() != "secret").collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), without_secrets(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(without_secrets).collect()),
        other => other.clone(),
    }
}

/// Parses any of the documented shapes. Fails only for bodies that are not JSON objects, that
/// look like no Toss event at all, or whose identifiers (event type and id, order id, payment
/// and transaction keys, status, currency, secret) hold a control character.
pub fn parse_toss_event(body: &[u8]) -> Result<TossEvent, PayloadError> {
    let root = Value::Object(parse_object(body)?);
    let event_type = str_field(&root, "eventType").map(str::to_string);
    let (kind, event_type, payment) = match event_type {
        None => {
            // The documented DEPOSIT_CALLBACK is flat and has no eventType.
            let deposit_like = root.get("secret").is_some()
                || (str_field(&root, "status").is_some() && str_field(&root, "orderId").is_some());
            if !deposit_like {
                return Err(PayloadError::UnrecognisedToss);
            }
            (TossEventKind::DepositCallback, TossEventType::DepositCallback.to_string(), root.clone())
        }
        Some(t) => {
            let kind = match t.parse::<TossEventType>() {
                Ok(TossEventType::PaymentStatusChanged) => TossEventKind::PaymentStatusChanged,
                Ok(TossEventType::DepositCallback) => TossEventKind::DepositCallback,
                Ok(TossEventType::CancelStatusChanged) => TossEventKind::CancelStatusChanged,
                Ok(signed) if signed.is_signed() => TossEventKind::Signed,
                _ => TossEventKind::Other,
            };
            let inner = if kind == TossEventKind::Signed { "entityBody" } else { "data" };
            let payment = match root.get(inner) {
                Some(obj @ Value::Object(_)) => obj.clone(),
                _ => root.clone(),
            };
            (kind, t, payment)
        }
    };
    let text = |key: &str| str_field(&payment, key).map(str::to_string);
    let event = TossEvent {
        kind,
        event_type,
        event_id: str_field(&root, "eventId").map(str::to_string),
        created_at: str_field(&root, "createdAt").map(str::to_string),
        order_id: text("orderId"),
        payment_key: text("paymentKey"),
        status: text("status"),
        total_amount: decimal_field(&payment, "totalAmount"),
        currency: text("currency"),
        secret: text("secret"),
        transaction_key: text("transactionKey").or_else(|| text("lastTransactionKey")),
        payment,
        stored_body: without_secrets(&root).to_string(),
    };
    event.check_identifiers()?;
    Ok(event)
}

impl TossEvent {
    /// Every value read out of the body that becomes a key, a routing key, an API path or a
    /// stored identifier is free of control characters.
    fn check_identifiers(&self) -> Result<(), PayloadError> {
        check_identifier("eventType", &self.event_type)?;
        for (field, value) in [
            ("eventId", &self.event_id),
            ("orderId", &self.order_id),
            ("paymentKey", &self.payment_key),
            ("status", &self.status),
            ("currency", &self.currency),
            ("secret", &self.secret),
            ("transactionKey", &self.transaction_key),
        ] {
            if let Some(value) = value {
                check_identifier(field, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRAPPED: &[u8] = r#"{"eventType":"PAYMENT_STATUS_CHANGED","createdAt":"2026-01-02T14:46:59.65327",
 "data":{"mId":"tvivarepublica4","version":"2022-11-16","paymentKey":"tviva20260102144643uN3L9",
  "orderId":"order_7f3a9c","orderName":"PT 10회","status":"DONE","method":"카드","currency":"KRW",
  "totalAmount":37400,"balanceAmount":37400,"approvedAt":"2026-01-02T14:46:58+09:00",
  "lastTransactionKey":"txrd_a01kq3","secret":null,"cancels":null,"failure":null}}"#
        .as_bytes();

    #[test]
    fn wrapped_payment_status_changed() {
        let e = parse_toss_event(WRAPPED).unwrap();
        assert_eq!(e.kind, TossEventKind::PaymentStatusChanged);
        assert_eq!(e.event_type, "PAYMENT_STATUS_CHANGED");
        assert_eq!(e.order_id.as_deref(), Some("order_7f3a9c"));
        assert_eq!(e.payment_key.as_deref(), Some("tviva20260102144643uN3L9"));
        assert_eq!(e.status.as_deref(), Some("DONE"));
        assert_eq!(e.total_amount, Some(Decimal::from(37400)));
        assert_eq!(e.currency.as_deref(), Some("KRW"));
        assert_eq!(e.secret, None);
        assert_eq!(e.transaction_key.as_deref(), Some("txrd_a01kq3"));
        assert_eq!(e.created_at.as_deref(), Some("2026-01-02T14:46:59.65327"));
        assert!(e.event_key().starts_with("sha256:"));
    }

    #[test]
    fn flat_deposit_callback_without_event_type() {
        let body = br#"{"createdAt":"2026-01-02T14:46:59","secret":"ps_abc","status":"DONE","transactionKey":"tx1","orderId":"o-1"}"#;
        let e = parse_toss_event(body).unwrap();
        assert_eq!(e.kind, TossEventKind::DepositCallback);
        assert_eq!(e.event_type, "DEPOSIT_CALLBACK");
        assert_eq!(e.secret.as_deref(), Some("ps_abc"));
        assert_eq!(e.order_id.as_deref(), Some("o-1"));
        assert_eq!(e.transaction_key.as_deref(), Some("tx1"));
    }

    #[test]
    fn wrapped_deposit_callback() {
        let body = br#"{"eventType":"DEPOSIT_CALLBACK","createdAt":"2026-01-02T14:46:59","data":{"secret":"ps_abc","status":"WAITING_FOR_DEPOSIT","orderId":"o-2"}}"#;
        let e = parse_toss_event(body).unwrap();
        assert_eq!(e.kind, TossEventKind::DepositCallback);
        assert_eq!(e.status.as_deref(), Some("WAITING_FOR_DEPOSIT"));
        assert_eq!(e.order_id.as_deref(), Some("o-2"));
    }

    #[test]
    fn payout_and_seller_envelopes_use_their_event_id() {
        for t in ["payout.changed", "seller.changed"] {
            let body = format!(
                r#"{{"eventType":"{t}","createdAt":"2026-01-02T14:46:59","version":"2022-11-16","eventId":"evt-{t}","entityType":"payout","entityBody":{{"status":"COMPLETED"}}}}"#
            );
            let e = parse_toss_event(body.as_bytes()).unwrap();
            assert_eq!(e.kind, TossEventKind::Signed);
            assert!(e.is_signed_type());
            assert_eq!(e.event_type, t);
            assert_eq!(e.event_key(), format!("evt-{t}"));
            assert_eq!(e.status.as_deref(), Some("COMPLETED"));
        }
    }

    #[test]
    fn the_guides_flat_test_body() {
        let body = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"test_order_id","status":"DONE"}"#;
        let e = parse_toss_event(body).unwrap();
        assert_eq!(e.kind, TossEventKind::PaymentStatusChanged);
        assert_eq!(e.order_id.as_deref(), Some("test_order_id"));
        assert_eq!(e.status.as_deref(), Some("DONE"));
    }

    #[test]
    fn other_event_types_parse_and_keys_depend_on_the_content() {
        let a = br#"{"eventType":"CANCEL_STATUS_CHANGED","data":{"transactionKey":"t"}}"#;
        let same = br#"{ "data": {"transactionKey": "t"}, "eventType": "CANCEL_STATUS_CHANGED" }"#;
        let other = br#"{"eventType":"CANCEL_STATUS_CHANGED","data":{"transactionKey":"u"}}"#;
        let e = parse_toss_event(a).unwrap();
        assert_eq!(e.kind, TossEventKind::CancelStatusChanged);
        assert_eq!(e.event_key(), parse_toss_event(same).unwrap().event_key());
        assert_ne!(e.event_key(), parse_toss_event(other).unwrap().event_key());
        assert_eq!(parse_toss_event(br#"{"eventType":"NEW_THING"}"#).unwrap().kind, TossEventKind::Other);
    }

    #[test]
    fn the_stored_body_has_no_secret_and_keeps_the_key_when_read_again() {
        let body = br#"{"createdAt":"2026-01-02T14:46:59","secret":"ps_abc","status":"DONE","orderId":"o-1",
                        "data":{"secret":"ps_inner","cancels":[{"secret":"x","n":1.5}]}}"#;
        let first = parse_toss_event(body).unwrap();
        assert!(!first.stored_body.contains("secret"), "{}", first.stored_body);
        assert_eq!(first.secret.as_deref(), Some("ps_abc"), "the parsed event still has it for the check");
        let again = parse_toss_event(first.stored_body.as_bytes()).unwrap();
        assert_eq!(again.stored_body, first.stored_body);
        assert_eq!(again.event_key(), first.event_key());
    }

    #[test]
    fn an_unsigned_body_cannot_choose_its_key() {
        let body =
            br#"{"eventType":"PAYMENT_STATUS_CHANGED","eventId":"evt_chosen","data":{"orderId":"o","status":"DONE"}}"#;
        assert!(parse_toss_event(body).unwrap().event_key().starts_with("sha256:"));
    }

    #[test]
    fn unrecognisable_bodies_fail() {
        assert_eq!(parse_toss_event(b"[1]"), Err(PayloadError::NotJsonObject));
        assert_eq!(parse_toss_event(b"{}"), Err(PayloadError::UnrecognisedToss));
        assert_eq!(parse_toss_event(br#"{"orderId":"x"}"#), Err(PayloadError::UnrecognisedToss));
    }

    #[test]
    fn created_at_without_a_timezone_is_korean_time() {
        let e = parse_toss_event(WRAPPED).unwrap();
        let expected = DateTime::parse_from_rfc3339("2026-01-02T05:46:59.653270Z").unwrap();
        assert_eq!(e.event_time(), Some(expected.with_timezone(&Utc)));
        assert_eq!(toss_time("2026-01-02T14:46:59"), toss_time("2026-01-02T05:46:59Z"));
        assert_eq!(toss_time("2026-01-02T14:46:59.5+09:00"), toss_time("2026-01-02T05:46:59.500Z"));
        assert_eq!(toss_time("2026-01-02T14:46:59.123456789"), toss_time("2026-01-02T14:46:59.123456"));
        assert_eq!(toss_time("yesterday"), None);
        assert_eq!(toss_time(""), None);
    }

    #[test]
    fn without_created_at_the_payments_latest_time_counts() {
        let canceled = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"CANCELED",
            "approvedAt":"2026-01-02T14:46:58+09:00",
            "cancels":[{"canceledAt":"2026-01-03T10:00:00+09:00"},{"canceledAt":"2026-01-04T10:00:00+09:00"}]}}"#;
        assert_eq!(parse_toss_event(canceled).unwrap().event_time(), toss_time("2026-01-04T10:00:00+09:00"));
        let approved =
            br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"DONE","approvedAt":"2026-01-02T14:46:58+09:00","cancels":null}}"#;
        assert_eq!(parse_toss_event(approved).unwrap().event_time(), toss_time("2026-01-02T14:46:58+09:00"));
        let guide = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"test_order_id","status":"DONE"}"#;
        assert_eq!(parse_toss_event(guide).unwrap().event_time(), None);
    }

    #[test]
    fn control_characters_in_identifiers_are_refused_naming_the_field() {
        let cases: [(&[u8], &str, u32); 6] = [
            (br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o\u0000","status":"DONE"}}"#, "orderId", 0),
            (br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","paymentKey":"k\u001b","status":"DONE"}}"#, "paymentKey", 0x1b),
            (br#"{"eventType":"PAYMENT\u007f","data":{"orderId":"o","status":"DONE"}}"#, "eventType", 0x7f),
            ("{\"secret\":\"ps_\u{85}\",\"status\":\"DONE\",\"orderId\":\"o\"}".as_bytes(), "secret", 0x85),
            (br#"{"eventType":"payout.changed","eventId":"e\n","entityBody":{}}"#, "eventId", 0x0a),
            (br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"DONE","currency":"KR\tW"}}"#, "currency", 0x09),
        ];
        for (body, field, code) in cases {
            assert_eq!(
                parse_toss_event(body),
                Err(PayloadError::ControlCharacter(field, code)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Elsewhere in a body, control characters are just text.
        let body =
            br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"DONE","orderName":"PT\u0000"}}"#;
        assert!(parse_toss_event(body).is_ok());
    }

    #[test]
    fn amounts_keep_their_decimals() {
        let body = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o","status":"DONE","totalAmount":12.5,"currency":"USD"}}"#;
        assert_eq!(parse_toss_event(body).unwrap().total_amount, Some("12.5".parse().unwrap()));
    }
}
