//! Toss bodies, raw bytes as they arrive: parsed or refused without a panic. A parsed event has
//! a dedupe key that is stable, bounded, and chosen by the body only where Toss signs it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::providers::toss::{parse_toss_event, TossEventKind};

fuzz_target!(|body: &[u8]| {
    let Ok(event) = parse_toss_event(body) else { return };
    let key = event.event_key(body);
    assert_eq!(key, event.event_key(body));
    if event.kind != TossEventKind::Signed {
        assert!(key.starts_with("sha256:") && key.len() == 71, "an unsigned body cannot pick its key: {key:?}");
    }
    assert!(!event.event_type.is_empty());
});
