//! Who is asking. Nobody gets past the login page without a session that names a user, made
//! either by a password login or, behind an SSO proxy, by the proxy's identity header, which
//! is believed only from the configured proxy addresses. Every state change is a POST that
//! carries the session's form token ([`csrf`]); operator actions also need the operator role.

pub mod csrf;
pub mod limiter;
pub mod session;
pub mod users;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};

use self::session::{cookie_name, Identity, Session};
use self::users::{valid_name, Role};
use crate::app::AppState;
use crate::audit::{self, Outcome};

/// What the authentication layer learnt about a request, for the handlers.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The client's address: the peer, or behind a trusted proxy the address it reports.
    pub address: IpAddr,
    pub session: Option<Session>,
}

impl Visitor {
    pub fn identity(&self) -> Option<&Identity> {
        self.session.as_ref().and_then(|s| s.identity.as_ref())
    }
}

/// The cookie that carries `token`.
pub fn session_cookie(token: &str, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((cookie_name(secure), token.to_string()))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie is a valid header value")
}

/// The cookie that ends a session in the browser.
pub fn removal_cookie(secure: bool) -> HeaderValue {
    let cookie = Cookie::build((cookie_name(secure), ""))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie is a valid header value")
}

fn session_token(parts: &Parts, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Middleware: resolves the session (or the trusted proxy's identity) and puts a [`Visitor`]
/// in the request. A proxy identity header from anywhere but a trusted proxy is refused.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let peer =
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let from_proxy = state.console.console_trusted_proxies.iter().any(|net| net.contains(&peer));
    let address = if from_proxy { forwarded_for(&parts).unwrap_or(peer) } else { peer };
    let secure = state.cookie_secure;
    let mut session = session_token(&parts, secure).and_then(|token| state.sessions.get(&token));
    let mut new_cookie = None;

    let user_header = parts.headers.get(state.console.console_user_header.as_str());
    if let Some(user_header) = user_header {
        let claimed = String::from_utf8_lossy(user_header.as_bytes()).into_owned();
        if !from_proxy {
            audit::record(
                &state.pool,
                audit::Entry {
                    actor: &claimed,
                    role: "-",
                    address,
                    action: "login-header",
                    target: "",
                    outcome: Outcome::Refused,
                    detail: "identity header from an address that is not a trusted proxy",
                },
            )
            .await;
            return (StatusCode::FORBIDDEN, "identity headers are accepted only from the configured proxies")
                .into_response();
        }
        let role_header = parts.headers.get(state.console.console_role_header.as_str());
        let role = match role_header.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()) {
            None => Some(Role::Viewer),
            Some(raw) => Role::parse(&raw),
        };
        let (Some(role), true) = (role, valid_name(&claimed)) else {
            return (StatusCode::FORBIDDEN, "the proxy's identity headers name no valid user and role").into_response();
        };
        let identity = Identity { user: claimed, role, via_proxy: true };
        if session.as_ref().and_then(|s| s.identity.as_ref()) != Some(&identity) {
            if let Some(old) = &session {
                state.sessions.remove(&old.token);
            }
            let fresh = state.sessions.create(Some(identity.clone()));
            new_cookie = Some(session_cookie(&fresh.token, secure));
            audit::record(
                &state.pool,
                audit::Entry {
                    actor: &identity.user,
                    role: identity.role.as_str(),
                    address,
                    action: "login-header",
                    target: "",
                    outcome: Outcome::Ok,
                    detail: "identity from the trusted proxy",
                },
            )
            .await;
            session = Some(fresh);
        }
    } else if session.as_ref().and_then(|s| s.identity.as_ref()).is_some_and(|i| i.via_proxy) {
        // A proxy session is good only while the proxy vouches for each request.
        session = None;
    }

    parts.extensions.insert(Visitor { address, session });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The client address a trusted proxy appended last to `X-Forwarded-For`.
fn forwarded_for(parts: &Parts) -> Option<IpAddr> {
    let value = parts.headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// A logged-in user; anyone else is sent to the login page (for any method: nothing happens).
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub identity: Identity,
    pub session: Session,
    pub address: IpAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let visitor = parts.extensions.get::<Visitor>().cloned();
        let Some(visitor) = visitor else { return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()) };
        match (&visitor.session, visitor.identity()) {
            (Some(session), Some(identity)) => {
                Ok(Self { identity: identity.clone(), session: session.clone(), address: visitor.address })
            }
            _ => {
                let next =
                    if parts.method == Method::GET { parts.uri.path_and_query().map(|p| p.as_str()) } else { None };
                let target = match next {
                    Some(next) if next != "/" => format!("/login?next={}", urlencode(next)),
                    _ => "/login".to_string(),
                };
                Err(Redirect::to(&target).into_response())
            }
        }
    }
}

/// A logged-in operator; a viewer is refused (403, and the refusal is audited).
#[derive(Debug, Clone)]
pub struct Operator(pub LoggedIn);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = LoggedIn::from_request_parts(parts, state).await?;
        if user.identity.role >= Role::Operator {
            return Ok(Self(user));
        }
        let action = parts.uri.path().to_string();
        audit::record(
            &state.pool,
            audit::Entry {
                actor: &user.identity.user,
                role: user.identity.role.as_str(),
                address: user.address,
                action: "operator-action",
                target: &action,
                outcome: Outcome::Refused,
                detail: "needs the operator role",
            },
        )
        .await;
        Err(crate::pages::error_page(
            StatusCode::FORBIDDEN,
            "Operators only",
            "Your role may look, not act.",
            Some(&user),
        ))
    }
}

/// Percent-encodes a value for a query string.
pub fn urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where to go after a login: a path of this site only (never `//host` or a URL).
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/login") => n,
        _ => "/",
    }
}
