//! Cutting the stream of deliveries into batches: the first delivery, plus whatever else is
//! already buffered (or arrives within the linger), up to the batch size. Under load the
//! prefetch buffer fills batches by itself; a lone event is never held back to fill one.
//!
//! A redelivered message goes into a batch of its own: its worker may have died on it, and a
//! message that crashes its worker must not take a whole batch of neighbours down again (each
//! crash would count against their delivery limit too).

use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use lapin::message::Delivery;

/// A message as far as batching cares.
pub trait Redelivery {
    /// The broker delivered it before (and it was not acknowledged).
    fn redelivered(&self) -> bool;
}

impl Redelivery for Delivery {
    fn redelivered(&self) -> bool {
        self.redelivered
    }
}

/// Batches from a stream of deliveries.
pub struct Batcher<S, T> {
    stream: S,
    max: usize,
    linger: Duration,
    /// A redelivery that ended the previous batch; it starts the next one, alone.
    held: Option<T>,
    /// An error met while filling the previous batch, returned next.
    failed: Option<lapin::Error>,
    ended: bool,
}

impl<S, T> Batcher<S, T>
where
    S: Stream<Item = Result<T, lapin::Error>> + Unpin,
    T: Redelivery,
{
    pub fn new(stream: S, max: usize, linger: Duration) -> Self {
        Self { stream, max: max.max(1), linger, held: None, failed: None, ended: false }
    }

    /// The next batch; `None` when the stream ended, `Some(Err)` when it failed (the batch
    /// filled before the failure came first).
    pub async fn next(&mut self) -> Option<Result<Vec<T>, lapin::Error>> {
        if let Some(error) = self.failed.take() {
            return Some(Err(error));
        }
        let first = match self.held.take() {
            Some(held) => held,
            None if self.ended => return None,
            None => match self.stream.next().await? {
                Ok(delivery) => delivery,
                Err(error) => return Some(Err(error)),
            },
        };
        if first.redelivered() {
            return Some(Ok(vec![first]));
        }
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.max {
            let next = match self.stream.next().now_or_never() {
                Some(next) => next,
                None if self.linger.is_zero() => break,
                None => match tokio::time::timeout_at(deadline, self.stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(Ok(delivery)) if delivery.redelivered() => {
                    self.held = Some(delivery);
                    break;
                }
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(error)) => {
                    self.failed = Some(error);
                    break;
                }
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        Some(Ok(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[derive(Debug, PartialEq)]
    struct Msg(u32, bool);

    impl Redelivery for Msg {
        fn redelivered(&self) -> bool {
            self.1
        }
    }

    fn fresh(ids: std::ops::Range<u32>) -> Vec<Result<Msg, lapin::Error>> {
        ids.map(|i| Ok(Msg(i, false))).collect()
    }

    type Sender = tokio::sync::mpsc::UnboundedSender<Result<Msg, lapin::Error>>;

    fn channel() -> (Sender, impl Stream<Item = Result<Msg, lapin::Error>> + Unpin) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    fn ids(batch: Option<Result<Vec<Msg>, lapin::Error>>) -> Vec<u32> {
        batch.expect("a batch").expect("no error").into_iter().map(|m| m.0).collect()
    }

    #[tokio::test]
    async fn buffered_deliveries_fill_batches_up_to_the_size() {
        let mut batcher = Batcher::new(stream::iter(fresh(0..250)), 100, Duration::ZERO);
        assert_eq!(ids(batcher.next().await).len(), 100);
        assert_eq!(ids(batcher.next().await).len(), 100);
        assert_eq!(ids(batcher.next().await), (200..250).collect::<Vec<_>>());
        assert!(batcher.next().await.is_none());
    }

    #[tokio::test]
    async fn a_lone_delivery_is_not_held_back() {
        // One delivery now, the next only later: without a linger the first goes alone.
        let (tx, rx) = channel();
        tx.send(Ok(Msg(1, false))).unwrap();
        let mut batcher = Batcher::new(rx, 100, Duration::ZERO);
        assert_eq!(ids(batcher.next().await), [1]);
        tx.send(Ok(Msg(2, false))).unwrap();
        assert_eq!(ids(batcher.next().await), [2]);
    }

    #[tokio::test]
    async fn the_linger_waits_for_more_within_its_time() {
        let (tx, rx) = channel();
        tx.send(Ok(Msg(1, false))).unwrap();
        let mut batcher = Batcher::new(rx, 3, Duration::from_secs(30));
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(Ok(Msg(2, false))).unwrap();
            tx.send(Ok(Msg(3, false))).unwrap();
            tx
        });
        // Full before the linger ran out: returned as soon as it is full.
        assert_eq!(ids(batcher.next().await), [1, 2, 3]);
        drop(sender.await.unwrap());
    }

    #[tokio::test]
    async fn a_redelivered_message_is_batched_alone() {
        let items = vec![Ok(Msg(1, false)), Ok(Msg(2, false)), Ok(Msg(3, true)), Ok(Msg(4, false)), Ok(Msg(5, true))];
        let mut batcher = Batcher::new(stream::iter(items), 100, Duration::ZERO);
        assert_eq!(ids(batcher.next().await), [1, 2]);
        assert_eq!(ids(batcher.next().await), [3]);
        assert_eq!(ids(batcher.next().await), [4]);
        assert_eq!(ids(batcher.next().await), [5]);
        assert!(batcher.next().await.is_none());
    }

    #[tokio::test]
    async fn an_error_comes_after_the_deliveries_before_it() {
        let items = vec![Ok(Msg(1, false)), Err(lapin::ErrorKind::MissingHeartbeatError.into())];
        let mut batcher = Batcher::new(stream::iter(items), 100, Duration::ZERO);
        assert_eq!(ids(batcher.next().await), [1]);
        assert!(matches!(batcher.next().await, Some(Err(_))));
    }
}
