//! The form token check, in one place for every state-changing request: a POST must be a form
//! (`application/x-www-form-urlencoded`) whose `csrf` field is its session's synchronizer token
//! (compared in constant time). Anything else is refused before a handler runs, and the
//! refusal is audited. GET and HEAD never change anything, so they need no token; other
//! methods have no route.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Visitor;
use crate::app::AppState;
use crate::audit::{self, Outcome};

/// Largest form accepted: a selection of a few hundred ids.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Middleware; runs after [`super::authenticate`].
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let visitor = parts.extensions.get::<Visitor>().cloned();
    let form = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    let refuse = async |status: StatusCode, why: &'static str| {
        let (actor, role) = match visitor.as_ref().and_then(Visitor::identity) {
            Some(identity) => (identity.user.clone(), identity.role.as_str()),
            None => ("-".to_string(), "-"),
        };
        let address = visitor.as_ref().map_or(std::net::IpAddr::from([0, 0, 0, 0]), |v| v.address);
        audit::record(
            &state.pool,
            audit::Entry {
                actor: &actor,
                role,
                address,
                action: "form",
                target: parts.uri.path(),
                outcome: Outcome::Refused,
                detail: why,
            },
        )
        .await;
        (status, why).into_response()
    };
    if !form {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "only forms are accepted").await;
    }
    let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "form too large").await;
    };
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let submitted = fields.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
    let Some(session) = visitor.as_ref().and_then(|v| v.session.as_ref()) else {
        return refuse(StatusCode::FORBIDDEN, "no session: the page expired, load it again").await;
    };
    if !session.csrf_matches(submitted) {
        return refuse(StatusCode::FORBIDDEN, "form token missing or wrong").await;
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
