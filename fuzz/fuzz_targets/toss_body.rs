//! Toss bodies, raw bytes as they arrive: parsed or refused without a panic. A parsed event has
//! a dedupe key that is stable, bounded, and chosen by the body only where Toss signs it; its
//! stored form carries no secret and, read again, keeps the same key; and no identifier it names
//! holds a control character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::providers::first_control_char;
use shared::providers::toss::{parse_toss_event, TossEventKind};

fuzz_target!(|body: &[u8]| {
    let Ok(event) = parse_toss_event(body) else { return };
    let key = event.event_key();
    assert_eq!(key, event.event_key());
    if event.kind != TossEventKind::Signed {
        assert!(key.starts_with("sha256:") && key.len() == 71, "an unsigned body cannot pick its key: {key:?}");
    }
    let stored_json: serde_json::Value = serde_json::from_str(&event.stored_body).expect("stored as JSON");
    assert!(!has_secret(&stored_json), "nothing stored carries a secret");
    // A body that was only recognisable by its secret (`{"secret":…}` alone) is not one once
    // stored; every other stored body reads back as the same event under the same key.
    if let Ok(stored) = parse_toss_event(event.stored_body.as_bytes()) {
        assert_eq!(stored.stored_body, event.stored_body, "storing twice changes nothing");
        assert_eq!(stored.event_key(), key, "a stored event keeps its key");
    }
    assert!(!event.event_type.is_empty());
    let identifiers =
        [&event.event_id, &event.order_id, &event.payment_key, &event.status, &event.currency, &event.secret];
    for value in identifiers.into_iter().flatten().chain([&event.event_type]) {
        assert_eq!(first_control_char(value), None, "{value:?}");
    }
});

fn has_secret(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k == "secret" || has_secret(v)),
        serde_json::Value::Array(items) => items.iter().any(has_secret),
        _ => false,
    }
}
