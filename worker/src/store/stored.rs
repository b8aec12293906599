//! Free text the batch transaction stores, made acceptable to Postgres whatever bytes it came
//! from. Postgres refuses U+0000 in `text`, and in `jsonb` also the escape `\u0000` and an
//! unpaired surrogate escape (`\ud800`): one such value would fail the statement that carries
//! the whole batch. Identifiers with control characters never get this far
//! ([`crate::domain::screen`]); this is for what is kept as a record: a webhook's body, an error text,
//! a provider's object, a notification's words. What is replaced becomes U+FFFD, as invalid
//! UTF-8 already does.
//!
//! `jsonb` also refuses a number past `numeric`'s range (`1e131072`, `1e-16384`,
//! `0e99999999999`), and stores one just inside it in full (`1e131071` takes 128 KiB): in a
//! provider's object such a number is kept as written, inside a string.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use shared::Provider;

/// `value` without U+0000 (each becomes U+FFFD), for a `text` column.
pub fn text<'a>(value: impl Into<Cow<'a, str>>) -> Cow<'a, str> {
    let value = value.into();
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{fffd}"))
    } else {
        value
    }
}

/// JSON text that `jsonb` accepts: the escape `\u0000` and unpaired surrogate escapes become
/// `\ufffd`, a number with an exponent past ±[`NUMBER_LIMIT`] or more than that many characters
/// becomes a string of its text; everything else is kept as it is (a provider's object is
/// stored as sent).
pub fn jsonb(json: &str) -> Cow<'_, str> {
    match quote_extreme_numbers(json) {
        Cow::Borrowed(json) => safe_escapes(json),
        Cow::Owned(quoted) => Cow::Owned(safe_escapes(&quoted).into_owned()),
    }
}

/// Beyond this exponent, or this many characters, a number is stored as a string. No payment
/// provider's object holds such a number; `numeric` allows exponents to 131071 (and 16383
/// fraction digits), spelling each digit out.
pub const NUMBER_LIMIT: usize = 1000;

/// `json` with each number past [`NUMBER_LIMIT`] put in quotes.
fn quote_extreme_numbers(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let number = &json[start..i];
                if extreme(number) {
                    out.push_str(&json[copied..start]);
                    out.push('"');
                    out.push_str(number);
                    out.push('"');
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(json);
    }
    out.push_str(&json[copied..]);
    Cow::Owned(out)
}

/// Whether a number's text is longer than [`NUMBER_LIMIT`] or its exponent past it.
fn extreme(number: &str) -> bool {
    if number.len() > NUMBER_LIMIT {
        return true;
    }
    let Some(at) = number.find(['e', 'E']) else { return false };
    let exponent = number[at + 1..].trim_start_matches(['+', '-']).trim_start_matches('0');
    exponent.len() > 4 || exponent.parse::<usize>().is_ok_and(|e| e > NUMBER_LIMIT)
}

/// `json` with the escapes `jsonb` refuses replaced by `\ufffd`.
fn safe_escapes(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u") {
        return Cow::Borrowed(json);
    }
    let bytes = json.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    // In JSON text a backslash appears only inside a string, always starting an escape, so
    // walking escape by escape never mistakes an escaped backslash's `u` for an escape.
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let unpaired = match hex4(bytes, i + 2) {
            Some(0) => true,
            Some(0xD800..=0xDBFF) => {
                let low = (bytes.get(i + 6..i + 8) == Some(b"\\u")).then(|| hex4(bytes, i + 8)).flatten();
                if matches!(low, Some(0xDC00..=0xDFFF)) {
                    i += 12;
                    continue;
                }
                true
            }
            Some(0xDC00..=0xDFFF) => true,
            _ => false,
        };
        if unpaired {
            out.push_str(&json[copied..i]);
            out.push_str("\\ufffd");
            copied = i + 6;
        }
        i += 6;
    }
    if copied == 0 {
        return Cow::Borrowed(json);
    }
    out.push_str(&json[copied..]);
    Cow::Owned(out)
}

/// The four hex digits at `at`, if there are four.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok().filter(|_| digits.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A webhook's body as the inbox keeps it (`webhook_events.payload`): the body as text, and for
/// Toss without any `secret` member at any depth (a `DEPOSIT_CALLBACK` or a virtual account's
/// Payment carries the secret that proves a deposit). The message in the broker keeps the body
/// as sent; only the record changes.
pub fn inbox_payload(provider: Provider, body: &[u8]) -> Cow<'_, str> {
    let body = String::from_utf8_lossy(body);
    match provider {
        Provider::Toss => text(without_secret_members(body)),
        Provider::Stripe => text(body),
    }
}

/// JSON text without its `secret` members, members otherwise in their order and values as
/// sent (whitespace between them is not kept). Text that is not JSON is returned as it is.
fn without_secret_members(json: Cow<'_, str>) -> Cow<'_, str> {
    // A member named `secret` needs those letters, or escapes that spell them.
    if !json.contains("secret") && !json.contains("\\u") {
        return json;
    }
    let Ok(value) = serde_json::from_str::<&RawValue>(&json) else { return json };
    let mut out = String::with_capacity(json.len());
    match write_without_secrets(value, &mut out) {
        Ok(()) => Cow::Owned(out),
        Err(_) => json,
    }
}

fn write_without_secrets(value: &RawValue, out: &mut String) -> Result<(), serde_json::Error> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text)?;
            out.push('{');
            let mut first = true;
            for (name, member) in members.into_iter().filter(|(name, _)| name != "secret") {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&serde_json::to_string(&name)?);
                out.push(':');
                write_without_secrets(member, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push('[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_without_secrets(item, out)?;
            }
            out.push(']');
        }
        _ => out.push_str(text),
    }
    Ok(())
}

/// An object's members in their order, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn text_replaces_nul_and_borrows_otherwise() {
        assert!(matches!(text("evt_1\n\x1b"), Cow::Borrowed("evt_1\n\x1b")));
        assert_eq!(text("a\0b\0"), "a\u{fffd}b\u{fffd}");
        assert_eq!(text(String::from("\0")), "\u{fffd}");
    }

    #[test]
    fn jsonb_replaces_nul_and_unpaired_surrogate_escapes_only() {
        let cases = [
            (r#"{"a":"x\u0000y"}"#, r#"{"a":"x\ufffdy"}"#),
            (r#"{"a\u0000":1}"#, r#"{"a\ufffd":1}"#),
            (r#"["\ud800","\udc00x","\uDBFF\u0041"]"#, r#"["\ufffd","\ufffdx","\ufffd\u0041"]"#),
            (r#"["\ud800\ud83d\ude00"]"#, r#"["\ufffd\ud83d\ude00"]"#),
        ];
        for (json, stored) in cases {
            assert_eq!(jsonb(json), stored, "{json}");
        }
        for kept in [
            r#"{"a":"plain"}"#,
            r#"{"a":"\\u0000 is text here"}"#,
            r#"{"a":"\\\u0041"}"#,
            r#"{"emoji":"\ud83d\ude00","tab":"\u0009","e":"\u00e9"}"#,
        ] {
            assert!(matches!(jsonb(kept), Cow::Borrowed(_)), "{kept}");
        }
    }

    #[test]
    fn jsonb_quotes_numbers_past_the_limit_and_keeps_every_other_number_as_it_is() {
        let cases = [
            (r#"{"a":1e131072}"#, r#"{"a":"1e131072"}"#),
            (r#"[1E-16384,0e99999999999,-2.5e+1001]"#, r#"["1E-16384","0e99999999999","-2.5e+1001"]"#),
            (
                r#"{"x":"1e9999","n":1e00000000000000000000000000000000001001}"#,
                r#"{"x":"1e9999","n":"1e00000000000000000000000000000000001001"}"#,
            ),
        ];
        for (json, stored) in cases {
            assert_eq!(jsonb(json), stored, "{json}");
        }
        let long = format!("[0.{}1]", "0".repeat(NUMBER_LIMIT));
        assert_eq!(jsonb(&long), format!("[\"{}\"]", &long[1..long.len() - 1]));
        // Both fixes at once.
        assert_eq!(jsonb(r#"{"a":"\u0000","b":1e5000}"#), r#"{"a":"\ufffd","b":"1e5000"}"#);
        for kept in [
            r#"{"a":1e1000,"b":-1E-1000,"c":12.5e+0,"d":0,"e":-0.0001,"f":1e0001000}"#,
            r#"{"amount":3000,"id":"cs_test_a1e99999"}"#,
            r#"{"s":"\"1e99999\"","t":"\\","u":1e9}"#,
        ] {
            assert!(matches!(jsonb(kept), Cow::Borrowed(_)), "{kept}");
        }
    }

    #[test]
    fn toss_payloads_lose_every_secret_member_and_keep_the_rest_in_order() {
        let body = br#"{"createdAt":"2026-01-02T14:46:59", "secret":"ps_abc","status":"DONE","orderId":"o-1"}"#;
        assert_eq!(
            inbox_payload(Provider::Toss, body),
            r#"{"createdAt":"2026-01-02T14:46:59","status":"DONE","orderId":"o-1"}"#
        );
        let nested = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"z":1,"secret":"ps_x","cancels":[{"secret":"s","a":null}],"virtualAccount":{"secr\u0065t":"ps_y","bank":"88"}}}"#;
        assert_eq!(
            inbox_payload(Provider::Toss, nested),
            r#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"z":1,"cancels":[{"a":null}],"virtualAccount":{"bank":"88"}}}"#
        );
        // Without a secret the body is kept exactly; Stripe bodies always are.
        let plain = br#"{"eventType":"PAYMENT_STATUS_CHANGED", "data":{"orderId":"o"}}"#;
        assert!(matches!(inbox_payload(Provider::Toss, plain), Cow::Borrowed(_)));
        let stripe = br#"{"id":"evt","secret":"not Toss's"}"#;
        assert_eq!(inbox_payload(Provider::Stripe, stripe), String::from_utf8_lossy(stripe));
    }

    #[test]
    fn payloads_are_storable_whatever_the_bytes() {
        assert_eq!(inbox_payload(Provider::Toss, b"not json \0 \xff secret"), "not json \u{fffd} \u{fffd} secret");
        assert_eq!(inbox_payload(Provider::Stripe, b"{\"id\":\"\0\"}"), "{\"id\":\"\u{fffd}\"}");
        assert_eq!(inbox_payload(Provider::Toss, br#"{"a":"\u0000","secret":1}"#), r#"{"a":"\u0000"}"#);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\\x00\\x01\\\\\"é\u{1F600}]{0,4}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                prop::collection::vec((prop_oneof![Just("secret".to_string()), "[a-z\\x00]{0,3}"], inner), 0..4)
                    .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    fn has_secret(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| k == "secret" || has_secret(v)),
            serde_json::Value::Array(items) => items.iter().any(has_secret),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn any_document_stays_the_same_json_without_nul_escapes(value in json_value()) {
            let json = serde_json::to_string(&value).unwrap();
            let stored = jsonb(&json);
            prop_assert!(!stored.contains("\\u0000"));
            let reread: serde_json::Value = serde_json::from_str(&stored).unwrap();
            let expected: serde_json::Value = serde_json::from_str(&json.replace("\\u0000", "\\ufffd")).unwrap();
            prop_assert_eq!(reread, expected);
        }

        #[test]
        fn no_secret_survives_and_nothing_else_is_lost(value in json_value()) {
            let json = serde_json::to_string(&value).unwrap();
            let stored = inbox_payload(Provider::Toss, json.as_bytes());
            let reread: serde_json::Value = serde_json::from_str(&stored).unwrap();
            prop_assert!(!has_secret(&reread));
            prop_assert_eq!(reread, shared::providers::toss::without_secrets(&value));
        }
    }
}
