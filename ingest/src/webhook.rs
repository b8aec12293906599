//! The two webhook routes: read the body within limits, verify it, queue it with a publisher
//! confirm, and only then answer 200.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::Request;
use shared::broker::PublishError;
use shared::envelope::{EnvelopeHeaders, IngestVerification, DELIVERY_HEADERS, MAX_DELIVERY_HEADER_LEN};
use shared::http_server::HttpResponse;
use shared::providers::check_event_identity;
use shared::providers::stripe_head::parse_stripe_event_head;
use shared::providers::toss::parse_toss_event;
use shared::topology::Topology;
use shared::traces::TRACEPARENT;
use shared::verify::stripe::{verify_stripe_signature, StripeSignatureError};
use shared::verify::toss::{verify_toss_signature, Freshness, TossSignatureError};
use shared::Provider;
use tracing::Instrument;

use crate::client_ip::{client_ip, is_allowed};
use crate::error::RejectReason;
use crate::AppState;

/// Handles `POST /api/webhooks/{stripe,toss}`. One log line per webhook: the guide's line
/// (`[Stripe Webhook] Event received`, `[Toss Webhook] Received`) once the event is stored,
/// otherwise why it was refused.
pub async fn handle(
    state: &AppState,
    provider: Provider,
    request: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
) -> HttpResponse {
    let started = Instant::now();
    let span = tracing::info_span!(
        "webhook",
        request_id,
        provider = provider.as_str(),
        event_id = tracing::field::Empty,
        order_id = tracing::field::Empty,
        status = tracing::field::Empty
    );
    // A trace begun before this request (a gateway, a load balancer) goes on through it.
    if let Some(parent) = request.headers().get(TRACEPARENT).and_then(|value| value.to_str().ok()) {
        shared::traces::continue_trace(&span, parent);
    }
    let response = async {
        let result = receive(state, provider, request, peer, request_id).await;
        let response = match result {
            Ok(()) => accepted(),
            Err(reason) => {
                if reason.status().is_server_error() {
                    tracing::warn!(code = reason.code(), detail = %reason, "webhook not queued");
                } else {
                    tracing::info!(code = reason.code(), detail = %reason, "webhook rejected");
                }
                reason.into_response()
            }
        };
        tracing::Span::current().record("status", response.status().as_u16());
        response
    }
    .instrument(span)
    .await;
    state.metrics.latency(provider).observe(started.elapsed().as_secs_f64());
    response
}

/// `200 {"received":true}`, the answer Stripe's and Toss's own examples give.
fn accepted() -> HttpResponse {
    let mut response = HttpResponse::new(Full::new(Bytes::from_static(br#"{"received":true}"#)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn receive(
    state: &AppState,
    provider: Provider,
    request: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
) -> Result<(), RejectReason> {
    let _permit = state.inflight.try_acquire().map_err(|_| RejectReason::Saturated)?;

    if provider == Provider::Toss && !state.settings.ingest.toss_allowed_ips.is_empty() {
        check_toss_source(state, request.headers(), peer)?;
    }
    let (parts, body) = request.into_parts();
    // The body stays in hyper's buffer: verified, parsed and published from there.
    let limit = match provider {
        Provider::Stripe => state.settings.ingest.max_body_bytes,
        // Anyone can post an unsigned Toss payment event, and Toss's objects are a few KiB.
        Provider::Toss => state.settings.ingest.toss_max_body_bytes,
    };
    let body = read_body(state, limit, &parts.headers, body).await?;
    let headers = &parts.headers;
    let accepted = match provider {
        Provider::Stripe => verify_stripe(state, headers, &body)?,
        Provider::Toss => verify_toss(state, headers, &body)?,
    };
    let span = tracing::Span::current();
    span.record("event_id", &*accepted.event_key);
    if let Some(order_id) = &accepted.order_id {
        span.record("order_id", &**order_id);
    }

    // The worker continues this request's trace: this span's when traces are exported, else the
    // one the request came with, if any.
    let traceparent = shared::traces::traceparent(&span);
    let trace_header = traceparent.as_deref().map(|value| (TRACEPARENT, value));
    let properties = EnvelopeHeaders {
        provider,
        event_type: &accepted.event_type,
        event_key: &accepted.event_key,
        verification: accepted.verification,
        received_at: Utc::now(),
        request_id,
        attempt: 0,
    }
    .properties(delivery_headers(headers).chain(trace_header));
    let routing_key = Topology::routing_key(provider.as_str(), &accepted.event_type);
    let published = match &state.bundler {
        Some(bundler) => bundler.publish(routing_key, body.clone(), properties).await,
        None => state.broker.publish_bytes(&state.events_exchange, &routing_key, body.clone(), properties).await,
    };
    published.map_err(|error| match error {
        PublishError::InvalidName => RejectReason::MalformedBody("event type too long for a routing key".into()),
        error => {
            tracing::warn!(%error, "publish not confirmed");
            RejectReason::BrokerUnavailable
        }
    })?;
    let verification = accepted.verification.as_str();
    match provider {
        Provider::Stripe => tracing::info!(
            r#type = &*accepted.event_type,
            id = &*accepted.event_key,
            verification,
            "[Stripe Webhook] Event received"
        ),
        Provider::Toss => tracing::info!(
            event_type = &*accepted.event_type,
            order_id = accepted.order_id.as_deref().unwrap_or(""),
            status = accepted.status.as_deref().unwrap_or(""),
            verification,
            "[Toss Webhook] Received"
        ),
    }
    Ok(())
}

/// The provider's delivery headers to carry along. Each is capped: they are informational,
/// and an oversized AMQP header frame would make the broker drop the shared connection.
fn delivery_headers(headers: &HeaderMap) -> impl Iterator<Item = (&'static str, &str)> {
    DELIVERY_HEADERS.iter().filter_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?;
        if value.len() > MAX_DELIVERY_HEADER_LEN {
            tracing::warn!(header = %name, length = value.len(), "oversized delivery header not carried along");
            return None;
        }
        Some((*name, value))
    })
}

fn check_toss_source(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), RejectReason> {
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    match client_ip(
        peer.ip(),
        forwarded,
        state.settings.ingest.trusted_proxy_hops,
        &state.settings.ingest.trusted_proxies,
    ) {
        Some(ip) if is_allowed(ip, &state.settings.ingest.toss_allowed_ips) => Ok(()),
        client => {
            tracing::warn!(peer = %peer.ip(), client = ?client, "Toss webhook from a source outside TOSS_ALLOWED_IPS");
            Err(RejectReason::ForbiddenSource)
        }
    }
}

/// Reads the whole body: refused early when `Content-Length` is over `limit`, cut off when
/// the stream passes it, and abandoned when the client is slower than `BODY_READ_TIMEOUT`.
async fn read_body(state: &AppState, limit: usize, headers: &HeaderMap, body: Incoming) -> Result<Bytes, RejectReason> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RejectReason::TooLarge(limit));
    }
    let timeout = state.settings.ingest.body_read_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(RejectReason::BodyTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(RejectReason::TooLarge(limit)),
        Ok(Err(_)) => Err(RejectReason::BodyUnreadable),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What verification established about a request, borrowed from its body where possible.
struct Accepted<'a> {
    event_type: Cow<'a, str>,
    event_key: Cow<'a, str>,
    verification: IngestVerification,
    order_id: Option<Cow<'a, str>>,
    /// Toss's payment status, for the log line.
    status: Option<Cow<'a, str>>,
}

fn verify_stripe<'a>(state: &AppState, headers: &HeaderMap, body: &'a [u8]) -> Result<Accepted<'a>, RejectReason> {
    verify_stripe_signature(
        body,
        header(headers, "stripe-signature"),
        &state.stripe_secrets,
        state.settings.ingest.stripe_tolerance,
        Utc::now().timestamp(),
    )
    .map_err(|e| {
        let detail = match e {
            StripeSignatureError::Stale | StripeSignatureError::Future => {
                format!("{e} ({:?})", state.settings.ingest.stripe_tolerance)
            }
            other => other.to_string(),
        };
        RejectReason::BadSignature(detail)
    })?;
    let event = parse_stripe_event_head(body).map_err(|e| RejectReason::MalformedBody(e.to_string()))?;
    check_event_identity(&event.event_type, &event.id).map_err(|e| RejectReason::MalformedBody(e.to_string()))?;
    Ok(Accepted {
        event_type: event.event_type,
        event_key: event.id,
        verification: IngestVerification::Signature,
        order_id: event.order_id,
        status: None,
    })
}

fn verify_toss<'a>(state: &AppState, headers: &HeaderMap, body: &'a [u8]) -> Result<Accepted<'a>, RejectReason> {
    let event = parse_toss_event(body).map_err(|e| RejectReason::MalformedBody(e.to_string()))?;
    let key = event.event_key();
    check_event_identity(&event.event_type, &key).map_err(|e| RejectReason::MalformedBody(e.to_string()))?;
    let signature = header(headers, "tosspayments-webhook-signature");
    // Toss signs only payout and seller events. A signature on anything else is still checked
    // when a key is configured: a wrong one is never let through.
    let verification = match (&state.settings.secrets.toss_webhook_secret, event.is_signed_type(), signature) {
        (None, true, _) => return Err(RejectReason::SignatureUnverifiable),
        (Some(secret), true, _) | (Some(secret), false, Some(_)) => {
            let tolerance = state.settings.ingest.toss_tolerance;
            // A delivery must be recent; the worker's later check of the queued message is not.
            let freshness = Freshness::Within { tolerance, now_unix: Utc::now().timestamp() };
            let time = header(headers, "tosspayments-webhook-transmission-time");
            verify_toss_signature(body, signature, time, secret, freshness).map_err(|e| {
                let detail = match e {
                    TossSignatureError::Stale | TossSignatureError::Future => format!("{e} ({tolerance:?})"),
                    other => other.to_string(),
                };
                RejectReason::BadSignature(detail)
            })?;
            IngestVerification::Signature
        }
        _ => IngestVerification::Unsigned,
    };
    Ok(Accepted {
        event_type: Cow::Owned(event.event_type),
        event_key: Cow::Owned(key),
        verification,
        order_id: event.order_id.map(Cow::Owned),
        status: event.status.map(Cow::Owned),
    })
}
