//! One AMQP connection per process, kept alive by a supervisor task.
//!
//! The supervisor ([`supervisor`]) connects to a node of `AMQP_URL` (a comma-separated list of
//! the nodes of one cluster, see [`nodes`]), puts the [`Topology`] in place (declares it, or
//! checks it, see [`Declaring`]), opens a few publisher
//! channels in confirm mode and publishes the live [`Link`] on a watch channel. When the
//! connection breaks (an error event, a failed publish, a status poll, or a link on which
//! confirms stopped altogether) it withdraws the link, so publishers fail fast with
//! [`PublishError::Unavailable`] (ingest answers 503), and connects to the next node, backing
//! off once every node has failed. Nothing is retried silently: a publish whose confirm was
//! lost is reported as failed, never as stored.
//!
//! Failures stay as small as they are: a confirm that is late fails only its own publish (the
//! link is replaced only when it goes silent as a whole), and a nack retires only its channel.
//! A nack must retire the channel: after a quorum queue's leader moves, RabbitMQ 3.10 can nack
//! every publish on a channel that published before the election, while a new channel is acked.
//!
//! A permission the broker refuses ([`access`]) is logged as such, with what to grant.

pub mod access;
mod link;
pub mod nodes;
mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use secrecy::SecretString;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::link::Link;
use self::link::{open_publisher, PublishKind};
pub use self::nodes::{connect_first, ConnectError};
use crate::metrics::BrokerMetrics;
pub use crate::settings::amqp_nodes::redacted_urls;
use crate::topology::{Declaring, Topology};

/// How a process uses its connection.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Shown in the RabbitMQ management UI (`ingest`, `worker`, ...).
    pub connection_name: String,
    /// Publisher channels shared round-robin by the publishes that must be stored
    /// ([`Broker::publish`]; broadcasts have one more of their own). A channel pipelines any
    /// number of publishes; a few spread the confirm bookkeeping, and keep publishing going
    /// while one retired channel is replaced.
    pub publish_channels: usize,
    /// Longest wait for a publisher confirm.
    pub publish_timeout: Duration,
    /// Whether this process declares the topology or only checks it.
    pub declaring: Declaring,
}

/// Why a publish is not known to be stored. Each maps to "not stored, try again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker is not connected")]
    Unavailable,
    #[error("broker is blocking publishers (a memory or disk alarm)")]
    Blocked,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for the message ({0})")]
    Unroutable(String),
    #[error("exchange or routing key longer than AMQP allows (255 bytes)")]
    InvalidName,
}

impl PublishError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Blocked => "blocked",
            Self::Timeout(_) => "timeout",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
            Self::InvalidName => "invalid",
        }
    }
}

/// Handle to the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The nodes of `AMQP_URL`, in order.
    nodes: Vec<SecretString>,
    topology: Topology,
    options: BrokerOptions,
    link: watch::Sender<Option<Arc<Link>>>,
    broken: Notify,
    /// Generation of the link last reported broken.
    broken_generation: AtomicU64,
    generations: AtomicU64,
    metrics: BrokerMetrics,
    /// Replacements of retired channels run here, so shutdown waits for them.
    tasks: TaskTracker,
}

impl Broker {
    /// Starts the supervisor on `tracker`; it closes the connection when `cancel` fires.
    /// `url` is `AMQP_URL`: one node, or several comma-separated.
    pub fn start(
        url: SecretString,
        topology: Topology,
        options: BrokerOptions,
        metrics: BrokerMetrics,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let mut nodes = crate::settings::amqp_nodes::node_urls(&url);
        if nodes.is_empty() {
            nodes.push(url);
        }
        let inner = Arc::new(Inner {
            nodes,
            topology,
            options,
            link: watch::channel(None).0,
            broken: Notify::new(),
            broken_generation: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            metrics,
            tasks: tracker.clone(),
        });
        tracker.spawn(supervisor::supervise(inner.clone(), cancel));
        Self { inner }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The current link, if connected.
    pub fn current(&self) -> Option<Arc<Link>> {
        self.inner.link.borrow().clone()
    }

    /// Index in `AMQP_URL` of the node currently connected to.
    pub fn current_node(&self) -> Option<usize> {
        self.current().map(|l| l.node)
    }

    /// Waits for a link; `None` once `cancel` fires.
    pub async fn connected(&self, cancel: &CancellationToken) -> Option<Arc<Link>> {
        let mut rx = self.inner.link.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => None,
            link = rx.wait_for(Option::is_some) => link.ok().and_then(|l| l.clone()),
        }
    }

    /// Connected, not blocked by a resource alarm, and no confirm awaited longer than the
    /// publish timeout without any arriving.
    pub fn is_ready(&self) -> bool {
        let timeout = self.inner.options.publish_timeout;
        self.current().is_some_and(|l| {
            l.connected() && !l.blocked() && l.confirms.stalled_for().is_none_or(|stalled| stalled < timeout)
        })
    }

    /// Tells the supervisor that `link` failed, so it reconnects instead of waiting for the
    /// next status poll.
    pub fn report_broken(&self, link: &Arc<Link>) {
        if self.current().is_some_and(|current| Arc::ptr_eq(&current, link)) {
            self.inner.broken_generation.store(link.generation, Ordering::SeqCst);
            self.inner.broken.notify_one();
        }
    }

    /// Publishes a persistent message that must be stored (an event, a retry, a dead letter)
    /// and waits for its confirm. `Ok` only for `Ack` with nothing returned: with `mandatory`,
    /// an unroutable message comes back as a return followed by an ack, which is
    /// [`PublishError::Unroutable`] here.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_bytes(exchange, routing_key, Bytes::copy_from_slice(body), properties).await
    }

    /// [`Broker::publish`] for a message to whoever subscribes (a notification), for which
    /// [`PublishError::Unroutable`] (nobody does) is an answer rather than a failure. On a
    /// channel of its own: such returns, routine here, then never reach a publish that must
    /// be stored (see [`link::PublishKind`]).
    pub async fn publish_broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = self
            .publish_inner(PublishKind::Broadcast, exchange, routing_key, Bytes::copy_from_slice(body), properties)
            .await;
        self.count(&result);
        result
    }

    /// [`Broker::publish`] for a body already in a [`Bytes`] (ingest's request body): no copy
    /// is made of it before lapin frames it.
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = self.publish_inner(PublishKind::Stored, exchange, routing_key, body, properties).await;
        self.count(&result);
        result
    }

    fn count(&self, result: &Result<(), PublishError>) {
        let label = match result {
            Ok(()) => "confirmed",
            Err(e) => e.label(),
        };
        self.inner.metrics.publishes.with_label_values(&[label]).inc();
    }

    async fn publish_inner(
        &self,
        kind: PublishKind,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        // Checked here, not by `From<&str>`, which panics past 255 bytes.
        let exchange_name = exchange;
        let exchange = ShortString::try_new(exchange).map_err(|_| PublishError::InvalidName)?;
        let routing_key = ShortString::try_new(routing_key).map_err(|_| PublishError::InvalidName)?;
        let link = self.current().ok_or(PublishError::Unavailable)?;
        if link.blocked() {
            // Publishing now would only wait for the alarm to clear.
            return Err(PublishError::Blocked);
        }
        let (slot, channel) = link.publisher(kind).ok_or(PublishError::Unavailable)?;
        let awaited = link.confirms.start();
        let late = awaited.late();
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        // Kept to tell this publish's own returned message from another's (a reference count).
        let sent = body.clone();
        let publishing = channel.clone();
        let mut confirmed = Box::pin(async move {
            let confirmation = publishing.basic_publish(exchange, routing_key, options, &body, properties).await?.await;
            drop(awaited);
            confirmation
        });
        let timeout = self.inner.options.publish_timeout;
        let confirmation = tokio::select! {
            confirmation = &mut confirmed => confirmation,
            _ = tokio::time::sleep(timeout) => {
                // This request fails; the confirm is still awaited in the background, counted
                // as outstanding, but its arrival (late) is no progress: a link whose every
                // confirm comes after its request gave up serves nobody, and is replaced like
                // a silent one once that lasts `STALLED_LINK_TIMEOUTS` publish timeouts.
                // Bounded: by then such a link has been replaced, which ends it anyway.
                late.now();
                let watch_for = timeout * (supervisor::STALLED_LINK_TIMEOUTS + 1);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(watch_for, confirmed).await;
                });
                return Err(PublishError::Timeout(timeout));
            }
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                // Broadcasts come back whenever nobody subscribes, and which one is told it
                // came back matters to none of them.
                if kind == PublishKind::Stored && returned.delivery.data != sent {
                    self.misattributed(&returned, exchange_name);
                }
                Err(PublishError::Unroutable(returned.reply_text.to_string()))
            }
            Ok(Confirmation::Nack(_)) => {
                self.retire(&link, slot, &channel, "the broker nacked a publish on it");
                Err(PublishError::Nacked)
            }
            Ok(Confirmation::NotRequested) => {
                // Only possible if a channel lost confirm mode.
                self.retire(&link, slot, &channel, "it is not in confirm mode");
                Err(PublishError::Unavailable)
            }
            Err(error) if access::refusal(&error).is_some() => {
                let remedy = access::refusal(&error).map(access::Refusal::remedy).unwrap_or_default();
                tracing::error!(%error, exchange = exchange_name, remedy, "the broker refused the publish");
                self.retire(&link, slot, &channel, "the broker refused a publish on it");
                Err(PublishError::Unavailable)
            }
            Err(error) if link.connected() => {
                tracing::warn!(%error, "publish failed on its channel; replacing the channel");
                self.retire(&link, slot, &channel, "a publish failed on it");
                Err(PublishError::Unavailable)
            }
            Err(error) => {
                tracing::warn!(%error, "publish failed; reconnecting to the broker");
                self.report_broken(&link);
                Err(PublishError::Unavailable)
            }
        }
    }

    /// A return handed to this publish that is another's message. A return carries no delivery
    /// tag, and when one `multiple` ack confirms several publishes of a channel, lapin gives its
    /// returns to the publishes in the order it settles them, which is not the order they were
    /// published in. So the publish the message belongs to may have been told it was stored.
    /// This publish, told it was not, is at worst stored twice (deduplicated). Only messages
    /// that must be stored are concerned when a queue or binding they need vanishes mid-flight;
    /// what can be done is to say which message it was.
    fn misattributed(&self, returned: &lapin::message::BasicReturnMessage, exchange: &str) {
        self.inner.metrics.returns_misattributed.inc();
        let properties = &returned.delivery.properties;
        let ids: Vec<String> = if crate::bundle::is_bundle(properties) {
            crate::bundle::decode(&returned.delivery.data)
                .unwrap_or_default()
                .iter()
                .filter_map(|(part, _)| part.message_id().as_ref().map(|id| id.to_string()))
                .collect()
        } else {
            properties.message_id().iter().map(|id| id.to_string()).collect()
        };
        tracing::error!(
            exchange,
            returned = ?ids,
            "the broker returned, unroutable, the message of another publish confirmed at the same time, which may have been told it was stored; \
             a webhook among them is found by reconciliation (`hookctl reconcile`)"
        );
    }

    /// Takes `channel` out of rotation and opens a replacement at once; the old channel is
    /// closed once the publishes still waiting on it have had their time.
    fn retire(&self, link: &Arc<Link>, slot: usize, channel: &Channel, why: &'static str) {
        if !link.take_publisher(slot, channel) {
            return; // Another publish already retired it.
        }
        self.inner.metrics.channels_retired.inc();
        tracing::warn!(channel = channel.id(), why, "retiring a publisher channel");
        let (broker, link, old) = (self.clone(), link.clone(), channel.clone());
        self.inner.tasks.spawn(async move {
            match open_publisher(&link.connection).await {
                Ok(fresh) => link.put_publisher(slot, fresh),
                Err(error) => {
                    tracing::warn!(%error, "cannot open a publisher channel; reconnecting to the broker");
                    broker.report_broken(&link);
                }
            }
            // Untracked: shutdown closes the whole connection anyway.
            let grace = broker.inner.options.publish_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = old.close(200, "retired".into()).await;
            });
        });
    }
}
