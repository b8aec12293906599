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
//! Acknowledgements go through the channel's [`Acks`], which covers as many deliveries as it
//! safely can with one `multiple` ack: never one that another batch is still working on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use shared::backoff::Backoff;
use shared::broker::{Broker, PublishError};
use shared::envelope::{copied, long_string, with_headers, H_ATTEMPT, H_DEAD_AT, H_DEAD_REASON, H_LAST_ERROR};
use shared::topology::Topology;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

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

/// Acknowledgements of one consumer channel. Every delivery is registered when it is handed
/// out; settling removes it. A `multiple` ack up to tag `t` would also acknowledge every
/// earlier delivery still being processed, so one is sent only when no registered delivery
/// is below `t`; the rest are acknowledged one by one. Frames are sent under the lock, in the
/// order decided, so no delivery is ever acknowledged twice.
pub struct Acks {
    channel: Channel,
    book: Mutex<AckBook>,
}

impl Acks {
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self { channel, book: Mutex::new(AckBook::default()) })
    }

    /// Whether the channel is open: once it closed, the broker has returned every delivery
    /// not acknowledged on it.
    pub fn open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Registers deliveries just received.
    pub async fn register(&self, tags: impl IntoIterator<Item = u64>) {
        self.book.lock().await.register(tags);
    }

    /// Acknowledges the deliveries `tags` (those still outstanding).
    pub async fn ack(&self, tags: &[u64]) {
        let mut book = self.book.lock().await;
        let plan = book.settle(tags);
        if let Some(up_to) = plan.multiple_up_to {
            self.send_ack(up_to, true).await;
        }
        for tag in plan.single {
            self.send_ack(tag, false).await;
        }
    }

    /// Returns the deliveries `tags` (those still outstanding) to the queue.
    pub async fn requeue(&self, tags: &[u64]) {
        let mut book = self.book.lock().await;
        let plan = book.settle(tags);
        for tag in plan.multiple_covered.into_iter().chain(plan.single) {
            let options = BasicNackOptions { multiple: false, requeue: true };
            if let Err(error) = self.channel.basic_nack(tag, options).await {
                tracing::warn!(%error, "could not return a message to the queue; the broker redelivers it when the channel closes");
            }
        }
    }

    /// Deliveries of `tags` nobody settled (their handler failed): back to the queue.
    pub async fn requeue_unsettled(&self, tags: &[u64]) {
        let unsettled: Vec<u64> = {
            let book = self.book.lock().await;
            tags.iter().copied().filter(|t| book.outstanding.contains(t)).collect()
        };
        if !unsettled.is_empty() {
            tracing::warn!(count = unsettled.len(), "deliveries left unsettled; returning them to the queue");
            self.requeue(&unsettled).await;
        }
    }

    async fn send_ack(&self, tag: u64, multiple: bool) {
        if let Err(error) = self.channel.basic_ack(tag, BasicAckOptions { multiple }).await {
            // The channel is gone; the broker redelivers and the inbox recognises the duplicate.
            tracing::warn!(%error, "ack failed; the message will be redelivered");
        }
    }
}

/// Which deliveries of a channel are still outstanding. Pure bookkeeping.
#[derive(Debug, Default)]
pub struct AckBook {
    outstanding: BTreeSet<u64>,
}

/// The frames that settle a set of deliveries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// One `multiple` frame up to this tag covers `multiple_covered`.
    pub multiple_up_to: Option<u64>,
    pub multiple_covered: Vec<u64>,
    /// One frame each.
    pub single: Vec<u64>,
}

impl AckBook {
    pub fn register(&mut self, tags: impl IntoIterator<Item = u64>) {
        self.outstanding.extend(tags);
    }

    /// Removes `tags` from the outstanding set and plans their frames: every settled tag below
    /// the lowest delivery still outstanding goes into one `multiple` frame (all earlier tags
    /// were settled by frames already sent), the others one by one. Tags not outstanding (never
    /// registered, or settled already) get no frame.
    pub fn settle(&mut self, tags: &[u64]) -> AckPlan {
        let mut mine: Vec<u64> = tags.iter().copied().filter(|t| self.outstanding.remove(t)).collect();
        mine.sort_unstable();
        let frontier = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let split = mine.partition_point(|t| *t < frontier);
        let single = mine.split_off(split);
        AckPlan { multiple_up_to: mine.last().copied(), multiple_covered: mine, single }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_below_every_outstanding_delivery_is_one_multiple_ack() {
        let mut book = AckBook::default();
        book.register(1..=10);
        let plan = book.settle(&[1, 2, 3, 4, 5]);
        assert_eq!(plan.multiple_up_to, Some(5));
        assert!(plan.single.is_empty());
    }

    #[test]
    fn a_batch_above_an_outstanding_delivery_is_acked_one_by_one() {
        let mut book = AckBook::default();
        book.register(1..=10);
        let plan = book.settle(&[6, 7, 8]);
        assert_eq!(plan, AckPlan { multiple_up_to: None, multiple_covered: vec![], single: vec![6, 7, 8] });
        // The earlier batch then finishes: its frame may cover everything up to it.
        let plan = book.settle(&[1, 2, 3, 4, 5]);
        assert_eq!(plan.multiple_up_to, Some(5));
        assert_eq!(book.outstanding(), 2);
    }

    #[test]
    fn settling_twice_sends_nothing_the_second_time() {
        let mut book = AckBook::default();
        book.register([1, 2]);
        book.settle(&[1]);
        assert_eq!(book.settle(&[1]), AckPlan::default());
    }

    proptest! {
        /// Whatever the order batches finish in, every delivery is covered by exactly one frame
        /// and a `multiple` frame never covers a delivery that was still outstanding.
        #[test]
        fn every_delivery_is_acknowledged_exactly_once(
            sizes in proptest::collection::vec(1usize..8, 1..12),
            order in proptest::collection::vec(any::<u32>(), 12),
        ) {
            let mut book = AckBook::default();
            let mut batches = Vec::new();
            let mut next = 1u64;
            for size in &sizes {
                let tags: Vec<u64> = (next..next + *size as u64).collect();
                next += *size as u64;
                book.register(tags.clone());
                batches.push(tags);
            }
            let mut finishing: Vec<usize> = (0..batches.len()).collect();
            finishing.sort_by_key(|i| order[*i % order.len()]);
            let mut acked: BTreeSet<u64> = BTreeSet::new();
            for i in finishing {
                let still_outstanding: BTreeSet<u64> =
                    book.outstanding.iter().copied().filter(|t| !batches[i].contains(t)).collect();
                let plan = book.settle(&batches[i]);
                let mut covered = plan.single.clone();
                if let Some(up_to) = plan.multiple_up_to {
                    // The broker acknowledges every unacknowledged tag up to `up_to`.
                    let by_broker: Vec<u64> = (1..=up_to).filter(|t| !acked.contains(t)).collect();
                    prop_assert!(by_broker.iter().all(|t| !still_outstanding.contains(t)));
                    covered.extend(by_broker);
                }
                for tag in covered {
                    prop_assert!(acked.insert(tag), "tag {} acknowledged twice", tag);
                }
            }
            prop_assert_eq!(acked.len() as u64, next - 1);
        }
    }
}
