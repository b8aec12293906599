//! GET /events (a filtered, keyset-paginated list) and GET /events/{id}.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::database;
use crate::app::AppState;
use crate::auth::LoggedIn;
use crate::pages;
use crate::read::lists::EventFilter;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    provider: Option<String>,
    minute: Option<String>,
    before: Option<i64>,
}

pub async fn list(State(state): State<AppState>, user: LoggedIn, Query(query): Query<ListQuery>) -> Response {
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    let provider = query.provider.as_deref().filter(|s| !s.is_empty());
    let minute = query.minute.as_deref().filter(|s| !s.is_empty());
    let filter = EventFilter {
        status: match status {
            None => None,
            Some(s) => match crate::read::known_status(s) {
                Some(s) => Some(s),
                None => return bad(&user, "Unknown status."),
            },
        },
        provider: match provider {
            None => None,
            Some("stripe") => Some("stripe"),
            Some("toss") => Some("toss"),
            Some(_) => return bad(&user, "Unknown provider."),
        },
        minute: match minute.map(DateTime::parse_from_rfc3339) {
            None => None,
            Some(Ok(t)) => Some(t.with_timezone(&Utc)),
            Some(Err(_)) => return bad(&user, "The minute is not a time."),
        },
        before: query.before,
    };
    let client = match database(&state, &user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    match crate::read::lists::events(&client, &filter).await {
        Ok((events, next)) => pages::events::list(&user, &filter, &events, next).into_response(),
        Err(e) => pages::unavailable("The events could not be read", &e, &user),
    }
}

pub async fn one(State(state): State<AppState>, user: LoggedIn, Path(id): Path<i64>) -> Response {
    let client = match database(&state, &user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    match crate::read::order::event(&client, id).await {
        Ok(Some(event)) => pages::events::one(&user, &event).into_response(),
        Ok(None) => pages::error_page(StatusCode::NOT_FOUND, "No such event", "It may have been pruned.", Some(&user)),
        Err(e) => pages::unavailable("The event could not be read", &e, &user),
    }
}

fn bad(user: &LoggedIn, why: &str) -> Response {
    pages::error_page(StatusCode::BAD_REQUEST, "Events", why, Some(user))
}
