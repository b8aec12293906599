//! Postgres: the pool and the one place database errors are classified ([`db`], over
//! [`tls`]), the batch transaction ([`write`], its statements in [`sql`], what it keeps of
//! outside text in [`stored`]), publishing committed notifications ([`outbox`]), pruning the
//! inbox ([`retention`]) and the schema ([`migrate`]). Imports the [`crate::domain`], never the
//! pipeline.

pub mod db;
pub mod migrate;
pub mod outbox;
pub mod retention;
pub mod sql;
pub mod stored;
pub mod tls;
pub mod write;
