//! What every stage of the worker reads.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use deadpool_postgres::Pool;
use shared::broker::Broker;
use shared::verify::message::WebhookSecrets;
use shared::Settings;
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;
use crate::pipeline::halt::Halt;
use crate::provider_api::toss::TossApi;

/// Shared by the consumer, the batch processing, the relay, the delivery and the health listener.
pub struct Deps {
    pub settings: Settings,
    pub pool: Pool,
    pub broker: Broker,
    pub metrics: WorkerMetrics,
    pub toss_api: Option<TossApi>,
    /// What every delivery is checked with again: the broker is not a trust boundary.
    pub secrets: WebhookSecrets,
    /// In force while the database rejects the worker's own SQL.
    pub halt: Arc<Halt>,
    /// Fires when the worker starts stopping (a halted batch stops waiting then).
    pub stopping: CancellationToken,
    /// The "nobody subscribes to notifications" warning is logged once per process.
    pub unrouted_warned: AtomicBool,
}
