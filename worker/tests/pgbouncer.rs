//! The worker behind PgBouncer (Debian's, 1.18: no protocol-level prepared statements), run
//! by the test with its own configuration in front of the shared Postgres.
//!
//! The worker needs sessions of its own: its settings (lock and statement timeouts,
//! `idle_in_transaction_session_timeout`, `enable_seqscan=off`) in force in every transaction,
//! and its prepared statements kept across transactions. In transaction mode PgBouncer gives
//! neither, so the worker refuses to start and says why; in session mode, with the settings
//! on the worker's role, it works, with the same guarantees. Delete the
//! `db::sessions::check` call in `worker/src/lib.rs` to see the refusals fail: the worker
//! then starts and fails every batch instead.

mod common;

use std::time::Duration;

use common::{postgres_addr, Env, TestWorker};
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::{LoggedProcess, PgBouncer};

const WAIT: Duration = Duration::from_secs(30);

/// Runs the worker binary against `database_url` and returns its output once it has exited,
/// which it must do, unsuccessfully, at start.
async fn refused_start(env: &Env, database_url: &str) -> String {
    let vars = env.env_vars(&[("DATABASE_URL", database_url)]);
    let mut worker = LoggedProcess::spawn(env!("CARGO_BIN_EXE_worker"), &[], &vars);
    let status = worker.wait_exit(WAIT).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the last lines
    let output = worker.lines().join("\n");
    assert!(!status.success(), "the worker refuses to start:\n{output}");
    output
}

#[tokio::test]
async fn through_pgbouncer_in_transaction_mode_the_worker_refuses_to_start_and_says_why() {
    let env = Env::new().await;
    let backend = postgres_addr(&env.db.url);

    // As installed: PgBouncer refuses the `options` startup parameter.
    let bouncer = PgBouncer::start(backend, "transaction", &[]).await;
    let output = refused_start(&env, &bouncer.url(&env.db.name)).await;
    for needed in ["refused the worker's session settings", "unsupported startup parameter", "pool_mode = session"] {
        assert!(output.contains(needed), "the refusal says {needed:?}:\n{output}");
    }

    // Told to ignore it, PgBouncer drops the settings, and shares server sessions between
    // clients, which loses prepared statements between transactions.
    let bouncer = PgBouncer::start(backend, "transaction", &[("ignore_startup_parameters", "options")]).await;
    let output = refused_start(&env, &bouncer.url(&env.db.name)).await;
    for needed in ["hands one Postgres session to several clients", "pool_mode = session", "Connection poolers"] {
        assert!(output.contains(needed), "the refusal says {needed:?}:\n{output}");
    }
}

#[tokio::test]
async fn through_pgbouncer_in_session_mode_with_the_settings_on_its_role_the_worker_applies_each_event_once() {
    let env = Env::new().await;
    let backend = postgres_addr(&env.db.url);
    let session_mode = [("ignore_startup_parameters", "options")];

    // Without the settings on the role, they are not in force: refused, with the fix.
    let bouncer = PgBouncer::start(backend, "session", &session_mode).await;
    let output = refused_start(&env, &bouncer.url(&env.db.name)).await;
    assert!(output.contains("session settings are not in force"), "{output}");
    let fix = output
        .split("which every new session then starts with: ")
        .nth(1)
        .and_then(|rest| rest.split(" (see docs/operations.md").next())
        .unwrap_or_else(|| panic!("the refusal names the statements to run:\n{output}"))
        .to_string();
    assert!(fix.contains("lock_timeout") && fix.contains(&env.db.name), "{fix}");
    // The fix as the error gives it; then a fresh pooler, as its server sessions started
    // before the role had the settings (an operator would RECONNECT or restart it).
    env.sql.batch_execute(&fix).await.expect("the statements the refusal gives run");
    drop(bouncer);
    let bouncer = PgBouncer::start(backend, "session", &session_mode).await;
    let worker = TestWorker::spawn(env.broker.settings(Some(&bouncer.url(&env.db.name)), &[])).await;

    // The same guarantees: each event applied once, one notification each, a duplicate
    // recognised, the outbox emptied.
    const EVENTS: usize = 30;
    let mut trainers = Vec::new();
    for i in 0..EVENTS {
        let order = format!("pgb-{i}");
        trainers.push(env.seed_payment(&order, "stripe", Some(1000), Some("usd")).await.trainer_id);
        let body =
            stripe_session_event(&format!("evt_pgb_{i}"), "checkout.session.completed", &order, "paid", 1000, "usd");
        env.publish(Provider::Stripe, "checkout.session.completed", &format!("evt_pgb_{i}"), &body).await;
        if i == 0 {
            env.publish(Provider::Stripe, "checkout.session.completed", "evt_pgb_0", &body).await;
        }
    }
    let applied = "SELECT count(*) FROM webhook_events WHERE status = 'applied'";
    env.wait_count("every event applied", applied, EVENTS as i64, WAIT).await;
    env.wait_count("the duplicate recognised", "SELECT sum(duplicates) FROM webhook_events", 1, WAIT).await;
    for trainer in trainers {
        assert_eq!(env.notifications_for(trainer).await, 1, "one notification per paid booking");
    }
    assert_eq!(env.count("SELECT count(*) FROM payments WHERE payment_status = 'paid'").await, EVENTS as i64);
    env.wait_count("the outbox emptied", "SELECT count(*) FROM outbox", 0, WAIT).await;

    // The settings are in force inside its transactions: a payment row locked elsewhere makes
    // the worker's transaction give up after lock_timeout (5 s), not wait for the lock.
    env.seed_payment("pgb-locked", "stripe", Some(1000), Some("usd")).await;
    let locker = env.db.client().await;
    locker.batch_execute("BEGIN; SELECT 1 FROM payments WHERE order_id = 'pgb-locked' FOR UPDATE").await.unwrap();
    let body = stripe_session_event("evt_pgb_locked", "checkout.session.completed", "pgb-locked", "paid", 1000, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_pgb_locked", &body).await;
    let error = testkit::eventually("the worker's lock wait timed out", Duration::from_secs(20), || async {
        env.inbox("evt_pgb_locked").await.and_then(|(_, _, error)| error)
    })
    .await;
    assert!(error.contains("55P03") && error.contains("lock timeout"), "{error}");
    locker.batch_execute("COMMIT").await.unwrap();
    env.wait_count("the locked event applied once released", applied, EVENTS as i64 + 1, WAIT).await;
    assert!(bouncer.logs().contains("login attempt"), "the worker went through the pooler:\n{}", bouncer.logs());
    worker.stop().await;
}
