//! Realistic provider bodies and the headers their senders would attach.

pub use shared::samples::*;
use shared::verify::stripe::sign_stripe_payload;

/// The Stripe secret test settings use.
pub const STRIPE_SECRET: &str = "whsec_test_0123456789abcdef";
/// A Toss security key for tests of signed Toss events.
pub const TOSS_SECRET: &str = "toss_test_security_key";

/// `Stripe-Signature` for `body` signed now with `secret`.
pub fn stripe_signature(body: &[u8], secret: &str) -> String {
    sign_stripe_payload(body, secret, chrono::Utc::now().timestamp())
}

/// Headers Toss sends with every delivery; with `key`, also a signature over `body`.
pub fn toss_headers(body: &[u8], key: Option<&str>) -> Vec<(String, String)> {
    toss_delivery_headers(body, key)
}
