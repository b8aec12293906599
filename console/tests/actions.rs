//! The console's actions do what `hookctl`'s do, through the same code: a replay checks each
//! event as a worker would before it goes back to work, and "verify now" sends an unverified
//! event to the workers again.

mod common;

use common::{Env, OPERATOR};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use secrecy::SecretString;
use shared::envelope::{EventEnvelope, IngestVerification, H_FETCHED_MAC, H_SOURCE};
use shared::verify::fetched::FetchedMacKey;
use shared::Provider;

/// Puts a Stripe event straight into the dead letters, signed with `secret`.
async fn park(env: &Env, event_id: &str, secret: &str) {
    park_with(env, event_id, IngestVerification::Signature, |body| {
        vec![("stripe-signature".to_string(), testkit::events::stripe_signature(body, secret))]
    })
    .await
}

/// Puts a Stripe event reconciliation fetched straight into the dead letters, its MAC keyed
/// from `api_key`.
async fn park_fetched(env: &Env, event_id: &str, api_key: &str) {
    park_with(env, event_id, IngestVerification::Fetched, |body| {
        let mac = FetchedMacKey::derive(&SecretString::from(api_key)).sign(Provider::Stripe, event_id, body);
        vec![(H_FETCHED_MAC.to_string(), mac), (H_SOURCE.to_string(), "reconciliation".to_string())]
    })
    .await
}

async fn park_with(
    env: &Env,
    event_id: &str,
    verification: IngestVerification,
    headers: impl FnOnce(&[u8]) -> Vec<(String, String)>,
) {
    let body =
        testkit::events::stripe_session_event(event_id, "checkout.session.completed", "order-x", "paid", 100, "usd");
    let properties = EventEnvelope {
        provider: Provider::Stripe,
        event_type: "checkout.session.completed".into(),
        event_key: event_id.into(),
        verification,
        received_at: chrono::Utc::now(),
        request_id: "r".into(),
        attempt: 8,
        delivery_headers: headers(&body).into_iter().collect(),
        body: body.clone(),
    }
    .properties();
    let channel = env.broker.channel();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
        .basic_publish("".into(), env.dead_queue().as_str().into(), BasicPublishOptions::default(), &body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Skip `check_replay` in `hookctl::dead_letters::replay_from` and the forged event goes
/// back to work: this fails.
#[tokio::test]
async fn a_replay_checks_each_event_as_a_worker_would_and_leaves_a_forged_one_dead() {
    let env = Env::new().await;
    env.declare().await;
    park(&env, "evt_genuine", testkit::events::STRIPE_SECRET).await;
    park(&env, "evt_forged", "whsec_someone_elses_secret").await;
    env.wait_dead_letters(2).await;
    let console = env.console(&[]).await;
    let mut ann = console.login(OPERATOR).await;
    ann.page("/dead").await;
    let response =
        ann.post_with_token("/dead/replay", &[("kind", "events"), ("id", "evt_genuine"), ("id", "evt_forged")]).await;
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("1 message(s) moved back to work"), "{page}");
    assert!(page.contains("evt_forged") && page.contains("unverifiable"), "{page}");
    let work = format!("{}.work", env.broker.prefix);
    let replayed = env.broker.wait_get(&work, common::WAIT).await;
    let key = shared::envelope::header_str(replayed.delivery.properties.headers().as_ref().unwrap(), "x-event-key");
    assert_eq!(key.as_deref(), Some("evt_genuine"));
    env.wait_dead_letters(1).await;
    let left = env.broker.wait_get(&env.dead_queue(), common::WAIT).await;
    let key = shared::envelope::header_str(left.delivery.properties.headers().as_ref().unwrap(), "x-event-key");
    assert_eq!(key.as_deref(), Some("evt_forged"), "the forged one stays dead");
    let audit = env.audit().await;
    assert!(audit.iter().any(|(_, a, r, d)| a == "replay" && r == "ok" && d.contains("refused 1")), "{audit:?}");
    console.stop().await;
}

/// Without `with_stripe_api_key` in `Console::build` (console/src/app.rs) the fetched event
/// stays dead even with the key: this fails.
#[tokio::test]
async fn a_replay_believes_an_event_reconciliation_fetched_only_with_the_stripe_api_key() {
    const API_KEY: &str = "rk_test_console_events_read";
    let env = Env::new().await;
    env.declare().await;
    park_fetched(&env, "evt_fetched", API_KEY).await;
    env.wait_dead_letters(1).await;
    // Without the key its MAC proves nothing: refused, it stays dead.
    let console = env.console(&[]).await;
    let page = replay_fetched(&console).await;
    assert!(page.contains("evt_fetched") && page.contains("unverifiable"), "{page}");
    console.stop().await;
    env.wait_dead_letters(1).await;

    // With the workers' key: back to work.
    let console = env.console(&[("STRIPE_API_KEY", API_KEY)]).await;
    let page = replay_fetched(&console).await;
    assert!(page.contains("1 message(s) moved back to work"), "{page}");
    let work = format!("{}.work", env.broker.prefix);
    let replayed = env.broker.wait_get(&work, common::WAIT).await;
    let key = shared::envelope::header_str(replayed.delivery.properties.headers().as_ref().unwrap(), "x-event-key");
    assert_eq!(key.as_deref(), Some("evt_fetched"));
    env.wait_dead_letters(0).await;
    console.stop().await;
}

/// An operator replays `evt_fetched` on `console`; the page that answers.
async fn replay_fetched(console: &common::TestConsole) -> String {
    let mut ann = console.login(OPERATOR).await;
    ann.page("/dead").await;
    let response = ann.post_with_token("/dead/replay", &[("kind", "events"), ("id", "evt_fetched")]).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn verify_now_sends_an_unverified_event_to_the_workers_again() {
    let env = Env::new().await;
    env.declare().await;
    let body = testkit::events::toss_payment_status_changed("order-unv", "pk_unv", "DONE", 37400);
    let key = shared::providers::toss::parse_toss_event(&body).unwrap().event_key();
    env.sql
        .execute(
            "INSERT INTO webhook_events (provider, event_key, event_type, order_id, status, detail, attempts, verification,
                                         payload, request_id, received_at, processed_at)
             VALUES ('toss', $1, 'PAYMENT_STATUS_CHANGED', 'order-unv', 'unverified', 'nothing verified it', 1, 'none',
                     $2, 'req-unv', now(), now())",
            &[&key, &String::from_utf8(body.clone()).unwrap()],
        )
        .await
        .unwrap();
    // Without a means to verify, "verify now" is off.
    let console = env.console(&[]).await;
    let mut ann = console.login(OPERATOR).await;
    let page = ann.page("/unverified").await;
    assert!(page.contains("order-unv") && page.contains("Verify now is off"), "{page}");
    assert_eq!(ann.post_with_token("/unverified/recheck", &[("key", &key)]).await.status(), 409);
    console.stop().await;

    let console = env.console(&[("TOSS_FETCH_BACK", "true")]).await;
    let mut ann = console.login(OPERATOR).await;
    let page = ann.page("/unverified").await;
    assert!(page.contains("Verify selected now"), "{page}");
    let response = ann.post_with_token("/unverified/recheck", &[("key", &key), ("scope", "selected")]).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("1 event(s) sent to the workers again"));
    let work = format!("{}.work", env.broker.prefix);
    let sent = env.broker.wait_get(&work, common::WAIT).await;
    let envelope = EventEnvelope::from_amqp(&sent.delivery.properties, &sent.delivery.data).unwrap();
    assert_eq!(envelope.event_key, key);
    assert_eq!(envelope.request_id, "req-unv");
    assert_eq!(envelope.verification, IngestVerification::Unsigned);
    assert_eq!(sent.delivery.data, body, "the stored body, byte for byte");
    console.stop().await;
}

/// One dead letter, as `hookctl dead show` shows it (the same code): its headers with control
/// characters escaped, its body with the payment `secret` masked. Give `Read::detail`
/// (hookctl/src/dead_letters/read.rs) the raw body instead of `shown::body` and the secret is
/// on the page: this fails.
#[tokio::test]
async fn one_dead_letter_is_shown_with_its_secret_masked_and_a_gone_one_is_not_found() {
    let env = Env::new().await;
    env.declare().await;
    let body = br#"{"eventType":"DEPOSIT_CALLBACK","orderId":"order-shown","secret":"ps_do_not_show_me"}"#;
    let mut headers = FieldTable::default();
    headers.insert("x-event-key".into(), AMQPValue::LongString("toss_shown".into()));
    headers.insert("x-dead-reason".into(), AMQPValue::LongString("permanent: \u{1b}[31mred".into()));
    let channel = env.broker.channel();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let queue = env.dead_queue();
    channel
        .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    env.wait_dead_letters(1).await;
    let console = env.console(&[]).await;
    let mut bob = console.login(common::VIEWER).await;

    let page = bob.page("/dead/show?kind=events&id=toss_shown").await;
    assert!(page.contains("order-shown") && page.contains("***"), "{page}");
    assert!(!page.contains("ps_do_not_show_me"), "the secret is masked: {page}");
    assert!(page.contains("permanent: \\u{1b}[31mred") && !page.contains('\u{1b}'), "escaped: {page}");
    let gone = bob.get("/dead/show?kind=events&id=toss_gone").await;
    assert_eq!(gone.status(), 404);
    env.wait_dead_letters(1).await;
    console.stop().await;
}
