//! Stripe webhooks through a real ingest into the real broker.

mod common;

use std::time::Duration;

use common::{error_code, TestIngest};
use shared::envelope::{header_int, header_str, H_ATTEMPT, H_EVENT_KEY, H_EVENT_TYPE, H_PROVIDER, H_VERIFICATION};
use shared::verify::stripe::{sign_stripe_payload, stripe_v1};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use testkit::TestBroker;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_signed_event_is_answered_after_it_is_queued_byte_identical_with_its_headers() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    // Odd spacing and key order: the queued bytes must be these bytes, not a re-serialisation.
    let body = br#"{"id":"evt_bytes_1",  "type":"checkout.session.completed","object":"event","data":{"object":{"client_reference_id":"o-1","amount_total":3000,"currency":"usd"}}}"#;
    let signature = stripe_signature(body, STRIPE_SECRET);

    let response = ingest.post_stripe(body, Some(&signature)).await;
    assert_eq!(response.status(), 200);

    let queue = format!("{}.work", broker.prefix);
    let message = broker.wait_get(&queue, Duration::from_secs(5)).await;
    assert_eq!(message.delivery.data, body.to_vec());
    let props = &message.delivery.properties;
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    let headers = props.headers().as_ref().expect("headers");
    assert_eq!(header_str(headers, H_PROVIDER).as_deref(), Some("stripe"));
    assert_eq!(header_str(headers, H_EVENT_TYPE).as_deref(), Some("checkout.session.completed"));
    assert_eq!(header_str(headers, H_EVENT_KEY).as_deref(), Some("evt_bytes_1"));
    assert_eq!(header_str(headers, H_VERIFICATION).as_deref(), Some("signature"));
    assert_eq!(header_int(headers, H_ATTEMPT), Some(0));
    assert_eq!(header_str(headers, "stripe-signature").as_deref(), Some(signature.as_str()));
    assert_eq!(message.delivery.routing_key.as_str(), "stripe.checkout.session.completed");
    ingest.stop().await;
}

#[tokio::test]
async fn bad_signatures_get_400_and_nothing_is_published() {
    let broker = TestBroker::new().await;
    let ingest = TestIngest::spawn(broker.settings(None, &[])).await;
    let body = stripe_session_event("evt_bad", "checkout.session.completed", "o-2", "paid", 3000, "usd");
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] = b' ';

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("tampered body", tampered, Some(stripe_signature(&body, STRIPE_SECRET))),
        ("wrong secret", body.clone(), Some(stripe_signature(&body, "whsec_someone_else"))),
        // A minute past the tolerance either way: the cases are signed before any is sent.
        ("stale timestamp", body.clone(), Some(sign_stripe_payload(&body, STRIPE_SECRET, now() - 360))),
        ("future timestamp", body.clone(), Some(sign_stripe_payload(&body, STRIPE_SECRET, now() + 360))),
        ("missing header", body.clone(), None),
        ("garbled header", body.clone(), Some("t=abc,v1=nothex".to_string())),
        ("only v0", body.clone(), Some(format!("t={},v0={}", now(), stripe_v1(&body, STRIPE_SECRET, now())))),
    ];
    for (case, body, signature) in cases {
        let response = ingest.post_stripe(&body, signature.as_deref()).await;
        assert_eq!(response.status(), 400, "{case}");
        assert_eq!(error_code(response).await, "invalid_signature", "{case}");
    }
    // A correctly signed body that is not an event is 400 too.
    let junk = br#"{"hello":"world"}"#;
    let response = ingest.post_stripe(junk, Some(&stripe_signature(junk, STRIPE_SECRET))).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "malformed_body");

    // Prove the queue is reachable and empty: a good event arrives alone.
    let response = ingest.post_stripe(&body, Some(&stripe_signature(&body, STRIPE_SECRET))).await;
    assert_eq!(response.status(), 200);
    let queue = format!("{}.work", broker.prefix);
    let first = broker.wait_get(&queue, Duration::from_secs(5)).await;
    assert_eq!(first.delivery.data, body);
    assert!(broker.get(&queue).await.is_none(), "rejected requests published something");
    ingest.stop().await;
}

#[tokio::test]
async fn during_secret_rotation_either_signature_is_accepted() {
    let broker = TestBroker::new().await;
    let (old, new) = ("whsec_old_secret", "whsec_new_secret");
    let ingest = TestIngest::spawn(broker.settings(None, &[("STRIPE_WEBHOOK_SECRET", &format!("{old},{new}"))])).await;
    let body = stripe_session_event("evt_rot", "checkout.session.completed", "o-3", "paid", 3000, "usd");
    let t = now();
    let both = format!("t={t},v1={},v1={}", stripe_v1(&body, old, t), stripe_v1(&body, new, t));
    let only_old = sign_stripe_payload(&body, old, t);
    let only_new = sign_stripe_payload(&body, new, t);
    let neither = sign_stripe_payload(&body, "whsec_other", t);
    for (case, header, expected) in
        [("both", &both, 200), ("old", &only_old, 200), ("new", &only_new, 200), ("neither", &neither, 400)]
    {
        assert_eq!(ingest.post_stripe(&body, Some(header)).await.status(), expected, "{case}");
    }
    let queue = format!("{}.work", broker.prefix);
    testkit::eventually("three queued copies", Duration::from_secs(5), || async {
        (broker.count(&queue).await == 3).then_some(())
    })
    .await;
    ingest.stop().await;
}
