//! A small fake of Stripe's events list (`GET /v1/events`) for reconciliation tests: events
//! newest first, `types[]` and `created[gte]` filters, `limit`, `starting_after` and
//! `has_more` as Stripe pages them, a key it accepts (401 otherwise), scripted faults (a `429`
//! with `Retry-After`, a `500`, a malformed page) and an optional delay per page.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};
use shared::http_server::{serve, text_response, HttpResponse, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A scripted answer to the next list request, before any event is listed.
#[derive(Debug, Clone)]
pub enum StripeFault {
    /// This status with an error body.
    Status(u16),
    /// `429` with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// `200` with a body that is not an events list.
    Malformed,
}

/// One list request as the fake saw it.
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub authorization: Option<String>,
    pub stripe_version: Option<String>,
    pub query: Vec<(String, String)>,
    /// Events answered (0 for a fault).
    pub answered: usize,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// (created, insertion order, event), in insertion order.
    events: Vec<(i64, usize, Value)>,
    faults: VecDeque<StripeFault>,
    requests: Vec<ListRequest>,
    key: String,
    page_delay: Duration,
}

/// The running fake; stops when dropped.
pub struct FakeStripe {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl FakeStripe {
    /// Accepts `Authorization: Bearer <api_key>` only.
    pub async fn start(api_key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake Stripe");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { key: api_key.to_string(), ..State::default() }));
        let stop = CancellationToken::new();
        let shared = state.clone();
        let handler = move |request: Request<Incoming>, _peer| {
            let state = shared.clone();
            async move { answer(request, state).await }
        };
        let options = ServeOptions {
            header_read_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_millis(100),
            max_connections: 256,
            open_connections: None,
        };
        tokio::spawn(serve(listener, handler, options, stop.clone()));
        Self { addr, state, stop }
    }

    /// The API base (`STRIPE_API_BASE`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds an event (a Stripe event body: `id`, `type`); `created` is set to `created`.
    pub fn add_event(&self, mut event: Value, created: i64) {
        event["created"] = json!(created);
        let mut state = self.state.lock().unwrap();
        let order = state.events.len();
        state.events.push((created, order, event));
    }

    /// Answers the next list requests with these faults, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = StripeFault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// Accepts only this key from now on.
    pub fn set_key(&self, key: &str) {
        self.state.lock().unwrap().key = key.to_string();
    }

    /// Waits this long before answering each page.
    pub fn set_page_delay(&self, delay: Duration) {
        self.state.lock().unwrap().page_delay = delay;
    }

    pub fn requests(&self) -> Vec<ListRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(request: Request<Incoming>, state: Arc<Mutex<State>>) -> HttpResponse {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let url = reqwest::Url::parse(&format!("http://fake{}", request.uri())).expect("a request target");
    let query: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let mut recorded = ListRequest {
        authorization: header("authorization"),
        stripe_version: header("stripe-version"),
        query: query.clone(),
        answered: 0,
        at: Instant::now(),
    };
    let delay = state.lock().unwrap().page_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().unwrap();
    let response = (|| {
        if url.path() != "/v1/events" || request.method() != http::Method::GET {
            return error(404, "resource_missing");
        }
        if recorded.authorization.as_deref() != Some(&format!("Bearer {}", state.key)) {
            return error(401, "invalid_api_key");
        }
        if let Some(fault) = state.faults.pop_front() {
            return match fault {
                StripeFault::Status(code) => error(code, "api_error"),
                StripeFault::RateLimited(seconds) => {
                    let mut response = error(429, "rate_limit");
                    response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
                    response
                }
                StripeFault::Malformed => {
                    text_response(http::StatusCode::OK, "application/json", "{\"object\":\"list\"".into())
                }
            };
        }
        let value = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let types: Vec<&str> = query.iter().filter(|(k, _)| k == "types[]").map(|(_, v)| v.as_str()).collect();
        let gte: i64 = value("created[gte]").and_then(|v| v.parse().ok()).unwrap_or(i64::MIN);
        let limit: usize = value("limit").and_then(|v| v.parse().ok()).unwrap_or(10).clamp(1, 100);
        let mut listed: Vec<&(i64, usize, Value)> = state
            .events
            .iter()
            .filter(|(created, _, event)| {
                *created >= gte && (types.is_empty() || types.contains(&event["type"].as_str().unwrap_or_default()))
            })
            .collect();
        // Newest first; events of one second in the reverse order of their making, as Stripe.
        listed.sort_by_key(|(created, order, _)| std::cmp::Reverse((*created, *order)));
        let start = match value("starting_after") {
            None => 0,
            Some(id) => match listed.iter().position(|(_, _, e)| e["id"] == id) {
                Some(i) => i + 1,
                None => return error(400, "resource_missing"),
            },
        };
        let page: Vec<Value> = listed.iter().skip(start).take(limit).map(|(_, _, e)| e.clone()).collect();
        let has_more = listed.len() > start + page.len();
        recorded.answered = page.len();
        let body = json!({"object": "list", "url": "/v1/events", "has_more": has_more, "data": page});
        // Stripe pretty-prints its answers: each event's bytes are indented in the page.
        text_response(http::StatusCode::OK, "application/json", serde_json::to_string_pretty(&body).unwrap())
    })();
    state.requests.push(recorded);
    response
}

fn error(code: u16, kind: &str) -> HttpResponse {
    let body = json!({"error": {"type": kind, "message": "fake Stripe"}}).to_string();
    text_response(http::StatusCode::from_u16(code).expect("a status"), "application/json", body)
}
