//! GET /search and GET /orders/{order_id}.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::database;
use crate::app::AppState;
use crate::auth::{urlencode, LoggedIn};
use crate::pages;
use crate::read::search::MAX_QUERY;

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// Finds what was asked for; one order goes straight to its page.
pub async fn search(State(state): State<AppState>, user: LoggedIn, Query(query): Query<SearchQuery>) -> Response {
    let q = query.q.trim();
    if q.is_empty() || q.len() > MAX_QUERY || q.chars().any(char::is_control) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Search",
            "Give an order id, payment key, event id or request id (at most 200 characters).",
            Some(&user),
        );
    }
    let client = match database(&state, &user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    let found = match crate::read::search::search(&client, q).await {
        Ok(found) => found,
        Err(e) => return pages::unavailable("The search failed", &e, &user),
    };
    if let Some(order) = found.single_order() {
        return Redirect::to(&format!("/orders/{}", urlencode(order))).into_response();
    }
    if let ([(id, _, _)], true) = (found.orphan_events.as_slice(), found.orders.is_empty()) {
        return Redirect::to(&format!("/events/{id}")).into_response();
    }
    pages::order::search_results(&user, q, &found).into_response()
}

/// The order's whole story.
pub async fn order(State(state): State<AppState>, user: LoggedIn, Path(order_id): Path<String>) -> Response {
    let client = match database(&state, &user).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    match crate::read::order::load(&client, &order_id).await {
        Ok(Some(story)) => pages::order::page(&user, &story).into_response(),
        Ok(None) => pages::error_page(
            StatusCode::NOT_FOUND,
            "No such order",
            "Neither a payment nor any event has this order id.",
            Some(&user),
        ),
        Err(e) => pages::unavailable("The order could not be read", &e, &user),
    }
}
