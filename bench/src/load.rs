//! Load generators: signed webhooks over keep-alive HTTP/1 connections (a bare hyper client,
//! far cheaper than a full-featured one, so the generator takes little of the machine), and
//! confirmed publishes straight to the broker with lapin, the ceiling ingest is measured against.
//!
//! Both run either closed-loop (each connection sends its next request as soon as it has an
//! answer: maximum throughput) or paced (request `i` is due at `start + i / rate`; latency
//! counts from when it was due, so a stall is not hidden by requests that were never sent).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How requests are issued.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as answers come back.
    Closed,
    /// This many requests per second, in total.
    Rate(f64),
}

/// One prepared webhook.
#[derive(Clone)]
pub struct SignedEvent {
    pub body: Bytes,
    pub signature: http::HeaderValue,
}

/// What one run measured.
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Microseconds until a successful answer (or confirm).
    pub latency: Histogram<u64>,
    /// Paced requests sent more than [`LATE`] after they were due: the generator (too few
    /// connections, or no CPU) held them back.
    pub late: u64,
}

/// How far behind its due time a paced request may be sent before it counts as late.
pub const LATE: Duration = Duration::from_millis(10);

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Hands out request numbers and says when each is due.
struct Schedule {
    next: AtomicUsize,
    total: usize,
    start: Instant,
    pace: Pace,
}

impl Schedule {
    /// The next request number and the instant its latency counts from.
    async fn take(&self) -> Option<(usize, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return None;
        }
        match self.pace {
            Pace::Closed => Some((i, Instant::now())),
            Pace::Rate(rate) => {
                let due = self.start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                Some((i, due))
            }
        }
    }
}

/// Posts `events` to `addr` + `path` over `connections` keep-alive connections.
pub async fn http_load(
    addr: SocketAddr,
    path: &'static str,
    events: Arc<Vec<SignedEvent>>,
    connections: usize,
    pace: Pace,
) -> anyhow::Result<LoadResult> {
    let count = events.len();
    http_load_with(addr, path, count, Arc::new(move |i| events[i].clone()), connections, pace).await
}

/// Makes request `i` when it is due (e.g. signed at that moment).
pub type MakeEvent = Arc<dyn Fn(usize) -> SignedEvent + Send + Sync>;

/// Posts `count` events, the `i`th made by `make`, over `connections` keep-alive connections.
pub async fn http_load_with(
    addr: SocketAddr,
    path: &'static str,
    count: usize,
    make: MakeEvent,
    connections: usize,
    pace: Pace,
) -> anyhow::Result<LoadResult> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let schedule = Arc::new(Schedule { next: AtomicUsize::new(0), total: count, start: Instant::now(), pace });
    let mut tasks = Vec::with_capacity(connections);
    for sender in senders {
        let (schedule, make) = (schedule.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = Some(sender);
            let (mut latency, mut ok, mut failed, mut late) = (histogram(), 0u64, 0u64, 0u64);
            while let Some((i, from)) = schedule.take().await {
                if from.elapsed() > LATE {
                    late += 1;
                }
                let current = match sender.take() {
                    Some(s) if !s.is_closed() => s,
                    _ => match connect(addr).await {
                        Ok(s) => s,
                        Err(_) => {
                            failed += 1;
                            continue;
                        }
                    },
                };
                let (status, current) = post(current, addr, path, &make(i)).await;
                sender = current;
                if status == Some(200) {
                    ok += 1;
                    latency.record((from.elapsed().as_micros() as u64).max(1)).expect("within bounds");
                } else {
                    failed += 1;
                }
            }
            (latency, ok, failed, late)
        }));
    }
    collect(tasks, schedule.start).await
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one webhook; returns its status and the sender, if the connection can be reused.
async fn post(
    mut sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    event: &SignedEvent,
) -> (Option<u16>, Option<SendRequest<Full<Bytes>>>) {
    if sender.ready().await.is_err() {
        return (None, None);
    }
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("stripe-signature", event.signature.clone())
        .body(Full::new(event.body.clone()))
        .expect("valid request");
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let drained = response.into_body().collect().await.is_ok();
            (Some(status), drained.then_some(sender))
        }
        Err(_) => (None, None),
    }
}

/// One broker-only publish: what ingest does for a webhook, minus HTTP and verification.
pub struct DirectPublish {
    pub channels: Vec<Channel>,
    pub exchange: String,
    pub routing_key: String,
    /// Properties of message `i` (ingest's envelope headers).
    pub properties: Arc<dyn Fn(usize) -> BasicProperties + Send + Sync>,
}

/// Publishes every body persistently and mandatorily, each awaited until its confirm, from
/// `concurrency` tasks sharing the channels round-robin, as ingest's requests share them.
pub async fn broker_load(
    target: Arc<DirectPublish>,
    events: Arc<Vec<SignedEvent>>,
    concurrency: usize,
    pace: Pace,
) -> anyhow::Result<LoadResult> {
    let schedule = Arc::new(Schedule { next: AtomicUsize::new(0), total: events.len(), start: Instant::now(), pace });
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (schedule, events, target) = (schedule.clone(), events.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latency, mut ok, mut failed) = (histogram(), 0u64, 0u64);
            while let Some((i, from)) = schedule.take().await {
                let channel = &target.channels[i % target.channels.len()];
                let options = BasicPublishOptions { mandatory: true, immediate: false };
                let confirmed = async {
                    channel
                        .basic_publish(
                            target.exchange.as_str().into(),
                            target.routing_key.as_str().into(),
                            options,
                            &events[i].body,
                            (target.properties)(i),
                        )
                        .await?
                        .await
                }
                .await;
                match confirmed {
                    Ok(Confirmation::Ack(None)) => {
                        ok += 1;
                        latency.record((from.elapsed().as_micros() as u64).max(1)).expect("within bounds");
                    }
                    _ => failed += 1,
                }
            }
            (latency, ok, failed, 0)
        }));
    }
    collect(tasks, schedule.start).await
}

/// A publish handed to a [`coalesced_load`] writer: message `i` with its properties, and where
/// to send back the confirm to await (or the error of writing it).
type Handoff = (usize, BasicProperties, oneshot::Sender<lapin::Result<PublisherConfirm>>);

/// [`broker_load`] with coalesced writes: the `concurrency` tasks (ingest's requests) hand
/// their publishes to one writer per channel, which takes every publish waiting and issues them
/// back to back (all their frames queued before lapin's I/O thread writes them, so one write
/// carries many), then takes the next batch once that one is on the socket. Each task still
/// awaits its own message's confirm, as a request awaits it before its `200`.
pub async fn coalesced_load(
    target: Arc<DirectPublish>,
    events: Arc<Vec<SignedEvent>>,
    concurrency: usize,
) -> anyhow::Result<LoadResult> {
    let mut writers = Vec::with_capacity(target.channels.len());
    let mut handoffs = Vec::with_capacity(target.channels.len());
    for channel in 0..target.channels.len() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Handoff>();
        handoffs.push(tx);
        let (target, events) = (target.clone(), events.clone());
        writers.push(tokio::spawn(async move {
            let channel = &target.channels[channel];
            let options = BasicPublishOptions { mandatory: true, immediate: false };
            let mut batch = Vec::with_capacity(concurrency);
            while rx.recv_many(&mut batch, concurrency.max(1)).await > 0 {
                let publishes = batch.drain(..).map(|(i, properties, reply): Handoff| {
                    let (target, events) = (&target, &events);
                    async move {
                        let exchange = target.exchange.as_str().into();
                        let routing_key = target.routing_key.as_str().into();
                        let written =
                            channel.basic_publish(exchange, routing_key, options, &events[i].body, properties).await;
                        let _ = reply.send(written);
                    }
                });
                // Every publish of the batch is queued on its first poll, before any is written.
                futures_util::future::join_all(publishes).await;
            }
        }));
    }
    let handoffs = Arc::new(handoffs);
    let schedule = Arc::new(Schedule {
        next: AtomicUsize::new(0),
        total: events.len(),
        start: Instant::now(),
        pace: Pace::Closed,
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (schedule, handoffs, target) = (schedule.clone(), handoffs.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latency, mut ok, mut failed) = (histogram(), 0u64, 0u64);
            while let Some((i, from)) = schedule.take().await {
                let (reply, written) = oneshot::channel();
                let confirmed = match handoffs[i % handoffs.len()].send((i, (target.properties)(i), reply)) {
                    Ok(()) => match written.await {
                        Ok(Ok(confirm)) => confirm.await.ok(),
                        _ => None,
                    },
                    Err(_) => None,
                };
                match confirmed {
                    Some(Confirmation::Ack(None)) => {
                        ok += 1;
                        latency.record((from.elapsed().as_micros() as u64).max(1)).expect("within bounds");
                    }
                    _ => failed += 1,
                }
            }
            (latency, ok, failed, 0)
        }));
    }
    let result = collect(tasks, schedule.start).await;
    drop(handoffs);
    for writer in writers {
        writer.await?;
    }
    result
}

/// What one load task measured: latency, answered, failed, sent late.
type TaskCounts = (Histogram<u64>, u64, u64, u64);

async fn collect(tasks: Vec<tokio::task::JoinHandle<TaskCounts>>, start: Instant) -> anyhow::Result<LoadResult> {
    let mut result = LoadResult { ok: 0, failed: 0, elapsed: Duration::ZERO, latency: histogram(), late: 0 };
    for task in tasks {
        let (latency, ok, failed, late) = task.await?;
        result.latency.add(latency)?;
        result.ok += ok;
        result.failed += failed;
        result.late += late;
    }
    result.elapsed = start.elapsed();
    Ok(result)
}
