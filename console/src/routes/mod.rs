//! The handlers, one module per page. Each takes what it needs through extractors (who is
//! asking: [`crate::auth::LoggedIn`], or [`crate::auth::Operator`] for actions) and answers
//! with a page, a redirect or a refusal. GET handlers only read.

pub mod assets;
pub mod audit;
pub mod dead;
pub mod events;
pub mod login;
pub mod orders;
pub mod overview;
pub mod unverified;

use axum::response::Response;
use deadpool_postgres::Client;

use crate::app::AppState;
use crate::auth::LoggedIn;

/// A pooled connection, or the page that says the database is unavailable.
pub async fn database(state: &AppState, user: &LoggedIn) -> Result<Client, Response> {
    state.pool.get().await.map_err(|e| crate::pages::unavailable("The database is unavailable", &e.into(), user))
}

/// The fields of a form body, in order (a field may repeat: `id=a&id=b`).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// Every value of field `name`.
pub fn field_values<'f>(fields: &'f [(String, String)], name: &str) -> Vec<&'f str> {
    fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

/// The first value of field `name`, if not empty.
pub fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    field_values(fields, name).into_iter().find(|v| !v.is_empty())
}
