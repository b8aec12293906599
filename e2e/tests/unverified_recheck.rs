//! An unsigned Toss event nothing could verify is recorded as `unverified` by the worker, listed
//! by `hookctl unverified list`, and applied once `hookctl unverified recheck` sends it through a
//! worker that can fetch it back from the Toss API (a local fake here). Moved from the worker's
//! `toss_verification` tests: it needs the worker's binary and hookctl's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, TestWorker};
use serde_json::json;
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
async fn the_guides_unsigned_event_changes_nothing_by_default_is_counted_and_can_be_rechecked() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order-guide", "toss", None, None).await;
    let vars = env.env_vars(&[("LOG_FORMAT", "json")]);
    let mut process = LoggedProcess::spawn(env!("CARGO_BIN_EXE_e2e-worker"), &[], &vars);
    process.wait_for_line("the start-up warning", WAIT, |l| l.contains("TOSS_SECRET_KEY is not set")).await;
    let addr = process.logged_addr("worker health and metrics listening").await;
    process.wait_for_line("consuming", WAIT, |l| l.contains("consuming")).await;

    // The attack: the guide's own test body, for an order someone knows.
    let guide = br#"{"eventType":"PAYMENT_STATUS_CHANGED","orderId":"order-guide","status":"DONE"}"#;
    let key = env.publish_toss(guide).await;
    env.wait_count("recorded", "SELECT count(*) FROM webhook_events WHERE status = 'unverified'", 1, WAIT).await;
    assert_eq!(env.status("order-guide").await, "pending", "the payment is untouched");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 0);
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "not dead-lettered");
    let (_, _, _) = env.inbox(&key).await.unwrap();
    let payload: String =
        env.sql.query_one("SELECT payload FROM webhook_events WHERE event_key = $1", &[&key]).await.unwrap().get(0);
    assert!(payload.contains("order-guide"), "the payload is kept");
    let metrics = testkit::metrics::scrape(&format!("http://{addr}/metrics")).await;
    let labels = [("provider", "toss"), ("event_type", "PAYMENT_STATUS_CHANGED"), ("outcome", "unverified")];
    assert_eq!(metrics.value("worker_events_total", &labels), 1.0);
    let warned = process.wait_for_line("one warning line", WAIT, |l| l.contains("recorded as unverified")).await;
    assert!(warned.contains("WARN"), "{warned}");
    process.terminate();
    process.wait_exit(Duration::from_secs(10)).await;

    // hookctl lists it; without a key there is nothing to re-check it with.
    let (ok, listed) = env.hookctl(&[], &["unverified", "list"]).await;
    assert!(ok && listed.contains(&key) && listed.contains("order-guide"), "{listed}");
    let (ok, refused) = env.hookctl(&[], &["unverified", "recheck", "--all"]).await;
    assert!(!ok && refused.contains("TOSS_SECRET_KEY"), "{refused}");

    // Once a key is configured (workers and hookctl), a re-check applies it as the API says.
    let api =
        fake_api(vec![("order-guide", "pk_guide", api_payment("order-guide", "pk_guide", "DONE", 5000, None))]).await;
    let base = api.url("");
    let vars = fetch_settings(&base);
    let worker = TestWorker::spawn(env.settings(&vars)).await;
    let (ok, rechecked) = env.hookctl(&vars, &["unverified", "recheck", "--all"]).await;
    assert!(ok && rechecked.contains("1 event(s)"), "{rechecked}");
    env.wait_count("applied on re-check", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 1, WAIT)
        .await;
    assert_eq!(verification(&env, &key).await, ("applied".into(), Some("fetched".into())), "the same inbox row");
    assert_eq!(env.status("order-guide").await, "paid");
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    assert_eq!(api.requests().iter().filter(|r| r.path.ends_with("orders/order-guide")).count(), 1);
    worker.stop().await;
}
