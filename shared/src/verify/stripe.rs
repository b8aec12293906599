//! `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`.
//!
//! The signed string is `"{t}.{raw body}"`, HMAC-SHA256 keyed with the whole `whsec_...`
//! secret as UTF-8 bytes (stripe-go and stripe-python do exactly this). Only `v1` counts:
//! `v0` is a test-mode scheme and accepting it would allow a downgrade.

use std::time::Duration;

use hmac::Mac;
use secrecy::{ExposeSecret, SecretString};

use super::HmacSha256;

/// Why a Stripe signature was rejected. The text is safe to show to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeSignatureError {
    #[error("Stripe-Signature header is missing")]
    Missing,
    #[error("Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature matches the payload")]
    NoMatch,
    #[error("signature timestamp is older than the tolerance")]
    Stale,
    #[error("signature timestamp is in the future beyond the tolerance")]
    Future,
}

/// A parsed header: the timestamp as sent (its exact digits are part of the signed string)
/// and every `v1` signature that decoded as hex.
#[derive(Debug, PartialEq, Eq)]
pub struct StripeSignatureHeader<'a> {
    pub timestamp_text: &'a str,
    pub timestamp: i64,
    pub v1: Vec<Vec<u8>>,
}

/// Parses the header without trusting anything in it. Unknown schemes (`v0`, future ones)
/// are skipped; a `v1` that is not hex can never match and is skipped too.
pub fn parse_stripe_signature(header: &str) -> Result<StripeSignatureHeader<'_>, StripeSignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.split_once('=') else { continue };
        match key.trim() {
            "t" if timestamp.is_none() => timestamp = Some(value.trim()),
            "v1" => {
                if let Ok(bytes) = hex::decode(value.trim()) {
                    v1.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp.ok_or(StripeSignatureError::Malformed("no t= timestamp"))?;
    if timestamp_text.is_empty() || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StripeSignatureError::Malformed("t= is not a unix timestamp"));
    }
    let timestamp = timestamp_text.parse::<i64>().map_err(|_| StripeSignatureError::Malformed("t= is out of range"))?;
    if v1.is_empty() {
        return Err(StripeSignatureError::Malformed("no v1= signature"));
    }
    Ok(StripeSignatureHeader { timestamp_text, timestamp, v1 })
}

/// Verifies `header` for `body`: accepted when **any** `v1` matches **any** secret (secret
/// rotation puts two of each in play) and the timestamp is within `tolerance` of `now_unix`
/// in either direction. Returns the signed timestamp.
pub fn verify_stripe_signature(
    body: &[u8],
    header: Option<&str>,
    secrets: &[SecretString],
    tolerance: Duration,
    now_unix: i64,
) -> Result<i64, StripeSignatureError> {
    let timestamp = verify_stripe_signature_at_any_time(body, header, secrets)?;
    // In i128, the distance between any two i64 instants is exact: no overflow, no saturation.
    let tolerance = i128::from(tolerance.as_secs());
    let age = i128::from(now_unix) - i128::from(timestamp);
    if age > tolerance {
        return Err(StripeSignatureError::Stale);
    }
    if age < -tolerance {
        return Err(StripeSignatureError::Future);
    }
    Ok(timestamp)
}

/// Verifies `header` for `body` like [`verify_stripe_signature`], whatever the signed time.
/// For a message that was verified on arrival and then waited in a queue: the signature still
/// proves Stripe sent these bytes, and the replay window was enforced when they arrived.
/// Returns the signed timestamp.
pub fn verify_stripe_signature_at_any_time(
    body: &[u8],
    header: Option<&str>,
    secrets: &[SecretString],
) -> Result<i64, StripeSignatureError> {
    let header = header.ok_or(StripeSignatureError::Missing)?;
    let parsed = parse_stripe_signature(header)?;
    let matched = secrets.iter().any(|secret| {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
            return false;
        };
        mac.update(parsed.timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        // Check every candidate without stopping early, so timing does not reveal which matched.
        parsed.v1.iter().fold(false, |found, sig| mac.clone().verify_slice(sig).is_ok() | found)
    });
    if !matched {
        return Err(StripeSignatureError::NoMatch);
    }
    Ok(parsed.timestamp)
}

/// Builds a header the way Stripe does; for tests, tools and `hookctl send`.
pub fn sign_stripe_payload(body: &[u8], secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", stripe_v1(body, secret, timestamp))
}

/// The lowercase-hex `v1` value for `body` at `timestamp`.
pub fn stripe_v1(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_719_800_000;
    const TOL: Duration = Duration::from_secs(300);
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(*s)).collect()
    }

    fn verify(header: &str, keys: &[&str]) -> Result<i64, StripeSignatureError> {
        verify_stripe_signature(BODY, Some(header), &secrets(keys), TOL, NOW)
    }

    #[test]
    fn matches_an_independently_computed_signature() {
        // Python: hmac.new(b"whsec_test_secret", b"1719800000." + BODY, sha256).hexdigest()
        let header = "t=1719800000,v1=23a81ebef289224569e42fecbf69824f317be70685ac5cea930d2866e9f1bc62";
        assert_eq!(sign_stripe_payload(BODY, "whsec_test_secret", NOW), header);
        assert_eq!(verify(header, &["whsec_test_secret"]), Ok(NOW));
    }

    #[test]
    fn timestamps_far_from_the_clock_are_refused_without_overflow() {
        // Found by the stripe_signature fuzz target: a valid signature whose timestamp was
        // further from `now` than an i64 holds overflowed the distance (`-age` of i64::MIN).
        let body = [219, 219];
        let header = sign_stripe_payload(&body, "", 6_619_125_814_684_015_579);
        let verdict = verify_stripe_signature(
            &body,
            Some(&header),
            &secrets(&["", "", ""]),
            Duration::from_secs(1_096_244_471_875),
            -2_604_246_222_185_168_896,
        );
        assert_eq!(verdict, Err(StripeSignatureError::Future));
        let header = sign_stripe_payload(BODY, "whsec_a", i64::MAX);
        let at = |now, tolerance| verify_stripe_signature(BODY, Some(&header), &secrets(&["whsec_a"]), tolerance, now);
        assert_eq!(at(i64::MIN, Duration::MAX), Ok(i64::MAX));
        assert_eq!(at(i64::MIN, TOL), Err(StripeSignatureError::Future));
        let header = sign_stripe_payload(BODY, "whsec_a", 0);
        let at = |now, tolerance| verify_stripe_signature(BODY, Some(&header), &secrets(&["whsec_a"]), tolerance, now);
        assert_eq!(at(i64::MAX, TOL), Err(StripeSignatureError::Stale));
        assert_eq!(at(i64::MIN, TOL), Err(StripeSignatureError::Future));
        assert_eq!(at(i64::MAX, Duration::from_secs(i64::MAX as u64)), Ok(0));
    }

    #[test]
    fn a_tampered_body_fails() {
        let header = sign_stripe_payload(BODY, "whsec_a", NOW);
        let tampered = br#"{"id":"evt_1","type":"checkout.session.completed "}"#;
        assert_eq!(
            verify_stripe_signature(tampered, Some(&header), &secrets(&["whsec_a"]), TOL, NOW),
            Err(StripeSignatureError::NoMatch)
        );
    }

    #[test]
    fn the_wrong_secret_fails() {
        let header = sign_stripe_payload(BODY, "whsec_a", NOW);
        assert_eq!(verify(&header, &["whsec_b"]), Err(StripeSignatureError::NoMatch));
    }

    #[test]
    fn stale_and_future_timestamps_fail_even_when_signed_correctly() {
        let old = sign_stripe_payload(BODY, "whsec_a", NOW - 301);
        assert_eq!(verify(&old, &["whsec_a"]), Err(StripeSignatureError::Stale));
        let future = sign_stripe_payload(BODY, "whsec_a", NOW + 301);
        assert_eq!(verify(&future, &["whsec_a"]), Err(StripeSignatureError::Future));
        let edge = sign_stripe_payload(BODY, "whsec_a", NOW - 300);
        assert_eq!(verify(&edge, &["whsec_a"]), Ok(NOW - 300));
    }

    #[test]
    fn a_queued_message_is_checked_without_the_time_window_but_never_without_the_mac() {
        let body = br#"{"id":"evt_1"}"#;
        let old = sign_stripe_payload(body, "whsec_a", 1_000);
        let keys = secrets(&["whsec_a"]);
        assert_eq!(verify_stripe_signature_at_any_time(body, Some(&old), &keys), Ok(1_000));
        assert_eq!(
            verify_stripe_signature_at_any_time(br#"{"id":"evt_2"}"#, Some(&old), &keys),
            Err(StripeSignatureError::NoMatch)
        );
        assert_eq!(
            verify_stripe_signature_at_any_time(body, Some(&old), &secrets(&["whsec_b"])),
            Err(StripeSignatureError::NoMatch)
        );
        assert_eq!(verify_stripe_signature_at_any_time(body, None, &keys), Err(StripeSignatureError::Missing));
    }

    #[test]
    fn during_rotation_either_signature_and_either_secret_is_accepted() {
        let old = stripe_v1(BODY, "whsec_old", NOW);
        let new = stripe_v1(BODY, "whsec_new", NOW);
        let header = format!("t={NOW},v1={old},v1={new}");
        assert!(verify(&header, &["whsec_old"]).is_ok());
        assert!(verify(&header, &["whsec_new"]).is_ok());
        assert!(verify(&header, &["whsec_other", "whsec_new"]).is_ok());
        assert!(verify(&format!("t={NOW},v1={new}"), &["whsec_old", "whsec_new"]).is_ok());
        assert_eq!(verify(&header, &["whsec_other"]), Err(StripeSignatureError::NoMatch));
    }

    #[test]
    fn v0_is_ignored_even_when_it_would_match() {
        let v1_of_secret = stripe_v1(BODY, "whsec_a", NOW);
        let header = format!("t={NOW},v0={v1_of_secret}");
        assert_eq!(verify(&header, &["whsec_a"]), Err(StripeSignatureError::Malformed("no v1= signature")));
        let header = format!("t={NOW},v1={},v0={v1_of_secret}", "00".repeat(32));
        assert_eq!(verify(&header, &["whsec_a"]), Err(StripeSignatureError::NoMatch));
    }

    #[test]
    fn missing_and_garbled_headers_are_rejected() {
        assert_eq!(verify_stripe_signature(BODY, None, &secrets(&["k"]), TOL, NOW), Err(StripeSignatureError::Missing));
        for garbled in [
            "",
            "garbage",
            "t=,v1=ab",
            "v1=abcd",
            &format!("t={NOW}"),
            "t=-5,v1=00",
            "t=1e9,v1=00",
            "t=99999999999999999999999,v1=00",
            &format!("t={NOW},v1=zz"),
        ] {
            assert!(matches!(verify(garbled, &["k"]), Err(StripeSignatureError::Malformed(_))), "{garbled:?}");
        }
    }

    #[test]
    fn whitespace_around_items_is_tolerated() {
        let sig = stripe_v1(BODY, "whsec_a", NOW);
        assert!(verify(&format!("t={NOW}, v1={sig}"), &["whsec_a"]).is_ok());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(header in ".{0,200}") {
            let _ = parse_stripe_signature(&header);
            let _ = verify_stripe_signature(BODY, Some(&header), &secrets(&["k"]), TOL, NOW);
        }

        #[test]
        fn whatever_is_signed_verifies_and_any_change_does_not(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            secret in "whsec_[A-Za-z0-9]{1,40}",
            skew in -300i64..=300,
            flip in any::<prop::sample::Index>(),
        ) {
            let header = sign_stripe_payload(&body, &secret, NOW + skew);
            let keys = secrets(&[&secret]);
            prop_assert_eq!(verify_stripe_signature(&body, Some(&header), &keys, TOL, NOW), Ok(NOW + skew));
            if !body.is_empty() {
                let mut changed = body.clone();
                let i = flip.index(changed.len());
                changed[i] ^= 0x01;
                prop_assert_eq!(
                    verify_stripe_signature(&changed, Some(&header), &keys, TOL, NOW),
                    Err(StripeSignatureError::NoMatch)
                );
            }
        }
    }
}
