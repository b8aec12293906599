//! `tosspayments-webhook-signature` verification: any header, transmission time, body, key and
//! clock are refused or accepted without a panic; what Toss signs verifies, also next to other
//! values; and the freshness check only ever narrows what is accepted, by exactly the distance
//! between the signed time and the clock.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use shared::verify::toss::{sign_toss_payload, verify_toss_signature, Freshness};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: Option<&'a str>,
    time: Option<&'a str>,
    key: &'a str,
    /// Put a genuine signature before (`Some(true)`) or after (`Some(false)`) `header`.
    genuine: Option<bool>,
    body: &'a [u8],
    tolerance_secs: u32,
    now: i64,
    /// Sign at this unix time instead (written as Toss writes it, in Korean time).
    signed_at: Option<i64>,
}

fuzz_target!(|input: Input<'_>| {
    let key = SecretString::from(input.key.to_string());
    let within = Freshness::Within { tolerance: Duration::from_secs(input.tolerance_secs.into()), now_unix: input.now };
    let anytime = verify_toss_signature(input.body, input.header, input.time, &key, Freshness::Any);
    let fresh = verify_toss_signature(input.body, input.header, input.time, &key, within);
    assert!(fresh.is_err() || anytime.is_ok(), "freshness never lets through what the signature refuses");

    if let (Some(first), Some(time)) = (input.genuine, input.time) {
        let genuine = format!("v1:{}", sign_toss_payload(input.body, time, input.key));
        let other = input.header.unwrap_or("");
        let header = if first { format!("{genuine},{other}") } else { format!("{other},{genuine}") };
        assert_eq!(
            verify_toss_signature(input.body, Some(&header), Some(time), &key, Freshness::Any),
            Ok(()),
            "{header:?}"
        );
    }

    // A genuine signature at a readable time is accepted exactly when that time is within the
    // tolerance of the clock, either way.
    let kst = FixedOffset::east_opt(9 * 3600).expect("valid offset");
    // RFC 3339 years have four digits.
    let sent = input.signed_at.and_then(|t| DateTime::from_timestamp(t, 0)).map(|t| t.with_timezone(&kst));
    if let Some(sent) = sent.filter(|t| (0..=9999).contains(&t.year())) {
        let time = sent.to_rfc3339_opts(SecondsFormat::Secs, false);
        let header = format!("v1:{}", sign_toss_payload(input.body, &time, input.key));
        let verdict = verify_toss_signature(input.body, Some(&header), Some(&time), &key, within);
        let distance = i128::from(input.now) - i128::from(sent.timestamp());
        assert_eq!(verdict.is_ok(), distance.abs() <= i128::from(input.tolerance_secs), "{time} {verdict:?}");
    }
});
