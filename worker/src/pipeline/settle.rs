//! Settling deliveries with the broker, for events and notifications alike: acknowledge, or
//! republish a copy to a delay tier or a dead-letter queue (with a publisher confirm) and then
//! acknowledge. A copy the broker does not take (a resource alarm, a queue gone, a lost
//! confirm) is published again, with growing pauses, while its delivery stays unacknowledged
//! (the rest of the batch is acknowledged meanwhile): returning the delivery to its queue at
//! once would spend one of its `DELIVERY_LIMIT` deliveries a second, and after the last the
//! broker would park it, a bundle with all its webhooks. It goes back to its queue after
//! [`HOLD_REFUSED_COPIES`], or when the worker stops; a consumer channel that closed meanwhile
//! has returned it already.
//!
//! Acknowledgements go through the channel's [`Acks`] (`acks.rs`), which covers as many
//! deliveries as it safely can with one `multiple` ack: never one that another batch is still
//! working on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use shared::backoff::Backoff;
use shared::broker::{Broker, PublishError};
use shared::envelope::{copied, long_string, with_headers, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_LAST_ERROR};
use shared::topology::Topology;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;

/// Pauses between publishes of a copy the broker did not take: growing, with jitter, between
/// these, so a broker in trouble is not hammered.
const REPUBLISH_PAUSE_MIN: Duration = Duration::from_secs(1);
const REPUBLISH_PAUSE_MAX: Duration = Duration::from_secs(30);
/// How long a delivery waits, unacknowledged, for the broker to take its copy before it goes
/// back to its queue (one delivery spent) and is tried again from the start: long enough for a
/// short alarm or a queue being recreated, short enough that a copy the broker keeps refusing
/// does not hold one of the worker's batch slots for long (and well inside the broker's
/// `consumer_timeout`).
const HOLD_REFUSED_COPIES: Duration = Duration::from_secs(120);

/// Longest error text carried in a header.
const MAX_ERROR_HEADER: usize = 1000;
/// Longest dead-letter reason carried in a header.
const MAX_REASON_HEADER: usize = 2000;

/// What to do with one delivery.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Handled: acknowledge.
    Ack,
    /// Publish a copy to `queue` (through the default exchange) with these properties, then
    /// acknowledge.
    Republish { queue: String, properties: Box<BasicProperties> },
}

impl Settlement {
    /// A copy for a delay tier: attempt counted, last error carried.
    pub fn retry(delivery: &Delivery, queue: String, attempt: u32, error: &str) -> Self {
        let properties = with_headers(
            &copied(&delivery.properties),
            [
                (H_ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
                (H_LAST_ERROR, long_string(&truncate(error, MAX_ERROR_HEADER))),
            ],
        );
        Self::Republish { queue, properties: Box::new(properties) }
    }

    /// A webhook of a bundle, sent to `queue` as a message of its own.
    pub fn part(delivery: &Delivery, queue: String) -> Self {
        Self::Republish { queue, properties: Box::new(copied(&delivery.properties)) }
    }

    /// A copy for a dead-letter queue, with its reason and time.
    pub fn dead(delivery: &Delivery, queue: String, attempt: u32, reason: &str) -> Self {
        let properties = with_headers(
            &copied(&delivery.properties),
            [
                (H_DEAD_REASON, long_string(&truncate(reason, MAX_REASON_HEADER))),
                (H_DEAD_AT, long_string(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))),
                (H_ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
            ],
        );
        Self::Republish { queue, properties: Box::new(properties) }
    }
}

/// Settles deliveries with the broker: the handle the event pipeline and the notification
/// delivery settle through.
#[derive(Clone)]
pub struct Settler {
    broker: Broker,
    /// Fires when the worker stops: copies still refused are given up, their deliveries returned.
    stopping: CancellationToken,
}

impl Settler {
    pub fn new(broker: Broker, stopping: CancellationToken) -> Self {
        Self { broker, stopping }
    }

    /// The queues a settlement may send a copy to.
    pub fn topology(&self) -> &Topology {
        self.broker.topology()
    }

    /// Settles every delivery; returns, per delivery, whether it was settled as asked (`false`:
    /// its copy was still not confirmed when the worker stopped, the channel closed or
    /// [`HOLD_REFUSED_COPIES`] passed, and it went back to its queue instead).
    pub async fn settle(&self, acks: &Acks, work: Vec<(&Delivery, Settlement)>) -> Vec<bool> {
        let mut copies = Copies::new(&work);
        let mut pause = Backoff::new(REPUBLISH_PAUSE_MIN, REPUBLISH_PAUSE_MAX);
        let held_since = tokio::time::Instant::now();
        loop {
            // A channel that closed meanwhile has returned its deliveries: the broker delivers
            // them again, and a copy published now would be one more.
            if !acks.open() {
                tracing::warn!(
                    waiting = copies.waiting(),
                    "the consumer channel closed: the broker returns the messages not acknowledged to the queue"
                );
                return copies.done();
            }
            let error = copies.publish(&self.broker).await;
            // Every delivery whose copies are all confirmed is acknowledged now, whatever
            // waits beside it.
            acks.ack(&copies.take_ready()).await;
            let Some(error) = error else { return copies.done() };
            let wait = pause.next_delay();
            let waiting = copies.waiting();
            if held_since.elapsed() + wait > HOLD_REFUSED_COPIES {
                tracing::warn!(waiting, %error, "the broker still takes no copy of these messages: they go back to the queue (a delivery spent)");
                acks.requeue(&copies.take_waiting()).await;
                return copies.done();
            }
            tracing::warn!(waiting, %error, retry_in = ?wait, "the broker did not take copies; their messages stay unacknowledged and the copies are published again");
            tokio::select! {
                _ = self.stopping.cancelled() => {
                    tracing::warn!(waiting, "stopping with copies the broker did not take: their messages go back to the queue");
                    acks.requeue(&copies.take_waiting()).await;
                    return copies.done();
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The copies one settlement publishes, and which deliveries they settle. A bundle's webhooks
/// share its delivery tag: it is acknowledged once all of their copies are confirmed, and
/// returned whole when any is not.
struct Copies<'a> {
    work: &'a [(&'a Delivery, Settlement)],
    /// Per item: its copy (if it has one) confirmed.
    confirmed: Vec<bool>,
    /// Tags acknowledged (all their items confirmed) and tags returned to the queue.
    acked: BTreeSet<u64>,
    returned: BTreeSet<u64>,
}

impl<'a> Copies<'a> {
    fn new(work: &'a [(&'a Delivery, Settlement)]) -> Self {
        let confirmed = work.iter().map(|(_, s)| matches!(s, Settlement::Ack)).collect();
        Self { work, confirmed, acked: BTreeSet::new(), returned: BTreeSet::new() }
    }

    /// Publishes every copy not confirmed yet, all at once (lapin pipelines them on the
    /// channel), then awaits their confirms together; the first error, if any was refused.
    async fn publish(&mut self, broker: &Broker) -> Option<PublishError> {
        let pending: Vec<usize> = (0..self.work.len()).filter(|i| !self.confirmed[*i]).collect();
        let work = self.work;
        let results = join_all(pending.iter().map(|i| async move {
            let (delivery, settlement) = &work[*i];
            match settlement {
                Settlement::Ack => Ok(()),
                Settlement::Republish { queue, properties } => {
                    broker.publish("", queue, &delivery.data, (**properties).clone()).await
                }
            }
        }))
        .await;
        let mut first_error = None;
        for (i, result) in pending.into_iter().zip(results) {
            match result {
                Ok(()) => self.confirmed[i] = true,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error
    }

    /// Tags not yet acknowledged whose items are all confirmed; marked acknowledged.
    fn take_ready(&mut self) -> Vec<u64> {
        let mut tags: BTreeMap<u64, bool> = BTreeMap::new();
        for ((delivery, _), confirmed) in self.work.iter().zip(&self.confirmed) {
            *tags.entry(delivery.delivery_tag).or_insert(true) &= *confirmed;
        }
        let ready: Vec<u64> =
            tags.into_iter().filter(|(tag, all)| *all && !self.acked.contains(tag)).map(|(tag, _)| tag).collect();
        self.acked.extend(&ready);
        ready
    }

    /// Tags neither acknowledged nor returned; marked returned.
    fn take_waiting(&mut self) -> Vec<u64> {
        let waiting: BTreeSet<u64> = self
            .work
            .iter()
            .map(|(d, _)| d.delivery_tag)
            .filter(|tag| !self.acked.contains(tag) && !self.returned.contains(tag))
            .collect();
        self.returned.extend(&waiting);
        waiting.into_iter().collect()
    }

    /// Deliveries (tags) still waiting for a copy.
    fn waiting(&self) -> usize {
        let tags: BTreeSet<u64> = self.work.iter().map(|(d, _)| d.delivery_tag).collect();
        tags.iter().filter(|tag| !self.acked.contains(tag)).count()
    }

    /// Per item, whether it was settled as asked: its delivery acknowledged (a webhook of a
    /// bundle that went back whole was not, even with its own copy confirmed: it comes back
    /// with the bundle, and its copy is deduplicated).
    fn done(&self) -> Vec<bool> {
        self.work.iter().map(|(delivery, _)| self.acked.contains(&delivery.delivery_tag)).collect()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
