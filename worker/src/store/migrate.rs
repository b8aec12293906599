//! `worker migrate`: creates the database if it is missing and applies `migrations/` with
//! refinery. Safe to run from several processes at once: a Postgres advisory lock lets one
//! apply while the others wait, then find nothing left to do.

use anyhow::Context;
use shared::settings::DatabaseSettings;
use tokio_postgres::error::SqlState;

use crate::store::tls::{describe_connect_error, DatabaseTarget};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Arbitrary, fixed key of the advisory lock that serialises migration runs.
const MIGRATION_LOCK: i64 = 0x7765_6268_6f6f_6b73; // "webhooks"

pub async fn migrate(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let target = DatabaseTarget::from_settings(settings)?;
    ensure_database(&target).await?;
    let (mut client, connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to DATABASE_URL: {}", describe_connect_error(&e)))?;
    let driver = tokio::spawn(connection);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    drop(client);
    let _ = driver.await;
    let report = report.context("migration failed")?;
    let applied: Vec<String> = report.applied_migrations().iter().map(|m| m.to_string()).collect();
    if applied.is_empty() {
        tracing::info!("database schema is up to date");
    } else {
        tracing::info!(migrations = ?applied, "migrations applied");
    }
    Ok(())
}

/// Creates the database named in `DATABASE_URL` when it does not exist, through the `postgres`
/// maintenance database (over the same TLS). Without the rights to do so, the later connect
/// reports the problem.
async fn ensure_database(target: &DatabaseTarget) -> anyhow::Result<()> {
    let Some(name) = target.config.get_dbname().map(str::to_string) else { return Ok(()) };
    if name == "postgres" {
        return Ok(());
    }
    let mut admin = target.config.clone();
    admin.dbname("postgres");
    let Ok((client, connection)) = admin.connect(target.tls.clone()).await else { return Ok(()) };
    tokio::spawn(connection);
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
            Ok(()) => tracing::info!(database = %name, "database created"),
            // Another process created it a moment ago.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            }
            Err(e) => return Err(e).context("cannot create the database"),
        }
    }
    Ok(())
}
