//! Ingest metrics, on a registry of its own (see `shared::metrics`).

use http::StatusCode;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shared::metrics::{register, register_process_metrics, BrokerMetrics, LATENCY_BUCKETS};
use shared::Provider;

use crate::{STRIPE_ROUTE, TOSS_ROUTE};

/// Every answer a webhook route can give, by provider. Each `(provider, route, code)` exists
/// at 0 from the first scrape, so `rate(...{code="503"}[5m])` and friends work from the start.
/// 403 is Toss's alone (`TOSS_ALLOWED_IPS`).
pub const WEBHOOK_ANSWER_CODES: &[(Provider, &str, &[&str])] = &[
    (Provider::Stripe, STRIPE_ROUTE, &["200", "400", "405", "408", "413", "503"]),
    (Provider::Toss, TOSS_ROUTE, &["200", "400", "403", "405", "408", "413", "503"]),
];

/// Bounds of `ingest_bundle_webhooks`: a lone webhook, then powers of two up to the largest
/// bundle (`shared::bundle::MAX_EVENTS`).
const BUNDLE_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

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
    /// Webhooks per published message, with `INGEST_BUNDLE_MAX` above 1 (1: a request that
    /// found a publisher free and went alone).
    pub bundle_webhooks: Histogram,
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
        for (provider, route, codes) in WEBHOOK_ANSWER_CODES {
            for code in *codes {
                requests.with_label_values(&[provider.as_str(), route, code]);
            }
            latency.with_label_values(&[provider.as_str()]);
        }
        let inflight =
            register(&registry, IntGauge::new("ingest_inflight_requests", "Webhook requests in flight").unwrap());
        let connections =
            register(&registry, IntGauge::new("ingest_open_connections", "Open HTTP connections").unwrap());
        let broker = BrokerMetrics::register(&registry);
        let bundle_webhooks = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_bundle_webhooks",
                    "Webhooks per broker message published, with INGEST_BUNDLE_MAX above 1",
                )
                .buckets(BUNDLE_BUCKETS.to_vec()),
            )
            .unwrap(),
        );
        register_process_metrics(&registry, "ingest", env!("CARGO_PKG_VERSION"));
        let accepted = [Provider::Stripe, Provider::Toss]
            .map(|p| requests.with_label_values(&[p.as_str(), route_of(p), StatusCode::OK.as_str()]));
        let latency_by_provider = [Provider::Stripe, Provider::Toss].map(|p| latency.with_label_values(&[p.as_str()]));
        Self {
            registry,
            requests,
            latency,
            inflight,
            connections,
            broker,
            bundle_webhooks,
            accepted,
            latency_by_provider,
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::RejectReason;

    #[test]
    fn every_rejection_code_is_pre_created_for_both_providers() {
        let reasons = [
            RejectReason::BadSignature(String::new()),
            RejectReason::MalformedBody(String::new()),
            RejectReason::SignatureUnverifiable,
            RejectReason::TooLarge(1),
            RejectReason::BodyTimeout(Duration::from_secs(1)),
            RejectReason::BodyUnreadable,
            RejectReason::BrokerUnavailable,
            RejectReason::Saturated,
        ];
        for (provider, _, codes) in WEBHOOK_ANSWER_CODES {
            for reason in &reasons {
                let code = reason.status().as_u16().to_string();
                assert!(codes.contains(&code.as_str()), "{provider} pre-creates {code} ({})", reason.code());
            }
        }
        let toss = WEBHOOK_ANSWER_CODES.iter().find(|(p, _, _)| *p == Provider::Toss).unwrap();
        let forbidden = RejectReason::ForbiddenSource.status().as_u16().to_string();
        assert!(toss.2.contains(&forbidden.as_str()));
    }

    #[test]
    fn the_first_scrape_has_every_answer_code_at_zero_plus_process_metrics() {
        let metrics = IngestMetrics::new();
        let text = shared::metrics::render(&metrics.registry);
        assert!(
            text.contains(r#"ingest_requests_total{code="503",provider="toss",route="/api/webhooks/toss"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"ingest_request_duration_seconds_count{provider="stripe"} 0"#), "{text}");
        assert!(text.contains(&format!(r#"ingest_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }
}
