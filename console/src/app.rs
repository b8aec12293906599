//! The application: its state, its routes and the layers every request passes (security
//! headers, then who is asking, then the form token check), served on the project's own
//! HTTP/1 accept loop (`shared::http_server`: connection cap, header timeout, graceful drain).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use shared::http_server::{HttpResponse, ServeOptions};
use shared::topology::Topology;
use shared::verify::message::WebhookSecrets;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::limiter::LoginLimiter;
use crate::auth::session::SessionStore;
use crate::auth::users::Directory;
use crate::broker::BrokerHandle;
use crate::routes;
use crate::settings::{ConsoleSettings, PipelineSettings};

/// Everything a handler may use, behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: PipelineSettings,
    pub console: ConsoleSettings,
    pub topology: Topology,
    pub pool: deadpool_postgres::Pool,
    pub broker: BrokerHandle,
    pub sessions: SessionStore,
    pub users: Directory,
    pub limiter: LoginLimiter,
    /// `Secure` on the session cookie.
    pub cookie_secure: bool,
    /// For the workers' `/readyz`.
    pub http: reqwest::Client,
    /// The secrets a replayed event is checked with; `None` without `STRIPE_WEBHOOK_SECRET`.
    pub secrets: Option<WebhookSecrets>,
    pub overview: routes::overview::Cache,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Open connections at most: a few people on call, and a bound whatever a client does.
const MAX_CONNECTIONS: usize = 256;
/// Longest time a request may take (a replay of many messages included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer collected (pages are a few hundred KiB at most).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A console bound to its address, ready to run.
pub struct Console {
    listener: TcpListener,
    state: AppState,
}

impl Console {
    /// Binds `CONSOLE_ADDR` and prepares the pool and the broker handle (both connect lazily).
    pub async fn build(settings: PipelineSettings, console: ConsoleSettings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(console.console_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on CONSOLE_ADDR {}: {e}", console.console_addr))?;
        let bound = listener.local_addr()?;
        let pool = crate::db::pool(&settings.database)?;
        let secrets = WebhookSecrets::from_settings(&settings.secrets)
            .ok()
            .map(|secrets| secrets.with_stripe_api_key(settings.reconcile.stripe_api_key.as_ref()));
        if secrets.is_none() {
            tracing::warn!(
                "STRIPE_WEBHOOK_SECRET is not set: the console cannot check, so will not replay, dead events"
            );
        }
        if console.console_users.is_empty() && console.console_trusted_proxies.is_empty() {
            tracing::warn!("no CONSOLE_USERS and no CONSOLE_TRUSTED_PROXIES: nobody can log in");
        }
        let state = AppState(Arc::new(Inner {
            topology: Topology::from_settings(&settings.common),
            broker: BrokerHandle::new(settings.common.amqp_url.clone()),
            sessions: SessionStore::new(console.console_session_ttl, console.console_session_idle),
            users: Directory::new(console.console_users.clone()),
            limiter: LoginLimiter::default(),
            cookie_secure: console.cookie_secure(bound),
            http: crate::workers::client(),
            overview: Default::default(),
            secrets,
            pool,
            settings,
            console,
        }));
        tracing::info!(addr = %bound, secure_cookie = state.cookie_secure, "console listening");
        Ok(Self { listener, state })
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The application's state (benchmarks and tests drive the router directly).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` fires, then drains.
    pub async fn run(self, shutdown: CancellationToken) {
        let router = router(self.state.clone());
        let options = ServeOptions {
            header_read_timeout: self.state.settings.service.header_read_timeout,
            drain_deadline: self.state.settings.service.shutdown_timeout,
            max_connections: MAX_CONNECTIONS,
            open_connections: None,
        };
        let handler = move |request: hyper::Request<hyper::body::Incoming>, peer: SocketAddr| {
            let router = router.clone();
            async move { call(router, request.map(Body::new), peer).await }
        };
        shared::http_server::serve(self.listener, handler, options, shutdown).await;
        self.state.broker.close().await;
    }
}

/// Every route, inside the layers (outermost first: headers, authentication, form token).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(routes::overview::page))
        .route("/login", get(routes::login::form).post(routes::login::submit))
        .route("/logout", post(routes::login::logout))
        .route("/search", get(routes::orders::search))
        .route("/orders/{order_id}", get(routes::orders::order))
        .route("/events", get(routes::events::list))
        .route("/events/{id}", get(routes::events::one))
        .route("/dead", get(routes::dead::list))
        .route("/dead/show", get(routes::dead::show))
        .route("/dead/replay", post(routes::dead::replay))
        .route("/dead/purge", post(routes::dead::purge))
        .route("/unverified", get(routes::unverified::list))
        .route("/unverified/recheck", post(routes::unverified::recheck))
        .route("/audit", get(routes::audit::list))
        .route("/static/console.css", get(routes::assets::stylesheet))
        .route("/healthz", get(routes::assets::healthz))
        .fallback(routes::assets::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::csrf::check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate))
        .layer(axum::middleware::from_fn(crate::security::headers))
        .with_state(state)
}

/// Runs one request through the router, as coming from `peer`, within [`REQUEST_TIMEOUT`].
pub async fn call(router: Router, mut request: http::Request<Body>, peer: SocketAddr) -> HttpResponse {
    request.extensions_mut().insert(ConnectInfo(peer));
    let answered = tokio::time::timeout(REQUEST_TIMEOUT, router.oneshot(request)).await;
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => return plain(http::StatusCode::GATEWAY_TIMEOUT, "the request took too long"),
    };
    let (parts, body) = response.into_parts();
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => http::Response::from_parts(parts, Full::new(collected.to_bytes())),
        Err(_) => plain(http::StatusCode::INTERNAL_SERVER_ERROR, "the answer could not be produced"),
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> HttpResponse {
    let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
