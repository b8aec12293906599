//! The worker and hookctl as deployed connect to Postgres as a login role that is a member of
//! `webhooks_runtime` (migration V8), made by `deploy/postgres/create-login-role.sql` (what
//! compose's postgres-setup service runs): it does the worker's whole job and cannot change
//! the schema. Each test makes a login role of its own and drops it when it ends.

mod common;

use std::time::Duration;

use common::{Env, TestWorker};
use shared::Provider;
use testkit::events::stripe_session_event;
use testkit::{Behavior, FakeEndpoint};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A login role made by the deployment's script; dropped when the handle drops.
struct LoginRole {
    name: String,
    /// `DATABASE_URL` of the test database as this role.
    url: String,
}

impl LoginRole {
    /// Runs deploy/postgres/create-login-role.sql with psql as the owner, as compose does.
    async fn create(env: &Env) -> Self {
        let name = testkit::unique("webhooks_app");
        let password = Uuid::new_v4().simple().to_string();
        let mut url = reqwest::Url::parse(&env.db.url).expect("a URL");
        url.set_username(&name).unwrap();
        url.set_password(Some(&password)).unwrap();
        // Made before the script runs, so a failure halfway still drops what it created.
        let role = Self { name, url: url.to_string() };
        let script = testkit::prometheus::repo_root().join("deploy/postgres/create-login-role.sql");
        let output = tokio::process::Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-d", &env.db.url, "-f"])
            .arg(script)
            .env("DATABASE_LOGIN_ROLE", &role.name)
            .env("DATABASE_LOGIN_PASSWORD", &password)
            .output()
            .await
            .expect("psql runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "create-login-role.sql failed:\n{text}");
        role
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        drop(DropRole(self.name.clone()));
    }
}

#[tokio::test]
async fn the_runtime_role_reads_and_writes_rows_but_cannot_change_the_schema() {
    let env = Env::new().await;
    let role = LoginRole::create(&env).await;
    let sql = testkit::db::connect(&role.url).await;
    let is_member: bool =
        sql.query_one("SELECT pg_has_role(current_user, 'webhooks_runtime', 'MEMBER')", &[]).await.unwrap().get(0);
    assert!(is_member);
    sql.execute("SELECT count(*) FROM payments", &[]).await.expect("the role reads rows");

    // Each of these is the owner's alone. Granting webhooks_runtime more than the four row
    // privileges in migrations/V8__runtime_role.sql (`ALL PRIVILEGES`) lets TRUNCATE through.
    for statement in [
        "DROP TABLE payments",
        "ALTER TABLE payments ADD COLUMN intruder integer",
        "ALTER TABLE payments DROP COLUMN order_id",
        "CREATE TABLE intruder (id integer)",
        "CREATE INDEX intruder ON payments (updated_at)",
        "TRUNCATE webhook_events",
        "DELETE FROM refinery_schema_history",
        "ALTER TABLE payments RENAME TO intruder",
    ] {
        let error = sql.batch_execute(statement).await.expect_err(statement);
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{statement}: {error}");
    }
    let tables: i64 = env
        .sql
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'payments'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "payments is still there");
}

#[tokio::test]
async fn a_worker_connected_as_the_runtime_role_does_its_whole_job() {
    let env = Env::new().await;
    let role = LoginRole::create(&env).await;
    let seeded = env.seed_payment("order-runtime", "stripe", Some(2500), Some("usd")).await;
    // A processed event past the retention, for the pruner (it runs at the worker's start).
    env.sql
        .execute(
            "INSERT INTO webhook_events (provider, event_key, event_type, status, payload, received_at, processed_at)
             VALUES ('stripe', 'evt_expired', 'checkout.session.completed', 'applied', '{}',
                     now() - interval '40 days', now() - interval '40 days')",
            &[],
        )
        .await
        .unwrap();
    // An outbox row nobody holds (its worker died), for the relay.
    env.sql
        .execute(
            "INSERT INTO outbox (notification_id, routing_key, payload, claimed_until)
             VALUES ($1, 'payment.paid', '{\"left\":\"behind\"}', now() - interval '1 minute')",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap();
    let receiver = FakeEndpoint::start(vec![Behavior::Status(200, String::new())]).await;
    let notify_url = receiver.url("/notifications");
    let worker = TestWorker::spawn(env.settings(&[
        ("DATABASE_URL", role.url.as_str()),
        ("NOTIFY_WEBHOOK_URL", notify_url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", NOTIFY_SECRET),
        ("EVENT_RETENTION", "30d"),
    ]))
    .await;

    env.wait_count("the expired event pruned", "SELECT count(*) FROM webhook_events", 0, WAIT).await;
    let body = stripe_session_event("evt_runtime", "checkout.session.completed", "order-runtime", "paid", 2500, "usd");
    env.publish(Provider::Stripe, "checkout.session.completed", "evt_runtime", &body).await;
    env.wait_count("paid", "SELECT count(*) FROM payments WHERE payment_status = 'paid'", 1, WAIT).await;
    assert_eq!(env.notifications_for(seeded.trainer_id).await, 1);
    env.wait_count("the outbox emptied by publisher and relay", "SELECT count(*) FROM outbox", 0, WAIT).await;
    let bodies = testkit::eventually("the event's notification delivered", WAIT, || async {
        let bodies: Vec<String> =
            receiver.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
        (!bodies.is_empty()).then_some(bodies)
    })
    .await;
    assert!(bodies.iter().any(|b| b.contains(&seeded.booking_id.to_string())), "the event's: {bodies:?}");
    // The relay published the row nobody held; delivery, reading the notifications table as
    // this role, found no such notification and set it aside unsigned.
    let dead_queue = format!("{}.notify.dead", env.broker.prefix);
    let dead = env.broker.wait_get(&dead_queue, WAIT).await;
    let reason = shared::envelope::header_str(dead.delivery.properties.headers().as_ref().unwrap(), "x-dead-reason");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("unverifiable: no notification") && r.ends_with("in the database")),
        "{reason:?}"
    );
    assert_eq!(dead.delivery.data, b"{\"left\":\"behind\"}");
    assert_eq!(receiver.requests().len(), 1, "nothing unverified was signed: {bodies:?}");
    let (status, _, _) = env.inbox("evt_runtime").await.expect("recorded");
    assert_eq!(status, "applied");

    // hookctl, as the same role, reads the order's story.
    let (ok, out) = env.hookctl(&[("DATABASE_URL", role.url.as_str())], &["events", "order-runtime"]).await;
    assert!(ok && out.contains("evt_runtime") && out.contains("applied"), "{out}");
    worker.stop().await;
}

#[tokio::test]
async fn creating_the_runtime_role_survives_a_concurrent_creation_of_it() {
    // V8's DO block for a role of this test's own: two transactions create it at once, as two
    // databases of one cluster migrating at the same moment do. Without the block's EXCEPTION
    // clause the second fails with a unique violation.
    let name = testkit::unique("webhooks_runtime");
    let migration = std::fs::read_to_string(testkit::prometheus::repo_root().join("migrations/V8__runtime_role.sql"))
        .expect("V8 exists");
    let start = migration.find("DO $$").expect("V8 creates the role in a DO block");
    let end = start + migration[start..].find("$$;").expect("the block ends") + 3;
    let block = migration[start..end].replace("webhooks_runtime", &name);
    let _dropped = DropRole(name.clone());

    let first = testkit::db::connect(&testkit::admin_database_url()).await;
    first.batch_execute("BEGIN").await.unwrap();
    first.batch_execute(&block).await.expect("the first creates it");
    let second = tokio::spawn(async move {
        let client = testkit::db::connect(&testkit::admin_database_url()).await;
        client.batch_execute(&format!("BEGIN; {block} COMMIT;")).await
    });
    // The second waits on the first's uncommitted role...
    let admin = testkit::db::connect(&testkit::admin_database_url()).await;
    testkit::eventually("the second creation waiting for the first", WAIT, || async {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        (waiting == 1).then_some(())
    })
    .await;
    // ...and finds it there once the first commits.
    first.batch_execute("COMMIT").await.unwrap();
    second.await.unwrap().expect("a concurrent duplicate is not an error");
    let roles: i64 =
        admin.query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&name]).await.unwrap().get(0);
    assert_eq!(roles, 1);
}

/// Drops a role when the test ends.
struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let admin = testkit::db::connect(&testkit::admin_database_url()).await;
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\"")).await;
            });
        })
        .join();
    }
}
