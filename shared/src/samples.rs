//! Realistic provider events, shaped as Stripe and Toss send them: for `hookctl send` (the
//! offline replacement for `stripe trigger` and the guide's curl) and for tests.

use chrono::{FixedOffset, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::verify::toss::sign_toss_payload;

/// A `checkout.session.*` event for `order_id`.
pub fn stripe_session_event(
    event_id: &str,
    event_type: &str,
    order_id: &str,
    payment_status: &str,
    amount: i64,
    currency: &str,
) -> Vec<u8> {
    let session = json!({
        "id": format!("cs_test_{order_id}"),
        "object": "checkout.session",
        "mode": "payment",
        "status": if event_type == "checkout.session.expired" { "expired" } else { "complete" },
        "payment_status": payment_status,
        "client_reference_id": order_id,
        "metadata": {"order_id": order_id},
        "payment_intent": format!("pi_{order_id}"),
        "amount_total": amount,
        "currency": currency,
        "livemode": false
    });
    stripe_envelope(event_id, event_type, session)
}

/// A `payment_intent.payment_failed` event carrying the order only in metadata.
pub fn stripe_payment_failed(event_id: &str, order_id: &str, amount: i64, currency: &str) -> Vec<u8> {
    let intent = json!({
        "id": format!("pi_{order_id}"),
        "object": "payment_intent",
        "amount": amount,
        "currency": currency,
        "status": "requires_payment_method",
        "metadata": {"order_id": order_id},
        "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}
    });
    stripe_envelope(event_id, "payment_intent.payment_failed", intent)
}

fn stripe_envelope(event_id: &str, event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
        "data": {"object": object}
    }))
    .expect("serialisable")
}

/// A wrapped `PAYMENT_STATUS_CHANGED`.
pub fn toss_payment_status_changed(order_id: &str, payment_key: &str, status: &str, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "PAYMENT_STATUS_CHANGED",
        "createdAt": toss_created_at(),
        "data": {
            "mId": "tvivarepublica4", "version": "2022-11-16", "paymentKey": payment_key,
            "orderId": order_id, "orderName": "PT 10회", "status": status, "method": "카드",
            "currency": "KRW", "totalAmount": amount, "balanceAmount": amount,
            "approvedAt": "2026-01-02T14:46:58+09:00", "lastTransactionKey": "txrd_a01kq3",
            "secret": null, "cancels": null, "failure": null
        }
    }))
    .expect("serialisable")
}

/// The documented flat `DEPOSIT_CALLBACK`.
pub fn toss_deposit_callback(order_id: &str, status: &str, secret: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "createdAt": toss_created_at(),
        "secret": secret, "status": status, "transactionKey": format!("tx_{order_id}"), "orderId": order_id
    }))
    .expect("serialisable")
}

/// `createdAt` as Toss writes it: Korean time, no offset, a fraction.
fn toss_created_at() -> String {
    let kst = FixedOffset::east_opt(9 * 3600).expect("valid offset");
    Utc::now().with_timezone(&kst).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A `payout.changed` envelope.
pub fn toss_payout_changed(event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "payout.changed", "createdAt": "2026-01-02T14:46:59.65327", "version": "2022-11-16",
        "eventId": event_id, "entityType": "payout", "entityBody": {"payoutId": "FPA_1", "status": "COMPLETED"}
    }))
    .expect("serialisable")
}

/// The delivery headers Toss sends (transmission id, time in KST, retry count); with
/// `signing_key`, also `tosspayments-webhook-signature` over `body` (two equal `v1:` values, as
/// during a key rotation).
pub fn toss_delivery_headers(body: &[u8], signing_key: Option<&str>) -> Vec<(String, String)> {
    let kst = FixedOffset::east_opt(9 * 3600).expect("valid offset");
    let now = Utc::now();
    let time = now.with_timezone(&kst).format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let mut seed = Sha256::new();
    seed.update(body);
    seed.update(now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    let id = format!("whtrans_{}", &hex::encode(seed.finalize())[..26]);
    let mut headers = vec![
        ("tosspayments-webhook-transmission-id".to_string(), id),
        ("tosspayments-webhook-transmission-time".to_string(), time.clone()),
        ("tosspayments-webhook-transmission-retried-count".to_string(), "0".to_string()),
    ];
    if let Some(key) = signing_key {
        let sig = sign_toss_payload(body, &time, key);
        headers.push(("tosspayments-webhook-signature".to_string(), format!("v1:{sig},v1:{sig}")));
    }
    headers
}
