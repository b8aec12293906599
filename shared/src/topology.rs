//! Every exchange and queue, derived from `AMQP_PREFIX`. The worker declares them all,
//! idempotently, at every start ([`Declaring::Everything`]): it consumes the queues and owns
//! them. Ingest only checks that what it publishes to exists ([`Declaring::IfMissing`]): as
//! deployed, its AMQP user may publish to the events exchange and do nothing else
//! (`deploy/rabbitmq/permissions`), and a publisher has no business redeclaring queues.
//!
//! ```text
//! ingest ─▶ {p}.events (topic) ─#─▶ {p}.work (quorum, delivery-limit) ─▶ worker
//!                                     ▲            │ delivery limit exceeded
//!            {p}.work.retry.<delay> ──┘ (TTL)      ▼
//!                     ▲ transient failure       {p}.dead (quorum) ◀─ permanent failure / last attempt
//!                     └──────────── worker ─────────┘
//! worker outbox relay ─▶ {p}.notifications (topic) ─#─▶ {p}.notify.delivery ─▶ HTTP delivery
//!                                     {p}.notify.retry.<delay> (TTL) ─┘ ▲      └─▶ {p}.notify.dead
//! ```
//!
//! All queues are quorum queues: replicated, always persistent, and able to dead-letter
//! `at-least-once` (which needs `overflow = reject-publish`), so a message moving from a delay
//! queue back to work, or from work to the dead letters, is never dropped on the way. The
//! dead-letter queues are the end of the line: they carry a delivery limit no reading can
//! reach ([`DEAD_LETTER_DELIVERY_LIMIT`]), so inspecting them never drops what they hold.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::broker::access::{self, Refusal};
use crate::envelope::long_string;
use crate::settings::CommonSettings;

/// What a process does with the topology when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declaring {
    /// Declare every exchange, queue and binding (the worker).
    Everything,
    /// Check that the events exchange and the work queue exist, with passive declarations
    /// (which need no permission); declare everything only when one is missing: a first
    /// start on a fresh broker with a user allowed to (a developer's `guest`). Ingest.
    IfMissing,
}

/// Why the topology is not in place.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The AMQP user may not declare or bind what this process declares.
    #[error("cannot declare the broker topology: {error}; {}", Refusal::Permission.remedy())]
    Refused { error: lapin::Error },
    /// Something ingest publishes to does not exist, and its user may not declare it.
    #[error(
        "{name} does not exist on the broker, and this AMQP user may not declare it (as deployed, ingest's \
         user only publishes): start a worker, which declares the topology, and ingest connects once it exists"
    )]
    Missing { name: String },
    /// Anything else: the connection or the broker failed.
    #[error(transparent)]
    Broker(lapin::Error),
}

impl From<lapin::Error> for TopologyError {
    fn from(error: lapin::Error) -> Self {
        match access::refusal(&error) {
            Some(Refusal::Permission) => Self::Refused { error },
            _ => Self::Broker(error),
        }
    }
}

/// Delivery limit of the dead-letter queues (`{p}.dead`, `{p}.notify.dead`): none in practice,
/// but stated explicitly.
///
/// Reading a dead letter without acknowledging it (`hookctl dead list` and `show` do, and
/// return every message when they finish) counts as a delivery, and a quorum queue drops a
/// message past its limit when, as here, it has nowhere to dead-letter it. RabbitMQ 4 gives
/// every quorum queue declared without a limit a default of 20, so the 21st look at a dead
/// letter would delete it. `-1`, RabbitMQ 4's word for "unlimited", is worse on RabbitMQ 3.x,
/// which accepts it as a limit every return exceeds (tested on 3.10: the first look drops the
/// message). So the limit is a number: a billion returns, beyond any amount of looking, with
/// the same meaning on every version.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Names and shapes of the broker objects for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
    delivery_limit: u32,
    notify_delivery: bool,
}

impl Topology {
    /// The topology under `prefix`; `notify_delivery` adds the queues of the HTTP delivery of
    /// notifications (on only in a worker with `NOTIFY_WEBHOOK_URL` set).
    pub fn new(prefix: &str, retry_delays: Vec<Duration>, delivery_limit: u32, notify_delivery: bool) -> Self {
        Self { prefix: prefix.to_string(), retry_delays, delivery_limit, notify_delivery }
    }

    /// The topology every process knows from the common settings: the events, their retries
    /// and dead letters, and the notifications exchange, without the queues of notification
    /// delivery. Only the worker knows whether delivery is on; it adds them with
    /// [`Topology::with_notify_delivery`].
    pub fn from_settings(common: &CommonSettings) -> Self {
        Self::new(&common.amqp_prefix, common.retry_delays.clone(), common.delivery_limit, false)
    }

    /// The same topology, with or without the queues of notification delivery.
    pub fn with_notify_delivery(self, on: bool) -> Self {
        Self { notify_delivery: on, ..self }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange ingest publishes to, routing key `<provider>.<event type>`.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The quorum queue workers consume.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// Delay tiers, shortest first.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Delay queue for `tier` (clamped to the last tier). The delay is in the name so that
    /// changing `RETRY_DELAYS` declares new queues instead of clashing with old arguments.
    pub fn retry_queue(&self, tier: usize) -> String {
        delay_queue_name(&format!("{}.work.retry", self.prefix), self.delay(tier))
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Topic exchange the outbox relay publishes notifications to.
    pub fn notifications_exchange(&self) -> String {
        format!("{}.notifications", self.prefix)
    }

    /// Queue of the optional HTTP delivery of notifications.
    pub fn notify_queue(&self) -> String {
        format!("{}.notify.delivery", self.prefix)
    }

    pub fn notify_retry_queue(&self, tier: usize) -> String {
        delay_queue_name(&format!("{}.notify.retry", self.prefix), self.delay(tier))
    }

    pub fn notify_dead_queue(&self) -> String {
        format!("{}.notify.dead", self.prefix)
    }

    /// Delay of `tier`, the last tier repeating.
    pub fn delay(&self, tier: usize) -> Duration {
        let last = self.retry_delays.len().saturating_sub(1);
        self.retry_delays.get(tier.min(last)).copied().unwrap_or(Duration::from_secs(1))
    }

    pub fn routing_key(provider: &str, event_type: &str) -> String {
        format!("{provider}.{event_type}")
    }

    /// Every queue this topology declares (for depth metrics and clean-up).
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.work_queue(), self.dead_queue()];
        queues.extend((0..self.retry_delays.len()).map(|t| self.retry_queue(t)));
        if self.notify_delivery {
            queues.push(self.notify_queue());
            queues.push(self.notify_dead_queue());
            queues.extend((0..self.retry_delays.len()).map(|t| self.notify_retry_queue(t)));
        }
        queues.dedup();
        queues
    }

    /// Puts the topology in place as `declaring` says.
    pub async fn ensure(&self, connection: &Connection, declaring: Declaring) -> Result<(), TopologyError> {
        if declaring == Declaring::IfMissing {
            let Some(missing) = self.missing_for_publishing(connection).await? else { return Ok(()) };
            return match self.declare(connection).await {
                Err(TopologyError::Refused { .. }) => Err(TopologyError::Missing { name: missing }),
                other => other,
            };
        }
        self.declare(connection).await
    }

    /// The first of the events exchange and the work queue that does not exist. Passive
    /// declarations need no permission; each gets a channel of its own, since one of a missing
    /// object closes its channel.
    async fn missing_for_publishing(&self, connection: &Connection) -> Result<Option<String>, TopologyError> {
        let exchange = self.events_exchange();
        let channel = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let found = channel
            .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default())
            .await;
        if let Some(missing) = absent(found, &exchange)? {
            return Ok(Some(missing));
        }
        let _ = channel.close(200, "checked".into()).await;
        let queue = self.work_queue();
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let found = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.map(drop);
        if let Some(missing) = absent(found, &queue)? {
            return Ok(Some(missing));
        }
        let _ = channel.close(200, "checked".into()).await;
        Ok(None)
    }

    /// Declares everything; safe to run from every process at every start.
    ///
    /// A queue that already exists with other arguments (say, another `DELIVERY_LIMIT`) is
    /// kept as it is, with a warning, instead of failing the start: RabbitMQ refuses to
    /// redeclare a queue with different arguments, and one process configured differently must
    /// not take the whole pipeline down. Change arguments of existing queues with a policy.
    pub async fn declare(&self, connection: &Connection) -> Result<(), TopologyError> {
        let mut declarer = Declarer { connection, channel: connection.create_channel().await? };
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for exchange in [self.events_exchange(), self.notifications_exchange()] {
            declarer
                .channel
                .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default())
                .await?;
        }
        self.declare_flow(&mut declarer, &self.work_queue(), &self.dead_queue(), |t| self.retry_queue(t)).await?;
        bind(&declarer.channel, &self.work_queue(), &self.events_exchange()).await?;
        if self.notify_delivery {
            self.declare_flow(&mut declarer, &self.notify_queue(), &self.notify_dead_queue(), |t| {
                self.notify_retry_queue(t)
            })
            .await?;
            bind(&declarer.channel, &self.notify_queue(), &self.notifications_exchange()).await?;
        }
        let _ = declarer.channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// A consumed queue, its dead-letter queue and its delay tiers.
    async fn declare_flow(
        &self,
        declarer: &mut Declarer<'_>,
        queue: &str,
        dead: &str,
        retry_name: impl Fn(usize) -> String,
    ) -> Result<(), TopologyError> {
        let kept = declarer.queue(dead, dead_letter_args()).await?;
        if kept {
            tracing::warn!(
                queue = dead,
                "this dead-letter queue may lack the explicit delivery limit: on RabbitMQ 4 a quorum queue without \
                 one drops a message after 20 reads (hookctl dead list/show each count as one); there, apply a \
                 policy with `delivery-limit` -1 to it, or recreate it empty (RabbitMQ 3.x has no default limit)"
            );
        }
        let mut args = dead_lettering_to(dead);
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(self.delivery_limit)));
        declarer.queue(queue, args).await?;
        for tier in 0..self.retry_delays.len() {
            let mut args = dead_lettering_to(queue);
            let ttl = self.delay(tier).as_millis().min(i64::MAX as u128) as i64;
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            declarer.queue(&retry_name(tier), args).await?;
        }
        Ok(())
    }
}

/// Declares queues on a channel, replacing the channel when the broker closes it.
struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
}

impl Declarer<'_> {
    /// Declares `name`; `Ok(true)` when it already existed with other arguments and was kept.
    async fn queue(&mut self, name: &str, args: FieldTable) -> Result<bool, lapin::Error> {
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        match self.channel.queue_declare(ShortString::from(name), options, args).await {
            Ok(_) => Ok(false),
            Err(error) if is_precondition_failed(&error) => {
                tracing::warn!(queue = name, %error, "queue exists with other arguments; keeping the existing ones (change them with a policy)");
                // The failed declare closed the channel: check existence on a fresh one.
                self.channel = self.connection.create_channel().await?;
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                self.channel.queue_declare(ShortString::from(name), passive, FieldTable::default()).await?;
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    is_soft(error, AMQPSoftError::PRECONDITIONFAILED)
}

fn is_soft(error: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.kind() == &AMQPErrorKind::Soft(kind))
}

/// `Some(name)` when a passive declaration found nothing by that name.
fn absent<T>(declared: Result<T, lapin::Error>, name: &str) -> Result<Option<String>, TopologyError> {
    match declared {
        Ok(_) => Ok(None),
        Err(error) if is_soft(&error, AMQPSoftError::NOTFOUND) => Ok(Some(name.to_string())),
        Err(error) => Err(error.into()),
    }
}

fn delay_queue_name(base: &str, delay: Duration) -> String {
    let text = humantime::format_duration(delay).to_string().replace(' ', "");
    format!("{base}.{text}")
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

/// A dead-letter queue: quorum, with a delivery limit no amount of inspection reaches.
pub fn dead_letter_args() -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT));
    args
}

/// Quorum queue that dead-letters through the default exchange straight into `target`.
fn dead_lettering_to(target: &str) -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert("x-dead-letter-routing-key".into(), long_string(target));
    args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

async fn bind(channel: &Channel, queue: &str, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .queue_bind(queue.into(), exchange.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_derives_from_the_prefix() {
        let t = Topology::new("shop", vec![Duration::from_millis(200), Duration::from_secs(60)], 5, true);
        assert_eq!(t.events_exchange(), "shop.events");
        assert_eq!(t.work_queue(), "shop.work");
        assert_eq!(t.retry_queue(0), "shop.work.retry.200ms");
        assert_eq!(t.retry_queue(1), "shop.work.retry.1m");
        assert_eq!(t.retry_queue(7), "shop.work.retry.1m", "the last tier repeats");
        assert_eq!(t.dead_queue(), "shop.dead");
        assert_eq!(t.notifications_exchange(), "shop.notifications");
        assert_eq!(t.notify_retry_queue(0), "shop.notify.retry.200ms");
        assert!(t.queues().iter().all(|q| q.starts_with("shop.")));
        assert_eq!(t.queues().len(), 2 + 2 + 2 + 2);
    }
}
