#![allow(dead_code)]

use std::net::SocketAddr;

use ingest::Ingest;
use shared::IngestSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An ingest serving on an ephemeral port inside the test process.
pub struct TestIngest {
    pub addr: SocketAddr,
    /// Where its `/metrics` is served (`INGEST_METRICS_ADDR`), not the webhook port.
    pub metrics_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub client: reqwest::Client,
    pub state: std::sync::Arc<ingest::AppState>,
}

impl TestIngest {
    pub async fn spawn(settings: IngestSettings) -> Self {
        testkit::init_logs();
        let ingest = Ingest::build(settings).await.expect("ingest builds");
        let addr = ingest.local_addr();
        let metrics_addr = ingest.metrics_addr();
        let state = ingest.state();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingest.run(shutdown.clone()));
        let me = Self { addr, metrics_addr, shutdown, task, client: reqwest::Client::new(), state };
        me.wait_ready().await;
        me
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/metrics` on the metrics listener.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    pub async fn wait_ready(&self) {
        testkit::eventually("ingest ready", std::time::Duration::from_secs(20), || async {
            let r = self.client.get(self.url("/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub async fn post(&self, path: &str, body: &[u8], headers: &[(String, String)]) -> reqwest::Response {
        let mut request =
            self.client.post(self.url(path)).header("content-type", "application/json").body(body.to_vec());
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send().await.expect("request sent")
    }

    pub async fn post_stripe(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let headers: Vec<(String, String)> =
            signature.map(|s| ("stripe-signature".to_string(), s.to_string())).into_iter().collect();
        self.post(ingest::STRIPE_ROUTE, body, &headers).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Reads `{"error": ...}` from a response.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    body["error"].as_str().expect("error code").to_string()
}

/// The real broker's address, for a proxy in front of it.
pub fn broker_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&testkit::amqp_url()).unwrap();
    let host = match url.host_str().unwrap() {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{}", url.port().unwrap_or(5672)).parse().unwrap()
}

/// The `ingest` binary in a process of its own (to signal it, or read its memory), on free
/// ports, with this test's prefix and `vars` added; returns once it is ready, with the
/// addresses of its webhook and its metrics listeners.
pub async fn spawn_ingest_process(
    broker: &testkit::TestBroker,
    vars: &[(&str, &str)],
) -> (testkit::LoggedProcess, SocketAddr, SocketAddr) {
    let _ = broker.settings::<shared::IngestSettings>(None, &[]); // registers the prefix's queues for clean-up
    let mut all: Vec<(String, String)> = [
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", broker.prefix.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".into()),
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".into()),
        ("STRIPE_WEBHOOK_SECRET", testkit::events::STRIPE_SECRET.into()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let process = testkit::LoggedProcess::spawn(env!("CARGO_BIN_EXE_ingest"), &[], &all);
    let addr = process.logged_addr("ingest listening").await;
    let metrics_addr = process.logged_addr("ingest metrics listening").await;
    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", std::time::Duration::from_secs(20), || async {
        let r = client.get(format!("http://{addr}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    (process, addr, metrics_addr)
}

/// POSTs `body` to the Stripe route of the ingest at `addr`, signed with the test secret.
pub async fn post_signed_stripe(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    use testkit::events::{stripe_signature, STRIPE_SECRET};
    client
        .post(format!("http://{addr}{}", ingest::STRIPE_ROUTE))
        .header("stripe-signature", stripe_signature(&body, STRIPE_SECRET))
        .body(body)
        .send()
        .await
}

/// A signed Stripe event as a raw HTTP/1.1 request, for tests that drive sockets by hand.
pub fn raw_stripe_request(key: &str) -> (String, Vec<u8>) {
    use testkit::events::{stripe_session_event, stripe_signature, STRIPE_SECRET};
    let body = stripe_session_event(key, "checkout.session.completed", "o", "paid", 100, "usd");
    let head = format!(
        "POST /api/webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nstripe-signature: {}\r\ncontent-length: {}\r\n\r\n",
        stripe_signature(&body, STRIPE_SECRET),
        body.len()
    );
    (head, body)
}
