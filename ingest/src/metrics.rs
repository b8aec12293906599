//! Ingest metrics, on a registry of its own (see `shared::metrics`).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use shared::metrics::{register, BrokerMetrics, LATENCY_BUCKETS};

#[derive(Clone)]
pub struct IngestMetrics {
    pub registry: Registry,
    /// Answers by provider (`stripe`, `toss`, empty for other routes), route and status code.
    pub requests: IntCounterVec,
    /// Time from request start to answer, webhook routes only.
    pub latency: HistogramVec,
    /// Webhook requests being handled now.
    pub inflight: IntGauge,
    pub broker: BrokerMetrics,
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
        let broker = BrokerMetrics::register(&registry);
        Self { registry, requests, latency, inflight, broker }
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
