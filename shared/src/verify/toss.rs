//! `tosspayments-webhook-signature: v1:<base64>,v1:<base64>` on `payout.changed` and
//! `seller.changed`. The signed string is `"{raw body}:{transmission-time header}"`,
//! HMAC-SHA256 keyed with the security key's UTF-8 bytes, base64 (standard alphabet).
//! Two values appear during key rotation: valid when either matches.
//!
//! The transmission time is signed, so a fresh one proves the delivery is recent: at ingest it
//! must be within a tolerance of now (as Stripe's timestamp is), which stops a captured
//! delivery from being replayed later. A later check of a queued message skips that
//! ([`Freshness::Any`]): the message may have waited in the queue for longer.

use std::time::Duration;

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
    #[error("tosspayments-webhook-transmission-time is not an RFC 3339 time")]
    UnreadableTransmissionTime,
    #[error("transmission time is older than the tolerance")]
    Stale,
    #[error("transmission time is in the future beyond the tolerance")]
    Future,
}

/// How recent a signed transmission time must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within `tolerance` of `now_unix` (seconds), past or future: a delivery as it arrives.
    Within { tolerance: Duration, now_unix: i64 },
    /// Any time: a second check of a message that may have waited in a queue.
    Any,
}

/// Verifies a Toss signature header for `body` sent at `transmission_time`, then that time's
/// freshness. Accepted when either `v1` value matches and the time is fresh enough.
pub fn verify_toss_signature(
    body: &[u8],
    signature_header: Option<&str>,
    transmission_time: Option<&str>,
    secret: &SecretString,
    freshness: Freshness,
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
    if !matched {
        return Err(TossSignatureError::NoMatch);
    }
    let Freshness::Within { tolerance, now_unix } = freshness else { return Ok(()) };
    let sent = transmission_unix(time).ok_or(TossSignatureError::UnreadableTransmissionTime)?;
    // In i128, the distance between any two i64 instants is exact: no overflow, no saturation.
    let tolerance = i128::from(tolerance.as_secs());
    let age = i128::from(now_unix) - i128::from(sent);
    if age > tolerance {
        return Err(TossSignatureError::Stale);
    }
    if age < -tolerance {
        return Err(TossSignatureError::Future);
    }
    Ok(())
}

/// A transmission time in unix seconds. Toss sends RFC 3339 with an offset
/// (`2024-09-05T12:19:21+09:00`); one without an offset is read as Korean time, as Toss's
/// body timestamps are.
fn transmission_unix(time: &str) -> Option<i64> {
    let time = time.trim();
    if let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(time) {
        return Some(parsed.timestamp());
    }
    let naive = chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(naive.and_utc().timestamp() - KST_OFFSET_SECS)
}

/// Korea Standard Time is UTC+9, without daylight saving.
const KST_OFFSET_SECS: i64 = 9 * 3600;

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
    /// `TIME` in unix seconds (2024-09-05T03:19:21Z).
    const SENT: i64 = 1_725_506_361;
    const ANY: Freshness = Freshness::Any;

    fn key(k: &str) -> SecretString {
        SecretString::from(k)
    }

    fn at(now_unix: i64) -> Freshness {
        Freshness::Within { tolerance: Duration::from_secs(300), now_unix }
    }

    #[test]
    fn matches_an_independently_computed_signature() {
        // Python: base64(hmac.new(b"toss_security_key", BODY + b":" + TIME, sha256).digest())
        let expected = "vhmiQbq+dg+c/DLZg06vN4gBzpjHZJKv1uhW3rle6a8=";
        assert_eq!(sign_toss_payload(BODY, TIME, "toss_security_key"), expected);
        let header = format!("v1:{expected}");
        assert_eq!(verify_toss_signature(BODY, Some(&header), Some(TIME), &key("toss_security_key"), ANY), Ok(()));
    }

    #[test]
    fn either_of_two_values_matches() {
        let good = sign_toss_payload(BODY, TIME, "k");
        let other = sign_toss_payload(BODY, TIME, "rotated");
        for header in [format!("v1:{good},v1:{other}"), format!("v1:{other}, v1:{good}")] {
            assert_eq!(verify_toss_signature(BODY, Some(&header), Some(TIME), &key("k"), at(SENT)), Ok(()));
        }
    }

    #[test]
    fn wrong_key_body_or_time_fails() {
        let header = format!("v1:{}", sign_toss_payload(BODY, TIME, "k"));
        let check =
            |body: &[u8], time: &str, k: &str| verify_toss_signature(body, Some(&header), Some(time), &key(k), ANY);
        assert_eq!(check(BODY, TIME, "other"), Err(TossSignatureError::NoMatch));
        assert_eq!(check(b"{}", TIME, "k"), Err(TossSignatureError::NoMatch));
        assert_eq!(check(BODY, "2024-09-05T12:19:22+09:00", "k"), Err(TossSignatureError::NoMatch));
    }

    #[test]
    fn missing_or_garbled_headers_fail() {
        let k = key("k");
        assert_eq!(verify_toss_signature(BODY, None, Some(TIME), &k, ANY), Err(TossSignatureError::Missing));
        assert_eq!(
            verify_toss_signature(BODY, Some("v1:AAAA"), None, &k, ANY),
            Err(TossSignatureError::MissingTransmissionTime)
        );
        for garbled in ["", "v2:abc", "v1:***", "garbage"] {
            assert_eq!(
                verify_toss_signature(BODY, Some(garbled), Some(TIME), &k, ANY),
                Err(TossSignatureError::Malformed)
            );
        }
    }

    #[test]
    fn the_transmission_time_must_be_within_the_tolerance_either_way() {
        let header = format!("v1:{}", sign_toss_payload(BODY, TIME, "k"));
        let check = |freshness| verify_toss_signature(BODY, Some(&header), Some(TIME), &key("k"), freshness);
        for now in [SENT, SENT - 300, SENT + 300] {
            assert_eq!(check(at(now)), Ok(()), "{}", now - SENT);
        }
        assert_eq!(check(at(SENT + 301)), Err(TossSignatureError::Stale));
        assert_eq!(check(at(SENT - 301)), Err(TossSignatureError::Future));
        assert_eq!(check(at(i64::MAX)), Err(TossSignatureError::Stale));
        assert_eq!(check(at(i64::MIN)), Err(TossSignatureError::Future));
        // A queued message is checked again later, without the clock.
        assert_eq!(check(ANY), Ok(()));
        assert_eq!(check(Freshness::Within { tolerance: Duration::ZERO, now_unix: SENT }), Ok(()));
    }

    #[test]
    fn a_stale_time_is_reported_only_for_a_genuine_signature() {
        let forged = format!("v1:{}", sign_toss_payload(BODY, TIME, "not-the-key"));
        assert_eq!(
            verify_toss_signature(BODY, Some(&forged), Some(TIME), &key("k"), at(SENT + 3600)),
            Err(TossSignatureError::NoMatch)
        );
    }

    #[test]
    fn transmission_times_are_read_with_their_offset_or_as_korean_time() {
        for (time, unix) in [
            (TIME, SENT),
            ("2024-09-05T03:19:21Z", SENT),
            ("2024-09-05T12:19:21.123+09:00", SENT),
            ("2024-09-05T12:19:21", SENT),
            ("2024-09-05T12:19:21.65327", SENT),
        ] {
            assert_eq!(transmission_unix(time), Some(unix), "{time}");
        }
        let k = key("k");
        for unreadable in ["", "yesterday", "1725506361", "2024-13-05T12:19:21+09:00"] {
            let header = format!("v1:{}", sign_toss_payload(BODY, unreadable, "k"));
            assert_eq!(
                verify_toss_signature(BODY, Some(&header), Some(unreadable), &k, at(SENT)),
                Err(TossSignatureError::UnreadableTransmissionTime),
                "{unreadable:?}"
            );
            assert_eq!(verify_toss_signature(BODY, Some(&header), Some(unreadable), &k, ANY), Ok(()));
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(header in ".{0,200}", time in ".{0,40}", now in any::<i64>()) {
            let _ = verify_toss_signature(BODY, Some(&header), Some(&time), &key("k"), at(now));
        }

        #[test]
        fn signed_bodies_verify(body in proptest::collection::vec(any::<u8>(), 0..256), k in "[a-z0-9_]{1,30}") {
            let header = format!("v1:{}", sign_toss_payload(&body, TIME, &k));
            prop_assert_eq!(verify_toss_signature(&body, Some(&header), Some(TIME), &key(&k), at(SENT)), Ok(()));
        }
    }
}
