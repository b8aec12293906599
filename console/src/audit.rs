//! The audit trail (`console_audit`, migration V9): every action taken in the console, and
//! every refusal of one, with who, when, from where, on what and how it went. Rows are only
//! ever appended; the console's database role cannot change or delete them.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

/// How an action went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Not allowed (wrong password, missing role, bad form token, rate limited, …).
    Refused,
    /// Allowed, but it did not work (the broker or the database failed).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One row to append.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub role: &'a str,
    pub address: IpAddr,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: Outcome,
    pub detail: &'a str,
}

/// A stored row, as the audit page shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub address: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

/// Longest text kept per field: a hostile user name or target must not grow the table.
const MAX_FIELD: usize = 500;

fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(MAX_FIELD).collect();
    // Stored text never carries a NUL (Postgres refuses it) nor other control characters.
    shared::providers::escape_controls(&clipped).into_owned()
}

/// Appends `entry`. A failure is logged (an action is not undone because its record failed,
/// but nobody can miss that it was not recorded).
pub async fn record(pool: &Pool, entry: Entry<'_>) {
    let result = async {
        let client = pool.get().await?;
        client
            .execute(
                "INSERT INTO console_audit (actor, role, address, action, target, result, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &clip(entry.actor),
                    &entry.role,
                    &entry.address.to_string(),
                    &entry.action,
                    &clip(entry.target),
                    &entry.outcome.as_str(),
                    &clip(entry.detail),
                ],
            )
            .await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(
            actor = %clip(entry.actor), action = entry.action, target = %clip(entry.target),
            result = entry.outcome.as_str(), "console action"
        ),
        Err(error) => tracing::error!(
            %error, actor = %clip(entry.actor), action = entry.action, result = entry.outcome.as_str(),
            "AUDIT NOT RECORDED: the console could not append to console_audit"
        ),
    }
}

/// Rows newest first, `limit` of them before id `before` (keyset).
pub async fn list(pool: &Pool, before: Option<i64>, limit: i64) -> anyhow::Result<Vec<Row>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, at, actor, role, address, action, target, result, detail FROM console_audit
              WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            role: r.get(3),
            address: r.get(4),
            action: r.get(5),
            target: r.get(6),
            result: r.get(7),
            detail: r.get(8),
        })
        .collect())
}
