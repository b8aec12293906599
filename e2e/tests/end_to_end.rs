//! Through the real ingest into the real worker: a signed Stripe event pays a pending payment,
//! and the original guide's two SQL checks show it.

mod common;

use std::time::Duration;

use common::{Env, TestIngest, TestWorker};
use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
use uuid::Uuid;

#[tokio::test]
async fn a_signed_checkout_completed_pays_the_order_and_notifies_the_trainer_once() {
    let env = Env::new().await;
    let seeded = env.seed_payment("order_7f3a9c", "stripe", Some(3000), Some("usd")).await;
    let ingest = TestIngest::spawn(env.settings(&[])).await;
    let worker = TestWorker::spawn(env.settings(&[])).await;

    let body = stripe_session_event("evt_e2e_1", "checkout.session.completed", "order_7f3a9c", "paid", 3000, "usd");
    let status = ingest
        .post("/api/webhooks/stripe", &body, &[("stripe-signature", &stripe_signature(&body, STRIPE_SECRET))])
        .await;
    assert_eq!(status, 200);
    env.wait_count(
        "payment paid",
        "SELECT count(*) FROM payments WHERE order_id = 'order_7f3a9c' AND payment_status = 'paid'",
        1,
        Duration::from_secs(15),
    )
    .await;

    // The guide's first check, verbatim but for the order id.
    let rows = env
        .sql
        .query(
            "SELECT
  id,
  order_id,
  payment_status,
  payment_metadata->'webhook' as webhook_data,
  paid_at,
  updated_at
FROM payments
WHERE order_id = 'order_7f3a9c';",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, Uuid>("id"), seeded.payment_id);
    assert_eq!(row.get::<_, String>("payment_status"), "paid");
    let webhook: serde_json::Value = row.get("webhook_data");
    assert_eq!(webhook["event_id"], "evt_e2e_1");
    assert_eq!(webhook["event_type"], "checkout.session.completed");
    assert_eq!(webhook["provider"], "stripe");
    assert_eq!(webhook["verification"], "signature");
    assert!(row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("paid_at").is_some());

    // The guide's second check, verbatim.
    let rows = env
        .sql
        .query(
            "SELECT
  id,
  user_id,
  title,
  message,
  type,
  created_at
FROM notifications
WHERE link LIKE '%/bookings/%'
ORDER BY created_at DESC;",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one notification");
    assert_eq!(rows[0].get::<_, Uuid>("user_id"), seeded.trainer_id);
    assert_eq!(rows[0].get::<_, String>("type"), "payment.paid");
    let link: String = env.sql.query_one("SELECT link FROM notifications", &[]).await.unwrap().get(0);
    assert_eq!(link, format!("/bookings/{}", seeded.booking_id));

    let (status, attempts, _) = env.inbox("evt_e2e_1").await.unwrap();
    assert_eq!((status.as_str(), attempts), ("applied", 1));
    worker.stop().await;
    ingest.stop().await;
}
