//! The Postgres pool, and the one place database errors are classified. [`tls`] turns
//! `DATABASE_URL`'s `sslmode` into the connector every connection uses.

use super::tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use shared::Settings;
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
/// keeps doing so for every batch as they grow.
const SESSION_OPTIONS: &str = "-c lock_timeout=5s -c statement_timeout=30s -c enable_seqscan=off";

/// Builds the pool; connections open lazily, so a database that is down at start only delays work.
pub fn pool(settings: &Settings) -> anyhow::Result<Pool> {
    let target = tls::DatabaseTarget::from_settings(settings)?;
    let mut config = target.config;
    config.connect_timeout(POOL_TIMEOUT);
    config.application_name("webhooks-worker");
    // Bounded waits as session settings, not a round trip per transaction: a stuck lock or
    // query becomes a (transient) error instead of a stalled worker, and a worker stalled
    // between two statements of a transaction loses its session and with it its row locks.
    let idle_in_transaction = settings.database_idle_in_transaction_timeout.as_millis();
    config.options(format!("{SESSION_OPTIONS} -c idle_in_transaction_session_timeout={idle_in_transaction}"));
    let manager = Manager::from_config(config, target.tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
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
}

/// Classifies by SQLSTATE. Errors without one are connection-level (I/O, closed) and transient.
pub fn classify(error: &tokio_postgres::Error) -> DbErrorClass {
    let Some(db) = error.as_db_error() else { return DbErrorClass::Transient };
    let code = db.code();
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
            DbErrorClass::Transient | DbErrorClass::Broken => Self::Transient(text),
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
}
