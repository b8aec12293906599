//! Building blocks shared by the `ingest` and `worker` binaries.
//!
//! - [`settings`]: typed settings, a part per binary over a common part, layered defaults →
//!   file → environment.
//! - [`verify`]: Stripe and Toss signature checks, pure functions over raw bytes.
//! - [`providers`]: parsing provider bodies into the fields the pipeline acts on.
//! - [`envelope`]: the AMQP message contract between ingest and worker.
//! - [`topology`]: exchange and queue names (all derived from `AMQP_PREFIX`) and their declaration.
//! - [`broker`]: the supervised AMQP connection and confirmed publishing.
//! - [`backoff`]: jittered exponential delays for the reconnect and retry loops.
//! - [`status`]: payment statuses as stored in `payments.payment_status`.
//! - [`samples`]: realistic provider events for `hookctl send` and tests.
//! - [`traces`]: OpenTelemetry export and the `traceparent` carried through the queue.
//! - [`http_server`], [`metrics`], [`telemetry`], [`shutdown`], [`runtime`]: process plumbing.

pub mod backoff;
pub mod broker;
pub mod bundle;
pub mod envelope;
pub mod http_server;
pub mod metrics;
pub mod providers;
pub mod runtime;
pub mod samples;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod topology;
pub mod traces;
pub mod verify;

pub use providers::Provider;
pub use settings::{HookctlSettings, IngestSettings, Settings, WorkerSettings};
