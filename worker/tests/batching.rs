//! What batching could break, against the real Postgres and RabbitMQ: order within a batch,
//! failures that must stay with their event, a kill in the middle of a batch, and two workers
//! whose batches overlap on the same payments.

mod common;

use std::time::Duration;

use common::{kill_hard, spawn_worker_process, Env, TestWorker};
use shared::Provider;
use testkit::events::{stripe_session_event, toss_payment_status_changed};
use testkit::LoggedProcess;

const WAIT: Duration = Duration::from_secs(60);

/// Batches wait this long for more deliveries, so events queued ahead share one batch.
const LINGER: (&str, &str) = ("WORKER_BATCH_LINGER", "500ms");

/// `(batches, deliveries in them)` as the worker counted them.
async fn batches(worker: &TestWorker) -> (f64, f64) {
    let metrics = testkit::metrics::scrape(&format!("http://{}/metrics", worker.addr)).await;
    (metrics.value("worker_batch_size_count", &[]), metrics.value("worker_batch_size_sum", &[]))
}

async fn seed(env: &Env, prefix: &str, n: usize, provider: &str) -> Vec<common::Seeded> {
    let (amount, currency) = if provider == "toss" { (1000, "KRW") } else { (3000, "usd") };
    let mut seeded = Vec::new();
    for i in 0..n {
        seeded.push(env.seed_payment(&format!("{prefix}-{i}"), provider, Some(amount), Some(currency)).await);
    }
    seeded
}

async fn publish_paid(env: &Env, prefix: &str, i: usize, amount: i64) {
    let key = format!("evt_{prefix}_{i}");
    let body =
        stripe_session_event(&key, "checkout.session.completed", &format!("{prefix}-{i}"), "paid", amount, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", &key, &body).await;
}

/// Publishes a Toss status change; returns its event key. Tests of batching run their workers
/// with `TOSS_ALLOW_UNVERIFIED` (verification has tests of its own).
async fn publish_toss(env: &Env, order: &str, status: &str) -> String {
    let body = toss_payment_status_changed(order, &format!("pk_{order}"), status, 1000);
    env.publish_toss(&body).await
}

const UNVERIFIED_OK: (&str, &str) = ("TOSS_ALLOW_UNVERIFIED", "true");

#[tokio::test]
async fn the_same_order_twice_in_one_batch_ends_as_the_state_machine_says() {
    let env = Env::new().await;
    let paid_first = env.seed_payment("twice-a", "toss", Some(1000), Some("KRW")).await;
    let cancel_first = env.seed_payment("twice-b", "toss", Some(1000), Some("KRW")).await;
    let settings = env.settings(&[LINGER, UNVERIFIED_OK]);
    env.declare(&settings).await;
    let a_done = publish_toss(&env, "twice-a", "DONE").await;
    let a_cancel = publish_toss(&env, "twice-a", "CANCELED").await;
    let b_cancel = publish_toss(&env, "twice-b", "CANCELED").await;
    let b_done = publish_toss(&env, "twice-b", "DONE").await;

    let worker = TestWorker::spawn(settings).await;
    env.wait_count(
        "all four decided",
        "SELECT count(*) FROM webhook_events WHERE status IN ('applied', 'ignored')",
        4,
        WAIT,
    )
    .await;
    assert_eq!(batches(&worker).await, (1.0, 4.0), "the four events were one batch");

    // Paid, then canceled: both apply, one notification each.
    assert_eq!(env.status("twice-a").await, "canceled");
    assert_eq!(env.inbox(&a_done).await.unwrap().0, "applied");
    assert_eq!(env.inbox(&a_cancel).await.unwrap().0, "applied");
    assert_eq!(env.notifications_for(paid_first.trainer_id).await, 2);
    let paid_at_set: bool = env
        .sql
        .query_one("SELECT paid_at IS NOT NULL FROM payments WHERE order_id = 'twice-a'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(paid_at_set, "it was paid on the way");
    // Canceled, then a late DONE: canceled is final, the DONE is recorded and ignored.
    assert_eq!(env.status("twice-b").await, "canceled");
    assert_eq!(env.inbox(&b_cancel).await.unwrap().0, "applied");
    assert_eq!(env.inbox(&b_done).await.unwrap().0, "ignored");
    assert_eq!(env.notifications_for(cancel_first.trainer_id).await, 1);
    let kinds: Vec<String> = env
        .sql
        .query("SELECT type FROM notifications WHERE user_id = $1 ORDER BY created_at, id", &[&paid_first.trainer_id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(kinds.contains(&"payment.paid".to_string()) && kinds.contains(&"payment.canceled".to_string()));
    env.wait_count("outbox drained", "SELECT count(*) FROM outbox", 0, WAIT).await;
    worker.stop().await;
}

#[tokio::test]
async fn one_amount_mismatch_in_a_batch_of_fifty_is_dead_lettered_alone() {
    let env = Env::new().await;
    seed(&env, "mix", 50, "stripe").await;
    let settings = env.settings(&[LINGER]);
    env.declare(&settings).await;
    for i in 0..50 {
        publish_paid(&env, "mix", i, if i == 17 { 3001 } else { 3000 }).await;
    }
    let worker = TestWorker::spawn(settings).await;
    env.wait_count("49 applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 49, WAIT).await;
    env.wait_count("one dead", "SELECT count(*) FROM webhook_events WHERE status = 'dead'", 1, WAIT).await;
    assert_eq!(batches(&worker).await, (1.0, 50.0), "one batch of fifty");

    let (status, attempts, error) = env.inbox("evt_mix_17").await.unwrap();
    assert_eq!((status.as_str(), attempts), ("dead", 1), "dead at once, never retried");
    assert!(error.unwrap().contains("amount mismatch"));
    assert_eq!(env.status("mix-17").await, "pending", "the mismatch never applied");
    let parked = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let headers = parked.delivery.properties.headers().clone().unwrap();
    let reason = shared::envelope::header_str(&headers, shared::envelope::H_DEAD_REASON).unwrap();
    assert!(reason.contains("amount mismatch"), "{reason}");
    assert!(env.broker.get(&env.dead_queue()).await.is_none(), "only the mismatch is dead-lettered");
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 49);
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 49);
    worker.stop().await;
}

#[tokio::test]
async fn one_event_the_database_refuses_does_not_stop_the_other_forty_nine() {
    let env = Env::new().await;
    let seeded = seed(&env, "sab", 50, "stripe").await;
    // Sabotage: the database refuses the update of one payment, which fails the batch's
    // transaction as a whole.
    env.sql
        .batch_execute(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'sabotaged payment %', NEW.order_id; END $$;
             CREATE TRIGGER sabotage BEFORE UPDATE ON payments FOR EACH ROW
             WHEN (NEW.order_id = 'sab-17') EXECUTE FUNCTION refuse_one();",
        )
        .await
        .unwrap();
    let settings = env.settings(&[LINGER, ("RETRY_DELAYS", "300ms"), ("RETRY_MAX_ATTEMPTS", "100")]);
    env.declare(&settings).await;
    for i in 0..50 {
        publish_paid(&env, "sab", i, 3000).await;
    }
    let worker = TestWorker::spawn(settings).await;
    env.wait_count("the other 49 applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 49, WAIT)
        .await;
    env.wait_at_least(
        "the refused one retried",
        "SELECT attempts::bigint FROM webhook_events WHERE event_key = 'evt_sab_17'",
        2,
        WAIT,
    )
    .await;
    let (status, _, error) = env.inbox("evt_sab_17").await.unwrap();
    assert_eq!(status, "retrying");
    assert!(error.unwrap().contains("sabotaged payment sab-17"));
    assert_eq!(env.status("sab-17").await, "pending");
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing dead-lettered");
    let retried_neighbours =
        env.count("SELECT count(*) FROM webhook_events WHERE status = 'applied' AND attempts > 1").await;
    assert_eq!(retried_neighbours, 0, "the neighbours were applied in the same delivery, never retried");

    env.sql.batch_execute("DROP TRIGGER sabotage ON payments").await.unwrap();
    env.wait_count("all 50 applied", "SELECT count(*) FROM webhook_events WHERE status = 'applied'", 50, WAIT).await;
    for s in &seeded {
        assert_eq!(env.notifications_for(s.trainer_id).await, 1);
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_batch_leaves_nothing_half_applied() {
    let env = Env::new().await;
    let seeded = seed(&env, "mid", 100, "stripe").await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    for i in 0..100 {
        publish_paid(&env, "mid", i, 3000).await;
    }
    // Every write of the batch is done and the commit is held back: the kill lands in the
    // middle of the batch's transaction.
    let mut first = spawn_worker_process(&env.env_vars(&[LINGER, ("FAILPOINTS", "batch-before-commit=sleep(60000)")]));
    let held = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND state = 'idle in transaction'
           AND application_name = 'webhooks-worker' AND state_change < now() - interval '1 second'",
        env.db.name
    );
    env.wait_at_least("a batch written and not yet committed", &held, 1, WAIT).await;
    kill_hard(&mut first).await;
    for (what, sql) in [
        ("inbox rows", "SELECT count(*) FROM webhook_events"),
        ("paid payments", "SELECT count(*) FROM payments WHERE payment_status = 'paid'"),
        ("notifications", "SELECT count(*) FROM notifications"),
        ("outbox rows", "SELECT count(*) FROM outbox"),
    ] {
        assert_eq!(env.count(sql).await, 0, "{what} after the kill");
    }

    let mut second = spawn_worker_process(&env.env_vars(&[]));
    env.wait_count(
        "all 100 applied after a restart",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
        100,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 100);
    for s in &seeded {
        assert_eq!(env.notifications_for(s.trainer_id).await, 1, "trainer {} notified once", s.trainer_id);
    }
    env.wait_count("outbox drained", "SELECT count(*) FROM outbox", 0, WAIT).await;
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);
    kill_hard(&mut second).await;
}

#[tokio::test]
async fn two_workers_with_overlapping_batches_apply_each_change_once_without_deadlocks() {
    let env = Env::new().await;
    let seeded = seed(&env, "both", 100, "toss").await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    let vars = env.env_vars(&[
        UNVERIFIED_OK,
        ("WORKER_BATCH_SIZE", "40"),
        ("WORKER_CONCURRENCY", "3"),
        ("LOG_FORMAT", "json"),
        ("RETRY_DELAYS", "200ms"),
        ("RETRY_MAX_ATTEMPTS", "50"),
    ]);
    let bin = env!("CARGO_BIN_EXE_worker");
    let mut a = LoggedProcess::spawn(bin, &[], &vars);
    let mut b = LoggedProcess::spawn(bin, &[], &vars);
    // Both consume before anything is published, so neither can take it all alone.
    testkit::eventually("both workers consuming", WAIT, || async {
        (env.broker.consumers(&env.work_queue()).await == 2).then_some(())
    })
    .await;
    // Every order gets a DONE and a CANCELED, each delivered twice, interleaved so that both
    // workers' batches hold events of the same orders. Whatever the order, each ends canceled.
    for _copy in 0..2 {
        for status in ["DONE", "CANCELED"] {
            for i in 0..100 {
                publish_toss(&env, &format!("both-{i}"), status).await;
            }
        }
    }
    env.wait_count(
        "all 400 deliveries handled",
        "SELECT (COALESCE(sum(duplicates), 0) + count(*))::bigint FROM webhook_events WHERE status IN ('applied', 'ignored')",
        400,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'canceled'").await, 100);
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status NOT IN ('applied', 'ignored')").await, 0);
    // One notification per applied change, for every order.
    for (i, s) in seeded.iter().enumerate() {
        let applied = env
            .count(&format!("SELECT count(*) FROM webhook_events WHERE order_id = 'both-{i}' AND status = 'applied'"))
            .await;
        assert!((1..=2).contains(&applied), "order both-{i}: {applied} changes applied");
        assert_eq!(env.notifications_for(s.trainer_id).await, applied, "order both-{i}");
    }
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing dead-lettered");
    a.terminate();
    b.terminate();
    a.wait_exit(Duration::from_secs(20)).await;
    b.wait_exit(Duration::from_secs(20)).await;
    let both_batched = [&a, &b].iter().all(|p| p.lines().iter().any(|l| l.contains("Payment updated")));
    assert!(both_batched, "both workers applied changes");
    for line in a.lines().iter().chain(b.lines().iter()) {
        assert!(!line.contains("deadlock"), "a deadlock surfaced: {line}");
    }
}
