//! Acknowledgements of one consumer channel, for events and notifications alike: which
//! deliveries are still outstanding, and the frames that settle a set of them.

use std::collections::BTreeSet;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::Mutex;

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
