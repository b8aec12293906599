//! An AMQP prefix per test, helpers to read queues, and clean-up of everything the prefix
//! declared when the test ends.

use std::sync::Mutex;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::settings::{CommonSettings, Settings};
use shared::topology::Topology;
use shared::Provider;

use crate::{amqp_url, unique};

/// Owns a unique prefix; deletes the queues and exchanges of every topology it handed
/// settings out for when dropped.
pub struct TestBroker {
    pub prefix: String,
    connection: Connection,
    channel: Channel,
    declared: Mutex<Vec<Topology>>,
}

impl TestBroker {
    pub async fn new() -> Self {
        let prefix = unique("t");
        let connection =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("connect to test RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        Self { prefix, connection, channel, declared: Mutex::new(Vec::new()) }
    }

    /// Settings for code under test (a binary's: `IngestSettings`, `WorkerSettings`,
    /// `HookctlSettings`): this prefix, the test broker and database, fast retry tiers,
    /// ephemeral ports, a known Stripe secret; `vars` override any of it.
    pub fn settings<S: Settings>(&self, database_url: Option<&str>, vars: &[(&str, &str)]) -> S {
        let amqp = amqp_url();
        let mut all: Vec<(&str, &str)> = vec![
            ("AMQP_URL", &amqp),
            ("AMQP_PREFIX", &self.prefix),
            ("INGEST_ADDR", "127.0.0.1:0"),
            ("INGEST_METRICS_ADDR", "127.0.0.1:0"),
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("STRIPE_WEBHOOK_SECRET", crate::events::STRIPE_SECRET),
            ("RETRY_DELAYS", "100ms,300ms,1s"),
            ("SHUTDOWN_TIMEOUT", "10s"),
        ];
        if let Some(url) = database_url {
            all.push(("DATABASE_URL", url));
        }
        all.extend_from_slice(vars);
        let settings = S::from_vars(all).expect("valid test settings");
        self.track(Topology::from_settings(settings.common()));
        settings
    }

    /// Remembers a topology for clean-up: with notification delivery on, and also with the
    /// default retry tiers (a process started without `RETRY_DELAYS` declares those).
    pub fn track(&self, topology: Topology) {
        let prefix = topology.prefix().to_string();
        let mut declared = self.declared.lock().unwrap();
        declared.push(Topology::new(&prefix, topology.retry_delays().to_vec(), 1, true));
        declared.push(Topology::new(&prefix, CommonSettings::default().retry_delays, 1, true));
        declared.push(topology);
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Takes one message from `queue` (acknowledged), or `None` if it is empty.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))?;
        Some(message)
    }

    /// Waits up to `deadline` for a message on `queue`.
    pub async fn wait_get(&self, queue: &str, deadline: Duration) -> BasicGetMessage {
        crate::eventually(&format!("a message on {queue}"), deadline, || self.get(queue)).await
    }

    /// Messages ready in `queue` (0 if it does not exist).
    pub async fn count(&self, queue: &str) -> u32 {
        self.inspect(queue).await.map_or(0, |q| q.message_count())
    }

    /// Consumers of `queue` (0 if it does not exist).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue).await.map_or(0, |q| q.consumer_count())
    }

    /// A passive declare on a channel of its own: one of a missing queue closes its channel.
    async fn inspect(&self, queue: &str) -> Option<lapin::Queue> {
        let channel = self.connection.create_channel().await.expect("channel");
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(queue.into(), options, FieldTable::default()).await.ok();
        let _ = channel.close(200, "".into()).await;
        queue
    }

    /// A private queue bound to `exchange` with `#` (gone when this broker handle is dropped).
    pub async fn subscribe(&self, exchange: &str) -> String {
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = self.channel.queue_declare("".into(), options, FieldTable::default()).await.expect("declare");
        let name = queue.name().to_string();
        self.channel
            .queue_bind(name.as_str().into(), exchange.into(), "#".into(), Default::default(), FieldTable::default())
            .await
            .expect("bind");
        name
    }

    /// Drains `queue`, returning every message in it.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut all = Vec::new();
        while let Some(m) = self.get(queue).await {
            all.push(m);
        }
        all
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topologies = std::mem::take(&mut *self.declared.lock().unwrap());
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else { return };
                let mut names: Vec<String> = topologies.iter().flat_map(Topology::queues).collect();
                names.sort();
                names.dedup();
                for name in names {
                    // A delete of a missing queue closes the channel, so each gets its own.
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.queue_delete(name.into(), QueueDeleteOptions::default()).await;
                        let _ = ch.close(200, "".into()).await;
                    }
                }
                for exchange in [format!("{prefix}.events"), format!("{prefix}.notifications")] {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
                        let _ = ch.close(200, "".into()).await;
                    }
                }
                let _ = conn.close(200, "".into()).await;
            });
        })
        .join();
    }
}

/// The envelope ingest would publish for this event: Stripe signed with `stripe_secret` (the
/// worker checks the signature again), Toss unsigned.
pub fn envelope_as_ingest(
    provider: Provider,
    event_type: &str,
    event_key: &str,
    body: &[u8],
    stripe_secret: &str,
) -> EventEnvelope {
    EventEnvelope {
        provider,
        event_type: event_type.to_string(),
        event_key: event_key.to_string(),
        verification: match provider {
            Provider::Stripe => IngestVerification::Signature,
            Provider::Toss => IngestVerification::Unsigned,
        },
        received_at: chrono::Utc::now(),
        request_id: unique("req"),
        attempt: 0,
        delivery_headers: match provider {
            Provider::Stripe => {
                [("stripe-signature".to_string(), crate::events::stripe_signature(body, stripe_secret))]
                    .into_iter()
                    .collect()
            }
            Provider::Toss => Default::default(),
        },
        body: body.to_vec(),
    }
}

/// Publishes an event to `broker`'s events exchange as ingest does (its envelope, routing key,
/// mandatory and persistent) and waits for the broker's confirm that it was routed.
pub async fn publish_as_ingest(
    broker: &TestBroker,
    provider: Provider,
    event_type: &str,
    event_key: &str,
    body: &[u8],
) {
    let envelope = envelope_as_ingest(provider, event_type, event_key, body, crate::events::STRIPE_SECRET);
    publish_confirmed(broker, &format!("{provider}.{event_type}"), body, envelope.properties()).await;
}

/// Publishes `body` to `broker`'s events exchange, mandatory, and waits for the confirm that it
/// was routed.
pub async fn publish_confirmed(broker: &TestBroker, routing_key: &str, body: &[u8], properties: BasicProperties) {
    publish_confirmed_to(broker, &format!("{}.events", broker.prefix), routing_key, body, properties).await
}

/// Publishes `body` to `exchange` (`""`: straight to the queue named `routing_key`), mandatory,
/// and waits for the confirm that it was routed.
pub async fn publish_confirmed_to(
    broker: &TestBroker,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let channel = broker.channel();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, lapin::Confirmation::Ack(None)), "published and routed");
}
