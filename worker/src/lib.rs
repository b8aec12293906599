//! The worker consumes what ingest queued and applies it to Postgres exactly once in effect.
//! Its folders are its layers (`docs/architecture.md` has the rules, `e2e/tests/architecture.rs`
//! checks them); each imports only the ones listed before it:
//!
//! - [`domain`]: what is decided, without I/O: from an envelope to an intent, every event of
//!   a batch against its payment (state machine, the provider's ordering), the trainer's
//!   notification, outcomes and the retry schedule.
//! - [`provider_api`]: the providers' own APIs, called with our keys (Toss fetch-back and
//!   lookups, Stripe's events list).
//! - [`metrics`]: the registry, and the handles each stage counts with.
//! - [`store`]: Postgres: the pool and its statements ([`store::Store`]), the one batch
//!   transaction, the outbox and its relay ([`store::outbox::Outbox`]), inbox retention,
//!   migrations, TLS.
//! - [`pipeline`]: moving deliveries: the reconnecting consumer, batches, a batch end to end
//!   ([`pipeline::process::Processor`]), each delivery's conclusion and settlement, halting.
//! - [`delivery`]: the optional HTTP delivery of notifications, a consumer of its own.
//! - [`reconcile`]: finding, through the providers' APIs, events whose webhooks never came,
//!   and queueing them like webhooks (one worker at a time, under a lease).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`, and the gauges.
//! - [`cli`]: the `worker` binary's command line; [`Worker`] wires the stages together, each
//!   with the handles it needs.

pub mod cli;
pub mod delivery;
pub mod domain;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod provider_api;
pub mod reconcile;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use shared::broker::{Broker, BrokerOptions};
use shared::http_server::{self, ServeOptions};
use shared::settings::WorkerSettings;
use shared::topology::{Declaring, Topology};
use shared::verify::message::WebhookSecrets;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::decide::Trust;
use crate::health::Health;
use crate::metrics::WorkerMetrics;
use crate::pipeline::consumer::{consume, ConsumerOptions};
use crate::pipeline::halt::Halt;
use crate::pipeline::process::{Processor, Rules};
use crate::pipeline::settle::Settler;
use crate::provider_api::toss::TossApi;
use crate::reconcile::Reconciler;
use crate::store::outbox::{Outbox, OutboxOptions};
use crate::store::retention::{self, Pruner};
use crate::store::{db, Store};

/// Publisher channels for retries, dead letters and the outbox relay.
const PUBLISH_CHANNELS: usize = 2;

/// A worker with its health listener bound, not yet consuming: each stage built with the
/// handles it needs, and nothing else.
pub struct Worker {
    settings: WorkerSettings,
    broker: Broker,
    metrics: WorkerMetrics,
    processor: Arc<Processor>,
    reconciler: Arc<Reconciler>,
    listener: TcpListener,
    broker_stop: CancellationToken,
    tasks: TaskTracker,
}

impl Worker {
    pub async fn build(settings: WorkerSettings) -> anyhow::Result<Self> {
        let store = Store::new(db::pool(&settings.database)?, settings.worker.database_transaction_timeout);
        // Through a pooler that shares sessions or drops their settings, refuse now, saying why.
        store::sessions::check(&settings.database).await?;
        let toss_api = TossApi::from_settings(&settings.toss_api)?;
        // The worker checks every message's signature again, so it needs the webhook secrets;
        // and the Stripe API key, which proves the events its reconciler fetched.
        let secrets = WebhookSecrets::from_settings(&settings.secrets)?
            .with_stripe_api_key(settings.reconcile.stripe_api_key.as_ref());
        announce_toss_verification(&settings);
        let listener = TcpListener::bind(settings.worker.worker_addr)
            .await
            .with_context(|| format!("cannot listen on WORKER_ADDR={}", settings.worker.worker_addr))?;
        let metrics = WorkerMetrics::new();
        let broker_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let options = BrokerOptions {
            connection_name: "worker".into(),
            publish_channels: PUBLISH_CHANNELS,
            publish_timeout: settings.service.publish_timeout,
            // The worker consumes the queues and owns the topology: it declares all of it.
            declaring: Declaring::Everything,
        };
        let broker = Broker::start(
            settings.common.amqp_url.clone(),
            Self::topology(&settings),
            options,
            metrics.broker.clone(),
            broker_stop.clone(),
            &tasks,
        );
        let outbox = Outbox::new(
            store.clone(),
            broker.clone(),
            metrics.for_notifications(),
            OutboxOptions {
                lease: settings.worker.outbox_lease,
                batch_size: settings.worker.outbox_batch_size,
                max_attempts: settings.worker.outbox_max_attempts,
                poll_interval: settings.worker.outbox_poll_interval,
            },
        );
        let stopping = CancellationToken::new();
        let processor = Arc::new(Processor {
            store: store.clone(),
            outbox,
            settler: Settler::new(broker.clone(), stopping.clone()),
            toss_api,
            secrets,
            halt: Arc::new(Halt::default()),
            stopping,
            metrics: metrics.for_events(),
            rules: Rules {
                trust: Trust { allow_unverified: settings.worker.toss_allow_unverified },
                max_attempts: settings.worker.retry_max_attempts,
                delivery_limit: settings.common.delivery_limit,
            },
        });
        let reconciler = Arc::new(Reconciler::from_settings(
            &settings.reconcile,
            &settings.toss_api,
            store.clone(),
            broker.clone(),
            metrics.reconcile.clone(),
            // The process id tells an operator (and a test) which process holds the lease.
            format!("worker-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        )?);
        Ok(Self { settings, broker, metrics, processor, reconciler, listener, broker_stop, tasks })
    }

    /// The topology a worker declares: every process's, plus the queues of notification
    /// delivery when it is on (`NOTIFY_WEBHOOK_URL`), which only the worker knows.
    pub fn topology(settings: &WorkerSettings) -> Topology {
        Topology::from_settings(&settings.common).with_notify_delivery(settings.notify.delivery_on())
    }

    /// Address of the health and metrics listener (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The inbox pruner this worker runs (`EVENT_RETENTION`).
    pub fn pruner(&self) -> Pruner {
        Pruner { store: self.processor.store.clone(), retention: self.settings.worker.event_retention }
    }

    fn health(&self) -> Health {
        Health {
            broker: self.broker.clone(),
            store: self.processor.store.clone(),
            halt: self.processor.halt.clone(),
            metrics: self.metrics.clone(),
            backlog_warning: self.settings.worker.outbox_batch_size,
        }
    }

    /// Runs until `shutdown`: then stops consuming, lets in-flight deliveries finish (the rest
    /// return to the queue), flushes the outbox, closes the broker connection and the pool.
    pub async fn run(self, shutdown: CancellationToken) {
        let health = self.health();
        let pruner = self.pruner();
        let Self { settings, broker, metrics, processor, reconciler, listener, broker_stop, tasks } = self;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "worker health and metrics listening");

        let http_stop = CancellationToken::new();
        let http_health = health.clone();
        let draining = shutdown.clone();
        let http = tokio::spawn(http_server::serve(
            listener,
            move |request, _peer| {
                let health = http_health.clone();
                let draining = draining.clone();
                async move { health::route(&health, &draining, request).await }
            },
            ServeOptions {
                header_read_timeout: settings.service.header_read_timeout,
                drain_deadline: std::time::Duration::from_secs(1),
                // Health probes and metric scrapes only.
                max_connections: 64,
                open_connections: None,
            },
            http_stop.clone(),
        ));

        let tag = format!("worker-{}", uuid::Uuid::new_v4().simple());
        let work = tasks.spawn(consume(
            broker.clone(),
            ConsumerOptions {
                queue: broker.topology().work_queue(),
                tag: tag.clone(),
                prefetch: settings.worker.worker_prefetch(),
                concurrency: settings.worker.worker_concurrency,
                batch_size: settings.worker.worker_batch_size,
                batch_linger: settings.worker.worker_batch_linger,
                drain_deadline: settings.service.shutdown_timeout,
            },
            shutdown.clone(),
            Some(processor.halt.clone()),
            {
                let processor = processor.clone();
                move |batch| processor.clone().process_batch(batch)
            },
        ));
        let delivering = delivery::start(
            &settings,
            &broker,
            processor.store.clone(),
            metrics.for_notifications(),
            &tasks,
            &tag,
            shutdown.clone(),
        );
        let relay_stop = CancellationToken::new();
        let relay = tasks.spawn(processor.outbox.clone().run_relay(relay_stop.clone()));
        let gauges = tasks.spawn(health::sample_gauges(health, relay_stop.clone()));
        tasks.spawn(retention::run_pruner(pruner, shutdown.clone()));
        tasks.spawn(reconciler.run(shutdown.clone()));

        shutdown.cancelled().await;
        processor.stopping.cancel();
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
        processor.store.close();
        http_stop.cancel();
        let _ = http.await;
        tracing::info!("worker stopped");
    }
}

/// Says at start how unsigned Toss payment events are verified, and shouts when they are not.
fn announce_toss_verification(settings: &WorkerSettings) {
    if settings.worker.toss_allow_unverified {
        tracing::warn!(
            "INSECURE DEVELOPMENT MODE: TOSS_ALLOW_UNVERIFIED=true applies unsigned Toss payment events that \
             nothing verified; anyone who can reach ingest can mark a payment paid. Never set it in production."
        );
    }
    if settings.toss_api.toss_fetch_back_enabled() {
        tracing::info!(api = %settings.toss_api.toss_api_base, "Toss payment events are fetched back from the Toss API before they are applied");
    } else if !settings.worker.toss_allow_unverified {
        tracing::warn!(
            "TOSS_SECRET_KEY is not set: unsigned Toss payment events are recorded as unverified and change \
             nothing (a DEPOSIT_CALLBACK still applies when it matches the payment's stored secret); set \
             TOSS_SECRET_KEY, then `hookctl unverified recheck --all`"
        );
    }
}
