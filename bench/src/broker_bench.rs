//! `bench broker`: what the broker costs per message behind ingest, by queue type and by
//! publishing style, side by side in one run on the local node.
//!
//! Every variant publishes the same signed Stripe bodies with ingest's envelope headers,
//! persistent and mandatory, through a topic exchange bound with `#` to one durable queue, from
//! the same number of concurrent tasks (ingest's requests), each awaiting its own message's
//! confirm. What varies:
//!
//! - the queue: a quorum queue declared by [`Topology`] exactly as deployed (delivery limit,
//!   dead-lettering), or a classic queue version 2 (durable, `x-queue-version=2`);
//! - the publishing style: ingest's (its [`ingest::PUBLISH_CHANNELS`] confirm channels shared
//!   round-robin, each task publishing on its own), one channel shared by every task, a channel
//!   per concurrent publish, or coalesced writes ([`coalesced_load`]: one writer per channel
//!   issues every publish waiting at once, so lapin writes them to the socket together), or
//!   bundles (ingest's channels, each message carrying several events, length-prefixed, with
//!   one set of envelope headers: what publishing several webhooks per message would cost the
//!   node; such messages are not what the worker consumes today).
//!
//! After each variant's publishes, one consumer drains the queue as the worker does (a
//! prefetch, `multiple` acks) and the node's CPU for that is counted apart: together, the
//! broker's cost per event from publish to ack.
//!
//! The variants run in rounds, in a rotated order, so that a machine shared with other work
//! slows each about equally; figures are totals over the rounds. CPU comes from `/proc` (the
//! RabbitMQ node's and this process's, which is the publisher and its load tasks); the socket
//! writes each way are the TCP data segments of the publisher's connection (`TCP_INFO`).
//! Everything is declared under a prefix of its own and deleted at the end, also after a
//! failure.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use shared::settings::CommonSettings;
use shared::topology::Topology;

use crate::events;
use crate::ingest_bench::envelope_properties;
use crate::load::{broker_load, coalesced_load, DirectPublish, LoadResult, Pace, SignedEvent};
use crate::procfs::{pid_listening_on, tcp_data_segments_to, CpuMeter};

/// What `bench broker` is asked to do.
pub struct BrokerBench {
    /// Messages per variant and round.
    pub messages: usize,
    /// Concurrent publishing tasks (ingest's concurrent requests).
    pub concurrency: usize,
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    fn name(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic v2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Ingest today: a few channels round-robin, each task publishing on its own.
    Ingest,
    /// Every task on one channel.
    OneChannel,
    /// As many channels as concurrent publishes.
    ChannelEach,
    /// One writer on one channel issuing every waiting publish at once.
    Coalesced,
    /// Ingest's channels, each message carrying this many events.
    Bundles(usize),
}

impl Style {
    const ALL: [Style; 4] = [Style::Ingest, Style::OneChannel, Style::ChannelEach, Style::Coalesced];
    /// Events per message of the bundle variants (quorum queue only).
    const BUNDLES: [usize; 2] = [4, 16];

    /// Events each message carries.
    fn events_per_message(self) -> usize {
        match self {
            Self::Bundles(k) => k,
            _ => 1,
        }
    }

    fn name(self, concurrency: usize) -> String {
        match self {
            Self::Ingest => format!("ingest's ({} channels)", ingest::PUBLISH_CHANNELS),
            Self::OneChannel => "1 channel, tasks publish".into(),
            Self::ChannelEach => format!("{concurrency} channels"),
            Self::Coalesced => "coalesced (1 channel, 1 writer)".into(),
            Self::Bundles(k) => format!("ingest's, {k} events a message"),
        }
    }

    fn channels(self, concurrency: usize) -> usize {
        match self {
            Self::Ingest | Self::Bundles(_) => ingest::PUBLISH_CHANNELS,
            Self::OneChannel | Self::Coalesced => 1,
            Self::ChannelEach => concurrency.max(1),
        }
    }
}

/// The exchange and queue one queue type is measured through.
struct Target {
    queue_type: QueueType,
    exchange: String,
    queue: String,
}

/// What the bench declared, to delete at the end.
#[derive(Default)]
struct Declared {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

/// Totals of one variant over the rounds.
struct Totals {
    queue_type: QueueType,
    style: Style,
    ok: u64,
    failed: u64,
    elapsed: Duration,
    /// Messages per second of each round.
    rates: Vec<f64>,
    latency: Histogram<u64>,
    beam_cpu: Option<Duration>,
    own_cpu: Option<Duration>,
    /// Data segments the publisher sent (its writes to the socket).
    segments_out: Option<u64>,
    /// Data segments the publisher received (the node's writes: confirms).
    segments_in: Option<u64>,
    /// The node's CPU while one consumer drained and acked what was published.
    drain_cpu: Option<Duration>,
}

impl Totals {
    /// Confirmed events (messages times the events each carries).
    fn events(&self) -> u64 {
        self.ok * self.style.events_per_message() as u64
    }

    /// Events per second.
    fn per_second(&self) -> f64 {
        self.events() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU per confirmed event.
    fn per_event_us(&self, cpu: Option<Duration>) -> Option<f64> {
        cpu.filter(|_| self.ok > 0).map(|c| c.as_secs_f64() * 1e6 / self.events() as f64)
    }

    /// A count per confirmed event.
    fn per_event(&self, count: Option<u64>) -> Option<f64> {
        count.filter(|_| self.ok > 0).map(|c| c as f64 / self.events() as f64)
    }
}

pub async fn run(bench: BrokerBench) -> anyhow::Result<()> {
    let connection = Connection::connect(
        &testkit::amqp_url(),
        ConnectionProperties::default().with_connection_name("bench-broker".into()),
    )
    .await?;
    let mut declared = Declared::default();
    let result = tokio::select! {
        result = measure(&bench, &connection, &mut declared) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Closing the connection first ends every publish still in flight (an interrupted run's
    // tasks go on publishing); the deletes run on a connection of their own.
    let _ = connection.close(200, "benchmark done".into()).await;
    if let Err(error) = clean_up(&declared).await {
        eprintln!("cleaning up failed: {error:#}; delete what starts with the prefix above by hand");
    }
    result
}

async fn measure(bench: &BrokerBench, connection: &Connection, declared: &mut Declared) -> anyhow::Result<()> {
    let prefix = testkit::unique("bench_broker");
    eprintln!("declaring queues and exchanges under {prefix}");
    let quorum = declare_quorum(connection, &prefix, declared).await?;
    let classic = declare_classic(connection, &prefix, declared).await?;
    let amqp_port = reqwest::Url::parse(&testkit::amqp_url())?.port().unwrap_or(5672);
    let beam = pid_listening_on(amqp_port);
    if beam.is_none() {
        eprintln!("note: the RabbitMQ process listening on port {amqp_port} is not visible; its CPU is not reported");
    }
    let own = Some(std::process::id());
    let admin = connection.create_channel().await?;

    let variants: Vec<(&Target, Style)> = [&quorum, &classic]
        .into_iter()
        .flat_map(|t| Style::ALL.map(move |s| (t, s)))
        .chain(Style::BUNDLES.map(|k| (&quorum, Style::Bundles(k))))
        .collect();
    let mut totals: Vec<Totals> = variants
        .iter()
        .map(|(target, style)| Totals {
            queue_type: target.queue_type,
            style: *style,
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            rates: Vec::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            beam_cpu: Some(Duration::ZERO),
            own_cpu: Some(Duration::ZERO),
            segments_out: Some(0),
            segments_in: Some(0),
            drain_cpu: Some(Duration::ZERO),
        })
        .collect();

    // Round 0 warms every variant up (channels, queues, allocator) and is not counted.
    for round in 0..=bench.rounds {
        let count = if round == 0 { 2000.min(bench.messages) } else { bench.messages };
        for k in 0..variants.len() {
            let v = (k + round) % variants.len();
            let (target, style) = variants[v];
            let batch = events::signed_batch(&format!("r{round}v{v}"), count);
            // Whole bundles only, so a bundle's events each count for what was confirmed.
            let batch = match style {
                Style::Bundles(k) => bundled(&batch[..batch.len() - batch.len() % k], k),
                _ => batch,
            };
            let publisher = open_publisher(connection, target, style.channels(bench.concurrency)).await?;
            let publisher = Arc::new(publisher);
            let (own_cpu, beam_cpu) = (CpuMeter::start(own), CpuMeter::start(beam));
            let segments = tcp_data_segments_to(amqp_port);
            let result = tokio::time::timeout(Duration::from_secs(600), async {
                match style {
                    Style::Coalesced => coalesced_load(publisher.clone(), batch, bench.concurrency).await,
                    _ => broker_load(publisher.clone(), batch, bench.concurrency, Pace::Closed).await,
                }
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} / {:?} did not finish in 10 minutes", target.queue_type.name(), style)
            })??;
            let used = (own_cpu.elapsed(), beam_cpu.elapsed());
            let segments = tcp_data_segments_to(amqp_port).zip(segments).map(|((o1, i1), (o0, i0))| (o1 - o0, i1 - i0));
            for channel in &publisher.channels {
                let _ = channel.close(200, "variant done".into()).await;
            }
            let drain_cpu = CpuMeter::start(beam);
            drain(connection, &target.queue, result.ok).await?;
            let drain_cpu = drain_cpu.elapsed();
            admin.queue_purge(target.queue.as_str().into(), QueuePurgeOptions::default()).await?;
            if round > 0 {
                add(&mut totals[v], &result, used, segments)?;
                totals[v].drain_cpu = totals[v].drain_cpu.zip(drain_cpu).map(|(a, b)| a + b);
            }
        }
    }
    let _ = admin.close(200, "done".into()).await;
    report(bench, &totals, beam.is_some());
    Ok(())
}

fn add(
    totals: &mut Totals,
    result: &LoadResult,
    (own_cpu, beam_cpu): (Option<Duration>, Option<Duration>),
    segments: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    totals.ok += result.ok;
    totals.failed += result.failed;
    totals.elapsed += result.elapsed;
    totals.rates.push(result.per_second() * totals.style.events_per_message() as f64);
    totals.latency.add(&result.latency)?;
    totals.own_cpu = totals.own_cpu.zip(own_cpu).map(|(a, b)| a + b);
    totals.beam_cpu = totals.beam_cpu.zip(beam_cpu).map(|(a, b)| a + b);
    totals.segments_out = totals.segments_out.zip(segments).map(|(a, (o, _))| a + o);
    totals.segments_in = totals.segments_in.zip(segments).map(|(a, (_, i))| a + i);
    Ok(())
}

fn report(bench: &BrokerBench, totals: &[Totals], beam_visible: bool) {
    let body_len = events::session_completed("evt_size", "ord0").len();
    println!(
        "broker benchmark: {} rounds of {} persistent, mandatory, confirmed publishes of {body_len}-byte Stripe \
         events per variant, {} concurrent publishing tasks, one RabbitMQ node{}",
        bench.rounds,
        bench.messages,
        bench.concurrency,
        if beam_visible { "" } else { " (its CPU not visible)" }
    );
    println!(
        "{:<11} {:<32} {:>8} {:>13} {:>6} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>8} {:>8} {:>7} {:>6}",
        "queue",
        "publishing",
        "events/s",
        "rounds",
        "ratio",
        "beam pub",
        "beam ack",
        "beam us",
        "ratio",
        "pub us",
        "ratio",
        "segs out",
        "segs in",
        "p99 ms",
        "failed"
    );
    let base = &totals[0];
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |v: Option<f64>, b: Option<f64>| opt(v.zip(b).map(|(v, b)| v / b), 2);
    let through = |t: &Totals| t.per_event_us(t.beam_cpu.zip(t.drain_cpu).map(|(p, d)| p + d));
    for t in totals {
        let min = t.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.rates.iter().copied().fold(0.0, f64::max);
        let (own_us, base_own) = (t.per_event_us(t.own_cpu), base.per_event_us(base.own_cpu));
        println!(
            "{:<11} {:<32} {:>8.0} {:>13} {:>6} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>8} {:>8} {:>7.2} {:>6}",
            t.queue_type.name(),
            t.style.name(bench.concurrency),
            t.per_second(),
            format!("{min:.0}-{max:.0}"),
            ratio(Some(t.per_second()), Some(base.per_second())),
            opt(t.per_event_us(t.beam_cpu), 1),
            opt(t.per_event_us(t.drain_cpu), 1),
            opt(through(t), 1),
            ratio(through(t), through(base)),
            opt(own_us, 1),
            ratio(own_us, base_own),
            opt(t.per_event(t.segments_out), 3),
            opt(t.per_event(t.segments_in), 3),
            t.latency.value_at_quantile(0.99) as f64 / 1000.0,
            t.failed
        );
    }
    println!();
    println!(
        "per event (a bundle's events each count): ratios are against the first line (quorum, ingest's publishing); \
         beam pub / beam ack: CPU of the RabbitMQ node while publishing and confirming / while one consumer drained \
         and acked; beam us: the two together; pub us: CPU of this process (publisher and load tasks); segs out / \
         in: TCP data segments from the publisher to the node (its socket writes) and back (confirms); p99: a \
         message's confirm"
    );
}

/// Drains `expected` messages from `queue` as the worker consumes: a prefetch of 200, one
/// `multiple` ack for every 50 deliveries, and one for the last.
async fn drain(connection: &Connection, queue: &str, expected: u64) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    if expected == 0 {
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    channel.basic_qos(200, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(queue.into(), "bench-drain".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let mut taken = 0u64;
    let result = tokio::time::timeout(Duration::from_secs(600), async {
        while taken < expected {
            let Some(delivery) = deliveries.next().await else { anyhow::bail!("the consumer ended after {taken}") };
            let delivery = delivery?;
            taken += 1;
            if taken % 50 == 0 || taken == expected {
                channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
            }
        }
        Ok(())
    })
    .await;
    let _ = channel.close(200, "drained".into()).await;
    result.map_err(|_| anyhow::anyhow!("draining {queue} took over 10 minutes ({taken} of {expected})"))?
}

/// The events `k` at a time, each message's body their bodies one after another, each behind
/// its length (4 bytes, big-endian) and its signature, as a message carrying several webhooks
/// would have to hold them.
fn bundled(batch: &[SignedEvent], k: usize) -> Arc<Vec<SignedEvent>> {
    Arc::new(
        batch
            .chunks(k)
            .map(|chunk| {
                let mut body = Vec::with_capacity(chunk.iter().map(|e| e.body.len() + 100).sum());
                for event in chunk {
                    let signature = event.signature.as_bytes();
                    body.extend_from_slice(&(signature.len() as u32).to_be_bytes());
                    body.extend_from_slice(signature);
                    body.extend_from_slice(&(event.body.len() as u32).to_be_bytes());
                    body.extend_from_slice(&event.body);
                }
                SignedEvent { body: body.into(), signature: chunk[0].signature.clone() }
            })
            .collect(),
    )
}

/// The deployed topology under a prefix of its own: the events exchange bound to a quorum
/// queue with the delivery limit and dead-lettering, its delay queues and dead letters.
async fn declare_quorum(connection: &Connection, prefix: &str, declared: &mut Declared) -> anyhow::Result<Target> {
    let common = CommonSettings::default();
    let topology =
        Topology::new(&format!("{prefix}.quorum"), common.retry_delays.clone(), common.delivery_limit, false);
    declared.queues.extend(topology.queues());
    declared.exchanges.extend([topology.events_exchange(), topology.notifications_exchange()]);
    topology.declare(connection).await?;
    Ok(Target { queue_type: QueueType::Quorum, exchange: topology.events_exchange(), queue: topology.work_queue() })
}

/// A durable classic queue version 2 behind a topic exchange of its own, bound the same way.
async fn declare_classic(connection: &Connection, prefix: &str, declared: &mut Declared) -> anyhow::Result<Target> {
    let exchange = format!("{prefix}.classic.events");
    let queue = format!("{prefix}.classic.work");
    declared.exchanges.push(exchange.clone());
    declared.queues.push(queue.clone());
    let channel = connection.create_channel().await?;
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-version".into(), AMQPValue::LongInt(2));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, args).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(Target { queue_type: QueueType::Classic, exchange, queue })
}

/// `channels` confirm-mode channels publishing to `target` as ingest does.
async fn open_publisher(connection: &Connection, target: &Target, channels: usize) -> anyhow::Result<DirectPublish> {
    let mut opened: Vec<Channel> = Vec::with_capacity(channels);
    for _ in 0..channels {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        opened.push(channel);
    }
    Ok(DirectPublish {
        channels: opened,
        exchange: target.exchange.clone(),
        routing_key: Topology::routing_key("stripe", "checkout.session.completed"),
        properties: envelope_properties(),
    })
}

/// Deletes every queue and exchange the bench declared, each on a channel of its own (a
/// delete that fails closes its channel).
async fn clean_up(declared: &Declared) -> anyhow::Result<()> {
    let properties = ConnectionProperties::default().with_connection_name("bench-broker-cleanup".into());
    let connection = Connection::connect(&testkit::amqp_url(), properties).await?;
    let mut failed = Vec::new();
    for queue in &declared.queues {
        let channel = connection.create_channel().await?;
        if let Err(error) = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await {
            failed.push(format!("queue {queue}: {error}"));
        }
        let _ = channel.close(200, "cleaned up".into()).await;
    }
    for exchange in &declared.exchanges {
        let channel = connection.create_channel().await?;
        if let Err(error) = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await {
            failed.push(format!("exchange {exchange}: {error}"));
        }
        let _ = channel.close(200, "cleaned up".into()).await;
    }
    let _ = connection.close(200, "cleaned up".into()).await;
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}
