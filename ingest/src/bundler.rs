//! Several webhooks per broker message (`INGEST_BUNDLE_MAX` above 1), by group commit: a few
//! publisher loops, each taking every publish waiting when it is free into one message
//! ([`shared::bundle`]) and awaiting that message's confirm. A request that finds a loop free
//! goes at once, alone, in the message format of one webhook; requests only share a message
//! when they would otherwise have waited. Each is answered with its message's confirm, so a
//! `200` still means stored. The broker's cost is per message, not per byte
//! (docs/benchmarks.md#broker).

use std::sync::Arc;

use bytes::Bytes;
use prometheus::Histogram;
use shared::broker::{Broker, PublishError};
use shared::bundle::{BasicProperties, ShortString};
use tokio::sync::{mpsc, oneshot, Mutex};

/// The bodies of one bundle stay within this (a single larger one goes alone).
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// The routing key of a bundle: the events exchange routes every key to the work queue.
const BUNDLE_ROUTING_KEY: &str = "bundle";

/// One request's publish, waiting for a loop.
struct Pending {
    routing_key: String,
    body: Bytes,
    properties: BasicProperties,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

pub struct Bundler {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Bundler {
    /// `loops` publishers (one per confirm channel), at most `max` webhooks a message. They end
    /// when the bundler is dropped.
    /// `sizes` observes each message's number of webhooks.
    pub fn start(broker: Broker, exchange: String, max: usize, loops: usize, sizes: Histogram) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Pending>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..loops {
            let (rx, broker, exchange, sizes) = (rx.clone(), broker.clone(), exchange.clone(), sizes.clone());
            tokio::spawn(async move {
                let mut carried = None;
                while let Some(taken) = take(&rx, max, &mut carried).await {
                    sizes.observe(taken.len() as f64);
                    publish(&broker, &exchange, taken).await;
                }
            });
        }
        Self { tx }
    }

    /// Publishes as [`Broker::publish_bytes`] would, alone or with others waiting at the time.
    pub async fn publish(
        &self,
        routing_key: String,
        body: Bytes,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        // Refused as it would be alone: in a bundle the routing key is the bundle's.
        if ShortString::try_new(routing_key.as_str()).is_err() {
            return Err(PublishError::InvalidName);
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Pending { routing_key, body, properties, reply }).map_err(|_| PublishError::Unavailable)?;
        answer.await.unwrap_or(Err(PublishError::Unavailable))
    }
}

/// The next publish (the one `carried` over, else the next to arrive), and up to `max` in all
/// of those waiting behind it while their bodies stay within [`MAX_BUNDLE_BYTES`]; the first
/// that would pass it is `carried` over to the next message. `None` once closed.
async fn take(
    rx: &Mutex<mpsc::UnboundedReceiver<Pending>>,
    max: usize,
    carried: &mut Option<Pending>,
) -> Option<Vec<Pending>> {
    let mut rx = rx.lock().await;
    let first = match carried.take() {
        Some(first) => first,
        None => rx.recv().await?,
    };
    let mut bytes = first.body.len();
    let mut taken = vec![first];
    while taken.len() < max {
        let Ok(next) = rx.try_recv() else { break };
        if bytes + next.body.len() > MAX_BUNDLE_BYTES {
            *carried = Some(next);
            break;
        }
        bytes += next.body.len();
        taken.push(next);
    }
    Some(taken)
}

async fn publish(broker: &Broker, exchange: &str, mut taken: Vec<Pending>) {
    if taken.len() == 1 {
        let one = taken.pop().expect("one publish");
        let result = broker.publish_bytes(exchange, &one.routing_key, one.body, one.properties).await;
        let _ = one.reply.send(result);
        return;
    }
    let entries: Vec<(BasicProperties, Bytes)> = taken.iter().map(|p| (p.properties.clone(), p.body.clone())).collect();
    let body = shared::bundle::encode(&entries);
    let properties = shared::bundle::properties(taken.len());
    let result = broker.publish_bytes(exchange, BUNDLE_ROUTING_KEY, body.into(), properties).await;
    for pending in taken {
        let _ = pending.reply.send(result.clone());
    }
}
