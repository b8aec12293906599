//! The HTML, rendered on the server with `maud` (checked when compiled; every value escaped).
//! No script and no inline style: the pages work without JavaScript and under a
//! `default-src 'self'` policy, with one stylesheet (`static/console.css`).

pub mod dead;
pub mod events;
pub mod login;
pub mod order;
pub mod overview;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::auth::LoggedIn;

/// Which entry of the navigation is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Search,
    Dead,
    Unverified,
    Audit,
    None,
}

/// The page around `content`: header, navigation (with the logout form), main.
pub fn layout(title: &str, section: Section, user: Option<&LoggedIn>, content: Markup) -> Markup {
    let nav = [
        (Section::Overview, "/", "Overview"),
        (Section::Dead, "/dead", "Dead letters"),
        (Section::Unverified, "/unverified", "Unverified"),
        (Section::Audit, "/audit", "Audit"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Payments console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/" { "Payments console" }
                    @if let Some(user) = user {
                        nav aria-label="Main" {
                            ul {
                                @for (entry, href, label) in nav {
                                    li {
                                        @if entry == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form class="search" method="get" action="/search" role="search" {
                            label for="q" { "Search" }
                            input id="q" name="q" type="search" required
                                placeholder="order id, payment key, event id, request id"
                                maxlength=(crate::read::search::MAX_QUERY);
                            button type="submit" { "Find" }
                        }
                        form class="who" method="post" action="/logout" {
                            span { (user.identity.user) " " span class="role" { "(" (user.identity.role.as_str()) ")" } }
                            (csrf_field(user))
                            button type="submit" class="link" { "Log out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The hidden form token every form carries.
pub fn csrf_field(user: &LoggedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.session.csrf); }
}

/// A page that says what went wrong, with `status`.
pub fn error_page(status: StatusCode, title: &str, text: &str, user: Option<&LoggedIn>) -> Response {
    let body = layout(title, Section::None, user, html! { p class="notice" { (text) } });
    (status, body).into_response()
}

/// A database or broker failure, for the person looking: what failed, not its internals.
pub fn unavailable(what: &str, error: &anyhow::Error, user: &LoggedIn) -> Response {
    tracing::warn!(error = %format!("{error:#}"), "{what}");
    error_page(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", &format!("{what}. Try again in a moment."), Some(user))
}

/// `2026-01-02 05:46:59 UTC`.
pub fn time(at: &DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// `3 min ago`, `2 h ago`, `4 d ago`.
pub fn age(at: &DateTime<Utc>) -> String {
    let seconds = (Utc::now() - *at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// An event status with a class for its colour (the word itself carries the meaning).
pub fn event_status(status: &str) -> Markup {
    let class = crate::read::known_status(status).unwrap_or("other");
    html! { span class={ "status st-" (class) } { (status) } }
}

/// A payment status, likewise.
pub fn payment_status(status: &str) -> Markup {
    let class = status.parse::<shared::status::PaymentStatus>().map(|s| s.as_str()).unwrap_or("other");
    html! { span class={ "status pay-" (class) } { (status) } }
}

/// Text from outside (payloads, errors): shown as text, never markup; `maud` escapes it.
pub fn text_or_dash(value: Option<&str>) -> Markup {
    match value {
        Some(v) if !v.is_empty() => html! { (v) },
        _ => html! { span class="muted" { "–" } },
    }
}

/// A non-breaking dash, for empty cells.
pub fn dash() -> Markup {
    PreEscaped("<span class=\"muted\">–</span>".to_string())
}
