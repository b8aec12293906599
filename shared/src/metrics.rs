//! Prometheus metrics shared by both binaries. Each process (and each in-process test app)
//! owns its own [`Registry`], so nothing is global and tests do not see each other's counts.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every `outcome` of `amqp_publish_total`. Each exists at 0 from the first scrape, so
/// `rate()` and `absent()` work before the first publish of that kind.
pub const PUBLISH_OUTCOMES: &[&str] =
    &["confirmed", "unroutable", "nacked", "timeout", "blocked", "unavailable", "invalid"];

/// Broker connection and publisher-confirm metrics.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// 1 while the AMQP connection is up.
    pub connected: IntGauge,
    /// Connections established since start (a rising count means flapping).
    pub connects: IntCounter,
    /// Publishes by outcome: see [`PUBLISH_OUTCOMES`].
    pub publishes: IntCounterVec,
    /// Publisher channels replaced after a nack or a channel error.
    pub channels_retired: IntCounter,
    /// Returned messages handed to another publish of the same confirm (the client cannot
    /// tell returns apart): the publish each belongs to may have been told it was stored.
    pub returns_misattributed: IntCounter,
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
        let returns_misattributed = IntCounter::new(
            "amqp_returns_misattributed_total",
            "Returned messages the client handed to another publish: the publish each belongs to may have been told it was stored",
        )
        .unwrap();
        for metric in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connects.clone()),
            Box::new(publishes.clone()),
            Box::new(channels_retired.clone()),
            Box::new(returns_misattributed.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        for outcome in PUBLISH_OUTCOMES {
            publishes.with_label_values(&[outcome]);
        }
        Self { connected, connects, publishes, channels_retired, returns_misattributed }
    }
}

/// Registers what every process exposes besides its own metrics: the standard process
/// metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
/// `process_max_fds`, `process_start_time_seconds`, ...), `log_lines_dropped_total` and
/// `<binary>_build_info{version}` set to 1, so dashboards can show what runs where and alerts
/// can join on it.
pub fn register_process_metrics(registry: &Registry, binary: &str, version: &str) {
    registry.register(Box::new(LogLinesDropped::new())).expect("log_lines_dropped_total is registered once");
    // The collector reads /proc, so it exists on Linux only (where the pipeline is deployed).
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("process metrics are registered once per registry");
    let build_info = register(
        registry,
        IntGaugeVec::new(
            Opts::new(format!("{binary}_build_info"), format!("Always 1; the {binary} version in a label")),
            &["version"],
        )
        .expect("valid metric name"),
    );
    build_info.with_label_values(&[version]).set(1);
}

/// `log_lines_dropped_total`: log lines this process dropped because its log sink did not take
/// them (see [`crate::telemetry::writer`]). The count lives with the log writer, which knows
/// nothing of registries; this reads it at each scrape.
struct LogLinesDropped {
    desc: Desc,
}

const LOG_LINES_DROPPED: &str = "log_lines_dropped_total";
const LOG_LINES_DROPPED_HELP: &str = "Log lines dropped because the log sink (stdout) did not take them";

impl LogLinesDropped {
    fn new() -> Self {
        let desc = Desc::new(LOG_LINES_DROPPED.into(), LOG_LINES_DROPPED_HELP.into(), Vec::new(), Default::default())
            .expect("a valid metric name");
        Self { desc }
    }
}

impl Collector for LogLinesDropped {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counter = IntCounter::new(LOG_LINES_DROPPED, LOG_LINES_DROPPED_HELP).expect("a valid metric name");
        counter.inc_by(crate::telemetry::writer::lines_dropped());
        counter.collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::PublishError;

    #[test]
    fn every_publish_outcome_exists_at_zero_before_the_first_publish() {
        let registry = Registry::new();
        BrokerMetrics::register(&registry);
        let text = render(&registry);
        for outcome in PUBLISH_OUTCOMES {
            assert!(text.contains(&format!("amqp_publish_total{{outcome=\"{outcome}\"}} 0")), "{outcome}:\n{text}");
        }
    }

    #[test]
    fn the_publish_outcomes_cover_every_publish_error() {
        let errors = [
            PublishError::Unavailable,
            PublishError::Timeout(std::time::Duration::from_secs(1)),
            PublishError::Nacked,
            PublishError::Unroutable(String::new()),
            PublishError::InvalidName,
        ];
        for error in errors {
            assert!(PUBLISH_OUTCOMES.contains(&error.label()), "{} is pre-created", error.label());
        }
    }

    #[test]
    fn process_metrics_and_build_info_are_exposed() {
        let registry = Registry::new();
        register_process_metrics(&registry, "ingest", "1.2.3");
        let text = render(&registry);
        assert!(text.contains("ingest_build_info{version=\"1.2.3\"} 1"), "{text}");
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "log_lines_dropped_total",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} in:\n{text}");
        }
    }
}
