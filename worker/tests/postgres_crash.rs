//! Postgres itself crashes in the middle of a drain: a server of this test's own is killed with
//! `pg_ctl stop -m immediate` (every backend dies at once, no shutdown checkpoint; the next
//! start runs crash recovery), then started again. Transactions in flight are lost, commits
//! that the worker never heard back about may or may not have happened; either way every event
//! must end applied exactly once, nothing dead-lettered, and every notification published
//! with no outbox row left.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{publish_as_ingest, TestWorker};
use shared::settings::WorkerSettings;
use shared::topology::Topology;
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::{PgServer, TestBroker};
use tokio_postgres::Client;
use uuid::Uuid;

const EVENTS: i64 = 600;
const WAIT: Duration = Duration::from_secs(120);

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

/// Publishes a paid event for order `crash-{i}` to the events exchange, as ingest would.
async fn publish_paid(broker: &TestBroker, i: i64) {
    let key = format!("evt_crash_{i}");
    let body = stripe_session_event(&key, "checkout.session.completed", &format!("crash-{i}"), "paid", 1000, "usd");
    publish_as_ingest(broker, Provider::Stripe, "checkout.session.completed", &key, &body).await;
}

/// The worker's own view of the database, from its `/readyz`.
async fn worker_sees_database(worker: &TestWorker) -> Option<bool> {
    let body: serde_json::Value =
        reqwest::get(format!("http://{}/readyz", worker.addr)).await.ok()?.json().await.ok()?;
    body["database"].as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_drain_applies_each_event_once_and_completes_the_outbox() {
    testkit::init_logs();
    let pg = PgServer::start().await;
    let url = pg.url("webhooks");
    let broker = TestBroker::new().await;
    let settings: WorkerSettings = broker.settings(
        Some(&url),
        &[
            ("WORKER_CONCURRENCY", "4"),
            ("WORKER_PREFETCH", "8"),
            // Enough room that an outage of a few seconds never exhausts the retries.
            ("RETRY_DELAYS", "200ms,500ms,1s,2s"),
            ("RETRY_MAX_ATTEMPTS", "40"),
        ],
    );
    worker::store::migrate::migrate(&settings.database).await.expect("migrations apply on the test's own server");
    let sql = testkit::db::connect(&url).await;
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {EVENTS}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'crash-' || (row_number() OVER () - 1), id, 'stripe', 1000, 'usd' FROM b"
    ))
    .await
    .unwrap();
    worker::Worker::topology(&settings).declare(broker.connection()).await.unwrap();
    let notifications = broker.subscribe(&format!("{}.notifications", broker.prefix)).await;
    for i in 0..EVENTS {
        publish_paid(&broker, i).await;
    }

    let worker = TestWorker::spawn(settings).await;
    let applied = "SELECT count(*) FROM webhook_events WHERE status = 'applied'";
    testkit::eventually("the drain under way", WAIT, || async { (count(&sql, applied).await >= 60).then_some(()) })
        .await;
    pg.crash().await;
    testkit::eventually("the worker sees the database gone", WAIT, || async {
        (worker_sees_database(&worker).await == Some(false)).then_some(())
    })
    .await;
    pg.start_again().await;
    assert!(pg.logs().contains("automatic recovery in progress"), "the restart ran crash recovery:\n{}", pg.logs());

    let sql = testkit::db::connect(&url).await;
    let restarted_at: chrono::DateTime<chrono::Utc> = sql.query_one("SELECT now()", &[]).await.unwrap().get(0);
    testkit::eventually("every event applied after the restart", WAIT, || async {
        (count(&sql, applied).await == EVENTS).then_some(())
    })
    .await;
    testkit::eventually("the outbox drained", WAIT, || async {
        (count(&sql, "SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;

    // The crash came in the middle of the drain: part of the events were applied only after it.
    let after = sql
        .query_one("SELECT count(*) FROM webhook_events WHERE processed_at >= $1", &[&restarted_at])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(after > 0 && after < EVENTS, "{after} of {EVENTS} events applied after the restart");
    // Applied once: one inbox row per event, every payment paid, one notification per trainer.
    assert_eq!(count(&sql, "SELECT count(*) FROM webhook_events").await, EVENTS);
    assert_eq!(count(&sql, "SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, EVENTS);
    assert_eq!(count(&sql, "SELECT count(*) FROM notifications").await, EVENTS);
    assert_eq!(count(&sql, "SELECT count(DISTINCT user_id) FROM notifications").await, EVENTS);
    // Nothing dead-lettered.
    assert_eq!(count(&sql, "SELECT count(*) FROM webhook_events WHERE status = 'dead'").await, 0);
    let topology = Topology::from_settings(&broker.settings::<WorkerSettings>(Some(&url), &[]).common);
    assert_eq!(broker.count(&topology.dead_queue()).await, 0, "nothing in the dead-letter queue");
    // Every notification published (a republish after the crash repeats an id, never invents one).
    let rows = sql.query("SELECT id FROM notifications", &[]).await.unwrap();
    let expected: BTreeSet<String> = rows.iter().map(|r| r.get::<_, Uuid>(0).to_string()).collect();
    let mut seen = BTreeSet::new();
    let until = tokio::time::Instant::now() + WAIT;
    while seen.len() < expected.len() && tokio::time::Instant::now() < until {
        for message in broker.drain(&notifications).await {
            if let Some(id) = message.delivery.properties.message_id().as_ref() {
                seen.insert(id.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, expected, "published notifications are exactly the committed ones");
    worker.stop().await;
}
