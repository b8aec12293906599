//! Realistic provider bodies and the headers their senders would attach.

use serde_json::{json, Value};
use shared::verify::stripe::sign_stripe_payload;
use shared::verify::toss::sign_toss_payload;

/// The Stripe secret test settings use.
pub const STRIPE_SECRET: &str = "whsec_test_0123456789abcdef";
/// A Toss security key for tests of signed Toss events.
pub const TOSS_SECRET: &str = "toss_test_security_key";

/// A `checkout.session.*` event for `order_id`.
pub fn stripe_session_event(event_id: &str, event_type: &str, order_id: &str, payment_status: &str, amount: i64, currency: &str) -> Vec<u8> {
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

/// `Stripe-Signature` for `body` signed now with `secret`.
pub fn stripe_signature(body: &[u8], secret: &str) -> String {
    sign_stripe_payload(body, secret, chrono::Utc::now().timestamp())
}

/// A wrapped `PAYMENT_STATUS_CHANGED`.
pub fn toss_payment_status_changed(order_id: &str, payment_key: &str, status: &str, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "PAYMENT_STATUS_CHANGED",
        "createdAt": chrono::Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
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
        "createdAt": chrono::Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        "secret": secret, "status": status, "transactionKey": format!("tx_{order_id}"), "orderId": order_id
    }))
    .expect("serialisable")
}

/// A `payout.changed` envelope.
pub fn toss_payout_changed(event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "payout.changed", "createdAt": "2026-01-02T14:46:59.65327", "version": "2022-11-16",
        "eventId": event_id, "entityType": "payout", "entityBody": {"payoutId": "FPA_1", "status": "COMPLETED"}
    }))
    .expect("serialisable")
}

/// Headers Toss sends with every delivery; with `key`, also a signature over `body`.
pub fn toss_headers(body: &[u8], key: Option<&str>) -> Vec<(String, String)> {
    let time = "2024-09-05T12:19:21+09:00".to_string();
    let mut headers = vec![
        ("tosspayments-webhook-transmission-id".to_string(), format!("whtrans_{}", crate::unique("x"))),
        ("tosspayments-webhook-transmission-time".to_string(), time.clone()),
        ("tosspayments-webhook-transmission-retried-count".to_string(), "0".to_string()),
    ];
    if let Some(key) = key {
        let sig = sign_toss_payload(body, &time, key);
        headers.push(("tosspayments-webhook-signature".to_string(), format!("v1:{sig},v1:{sig}")));
    }
    headers
}
