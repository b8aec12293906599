//! Logging in and out. A password login is rate-limited per account and per address before the
//! password is checked, replaces the visitor's anonymous session with a new one, and is
//! audited, as is every failure.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use secrecy::SecretString;
use serde::Deserialize;

use crate::app::AppState;
use crate::audit::{self, Outcome};
use crate::auth::limiter::Limited;
use crate::auth::{removal_cookie, safe_next, session_cookie, LoggedIn, Visitor};
use crate::pages;

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// GET /login: the form, in an anonymous session of its own (for its form token).
pub async fn form(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<NextQuery>,
) -> Response {
    if visitor.identity().is_some() {
        return Redirect::to(safe_next(query.next.as_deref())).into_response();
    }
    let next = safe_next(query.next.as_deref()).to_string();
    let (session, cookie) = match visitor.session {
        Some(session) => (session, None),
        None => {
            let session = state.sessions.create(None);
            let cookie = session_cookie(&session.token, state.cookie_secure);
            (session, Some(cookie))
        }
    };
    let page = pages::login::page(&session.csrf, &next, None, !state.users.is_empty());
    let mut response = page.into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    next: Option<String>,
    csrf: String,
}

/// POST /login.
pub async fn submit(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<LoginForm>,
) -> Response {
    // The form token was checked by the layer; this session is the one it belongs to.
    let Some(session) = visitor.session.clone() else { return StatusCode::FORBIDDEN.into_response() };
    let user = form.user.trim().to_string();
    let entry = |outcome, detail| audit::Entry {
        actor: &user,
        role: "-",
        address: visitor.address,
        action: "login",
        target: "",
        outcome,
        detail,
    };
    let again = |status: StatusCode, error: &str| {
        let page =
            pages::login::page(&form.csrf, safe_next(form.next.as_deref()), Some(error), !state.users.is_empty());
        (status, page).into_response()
    };
    if let Err(limited) = state.limiter.attempt(&user, visitor.address) {
        let detail = match limited {
            Limited::Account => "rate limited: too many attempts at this account",
            Limited::Address => "rate limited: too many attempts from this address",
        };
        audit::record(&state.pool, entry(Outcome::Refused, detail)).await;
        return again(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Wait a minute, then try again.");
    }
    let Some(found) = state.users.verify(&user, SecretString::from(form.password)).await else {
        audit::record(&state.pool, entry(Outcome::Refused, "wrong user name or password")).await;
        return again(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
    };
    state.sessions.remove(&session.token);
    let identity = crate::auth::session::Identity { user: found.name.clone(), role: found.role, via_proxy: false };
    let fresh = state.sessions.create(Some(identity));
    audit::record(&state.pool, audit::Entry { role: found.role.as_str(), ..entry(Outcome::Ok, "password") }).await;
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&fresh.token, state.cookie_secure));
    response
}

/// POST /logout.
pub async fn logout(State(state): State<AppState>, user: LoggedIn) -> Response {
    state.sessions.remove(&user.session.token);
    audit::record(
        &state.pool,
        audit::Entry {
            actor: &user.identity.user,
            role: user.identity.role.as_str(),
            address: user.address,
            action: "logout",
            target: "",
            outcome: Outcome::Ok,
            detail: "",
        },
    )
    .await;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, removal_cookie(state.cookie_secure));
    response
}
