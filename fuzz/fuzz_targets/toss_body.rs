//! Toss bodies, raw bytes as they arrive: parsed or refused without a panic. A parsed event has
//! a dedupe key that is stable, bounded, and chosen by the body only where Toss signs it, and
//! no identifier it names holds a control character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::providers::first_control_char;
use shared::providers::toss::{parse_toss_event, TossEventKind};

fuzz_target!(|body: &[u8]| {
    let Ok(event) = parse_toss_event(body) else { return };
    let key = event.event_key(body);
    assert_eq!(key, event.event_key(body));
    if event.kind != TossEventKind::Signed {
        assert!(key.starts_with("sha256:") && key.len() == 71, "an unsigned body cannot pick its key: {key:?}");
    }
    assert!(!event.event_type.is_empty());
    let identifiers =
        [&event.event_id, &event.order_id, &event.payment_key, &event.status, &event.currency, &event.secret];
    for value in identifiers.into_iter().flatten().chain([&event.event_type]) {
        assert_eq!(first_control_char(value), None, "{value:?}");
    }
});
