//! Who may publish an outbox row: the claim that holds it, while its lease lasts. A worker slower
//! than its lease leaves the row to the relay that claimed it meanwhile, and a lease is counted
//! from when the row is written, not from when its transaction began.

mod common;

use std::cell::RefCell;
use std::time::Duration;

use common::{kill_hard, spawn_worker_process, Env};
use shared::Provider;
use testkit::events::stripe_session_event;
use uuid::Uuid;
use worker::domain::notification::NotificationMessage;
use worker::store::outbox::Claim;

const WAIT: Duration = Duration::from_secs(30);

async fn pay(env: &Env, key: &str, order: &str) {
    let body = stripe_session_event(key, "checkout.session.completed", order, "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", key, &body).await;
}

fn order_of(message: &lapin::message::BasicGetMessage) -> String {
    let body: NotificationMessage = serde_json::from_slice(&message.delivery.data).expect("documented schema");
    body.payment.order_id
}

/// The worker commits the first event's batch and then pauses for six times its lease before
/// publishing (a fail point). The relay claims the row once the lease ran out and publishes it.
/// When the worker wakes, the row is no longer its own, so it publishes nothing. The sentinel:
/// with one batch at a time, the worker takes a second event only after the first batch ended,
/// publish included, so once the second event's notification is on the queue, a second copy of
/// the first would be before it.
///
/// Delete the `.filter(|m| owned.contains(&m.id))` in `worker::store::outbox::publish` to see it fail.
#[tokio::test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the test hooks: --features worker/failpoints")]
async fn a_worker_slower_than_its_lease_leaves_the_notification_to_the_relay_and_it_is_published_once() {
    let env = Env::new().await;
    env.seed_payment("order-slow", "stripe", Some(1000), Some("usd")).await;
    env.seed_payment("order-sentinel", "stripe", Some(1000), Some("usd")).await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    let inbox = env.broker.subscribe(&format!("{}.notifications", env.broker.prefix)).await;
    let mut worker = spawn_worker_process(&env.env_vars(&[
        ("OUTBOX_LEASE", "500ms"),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
        ("WORKER_CONCURRENCY", "1"),
        ("FAILPOINTS", "batch-before-publish=1*return(3000)"),
    ]));

    pay(&env, "evt_slow", "order-slow").await;
    let first = env.broker.wait_get(&inbox, WAIT).await;
    assert_eq!(order_of(&first), "order-slow");

    pay(&env, "evt_sentinel", "order-sentinel").await;
    let seen = RefCell::new(Vec::new());
    testkit::eventually("the sentinel's notification", WAIT, || async {
        let arrived = env.broker.drain(&inbox).await;
        let mut seen = seen.borrow_mut();
        seen.extend(arrived.iter().map(order_of));
        seen.iter().any(|order| order == "order-sentinel").then_some(())
    })
    .await;
    assert_eq!(seen.into_inner(), ["order-sentinel"], "the slow batch's notification was published once");
    env.wait_count("outbox emptied", "SELECT count(*) FROM outbox", 0, WAIT).await;
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 2);
    kill_hard(&mut worker).await;
}

/// A batch transaction that waited long (on payment locks held by another worker, say) before
/// it wrote its outbox rows still gives the committing worker a whole lease. Counted from the
/// transaction's start (`now()`), the lease here would have run out before the row was even
/// written. Replace `clock_timestamp()` by `now()` in `INSERT_OUTBOX` to see it fail.
#[tokio::test]
async fn a_lease_runs_from_when_the_outbox_row_is_written_not_from_when_its_transaction_began() {
    let env = Env::new().await;
    let mut client = env.db.client().await;
    let tx = client.transaction().await.unwrap();
    let lease = Duration::from_secs(1);
    // Wait, on the database's clock, until the open transaction is older than the lease.
    testkit::eventually("the transaction to be older than the lease", WAIT, || async {
        let older: bool = tx
            .query_one("SELECT clock_timestamp() - now() > make_interval(secs => $1)", &[&lease.as_secs_f64()])
            .await
            .unwrap()
            .get(0);
        older.then_some(())
    })
    .await;

    let claim = Claim::new(lease);
    let id = Uuid::new_v4();
    tx.execute(
        worker::store::sql::INSERT_OUTBOX,
        &[&vec![id], &vec!["payment.paid"], &vec!["{}"], &vec![None::<&str>], &lease.as_secs_f64(), &claim.token],
    )
    .await
    .unwrap();
    let row = tx
        .query_one(
            "SELECT claimed_until > clock_timestamp(), claim_token FROM outbox WHERE notification_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the lease had run out before the row was written");
    assert_eq!(row.get::<_, Uuid>(1), claim.token, "the row carries the claim's token");
    let owned: Vec<Uuid> = tx
        .query(worker::store::outbox::OWNED, &[&vec![id], &claim.token])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owned, [id], "the claim holds the row");
    let other = Claim::new(lease);
    let owned = tx.query(worker::store::outbox::OWNED, &[&vec![id], &other.token]).await.unwrap();
    assert!(owned.is_empty(), "another claim's token does not hold it");
    tx.rollback().await.unwrap();
}
