//! Migrations and database error classification against the real Postgres.

use testkit::{TestBroker, TestDb};
use worker::db::{classify, DbErrorClass};

#[tokio::test]
async fn two_concurrent_migrations_create_the_database_and_apply_once() {
    let db = TestDb::reserve();
    let broker = TestBroker::new().await;
    let settings = broker.settings(Some(&db.url), &[]);
    let (a, b) = tokio::join!(worker::migrate::migrate(&settings), worker::migrate::migrate(&settings));
    a.expect("first migration run");
    b.expect("second migration run");
    let sql = db.client().await;
    let applied: i64 = sql.query_one("SELECT count(*) FROM refinery_schema_history", &[]).await.unwrap().get(0);
    let expected = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations")).unwrap().count() as i64;
    assert_eq!(applied, expected);
    for table in ["payments", "notifications", "bookings", "webhook_events", "outbox"] {
        let exists: bool = sql.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.unwrap().get(0);
        assert!(exists, "{table}");
    }
    // And again: idempotent.
    worker::migrate::migrate(&settings).await.expect("re-run is a no-op");
}

#[tokio::test]
async fn database_errors_are_classified_by_sqlstate() {
    let db = TestDb::create().await;
    let sql = db.client().await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);").await.unwrap();

    let unique = sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap_err();
    assert_eq!(classify(&unique), DbErrorClass::Permanent, "unique violation");
    let data = sql.query("SELECT 1 / 0", &[]).await.unwrap_err();
    assert_eq!(classify(&data), DbErrorClass::Permanent, "division by zero");
    // Our own SQL against a schema that is not (or no longer) what the code expects: no event
    // is at fault, so the worker halts instead of retrying events into the dead letters.
    let missing = sql.query("SELECT * FROM not_migrated_yet", &[]).await.unwrap_err();
    assert_eq!(classify(&missing), DbErrorClass::Broken, "undefined table");
    let column = sql.query("SELECT no_such_column FROM t", &[]).await.unwrap_err();
    assert_eq!(classify(&column), DbErrorClass::Broken, "undefined column");

    // A lock held elsewhere and a short lock_timeout: 55P03.
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE", &[]).await.unwrap();
    let mut waiter = db.client().await;
    let wtx = waiter.transaction().await.unwrap();
    wtx.batch_execute("SET LOCAL lock_timeout = '100ms'").await.unwrap();
    let lock = wtx.query("SELECT * FROM t WHERE id = 1 FOR UPDATE", &[]).await.unwrap_err();
    assert_eq!(classify(&lock), DbErrorClass::Transient, "lock timeout");
    drop(wtx);
    tx.rollback().await.unwrap();

    // A statement cut by statement_timeout: 57014.
    sql.batch_execute("SET statement_timeout = '50ms'").await.unwrap();
    let slow = sql.query("SELECT pg_sleep(1)", &[]).await.unwrap_err();
    assert_eq!(classify(&slow), DbErrorClass::Transient, "statement timeout");
}
