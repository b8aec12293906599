//! Several webhooks in one broker message (`INGEST_BUNDLE_MAX`): requests that wait while
//! every publisher awaits a confirm go out together, each still answered 200 only once its
//! message is confirmed; the worker opens a bundle and applies each webhook once, and splits a
//! bundle delivered again into messages of one webhook each before trying any.

mod common;

use std::time::Duration;

use common::ingest::{post_signed_stripe, TestIngest};
use common::steady::{event_key, order_id, seed_orders};
use common::{Env, TestWorker};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use testkit::events::stripe_session_event;

const WAIT: Duration = Duration::from_secs(60);

/// Posts events `1..=n` of `tag`, 64 at a time; every answer must be 200.
async fn post_all(ingest: &TestIngest, tag: &str, n: usize) {
    let statuses: Vec<u16> = futures_util::stream::iter(1..=n)
        .map(|i| {
            let body = stripe_session_event(
                &event_key(tag, i),
                "checkout.session.completed",
                &order_id(tag, i),
                "paid",
                100,
                "usd",
            );
            let client = ingest.client.clone();
            async move { post_signed_stripe(&client, ingest.addr, body).await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "every webhook answered 200: {statuses:?}");
}

async fn bundles(worker: &TestWorker, way: &str) -> f64 {
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    metrics.value("worker_bundles_total", &[("way", way)])
}

async fn assert_applied_once(env: &Env, n: i64) {
    env.wait_count("every payment paid", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", n, WAIT).await;
    env.wait_count("one notification each", "SELECT count(*) FROM notifications", n, WAIT).await;
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status = 'applied'").await, n);
    assert_eq!(env.count("SELECT coalesce(sum(duplicates), 0) FROM webhook_events").await, 0, "none applied twice");
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn concurrent_webhooks_share_messages_and_each_is_applied_once() {
    let env = Env::new().await;
    seed_orders(&env.sql, "bundled", 300).await;
    let ingest = TestIngest::spawn(env.settings(&[("INGEST_BUNDLE_MAX", "16")])).await;
    post_all(&ingest, "bundled", 300).await;
    // Every webhook answered 200 is stored, in fewer messages than webhooks.
    let messages = env.broker.count(&env.work_queue()).await;
    assert!(messages < 300, "{messages} messages for 300 webhooks");
    // Ingest's histogram of webhooks per message says the same.
    let metrics = testkit::metrics::scrape(&ingest.metrics_url()).await;
    assert_eq!(metrics.value("ingest_bundle_webhooks", &[]), f64::from(messages), "one sample a message");
    assert_eq!(metrics.value("ingest_bundle_webhooks_sum", &[]), 300.0, "webhooks in them");

    let worker = TestWorker::spawn(env.settings(&[])).await;
    assert_applied_once(&env, 300).await;
    assert!(bundles(&worker, "opened").await >= 1.0);
    assert_eq!(bundles(&worker, "split").await, 0.0);
    worker.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn a_bundle_delivered_again_is_split_into_single_webhooks_each_applied_once() {
    let env = Env::new().await;
    seed_orders(&env.sql, "again", 200).await;
    let ingest = TestIngest::spawn(env.settings(&[("INGEST_BUNDLE_MAX", "16")])).await;
    post_all(&ingest, "again", 200).await;
    let messages = env.broker.count(&env.work_queue()).await;
    assert!(messages < 200, "{messages} messages for 200 webhooks");

    // A consumer takes every message and goes away without settling any (a worker killed
    // mid-batch): each comes back marked redelivered.
    let channel = env.broker.connection().create_channel().await.unwrap();
    channel.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
    let mut taken = channel
        .basic_consume(
            env.work_queue().as_str().into(),
            "bundles-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..messages {
        tokio::time::timeout(WAIT, taken.next()).await.expect("delivered").expect("a delivery").unwrap();
    }
    channel.close(200, "gone".into()).await.unwrap();

    let worker = TestWorker::spawn(env.settings(&[])).await;
    assert_applied_once(&env, 200).await;
    let split = bundles(&worker, "split").await;
    assert!(split >= 1.0, "bundles delivered again are split");
    assert_eq!(bundles(&worker, "opened").await, 0.0, "none opened as a first delivery");
    worker.stop().await;
    ingest.stop().await;
}
