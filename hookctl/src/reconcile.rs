//! `hookctl reconcile`: the worker's reconciliation, run by hand for a period (after an outage
//! longer than the providers retry, say), optionally without publishing anything.
//!
//! It runs the worker's own code ([`worker::reconcile::Reconciler::run_by_hand`]) without the
//! lease and without moving the watermark, and publishes what it finds to the work queue
//! through the default exchange (the operator's broker user may publish there, as the worker's
//! may). Events
//! found twice, by this and by a worker, are one inbox key: applied once.

use std::time::Duration;

use shared::broker::{Broker, BrokerOptions};
use shared::settings::{HookctlSettings, WorkerPart};
use shared::topology::{Declaring, Topology};
use shared::Provider;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::metrics::WorkerMetrics;
use worker::reconcile::{Reconciler, Report, RunError, RunOptions};
use worker::store::{db, Store};

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct ReconcileArgs {
    pub provider: Provider,
    /// How far back: Stripe events created since, Toss payments created since.
    pub since: Duration,
    /// List what is missing; publish nothing.
    pub dry_run: bool,
}

/// Why a reconciliation by hand failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0:#}")]
    Setup(#[from] anyhow::Error),
    #[error("the broker is not reachable within {0:?}")]
    NoBroker(Duration),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// How long to wait for the broker before giving up.
const BROKER_WAIT: Duration = Duration::from_secs(15);

/// Runs one reconciliation of `args.provider` and reports what it found (and published).
pub async fn reconcile(settings: &HookctlSettings, args: ReconcileArgs) -> Result<Report, ReconcileError> {
    // hookctl reads no worker part: its transactions get the workers' default bound.
    let store = Store::new(db::pool(&settings.database)?, WorkerPart::default().database_transaction_timeout);
    let metrics = WorkerMetrics::new();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let broker = Broker::start(
        settings.common.amqp_url.clone(),
        Topology::from_settings(&settings.common),
        BrokerOptions {
            connection_name: "hookctl".into(),
            publish_channels: 1,
            publish_timeout: Duration::from_secs(10),
            // The workers own the topology; this only checks it is there.
            declaring: Declaring::IfMissing,
        },
        metrics.broker.clone(),
        stop.clone(),
        &tasks,
    );
    let result = async {
        let reconciler = Reconciler::from_settings(
            &settings.reconcile,
            &settings.toss_api,
            store.clone(),
            broker.clone(),
            metrics.reconcile.clone(),
            format!("hookctl-{}", uuid::Uuid::new_v4().simple()),
        )?;
        if !args.dry_run {
            let waiting = CancellationToken::new();
            tokio::time::timeout(BROKER_WAIT, broker.connected(&waiting))
                .await
                .map_err(|_| ReconcileError::NoBroker(BROKER_WAIT))?;
        }
        let since = chrono::Utc::now() - chrono::Duration::from_std(args.since).unwrap_or(chrono::Duration::zero());
        let options = RunOptions { since: Some(since), dry_run: args.dry_run };
        Ok(reconciler.run_by_hand(args.provider, options, &CancellationToken::new()).await?)
    }
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    store.close();
    result
}
