//! A queue consumer that survives broker reconnects: manual acks, per-consumer prefetch,
//! deliveries handed out in batches ([`crate::pipeline::batch`]), at most `concurrency` batches in flight,
//! and a graceful stop that lets in-flight batches finish before the channel closes (closing
//! returns every unacknowledged delivery to the queue, so nothing prefetched is lost).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use shared::backoff::Backoff;
use shared::broker::Broker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::acks::Acks;
use crate::pipeline::batch::Batcher;
use crate::pipeline::halt::Halt;

/// The shortest wait before trying to consume again when the consuming channel could not be
/// opened: on a fresh link it usually can be a moment later.
const MIN_REOPEN_DELAY: Duration = Duration::from_secs(1);
/// The longest: a refusal (a missing permission or queue) is fixed by a person, and each
/// attempt also replaces the broker connection, so persistent failures are not retried faster.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub queue: String,
    /// Unique per process, so the management UI shows who holds which deliveries.
    pub tag: String,
    /// Deliveries the broker may push before they are acked. Quorum queues only honour a
    /// per-consumer prefetch, which is what `basic.qos(global = false)` sets.
    pub prefetch: u16,
    /// Batches handled at once.
    pub concurrency: usize,
    /// Most deliveries in one batch.
    pub batch_size: usize,
    /// How long a batch waits for more deliveries after its first.
    pub batch_linger: Duration,
    /// How long in-flight batches may take after shutdown before the channel is closed anyway.
    pub drain_deadline: Duration,
}

/// Deliveries handed to a handler, which settles each one through `acks`.
pub struct Batch {
    pub deliveries: Vec<Delivery>,
    pub acks: Arc<Acks>,
}

/// Consumes until `shutdown` fires. While `halt` is in force no new batch starts.
pub async fn consume<H, F>(
    broker: Broker,
    options: ConsumerOptions,
    shutdown: CancellationToken,
    halt: Option<Arc<Halt>>,
    handler: H,
) where
    H: Fn(Batch) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let tasks = TaskTracker::new();
    let mut channel: Option<Channel> = None;
    let mut reopen = Backoff::new(MIN_REOPEN_DELAY, MAX_REOPEN_DELAY);
    'connect: while let Some(link) = broker.connected(&shutdown).await {
        let opened = open(link.connection(), &options).await;
        let (ch, deliveries) = match opened {
            Ok(pair) => {
                reopen.reset();
                pair
            }
            Err(error) => {
                match shared::broker::access::refusal(&error) {
                    Some(refusal) => {
                        tracing::error!(queue = %options.queue, %error, remedy = refusal.remedy(), "the broker refused to let this AMQP user consume")
                    }
                    None => tracing::warn!(queue = %options.queue, %error, "cannot start consuming; reconnecting"),
                }
                broker.report_broken(&link);
                tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = tokio::time::sleep(reopen.next_delay()) => continue 'connect,
                }
            }
        };
        tracing::info!(
            queue = %options.queue,
            prefetch = options.prefetch,
            concurrency = options.concurrency,
            batch_size = options.batch_size,
            "consuming"
        );
        let acks = Acks::new(ch.clone());
        channel = Some(ch);
        let mut batches = Batcher::new(deliveries, options.batch_size, options.batch_linger);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closes"),
            };
            if let Some(halt) = &halt {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = halt.cleared() => {}
                }
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                next = batches.next() => next,
            };
            match next {
                Some(Ok(deliveries)) => {
                    let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
                    acks.register(tags.iter().copied()).await;
                    let batch = Batch { deliveries, acks: acks.clone() };
                    let handling = tokio::spawn(handler.clone()(batch));
                    let acks = acks.clone();
                    tasks.spawn(async move {
                        if let Err(error) = handling.await {
                            tracing::error!(%error, "a batch handler failed");
                        }
                        // Whatever the handler left unsettled (it panicked) goes back now
                        // rather than sitting unacknowledged until the channel closes.
                        acks.requeue_unsettled(&tags).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(queue = %options.queue, %error, "consumer failed; reconnecting");
                    broker.report_broken(&link);
                    break;
                }
                None => {
                    tracing::warn!(queue = %options.queue, "consumer was cancelled by the broker; reconnecting");
                    broker.report_broken(&link);
                    break;
                }
            }
        }
        channel = None;
    }
    // Stop: no new deliveries, let in-flight ones finish, then close (returns the rest).
    if let Some(ch) = &channel {
        let _ = ch.basic_cancel(options.tag.as_str().into(), BasicCancelOptions::default()).await;
    }
    tasks.close();
    if tokio::time::timeout(options.drain_deadline, tasks.wait()).await.is_err() {
        tracing::warn!(queue = %options.queue, "in-flight deliveries did not finish before the deadline; they return to the queue");
    }
    if let Some(ch) = channel {
        let _ = ch.close(200, "worker stopping".into()).await;
    }
    tracing::info!(queue = %options.queue, "stopped consuming");
}

async fn open(
    connection: &lapin::Connection,
    options: &ConsumerOptions,
) -> Result<(Channel, lapin::Consumer), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(options.prefetch, BasicQosOptions { global: false }).await?;
    let consumer = channel
        .basic_consume(
            options.queue.as_str().into(),
            options.tag.as_str().into(),
            BasicConsumeOptions {
                // Acks only after the database commit.
                no_ack: false,
                // Several workers share the queue.
                exclusive: false,
                // Not meaningful for RabbitMQ; kept false.
                no_local: false,
                // Wait for the broker's consume-ok so a failure surfaces here.
                nowait: false,
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}
