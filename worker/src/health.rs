//! The worker's own small HTTP listener (`WORKER_ADDR`): `/healthz`, `/readyz`, `/metrics`;
//! and the sampler that keeps queue-depth and outbox gauges current.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::Request;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;
use shared::broker::Broker;
use shared::http_server::{json_response, text_response, HttpResponse, PROMETHEUS_CONTENT_TYPE};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;
use crate::pipeline::halt::Halt;
use crate::store::Store;

/// How often queue depths and the outbox backlog are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// `/readyz` answers within this even when the database hangs.
const DB_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the listener and the sampler read.
#[derive(Clone)]
pub struct Health {
    pub broker: Broker,
    pub store: Store,
    pub halt: Arc<Halt>,
    pub metrics: WorkerMetrics,
    /// An outbox backlog this large is logged (`OUTBOX_BATCH_SIZE`: a full relay batch).
    pub backlog_warning: i64,
}

pub async fn route(deps: &Health, draining: &CancellationToken, request: Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed", "detail": "use GET"}),
        );
    }
    match request.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            let broker = deps.broker.is_ready();
            let database = database_reachable(deps).await;
            let draining = draining.is_cancelled();
            let halted = deps.halt.reason();
            let ready = broker && database && !draining && halted.is_none();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(
                status,
                &json!({"ready": ready, "broker": broker, "database": database, "draining": draining, "halted": halted}),
            )
        }
        "/metrics" => {
            text_response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, shared::metrics::render(&deps.metrics.registry))
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found", "detail": "no such route"})),
    }
}

async fn database_reachable(deps: &Health) -> bool {
    matches!(tokio::time::timeout(DB_PING_TIMEOUT, deps.store.answers()).await, Ok(true))
}

/// Samples queue depths and the outbox backlog until `stop` fires.
pub async fn sample_gauges(deps: Health, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(link) = deps.broker.current() {
            for queue in deps.broker.topology().queues() {
                // A passive declare of a missing queue closes its channel, so each gets its own.
                let Ok(channel) = link.connection().create_channel().await else { break };
                let options = QueueDeclareOptions { passive: true, ..Default::default() };
                if let Ok(q) = channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await {
                    deps.metrics.queue_depth.with_label_values(&[&queue]).set(i64::from(q.message_count()));
                }
                let _ = channel.close(200, "".into()).await;
            }
        }
        if let Some(pending) = deps.store.outbox_backlog().await {
            deps.metrics.outbox_pending.set(pending);
            if pending >= deps.backlog_warning {
                tracing::warn!(pending, "outbox backlog: notifications are waiting for the broker");
            }
        }
    }
}
