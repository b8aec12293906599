//! What the worker needs of its database sessions, checked once at start.
//!
//! Every pooled session runs with the worker's settings (lock and statement timeouts,
//! `idle_in_transaction_session_timeout`, `enable_seqscan=off`, sent as the `options` startup
//! parameter) and keeps the statements it prepared for its whole life (deadpool's statement
//! cache). Postgres itself gives both. A connection pooler between the worker and Postgres may
//! not:
//!
//! - PgBouncer refuses the `options` startup parameter (before 1.20 always, later for
//!   settings it does not track): no connection opens at all;
//! - told to ignore it (`ignore_startup_parameters = options`), it drops the settings silently;
//! - in `pool_mode = transaction` or `statement` it hands one server session to many clients,
//!   so a statement prepared in one transaction is missing (or another client's) in the next,
//!   and anything a session set leaks to other clients. PgBouncer before 1.21 (Debian 12 ships
//!   1.18) has no support for prepared statements in those modes at all.
//!
//! Each of these would surface later as events failing for no fault of theirs; the worker
//! refuses to start instead, saying what it found and what to configure. A database that cannot
//! be reached at start is no reason to refuse (connections open lazily): that is only logged.

use std::time::Duration;

use shared::settings::DatabaseSettings;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::db::{session_settings, session_target};
use super::tls::describe_connect_error;

/// The whole check, connections included, gives up after this (and the worker starts).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the two probe sessions ask for their backend in turn.
const SHARING_PROBES: usize = 3;

/// Where the documentation explains the supported setups.
const SEE: &str = "see docs/operations.md, \"Connection poolers\"";

/// A setup the worker refuses to run on.
#[derive(Debug, thiserror::Error)]
pub enum SessionProblem {
    #[error(
        "the server at DATABASE_URL refused the worker's session settings (the `options` startup parameter; it \
         said: {said}). A connection pooler such as PgBouncer does that. The worker runs every session with \
         lock_timeout, statement_timeout, idle_in_transaction_session_timeout and enable_seqscan=off, and keeps \
         prepared statements across transactions: connect it to Postgres itself, or through PgBouncer with \
         pool_mode = session, ignore_startup_parameters = options and the settings set on the worker's role \
         ({SEE})"
    )]
    OptionsRefused { said: String },
    #[error(
        "DATABASE_URL reaches a connection pooler that hands one Postgres session to several clients (PgBouncer \
         pool_mode = transaction or statement): two connections of this worker ran on the same backend (pid \
         {pid}). The worker keeps prepared statements and session settings across transactions, which such a \
         pooler loses or mixes up between clients. Give the worker a database with pool_mode = session in the \
         pooler, or connect it to Postgres itself ({SEE})"
    )]
    SharedSessions { pid: i32 },
    #[error(
        "the worker's session settings are not in force on connections to DATABASE_URL ({differences}): a \
         connection pooler that ignores the `options` startup parameter (PgBouncer's ignore_startup_parameters = \
         options) drops them. Set them on the worker's role in its database, which every new session then starts \
         with: {fix} \
         ({SEE})"
    )]
    SettingsNotInForce { differences: String, fix: String },
}

/// Opens two sessions as the pool would and refuses a setup that cannot give the worker
/// sessions of its own with its settings in force.
pub async fn check(settings: &DatabaseSettings) -> Result<(), SessionProblem> {
    let wanted = session_settings(settings);
    let inspection = async {
        let target = session_target(settings).map_err(|e| Unchecked(e.to_string()))?;
        let connect = || async {
            let (client, connection) = target.config.connect(target.tls.clone()).await.map_err(|e| {
                match e.as_db_error().filter(|db| db.message().contains("startup parameter")) {
                    Some(db) => Found::Problem(SessionProblem::OptionsRefused { said: db.message().to_string() }),
                    None => Found::Unchecked(Unchecked(describe_connect_error(&e))),
                }
            })?;
            tokio::spawn(connection);
            Ok::<_, Found>(client)
        };
        let (first, second) = (connect().await?, connect().await?);
        shares_sessions(&first, &second).await?;
        settings_in_force(&first, &wanted).await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, inspection).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Found::Problem(problem))) => Err(problem),
        Ok(Err(Found::Unchecked(Unchecked(why)))) => {
            tracing::warn!(error = %why, "could not check the database sessions at start (database unreachable?); starting anyway");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(timeout = ?CHECK_TIMEOUT, "could not check the database sessions at start in time; starting anyway");
            Ok(())
        }
    }
}

/// The check could not run (no database); not a reason to refuse.
struct Unchecked(String);

enum Found {
    Problem(SessionProblem),
    Unchecked(Unchecked),
}

impl From<Unchecked> for Found {
    fn from(unchecked: Unchecked) -> Self {
        Self::Unchecked(unchecked)
    }
}

impl From<tokio_postgres::Error> for Found {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Unchecked(Unchecked(error.to_string()))
    }
}

/// Two sessions of one client never share a backend on Postgres itself, nor through a pooler
/// in session mode; a session whose backend changes between statements is not one either. A
/// transaction pooler hands the backend the first session just released to the second
/// (PgBouncer reuses the most recently released server connection first).
async fn shares_sessions(first: &Client, second: &Client) -> Result<(), Found> {
    let pid = backend_pid(first).await?;
    for _ in 0..SHARING_PROBES {
        if backend_pid(second).await? == pid || backend_pid(first).await? != pid {
            return Err(Found::Problem(SessionProblem::SharedSessions { pid }));
        }
    }
    Ok(())
}

async fn backend_pid(client: &Client) -> Result<i32, Found> {
    let value = first_column(client, "SELECT pg_backend_pid()").await?.into_iter().next();
    value.and_then(|pid| pid.parse().ok()).ok_or_else(|| Found::Unchecked(Unchecked("no backend pid".into())))
}

/// Reads the settings as `pg_settings` shows them (timeouts in milliseconds) and compares.
async fn settings_in_force(client: &Client, wanted: &[(&'static str, String)]) -> Result<(), Found> {
    let names: Vec<String> = wanted.iter().map(|(name, _)| format!("'{name}'")).collect();
    let query = format!("SELECT name || '=' || setting FROM pg_settings WHERE name IN ({})", names.join(", "));
    let found = first_column(client, &query).await?;
    let differences: Vec<String> = wanted
        .iter()
        .filter_map(|(name, value)| {
            let now = found.iter().find_map(|pair| pair.strip_prefix(&format!("{name}=")));
            (now != Some(value.as_str())).then(|| format!("{name} is {} instead of {value}", now.unwrap_or("unknown")))
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    let quoted = |query| async move {
        let name = first_column(client, query).await?.into_iter().next().unwrap_or_default();
        Ok::<_, Found>(format!("\"{}\"", name.replace('"', "\"\"")))
    };
    let (role, database) = (quoted("SELECT current_user").await?, quoted("SELECT current_database()").await?);
    let fix: Vec<String> = wanted
        .iter()
        .map(|(name, value)| {
            let value = if name.ends_with("_timeout") { format!("{value}ms") } else { value.clone() };
            format!("ALTER ROLE {role} IN DATABASE {database} SET {name} = '{value}';")
        })
        .collect();
    Err(Found::Problem(SessionProblem::SettingsNotInForce { differences: differences.join(", "), fix: fix.join(" ") }))
}

/// The first column of every row, as text, by the simple protocol (nothing prepared).
async fn first_column(client: &Client, query: &str) -> Result<Vec<String>, Found> {
    let messages = client.simple_query(query).await?;
    Ok(messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}
