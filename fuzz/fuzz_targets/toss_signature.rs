//! `tosspayments-webhook-signature` verification: any header, transmission time, body and key
//! are refused or accepted without a panic; what Toss signs verifies, also next to other values.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use shared::verify::toss::{sign_toss_payload, verify_toss_signature};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: Option<&'a str>,
    time: Option<&'a str>,
    key: &'a str,
    /// Put a genuine signature before (`Some(true)`) or after (`Some(false)`) `header`.
    genuine: Option<bool>,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let key = SecretString::from(input.key.to_string());
    let _ = verify_toss_signature(input.body, input.header, input.time, &key);

    if let (Some(first), Some(time)) = (input.genuine, input.time) {
        let genuine = format!("v1:{}", sign_toss_payload(input.body, time, input.key));
        let other = input.header.unwrap_or("");
        let header = if first { format!("{genuine},{other}") } else { format!("{other},{genuine}") };
        assert_eq!(verify_toss_signature(input.body, Some(&header), Some(time), &key), Ok(()), "{header:?}");
    }
});
