//! GET /unverified and POST /unverified/recheck ("verify now", operators).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{database, field, field_values, form_fields};
use crate::actions;
use crate::app::AppState;
use crate::audit::{self, Outcome};
use crate::auth::{LoggedIn, Operator};
use crate::pages;

#[derive(Deserialize)]
pub struct ListQuery {
    before_at: Option<String>,
    before_id: Option<i64>,
}

pub async fn list(State(state): State<AppState>, user: LoggedIn, Query(query): Query<ListQuery>) -> Response {
    let before = match (query.before_at.as_deref().map(DateTime::parse_from_rfc3339), query.before_id) {
        (Some(Ok(at)), Some(id)) => Some((at.with_timezone(&Utc), id)),
        (None, None) => None,
        _ => return pages::error_page(StatusCode::BAD_REQUEST, "Unverified events", "Bad page cursor.", Some(&user)),
    };
    render(&state, &user, before, None).await
}

async fn render(
    state: &AppState,
    user: &LoggedIn,
    before: Option<(DateTime<Utc>, i64)>,
    message: Option<&str>,
) -> Response {
    let client = match database(state, user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    match crate::read::lists::unverified(&client, before).await {
        Ok((events, next)) => {
            let recheck = actions::recheck_possible(&state.settings);
            pages::events::unverified(user, &events, next, recheck, message).into_response()
        }
        Err(e) => pages::unavailable("The unverified events could not be read", &e, user),
    }
}

/// Sends the selected (`key`…) or all (`scope=all`) unverified events to the workers again.
pub async fn recheck(State(state): State<AppState>, Operator(user): Operator, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let all = field(&fields, "scope") == Some("all");
    let keys: Vec<String> = field_values(&fields, "key").into_iter().map(str::to_string).collect();
    let target = if all { "all unverified events".to_string() } else { keys.join(", ") };
    let record = async |outcome, detail: &str| {
        audit::record(
            &state.pool,
            audit::Entry {
                actor: &user.identity.user,
                role: user.identity.role.as_str(),
                address: user.address,
                action: "recheck",
                target: &target,
                outcome,
                detail,
            },
        )
        .await;
    };
    if !all && keys.is_empty() {
        record(Outcome::Refused, "nothing selected").await;
        return pages::error_page(StatusCode::BAD_REQUEST, "Verify now", "Select at least one event.", Some(&user));
    }
    if let Err(why) = actions::recheck_possible(&state.settings) {
        record(Outcome::Refused, &why).await;
        return pages::error_page(StatusCode::CONFLICT, "Verify now", &why, Some(&user));
    }
    let client = match database(&state, &user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    let keys = (!all).then_some(keys);
    match actions::recheck(&state.settings, &client, &state.broker, &state.topology, keys).await {
        Ok(report) => {
            let sent = report.sent.len();
            let missing = match report.missing.as_slice() {
                [] => String::new(),
                keys => format!("; no longer unverified: {}", keys.join(", ")),
            };
            if let Some(error) = &report.stopped {
                let detail = format!("sent {sent} event(s), then stopped: {error}{missing}");
                record(Outcome::Failed, &detail).await;
                let shown = format!("{sent} event(s) were sent to the workers again, then it stopped: {error}");
                return pages::error_page(StatusCode::SERVICE_UNAVAILABLE, "Verify now failed", &shown, Some(&user));
            }
            record(Outcome::Ok, &format!("sent {sent} event(s) to the workers again{missing}")).await;
            let message = format!(
                "{sent} event(s) sent to the workers again{missing}; each order page shows the outcome once a worker \
                 decided it."
            );
            render(&state, &user, None, Some(&message)).await
        }
        Err(e) => {
            record(Outcome::Failed, &format!("{e:#}")).await;
            pages::error_page(StatusCode::SERVICE_UNAVAILABLE, "Verify now failed", &format!("{e:#}"), Some(&user))
        }
    }
}
