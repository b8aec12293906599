//! What the worker stores from a body, whatever its bytes: the inbox payload never holds a NUL
//! (Postgres `text` refuses it) and, for Toss, no `secret` member; a provider's object made
//! `jsonb`-safe is still JSON, the same JSON but for what `jsonb` refuses (`\u0000`, unpaired
//! surrogate escapes), which is gone.
//!
//! Input: the first byte picks the provider (even: Stripe, odd: Toss), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use shared::providers::toss::without_secrets;
use shared::Provider;
use worker::store::stored::{inbox_payload, jsonb};

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let provider = if selector % 2 == 0 { Provider::Stripe } else { Provider::Toss };
    let payload = inbox_payload(provider, body);
    assert!(!payload.contains('\0'));
    let Ok(text) = std::str::from_utf8(body) else { return };
    if provider == Provider::Toss {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            let kept: Value = serde_json::from_str(&payload).expect("a JSON body stays JSON");
            assert_eq!(kept, without_secrets(&value), "the same document without its secret members");
        }
    }
    // As the worker stores a Stripe object: the raw text, checked by the JSON reader only. The
    // check below reads the result into a `Value`, which cannot hold a number past f64's range
    // (`1e400`): such a text is valid JSON that this check cannot read, so it is left out.
    if serde_json::from_str::<&RawValue>(text).is_ok() && serde_json::from_str::<Value>(text).is_ok() {
        let stored = jsonb(text);
        let value: Value = serde_json::from_str(&stored).expect("no unpaired surrogate left");
        assert!(!has_nul(&value), "{stored}");
    }
});
