//! Worker metrics, on a registry of its own (see `shared::metrics`).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use shared::metrics::{register, register_process_metrics, BrokerMetrics, LAG_BUCKETS, LATENCY_BUCKETS};
use shared::providers::EventType;
use shared::Provider;
use strum::IntoEnumIterator;

use crate::domain::notification::NotificationStage;
use crate::domain::outcome::EventOutcome;

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    /// Events by provider, type ([`EventType::label`]) and outcome ([`EventOutcome`]).
    pub events: IntCounterVec,
    /// Time spent on one delivery (its batch, until the commit), by provider.
    pub processing: HistogramVec,
    /// Webhooks per batch transaction (each of a bundle counted; a batch only split is none).
    pub batch_size: Histogram,
    /// Bundles of webhooks, by what was done with them: `opened` (applied together) or `split`
    /// (delivered again, so sent back one webhook a message).
    pub bundles: IntCounterVec,
    /// 1 while the worker is halted because the database rejects its own SQL.
    pub halted: IntGauge,
    /// From ingest receiving an event to the worker applying it, by provider.
    pub lag: HistogramVec,
    /// Ready messages per queue, sampled.
    pub queue_depth: IntGaugeVec,
    /// Outbox rows not yet confirmed by the broker, sampled.
    pub outbox_pending: IntGauge,
    /// Notifications by stage: published, unrouted, outbox_dead (refused too often), delivered,
    /// retried, dead_lettered, unverifiable (dead-lettered unsigned: not what the database holds).
    pub notifications: IntCounterVec,
    pub reconcile: ReconcileMetrics,
    pub broker: BrokerMetrics,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let events = register(
            &registry,
            IntCounterVec::new(
                Opts::new("worker_events_total", "Webhook events processed, by provider, type and outcome"),
                &["provider", "event_type", "outcome"],
            )
            .unwrap(),
        );
        let processing = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("worker_processing_seconds", "Time to process one delivery")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["provider"],
            )
            .unwrap(),
        );
        let batch_size = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("worker_batch_size", "Webhooks applied per transaction (a bundle counts its own)")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 6400.0]),
            )
            .unwrap(),
        );
        let bundles = register(
            &registry,
            IntCounterVec::new(
                Opts::new("worker_bundles_total", "Messages of several webhooks, opened or (delivered again) split"),
                &["way"],
            )
            .unwrap(),
        );
        for way in ["opened", "split"] {
            bundles.with_label_values(&[way]);
        }
        let halted = register(
            &registry,
            IntGauge::new("worker_halted", "1 while the database rejects the worker's own SQL (see the log)").unwrap(),
        );
        let lag = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "worker_event_lag_seconds",
                    "Time from ingest receiving an event to it being applied",
                )
                .buckets(LAG_BUCKETS.to_vec()),
                &["provider"],
            )
            .unwrap(),
        );
        let queue_depth = register(
            &registry,
            IntGaugeVec::new(Opts::new("amqp_queue_messages", "Messages ready in each queue"), &["queue"]).unwrap(),
        );
        let outbox_pending = register(
            &registry,
            IntGauge::new("outbox_pending", "Outbox rows waiting for a publisher confirm").unwrap(),
        );
        let notifications = register(
            &registry,
            IntCounterVec::new(Opts::new("notifications_total", "Notifications by stage"), &["stage"]).unwrap(),
        );
        // Every label combination exists at 0 from the first scrape.
        for provider in Provider::iter() {
            for event_type in EventType::labels(provider) {
                for outcome in EventOutcome::iter() {
                    events.with_label_values(&[provider.as_str(), event_type, outcome.into()]);
                }
            }
            processing.with_label_values(&[provider.as_str()]);
            lag.with_label_values(&[provider.as_str()]);
        }
        for stage in NotificationStage::iter() {
            notifications.with_label_values(&[<&str>::from(stage)]);
        }
        let reconcile = ReconcileMetrics::register(&registry);
        let broker = BrokerMetrics::register(&registry);
        register_process_metrics(&registry, "worker", env!("CARGO_PKG_VERSION"));
        Self {
            registry,
            events,
            processing,
            batch_size,
            bundles,
            halted,
            lag,
            queue_depth,
            outbox_pending,
            notifications,
            reconcile,
            broker,
        }
    }
}

impl WorkerMetrics {
    /// What the batch pipeline counts.
    pub fn for_events(&self) -> EventMetrics {
        EventMetrics {
            events: self.events.clone(),
            processing: self.processing.clone(),
            batch_size: self.batch_size.clone(),
            bundles: self.bundles.clone(),
            lag: self.lag.clone(),
            halted: self.halted.clone(),
        }
    }

    /// What the outbox and the notification delivery count.
    pub fn for_notifications(&self) -> NotificationMetrics {
        NotificationMetrics { stages: self.notifications.clone() }
    }
}

/// The batch pipeline's metrics (handles onto the worker's registry).
#[derive(Clone)]
pub struct EventMetrics {
    /// Events by provider, type and outcome.
    pub events: IntCounterVec,
    /// Time spent on one delivery, by provider.
    pub processing: HistogramVec,
    /// Webhooks per batch transaction (each of a bundle counted; a batch only split is none).
    pub batch_size: Histogram,
    /// `worker_bundles_total`, by `way`.
    pub bundles: IntCounterVec,
    /// From ingest receiving an event to the worker applying it, by provider.
    pub lag: HistogramVec,
    /// 1 while the worker is halted.
    pub halted: IntGauge,
}

/// `notifications_total`, by [`NotificationStage`].
#[derive(Clone)]
pub struct NotificationMetrics {
    stages: IntCounterVec,
}

impl NotificationMetrics {
    /// Counts `n` notifications at `stage`.
    pub fn count(&self, stage: NotificationStage, n: u64) {
        self.stages.with_label_values(&[<&str>::from(stage)]).inc_by(n);
    }
}

/// Reconciliation against the providers' APIs, by provider (`stripe`, `toss`).
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// Events found through the API that no webhook had brought (published, or listed by a dry
    /// run): each one a webhook that was missed.
    pub missed: IntCounterVec,
    /// When a reconciliation run last completed, unix seconds; the process's start until the
    /// first run completes, so a reconciler that never succeeds goes stale too.
    pub last_success: GaugeVec,
    /// `RECONCILE_INTERVAL` in seconds for each provider reconciled (absent otherwise): what
    /// "stale" is measured against.
    pub interval: GaugeVec,
    /// Failed API calls and runs, by provider and kind (`auth`, `rate_limited`, `server`,
    /// `timeout`, `network`, `malformed`, `too_large`, `status`, `publish`, `database`).
    pub errors: IntCounterVec,
    /// When the provider's API last refused the key (401/403) to a run, unix seconds; 0 until
    /// it does. Newer than the last success: the key is refused still.
    pub key_refused: GaugeVec,
}

/// The `kind`s of `reconcile_errors_total`: the API's (`provider_api::ApiError::kind`), then
/// the run's own.
pub const RECONCILE_ERROR_KINDS: [&str; 10] =
    ["auth", "rate_limited", "server", "timeout", "network", "malformed", "too_large", "status", "publish", "database"];

impl ReconcileMetrics {
    pub fn register(registry: &Registry) -> Self {
        let missed = register(
            registry,
            IntCounterVec::new(
                Opts::new("reconcile_missed_events_total", "Events found by reconciliation that no webhook brought"),
                &["provider"],
            )
            .unwrap(),
        );
        let last_success = register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "reconcile_last_success_timestamp_seconds",
                    "Unix time of the last completed reconciliation run",
                ),
                &["provider"],
            )
            .unwrap(),
        );
        let errors = register(
            registry,
            IntCounterVec::new(
                Opts::new("reconcile_errors_total", "Reconciliation failures, by provider and kind"),
                &["provider", "kind"],
            )
            .unwrap(),
        );
        for provider in Provider::iter() {
            missed.with_label_values(&[provider.as_str()]);
            for kind in RECONCILE_ERROR_KINDS {
                errors.with_label_values(&[provider.as_str(), kind]);
            }
        }
        let interval = register(
            registry,
            GaugeVec::new(
                Opts::new("reconcile_interval_seconds", "RECONCILE_INTERVAL of each provider reconciled"),
                &["provider"],
            )
            .unwrap(),
        );
        let key_refused = register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "reconcile_key_refused_timestamp_seconds",
                    "Unix time the provider API last refused the reconciliation key",
                ),
                &["provider"],
            )
            .unwrap(),
        );
        Self { missed, last_success, interval, errors, key_refused }
    }

    /// A run of `provider` was refused the key now.
    pub fn key_refused(&self, provider: Provider) {
        self.key_refused.with_label_values(&[provider.as_str()]).set(unix_now());
    }

    /// Marks `provider` as reconciled every `interval`, with the process's start as its last
    /// success until a run completes.
    pub fn enable(&self, provider: Provider, interval: std::time::Duration) {
        self.interval.with_label_values(&[provider.as_str()]).set(interval.as_secs_f64());
        self.key_refused.with_label_values(&[provider.as_str()]).set(0.0);
        self.succeeded(provider);
    }

    /// A run of `provider` completed now.
    pub fn succeeded(&self, provider: Provider) {
        self.last_success.with_label_values(&[provider.as_str()]).set(unix_now());
    }

    /// Counts one failure of `kind`.
    pub fn error(&self, provider: Provider, kind: &str) {
        self.errors.with_label_values(&[provider.as_str(), kind]).inc();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::providers::{StripeEventType, TossEventType};

    /// What used to be two hand-kept lists (the label names and the pre-created ones) is one
    /// vocabulary now; this keeps what the tests of those lists checked: every type the pipeline
    /// keeps in labels, `other`, and every outcome exist at 0, and nothing else is kept.
    #[test]
    fn every_label_an_event_can_be_counted_under_exists_from_the_first_scrape() {
        let text = shared::metrics::render(&WorkerMetrics::new().registry);
        let stripe = StripeEventType::iter().map(|t| EventType::Stripe(t).label());
        let toss = TossEventType::iter().map(|t| EventType::Toss(t).label());
        for (provider, event_type) in stripe.map(|t| ("stripe", t)).chain(toss.map(|t| ("toss", t))) {
            for outcome in EventOutcome::iter() {
                let line = format!(
                    r#"worker_events_total{{event_type="{event_type}",outcome="{outcome}",provider="{provider}"}} 0"#
                );
                assert!(text.lines().any(|l| l == line), "{line}");
            }
        }
        assert_eq!(EventType::of(Provider::Toss, "something.new").label(), "other");
        let series = text.lines().filter(|l| l.starts_with("worker_events_total{")).count();
        assert_eq!(series, (StripeEventType::iter().count() + TossEventType::iter().count() + 2) * 7);
    }

    #[test]
    fn the_first_scrape_has_outcomes_stages_process_metrics_and_build_info() {
        let metrics = WorkerMetrics::new();
        let text = shared::metrics::render(&metrics.registry);
        for line in [
            r#"worker_events_total{event_type="DEPOSIT_CALLBACK",outcome="dead_lettered",provider="toss"} 0"#,
            r#"worker_events_total{event_type="other",outcome="applied",provider="stripe"} 0"#,
            r#"notifications_total{stage="dead_lettered"} 0"#,
            r#"notifications_total{stage="unverifiable"} 0"#,
            r#"worker_event_lag_seconds_count{provider="toss"} 0"#,
            r#"amqp_publish_total{outcome="timeout"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(text.contains(&format!(r#"worker_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))));
        assert!(text.lines().any(|l| l.starts_with("process_cpu_seconds_total ")), "{text}");
    }
}
