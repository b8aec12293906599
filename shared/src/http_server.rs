//! The HTTP/1 accept loop both binaries use (ingest's webhook routes, the worker's health
//! and metrics listener): header-read timeout, graceful drain on shutdown with a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request head (request line and headers) read; hyper answers 431 beyond it.
/// Webhook heads are well under 8 KiB; hyper's default (about 400 KiB) is far more than needed.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Response type of every handler here: bodies are small and built in memory.
pub type HttpResponse = Response<Full<Bytes>>;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A client must send complete request headers within this time; it also bounds how long
    /// an idle keep-alive connection is held (hyper restarts the timer for each request head).
    pub header_read_timeout: Duration,
    /// After shutdown, how long in-flight requests may take before connections are dropped.
    pub drain_deadline: Duration,
}

/// Serves `handler` on `listener` until `shutdown` fires, then stops accepting, lets every
/// in-flight request finish (each gets its real answer) and returns once all connections are
/// closed or `drain_deadline` has passed.
pub async fn serve<H, F>(listener: TcpListener, handler: H, options: ServeOptions, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size(MAX_REQUEST_HEAD_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all HTTP connections drained"),
        _ = tokio::time::sleep(options.drain_deadline) => {
            tracing::warn!(deadline = ?options.drain_deadline, "drain deadline passed; dropping remaining connections");
        }
    }
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
