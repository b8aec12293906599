//! Notifications: one row and one message per applied change, none for a rolled-back one,
//! republished with the same id after a crash between publish and bookkeeping, and delivered
//! over HTTP with Standard Webhooks signatures, retries and dead letters.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{kill_hard, spawn_worker_process, Env, TestWorker};
use shared::envelope::header_str;
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::fake_http::Recorded;
use testkit::{Behavior, FakeEndpoint};
use uuid::Uuid;
use worker::domain::notification::NotificationMessage;

const WAIT: Duration = Duration::from_secs(30);
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn pay(env: &Env, key: &str, order: &str) {
    let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", key, &body).await;
}

/// Waits for the sentinel's message on `inbox` and returns the order ids of every message that
/// arrived, the sentinel's included. With one batch at a time (`WORKER_CONCURRENCY=1`), the
/// worker takes the sentinel's event only after every earlier batch ended, its publish
/// included, so a message an earlier batch published is before the sentinel's.
async fn orders_until_sentinel(env: &Env, inbox: &str, sentinel_order: &str) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::new());
    testkit::eventually("the sentinel's notification", WAIT, || async {
        let arrived = env.broker.drain(inbox).await;
        let mut seen = seen.borrow_mut();
        for message in arrived {
            let body: NotificationMessage = serde_json::from_slice(&message.delivery.data).expect("documented schema");
            seen.push(body.payment.order_id);
        }
        seen.iter().any(|order| order == sentinel_order).then_some(())
    })
    .await;
    seen.into_inner()
}

/// The duplicate is checked with a sentinel: a later event's message (see
/// [`orders_until_sentinel`]). Skip the `already_final` check in `decide_batch` and the
/// same-state `Transition::Ignore` in `decide_one` to see the duplicate's message arrive.
#[tokio::test]
async fn a_payment_change_yields_one_row_and_one_message_with_the_same_id() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-n1", "stripe", Some(1000), Some("usd")).await;
    env.seed_payment("order-n1-sentinel", "stripe", Some(1000), Some("usd")).await;
    let settings = env.settings(&[("WORKER_CONCURRENCY", "1")]);
    env.declare(&settings).await;
    let inbox = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;
    let worker = TestWorker::spawn(settings).await;
    pay(&env, "evt_n1", "order-n1").await;

    let message = env.broker.wait_get(&inbox, WAIT).await;
    let row = env.sql.query_one("SELECT id, title, message, type, link FROM notifications", &[]).await.unwrap();
    let id: Uuid = row.get(0);
    assert_eq!(message.delivery.properties.message_id().as_ref().unwrap().as_str(), id.to_string());
    assert_eq!(message.delivery.routing_key.as_str(), "payment.paid");
    let body: NotificationMessage = serde_json::from_slice(&message.delivery.data).expect("documented schema");
    assert_eq!(body.notification_id, id);
    assert_eq!(body.version, 1);
    assert_eq!(body.kind, "payment.paid");
    assert_eq!(body.user_id, seeded.trainer_id);
    assert_eq!(body.title, row.get::<_, String>(1));
    assert_eq!(body.message, row.get::<_, String>(2));
    assert_eq!(body.link, format!("/bookings/{}", seeded.booking_id));
    assert_eq!(body.payment.order_id, "order-n1");
    assert_eq!(body.payment.previous_status.as_str(), "pending");
    assert_eq!(body.payment.amount.as_deref(), Some("1000"));

    env.wait_count("outbox emptied", "SELECT count(*) FROM outbox", 0, WAIT).await;
    // A duplicate of the event produces no second notification or message.
    pay(&env, "evt_n1", "order-n1").await;
    env.wait_count(
        "duplicate seen",
        "SELECT duplicates::bigint FROM webhook_events WHERE event_key = 'evt_n1'",
        1,
        WAIT,
    )
    .await;
    pay(&env, "evt_n1_sentinel", "order-n1-sentinel").await;
    let orders = orders_until_sentinel(&env, &inbox, "order-n1-sentinel").await;
    assert_eq!(orders, ["order-n1-sentinel"], "no second message for the duplicate");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1, "one notification row for the paid order");
    worker.stop().await;
}

/// A message published before the commit (say, from `process_batch` ahead of `commit`) makes
/// this fail: each rolled-back attempt adds one before the applied change's message.
#[tokio::test]
async fn a_rolled_back_change_yields_neither_row_nor_message() {
    let env = Env::new().await;
    env.seed_payment("order-rb", "stripe", Some(1000), Some("usd")).await;
    // Sabotage: the last statement of the transaction (marking the event applied) fails, after
    // the notification and its outbox row were inserted.
    env.sql
        .batch_execute(
            "CREATE FUNCTION refuse_applied() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'sabotaged commit'; END $$;
             CREATE TRIGGER sabotage BEFORE INSERT OR UPDATE ON webhook_events FOR EACH ROW
             WHEN (NEW.status = 'applied') EXECUTE FUNCTION refuse_applied();",
        )
        .await
        .unwrap();
    let settings =
        env.settings(&[("RETRY_DELAYS", "300ms"), ("RETRY_MAX_ATTEMPTS", "50"), ("WORKER_CONCURRENCY", "1")]);
    env.declare(&settings).await;
    let inbox = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;
    let worker = TestWorker::spawn(settings).await;
    pay(&env, "evt_rb", "order-rb").await;
    env.wait_at_least(
        "two failed attempts",
        "SELECT attempts::bigint FROM webhook_events WHERE event_key = 'evt_rb'",
        2,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(env.status("order-rb").await, "pending");

    // Repair: the next retry applies it, once. Its message is the sentinel: the rolled-back
    // attempts were earlier batches, so whatever they published is before it.
    env.sql.batch_execute("DROP TRIGGER sabotage ON webhook_events").await.unwrap();
    let seen = std::cell::RefCell::new(Vec::new());
    let id: Uuid = testkit::eventually("the applied change's notification row", WAIT, || async {
        env.sql.query_opt("SELECT id FROM notifications", &[]).await.unwrap().map(|r| r.get(0))
    })
    .await;
    testkit::eventually("the applied change's message", WAIT, || async {
        let arrived = env.broker.drain(&inbox).await;
        let mut seen = seen.borrow_mut();
        seen.extend(arrived.iter().map(|m| m.delivery.properties.message_id().as_ref().map(|m| m.to_string())));
        seen.contains(&Some(id.to_string())).then_some(())
    })
    .await;
    assert_eq!(seen.into_inner().len(), 1, "no message for the rolled-back attempts, one for the applied change");
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 1);
    worker.stop().await;
}

#[tokio::test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the test hooks: --features worker/failpoints")]
async fn a_relay_killed_between_publish_and_bookkeeping_republishes_the_same_id() {
    let env = Env::new().await;
    env.seed_payment("order-crash", "stripe", Some(1000), Some("usd")).await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    let inbox = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;

    // The crashed worker's lease on the row runs out after OUTBOX_LEASE; then any relay takes it.
    let lease = [("OUTBOX_LEASE", "2s")];
    let mut crashing = spawn_worker_process(&env.env_vars(&[("FAILPOINTS", "outbox-after-publish=return"), lease[0]]));
    pay(&env, "evt_crash", "order-crash").await;
    let status = tokio::time::timeout(WAIT, crashing.wait()).await.expect("the relay died at the fail point").unwrap();
    assert!(!status.success(), "aborted");
    let first = env.broker.wait_get(&inbox, WAIT).await;
    let id = first.delivery.properties.message_id().as_ref().unwrap().to_string();
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 1, "the row survived the crash");

    let mut healthy = spawn_worker_process(&env.env_vars(&lease));
    let second = env.broker.wait_get(&inbox, WAIT).await;
    assert_eq!(second.delivery.properties.message_id().as_ref().unwrap().as_str(), id, "same id again");
    assert_eq!(second.delivery.data, first.delivery.data);
    env.wait_count("no outbox row left behind", "SELECT count(*) FROM outbox", 0, WAIT).await;
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 1);
    kill_hard(&mut healthy).await;
}

/// Verifies a delivered request with the `standardwebhooks` crate, as a receiver would.
fn verify_standard_webhook(request: &testkit::fake_http::Recorded) -> serde_json::Value {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap_or_else(|| panic!("{name} header")).parse().unwrap());
    }
    let verifier = standardwebhooks::Webhook::new(NOTIFY_SECRET).unwrap();
    verifier.verify(&request.body, &headers).expect("a Standard Webhooks library accepts the signature");
    serde_json::from_slice(&request.body).unwrap()
}

async fn delivery_env(script: Vec<Behavior>, extra: &[(&str, &str)]) -> (Env, FakeEndpoint, TestWorker) {
    let env = Env::new().await;
    env.seed_payment("order-d", "stripe", Some(1000), Some("usd")).await;
    let endpoint = FakeEndpoint::start(script).await;
    let url = endpoint.url("/hooks/notify");
    let mut vars = vec![
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
        ("RETRY_DELAYS", "200ms,400ms"),
        ("NOTIFY_TIMEOUT", "500ms"),
    ];
    vars.extend_from_slice(extra);
    let worker = TestWorker::spawn(env.settings(&vars)).await;
    pay(&env, "evt_d", "order-d").await;
    (env, endpoint, worker)
}

/// The sentinel is a second notification whose first attempt fails too. With one delivery at a
/// time (`NOTIFY_CONCURRENCY=1`) its first attempt comes after the first notification's
/// success was settled, and with one delay tier every retry waits in the same queue, first in,
/// first out: any attempt of the first notification after its success (a retry, a requeue) would
/// reach the endpoint before the sentinel's second attempt. Make `classify_status` retry a 2xx
/// to see it fail.
#[tokio::test]
async fn delivery_retries_server_errors_and_succeeds_on_the_third_try() {
    let env = Env::new().await;
    env.seed_payment("order-d", "stripe", Some(1000), Some("usd")).await;
    env.seed_payment("order-sentinel", "stripe", Some(1000), Some("usd")).await;
    // The sentinel's notification fails once, then succeeds; the first follows the script.
    let sentinel_attempts = Arc::new(AtomicUsize::new(0));
    let counter = sentinel_attempts.clone();
    let router = Arc::new(move |request: &Recorded| {
        let sentinel = String::from_utf8_lossy(&request.body).contains("\"order-sentinel\"");
        sentinel.then(|| match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Behavior::Status(500, "{}".into()),
            _ => Behavior::Status(200, "{}".into()),
        })
    });
    let script = vec![
        Behavior::Status(500, "{}".into()),
        Behavior::Status(500, "{}".into()),
        Behavior::Status(200, "{}".into()),
    ];
    let endpoint = FakeEndpoint::start_with(script, Some(router)).await;
    let url = endpoint.url("/hooks/notify");
    let worker = TestWorker::spawn(env.settings(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
        ("RETRY_DELAYS", "200ms"),
        ("NOTIFY_TIMEOUT", "500ms"),
        ("NOTIFY_CONCURRENCY", "1"),
    ]))
    .await;
    pay(&env, "evt_d", "order-d").await;
    let for_first = |requests: &[Recorded]| {
        requests.iter().filter(|r| String::from_utf8_lossy(&r.body).contains("\"order-d\"")).count()
    };
    testkit::eventually("three delivery attempts", WAIT, || async {
        (for_first(&endpoint.requests()) >= 3).then_some(())
    })
    .await;

    pay(&env, "evt_sentinel", "order-sentinel").await;
    testkit::eventually("the sentinel's second attempt", WAIT, || async {
        (sentinel_attempts.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let requests: Vec<Recorded> =
        endpoint.requests().into_iter().filter(|r| String::from_utf8_lossy(&r.body).contains("\"order-d\"")).collect();
    assert_eq!(requests.len(), 3, "delivered on the third try, not again");
    let id: Uuid = env
        .sql
        .query_one(
            "SELECT n.id FROM notifications n JOIN payments p ON p.id = n.payment_id WHERE p.order_id = 'order-d'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for request in &requests {
        assert_eq!(request.path, "/hooks/notify");
        assert_eq!(request.header("webhook-id"), Some(id.to_string().as_str()));
        let body = verify_standard_webhook(request);
        assert_eq!(body["notification_id"], id.to_string());
    }
    assert_eq!(env.broker.count(&format!("{}.notify.dead", env.broker.prefix)).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn delivery_sends_client_errors_to_the_dead_letters_at_once() {
    let (env, endpoint, worker) = delivery_env(vec![Behavior::Status(400, "{}".into())], &[]).await;
    let dead = env.broker.wait_get(&format!("{}.notify.dead", env.broker.prefix), WAIT).await;
    let reason = header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("permanent") && reason.contains("400"), "{reason}");
    assert_eq!(endpoint.requests().len(), 1);
    verify_standard_webhook(&endpoint.requests()[0]);
    worker.stop().await;
}

/// A redirect is not followed: the address it names gets nothing, and the notification goes to
/// the dead letters at once. Delete `.redirect(reqwest::redirect::Policy::none())` in
/// `worker::delivery::start` to see the elsewhere endpoint receive it.
#[tokio::test]
async fn delivery_follows_no_redirect_and_dead_letters_the_notification() {
    let elsewhere = FakeEndpoint::start(vec![Behavior::Status(200, "{}".into())]).await;
    let (env, endpoint, worker) = delivery_env(vec![Behavior::Redirect(307, elsewhere.url("/stolen"))], &[]).await;
    let dead_queue = format!("{}.notify.dead", env.broker.prefix);
    // Whichever happens first: the dead letter, or a request that followed the redirect.
    let dead = testkit::eventually("a dead letter or a followed redirect", WAIT, || async {
        if !elsewhere.requests().is_empty() {
            return Some(None);
        }
        env.broker.get(&dead_queue).await.map(Some)
    })
    .await;
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    let dead = dead.expect("dead-lettered");
    let reason = header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("permanent") && reason.contains("307") && reason.contains("redirect"), "{reason}");
    assert_eq!(endpoint.requests().len(), 1, "not retried");
    worker.stop().await;
}

#[tokio::test]
async fn delivery_to_an_endpoint_that_never_answers_ends_in_the_dead_letters() {
    let (env, endpoint, worker) = delivery_env(vec![Behavior::Hang], &[("RETRY_MAX_ATTEMPTS", "3")]).await;
    let dead = env.broker.wait_get(&format!("{}.notify.dead", env.broker.prefix), WAIT).await;
    let reason = header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("timed out"), "{reason}");
    assert_eq!(endpoint.requests().len(), 3);
    worker.stop().await;
}

#[tokio::test]
async fn a_thousand_changes_across_two_workers_yield_a_thousand_rows_and_distinct_messages() {
    let env = Env::new().await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    let inbox = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;
    env.sql
        .batch_execute(
            "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, 1000) RETURNING id)
             INSERT INTO payments (order_id, booking_id, provider, amount, currency)
             SELECT 'bulk-' || row_number() OVER (), id, 'stripe', 1000, 'usd' FROM b",
        )
        .await
        .unwrap();
    for i in 1..=1000 {
        pay(&env, &format!("evt_bulk_{i}"), &format!("bulk-{i}")).await;
    }
    let vars = env.env_vars(&[("WORKER_CONCURRENCY", "8")]);
    let mut a = spawn_worker_process(&vars);
    let mut b = spawn_worker_process(&vars);
    env.wait_count("1000 notification rows", "SELECT count(*) FROM notifications", 1000, Duration::from_secs(120))
        .await;
    env.wait_count("outbox drained", "SELECT count(*) FROM outbox", 0, Duration::from_secs(60)).await;
    testkit::eventually("1000 messages", WAIT, || async { (env.broker.count(&inbox).await >= 1000).then_some(()) })
        .await;
    let messages = env.broker.drain(&inbox).await;
    let ids: HashSet<String> =
        messages.iter().map(|m| m.delivery.properties.message_id().as_ref().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1000, "1000 distinct messages");
    assert_eq!(messages.len(), 1000, "no duplicates without a crash");
    let rows: HashSet<String> =
        env.sql.query("SELECT id::text FROM notifications", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, rows, "message ids are the notification ids");
    kill_hard(&mut a).await;
    kill_hard(&mut b).await;
}

#[tokio::test]
async fn delivery_honours_retry_after_by_waiting_at_least_that_long() {
    let (env, endpoint, worker) = delivery_env(
        vec![Behavior::RetryAfter(429, 1), Behavior::Status(200, "{}".into())],
        &[("RETRY_DELAYS", "100ms,200ms,2s")],
    )
    .await;
    testkit::eventually("a second attempt", WAIT, || async { (endpoint.requests().len() >= 2).then_some(()) }).await;
    worker.stop().await;
    drop(env);
    let times = endpoint.request_times();
    let waited = times[1] - times[0];
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}, before Retry-After allowed");
}
