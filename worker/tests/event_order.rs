//! Events for one payment delivered out of their order, against the real Postgres and
//! RabbitMQ: the provider's dates decide, not the order of arrival.
//!
//! To see these fail, delete the `Ordering::Less => ...OlderThanLastApplied` arm of
//! `decide_in_order` (worker/src/domain/ordering.rs): the earlier `completed(unpaid)` then moves the
//! failed payment back to `waiting_for_deposit`.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Env, TestWorker};
use serde_json::{json, Value};
use shared::Provider;
use testkit::events::stripe_session_event;

const WAIT: Duration = Duration::from_secs(30);

/// Batches wait this long for more deliveries, so events queued ahead share one batch.
const LINGER: (&str, &str) = ("WORKER_BATCH_LINGER", "500ms");

/// A bank transfer's session: completed with `unpaid` at `created`, and the transfer failing a
/// minute later, in Stripe's whole seconds (ten minutes ago, so both are in the past).
fn async_payment(order: &str) -> (Vec<u8>, Vec<u8>, i64) {
    let completed_at = Utc::now().timestamp() - 600;
    let failed_at = completed_at + 60;
    let completed = dated(
        stripe_session_event(
            &format!("evt_{order}_completed"),
            "checkout.session.completed",
            order,
            "unpaid",
            3000,
            "usd",
        ),
        completed_at,
    );
    let failed = dated(
        stripe_session_event(
            &format!("evt_{order}_failed"),
            "checkout.session.async_payment_failed",
            order,
            "unpaid",
            3000,
            "usd",
        ),
        failed_at,
    );
    (completed, failed, failed_at)
}

/// `body` with Stripe's `created` set to `at` (unix seconds).
fn dated(body: Vec<u8>, at: i64) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["created"] = json!(at);
    serde_json::to_vec(&event).unwrap()
}

/// `(status, detail)` of an event in the inbox.
async fn decided(env: &Env, key: &str) -> (String, Option<String>) {
    let row =
        env.sql.query_one("SELECT status, detail FROM webhook_events WHERE event_key = $1", &[&key]).await.unwrap();
    (row.get(0), row.get(1))
}

async fn last_event_at(env: &Env, order: &str) -> Option<DateTime<Utc>> {
    env.sql.query_one("SELECT last_event_at FROM payments WHERE order_id = $1", &[&order]).await.unwrap().get(0)
}

/// Both applied by a running worker, the later one first, each in a batch of its own.
#[tokio::test]
async fn a_failed_transfer_stays_failed_when_the_earlier_unpaid_completion_arrives_after_it() {
    let env = Env::new().await;
    let order = "order-transfer";
    let seeded = env.seed_payment(order, "stripe", Some(3000), Some("usd")).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;
    let (completed, failed, failed_at) = async_payment(order);
    let (completed_key, failed_key) = (format!("evt_{order}_completed"), format!("evt_{order}_failed"));

    env.publish(Provider::Stripe, "checkout.session.async_payment_failed", &failed_key, &failed).await;
    env.wait_count(
        "the failure applied",
        &format!("SELECT count(*) FROM webhook_events WHERE event_key = '{failed_key}' AND status = 'applied'"),
        1,
        WAIT,
    )
    .await;
    assert_eq!(env.status(order).await, "failed");
    env.publish(Provider::Stripe, "checkout.session.completed", &completed_key, &completed).await;
    env.wait_count(
        "the earlier completion decided",
        &format!("SELECT count(*) FROM webhook_events WHERE event_key = '{completed_key}' AND status IN ('applied', 'ignored')"),
        1,
        WAIT,
    )
    .await;

    assert_eq!(env.status(order).await, "failed");
    let (status, detail) = decided(&env, &completed_key).await;
    assert_eq!(status, "ignored");
    assert!(detail.as_deref().unwrap_or_default().contains("older than the last applied event"), "{detail:?}");
    assert_eq!(last_event_at(&env, order).await, DateTime::from_timestamp(failed_at, 0));
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1, "one change, one notification");
    worker.stop().await;
}

/// The same two events queued ahead of the worker, later one first: one batch decides both.
#[tokio::test]
async fn a_failed_transfer_stays_failed_when_both_events_share_a_batch() {
    let env = Env::new().await;
    let order = "order-transfer-batch";
    let seeded = env.seed_payment(order, "stripe", Some(3000), Some("usd")).await;
    let settings = env.settings(&[LINGER]);
    env.declare(&settings).await;
    let (completed, failed, failed_at) = async_payment(order);
    let (completed_key, failed_key) = (format!("evt_{order}_completed"), format!("evt_{order}_failed"));
    env.publish(Provider::Stripe, "checkout.session.async_payment_failed", &failed_key, &failed).await;
    env.publish(Provider::Stripe, "checkout.session.completed", &completed_key, &completed).await;

    let worker = TestWorker::spawn(settings).await;
    env.wait_count(
        "both decided",
        "SELECT count(*) FROM webhook_events WHERE status IN ('applied', 'ignored')",
        2,
        WAIT,
    )
    .await;
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    let batches = (metrics.value("worker_batch_size_count", &[]), metrics.value("worker_batch_size_sum", &[]));
    assert_eq!(batches, (1.0, 2.0), "the two events were one batch");

    assert_eq!(env.status(order).await, "failed");
    assert_eq!(decided(&env, &failed_key).await.0, "applied");
    let (status, detail) = decided(&env, &completed_key).await;
    assert_eq!(status, "ignored");
    assert!(detail.as_deref().unwrap_or_default().contains("older than the last applied event"), "{detail:?}");
    assert_eq!(last_event_at(&env, order).await, DateTime::from_timestamp(failed_at, 0));
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    worker.stop().await;
}
