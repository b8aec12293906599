//! The stage of a worker drain: a migrated database with a pending payment per event, the
//! backlog queued as ingest would queue it, and the check that a drain applied every event once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::topology::Topology;
use shared::Provider;
use tokio_postgres::Client;

use crate::load::{broker_load, DirectPublish, Pace};

/// A migrated database with one pending payment per event (`ord0..`), and a prefix.
pub(crate) struct Stage {
    pub(crate) db: testkit::TestDb,
    pub(crate) broker: testkit::TestBroker,
    pub(crate) sql: Client,
    pub(crate) topology: Topology,
}

pub(crate) async fn stage(events: usize) -> anyhow::Result<Stage> {
    let db = testkit::TestDb::create().await;
    let broker = testkit::TestBroker::new().await;
    let settings: shared::WorkerSettings = broker.settings(Some(&db.url), &[]);
    worker::store::migrate::migrate(&settings.database).await?;
    let sql = db.client().await;
    sql.execute(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, $1::int) RETURNING id),
              n AS (SELECT id, row_number() OVER () - 1 AS i FROM b)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'ord' || i, id, 'stripe', 30000, 'usd' FROM n",
        &[&(events as i32)],
    )
    .await?;
    sql.batch_execute("VACUUM ANALYZE").await?;
    let topology = worker::Worker::topology(&settings);
    topology.declare(broker.connection()).await?;
    Ok(Stage { db, broker, sql, topology })
}

/// Queues every event as ingest would (same exchange, routing key, headers and body).
pub(super) async fn fill(stage: &Stage, signed: &Arc<Vec<crate::load::SignedEvent>>) -> anyhow::Result<()> {
    let connection = Connection::connect(
        &testkit::amqp_url(),
        ConnectionProperties::default().with_connection_name("bench-fill".into()),
    )
    .await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(channel);
    }
    let bodies = signed.clone();
    let properties = Arc::new(move |i: usize| {
        let event = &bodies[i];
        let key = event_id(&event.body);
        EventEnvelope {
            provider: Provider::Stripe,
            event_type: "checkout.session.completed".into(),
            event_key: key,
            verification: IngestVerification::Signature,
            received_at: Utc::now(),
            request_id: uuid::Uuid::new_v4().to_string(),
            attempt: 0,
            delivery_headers: [("stripe-signature".to_string(), event.signature.to_str().unwrap_or("").to_string())]
                .into_iter()
                .collect(),
            body: Vec::new(),
        }
        .properties()
    });
    let target = Arc::new(DirectPublish {
        channels,
        exchange: stage.topology.events_exchange(),
        routing_key: Topology::routing_key("stripe", "checkout.session.completed"),
        properties,
    });
    let result = broker_load(target, signed.clone(), 64, Pace::Closed).await?;
    let _ = connection.close(200, "filled".into()).await;
    anyhow::ensure!(result.failed == 0, "{} events could not be queued", result.failed);
    Ok(())
}

/// The `id` of a Stripe event body.
pub(super) fn event_id(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("benchmark events are JSON");
    value["id"].as_str().expect("an id").to_string()
}

/// Every payment paid by its own event, one notification each, nothing left over.
pub(super) async fn verify(stage: &Stage, events: usize) -> anyhow::Result<()> {
    let n = events as i64;
    let one = |sql: &'static str| async move {
        let row = stage.sql.query_one(sql, &[]).await?;
        Ok::<i64, anyhow::Error>(row.get(0))
    };
    let paid = one("SELECT count(*) FROM payments
          WHERE payment_status = 'paid' AND paid_at IS NOT NULL
            AND payment_metadata->'webhook'->>'event_id' = 'evt_wb_' || substr(order_id, 4)")
    .await?;
    anyhow::ensure!(paid == n, "{paid} of {n} payments paid by their own event");
    let applied = one("SELECT count(*) FROM webhook_events WHERE status = 'applied' AND duplicates = 0").await?;
    anyhow::ensure!(applied == n, "{applied} of {n} events applied once");
    let notified = one("SELECT count(DISTINCT payment_id) FROM notifications").await?;
    let notifications = one("SELECT count(*) FROM notifications").await?;
    anyhow::ensure!(notified == n && notifications == n, "{notifications} notifications for {notified} payments");
    testkit::eventually("the outbox emptied", Duration::from_secs(60), || async {
        (one("SELECT count(*) FROM outbox").await.ok()? == 0).then_some(())
    })
    .await;
    let dead = stage.broker.count(&stage.topology.dead_queue()).await;
    anyhow::ensure!(dead == 0, "{dead} events dead-lettered");
    Ok(())
}
