//! Signing in the Standard Webhooks format: headers `webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>`; signed string `"{id}.{timestamp}.{body}"`, HMAC-SHA256
//! keyed with the base64-decoded part of `whsec_<base64>` (unlike Stripe, which uses the
//! whole string as bytes).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::Mac;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::verify::HmacSha256;

/// A decoded signing key. `Debug` shows nothing of it.
pub struct SigningKey(SecretBox<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("expected whsec_ followed by base64")]
    NotBase64,
    #[error("the key is empty")]
    Empty,
}

impl SigningKey {
    /// Accepts `whsec_<base64>` (or bare base64, as several libraries do).
    pub fn parse(secret: &SecretString) -> Result<Self, SigningKeyError> {
        let raw = secret.expose_secret().trim();
        let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
        let bytes = STANDARD.decode(b64).map_err(|_| SigningKeyError::NotBase64)?;
        if bytes.is_empty() {
            return Err(SigningKeyError::Empty);
        }
        Ok(Self(SecretBox::new(Box::new(bytes))))
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(self.0.expose_secret()).expect("HMAC takes any key");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specifications_example() {
        // Example from standard-webhooks' spec and libraries' test suites.
        let key = SigningKey::parse(&SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_keys_that_are_not_base64() {
        assert!(SigningKey::parse(&SecretString::from("whsec_***")).is_err());
        assert!(SigningKey::parse(&SecretString::from("whsec_")).is_err());
    }
}
