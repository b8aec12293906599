//! Worker metrics, on a registry of its own (see `shared::metrics`).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use shared::metrics::{register, BrokerMetrics, LAG_BUCKETS, LATENCY_BUCKETS};

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    /// Events by provider, type and outcome: applied, duplicate, ignored, retried, dead_lettered.
    pub events: IntCounterVec,
    /// Time spent on one delivery (its batch, until the commit), by provider.
    pub processing: HistogramVec,
    /// Deliveries per batch.
    pub batch_size: Histogram,
    /// 1 while the worker is halted because the database rejects its own SQL.
    pub halted: IntGauge,
    /// From ingest receiving an event to the worker applying it, by provider.
    pub lag: HistogramVec,
    /// Ready messages per queue, sampled.
    pub queue_depth: IntGaugeVec,
    /// Outbox rows not yet confirmed by the broker, sampled.
    pub outbox_pending: IntGauge,
    /// Notifications by stage: published, unrouted, outbox_dead (refused too often), delivered,
    /// retried, dead_lettered.
    pub notifications: IntCounterVec,
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
                HistogramOpts::new("worker_batch_size", "Deliveries applied per transaction")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0]),
            )
            .unwrap(),
        );
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
        let broker = BrokerMetrics::register(&registry);
        Self {
            registry,
            events,
            processing,
            batch_size,
            halted,
            lag,
            queue_depth,
            outbox_pending,
            notifications,
            broker,
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
