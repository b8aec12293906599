//! `tosspayments-webhook-signature: v1:<base64>,v1:<base64>` on `payout.changed` and
//! `seller.changed`. The signed string is `"{raw body}:{transmission-time header}"`,
//! HMAC-SHA256 keyed with the security key's UTF-8 bytes, base64 (standard alphabet).
//! Two values appear during key rotation: valid when either matches.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::Mac;
use secrecy::{ExposeSecret, SecretString};

use super::HmacSha256;

/// Why a Toss signature was rejected. The text is safe to show to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TossSignatureError {
    #[error("tosspayments-webhook-signature header is missing")]
    Missing,
    #[error("tosspayments-webhook-transmission-time header is missing")]
    MissingTransmissionTime,
    #[error("tosspayments-webhook-signature header has no v1: value")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    NoMatch,
}

/// Verifies a Toss signature header for `body` sent at `transmission_time`.
pub fn verify_toss_signature(
    body: &[u8],
    signature_header: Option<&str>,
    transmission_time: Option<&str>,
    secret: &SecretString,
) -> Result<(), TossSignatureError> {
    let header = signature_header.ok_or(TossSignatureError::Missing)?;
    let time = transmission_time.ok_or(TossSignatureError::MissingTransmissionTime)?;
    let candidates: Vec<Vec<u8>> = header
        .split(',')
        .filter_map(|item| item.trim().strip_prefix("v1:"))
        .filter_map(|b64| STANDARD.decode(b64.trim()).ok())
        .collect();
    if candidates.is_empty() {
        return Err(TossSignatureError::Malformed);
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
        return Err(TossSignatureError::NoMatch);
    };
    mac.update(body);
    mac.update(b":");
    mac.update(time.as_bytes());
    let matched = candidates.iter().fold(false, |found, sig| mac.clone().verify_slice(sig).is_ok() | found);
    if matched {
        Ok(())
    } else {
        Err(TossSignatureError::NoMatch)
    }
}

/// The base64 signature Toss would send; for tests and `hookctl send`.
pub fn sign_toss_payload(body: &[u8], transmission_time: &str, secret: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.update(b":");
    mac.update(transmission_time.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODY: &[u8] = br#"{"eventType":"payout.changed","eventId":"e1"}"#;
    const TIME: &str = "2024-09-05T12:19:21+09:00";

    fn key(k: &str) -> SecretString {
        SecretString::from(k)
    }

    #[test]
    fn matches_an_independently_computed_signature() {
        // Python: base64(hmac.new(b"toss_security_key", BODY + b":" + TIME, sha256).digest())
        let expected = "vhmiQbq+dg+c/DLZg06vN4gBzpjHZJKv1uhW3rle6a8=";
        assert_eq!(sign_toss_payload(BODY, TIME, "toss_security_key"), expected);
        let header = format!("v1:{expected}");
        assert_eq!(verify_toss_signature(BODY, Some(&header), Some(TIME), &key("toss_security_key")), Ok(()));
    }

    #[test]
    fn either_of_two_values_matches() {
        let good = sign_toss_payload(BODY, TIME, "k");
        let other = sign_toss_payload(BODY, TIME, "rotated");
        for header in [format!("v1:{good},v1:{other}"), format!("v1:{other}, v1:{good}")] {
            assert_eq!(verify_toss_signature(BODY, Some(&header), Some(TIME), &key("k")), Ok(()));
        }
    }

    #[test]
    fn wrong_key_body_or_time_fails() {
        let header = format!("v1:{}", sign_toss_payload(BODY, TIME, "k"));
        let check = |body: &[u8], time: &str, k: &str| verify_toss_signature(body, Some(&header), Some(time), &key(k));
        assert_eq!(check(BODY, TIME, "other"), Err(TossSignatureError::NoMatch));
        assert_eq!(check(b"{}", TIME, "k"), Err(TossSignatureError::NoMatch));
        assert_eq!(check(BODY, "2024-09-05T12:19:22+09:00", "k"), Err(TossSignatureError::NoMatch));
    }

    #[test]
    fn missing_or_garbled_headers_fail() {
        let k = key("k");
        assert_eq!(verify_toss_signature(BODY, None, Some(TIME), &k), Err(TossSignatureError::Missing));
        assert_eq!(
            verify_toss_signature(BODY, Some("v1:AAAA"), None, &k),
            Err(TossSignatureError::MissingTransmissionTime)
        );
        for garbled in ["", "v2:abc", "v1:***", "garbage"] {
            assert_eq!(verify_toss_signature(BODY, Some(garbled), Some(TIME), &k), Err(TossSignatureError::Malformed));
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(header in ".{0,200}", time in ".{0,40}") {
            let _ = verify_toss_signature(BODY, Some(&header), Some(&time), &key("k"));
        }

        #[test]
        fn signed_bodies_verify(body in proptest::collection::vec(any::<u8>(), 0..256), k in "[a-z0-9_]{1,30}") {
            let header = format!("v1:{}", sign_toss_payload(&body, TIME, &k));
            prop_assert_eq!(verify_toss_signature(&body, Some(&header), Some(TIME), &key(&k)), Ok(()));
        }
    }
}
