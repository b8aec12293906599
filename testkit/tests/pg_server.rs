//! The test's own PostgreSQL server does what the tests that use it rely on: it accepts
//! connections on its port, a crash drops them and leaves nothing listening, the next start runs
//! crash recovery on the same port with the data committed before, and dropping the handle
//! stops the server.

use std::time::Duration;

use testkit::PgServer;

#[tokio::test]
async fn a_crash_drops_connections_and_the_next_start_recovers_what_was_committed() {
    let pg = PgServer::start().await;
    let sql = testkit::db::connect(&pg.url("postgres")).await;
    let ssl: String = sql.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "off", "TLS only when asked for");
    sql.batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)").await.unwrap();

    pg.crash().await;
    assert!(sql.query_one("SELECT 1", &[]).await.is_err(), "the connection died with the server");
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err(), "nothing listens after the crash");

    pg.start_again().await;
    assert!(pg.logs().contains("automatic recovery in progress"), "crash recovery ran:\n{}", pg.logs());
    let sql = testkit::db::connect(&pg.url("postgres")).await;
    let kept: i64 = sql.query_one("SELECT count(*) FROM kept", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "a commit from before the crash survives it");

    let port = pg.port();
    drop(pg);
    testkit::eventually("the server gone after the drop", Duration::from_secs(10), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
    })
    .await;
}
