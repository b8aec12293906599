//! A schema that breaks the worker's own SQL (a bad migration, a renamed column) is no fault
//! of the events: the worker halts, loses nothing, blames no event, says so once, and resumes by
//! itself when the schema is repaired.

mod common;

use std::time::Duration;

use common::Env;
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::LoggedProcess;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_schema_that_breaks_the_workers_sql_halts_it_until_repaired_and_loses_nothing() {
    let env = Env::new().await;
    for i in 0..10 {
        env.seed_payment(&format!("halt-{i}"), "stripe", Some(3000), Some("usd")).await;
    }
    // Were these failures treated as transient, three quick attempts would dead-letter them.
    let vars = env.env_vars(&[("LOG_FORMAT", "json"), ("RETRY_DELAYS", "100ms"), ("RETRY_MAX_ATTEMPTS", "3")]);
    let mut worker = LoggedProcess::spawn(env!("CARGO_BIN_EXE_worker"), &[], &vars);
    let addr = worker.logged_addr("worker health and metrics listening").await;
    worker.wait_for_line("consuming", WAIT, |l| l.contains("\"consuming\"")).await;

    env.sql
        .batch_execute("ALTER TABLE webhook_events RENAME COLUMN verification TO verification_renamed")
        .await
        .unwrap();
    for i in 0..10 {
        let key = format!("evt_halt_{i}");
        let body = stripe_session_event(&key, "checkout.session.completed", &format!("halt-{i}"), "paid", 3000, "usd");
        env.publish(Provider::Stripe, "checkout.session.completed", &key, &body).await;
    }

    let readyz = format!("http://{addr}/readyz");
    let halted: serde_json::Value = testkit::eventually("readyz reports the halt", WAIT, || async {
        let response = reqwest::get(&readyz).await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["halted"].is_string().then_some(body)
    })
    .await;
    assert_eq!(halted["ready"], false);
    assert!(halted["halted"].as_str().unwrap().contains("42703"), "the cause is named: {halted}");
    let metrics = format!("http://{addr}/metrics");
    assert_eq!(testkit::metrics::scrape(&metrics).await.value("worker_halted", &[]), 1.0);

    // Let it try again a few times: every try fails in the database, and none is logged again
    // or spends an event's attempts.
    let rollbacks = format!("SELECT xact_rollback FROM pg_stat_database WHERE datname = '{}'", env.db.name);
    let before = env.count(&rollbacks).await;
    env.wait_at_least("three more tries while halted", &rollbacks, before + 3, WAIT).await;
    assert_eq!(env.count("SELECT count(*) FROM webhook_events").await, 0, "no event blamed");
    assert_eq!(env.broker.count(&env.dead_queue()).await, 0, "nothing dead-lettered");
    for tier in ["100ms"] {
        let queue = format!("{}.work.retry.{tier}", env.broker.prefix);
        assert_eq!(env.broker.count(&queue).await, 0, "nothing sent to a delay tier");
    }
    let halts = worker.lines().iter().filter(|l| l.contains("HALTED")).count();
    assert_eq!(halts, 1, "the cause is logged once");

    env.sql
        .batch_execute("ALTER TABLE webhook_events RENAME COLUMN verification_renamed TO verification")
        .await
        .unwrap();
    env.wait_count(
        "all ten applied after the repair",
        "SELECT count(*) FROM webhook_events WHERE status = 'applied' AND attempts = 1",
        10,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, 10);
    assert_eq!(env.count("SELECT count(*) FROM notifications").await, 10);
    testkit::eventually("ready again", WAIT, || async {
        reqwest::get(&readyz).await.ok()?.status().is_success().then_some(())
    })
    .await;
    assert_eq!(testkit::metrics::scrape(&metrics).await.value("worker_halted", &[]), 0.0);
    assert!(worker.lines().iter().any(|l| l.contains("resumed")));
    worker.terminate();
    worker.wait_exit(Duration::from_secs(20)).await;
}
