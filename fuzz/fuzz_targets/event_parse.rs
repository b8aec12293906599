//! The worker's event parser (`IncomingEvent::parse`) over any body, for either provider: an
//! intent or a permanent refusal, never a panic (a panic would crash the worker on every
//! redelivery of the message).
//!
//! Input: the first byte picks the provider (even: Stripe, odd: Toss), the rest is the body.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::Provider;
use worker::event::{IncomingEvent, Intent, PaymentRef};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let (provider, event_type) = if selector % 2 == 0 {
        (Provider::Stripe, "checkout.session.completed")
    } else {
        (Provider::Toss, "PAYMENT_STATUS_CHANGED")
    };
    let envelope = EventEnvelope {
        provider,
        event_type: event_type.to_string(),
        event_key: "fuzz".to_string(),
        verification: IngestVerification::Signature,
        received_at: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
        request_id: String::new(),
        attempt: 0,
        delivery_headers: Default::default(),
        body: body.to_vec(),
    };
    if let Ok(event) = IncomingEvent::parse(&envelope) {
        assert_eq!(event.provider, provider);
        if let Intent::SetStatus { payment: PaymentRef::OrderId(id) | PaymentRef::ProviderPaymentId(id), .. } =
            &event.intent
        {
            assert!(!id.is_empty(), "a payment is named by a non-empty id");
        }
    }
});
