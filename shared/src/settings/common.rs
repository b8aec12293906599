//! What every process reads ([`CommonSettings`]: the broker, and the shape of the topology any
//! of them may declare), and what the two services read ([`ServiceSettings`]).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::values::{duration, duration_list};
use super::{amqp_nodes, at_least_one, Part, SettingsError};

/// The broker and the topology's shape: ingest, the worker and hookctl all read these. Each
/// may declare the topology (the worker always, ingest on a fresh broker, `hookctl unverified
/// recheck` before it publishes), so the retry tiers and the delivery limit are here too.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CommonSettings {
    /// RabbitMQ URL (`amqp://user:pass@host:port/vhost`), or the URLs of a cluster's nodes,
    /// comma-separated: processes connect to the first that answers and move on to the next
    /// when their node goes away.
    pub amqp_url: SecretString,
    /// Every exchange and queue name starts with this prefix.
    pub amqp_prefix: String,
    /// Delay tiers for retries (comma-separated durations); the last one repeats.
    #[serde(deserialize_with = "duration_list")]
    pub retry_delays: Vec<Duration>,
    /// Redeliveries after which the work queue parks a message that crashes every worker.
    /// Every return counts (a worker's restart returns its prefetched deliveries too), so this
    /// is well above what restarts and reconnects produce.
    pub delivery_limit: u32,
}

impl Default for CommonSettings {
    fn default() -> Self {
        Self {
            amqp_url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_prefix: "webhooks".into(),
            retry_delays: [1, 10, 60, 600, 3600].map(Duration::from_secs).to_vec(),
            delivery_limit: 20,
        }
    }
}

impl Part for CommonSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let prefix_ok = !self.amqp_prefix.is_empty()
            && self.amqp_prefix.len() <= 100
            && self.amqp_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !prefix_ok {
            return Err(SettingsError::invalid("amqp_prefix", "use 1 to 100 of A-Z a-z 0-9 . - _"));
        }
        let nodes = amqp_nodes::node_urls(&self.amqp_url);
        if nodes.is_empty() {
            return Err(SettingsError::invalid("amqp_url", "names no broker"));
        }
        for (i, node) in nodes.iter().enumerate() {
            let node = node.expose_secret();
            if !(node.starts_with("amqp://") || node.starts_with("amqps://")) {
                // The value is not echoed: it may hold a password.
                let which = if nodes.len() == 1 { String::new() } else { format!("entry {} ", i + 1) };
                return Err(SettingsError::invalid("amqp_url", format!("{which}must start with amqp:// or amqps://")));
            }
        }
        if self.retry_delays.is_empty() {
            return Err(SettingsError::invalid("retry_delays", "needs at least one delay"));
        }
        at_least_one(&[("delivery_limit", self.delivery_limit as usize)])
    }
}

/// Output format of log lines.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, the default on a developer machine.
    #[default]
    Text,
    /// One JSON object per line, for log shippers in production.
    Json,
}

/// What the two long-running services, ingest and the worker, read beyond the common part:
/// their listeners' header deadline, the publisher-confirm deadline, the drain deadline at
/// shutdown and their log format. (`hookctl` serves nothing and prints instead of logging.)
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ServiceSettings {
    /// A client must finish sending its request headers within this time.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest wait for a publisher confirm before answering 503.
    #[serde(deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// Time allowed to finish in-flight work after SIGTERM / Ctrl-C.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(25),
            log_format: LogFormat::Text,
        }
    }
}

impl Part for ServiceSettings {}
