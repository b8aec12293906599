//! Toss Payments bodies, in every shape they are documented or reported in:
//! - `PAYMENT_STATUS_CHANGED`: `{eventType, createdAt, data: <Payment>}`;
//! - `DEPOSIT_CALLBACK`: flat `{createdAt, secret, status, transactionKey, orderId}`, or wrapped
//!   like the above (reported by some integrations);
//! - `payout.changed` / `seller.changed`: `{eventType, createdAt, version, eventId, entityType, entityBody}`;
//! - the original guide's test body: flat `{eventType, orderId, status}`.

use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{check_identifier, decimal_field, parse_object, str_field, PayloadError};

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

/// Event types that Toss signs; for them a valid signature is required.
pub const SIGNED_EVENT_TYPES: [&str; 2] = ["payout.changed", "seller.changed"];

/// What the pipeline reads from a Toss body. `payment` is the object the fields came from
/// (`data` when wrapped, the body itself when flat, `entityBody` for signed events).
#[derive(Debug, Clone, PartialEq)]
pub struct TossEvent {
    pub kind: TossEventKind,
    /// `PAYMENT_STATUS_CHANGED`, `DEPOSIT_CALLBACK`, `payout.changed`, ...
    pub event_type: String,
    pub event_id: Option<String>,
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
}

impl TossEvent {
    /// True for event types Toss signs.
    pub fn is_signed_type(&self) -> bool {
        self.kind == TossEventKind::Signed
    }

    /// The dedupe key: `eventId` of signed event types (whose signature covers it), else a
    /// hash of the raw body (Toss resends the same body on retries; whether the transmission id
    /// stays the same is not documented, so it is not relied on). An unsigned body cannot pick
    /// its own key.
    pub fn event_key(&self, raw_body: &[u8]) -> String {
        match &self.event_id {
            Some(id) if self.is_signed_type() => id.clone(),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(raw_body))),
        }
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
            (TossEventKind::DepositCallback, "DEPOSIT_CALLBACK".to_string(), root.clone())
        }
        Some(t) => {
            let kind = match t.as_str() {
                "PAYMENT_STATUS_CHANGED" => TossEventKind::PaymentStatusChanged,
                "DEPOSIT_CALLBACK" => TossEventKind::DepositCallback,
                "CANCEL_STATUS_CHANGED" => TossEventKind::CancelStatusChanged,
                s if SIGNED_EVENT_TYPES.contains(&s) => TossEventKind::Signed,
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
        assert!(e.event_key(WRAPPED).starts_with("sha256:"));
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
        for t in SIGNED_EVENT_TYPES {
            let body = format!(
                r#"{{"eventType":"{t}","createdAt":"2026-01-02T14:46:59","version":"2022-11-16","eventId":"evt-{t}","entityType":"payout","entityBody":{{"status":"COMPLETED"}}}}"#
            );
            let e = parse_toss_event(body.as_bytes()).unwrap();
            assert_eq!(e.kind, TossEventKind::Signed);
            assert!(e.is_signed_type());
            assert_eq!(e.event_type, t);
            assert_eq!(e.event_key(body.as_bytes()), format!("evt-{t}"));
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
    fn other_event_types_parse_and_keys_depend_on_the_bytes() {
        let a = br#"{"eventType":"CANCEL_STATUS_CHANGED","data":{"transactionKey":"t"}}"#;
        let b = br#"{"eventType":"CANCEL_STATUS_CHANGED", "data":{"transactionKey":"t"}}"#;
        let e = parse_toss_event(a).unwrap();
        assert_eq!(e.kind, TossEventKind::CancelStatusChanged);
        assert_ne!(e.event_key(a), parse_toss_event(b).unwrap().event_key(b));
        assert_eq!(e.event_key(a), e.event_key(a));
        assert_eq!(parse_toss_event(br#"{"eventType":"NEW_THING"}"#).unwrap().kind, TossEventKind::Other);
    }

    #[test]
    fn an_unsigned_body_cannot_choose_its_key() {
        let body =
            br#"{"eventType":"PAYMENT_STATUS_CHANGED","eventId":"evt_chosen","data":{"orderId":"o","status":"DONE"}}"#;
        assert!(parse_toss_event(body).unwrap().event_key(body).starts_with("sha256:"));
    }

    #[test]
    fn unrecognisable_bodies_fail() {
        assert_eq!(parse_toss_event(b"[1]"), Err(PayloadError::NotJsonObject));
        assert_eq!(parse_toss_event(b"{}"), Err(PayloadError::UnrecognisedToss));
        assert_eq!(parse_toss_event(br#"{"orderId":"x"}"#), Err(PayloadError::UnrecognisedToss));
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
