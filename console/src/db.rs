//! The console's Postgres pool: the same connection code as the worker and hookctl (every
//! `sslmode`, `DATABASE_CA_FILE`), with the console's own limits. The console connects as a
//! member of `webhooks_console` (migration V9): it reads every table and appends to its audit
//! table, nothing else.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use shared::settings::DatabaseSettings;

/// Connections at most: a few people looking at pages, never a load on the pipeline's database.
const POOL_SIZE: usize = 4;
/// How long to wait for a connection before a page says the database is unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Every statement of the console reads by key or through an index; anything slower than
/// this is a mistake that must not hold a connection of the pipeline's database.
const SESSION_OPTIONS: &str = "-c statement_timeout=5s -c lock_timeout=2s -c idle_in_transaction_session_timeout=10s";

/// Builds the pool; connections open lazily, so a database that is down at start only makes
/// pages say so.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let target = worker::store::tls::DatabaseTarget::from_settings(settings)?;
    let mut config = target.config;
    config.connect_timeout(POOL_TIMEOUT);
    config.application_name("webhooks-console");
    config.options(SESSION_OPTIONS);
    let manager = Manager::from_config(config, target.tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()?)
}
