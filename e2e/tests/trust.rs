//! The broker is not a trust boundary: whoever can publish to the events exchange can write any
//! header. The worker believes only what a message's bytes prove with its own secrets, and a
//! message whose claim does not hold is dead-lettered as `unverifiable`, changes nothing, never
//! stands in the inbox for a key it did not prove, and is counted.

mod common;

use std::time::Duration;

use common::{Env, TestIngest, TestWorker};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use shared::envelope::{header_str, EventEnvelope, IngestVerification, H_DEAD_REASON};
use shared::samples::{stripe_session_event, toss_payout_changed};
use shared::verify::stripe::sign_stripe_payload;
use shared::Provider;
use testkit::events::{toss_headers, STRIPE_SECRET, TOSS_SECRET};

const WAIT: Duration = Duration::from_secs(30);
const PAID: &str = "checkout.session.completed";

/// Publishes `envelope` to the events exchange exactly as given (whatever it claims).
async fn publish_raw(env: &Env, envelope: &EventEnvelope) {
    let channel = env.broker.connection().create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            format!("{}.events", env.broker.prefix).into(),
            format!("{}.{}", envelope.provider, envelope.event_type).into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            &envelope.body,
            envelope.properties(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, lapin::Confirmation::Ack(None)));
    let _ = channel.close(200, "done".into()).await;
}

/// A Stripe `checkout.session.completed` (paid) for `order`, claiming a verified signature and
/// carrying `signature` (or none).
fn stripe_claim(key: &str, order: &str, signature: Option<String>) -> EventEnvelope {
    let body = stripe_session_event(key, PAID, order, "paid", 3000, "usd");
    EventEnvelope {
        provider: Provider::Stripe,
        event_type: PAID.into(),
        event_key: key.into(),
        verification: IngestVerification::Signature,
        received_at: chrono::Utc::now(),
        request_id: testkit::unique("req"),
        attempt: 0,
        delivery_headers: signature.map(|s| ("stripe-signature".to_string(), s)).into_iter().collect(),
        body,
    }
}

fn signed(body: &[u8], secret: &str, at: i64) -> Option<String> {
    Some(sign_stripe_payload(body, secret, at))
}

/// The dead letters' reasons, by the event key each message claimed.
async fn dead_reasons(env: &Env, expected: usize) -> Vec<(String, String)> {
    let mut reasons = Vec::new();
    for _ in 0..expected {
        let message = env.broker.wait_get(&env.dead_queue(), WAIT).await;
        let headers = message.delivery.properties.headers().clone().unwrap_or_default();
        let key = header_str(&headers, "x-event-key").unwrap_or_default();
        reasons.push((key, header_str(&headers, H_DEAD_REASON).unwrap_or_default()));
    }
    reasons.sort();
    reasons
}

#[tokio::test]
async fn a_claim_of_a_signature_that_does_not_hold_is_dead_lettered_as_unverifiable_and_changes_nothing() {
    let env = Env::new().await;
    for order in ["o-unsigned", "o-forged", "o-tampered", "o-renamed", "o-old"] {
        env.seed_payment(order, "stripe", Some(3000), Some("usd")).await;
    }
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let now = chrono::Utc::now().timestamp();

    // No signature at all, a signature made with a guessed secret, a body changed after
    // signing, a key the body does not have.
    publish_raw(&env, &stripe_claim("evt_unsigned", "o-unsigned", None)).await;
    let forged = stripe_session_event("evt_forged", PAID, "o-forged", "paid", 3000, "usd");
    publish_raw(&env, &stripe_claim("evt_forged", "o-forged", signed(&forged, "whsec_guessed", now))).await;
    let mut tampered = stripe_claim("evt_tampered", "o-tampered", None);
    let original = stripe_session_event("evt_tampered", PAID, "o-tampered", "unpaid", 3000, "usd");
    tampered.delivery_headers.insert("stripe-signature".into(), sign_stripe_payload(&original, STRIPE_SECRET, now));
    publish_raw(&env, &tampered).await;
    let mut renamed = stripe_claim("evt_renamed", "o-renamed", None);
    let signature = sign_stripe_payload(&renamed.body, STRIPE_SECRET, now);
    renamed.delivery_headers.insert("stripe-signature".into(), signature);
    renamed.event_key = "evt_someone_elses".into();
    publish_raw(&env, &renamed).await;
    // A genuine event signed two days ago: it waited in a queue; the signature still holds.
    let old = stripe_session_event("evt_old", PAID, "o-old", "paid", 3000, "usd");
    publish_raw(&env, &stripe_claim("evt_old", "o-old", signed(&old, STRIPE_SECRET, now - 2 * 86_400))).await;

    let reasons = dead_reasons(&env, 4).await;
    let keys: Vec<&str> = reasons.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["evt_forged", "evt_someone_elses", "evt_tampered", "evt_unsigned"]);
    for (key, reason) in &reasons {
        assert!(reason.starts_with("unverifiable: "), "{key}: {reason}");
    }
    assert!(reasons[1].1.contains("x-event-key"), "{}", reasons[1].1);
    env.wait_count("the genuine one applied", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 1, WAIT)
        .await;
    assert_eq!(env.status("o-old").await, "paid");
    for order in ["o-unsigned", "o-forged", "o-tampered", "o-renamed"] {
        assert_eq!(env.status(order).await, "pending", "{order}");
    }
    // Nothing unproven stands in the inbox, neither under the key it claimed nor its body's.
    assert_eq!(env.count("SELECT count(*) FROM webhook_events").await, 1);
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    let unverifiable = [("provider", "stripe"), ("event_type", PAID), ("outcome", "unverifiable")];
    assert_eq!(metrics.value("worker_events_total", &unverifiable), 4.0);
    // Remove the check_message call in process::Item::read to see this fail.
    worker.stop().await;
}

#[tokio::test]
async fn a_forged_copy_in_the_same_batch_neither_blocks_nor_borrows_the_genuine_events_outcome() {
    let env = Env::new().await;
    env.seed_payment("o-both", "stripe", Some(3000), Some("usd")).await;
    let settings = env.settings(&[("WORKER_BATCH_LINGER", "300ms")]);
    env.declare(&settings).await;
    // The forged copy comes first: were it taken as the event, the genuine one would follow it
    // into the dead letters as a copy.
    let genuine = stripe_session_event("evt_both", PAID, "o-both", "paid", 3000, "usd");
    let mut forged = stripe_claim("evt_both", "o-both", None);
    forged.body = stripe_session_event("evt_both", PAID, "o-both", "paid", 1, "usd");
    publish_raw(&env, &forged).await;
    env.publish(Provider::Stripe, PAID, "evt_both", &genuine).await;
    let worker = TestWorker::spawn(settings).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    assert_eq!(env.status("o-both").await, "paid");
    let reasons = dead_reasons(&env, 1).await;
    assert!(reasons[0].1.starts_with("unverifiable"), "{reasons:?}");
    let (_, attempts, _) = env.inbox("evt_both").await.unwrap();
    assert_eq!(attempts, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_signed_toss_event_must_hold_under_the_workers_key_too() {
    let env = Env::new().await;
    let settings = env.settings(&[("TOSS_WEBHOOK_SECRET", TOSS_SECRET)]);
    let worker = TestWorker::spawn(settings).await;
    let body = toss_payout_changed("evt_payout_1");
    let mut forged = EventEnvelope {
        provider: Provider::Toss,
        event_type: "payout.changed".into(),
        event_key: "evt_payout_1".into(),
        verification: IngestVerification::Signature,
        received_at: chrono::Utc::now(),
        request_id: testkit::unique("req"),
        attempt: 0,
        delivery_headers: toss_headers(&body, Some("a guessed key")).into_iter().collect(),
        body: body.clone(),
    };
    publish_raw(&env, &forged).await;
    forged.event_key = "evt_payout_2".into();
    forged.body = toss_payout_changed("evt_payout_2");
    forged.delivery_headers = toss_headers(&forged.body, Some(TOSS_SECRET)).into_iter().collect();
    publish_raw(&env, &forged).await;
    let reasons = dead_reasons(&env, 1).await;
    assert_eq!(reasons[0].0, "evt_payout_1");
    assert!(reasons[0].1.contains("Toss signature does not hold"), "{reasons:?}");
    env.wait_count("the genuine one recorded", "SELECT count(*) FROM webhook_events WHERE status = 'ignored'", 1, WAIT)
        .await;
    let verification: String = env
        .sql
        .query_one("SELECT verification FROM webhook_events WHERE event_key = 'evt_payout_2'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(verification, "signature");
    worker.stop().await;
}

#[tokio::test]
async fn replaying_a_dead_letter_goes_through_the_same_check() {
    let env = Env::new().await;
    env.seed_payment("o-replay-forged", "stripe", Some(3000), Some("usd")).await;
    env.seed_payment("o-replay-genuine", "stripe", Some(3000), Some("usd")).await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    // Two dead letters: an unverifiable one, and a genuine event parked before its payment existed.
    let worker = TestWorker::spawn(env.settings(&[("RETRY_MAX_ATTEMPTS", "1")])).await;
    publish_raw(&env, &stripe_claim("evt_replay_forged", "o-replay-forged", None)).await;
    let genuine = stripe_session_event("evt_replay_genuine", PAID, "o-replay-missing", "paid", 3000, "usd");
    env.publish(Provider::Stripe, PAID, "evt_replay_genuine", &genuine).await;
    env.wait_count("parked", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    testkit::eventually("both parked", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 2).then_some(())
    })
    .await;
    env.sql
        .execute("UPDATE payments SET order_id = 'o-replay-missing' WHERE order_id = 'o-replay-genuine'", &[])
        .await
        .unwrap();

    let (ok, out) = env.hookctl(&[], &["dead", "replay", "--all"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("not replayed evt_replay_forged") && out.contains("unverifiable"), "{out}");
    assert!(out.contains("1 message(s) moved back"), "{out}");
    env.wait_count("replayed and applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT)
        .await;
    assert_eq!(env.status("o-replay-missing").await, "paid");
    assert_eq!(env.status("o-replay-forged").await, "pending");
    let left = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let headers = left.delivery.properties.headers().clone().unwrap_or_default();
    assert_eq!(header_str(&headers, "x-event-key").as_deref(), Some("evt_replay_forged"), "it stays dead");
    worker.stop().await;
}

#[tokio::test]
async fn through_ingest_the_guides_forged_toss_event_is_accepted_recorded_and_changes_nothing() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-known", "toss", Some(37400), Some("KRW")).await;
    let ingest = TestIngest::spawn(env.settings(&[])).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let forged = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"order-known","status":"DONE"}"#;
    let status = ingest.post("/api/webhooks/toss", forged, &[("content-type", "application/json")]).await;
    assert_eq!(status, 200, "Toss gets its 200: the event is stored, not trusted");
    env.wait_count("recorded", "SELECT count(*) FROM webhook_events WHERE status = 'unverified'", 1, WAIT).await;
    assert_eq!(env.status("order-known").await, "pending");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 0);
    worker.stop().await;
    ingest.stop().await;
}
