//! A primary and a streaming standby of the test's own ([`PgServer`]s), for failover tests:
//! synchronous replication, a multi-host URL as libpq and tokio-postgres take it, and the
//! steps a failover manager takes (fence the old primary, wait for the standby, promote it).
//! Dropping the pair stops both servers and deletes their directories, also on a panic.

use std::time::Duration;

use tokio_postgres::Client;

use crate::db::connect;
use crate::PgServer;

/// How long replication and fencing steps may take before the test fails.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// A primary and its synchronous standby.
pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
}

impl PgPair {
    /// Starts a primary, then a standby from a base backup of it, and makes that standby
    /// synchronous: from then on a commit on the primary returns only once the standby has
    /// written it to disk (`synchronous_commit = on`, the default).
    pub async fn start() -> Self {
        let primary = PgServer::start().await;
        let standby = PgServer::start_standby_of(&primary, None).await;
        make_synchronous(&primary).await;
        Self { primary, standby }
    }
}

/// `postgres://postgres@127.0.0.1:<p1>,127.0.0.1:<p2>/<database>?target_session_attrs=read-write`:
/// each server in turn, the first that takes writes.
pub fn multi_host_url(servers: &[&PgServer], database: &str) -> String {
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
    format!("postgres://postgres@{}/{database}?target_session_attrs=read-write", hosts.join(","))
}

/// Waits until a standby streams from `primary`, then makes every standby synchronous
/// (`synchronous_standby_names = '*'`) and waits until one is.
pub async fn make_synchronous(primary: &PgServer) {
    let sql = connect(&primary.url("postgres")).await;
    let streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
    wait_for(&sql, "a standby streaming", streaming).await;
    set_and_reload(&sql, "synchronous_standby_names = '*'").await;
    wait_for(&sql, "a synchronous standby", "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").await;
}

/// Fences `server` as a failover manager does before promoting another: new transactions are
/// read-only (`default_transaction_read_only`, applied by a reload to every session, those
/// already open included), so writes fail with SQLSTATE 25006 while clients stay connected.
/// Returns once no write transaction that began before is still open.
pub async fn fence(server: &PgServer) {
    let sql = connect(&server.url("postgres")).await;
    set_and_reload(&sql, "default_transaction_read_only = on").await;
    crate::eventually("the fenced server's write transactions finished", STEP_DEADLINE, || async {
        let open: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (open == 0).then_some(())
    })
    .await;
}

/// Waits until `standby` has replayed everything `primary` has written so far.
pub async fn wait_caught_up(primary: &PgServer, standby: &PgServer) {
    let (primary, standby) = (connect(&primary.url("postgres")).await, connect(&standby.url("postgres")).await);
    let written: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    crate::eventually("the standby caught up", STEP_DEADLINE, || async {
        let behind: bool =
            standby.query_one("SELECT pg_last_wal_replay_lsn() < $1::text::pg_lsn", &[&written]).await.unwrap().get(0);
        (!behind).then_some(())
    })
    .await;
}

/// `ALTER SYSTEM SET <setting>`, then a reload (two statements: `ALTER SYSTEM` refuses to run
/// in the implicit transaction of a multi-statement query).
async fn set_and_reload(sql: &Client, setting: &str) {
    sql.batch_execute(&format!("ALTER SYSTEM SET {setting}")).await.unwrap();
    sql.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

async fn wait_for(sql: &Client, what: &str, count: &str) {
    crate::eventually(what, STEP_DEADLINE, || async {
        let n: i64 = sql.query_one(count, &[]).await.unwrap().get(0);
        (n > 0).then_some(())
    })
    .await;
}
