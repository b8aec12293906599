//! What only ingest reads: its listeners, the limits and deadlines of the webhook requests,
//! the signature windows, and who may post.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::values::{duration, networks};
use super::{at_least_one, Part, SettingsError};

/// Toss Payments' published webhook source addresses. `TOSS_ALLOWED_IPS=toss` expands to these.
pub const TOSS_SOURCE_ADDRESSES: [&str; 4] = ["13.124.18.147", "13.124.108.35", "3.36.173.151", "3.38.81.32"];

/// Ingest's own settings. Field `foo_bar` is read from `FOO_BAR`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct IngestPart {
    /// Where ingest listens. Port 3000 keeps `stripe listen --forward-to localhost:3000/...` working.
    pub ingest_addr: SocketAddr,
    /// Where ingest serves `/metrics`: a listener of its own, off the public webhook port.
    /// Loopback by default, so only a scraper on the same host (or network namespace) reads
    /// it; port 0 picks a free port.
    pub ingest_metrics_addr: SocketAddr,
    /// How far a `Stripe-Signature` timestamp may be from now, either way. 300 s is what every
    /// official Stripe SDK uses.
    #[serde(deserialize_with = "duration")]
    pub stripe_tolerance: Duration,
    /// How far a signed Toss delivery's `tosspayments-webhook-transmission-time` may be from
    /// now, either way: a captured delivery cannot be replayed after it. 300 s, as Stripe's.
    #[serde(deserialize_with = "duration")]
    pub toss_tolerance: Duration,
    /// Largest accepted Toss body. Toss payment objects are a few KiB, and anyone can post an
    /// unsigned payment event, so Toss gets a much smaller cap than `MAX_BODY_BYTES`.
    pub toss_max_body_bytes: usize,
    /// Source networks allowed to post Toss webhooks (comma-separated CIDRs or addresses; the
    /// word `toss` stands for Toss's published addresses). Empty: no source check.
    #[serde(deserialize_with = "networks")]
    pub toss_allowed_ips: Vec<IpNet>,
    /// How many reverse proxies in front of ingest append to `X-Forwarded-For`. 0 trusts no header.
    pub trusted_proxy_hops: usize,
    /// Addresses of those proxies (CIDRs); `X-Forwarded-For` is read only when the hop that
    /// added it is one of them. Required when `TRUSTED_PROXY_HOPS` is above 0.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// Largest accepted webhook body. Providers send a few KiB; 1 MiB leaves room and bounds memory.
    pub max_body_bytes: usize,
    /// A client must finish sending its body within this time.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Requests handled at once by ingest; beyond it answers 503 with `Retry-After`. Bodies
    /// are read only within this bound, so bodies take at most this × `MAX_BODY_BYTES`.
    pub max_inflight_requests: usize,
    /// Open connections ingest holds at once (idle keep-alive ones included). At the cap, the
    /// oldest connection that has not sent a byte is closed; if all are busy, accepting waits.
    /// Keep it below the process's file-descriptor limit.
    pub max_connections: usize,
    /// Most webhooks one broker message carries. Above 1, requests that wait while every
    /// publisher awaits a confirm go together in one message (a lone request never waits for
    /// company): the broker's cost is per message. 1: one message per webhook.
    pub ingest_bundle_max: usize,
}

impl Default for IngestPart {
    fn default() -> Self {
        Self {
            ingest_addr: ([0, 0, 0, 0], 3000).into(),
            ingest_metrics_addr: ([127, 0, 0, 1], 9091).into(),
            stripe_tolerance: Duration::from_secs(300),
            toss_tolerance: Duration::from_secs(300),
            toss_max_body_bytes: 64 * 1024,
            toss_allowed_ips: Vec::new(),
            trusted_proxy_hops: 0,
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            max_inflight_requests: 1024,
            max_connections: 1024,
            ingest_bundle_max: 1,
        }
    }
}

impl Part for IngestPart {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least_one(&[
            ("max_inflight_requests", self.max_inflight_requests),
            ("max_connections", self.max_connections),
            ("max_body_bytes", self.max_body_bytes),
            ("toss_max_body_bytes", self.toss_max_body_bytes),
            ("ingest_bundle_max", self.ingest_bundle_max),
        ])?;
        if self.ingest_bundle_max > crate::bundle::MAX_EVENTS {
            return Err(SettingsError::invalid("ingest_bundle_max", "at most 64 webhooks a message"));
        }
        if self.trusted_proxy_hops > 0 && self.trusted_proxies.is_empty() {
            return Err(SettingsError::Missing {
                name: "TRUSTED_PROXIES",
                why: "with TRUSTED_PROXY_HOPS above 0, X-Forwarded-For is read only from these proxies",
            });
        }
        Ok(())
    }
}
