//! The HTTP/1 accept loop both binaries use (ingest's webhook routes, the worker's health
//! and metrics listener): a cap on open connections, header-read timeout, and a graceful
//! drain on shutdown during which the listener still answers (readiness says "draining").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head (request line and headers) read; hyper answers 431 beyond it.
/// Webhook heads are well under 8 KiB; hyper's default (about 400 KiB) is far more than needed.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Response type of every handler here: bodies are small and built in memory.
pub type HttpResponse = Response<Full<Bytes>>;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must send complete request headers within this time; it also bounds how long
    /// an idle keep-alive connection is held (hyper restarts the timer for each request head).
    pub header_read_timeout: Duration,
    /// After shutdown, how long in-flight requests may take before connections are dropped.
    pub drain_deadline: Duration,
    /// Open connections at most. At the cap, the oldest connection that has not sent a byte
    /// yet is closed to make room; when every connection is busy, accepting waits (new
    /// clients queue in the kernel's backlog) until one closes.
    pub max_connections: usize,
    /// Set to the number of open connections, if given.
    pub open_connections: Option<IntGauge>,
}

/// Serves `handler` on `listener` until `shutdown` fires, then drains: connections with a
/// request in flight finish it (each gets its real answer) while the listener still accepts,
/// so a load balancer probing `/readyz` hears "draining" rather than a refused connection;
/// connections accepted meanwhile serve one request each. Once the connections open at the
/// signal are done, the listener closes and the rest are awaited. Returns when all
/// connections are closed or `drain_deadline` has passed.
///
/// A connection is handed to hyper (which allocates its read buffer at once) only when its
/// first bytes arrive: until then it holds a slot, a small task and a socket, nothing more, so
/// a flood of idle connections costs little memory and, through the cap, cannot starve
/// clients that do send requests.
pub async fn serve<H, F>(listener: TcpListener, handler: H, options: ServeOptions, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let idle = Arc::new(IdleConnections::default());
    let before_signal = TaskTracker::new();
    let during_drain = TaskTracker::new();
    let closing = CancellationToken::new();
    let drained = async {
        shutdown.cancelled().await;
        closing.cancel();
        idle.close_all();
        before_signal.close();
        before_signal.wait().await;
    };
    tokio::pin!(drained);
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(options.drain_deadline).await;
    };
    tokio::pin!(deadline);
    loop {
        // A slot for the next connection: a free one; else the one of the oldest connection
        // that has not sent a byte, closed to make room (handed over at once, so a flood of
        // silent connections never slows accepting: a full backlog would make the kernel drop
        // real clients' connection attempts); else wait until a connection closes.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match idle.close_oldest() {
                Some(slot) => slot,
                None => tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
                    _ = &mut drained => break,
                    _ = &mut deadline => break,
                },
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut drained => break,
            _ = &mut deadline => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let draining = shutdown.is_cancelled();
        let tracker = if draining { &during_drain } else { &before_signal };
        let connection = Connection {
            stream,
            peer,
            handler: handler.clone(),
            options: options.clone(),
            // Listed here, not in the task: the next accept may need to close it before the
            // task first runs.
            waiting: idle.register(slot),
            closing: closing.clone(),
            keep_alive: !draining,
        };
        tracker.spawn(connection.serve());
    }
    drop(listener);
    closing.cancel();
    during_drain.close();
    before_signal.close();
    tokio::select! {
        _ = async { before_signal.wait().await; during_drain.wait().await } => tracing::info!("all HTTP connections drained"),
        _ = &mut deadline => {
            tracing::warn!(deadline = ?options.drain_deadline, "drain deadline passed; dropping remaining connections");
        }
    }
}

/// One accepted connection, until it closes.
struct Connection<H> {
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    options: ServeOptions,
    /// Its entry in the list of connections that have not sent a byte yet, holding its slot.
    waiting: IdleGuard,
    closing: CancellationToken,
    /// False for connections accepted while draining: they serve one request and close.
    keep_alive: bool,
}

impl<H, F> Connection<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    async fn serve(self) {
        let Self { stream, peer, handler, options, waiting, closing, keep_alive } = self;
        let _counted = options.open_connections.as_ref().map(OpenConnection::new);
        // `peek`, not `readable`: readiness can be reported for a socket with nothing to read.
        let mut first = [0u8; 1];
        tokio::select! {
            peeked = stream.peek(&mut first) => if !matches!(peeked, Ok(1)) { return },
            _ = waiting.closed() => return,
            _ = tokio::time::sleep(options.header_read_timeout) => return,
        }
        // A request is coming: the slot moves from the idle list to this task, unless the
        // accept loop took it a moment ago.
        let Some(_slot) = waiting.into_slot() else { return };
        // Boxed: a task's memory is the size of its largest state, and the HTTP connection
        // (with the handler's future inside it) is far larger than the wait above.
        Box::pin(serve_http(stream, peer, handler, options, closing, keep_alive)).await;
    }
}

async fn serve_http<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    options: ServeOptions,
    closing: CancellationToken,
    keep_alive: bool,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handler(request, peer);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(keep_alive)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.cancelled(), if keep_alive => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Connections accepted that have not sent a byte yet, oldest first, with their slots.
#[derive(Default)]
struct IdleConnections {
    waiting: Mutex<IdleList>,
}

#[derive(Default)]
struct IdleList {
    next_id: u64,
    entries: VecDeque<IdleEntry>,
}

struct IdleEntry {
    id: u64,
    close: CancellationToken,
    slot: OwnedSemaphorePermit,
}

impl IdleConnections {
    fn register(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> IdleGuard {
        let close = CancellationToken::new();
        let mut list = self.waiting.lock().expect("idle list lock");
        list.next_id += 1;
        let id = list.next_id;
        list.entries.push_back(IdleEntry { id, close: close.clone(), slot });
        IdleGuard { list: self.clone(), id, close }
    }

    /// Closes the connection that has waited longest for its first byte and returns its slot.
    fn close_oldest(&self) -> Option<OwnedSemaphorePermit> {
        let entry = self.waiting.lock().expect("idle list lock").entries.pop_front()?;
        entry.close.cancel();
        Some(entry.slot)
    }

    fn close_all(&self) {
        for entry in self.waiting.lock().expect("idle list lock").entries.drain(..) {
            entry.close.cancel();
        }
    }

    fn remove(&self, id: u64) -> Option<IdleEntry> {
        let mut list = self.waiting.lock().expect("idle list lock");
        // Usually near the back: the newest connections are the ones that send first.
        let at = list.entries.iter().rposition(|e| e.id == id)?;
        list.entries.remove(at)
    }
}

/// A connection's entry in the idle list; dropping it closes the entry (and frees the slot).
struct IdleGuard {
    list: Arc<IdleConnections>,
    id: u64,
    close: CancellationToken,
}

impl IdleGuard {
    /// Resolves when the accept loop closed this connection to make room.
    async fn closed(&self) {
        self.close.cancelled().await
    }

    /// Leaves the list with the slot; `None` if the connection was closed meanwhile.
    fn into_slot(self) -> Option<OwnedSemaphorePermit> {
        self.list.remove(self.id).map(|entry| entry.slot)
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.list.remove(self.id);
    }
}

/// Counts one open connection in a gauge while it lives.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Connections the kernel completes and queues before the accept loop takes them. The
/// standard library's 128 overflows under a burst of connections (a flood, or many providers
/// at once), and the kernel then drops connection attempts, which clients retry only after a
/// second or more. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A short JSON answer.
pub fn json_response(status: http::StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// A plain-text answer (Prometheus exposition, health probes).
pub fn text_response(status: http::StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// Prometheus' text exposition content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
