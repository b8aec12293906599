//! `hookctl` as operators run it: a separate process reading the same settings.

mod common;

use std::time::Duration;

use common::{Env, TestIngest, TestWorker};
use shared::Provider;
use testkit::events::{stripe_session_event, STRIPE_SECRET};

const WAIT: Duration = Duration::from_secs(30);

/// Runs hookctl with the Stripe secret ingest checks, so `send` signs as Stripe would.
async fn hookctl(env: &Env, args: &[&str]) -> (bool, String) {
    env.hookctl(&[("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)], args).await
}

#[tokio::test]
async fn send_produces_events_that_ingest_accepts_and_the_worker_applies() {
    let env = Env::new().await;
    env.seed_payment("order-cli-s", "stripe", Some(4200), Some("usd")).await;
    env.seed_payment("order-cli-t", "toss", Some(37400), Some("KRW")).await;
    // As on a developer machine (config/local.toml): `send toss` posts an unsigned payment
    // event, which only the development opt-in applies without a Toss API to confirm it.
    let ingest = TestIngest::spawn(env.settings(&[])).await;
    let worker = TestWorker::spawn(env.settings(&[("TOSS_ALLOW_UNVERIFIED", "true")])).await;
    let url = format!("http://{}", ingest.addr);

    let (ok, out) = hookctl(
        &env,
        &["send", "stripe", "checkout.session.completed", "--order", "order-cli-s", "--amount", "4200", "--url", &url],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("200"), "{out}");
    let (ok, out) =
        hookctl(&env, &["send", "toss", "DONE", "--order", "order-cli-t", "--amount", "37400", "--url", &url]).await;
    assert!(ok, "{out}");
    env.wait_count("both paid", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 2, WAIT).await;

    let (ok, out) = hookctl(&env, &["send", "stripe", "charge.refunded", "--order", "x", "--url", &url]).await;
    assert!(!ok && out.contains("unsupported Stripe event type"), "{out}");
    worker.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn dead_replay_brings_an_event_back_and_events_shows_the_history() {
    let env = Env::new().await;
    let worker = TestWorker::spawn(env.settings(&[("RETRY_MAX_ATTEMPTS", "1")])).await;
    let body = stripe_session_event("evt_replay", "checkout.session.completed", "order-replay", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_replay", &body).await;
    env.wait_count(
        "parked",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_replay' AND status = 'dead'",
        1,
        WAIT,
    )
    .await;
    testkit::eventually("in the dead-letter queue", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 1).then_some(())
    })
    .await;

    let (ok, out) = hookctl(&env, &["dead", "list"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("evt_replay") && out.contains("gave up after 1 attempts"), "{out}");
    let (ok, out) = hookctl(&env, &["dead", "show", "evt_replay"]).await;
    assert!(ok && out.contains("order-replay") && out.contains("x-dead-reason"), "{out}");
    // Closing hookctl's channel returns what it read; a quorum queue counts it again a moment later.
    testkit::eventually("list and show leave the queue as it was", WAIT, || async {
        (env.broker.count(&env.dead_queue()).await == 1).then_some(())
    })
    .await;

    // Fix the cause, then replay.
    let seeded = env.seed_payment("order-replay", "stripe", Some(1000), Some("usd")).await;
    let (ok, out) = hookctl(&env, &["dead", "replay", "evt_replay"]).await;
    assert!(ok && out.contains("1 message(s) moved back"), "{out}");
    env.wait_count(
        "applied after replay",
        "SELECT count(*) FROM payments WHERE order_id = 'order-replay' AND payment_status = 'paid'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);

    let (ok, out) = hookctl(&env, &["events", "order-replay"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("evt_replay") && out.contains("applied") && out.contains("checkout.session.completed"),
        "{out}"
    );
    let (ok, out) = hookctl(&env, &["dead", "purge"]).await;
    assert!(!ok && out.contains("--yes"), "purge asks for confirmation: {out}");
    worker.stop().await;
}

#[tokio::test]
async fn replaying_an_event_that_was_applied_meanwhile_changes_nothing() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-twice", "stripe", Some(1000), Some("usd")).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let body = stripe_session_event("evt_twice", "checkout.session.completed", "order-twice", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_twice", &body).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    // A stale copy of the same event sits in the dead letters (as after a manual move).
    let channel = env.broker.channel();
    let props = shared::envelope::EventEnvelope {
        provider: Provider::Stripe,
        event_type: "checkout.session.completed".into(),
        event_key: "evt_twice".into(),
        verification: shared::envelope::IngestVerification::Signature,
        received_at: chrono::Utc::now(),
        request_id: "r".into(),
        attempt: 3,
        delivery_headers: [("stripe-signature".to_string(), testkit::events::stripe_signature(&body, STRIPE_SECRET))]
            .into_iter()
            .collect(),
        body: body.clone(),
    }
    .properties();
    channel
        .basic_publish("".into(), env.dead_queue().as_str().into(), Default::default(), &body, props)
        .await
        .unwrap()
        .await
        .unwrap();
    let (ok, out) = hookctl(&env, &["dead", "replay", "--all"]).await;
    assert!(ok && out.contains("1 message(s) moved back"), "{out}");
    env.wait_count(
        "seen as a duplicate",
        "SELECT duplicates::bigint FROM webhook_events WHERE event_key = 'evt_twice'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_notification_the_broker_keeps_refusing_is_set_aside_listed_and_replayed() {
    let env = Env::new().await;
    env.seed_payment("order-refused", "stripe", Some(1000), Some("usd")).await;
    let settings = env.settings(&[("OUTBOX_MAX_ATTEMPTS", "2"), ("OUTBOX_POLL_INTERVAL", "200ms")]);
    env.declare(&settings).await;
    // A queue bound to the notifications exchange that takes nothing: every publish is nacked.
    let refusing = lapin::types::FieldTable::from(std::collections::BTreeMap::from([
        ("x-max-length".into(), lapin::types::AMQPValue::LongInt(0)),
        ("x-overflow".into(), lapin::types::AMQPValue::LongString("reject-publish".into())),
    ]));
    let channel = env.broker.channel();
    let options = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let full = channel.queue_declare("".into(), options, refusing).await.unwrap().name().to_string();
    let exchange = format!("{}.notifications", env.broker.prefix);
    channel
        .queue_bind(full.as_str().into(), exchange.as_str().into(), "#".into(), Default::default(), Default::default())
        .await
        .unwrap();

    let worker = TestWorker::spawn(settings).await;
    let body = stripe_session_event("evt_refused", "checkout.session.completed", "order-refused", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_refused", &body).await;
    env.wait_count(
        "the row set aside after two refusals",
        "SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND attempts = 2",
        1,
        WAIT,
    )
    .await;
    let id: uuid::Uuid = env.sql.query_one("SELECT notification_id FROM outbox", &[]).await.unwrap().get(0);
    let (ok, out) = hookctl(&env, &["dead", "list", "--notifications"]).await;
    assert!(ok && out.contains(&id.to_string()) && out.contains("nack"), "{out}");

    // The consumer is fixed (the refusing queue goes); replaying hands the row back to the relay.
    channel.queue_delete(full.as_str().into(), Default::default()).await.unwrap();
    let inbox = env.broker.subscribe(&exchange).await;
    let (ok, out) = hookctl(&env, &["dead", "replay", &id.to_string(), "--notifications"]).await;
    assert!(ok, "{out}");
    let message = env.broker.wait_get(&inbox, WAIT).await;
    assert_eq!(message.delivery.properties.message_id().as_ref().unwrap().as_str(), id.to_string());
    env.wait_count("the outbox emptied", "SELECT count(*) FROM outbox", 0, WAIT).await;
    worker.stop().await;
}

/// A queue's ready messages, read with a passive declaration.
async fn ready_messages(env: &Env, queue: &str) -> u32 {
    env.broker
        .channel()
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .expect("the queue exists")
        .message_count()
}

#[tokio::test]
async fn reconcile_lists_what_the_inbox_lacks_and_publishes_it_only_without_dry_run() {
    const KEY: &str = "rk_test_hookctl_reconcile";
    let env = Env::new().await;
    env.seed_payment("order-rec-missed", "stripe", Some(3000), Some("usd")).await;
    env.seed_payment("order-rec-delivered", "stripe", Some(3000), Some("usd")).await;
    let api = testkit::FakeStripe::start(KEY).await;
    let created = chrono::Utc::now().timestamp() - 3600;
    for (id, order) in [("evt_rec_missed", "order-rec-missed"), ("evt_rec_delivered", "order-rec-delivered")] {
        let body = stripe_session_event(id, "checkout.session.completed", order, "paid", 3000, "usd");
        api.add_event(serde_json::from_slice(&body).unwrap(), created);
    }
    // One of the two came as a webhook; the workers are then away.
    let worker_settings: shared::settings::WorkerSettings =
        env.settings(&[("STRIPE_API_KEY", KEY), ("RECONCILE_INTERVAL", "0")]);
    let worker = TestWorker::spawn(worker_settings.clone()).await;
    let delivered = stripe_session_event(
        "evt_rec_delivered",
        "checkout.session.completed",
        "order-rec-delivered",
        "paid",
        3000,
        "usd",
    );
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_rec_delivered", &delivered).await;
    env.wait_count("the webhook applied", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 1, WAIT).await;
    worker.stop().await;

    let base = api.base();
    let vars = [("STRIPE_API_KEY", KEY), ("STRIPE_API_BASE", base.as_str())];
    let (ok, out) = env.hookctl(&vars, &["reconcile", "stripe", "--since", "72h", "--dry-run"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("evt_rec_missed") && !out.contains("evt_rec_delivered"), "{out}");
    assert!(out.contains("missing 1, would publish 1"), "{out}");
    assert_eq!(ready_messages(&env, &env.work_queue()).await, 0, "a dry run publishes nothing");

    let (ok, out) = env.hookctl(&vars, &["reconcile", "stripe", "--since", "72h"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("missing 1, published 1"), "{out}");
    assert_eq!(ready_messages(&env, &env.work_queue()).await, 1);

    let worker = TestWorker::spawn(worker_settings).await;
    env.wait_count("the missed one applied", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 2, WAIT)
        .await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM webhook_events WHERE event_key = 'evt_rec_missed' AND verification = 'fetched'"
        )
        .await,
        1
    );
    worker.stop().await;
}
