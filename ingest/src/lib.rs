//! The HTTP edge of the pipeline. It verifies each webhook, stores it durably in RabbitMQ
//! (publisher confirm) and only then answers 200; everything else happens in the worker.
//!
//! - [`Ingest::build`] binds the webhook listener (`INGEST_ADDR`) and the metrics listener
//!   (`INGEST_METRICS_ADDR`, port 0 in tests) and starts the broker supervisor;
//! - [`Ingest::run`] serves until the shutdown token fires, then drains in-flight requests.
//!
//! `/metrics` is not on the webhook port: that port faces the internet, and the metrics tell
//! anyone who asks how much traffic each provider sends and how the broker is doing.
//!
//! Modules: [`webhook`] (the two webhook routes), [`client_ip`] (source allow-list),
//! [`error`] (answers), [`metrics`].

pub mod bundler;
pub mod client_ip;
pub mod error;
pub mod metrics;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::Request;
use secrecy::SecretString;
use serde_json::json;
use shared::broker::{Broker, BrokerOptions};
use shared::http_server::{self, json_response, text_response, HttpResponse, ServeOptions, PROMETHEUS_CONTENT_TYPE};
use shared::settings::{IngestSettings, Settings};
use shared::topology::{Declaring, Topology};
use shared::Provider;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::IngestMetrics;

pub const STRIPE_ROUTE: &str = "/api/webhooks/stripe";
pub const TOSS_ROUTE: &str = "/api/webhooks/toss";

/// Publisher channels shared by all requests (see `BrokerOptions::publish_channels`).
pub const PUBLISH_CHANNELS: usize = 4;

/// What every request handler reads.
pub struct AppState {
    pub settings: IngestSettings,
    pub stripe_secrets: Vec<SecretString>,
    pub broker: Broker,
    /// `{prefix}.events`, where every webhook is published.
    pub events_exchange: String,
    pub metrics: IngestMetrics,
    /// Caps requests in flight; beyond it ingest answers 503 at once instead of queueing work.
    pub inflight: Semaphore,
    /// Set when shutdown starts, so `/readyz` tells the load balancer to stop sending.
    pub draining: CancellationToken,
    /// With `INGEST_BUNDLE_MAX` above 1: publishes go through it.
    pub bundler: Option<bundler::Bundler>,
}

/// Connections the metrics listener holds at once: scrapers only.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// A bound, not yet serving, ingest.
pub struct Ingest {
    listener: TcpListener,
    metrics_listener: TcpListener,
    state: Arc<AppState>,
    broker_cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Ingest {
    /// Validates what ingest needs, binds `INGEST_ADDR` and `INGEST_METRICS_ADDR` and starts
    /// connecting to the broker. The broker may be down: ingest then answers 503 until it
    /// connects.
    pub async fn build(settings: IngestSettings) -> anyhow::Result<Self> {
        let stripe_secrets = settings.secrets.stripe_secrets()?;
        if settings.secrets.toss_webhook_secret.is_none() {
            tracing::warn!("TOSS_WEBHOOK_SECRET is not set: signed Toss events (payout.changed, seller.changed) will be refused with 400");
        }
        let listener = http_server::bind(settings.ingest.ingest_addr)
            .with_context(|| format!("cannot listen on INGEST_ADDR={}", settings.ingest.ingest_addr))?;
        let metrics_listener = http_server::bind(settings.ingest.ingest_metrics_addr)
            .with_context(|| format!("cannot listen on INGEST_METRICS_ADDR={}", settings.ingest.ingest_metrics_addr))?;
        let metrics = IngestMetrics::new();
        let broker_cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let options = BrokerOptions {
            connection_name: "ingest".into(),
            publish_channels: PUBLISH_CHANNELS,
            publish_timeout: settings.service.publish_timeout,
            // Ingest publishes; the worker owns the queues. As deployed, ingest's AMQP user may
            // not declare anything (deploy/rabbitmq/permissions).
            declaring: Declaring::IfMissing,
        };
        let broker = Broker::start(
            settings.common.amqp_url.clone(),
            // Notification delivery is the worker's to know about: ingest never declares it.
            Topology::from_settings(&settings.common),
            options,
            metrics.broker.clone(),
            broker_cancel.clone(),
            &tasks,
        );
        let bundle_max = settings.ingest.ingest_bundle_max;
        let bundler = (bundle_max > 1).then(|| {
            bundler::Bundler::start(
                broker.clone(),
                broker.topology().events_exchange(),
                bundle_max,
                PUBLISH_CHANNELS,
                metrics.bundle_webhooks.clone(),
            )
        });
        let state = Arc::new(AppState {
            bundler,
            inflight: Semaphore::new(settings.ingest.max_inflight_requests),
            events_exchange: broker.topology().events_exchange(),
            settings,
            stripe_secrets,
            broker,
            metrics,
            draining: CancellationToken::new(),
        });
        Ok(Self { listener, metrics_listener, state, broker_cancel, tasks })
    }

    /// Address of the webhook listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Address of the metrics listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` fires; then stops accepting, answers every in-flight request
    /// truthfully within `SHUTDOWN_TIMEOUT`, and closes the broker connection.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { listener, metrics_listener, state, broker_cancel, tasks } = self;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ingest listening");
        let metrics_stop = CancellationToken::new();
        let metrics = tokio::spawn(serve_metrics(metrics_listener, state.clone(), metrics_stop.clone()));
        let options = ServeOptions {
            header_read_timeout: state.settings.service.header_read_timeout,
            drain_deadline: state.settings.service.shutdown_timeout,
            max_connections: state.settings.ingest.max_connections,
            open_connections: Some(state.metrics.connections.clone()),
        };
        let draining = state.draining.clone();
        let handler_state = state.clone();
        let handler = move |request, peer| {
            let state = handler_state.clone();
            async move { route(&state, request, peer).await }
        };
        let serve = http_server::serve(listener, handler, options, shutdown.clone());
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => {}
            _ = shutdown.cancelled() => {
                draining.cancel();
                serve.await;
            }
        }
        broker_cancel.cancel();
        tasks.close();
        tasks.wait().await;
        // Scrapes are answered until the end, so the drain itself shows on the dashboard.
        metrics_stop.cancel();
        let _ = metrics.await;
        tracing::info!("ingest stopped");
    }
}

/// The `ingest` binary: reads the settings, starts the logs and serves until SIGTERM / Ctrl-C.
/// In the library so the end-to-end tests run the same program under a name of their own.
pub async fn main() -> anyhow::Result<()> {
    let settings = IngestSettings::load()?;
    let _logs = shared::telemetry::init(settings.service.log_format, "ingest").map_err(anyhow::Error::msg)?;
    let ingest = Ingest::build(settings).await?;
    ingest.run(shared::shutdown::token_on_signal()).await;
    Ok(())
}

/// Serves `GET /metrics` on the metrics listener until `stop` fires.
async fn serve_metrics(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ingest metrics listening");
    let options = ServeOptions {
        header_read_timeout: state.settings.service.header_read_timeout,
        drain_deadline: std::time::Duration::from_secs(1),
        max_connections: METRICS_MAX_CONNECTIONS,
        open_connections: None,
    };
    let handler = move |request: Request<Incoming>, _peer| {
        let state = state.clone();
        async move {
            match (request.uri().path(), request.method()) {
                ("/metrics", &Method::GET | &Method::HEAD) => metrics_response(&state),
                ("/metrics", _) => error::method_not_allowed("GET"),
                _ => error::not_found(),
            }
        }
    };
    http_server::serve(listener, handler, options, stop).await;
}

fn metrics_response(state: &AppState) -> HttpResponse {
    let available = state.inflight.available_permits();
    state.metrics.inflight.set((state.settings.ingest.max_inflight_requests - available) as i64);
    text_response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, shared::metrics::render(&state.metrics.registry))
}

async fn route(state: &AppState, request: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let request_id = request_id(request.headers());
    let id = request_id.to_str().expect("request ids are visible ASCII");
    let path = request.uri().path();
    let (provider, route) = match path {
        STRIPE_ROUTE => (Some(Provider::Stripe), STRIPE_ROUTE),
        TOSS_ROUTE => (Some(Provider::Toss), TOSS_ROUTE),
        "/healthz" => (None, "/healthz"),
        "/readyz" => (None, "/readyz"),
        // `/metrics` is served on INGEST_METRICS_ADDR only: here it is "other", a 404.
        _ => (None, "other"),
    };
    let mut response = match (provider, request.method()) {
        (Some(provider), &Method::POST) => webhook::handle(state, provider, request, peer, id).await,
        (Some(_), _) => error::method_not_allowed("POST"),
        (None, &Method::GET) | (None, &Method::HEAD) => match route {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => readiness(state),
            _ => error::not_found(),
        },
        (None, _) if route != "other" => error::method_not_allowed("GET"),
        (None, _) => error::not_found(),
    };
    state.metrics.count(provider, route, response.status());
    response.headers_mut().insert("x-request-id", request_id);
    response
}

/// The caller's `X-Request-Id` when it is a sane one (1 to 64 visible ASCII characters),
/// otherwise a new UUID.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            let mut buffer = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
            http::HeaderValue::from_str(id).expect("a UUID is a valid header value")
        })
}

fn readiness(state: &AppState) -> HttpResponse {
    let broker = state.broker.is_ready();
    let draining = state.draining.is_cancelled();
    let ready = broker && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &json!({"ready": ready, "broker": broker, "draining": draining}))
}
