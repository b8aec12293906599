//! Postgres: the pool and the one place database errors are classified ([`db`], over
//! [`tls`]), the batch transaction ([`write`], its statements in [`sql`], what it keeps of
//! outside text in [`stored`]), publishing committed notifications ([`outbox`]), pruning the
//! inbox ([`retention`]), reconciliation's lease and watermark ([`reconcile`]) and the schema
//! ([`migrate`]). Imports the [`crate::domain`], never the
//! pipeline.

mod columns;
pub mod db;
pub mod migrate;
pub mod outbox;
pub mod reconcile;
pub mod retention;
pub mod sessions;
pub mod sql;
pub mod stored;
pub mod tls;
pub mod write;

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::{Client, Pool, PoolError};

use crate::domain::decide::Trust;
use crate::domain::notification::StoredNotification;
use crate::domain::outcome::HandleError;
use db::{classify, describe_pool_error, leave_read_only_server, DbErrorClass};
use outbox::Claim;
use write::{Committed, Entry, WriteError};

/// How long recording a failed attempt may take after the batch failed; the database may be
/// the reason it failed.
const RECORD_FAILURE_TIMEOUT: Duration = Duration::from_secs(2);

/// The worker's database: the pool, and what the batch writer, the retention and the health
/// listener do with it (every statement is one of this module's).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// `DATABASE_TRANSACTION_TIMEOUT`.
    transaction_timeout: Duration,
}

/// How a batch's transaction failed.
#[derive(Debug)]
pub enum Fault {
    /// No database to talk to: every event is retried later.
    Outage(String),
    /// The session's server takes no writes (SQLSTATE 25006: a standby, or a primary demoted
    /// in a failover); the session was left, and a fresh one goes to a server taking writes.
    ReadOnly(String),
    /// The database rejected the worker's own SQL: halt.
    Broken(String),
    /// The database refused this batch (a constraint, a trigger, a lock timeout, a conflict).
    Rejected(HandleError),
}

impl Store {
    /// A store on `pool` whose batch transactions get `transaction_timeout` to complete.
    pub fn new(pool: Pool, transaction_timeout: Duration) -> Self {
        Self { pool, transaction_timeout }
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Client, PoolError> {
        self.pool.get().await
    }

    /// Closes the pool (at shutdown).
    pub fn close(&self) {
        self.pool.close();
    }

    /// Applies the entries in one transaction ([`write::apply`]).
    pub async fn apply(
        &self,
        entries: &[Entry<'_>],
        trust: Trust,
        max_attempts: u32,
        claim: &Claim,
    ) -> Result<Committed, Fault> {
        let mut client = self.pool.get().await.map_err(|error| match &error {
            PoolError::Backend(e) => fault_of(e),
            other => Fault::Outage(describe_pool_error(other)),
        })?;
        let applying = write::apply(&mut client, entries, trust, max_attempts, claim);
        let Ok(result) = tokio::time::timeout(self.transaction_timeout, applying).await else {
            // An answer never came (a partition, a stalled server): the session is in an
            // unknown state, the commit perhaps done. Closed, never back to the pool. Retrying
            // is safe: events the commit applied are final in the inbox, so their next copy
            // is a duplicate.
            drop(deadpool_postgres::Object::take(client));
            return Err(Fault::Outage(format!(
                "the database did not answer the batch's transaction within {:?} \
                 (DATABASE_TRANSACTION_TIMEOUT); its session was closed, its commit's fate unknown",
                self.transaction_timeout
            )));
        };
        let fault = match result {
            Ok(committed) => return Ok(committed),
            Err(WriteError::Db(e)) => fault_of(&e),
            Err(WriteError::Conflict(reason)) => Fault::Rejected(HandleError::Transient(reason)),
        };
        if let Fault::ReadOnly(_) = fault {
            // Returned to the pool, this session would fail every batch that takes it.
            leave_read_only_server(&self.pool, client);
        }
        Err(fault)
    }

    /// Records the failed attempt of every entry, outside the transaction that rolled back.
    /// Best effort: the database may be why the batch failed.
    pub async fn record_failures(&self, entries: &[Entry<'_>], error: &HandleError, max_attempts: u32) {
        let errors = vec![error.clone(); entries.len()];
        let recording = async {
            let client = self.pool.get().await.map_err(|e| describe_pool_error(&e))?;
            write::record_failures(&client, entries, &errors, max_attempts).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(RECORD_FAILURE_TIMEOUT, recording).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not record the failed attempts (database unavailable?)"),
            Err(_) => tracing::debug!("could not record the failed attempts in time (database unavailable?)"),
        }
    }

    /// The Toss event keys among `keys` the inbox holds as applied or ignored.
    pub async fn final_toss_events(&self, keys: &[String]) -> Result<HashSet<String>, HandleError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT event_key FROM webhook_events
                  WHERE provider = 'toss' AND event_key = ANY($1) AND status IN ('applied', 'ignored')",
                &[&keys],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The `notifications` row `id` with its payload's digest and its payment's order and provider, for
    /// delivery to check a message against; `None` when there is no such row.
    pub async fn notification(&self, id: uuid::Uuid) -> Result<Option<StoredNotification>, HandleError> {
        let client = self.pool.get().await?;
        let read = client
            .prepare_cached(
                "SELECT n.user_id, n.title, n.message, n.type, n.link, n.payment_id, p.order_id, p.provider,
                        n.payload_sha256
                   FROM notifications n LEFT JOIN payments p ON p.id = n.payment_id
                  WHERE n.id = $1",
            )
            .await?;
        let row = client.query_opt(&read, &[&id]).await?;
        Ok(row.map(|r| StoredNotification {
            user_id: r.get(0),
            title: r.get(1),
            message: r.get(2),
            kind: r.get(3),
            link: r.get(4),
            payment_id: r.get(5),
            order_id: r.get(6),
            provider: r.get(7),
            payload_sha256: r.get(8),
        }))
    }

    /// Whether the database answers `SELECT 1`.
    pub async fn answers(&self) -> bool {
        let Ok(client) = self.pool.get().await else { return false };
        client.simple_query("SELECT 1").await.is_ok()
    }

    /// Outbox rows not yet confirmed by the broker; `None` when the database did not answer.
    pub async fn outbox_backlog(&self) -> Option<i64> {
        let client = self.pool.get().await.ok()?;
        client.query_one("SELECT count(*) FROM outbox", &[]).await.ok().map(|row| row.get(0))
    }
}

fn fault_of(error: &tokio_postgres::Error) -> Fault {
    let Some(db) = error.as_db_error() else {
        return Fault::Outage(format!("database unavailable: {error}"));
    };
    let text = format!("database error {}: {}", db.code().code(), db.message());
    match classify(error) {
        DbErrorClass::Broken => Fault::Broken(text),
        DbErrorClass::Permanent => Fault::Rejected(HandleError::Permanent(text)),
        DbErrorClass::Transient => Fault::Rejected(HandleError::Transient(text)),
        DbErrorClass::ReadOnlyServer => Fault::ReadOnly(text),
    }
}
