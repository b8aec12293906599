//! Ingest metrics, on a registry of its own (see `shared::metrics`).

use http::StatusCode;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shared::metrics::{register, BrokerMetrics, LATENCY_BUCKETS};
use shared::Provider;

use crate::{STRIPE_ROUTE, TOSS_ROUTE};

#[derive(Clone)]
pub struct IngestMetrics {
    pub registry: Registry,
    /// Answers by provider (`stripe`, `toss`, empty for other routes), route and status code.
    pub requests: IntCounterVec,
    /// Time from request start to answer, webhook routes only.
    pub latency: HistogramVec,
    /// Webhook requests being handled now.
    pub inflight: IntGauge,
    /// Open HTTP connections (capped by `MAX_CONNECTIONS`).
    pub connections: IntGauge,
    pub broker: BrokerMetrics,
    /// The children every accepted webhook touches, looked up once instead of per request.
    accepted: [IntCounter; 2],
    latency_by_provider: [Histogram; 2],
}

impl IngestMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ingest_requests_total", "HTTP requests by provider, route and answer code"),
                &["provider", "route", "code"],
            )
            .unwrap(),
        );
        let latency = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("ingest_request_duration_seconds", "Webhook request latency until the answer")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["provider"],
            )
            .unwrap(),
        );
        let inflight =
            register(&registry, IntGauge::new("ingest_inflight_requests", "Webhook requests in flight").unwrap());
        let connections =
            register(&registry, IntGauge::new("ingest_open_connections", "Open HTTP connections").unwrap());
        let broker = BrokerMetrics::register(&registry);
        let accepted = [Provider::Stripe, Provider::Toss]
            .map(|p| requests.with_label_values(&[p.as_str(), route_of(p), StatusCode::OK.as_str()]));
        let latency_by_provider = [Provider::Stripe, Provider::Toss].map(|p| latency.with_label_values(&[p.as_str()]));
        Self { registry, requests, latency, inflight, connections, broker, accepted, latency_by_provider }
    }

    /// Counts one answer.
    pub fn count(&self, provider: Option<Provider>, route: &str, status: StatusCode) {
        match provider {
            Some(p) if status == StatusCode::OK => self.accepted[index(p)].inc(),
            _ => {
                let provider = provider.map(Provider::as_str).unwrap_or("");
                self.requests.with_label_values(&[provider, route, status.as_str()]).inc()
            }
        }
    }

    /// The latency histogram of `provider`'s webhooks.
    pub fn latency(&self, provider: Provider) -> &Histogram {
        &self.latency_by_provider[index(provider)]
    }
}

fn index(provider: Provider) -> usize {
    match provider {
        Provider::Stripe => 0,
        Provider::Toss => 1,
    }
}

fn route_of(provider: Provider) -> &'static str {
    match provider {
        Provider::Stripe => STRIPE_ROUTE,
        Provider::Toss => TOSS_ROUTE,
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
