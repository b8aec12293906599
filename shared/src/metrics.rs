//! Prometheus metrics shared by both binaries. Each process (and each in-process test app)
//! owns its own [`Registry`], so nothing is global and tests do not see each other's counts.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Broker connection and publisher-confirm metrics.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// 1 while the AMQP connection is up.
    pub connected: IntGauge,
    /// Connections established since start (a rising count means flapping).
    pub connects: IntCounter,
    /// Publishes by outcome: `confirmed`, `unroutable`, `nacked`, `timeout`, `blocked`,
    /// `unavailable`, `invalid`.
    pub publishes: IntCounterVec,
    /// Publisher channels replaced after a nack or a channel error.
    pub channels_retired: IntCounter,
}

impl BrokerMetrics {
    pub fn register(registry: &Registry) -> Self {
        let connected = IntGauge::new("amqp_connected", "1 while the AMQP connection is up").unwrap();
        let connects = IntCounter::new("amqp_connects_total", "AMQP connections established").unwrap();
        let publishes =
            IntCounterVec::new(Opts::new("amqp_publish_total", "Publishes by publisher-confirm outcome"), &["outcome"])
                .unwrap();
        let channels_retired = IntCounter::new(
            "amqp_channels_retired_total",
            "Publisher channels replaced after a nack or a channel error",
        )
        .unwrap();
        for metric in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connects.clone()),
            Box::new(publishes.clone()),
            Box::new(channels_retired.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self { connected, connects, publishes, channels_retired }
    }
}

/// Latency buckets (seconds) from 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Lag buckets (seconds) from 10 ms to 3 hours: retries stretch lag to hours.
pub const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0];

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("Prometheus text is UTF-8")
}

/// Registers a collector, panicking on a duplicate name (a programming error).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}
