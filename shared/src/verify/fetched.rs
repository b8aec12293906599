//! Proof that a queued event was fetched from a provider's API by our own reconciler.
//!
//! An event the reconciler reads from Stripe's events list carries no webhook signature, and
//! the broker is not a trust boundary: anyone who can publish could claim `x-verification:
//! fetched`. So the reconciler adds `x-fetched-mac`, an HMAC-SHA256 over the provider, the
//! event key and the body, keyed by a key derived from the API key it fetched with
//! (`STRIPE_API_KEY`). Only a holder of that key can make one; the worker, which runs the
//! reconciler and so holds the key, checks it in constant time.
//!
//! The derived key, not the API key itself, keys the MAC: the API key stays an API credential
//! only, and a MAC reveals nothing usable against Stripe.

use hmac::Mac;
use secrecy::{ExposeSecret, SecretString};

use super::HmacSha256;
use crate::providers::Provider;

/// Separates this use of the API key from any other.
const DERIVATION_LABEL: &[u8] = b"webhooks fetched-event mac v1";

/// The key `x-fetched-mac` is computed with. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct FetchedMacKey(SecretString);

impl std::fmt::Debug for FetchedMacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FetchedMacKey([redacted])")
    }
}

impl FetchedMacKey {
    /// Derives the key from the provider API key (HMAC-SHA256 of a fixed label).
    pub fn derive(api_key: &SecretString) -> Self {
        let mut mac = HmacSha256::new_from_slice(api_key.expose_secret().as_bytes()).expect("HMAC takes any key");
        mac.update(DERIVATION_LABEL);
        Self(SecretString::from(hex::encode(mac.finalize().into_bytes())))
    }

    fn mac(&self, provider: Provider, event_key: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.expose_secret().as_bytes()).expect("HMAC takes any key");
        // Lengths first, so no two (key, body) pairs share an input.
        mac.update(provider.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(&(event_key.len() as u64).to_be_bytes());
        mac.update(event_key.as_bytes());
        mac.update(body);
        mac
    }

    /// The lowercase-hex MAC for an event.
    pub fn sign(&self, provider: Provider, event_key: &str, body: &[u8]) -> String {
        hex::encode(self.mac(provider, event_key, body).finalize().into_bytes())
    }

    /// Whether `mac_hex` is the MAC of this event, compared in constant time.
    pub fn verify(&self, provider: Provider, event_key: &str, body: &[u8], mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex.trim()) else { return false };
        self.mac(provider, event_key, body).verify_slice(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_holds_only_for_its_key_event_and_body() {
        let key = FetchedMacKey::derive(&SecretString::from("rk_test_1"));
        let mac = key.sign(Provider::Stripe, "evt_1", b"{}");
        assert!(key.verify(Provider::Stripe, "evt_1", b"{}", &mac));
        assert!(!key.verify(Provider::Stripe, "evt_2", b"{}", &mac));
        assert!(!key.verify(Provider::Stripe, "evt_1", b"{ }", &mac));
        assert!(!key.verify(Provider::Toss, "evt_1", b"{}", &mac));
        assert!(!key.verify(Provider::Stripe, "evt_1", b"{}", "zz"));
        let other = FetchedMacKey::derive(&SecretString::from("rk_test_2"));
        assert!(!other.verify(Provider::Stripe, "evt_1", b"{}", &mac));
        assert!(!format!("{key:?}").contains("rk_test"));
    }
}
