//! Benchmark events: `checkout.session.completed` as Stripe sends it today, with the session
//! fields a real one carries (about 1.5 KB), signed with the test secret.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use shared::verify::stripe::sign_stripe_payload;

use crate::load::SignedEvent;

/// The Stripe secret ingest and the inline peer are started with.
pub const SECRET: &str = testkit::events::STRIPE_SECRET;

/// A realistic session event for order `order_id`.
pub fn session_completed(event_id: &str, order_id: &str) -> Vec<u8> {
    let created = chrono::Utc::now().timestamp();
    let session = json!({
            "id": format!("cs_test_a1{order_id}b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"),
            "object": "checkout.session",
            "allow_promotion_codes": null,
            "amount_subtotal": 30000,
            "amount_total": 30000,
            "automatic_tax": {"enabled": false, "liability": null, "status": null},
            "cancel_url": "https://example.com/checkout/cancel",
            "client_reference_id": order_id,
            "created": created - 60,
            "currency": "usd",
            "custom_fields": [],
            "customer": "cus_PxYzAbCdEfGh12",
            "customer_creation": "if_required",
            "customer_details": {
                "address": {"city": "Seoul", "country": "KR", "line1": "1 Sejong-daero", "line2": null,
                            "postal_code": "04524", "state": null},
                "email": "member@example.com", "name": "Kim Minji", "phone": null,
                "tax_exempt": "none", "tax_ids": []
            },
            "expires_at": created + 86_340,
            "invoice": null,
            "locale": "ko",
            "metadata": {"order_id": order_id, "booking_id": "bk_7f3a9c21", "trainer": "tr_0192"},
            "mode": "payment",
            "payment_intent": format!("pi_3Pq{order_id}XyZ"),
            "payment_link": null,
            "payment_method_collection": "if_required",
            "payment_method_types": ["card"],
            "payment_status": "paid",
            "setup_intent": null,
            "shipping_cost": null,
            "shipping_details": null,
            "status": "complete",
            "submit_type": "pay",
            "subscription": null,
            "success_url": "https://example.com/checkout/success?session_id={CHECKOUT_SESSION_ID}",
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": null
    });
    serde_json::to_vec(&json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "checkout.session.completed",
        "data": {"object": session}
    }))
    .expect("serialisable")
}

/// `count` events for orders `ord0..`, ids `evt_<tag>_<i>`, signed now.
pub fn signed_batch(tag: &str, count: usize) -> Arc<Vec<SignedEvent>> {
    let now = chrono::Utc::now().timestamp();
    Arc::new(
        (0..count)
            .map(|i| {
                let body = session_completed(&format!("evt_{tag}_{i}"), &format!("ord{i}"));
                let signature = sign_stripe_payload(&body, SECRET, now).parse().expect("ASCII header");
                SignedEvent { body: Bytes::from(body), signature }
            })
            .collect(),
    )
}

/// Events made one at a time, when each is due: order `ord<i>`, id `evt_<tag>_<i>`, signed at
/// that moment. A long run at thousands of events a second would not fit in memory prepared
/// ahead, and building each from JSON would load the generator more than ingest.
pub struct EventTemplate {
    /// The body split where the number goes.
    pieces: Vec<String>,
}

const NUMBER: &str = "#N#";

impl EventTemplate {
    pub fn new(tag: &str) -> Self {
        let body = session_completed(&format!("evt_{tag}_{NUMBER}"), &format!("ord{NUMBER}"));
        let body = String::from_utf8(body).expect("JSON is UTF-8");
        Self { pieces: body.split(NUMBER).map(str::to_string).collect() }
    }

    /// Event `i`, signed now.
    pub fn signed(&self, i: usize) -> SignedEvent {
        let number = i.to_string();
        let mut body = String::with_capacity(self.pieces.iter().map(String::len).sum::<usize>() + 8 * number.len());
        for (n, piece) in self.pieces.iter().enumerate() {
            if n > 0 {
                body.push_str(&number);
            }
            body.push_str(piece);
        }
        let signature = sign_stripe_payload(body.as_bytes(), SECRET, chrono::Utc::now().timestamp());
        SignedEvent { body: Bytes::from(body), signature: signature.parse().expect("ASCII header") }
    }
}
