//! The Postgres pool, and the one place database errors are classified. [`tls`] turns
//! `DATABASE_URL`'s `sslmode` into the connector every connection uses; [`sessions`] checks at
//! start that the sessions the pool opens are what the worker needs (no pooler in between that
//! shares them or drops their settings).

use super::tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use shared::settings::DatabaseSettings;
use tokio_postgres::error::SqlState;

use crate::domain::outcome::HandleError;

/// How long to wait for a pooled connection, or to open one, before calling the database
/// unavailable (a transient failure: the message is retried later).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// `lock_timeout` and `statement_timeout` for every pooled connection, and no sequential scans
/// where an index serves. Every statement of the worker reads rows by key. They are prepared
/// once per connection, and Postgres may keep one generic plan of each for the connection's
/// life, planned from the table sizes of that moment: planned while the tables are small (a new
/// deployment, or no statistics because autovacuum is off), that plan scans whole tables and
/// keeps doing so for every batch as they grow. Each is (name, value as `pg_settings.setting`
/// shows it: timeouts in milliseconds), so that [`sessions`] can check they are in force.
const SESSION_SETTINGS: [(&str, &str); 3] =
    [("lock_timeout", "5000"), ("statement_timeout", "30000"), ("enable_seqscan", "off")];

/// Every setting the worker's sessions run with, `idle_in_transaction_session_timeout` from
/// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT` included, as `pg_settings.setting` shows them.
pub fn session_settings(settings: &DatabaseSettings) -> Vec<(&'static str, String)> {
    let idle_in_transaction = settings.database_idle_in_transaction_timeout.as_millis();
    let mut all: Vec<(&'static str, String)> = SESSION_SETTINGS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    all.push(("idle_in_transaction_session_timeout", idle_in_transaction.to_string()));
    all
}

/// The connection settings and TLS connector of every pooled connection.
pub fn session_target(settings: &DatabaseSettings) -> anyhow::Result<tls::DatabaseTarget> {
    let mut target = tls::DatabaseTarget::from_settings(settings)?;
    let config = &mut target.config;
    config.connect_timeout(POOL_TIMEOUT);
    config.application_name("webhooks-worker");
    // Bounded waits as session settings, not a round trip per transaction: a stuck lock or
    // query becomes a (transient) error instead of a stalled worker, and a worker stalled
    // between two statements of a transaction loses its session and with it its row locks.
    let options: Vec<String> = session_settings(settings).iter().map(|(k, v)| format!("-c {k}={v}")).collect();
    config.options(options.join(" "));
    Ok(target)
}

/// Builds the pool; connections open lazily, so a database that is down at start only delays work.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let target = session_target(settings)?;
    let manager =
        Manager::from_config(target.config, target.tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(settings.database_pool_size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// What a failed database call means for the message being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorClass {
    /// The database is unreachable, busy or the transaction lost a race: try again later.
    Transient,
    /// The data itself is unacceptable (constraint, bad value): retrying cannot help.
    Permanent,
    /// Our own SQL, the schema or the database's configuration is wrong (an undefined table
    /// or column, missing privileges, a wrong database or password). No event is at fault:
    /// retrying on the delay schedule would walk every event to the dead letters, and
    /// dead-lettering would blame them. The worker halts until a person fixes it.
    Broken,
    /// The server takes no writes (`read_only_sql_transaction`, SQLSTATE 25006): the session
    /// is on a standby, or on a primary that was demoted or fenced (`default_transaction_read_only`)
    /// in a failover. Neither the event nor the SQL is at fault, and waiting on this session
    /// cannot help: leave it ([`leave_read_only_server`]) and try again on a fresh connection,
    /// which only a server that takes writes accepts (`target_session_attrs=read-write`).
    ReadOnlyServer,
}

/// Classifies by SQLSTATE. Errors without one are connection-level (I/O, closed) and transient.
pub fn classify(error: &tokio_postgres::Error) -> DbErrorClass {
    let Some(db) = error.as_db_error() else { return DbErrorClass::Transient };
    let code = db.code();
    if code == &SqlState::READ_ONLY_SQL_TRANSACTION {
        return DbErrorClass::ReadOnlyServer;
    }
    let class = &code.code()[..2];
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
    {
        return DbErrorClass::Transient;
    }
    match class {
        // 42 syntax error or access rule violation, 3F invalid schema name, 3D invalid
        // catalog name, 28 invalid authorization: the code or the setup is wrong.
        "42" | "3F" | "3D" | "28" => DbErrorClass::Broken,
        // 22 data exception, 23 integrity constraint violation: this message's data is the problem.
        "22" | "23" => DbErrorClass::Permanent,
        // 08 connection exception, 53 insufficient resources, 57 operator intervention,
        // 58 system error, 40 rollback, and anything else (a schema not yet migrated during a
        // deploy, say) is worth retrying: it is not the message's fault.
        _ => DbErrorClass::Transient,
    }
}

/// Drops `client`'s connection for good, and every idle one of the pool: the server it is on
/// takes no writes, and the idle ones were opened to the same server. The next connection the
/// pool opens goes to a server that takes writes, or fails (an outage) while there is none.
pub fn leave_read_only_server(pool: &Pool, client: deadpool_postgres::Client) {
    drop(deadpool_postgres::Object::take(client));
    let left = pool.retain(|_, _| false).removed.len();
    tracing::debug!(idle_sessions_closed = left, "left a read-only server");
}

/// Pool failures are never the message's fault.
pub fn describe_pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Timeout(_) => "database pool timed out (database unreachable or saturated)".into(),
        PoolError::Backend(e) => format!("database connection failed: {}", tls::describe_connect_error(e)),
        other => format!("database pool error: {other}"),
    }
}

/// A database failure met while handling an event, as the event's outcome.
impl From<tokio_postgres::Error> for HandleError {
    fn from(error: tokio_postgres::Error) -> Self {
        let text = match error.as_db_error() {
            Some(db) => format!("database error {}: {}", db.code().code(), db.message()),
            None => format!("database unavailable: {error}"),
        };
        match classify(&error) {
            // A broken schema halts the batch before it reaches an event; anywhere else it is
            // no fault of the event, so it is retried.
            // A read-only server outside the batch's transaction (the relay, say): that session
            // goes back to the pool, and the next batch that takes it leaves it.
            DbErrorClass::Transient | DbErrorClass::Broken | DbErrorClass::ReadOnlyServer => Self::Transient(text),
            DbErrorClass::Permanent => Self::Permanent(text),
        }
    }
}

impl From<deadpool_postgres::PoolError> for HandleError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Transient(describe_pool_error(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::NoTls;

    #[test]
    fn errors_without_sqlstate_are_transient() {
        // A closed connection has no SQLSTATE; build one by connecting to a port nobody listens on.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime.block_on(async {
            tokio_postgres::connect("postgres://postgres@127.0.0.1:1/x?connect_timeout=1", NoTls).await.err().unwrap()
        });
        assert_eq!(classify(&error), DbErrorClass::Transient);
    }

    #[test]
    fn a_read_only_server_means_reconnect_elsewhere_not_a_fault_of_the_event_or_the_sql() {
        // A write on a standby, or on a fenced primary: SQLSTATE 25006, class 25 ("invalid
        // transaction state"), which the class rules alone would call transient (a retry tier).
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime.block_on(async {
            let url = testkit::admin_database_url();
            let client = testkit::db::connect(&url).await;
            client
                .batch_execute("BEGIN READ ONLY; CREATE TEMPORARY TABLE read_only_probe (x int)")
                .await
                .expect_err("a write in a read-only transaction fails")
        });
        assert_eq!(error.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{error}");
        assert_eq!(classify(&error), DbErrorClass::ReadOnlyServer);
    }
}
