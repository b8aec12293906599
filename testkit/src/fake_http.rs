//! A small fake of an external HTTP endpoint (the notification receiver, the Toss API): it
//! answers with a scripted sequence of behaviours and records every request it gets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use shared::http_server::{serve, text_response, HttpResponse, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoint does for one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer with this status and body.
    Status(u16, String),
    /// Answer with this status and a `Retry-After` header (seconds).
    RetryAfter(u16, u64),
    /// Never answer (until the client gives up).
    Hang,
    /// Answer with this (redirect) status and a `Location` header.
    Redirect(u16, String),
    /// Wait this long, then do that (a slow endpoint).
    After(Duration, Box<Behavior>),
}

/// A request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: std::time::Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Router = dyn Fn(&Recorded) -> Option<Behavior> + Send + Sync;

/// The running fake. Behaviours are used in order; the last one repeats.
pub struct FakeEndpoint {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    in_flight: Arc<InFlight>,
    script: Arc<Mutex<Vec<Behavior>>>,
    stop: CancellationToken,
}

impl FakeEndpoint {
    pub async fn start(script: Vec<Behavior>) -> Self {
        Self::start_with(script, None).await
    }

    /// With a router that may pick a behaviour per request (by path, say) before the script.
    pub async fn start_with(script: Vec<Behavior>, router: Option<Arc<Router>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake endpoint");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let stop = CancellationToken::new();
        let in_flight = Arc::new(InFlight::default());
        let (req, scr, fly) = (requests.clone(), script.clone(), in_flight.clone());
        let handler = move |request: Request<Incoming>, _peer| {
            let (requests, script, router, in_flight) = (req.clone(), scr.clone(), router.clone(), fly.clone());
            async move {
                let _counted = in_flight.enter();
                answer(request, requests, script, router).await
            }
        };
        let options = ServeOptions {
            header_read_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_millis(100),
            max_connections: 1024,
            open_connections: None,
        };
        tokio::spawn(serve(listener, handler, options, stop.clone()));
        Self { addr, requests, in_flight, script, stop }
    }

    /// The most requests it was answering at once.
    pub fn most_at_once(&self) -> usize {
        self.in_flight.most.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// When each request arrived.
    pub fn request_times(&self) -> Vec<std::time::Instant> {
        self.requests().iter().map(|r| r.at).collect()
    }

    /// Replaces the remaining script.
    pub fn set_script(&self, script: Vec<Behavior>) {
        *self.script.lock().unwrap() = script;
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    request: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Vec<Behavior>>>,
    router: Option<Arc<Router>>,
) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let recorded = Recorded {
        at: std::time::Instant::now(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    let routed = router.as_ref().and_then(|r| r(&recorded));
    requests.lock().unwrap().push(recorded);
    let behavior = routed.unwrap_or_else(|| {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script.first().cloned().unwrap_or(Behavior::Status(200, String::new()))
        }
    });
    behave(behavior).await
}

async fn behave(behavior: Behavior) -> HttpResponse {
    match behavior {
        Behavior::After(pause, then) => {
            tokio::time::sleep(pause).await;
            Box::pin(behave(*then)).await
        }
        Behavior::Status(code, body) => status(code, body),
        Behavior::RetryAfter(code, secs) => {
            let mut response = status(code, String::new());
            response.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
            response
        }
        Behavior::Redirect(code, location) => {
            let mut response = status(code, String::new());
            response.headers_mut().insert("location", location.parse().expect("a valid Location"));
            response
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            status(200, String::new())
        }
    }
}

/// Requests being answered now, and the most there were at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> Leave {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Leave(self.clone())
    }
}

/// Counts a request out when its answer is done (or dropped).
struct Leave(Arc<InFlight>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn status(code: u16, body: String) -> HttpResponse {
    text_response(http::StatusCode::from_u16(code).expect("valid status"), "application/json", body)
}
