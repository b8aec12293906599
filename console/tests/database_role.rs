//! The console as deployed connects to Postgres as a member of `webhooks_console` (migration
//! V9), made by `deploy/postgres/create-login-role.sql` with `DATABASE_LOGIN_GROUP=webhooks_console`
//! (compose's postgres-console-setup): it reads every table and appends to its audit table,
//! and nothing else. The worker's role, for its part, cannot touch the audit trail.

mod common;

use common::{Env, OPERATOR};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// A login role made by the deployment's script, dropped when the test ends.
struct LoginRole {
    name: String,
    url: String,
}

impl LoginRole {
    async fn create(env: &Env, group: Option<&str>) -> Self {
        let name = testkit::unique("console_app");
        let password = Uuid::new_v4().simple().to_string();
        let mut url = reqwest::Url::parse(&env.db.url).unwrap();
        url.set_username(&name).unwrap();
        url.set_password(Some(&password)).unwrap();
        let role = Self { name, url: url.to_string() };
        let script = testkit::prometheus::repo_root().join("deploy/postgres/create-login-role.sql");
        let mut command = tokio::process::Command::new("psql");
        command
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-d", &env.db.url, "-f"])
            .arg(script)
            .env("DATABASE_LOGIN_ROLE", &role.name)
            .env("DATABASE_LOGIN_PASSWORD", &password);
        if let Some(group) = group {
            command.env("DATABASE_LOGIN_GROUP", group);
        }
        let output = command.output().await.expect("psql runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "create-login-role.sql failed:\n{text}");
        role
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let admin = testkit::db::connect(&testkit::admin_database_url()).await;
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\"")).await;
            });
        })
        .join();
    }
}

async fn refused(sql: &tokio_postgres::Client, statement: &str) {
    let error = sql.batch_execute(statement).await.expect_err(statement);
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{statement}: {error}");
}

/// Grant webhooks_console more than SELECT and the audit INSERT in migrations/V9__console.sql
/// and this fails.
#[tokio::test]
async fn the_console_role_reads_every_table_and_only_appends_to_its_audit_table() {
    let env = Env::new().await;
    env.seed_payment("order-role", "stripe", 1000, "usd").await;
    let role = LoginRole::create(&env, Some("webhooks_console")).await;
    let sql = testkit::db::connect(&role.url).await;
    for table in ["payments", "bookings", "notifications", "webhook_events", "outbox", "console_audit"] {
        sql.batch_execute(&format!("SELECT count(*) FROM {table}")).await.unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    sql.batch_execute(
        "INSERT INTO console_audit (actor, role, address, action, result) VALUES ('t', 'viewer', '::1', 'test', 'ok')",
    )
    .await
    .expect("the console appends to its audit table");
    for statement in [
        "UPDATE payments SET payment_status = 'paid'",
        "INSERT INTO bookings (trainer_id) VALUES (gen_random_uuid())",
        "DELETE FROM webhook_events",
        "UPDATE outbox SET attempts = 0",
        "UPDATE console_audit SET result = 'refused'",
        "DELETE FROM console_audit",
        "TRUNCATE console_audit",
        "SELECT * FROM refinery_schema_history",
        "CREATE TABLE intruder (id integer)",
    ] {
        refused(&sql, statement).await;
    }

    // The console itself works as this role: pages read, logins are recorded.
    let console = env.console(&[("DATABASE_URL", &role.url)]).await;
    let mut ann = console.login(OPERATOR).await;
    let page = ann.page("/orders/order-role").await;
    assert!(page.contains("pending"), "{page}");
    assert!(env
        .audit()
        .await
        .iter()
        .any(|(who, action, result, _)| who == OPERATOR.0 && action == "login" && result == "ok"));
    console.stop().await;
}

/// Delete the `REVOKE ALL ON console_audit FROM webhooks_runtime` in V9 and this fails.
#[tokio::test]
async fn the_workers_role_cannot_read_or_rewrite_the_audit_trail() {
    let env = Env::new().await;
    let role = LoginRole::create(&env, None).await;
    let sql = testkit::db::connect(&role.url).await;
    sql.batch_execute("SELECT count(*) FROM payments").await.expect("the worker's role reads its tables");
    for statement in [
        "SELECT * FROM console_audit",
        "INSERT INTO console_audit (actor, role, address, action, result) VALUES ('x', 'x', 'x', 'x', 'ok')",
        "UPDATE console_audit SET actor = 'someone else'",
        "DELETE FROM console_audit",
    ] {
        refused(&sql, statement).await;
    }
}
