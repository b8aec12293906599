//! Toss payment events are unsigned; the worker verifies them by fetching the payment back
//! from the Toss API (a local fake here), by the deposit secret and by the stored amount.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{Env, TestWorker};
use serde_json::json;
use shared::Provider;
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
async fn a_forged_done_is_not_applied_and_a_genuine_one_is() {
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
    vars.push(("RETRY_DELAYS", "100ms"));
    let worker = TestWorker::spawn(env.settings(&vars)).await;

    let forged = toss_payment_status_changed("order-forged", "pk_forged", "DONE", 37400);
    let genuine = toss_payment_status_changed("order-genuine", "pk_genuine", "DONE", 37400);
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-forged", &forged).await;
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-genuine", &genuine).await;
    env.wait_count("both handled", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 2, WAIT).await;

    assert_eq!(env.status("order-forged").await, "waiting_for_deposit", "the API's status, not the webhook's");
    assert_eq!(env.status("order-genuine").await, "paid");
    assert_eq!(verification(&env, "toss-genuine").await, ("applied".into(), Some("fetched".into())));
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SECRET_KEY}:")));
    let requests = api.requests();
    // The forged one is asked about again before the API's word is taken; the genuine once.
    assert_eq!(requests.iter().filter(|r| r.path.ends_with("pk_forged")).count(), 3);
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
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-genuine", &genuine).await;
    env.wait_count(
        "duplicate",
        "SELECT duplicates::bigint FROM webhook_events WHERE event_key = 'toss-genuine'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(api.requests().iter().filter(|r| r.path.ends_with("pk_genuine")).count(), 1);
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
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-slow", &body).await;
    env.wait_count(
        "applied once the API answers",
        "SELECT count(*) FROM payments WHERE payment_status = 'paid'",
        1,
        WAIT,
    )
    .await;
    let attempts: i32 = env
        .sql
        .query_one("SELECT attempts FROM webhook_events WHERE event_key = 'toss-slow'", &[])
        .await
        .unwrap()
        .get(0);
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
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-unknown", &body).await;
    let dead = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let reason =
        shared::envelope::header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason").unwrap();
    assert!(reason.contains("Toss API does not know this payment"), "{reason}");
    let (status, _, error) = env.inbox("toss-unknown").await.unwrap();
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
    env.publish(Provider::Toss, "DEPOSIT_CALLBACK", "va-wrong", &wrong).await;
    env.publish(Provider::Toss, "DEPOSIT_CALLBACK", "va-right", &right).await;
    env.wait_count("both handled", "SELECT count(*) FROM webhook_events WHERE status IN ('applied', 'dead')", 2, WAIT)
        .await;
    assert_eq!(env.status("order-va-wrong").await, "waiting_for_deposit");
    assert_eq!(env.status("order-va-right").await, "paid");
    let (status, _, error) = env.inbox("va-wrong").await.unwrap();
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("DEPOSIT_CALLBACK secret does not match"));
    assert_eq!(verification(&env, "va-right").await, ("applied".into(), Some("deposit_secret".into())));
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
    env.publish(Provider::Toss, "DEPOSIT_CALLBACK", "va-api-forged", &forged).await;
    env.wait_count("parked", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    assert_eq!(env.status("order-va-api").await, "pending");
    let genuine = toss_deposit_callback("order-va-api", "DONE", "ps_from_api");
    env.publish(Provider::Toss, "DEPOSIT_CALLBACK", "va-api-genuine", &genuine).await;
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
async fn a_wrong_total_amount_is_never_applied() {
    let env = Env::new().await;
    env.seed_payment("order-amt-webhook", "toss", Some(37400), Some("KRW")).await;
    env.seed_payment("order-amt-api", "toss", Some(37400), Some("KRW")).await;
    env.seed_payment("order-amt-ok", "toss", Some(37400), Some("KRW")).await;

    // Without fetch-back, the webhook's own amount is checked.
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let forged = toss_payment_status_changed("order-amt-webhook", "pk_a", "DONE", 100);
    let honest = toss_payment_status_changed("order-amt-ok", "pk_ok", "DONE", 37400);
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "amt-webhook", &forged).await;
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "amt-ok", &honest).await;
    env.wait_count("both handled", "SELECT count(*) FROM webhook_events WHERE status IN ('applied', 'dead')", 2, WAIT)
        .await;
    assert_eq!(env.status("order-amt-webhook").await, "pending");
    assert_eq!(env.status("order-amt-ok").await, "paid");
    assert_eq!(verification(&env, "amt-ok").await, ("applied".into(), Some("amount_only".into())));
    worker.stop().await;

    // With fetch-back, the API's amount is what must match.
    let api = fake_api(vec![("order-amt-api", "pk_b", api_payment("order-amt-api", "pk_b", "DONE", 100, None))]).await;
    let base = api.url("");
    let worker = TestWorker::spawn(env.settings(&fetch_settings(&base))).await;
    let body = toss_payment_status_changed("order-amt-api", "pk_b", "DONE", 37400);
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "amt-api", &body).await;
    env.wait_count(
        "parked",
        "SELECT count(*) FROM webhook_events WHERE event_key = 'amt-api' AND status = 'dead'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.status("order-amt-api").await, "pending");
    let (_, _, error) = env.inbox("amt-api").await.unwrap();
    assert!(error.unwrap().contains("amount mismatch"));
    worker.stop().await;
}

#[tokio::test]
async fn unverified_toss_events_are_recorded_as_such_and_the_worker_warns_at_start() {
    let env = Env::new().await;
    env.sql.batch_execute("INSERT INTO payments (order_id, provider) VALUES ('order-none', 'toss')").await.unwrap();
    let mut process = LoggedProcess::spawn(env!("CARGO_BIN_EXE_worker"), &[], &env.env_vars(&[]));
    process.wait_for_line("the warning", WAIT, |l| l.contains("INSECURE") && l.contains("TOSS_SECRET_KEY")).await;
    process.wait_for_line("consuming", WAIT, |l| l.contains("consuming")).await;
    let guide = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"order-none","status":"DONE"}"#;
    env.publish(Provider::Toss, "PAYMENT_STATUS_CHANGED", "toss-none", guide).await;
    env.wait_count("applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT).await;
    assert_eq!(verification(&env, "toss-none").await, ("applied".into(), Some("none".into())));
    process.terminate();
    process.wait_exit(Duration::from_secs(10)).await;
}
