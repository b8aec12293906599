//! The worker consumes what ingest queued and applies it to Postgres exactly once in effect.
//! The modules read as the data flows:
//!
//! - [`consumer`]: the reconnecting consumer loop; [`batch`]: cutting deliveries into batches;
//! - [`process`]: one batch end to end; [`event`]: from an envelope to an intent;
//!   [`screen`]: control characters in a delivery's identifiers, caught before they are used;
//!   [`toss_api`]: fetch-back verification of unsigned Toss events;
//! - [`decide`]: every event of a batch against its payment, in order (pure), with
//!   [`state_machine`] (which status changes are allowed), [`ordering`] (the provider's dates
//!   of events that arrive out of order) and [`notification`] (their words);
//! - [`write`]: the one transaction per batch (locks, inbox, payments, notifications, outbox);
//! - [`settle`]: ack, delay tier or dead letter, with the [`retry`] schedule; also used by
//!   [`delivery`], the optional HTTP delivery of notifications;
//! - [`outbox`]: publishing committed notifications, and the relay for rows left behind;
//! - [`halt`]: stopping when the database rejects the worker's own SQL;
//! - [`retention`]: pruning processed events from the inbox after `EVENT_RETENTION`;
//! - [`deps`], [`db`], [`outcome`], [`health`], [`metrics`], [`migrate`]: plumbing;
//!   [`cli`]: the `hookctl` tool.

pub mod cli;
pub mod delivery;
pub mod deps;
pub mod domain;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod provider_api;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use shared::broker::Broker;
use shared::http_server::{self, ServeOptions};
use shared::topology::Declaring;
use shared::verify::message::WebhookSecrets;
use shared::Settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deps::Deps;
use crate::metrics::WorkerMetrics;
use crate::pipeline::consumer::{consume, ConsumerOptions};
use crate::pipeline::process;
use crate::provider_api::toss::TossApi;
use crate::store::{db, outbox, retention};

/// Publisher channels for retries, dead letters and the outbox relay.
const PUBLISH_CHANNELS: usize = 2;

/// A worker with its health listener bound, not yet consuming.
pub struct Worker {
    deps: Arc<Deps>,
    listener: TcpListener,
    broker_stop: CancellationToken,
    tasks: TaskTracker,
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(&settings)?;
        let toss_api = TossApi::from_settings(&settings)?;
        // The worker checks every message's signature again, so it needs the webhook secrets.
        let secrets = WebhookSecrets::from_settings(&settings)?;
        announce_toss_verification(&settings);
        let listener = TcpListener::bind(settings.worker_addr)
            .await
            .with_context(|| format!("cannot listen on WORKER_ADDR={}", settings.worker_addr))?;
        let metrics = WorkerMetrics::new();
        let broker_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let broker = Broker::from_settings(
            &settings,
            "worker",
            PUBLISH_CHANNELS,
            // The worker consumes the queues and owns the topology: it declares all of it.
            Declaring::Everything,
            metrics.broker.clone(),
            broker_stop.clone(),
            &tasks,
        );
        let deps = Arc::new(Deps {
            settings,
            pool,
            broker,
            metrics,
            toss_api,
            secrets,
            halt: Default::default(),
            stopping: CancellationToken::new(),
            unrouted_warned: Default::default(),
        });
        Ok(Self { deps, listener, broker_stop, tasks })
    }

    /// Address of the health and metrics listener (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn deps(&self) -> Arc<Deps> {
        self.deps.clone()
    }

    /// Runs until `shutdown`: then stops consuming, lets in-flight deliveries finish (the rest
    /// return to the queue), flushes the outbox, closes the broker connection and the pool.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { deps, listener, broker_stop, tasks } = self;
        let settings = &deps.settings;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "worker health and metrics listening");

        let http_stop = CancellationToken::new();
        let http_deps = deps.clone();
        let draining = shutdown.clone();
        let http = tokio::spawn(http_server::serve(
            listener,
            move |request, _peer| {
                let deps = http_deps.clone();
                let draining = draining.clone();
                async move { health::route(&deps, &draining, request).await }
            },
            ServeOptions {
                header_read_timeout: settings.header_read_timeout,
                drain_deadline: std::time::Duration::from_secs(1),
                // Health probes and metric scrapes only.
                max_connections: 64,
                open_connections: None,
            },
            http_stop.clone(),
        ));

        let tag = format!("worker-{}", uuid::Uuid::new_v4().simple());
        let work = tasks.spawn(consume(
            deps.broker.clone(),
            ConsumerOptions {
                queue: deps.broker.topology().work_queue(),
                tag: tag.clone(),
                prefetch: settings.worker_prefetch(),
                concurrency: settings.worker_concurrency,
                batch_size: settings.worker_batch_size,
                batch_linger: settings.worker_batch_linger,
                drain_deadline: settings.shutdown_timeout,
            },
            shutdown.clone(),
            Some(deps.halt.clone()),
            {
                let deps = deps.clone();
                move |batch| process::process_batch(deps.clone(), batch)
            },
        ));
        let delivering = delivery::start(&deps, &tasks, &tag, shutdown.clone());
        let relay_stop = CancellationToken::new();
        let relay = tasks.spawn(outbox::run_relay(deps.clone(), relay_stop.clone()));
        let gauges = tasks.spawn(health::sample_gauges(deps.clone(), relay_stop.clone()));
        tasks.spawn(retention::run_pruner(deps.clone(), shutdown.clone()));

        shutdown.cancelled().await;
        deps.stopping.cancel();
        tracing::info!("worker stopping: finishing in-flight deliveries");
        let _ = work.await;
        if let Some(handle) = delivering {
            let _ = handle.await;
        }
        relay_stop.cancel();
        let _ = relay.await;
        let _ = gauges.await;
        broker_stop.cancel();
        tasks.close();
        tasks.wait().await;
        deps.pool.close();
        http_stop.cancel();
        let _ = http.await;
        tracing::info!("worker stopped");
    }
}

/// Says at start how unsigned Toss payment events are verified, and shouts when they are not.
fn announce_toss_verification(settings: &Settings) {
    if settings.toss_allow_unverified {
        tracing::warn!(
            "INSECURE DEVELOPMENT MODE: TOSS_ALLOW_UNVERIFIED=true applies unsigned Toss payment events that \
             nothing verified; anyone who can reach ingest can mark a payment paid. Never set it in production."
        );
    }
    if settings.toss_fetch_back_enabled() {
        tracing::info!(api = %settings.toss_api_base, "Toss payment events are fetched back from the Toss API before they are applied");
    } else if !settings.toss_allow_unverified {
        tracing::warn!(
            "TOSS_SECRET_KEY is not set: unsigned Toss payment events are recorded as unverified and change \
             nothing (a DEPOSIT_CALLBACK still applies when it matches the payment's stored secret); set \
             TOSS_SECRET_KEY, then `hookctl unverified recheck --all`"
        );
    }
}
