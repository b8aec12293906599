//! The web console for the people on call: an order's whole story (payment, every event in
//! time order, notifications and where they are), dead letters with replay and purge,
//! unverified events with "verify now", queue depths, worker health, and an audit trail of
//! every action. A process of its own: it reads Postgres through indexes and the broker
//! through passive declares, and adds nothing to ingest's or the workers' paths.
//!
//! - [`settings`]: the console's own settings (`CONSOLE_*`), next to the shared ones.
//! - [`app`]: state, routes, layers; served on `shared::http_server`'s accept loop.
//! - [`auth`]: sessions, users and roles, the trusted proxy header, form tokens, login limits.
//! - [`security`]: the headers on every answer (CSP, nosniff, no framing, no referrer).
//! - [`audit`]: the append-only audit trail.
//! - [`routes`] and [`pages`]: handlers and their HTML (maud, no script).
//! - [`read`]: the SQL behind the pages; [`broker`], [`workers`]: queue depths, `/readyz`.
//! - [`actions`]: replay, purge and re-check, through `hookctl`'s own code.

pub mod actions;
pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod db;
pub mod pages;
pub mod read;
pub mod routes;
pub mod security;
pub mod settings;
pub mod workers;

pub use app::{AppState, Console};
pub use settings::{ConsoleSettings, PipelineSettings};
