//! The task that keeps a link: connects to a node of `AMQP_URL`, puts the topology in place
//! (declares or checks it), opens the publisher channels, publishes the link, watches it, and
//! on loss moves to the next node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, Event};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::access;
use super::link::{open_publisher, Link};
use super::nodes::CONNECT_TIMEOUT;
use super::Inner;
use crate::backoff::Backoff;
use crate::settings::amqp_nodes::redacted_node;
use crate::topology::TopologyError;

/// The shortest wait before reconnecting: a lost link is retried almost at once, on the next node.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest: a broker back from an outage is found within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Backstop for connection loss that produced no error event, and for stalled confirms.
const STATUS_POLL: Duration = Duration::from_millis(250);
/// A link on which confirms are awaited and none has arrived for this many publish timeouts
/// is broken even if its socket looks open (a half-dead path): it is replaced. One slow
/// confirm only fails its own request; this is the whole link going silent.
pub(super) const STALLED_LINK_TIMEOUTS: u32 = 3;

/// Why a connection attempt did not give a link.
enum Failure {
    Connect(lapin::Error),
    Topology(TopologyError),
}

impl From<lapin::Error> for Failure {
    fn from(error: lapin::Error) -> Self {
        Self::Connect(error)
    }
}

async fn connect(inner: &Inner, node: usize) -> Result<Arc<Link>, Failure> {
    let properties = ConnectionProperties::default().with_connection_name(inner.options.connection_name.clone().into());
    let connection = Connection::connect(inner.nodes[node].expose_secret(), properties).await?;
    if let Err(error) = inner.topology.ensure(&connection, inner.options.declaring).await {
        let _ = connection.close(200, "topology not in place".into()).await;
        return Err(Failure::Topology(error));
    }
    // The shared channels, and one for broadcasts.
    let channels = inner.options.publish_channels.max(1) + 1;
    let mut publishers = Vec::with_capacity(channels);
    for _ in 0..channels {
        publishers.push(open_publisher(&connection).await?);
    }
    let generation = inner.generations.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Arc::new(Link::new(generation, node, connection, publishers)))
}

/// Logs a failed attempt once: a refusal (wrong password, missing permission, missing
/// topology ingest may not declare) as an error that says what to do, since waiting does not
/// fix it; anything else as the broker being away.
fn log_failure(broker: &str, failure: &Failure) {
    match failure {
        Failure::Topology(error @ (TopologyError::Refused { .. } | TopologyError::Missing { .. })) => {
            tracing::error!(broker, %error, "the broker topology is not in place")
        }
        Failure::Topology(TopologyError::Broker(error)) | Failure::Connect(error) => match access::refusal(error) {
            Some(refusal) => {
                tracing::error!(broker, %error, remedy = refusal.remedy(), "the broker refused this AMQP user")
            }
            None => tracing::warn!(broker, %error, "broker unreachable"),
        },
    }
}

/// Connects, serves and reconnects until `cancel` fires. Tries the nodes in turn, starting
/// after the one that was lost; backs off (growing, jittered: every process lost the broker
/// at the same moment, they should not all come back at the same moment) after a lost link
/// and once a whole round of nodes has failed.
pub(super) async fn supervise(inner: Arc<Inner>, cancel: CancellationToken) {
    let nodes = inner.nodes.len().max(1);
    let mut node = 0;
    let mut failed_in_a_row = 0;
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        let shown = redacted_node(inner.nodes[node].expose_secret());
        let attempt = tokio::select! {
            _ = cancel.cancelled() => break,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&inner, node)) => attempt,
        };
        match attempt {
            Ok(Ok(link)) => {
                tracing::info!(broker = %shown, prefix = inner.topology.prefix(), declaring = ?inner.options.declaring, "broker connected, topology in place");
                inner.metrics.connected.set(1);
                inner.metrics.connects.inc();
                inner.link.send_replace(Some(link.clone()));
                failed_in_a_row = 0;
                backoff.reset();
                let shutting_down = watch_link(&inner, &link, &cancel).await;
                inner.link.send_replace(None);
                inner.metrics.connected.set(0);
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), link.connection.close(200, "closing".into())).await;
                if shutting_down {
                    tracing::info!("broker connection closed");
                    return;
                }
                tracing::warn!(broker = %shown, "broker connection lost; reconnecting");
                node = (node + 1) % nodes;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
            Ok(Err(failure)) => log_failure(&shown, &failure),
            Err(_) => tracing::warn!(broker = %shown, "broker connect timed out"),
        }
        node = (node + 1) % nodes;
        failed_in_a_row += 1;
        if failed_in_a_row % nodes == 0 {
            let delay = backoff.next_delay();
            tracing::warn!(retry_in = ?delay, "no broker node answered");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Returns when the link is gone (false) or shutdown was requested (true).
async fn watch_link(inner: &Inner, link: &Link, cancel: &CancellationToken) -> bool {
    let mut events = link.connection.events_listener();
    let mut poll = tokio::time::interval(STATUS_POLL);
    let stall_limit = inner.options.publish_timeout * STALLED_LINK_TIMEOUTS;
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
            _ = poll.tick() => {
                if !link.connected() {
                    return false;
                }
                // A broker under a resource alarm holds confirms on purpose; another
                // connection would be held the same way.
                if link.confirms.stalled_for().is_some_and(|s| s > stall_limit) && !link.blocked() {
                    tracing::warn!(silent_for = ?stall_limit, "no publisher confirm arrived on the broker connection; replacing it");
                    return false;
                }
            }
        }
    }
}
