//! `Stripe-Signature` parsing and verification: any header, body, secrets, tolerance and clock
//! are parsed or refused without a panic; what Stripe signs with a configured secret verifies
//! at the moment it was signed, whatever else the header carries after it.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use shared::verify::stripe::{parse_stripe_signature, sign_stripe_payload, verify_stripe_signature};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a str,
    secrets: Vec<&'a str>,
    tolerance_secs: u64,
    now: i64,
    /// Sign with secret `.0` (modulo their number) at timestamp `.1`, then append `header`.
    sign_with: Option<(u8, i64)>,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(parsed) = parse_stripe_signature(input.header) {
        assert_eq!(parsed.timestamp_text.parse::<i64>(), Ok(parsed.timestamp), "{parsed:?}");
        assert!(!parsed.v1.is_empty());
    }
    let secrets: Vec<SecretString> = input.secrets.iter().map(|s| SecretString::from(s.to_string())).collect();
    let tolerance = Duration::from_secs(input.tolerance_secs);
    let _ = verify_stripe_signature(input.body, Some(input.header), &secrets, tolerance, input.now);

    if let (Some((index, timestamp)), false) = (input.sign_with, input.secrets.is_empty()) {
        let secret = input.secrets[usize::from(index) % input.secrets.len()];
        let timestamp = timestamp & i64::MAX; // Stripe's timestamps are unsigned digits
        let signed = sign_stripe_payload(input.body, secret, timestamp);
        // Extra items (v0 decoys, more v1 values, a second t=) never undo a valid signature.
        let header = format!("{signed},{}", input.header);
        assert_eq!(
            verify_stripe_signature(input.body, Some(&header), &secrets, tolerance, timestamp),
            Ok(timestamp),
            "{header:?}"
        );
        // At any other moment it is accepted exactly when that moment is within the tolerance.
        let verdict = verify_stripe_signature(input.body, Some(&header), &secrets, tolerance, input.now);
        let distance = i128::from(input.now) - i128::from(timestamp);
        assert_eq!(verdict.is_ok(), distance.abs() <= i128::from(input.tolerance_secs), "{verdict:?}");
    }
});
