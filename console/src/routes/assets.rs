//! The stylesheet (vendored in the binary: no CDN, works offline), `/healthz`, and 404.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The one stylesheet.
pub const STYLESHEET: &str = include_str!("../../static/console.css");

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response()
}

/// 200 while the process runs (for container health checks).
pub async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response()
}

pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}
