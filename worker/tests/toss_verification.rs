//! Toss payment events are unsigned; the worker verifies them by fetching the payment back
//! from the Toss API (a local fake here) or by the payment's deposit secret. Nothing else (an
//! order that exists, an amount that agrees) is verification: such an event is recorded as
//! `unverified` and changes nothing, unless the development opt-in says otherwise.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{Env, TestWorker};
use serde_json::json;
use testkit::events::{toss_deposit_callback, toss_payment_status_changed};
use testkit::fake_http::Recorded;
use testkit::{Behavior, FakeEndpoint, LoggedProcess};

const WAIT: Duration = Duration::from_secs(30);
const SECRET_KEY: &str = "test_sk_zXLkKEypNArWmo50nX3lmeaxYG5R";

fn api_payment(order: &str, key: &str, status: &str, amount: i64, secret: Option<&str>) -> String {
    json!({
        "mId": "tvivarepublica4", "version": "2022-11-16", "paymentKey": key, "orderId": order,
        "status": status, "method": "가상계좌", "currency": "KRW", "totalAmount": amount,
        "balanceAmount": amount, "secret": secret
    })
    .to_string()
}

/// A fake Toss API that answers payments by key and by order from a table.
async fn fake_api(payments: Vec<(&'static str, &'static str, String)>) -> FakeEndpoint {
    let router = Arc::new(move |r: &Recorded| {
        payments.iter().find_map(|(order, key, body)| {
            (r.path == format!("/v1/payments/{key}") || r.path == format!("/v1/payments/orders/{order}"))
                .then(|| Behavior::Status(200, body.clone()))
        })
    });
    FakeEndpoint::start_with(vec![Behavior::Status(404, r#"{"code":"NOT_FOUND_PAYMENT"}"#.into())], Some(router)).await
}

fn fetch_settings(api: &str) -> Vec<(&str, &str)> {
    vec![("TOSS_SECRET_KEY", SECRET_KEY), ("TOSS_API_BASE", api), ("TOSS_API_TIMEOUT", "500ms")]
}

async fn verification(env: &Env, key: &str) -> (String, Option<String>) {
    let row = env
        .sql
        .query_one("SELECT status, verification FROM webhook_events WHERE event_key = $1", &[&key])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_forged_done_is_never_applied_on_the_apis_older_state_and_a_genuine_one_is() {
    let env = Env::new().await;
    env.seed_payment("order-forged", "toss", Some(37400), Some("KRW")).await;
    env.seed_payment("order-genuine", "toss", Some(37400), Some("KRW")).await;
    let api = fake_api(vec![
        ("order-forged", "pk_forged", api_payment("order-forged", "pk_forged", "WAITING_FOR_DEPOSIT", 37400, None)),
        ("order-genuine", "pk_genuine", api_payment("order-genuine", "pk_genuine", "DONE", 37400, None)),
    ])
    .await;
    let base = api.url("");
    let mut vars = fetch_settings(&base);
    vars.extend([("RETRY_DELAYS", "100ms"), ("RETRY_MAX_ATTEMPTS", "4")]);
    let worker = TestWorker::spawn(env.settings(&vars)).await;

    let forged = toss_payment_status_changed("order-forged", "pk_forged", "DONE", 37400);
    let genuine = toss_payment_status_changed("order-genuine", "pk_genuine", "DONE", 37400);
    let forged_key = env.publish_toss(&forged).await;
    let genuine_key = env.publish_toss(&genuine).await;
    env.wait_count("genuine applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    assert_eq!(env.status("order-genuine").await, "paid");
    assert_eq!(verification(&env, &genuine_key).await, ("applied".into(), Some("fetched".into())));

    // The API keeps showing an earlier state than the webhook claims: never finalised on it,
    // retried through the delay tiers like any transient failure, then parked with the reason.
    // (Apply the API's state after a few attempts again, as before, to see this fail.)
    env.wait_count("forged parked", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    assert_eq!(env.status("order-forged").await, "pending", "neither the webhook's nor the stale API state");
    let (status, attempts, error) = env.inbox(&forged_key).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("dead", 4));
    assert!(error.unwrap().contains("Toss API reports WAITING_FOR_DEPOSIT while the webhook says DONE"));
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SECRET_KEY}:")));
    let requests = api.requests();
    assert_eq!(requests.iter().filter(|r| r.path.ends_with("pk_forged")).count(), 4, "asked again on every attempt");
    assert_eq!(requests.iter().filter(|r| r.path.ends_with("pk_genuine")).count(), 1);
    for r in &requests {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("authorization"), Some(expected.as_str()), "Basic base64(secret key + ':')");
    }
    let stored: serde_json::Value = env
        .sql
        .query_one("SELECT payment_metadata->'webhook' FROM payments WHERE order_id = 'order-genuine'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["verification"], "fetched");

    // A copy of the genuine event is a duplicate: no second API call.
    env.publish_toss(&genuine).await;
    env.wait_count(
        "duplicate",
        &format!("SELECT duplicates::bigint FROM webhook_events WHERE event_key = '{genuine_key}'"),
        1,
        WAIT,
    )
    .await;
    assert_eq!(api.requests().iter().filter(|r| r.path.ends_with("pk_genuine")).count(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_forged_aborted_cannot_put_its_own_words_in_the_trainers_notification() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-abort", "toss", Some(1000), Some("KRW")).await;
    let mut from_api: serde_json::Value =
        serde_json::from_str(&api_payment("order-abort", "pk_abort", "ABORTED", 1000, None)).unwrap();
    from_api["failure"] = json!({"code": "REJECT_CARD_COMPANY", "message": "카드사에서 거절한 결제입니다"});
    let api = fake_api(vec![("order-abort", "pk_abort", from_api.to_string())]).await;
    let base = api.url("");
    let worker = TestWorker::spawn(env.settings(&fetch_settings(&base))).await;
    let forged = json!({"eventType": "PAYMENT_STATUS_CHANGED", "data": {"orderId": "order-abort",
        "paymentKey": "pk_abort", "status": "ABORTED", "totalAmount": 1000, "currency": "KRW",
        "failure": {"code": "X", "message": "Your card was stolen: call 010-1234-5678 now"}}});
    env.publish_toss(forged.to_string().as_bytes()).await;
    env.wait_count("applied", "SELECT count(*) FROM notifications", 1, WAIT).await;
    assert_eq!(env.status("order-abort").await, "failed");
    let message: String = env
        .sql
        .query_one("SELECT message FROM notifications WHERE user_id = $1", &[&seeded.trainer_id])
        .await
        .unwrap()
        .get(0);
    assert!(message.contains("카드사에서 거절한 결제입니다"), "the API's reason: {message}");
    assert!(!message.contains("010-1234-5678"), "never the webhook's: {message}");
    // Take the failure text from the webhook again (toss_api::apply_fetched) to see this fail.
    worker.stop().await;
}

#[tokio::test]
async fn an_api_that_is_down_or_slow_means_retries_until_it_answers() {
    let env = Env::new().await;
    env.seed_payment("order-slow", "toss", Some(1000), Some("KRW")).await;
    let api = FakeEndpoint::start(vec![
        Behavior::Status(503, "{}".into()),
        Behavior::Hang,
        Behavior::Status(429, "{}".into()),
        Behavior::Status(200, api_payment("order-slow", "pk_slow", "DONE", 1000, None)),
    ])
    .await;
    let base = api.url("");
    let mut vars = fetch_settings(&base);
    vars.extend([("RETRY_DELAYS", "100ms,200ms"), ("RETRY_MAX_ATTEMPTS", "10")]);
    let worker = TestWorker::spawn(env.settings(&vars)).await;
    let body = toss_payment_status_changed("order-slow", "pk_slow", "DONE", 1000);
    let key = env.publish_toss(&body).await;
    env.wait_count(
        "applied once the API answers",
        "SELECT count(*) FROM payments WHERE payment_status = 'paid'",
        1,
        WAIT,
    )
    .await;
    let attempts: i32 =
        env.sql.query_one("SELECT attempts FROM webhook_events WHERE event_key = $1", &[&key]).await.unwrap().get(0);
    assert_eq!(attempts, 4, "503, timeout and 429 were each retried");
    assert_eq!(api.requests().len(), 4);
    worker.stop().await;
}

#[tokio::test]
async fn a_payment_the_api_does_not_know_is_parked_with_its_reason() {
    let env = Env::new().await;
    env.seed_payment("order-unknown", "toss", Some(1000), Some("KRW")).await;
    let api = fake_api(vec![]).await;
    let base = api.url("");
    let worker = TestWorker::spawn(env.settings(&fetch_settings(&base))).await;
    let body = toss_payment_status_changed("order-unknown", "pk_unknown", "DONE", 1000);
    let key = env.publish_toss(&body).await;
    let dead = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let reason =
        shared::envelope::header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("Toss API does not know this payment"), "{reason}");
    let (status, _, error) = env.inbox(&key).await.unwrap();
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("does not know"));
    assert_eq!(env.status("order-unknown").await, "pending");
    worker.stop().await;
}

#[tokio::test]
async fn a_deposit_callback_must_carry_the_payments_secret() {
    let env = Env::new().await;
    env.sql
        .batch_execute(
            "INSERT INTO payments (order_id, provider, amount, currency, deposit_secret, payment_status)
             VALUES ('order-va-wrong', 'toss', 5000, 'KRW', 'ps_stored_secret', 'waiting_for_deposit'),
                    ('order-va-right', 'toss', 5000, 'KRW', 'ps_stored_secret', 'waiting_for_deposit')",
        )
        .await
        .unwrap();
    let worker = TestWorker::spawn(env.settings(&[])).await; // no fetch-back: the secret alone decides
    let wrong = toss_deposit_callback("order-va-wrong", "DONE", "ps_guessed");
    let right = toss_deposit_callback("order-va-right", "DONE", "ps_stored_secret");
    let wrong_key = env.publish_toss(&wrong).await;
    let right_key = env.publish_toss(&right).await;
    env.wait_count("both handled", "SELECT count(*) FROM webhook_events WHERE status IN ('applied', 'dead')", 2, WAIT)
        .await;
    assert_eq!(env.status("order-va-wrong").await, "waiting_for_deposit");
    assert_eq!(env.status("order-va-right").await, "paid");
    let (status, _, error) = env.inbox(&wrong_key).await.unwrap();
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("DEPOSIT_CALLBACK secret does not match"));
    assert_eq!(verification(&env, &right_key).await, ("applied".into(), Some("deposit_secret".into())));
    worker.stop().await;
}

#[tokio::test]
async fn a_deposit_secret_learned_from_the_api_is_checked_too() {
    let env = Env::new().await;
    env.seed_payment("order-va-api", "toss", Some(5000), Some("KRW")).await;
    let api = fake_api(vec![(
        "order-va-api",
        "pk_va",
        api_payment("order-va-api", "pk_va", "DONE", 5000, Some("ps_from_api")),
    )])
    .await;
    let base = api.url("");
    let worker = TestWorker::spawn(env.settings(&fetch_settings(&base))).await;
    let forged = toss_deposit_callback("order-va-api", "DONE", "ps_guessed");
    env.publish_toss(&forged).await;
    env.wait_count("parked", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    assert_eq!(env.status("order-va-api").await, "pending");
    let genuine = toss_deposit_callback("order-va-api", "DONE", "ps_from_api");
    env.publish_toss(&genuine).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    assert_eq!(env.status("order-va-api").await, "paid");
    let stored: Option<String> = env
        .sql
        .query_one("SELECT deposit_secret FROM payments WHERE order_id = 'order-va-api'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.as_deref(), Some("ps_from_api"), "the learned secret is kept");
    worker.stop().await;
}

#[tokio::test]
async fn an_amount_that_agrees_verifies_nothing_and_one_the_api_contradicts_is_never_applied() {
    let env = Env::new().await;
    env.seed_payment("order-amt-webhook", "toss", Some(37400), Some("KRW")).await;
    env.seed_payment("order-amt-api", "toss", Some(37400), Some("KRW")).await;
    env.seed_payment("order-amt-ok", "toss", Some(37400), Some("KRW")).await;

    // Without fetch-back nothing verifies an unsigned event, whatever amount it names: an
    // attacker can guess a price.
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let wrong = toss_payment_status_changed("order-amt-webhook", "pk_a", "DONE", 100);
    let guessed = toss_payment_status_changed("order-amt-ok", "pk_ok", "DONE", 37400);
    let wrong_key = env.publish_toss(&wrong).await;
    let guessed_key = env.publish_toss(&guessed).await;
    env.wait_count("both recorded", "SELECT count(*) FROM webhook_events WHERE status = 'unverified'", 2, WAIT).await;
    assert_eq!(env.status("order-amt-webhook").await, "pending");
    assert_eq!(env.status("order-amt-ok").await, "pending");
    assert_eq!(verification(&env, &guessed_key).await, ("unverified".into(), Some("none".into())));
    assert_eq!(verification(&env, &wrong_key).await, ("unverified".into(), Some("none".into())));
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "unverified is not dead-lettered");
    worker.stop().await;

    // With fetch-back, the API's amount is what must match.
    let api = fake_api(vec![("order-amt-api", "pk_b", api_payment("order-amt-api", "pk_b", "DONE", 100, None))]).await;
    let base = api.url("");
    let worker = TestWorker::spawn(env.settings(&fetch_settings(&base))).await;
    let body = toss_payment_status_changed("order-amt-api", "pk_b", "DONE", 37400);
    let key = env.publish_toss(&body).await;
    env.wait_count(
        "parked",
        &format!("SELECT count(*) FROM webhook_events WHERE event_key = '{key}' AND status = 'dead'"),
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.status("order-amt-api").await, "pending");
    let (_, _, error) = env.inbox(&key).await.unwrap();
    assert!(error.unwrap().contains("amount mismatch"));
    worker.stop().await;
}

#[tokio::test]
async fn the_development_opt_in_applies_the_guides_event_and_the_worker_says_so_loudly() {
    let env = Env::new().await;
    // The guide's payments know no provider.
    env.sql.batch_execute("INSERT INTO payments (order_id) VALUES ('order-none')").await.unwrap();
    let vars = env.env_vars(&[("TOSS_ALLOW_UNVERIFIED", "true")]);
    let mut process = LoggedProcess::spawn(env!("CARGO_BIN_EXE_worker"), &[], &vars);
    process.wait_for_line("the warning", WAIT, |l| l.contains("INSECURE") && l.contains("TOSS_ALLOW_UNVERIFIED")).await;
    process.wait_for_line("consuming", WAIT, |l| l.contains("consuming")).await;
    let guide = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"order-none","status":"DONE"}"#;
    let key = env.publish_toss(guide).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    assert_eq!(verification(&env, &key).await, ("applied".into(), Some("none".into())));
    assert_eq!(env.status("order-none").await, "paid");
    process.terminate();
    process.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_large_batch_of_unsigned_toss_events_asks_the_api_at_most_toss_api_concurrency_at_once() {
    let env = Env::new().await;
    const EVENTS: usize = 24;
    let orders: Vec<(String, String)> =
        (0..EVENTS).map(|i| (format!("order-many-{i}"), format!("pk_many_{i}"))).collect();
    for (order, _) in &orders {
        env.seed_payment(order, "toss", Some(37400), Some("KRW")).await;
    }
    // A slow API: each answer takes 150 ms, so calls made together overlap.
    let table: Vec<(String, String)> =
        orders.iter().map(|(order, key)| (key.clone(), api_payment(order, key, "DONE", 37400, None))).collect();
    let router = Arc::new(move |r: &Recorded| {
        table.iter().find_map(|(key, body)| {
            (r.path == format!("/v1/payments/{key}"))
                .then(|| Behavior::After(Duration::from_millis(150), Box::new(Behavior::Status(200, body.clone()))))
        })
    });
    let api = FakeEndpoint::start_with(vec![Behavior::Status(404, "{}".into())], Some(router)).await;
    let base = api.url("");
    let mut vars = fetch_settings(&base);
    vars.extend([("TOSS_API_CONCURRENCY", "3"), ("TOSS_API_TIMEOUT", "5s")]);
    let settings = env.settings(&vars);
    // All queued before the worker starts: it takes them in one batch and asks for each.
    env.declare(&settings).await;
    for (order, key) in &orders {
        env.publish_toss(&toss_payment_status_changed(order, key, "DONE", 37400)).await;
    }
    let worker = TestWorker::spawn(settings).await;
    env.wait_count(
        "every payment applied on the API's word",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied' AND verification = 'fetched'",
        EVENTS as i64,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, EVENTS as i64);
    assert_eq!(api.requests().len(), EVENTS, "one call per event");
    assert_eq!(api.most_at_once(), 3, "the batch's calls overlap, at most TOSS_API_CONCURRENCY at once");
    worker.stop().await;
}

#[tokio::test]
async fn an_api_answer_larger_than_any_payment_is_not_read_and_applies_nothing() {
    let env = Env::new().await;
    env.seed_payment("order-huge", "toss", Some(1000), Some("KRW")).await;
    // A Payment that would say DONE, padded past 1 MiB.
    let mut payment: serde_json::Value =
        serde_json::from_str(&api_payment("order-huge", "pk_huge", "DONE", 1000, None)).unwrap();
    payment["padding"] = json!("x".repeat(1024 * 1024));
    let api = fake_api(vec![("order-huge", "pk_huge", payment.to_string())]).await;
    let base = api.url("");
    let mut vars = fetch_settings(&base);
    vars.extend([("RETRY_DELAYS", "100ms"), ("RETRY_MAX_ATTEMPTS", "5")]);
    let worker = TestWorker::spawn(env.settings(&vars)).await;
    let key = env.publish_toss(&toss_payment_status_changed("order-huge", "pk_huge", "DONE", 1000)).await;
    let dead = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let reason =
        shared::envelope::header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("larger than 1048576 bytes"), "{reason}");
    let (status, attempts, _) = env.inbox(&key).await.unwrap();
    assert_eq!((status.as_str(), attempts), ("dead", 1), "no Payment is that large: parked without retries");
    assert_eq!(env.status("order-huge").await, "pending", "nothing applied on an answer not read");
    worker.stop().await;
}

#[tokio::test]
async fn a_batch_facing_a_hanging_toss_api_gives_up_on_its_calls_after_three_deadlines_and_retries_them() {
    let env = Env::new().await;
    const EVENTS: usize = 20;
    for i in 0..EVENTS {
        env.seed_payment(&format!("order-hang-{i}"), "toss", Some(1000), Some("KRW")).await;
    }
    let api = FakeEndpoint::start(vec![Behavior::Hang]).await;
    let base = api.url("");
    let mut vars = fetch_settings(&base);
    // One call at a time, 2 s each: asked one after another, the batch would wait 40 s.
    vars.extend([
        ("TOSS_API_CONCURRENCY", "1"),
        ("TOSS_API_TIMEOUT", "2s"),
        ("RETRY_DELAYS", "1h"),
        ("RETRY_MAX_ATTEMPTS", "5"),
    ]);
    let settings = env.settings(&vars);
    env.declare(&settings).await;
    for i in 0..EVENTS {
        env.publish_toss(&toss_payment_status_changed(
            &format!("order-hang-{i}"),
            &format!("pk_hang_{i}"),
            "DONE",
            1000,
        ))
        .await;
    }
    let worker = TestWorker::spawn(settings).await;
    // Within three deadlines (6 s) every event of the batch is sent to be retried.
    env.wait_count(
        "every event retrying",
        "SELECT count(*) FROM webhook_events WHERE status = 'retrying'",
        EVENTS as i64,
        WAIT,
    )
    .await;
    let gave_up = env
        .count(
            "SELECT count(*) FROM webhook_events WHERE last_error LIKE '%Toss API calls of this batch still waiting%'",
        )
        .await;
    assert!(gave_up >= 1, "the calls left at the batch's budget are retried, saying why");
    assert!(api.requests().len() < EVENTS, "not every call was waited for: {}", api.requests().len());
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 0);
    worker.stop().await;
}
