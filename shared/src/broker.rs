//! One AMQP connection per process, kept alive by a supervisor task.
//!
//! The supervisor connects, declares the [`Topology`], opens a few publisher channels in
//! confirm mode and publishes the live [`Link`] on a watch channel. When the connection
//! breaks (an error event, a failed publish, or a status poll) it withdraws the link, so
//! publishers fail fast with [`PublishError::Unavailable`] (ingest answers 503), and
//! reconnects with exponential backoff. Nothing is retried silently: a publish whose confirm
//! was lost in a reconnect is reported as failed, never as stored.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::BrokerMetrics;
use crate::settings::redacted_url;
use crate::topology::Topology;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A TCP connect to an unreachable host can hang for minutes without this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backstop for connection loss that produced no error event.
const STATUS_POLL: Duration = Duration::from_millis(500);

/// How a process uses its connection.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Shown in the RabbitMQ management UI (`ingest`, `worker`, ...).
    pub connection_name: String,
    /// Publisher channels shared round-robin by all publishes. A channel pipelines any
    /// number of publishes; a few spread the confirm bookkeeping.
    pub publish_channels: usize,
    /// Longest wait for a publisher confirm.
    pub publish_timeout: Duration,
}

/// Why a publish is not known to be stored. Each maps to "not stored, try again".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker is not connected")]
    Unavailable,
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
            Self::Timeout(_) => "timeout",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
            Self::InvalidName => "invalid",
        }
    }
}

/// A live connection with its publisher channels.
pub struct Link {
    /// Distinguishes this link from earlier ones, so a failure reported for an old link never
    /// tears down a new one.
    generation: u64,
    connection: Connection,
    publishers: Vec<Channel>,
    next: AtomicUsize,
}

impl Link {
    /// The connection, for consumers that open channels of their own.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    fn publisher(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        &self.publishers[i]
    }

    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publishers.iter().all(|c| c.status().connected())
    }
}

/// Handle to the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    url: SecretString,
    topology: Topology,
    options: BrokerOptions,
    link: watch::Sender<Option<Arc<Link>>>,
    broken: Notify,
    /// Generation of the link last reported broken.
    broken_generation: AtomicU64,
    generations: AtomicU64,
    confirms_flowing: AtomicBool,
    metrics: BrokerMetrics,
}

impl Broker {
    /// Starts the supervisor on `tracker`; it closes the connection when `cancel` fires.
    pub fn start(
        url: SecretString,
        topology: Topology,
        options: BrokerOptions,
        metrics: BrokerMetrics,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let inner = Arc::new(Inner {
            url,
            topology,
            options,
            link: watch::channel(None).0,
            broken: Notify::new(),
            broken_generation: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            confirms_flowing: AtomicBool::new(true),
            metrics,
        });
        tracker.spawn(supervise(inner.clone(), cancel));
        Self { inner }
    }

    /// Starts the supervisor for the broker and topology named by `settings`.
    pub fn from_settings(
        settings: &crate::Settings,
        connection_name: &str,
        publish_channels: usize,
        metrics: BrokerMetrics,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let options = BrokerOptions {
            connection_name: connection_name.to_string(),
            publish_channels,
            publish_timeout: settings.publish_timeout,
        };
        Self::start(settings.amqp_url.clone(), Topology::from_settings(settings), options, metrics, cancel, tracker)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The current link, if connected.
    pub fn current(&self) -> Option<Arc<Link>> {
        self.inner.link.borrow().clone()
    }

    /// Waits for a link; `None` once `cancel` fires.
    pub async fn connected(&self, cancel: &CancellationToken) -> Option<Arc<Link>> {
        let mut rx = self.inner.link.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => None,
            link = rx.wait_for(Option::is_some) => link.ok().and_then(|l| l.clone()),
        }
    }

    /// Connected, not blocked by a resource alarm, and the last confirm did not time out.
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|l| l.usable() && !l.connection.status().blocked())
            && self.inner.confirms_flowing.load(Ordering::Relaxed)
    }

    /// Tells the supervisor that `link` failed, so it reconnects instead of waiting for the
    /// next status poll.
    pub fn report_broken(&self, link: &Arc<Link>) {
        if self.current().is_some_and(|current| Arc::ptr_eq(&current, link)) {
            self.inner.broken_generation.store(link.generation, Ordering::SeqCst);
            self.inner.broken.notify_one();
        }
    }

    /// Publishes a persistent message and waits for its confirm. `Ok` only for `Ack` with
    /// nothing returned: with `mandatory`, an unroutable message comes back as a return
    /// followed by an ack, which is [`PublishError::Unroutable`] here.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = self.publish_inner(exchange, routing_key, body, properties).await;
        let label = match &result {
            Ok(()) => "confirmed",
            Err(e) => e.label(),
        };
        self.inner.metrics.publishes.with_label_values(&[label]).inc();
        result
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        // Checked here, not by `From<&str>`, which panics past 255 bytes.
        let exchange = ShortString::try_new(exchange).map_err(|_| PublishError::InvalidName)?;
        let routing_key = ShortString::try_new(routing_key).map_err(|_| PublishError::InvalidName)?;
        let link = self.current().ok_or(PublishError::Unavailable)?;
        let channel = link.publisher();
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let timeout = self.inner.options.publish_timeout;
        let confirmed = tokio::time::timeout(timeout, async {
            channel.basic_publish(exchange, routing_key, options, body, properties).await?.await
        })
        .await;
        let flowing = &self.inner.confirms_flowing;
        match confirmed {
            Err(_) => {
                // No confirm in time: the broker is blocked or the connection is half dead.
                // Unready until a fresh connection confirms again (a reconnect resets this).
                flowing.store(false, Ordering::Relaxed);
                self.report_broken(&link);
                Err(PublishError::Timeout(timeout))
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "publish failed; reconnecting to the broker");
                self.report_broken(&link);
                Err(PublishError::Unavailable)
            }
            Ok(Ok(Confirmation::Ack(None))) => {
                flowing.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                flowing.store(true, Ordering::Relaxed);
                Err(PublishError::Unroutable(returned.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                // Only possible if a channel lost confirm mode; treat the link as broken.
                self.report_broken(&link);
                Err(PublishError::Unavailable)
            }
        }
    }
}

async fn connect(inner: &Inner) -> Result<Arc<Link>, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(inner.options.connection_name.clone().into());
    let connection = Connection::connect(inner.url.expose_secret(), properties).await?;
    inner.topology.declare(&connection).await?;
    let mut publishers = Vec::with_capacity(inner.options.publish_channels.max(1));
    for _ in 0..inner.options.publish_channels.max(1) {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        publishers.push(channel);
    }
    let generation = inner.generations.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Arc::new(Link { generation, connection, publishers, next: AtomicUsize::new(0) }))
}

async fn supervise(inner: Arc<Inner>, cancel: CancellationToken) {
    let shown_url = redacted_url(&inner.url);
    let mut backoff = MIN_BACKOFF;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => break,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&inner)) => attempt,
        };
        match attempt {
            Ok(Ok(link)) => {
                tracing::info!(broker = %shown_url, prefix = inner.topology.prefix(), "broker connected, topology declared");
                inner.metrics.connected.set(1);
                inner.metrics.connects.inc();
                inner.confirms_flowing.store(true, Ordering::Relaxed);
                inner.link.send_replace(Some(link.clone()));
                backoff = MIN_BACKOFF;
                let shutting_down = watch_link(&inner, &link, &cancel).await;
                inner.link.send_replace(None);
                inner.metrics.connected.set(0);
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), link.connection.close(200, "closing".into())).await;
                if shutting_down {
                    tracing::info!("broker connection closed");
                    return;
                }
                tracing::warn!(broker = %shown_url, "broker connection lost; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::warn!(broker = %shown_url, %error, retry_in = ?backoff, "broker unreachable");
            }
            Err(_) => {
                tracing::warn!(broker = %shown_url, retry_in = ?backoff, "broker connect timed out");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Returns when the link is gone (false) or shutdown was requested (true).
async fn watch_link(inner: &Inner, link: &Link, cancel: &CancellationToken) -> bool {
    let mut events = link.connection.events_listener();
    let mut poll = tokio::time::interval(STATUS_POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return true,
            _ = inner.broken.notified() => {
                if inner.broken_generation.load(Ordering::SeqCst) == link.generation {
                    return false;
                }
            }
            event = events.next() => match event {
                Some(Event::Error(error)) => {
                    tracing::warn!(%error, "broker connection error");
                    return false;
                }
                Some(Event::ConnectionBlocked(reason)) => tracing::warn!(%reason, "broker blocked publishing"),
                Some(Event::ConnectionUnblocked) => tracing::info!("broker unblocked publishing"),
                Some(_) => {}
                None => return false,
            },
            _ = poll.tick() => if !link.usable() { return false },
        }
    }
}
