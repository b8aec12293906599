//! The worker's event parser (`IncomingEvent::parse`) over any body, for either provider, and
//! the screen that follows it: an intent or a permanent refusal, never a panic (a panic would
//! crash the worker on every redelivery of the message), and nothing that reaches the database
//! holds a control character.
//!
//! Input: the first byte picks the provider (even: Stripe, odd: Toss) and, with its second bit,
//! a key with a NUL in it; the rest is the body.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::providers::first_control_char;
use shared::Provider;
use worker::domain::event::{IncomingEvent, Intent, PaymentRef};
use worker::domain::outcome::HandleError;
use worker::domain::screen::screen;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let (provider, event_type) = if selector % 2 == 0 {
        (Provider::Stripe, "checkout.session.completed")
    } else {
        (Provider::Toss, "PAYMENT_STATUS_CHANGED")
    };
    let event_key = if selector & 2 == 0 { "fuzz" } else { "fuzz\0key" };
    let envelope = EventEnvelope {
        provider,
        event_type: event_type.to_string(),
        event_key: event_key.to_string(),
        verification: IngestVerification::Signature,
        received_at: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
        request_id: String::new(),
        attempt: 0,
        delivery_headers: Default::default(),
        body: body.to_vec(),
    };
    let parsed = IncomingEvent::parse(&envelope);
    if let Ok(event) = &parsed {
        assert_eq!(event.provider, provider);
        if let Intent::SetStatus { payment: PaymentRef::OrderId(id) | PaymentRef::ProviderPaymentId(id), .. } =
            &event.intent
        {
            assert!(!id.is_empty(), "a payment is named by a non-empty id");
        }
    }

    let mut envelope = Ok(envelope);
    let mut event = parsed.map_err(|e| HandleError::Permanent(e.0));
    let order_id = screen(&mut envelope, &mut event);
    let envelope = envelope.expect("the screen keeps the envelope");
    assert_eq!(first_control_char(&envelope.event_key), None);
    assert!(order_id.as_deref().and_then(first_control_char).is_none(), "{order_id:?}");
    if let Ok(event) = &event {
        let names = [Some(&event.event_type), event.provider_payment_id.as_ref(), event.currency.as_ref()];
        for value in names.into_iter().flatten() {
            assert_eq!(first_control_char(value), None, "{value:?}");
        }
        assert!(event.order_id().and_then(first_control_char).is_none());
    }
});
