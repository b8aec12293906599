//! GET /audit: every action taken in the console, newest first.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::LoggedIn;
use crate::pages;
use crate::read::lists::PAGE;

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn list(State(state): State<AppState>, user: LoggedIn, Query(query): Query<AuditQuery>) -> Response {
    match crate::audit::list(&state.pool, query.before, PAGE + 1).await {
        Ok(mut rows) => {
            let next = if rows.len() as i64 > PAGE {
                rows.truncate(PAGE as usize);
                rows.last().map(|r| r.id)
            } else {
                None
            };
            pages::events::audit(&user, &rows, next).into_response()
        }
        Err(e) => pages::unavailable("The audit trail could not be read", &e, &user),
    }
}
