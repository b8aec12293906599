//! Faults for real: the database connection cut for 10 s, worker processes killed with
//! SIGKILL, two processes racing over copies of the same events.

mod common;

use std::time::Duration;

use common::{kill_hard, postgres_addr, spawn_worker_process, Env, TestWorker};
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::TcpProxy;

const WAIT: Duration = Duration::from_secs(60);

async fn seed_orders(env: &Env, prefix: &str, n: usize) -> Vec<common::Seeded> {
    let mut seeded = Vec::new();
    for i in 0..n {
        seeded.push(env.seed_payment(&format!("{prefix}-{i}"), "stripe", Some(1000), Some("usd")).await);
    }
    seeded
}

async fn publish_paid(env: &Env, prefix: &str, i: usize) {
    let key = format!("evt_{prefix}_{i}");
    let body = stripe_session_event(&key, "checkout.session.completed", &format!("{prefix}-{i}"), "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", &key, &body).await;
}

/// Every order paid, one notification per trainer, one applied inbox row per event.
async fn assert_each_applied_once(env: &Env, prefix: &str, seeded: &[common::Seeded]) {
    let n = seeded.len() as i64;
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM payments WHERE order_id LIKE '{prefix}-%' AND payment_status = 'paid'"
        ))
        .await,
        n
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_{prefix}_%' AND status = 'applied'"
        ))
        .await,
        n
    );
    for s in seeded {
        assert_eq!(env.notifications_for(s.trainer_id).await, 1, "trainer {} notified once", s.trainer_id);
    }
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, n);
}

#[tokio::test]
async fn a_ten_second_database_outage_loses_nothing_and_dead_letters_nothing() {
    let env = Env::new().await;
    let seeded = seed_orders(&env, "outage", 40).await;
    let proxy = TcpProxy::start(postgres_addr(&env.db.url)).await;
    let via_proxy = env.db.url_via(proxy.addr());
    let worker = TestWorker::spawn(env.settings(&[
        ("DATABASE_URL", &via_proxy),
        ("RETRY_DELAYS", "500ms,1s,2s,4s"),
        ("RETRY_MAX_ATTEMPTS", "12"),
    ]))
    .await;

    for i in 0..20 {
        publish_paid(&env, "outage", i).await;
    }
    env.wait_at_least(
        "some events applied before the outage",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
        10,
        WAIT,
    )
    .await;
    proxy.cut();
    for i in 20..40 {
        publish_paid(&env, "outage", i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await; // 10 s in all since the cut
    proxy.restore();

    env.wait_count(
        "all 40 applied after the outage",
        "SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_outage_%' AND status = 'applied'",
        40,
        WAIT,
    )
    .await;
    assert_each_applied_once(&env, "outage", &seeded).await;
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing dead-lettered for the outage");
    assert_eq!(env.count("SELECT count(*) FROM webhook_events WHERE status = 'dead'").await, 0);
    let retried =
        env.count("SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_outage_%' AND attempts > 1").await;
    assert!(retried > 0, "the outage really made events retry");
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing_and_doubles_nothing() {
    let env = Env::new().await;
    let seeded = seed_orders(&env, "kill", 80).await;
    let vars = env.env_vars(&[("WORKER_CONCURRENCY", "4"), ("WORKER_PREFETCH", "16")]);
    let mut first = spawn_worker_process(&vars);
    testkit::eventually("first worker consuming", WAIT, || async {
        (env.broker.consumers(&env.work_queue()).await == 1).then_some(())
    })
    .await;

    let stream = async {
        for i in 0..80 {
            publish_paid(&env, "kill", i).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    };
    let killer = async {
        env.wait_at_least(
            "a part of the stream applied",
            "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
            15,
            WAIT,
        )
        .await;
        kill_hard(&mut first).await;
    };
    tokio::join!(stream, killer);
    let applied_when_killed = env.count("SELECT count(*) FROM webhook_events WHERE status = 'applied'").await;
    assert!(applied_when_killed < 80, "the kill happened mid-stream ({applied_when_killed} applied)");

    let mut second = spawn_worker_process(&vars);
    env.wait_count(
        "all 80 applied after a restart",
        "SELECT count(*) FROM webhook_events WHERE event_key LIKE 'evt_kill_%' AND status = 'applied'",
        80,
        WAIT,
    )
    .await;
    assert_each_applied_once(&env, "kill", &seeded).await;
    env.wait_count("outbox drained", "SELECT count(*) FROM outbox", 0, WAIT).await;
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0);
    kill_hard(&mut second).await;
}

#[tokio::test]
async fn five_concurrent_copies_through_two_worker_processes_apply_once() {
    let env = Env::new().await;
    let seeded = seed_orders(&env, "race", 10).await;
    let settings = env.settings(&[]);
    env.declare(&settings).await;
    // Queue every copy first, then start both workers, so they really compete for them.
    for i in 0..10 {
        for _ in 0..5 {
            publish_paid(&env, "race", i).await;
        }
    }
    let vars = env.env_vars(&[("WORKER_CONCURRENCY", "8"), ("WORKER_PREFETCH", "10")]);
    let mut a = spawn_worker_process(&vars);
    let mut b = spawn_worker_process(&vars);
    env.wait_count(
        "all 50 copies handled",
        "SELECT COALESCE(sum(duplicates), 0)::bigint + count(*) FROM webhook_events WHERE status = 'applied'",
        50,
        WAIT,
    )
    .await;
    assert_each_applied_once(&env, "race", &seeded).await;
    assert_eq!(env.count("SELECT sum(duplicates)::bigint FROM webhook_events").await, 40);
    kill_hard(&mut a).await;
    kill_hard(&mut b).await;
}

#[tokio::test]
async fn a_single_worker_processes_deliveries_concurrently() {
    let env = Env::new().await;
    let seeded = seed_orders(&env, "conc", 30).await;
    // Hold a lock on one payment: with concurrency > 1 the other events still get through.
    let mut blocker = env.db.client().await;
    let tx = blocker.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM payments WHERE order_id = 'conc-0' FOR UPDATE", &[]).await.unwrap();
    let worker = TestWorker::spawn(env.settings(&[("WORKER_CONCURRENCY", "4")])).await;
    for i in 0..30 {
        publish_paid(&env, "conc", i).await;
    }
    env.wait_count(
        "the other 29 applied while one is blocked",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
        29,
        WAIT,
    )
    .await;
    tx.rollback().await.unwrap();
    env.wait_count(
        "the blocked one applied after the lock is released",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
        30,
        WAIT,
    )
    .await;
    assert_each_applied_once(&env, "conc", &seeded).await;
    worker.stop().await;
}

#[tokio::test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the test hooks: --features worker/failpoints")]
async fn a_message_that_kills_every_worker_is_parked_by_the_delivery_limit() {
    let env = Env::new().await;
    let settings = env.settings(&[("DELIVERY_LIMIT", "2")]);
    env.declare(&settings).await;
    publish_paid(&env, "poison", 0).await;
    // Each worker dies on the message before acking it; the broker redelivers it to the next.
    let vars = env.env_vars(&[("DELIVERY_LIMIT", "2"), ("FAILPOINTS", "process-delivery=return")]);
    let crashes = env.crash_workers_until_parked(&vars, 1, 6).await;
    assert!(crashes >= 2, "redelivered to another worker before being parked ({crashes} crashes)");
    let parked = env.broker.wait_get(&env.dead_queue(), WAIT).await;
    let headers = parked.delivery.properties.headers().clone().unwrap();
    assert!(headers.inner().contains_key("x-death"), "dead-lettered by the broker: {headers:?}");
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 0);
    // The inbox tells the same story: the last delivery was recorded as dead before it crashed.
    let (status, _, error) = env.inbox("evt_poison_0").await.expect("an inbox row for the parked message");
    assert_eq!(status, "dead");
    assert!(error.unwrap_or_default().contains("delivery limit"), "the reason names the delivery limit");
}

#[tokio::test]
async fn a_retrying_order_does_not_stall_the_others() {
    let env = Env::new().await;
    let seeded = seed_orders(&env, "flow", 10).await;
    let worker = TestWorker::spawn(env.settings(&[
        ("WORKER_CONCURRENCY", "1"),
        ("RETRY_DELAYS", "2s"),
        ("RETRY_MAX_ATTEMPTS", "100"),
    ]))
    .await;
    // The first event's order never exists: it keeps retrying.
    let stuck = stripe_session_event("evt_stuck", "checkout.session.completed", "no-such-order", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_stuck", &stuck).await;
    for i in 0..10 {
        publish_paid(&env, "flow", i).await;
    }
    // One delivery at a time, yet the others are all applied while the stuck one waits in a
    // delay queue, not in the worker.
    env.wait_count(
        "the others applied",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied'",
        10,
        Duration::from_secs(10),
    )
    .await;
    let (status, attempts, _) = env.inbox("evt_stuck").await.unwrap();
    assert_eq!(status, "retrying");
    assert!(attempts <= 6, "still early in its retries ({attempts})");
    assert_each_applied_once(&env, "flow", &seeded).await;
    worker.stop().await;
}
