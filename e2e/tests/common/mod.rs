#![allow(dead_code)]

//! Support for the end-to-end tests: a migrated database and a broker prefix per test, the
//! worker and ingest inside the test process or as processes of their own, hookctl as an
//! operator runs it. [`ingest`] has the helpers of the ingest-side tests.

pub mod ingest;
pub mod steady;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use shared::settings::{IngestSettings, Settings, WorkerSettings};
use shared::Provider;
use testkit::{TestBroker, TestDb};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A migrated database and a broker prefix of this test's own.
pub struct Env {
    pub db: TestDb,
    pub broker: TestBroker,
    pub sql: Client,
}

impl Env {
    pub async fn new() -> Self {
        testkit::init_logs();
        let db = TestDb::create().await;
        let broker = TestBroker::new().await;
        let settings: WorkerSettings = broker.settings(Some(&db.url), &[]);
        worker::store::migrate::migrate(&settings.database).await.expect("migrations apply");
        let sql = db.client().await;
        Self { db, broker, sql }
    }

    /// A binary's settings (`IngestSettings`, `WorkerSettings`, `HookctlSettings`) for this
    /// environment with `vars` on top.
    pub fn settings<S: Settings>(&self, vars: &[(&str, &str)]) -> S {
        self.broker.settings(Some(&self.db.url), vars)
    }

    /// The same as environment variables, for worker processes.
    pub fn env_vars(&self, vars: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![
            ("DATABASE_URL".to_string(), self.db.url.clone()),
            ("AMQP_URL".to_string(), testkit::amqp_url()),
            ("AMQP_PREFIX".to_string(), self.broker.prefix.clone()),
            ("WORKER_ADDR".to_string(), "127.0.0.1:0".to_string()),
            ("STRIPE_WEBHOOK_SECRET".to_string(), testkit::events::STRIPE_SECRET.to_string()),
            ("RETRY_DELAYS".to_string(), "100ms,300ms,1s".to_string()),
            ("RUST_LOG".to_string(), "info,lapin=error".to_string()),
        ];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // Register the topology for clean-up.
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _: WorkerSettings = self.broker.settings(None, &pairs);
        all
    }

    pub fn work_queue(&self) -> String {
        format!("{}.work", self.broker.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.broker.prefix)
    }

    /// A booking for a fresh trainer and a pending payment for `order_id`.
    pub async fn seed_payment(
        &self,
        order_id: &str,
        provider: &str,
        amount: Option<i64>,
        currency: Option<&str>,
    ) -> Seeded {
        let trainer_id = Uuid::new_v4();
        let booking_id: Uuid = self
            .sql
            .query_one("INSERT INTO bookings (trainer_id) VALUES ($1) RETURNING id", &[&trainer_id])
            .await
            .unwrap()
            .get(0);
        let amount = amount.map(rust_decimal::Decimal::from);
        let payment_id: Uuid = self
            .sql
            .query_one(
                "INSERT INTO payments (order_id, booking_id, provider, amount, currency) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&order_id, &booking_id, &provider, &amount, &currency],
            )
            .await
            .unwrap()
            .get(0);
        Seeded { payment_id, booking_id, trainer_id }
    }

    pub async fn status(&self, order_id: &str) -> String {
        self.sql
            .query_one("SELECT payment_status FROM payments WHERE order_id = $1", &[&order_id])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn notifications_for(&self, user_id: Uuid) -> i64 {
        self.sql.query_one("SELECT count(*) FROM notifications WHERE user_id = $1", &[&user_id]).await.unwrap().get(0)
    }

    /// A single number from `sql`; 0 when it returns no row.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql.query_opt(sql, &[]).await.unwrap().map_or(0, |r| r.get(0))
    }

    /// `webhook_events` (status, attempts, last_error) for an event key.
    pub async fn inbox(&self, event_key: &str) -> Option<(String, i32, Option<String>)> {
        self.sql
            .query_opt("SELECT status, attempts, last_error FROM webhook_events WHERE event_key = $1", &[&event_key])
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    /// Waits until `sql` (a count) returns `expected`.
    pub async fn wait_count(&self, what: &str, sql: &str, expected: i64, deadline: Duration) {
        testkit::eventually(what, deadline, || async { (self.count(sql).await == expected).then_some(()) }).await
    }

    /// Waits until `sql` (a count) reaches at least `minimum`.
    pub async fn wait_at_least(&self, what: &str, sql: &str, minimum: i64, deadline: Duration) {
        testkit::eventually(what, deadline, || async { (self.count(sql).await >= minimum).then_some(()) }).await
    }

    /// Publishes an envelope straight to the work queue, as ingest would. The worker checks
    /// that `event_key` and `event_type` are the body's own (a Stripe event's `id` and `type`);
    /// a test of that check passes others on purpose.
    pub async fn publish(&self, provider: Provider, event_type: &str, event_key: &str, body: &[u8]) {
        publish_as_ingest(&self.broker, provider, event_type, event_key, body).await;
    }

    /// Publishes a Toss body as ingest would, under the key and type ingest computes from it;
    /// returns the key (the inbox row's `event_key`).
    pub async fn publish_toss(&self, body: &[u8]) -> String {
        let event = shared::providers::toss::parse_toss_event(body).expect("a Toss body");
        let key = event.event_key();
        publish_as_ingest(&self.broker, Provider::Toss, &event.event_type, &key, body).await;
        key
    }

    /// Runs the `hookctl` binary, as an operator would, with this environment's settings and
    /// `vars` on top; returns whether it succeeded and its stdout followed by its stderr.
    pub async fn hookctl(&self, vars: &[(&str, &str)], args: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_e2e-hookctl"))
            // hookctl sizes its threads' stacks itself (`shared::runtime`), whatever the tests'.
            .env_remove("RUST_MIN_STACK")
            .args(args)
            .envs(self.env_vars(vars))
            .output()
            .await
            .expect("hookctl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// Declares the worker's topology (a worker does this on start; tests that publish first
    /// need it).
    pub async fn declare(&self, settings: &WorkerSettings) {
        worker::Worker::topology(settings).declare(self.broker.connection()).await.unwrap();
    }
}

pub use testkit::amqp::publish_as_ingest;

pub struct Seeded {
    pub payment_id: Uuid,
    pub booking_id: Uuid,
    pub trainer_id: Uuid,
}

/// A worker running inside the test process.
pub struct TestWorker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestWorker {
    pub async fn spawn(settings: WorkerSettings) -> Self {
        let worker = worker::Worker::build(settings).await.expect("worker builds");
        let addr = worker.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        let me = Self { addr, shutdown, task };
        me.wait_ready().await;
        me
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        testkit::eventually("worker ready", Duration::from_secs(20), || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A worker as a separate OS process (to kill it for real).
/// Its log goes to a file of its own in the temp directory, named in the test's output.
pub fn spawn_worker_process(vars: &[(String, String)]) -> Child {
    let log = std::env::temp_dir().join(format!("{}.log", testkit::unique("worker")));
    println!("worker process log: {}", log.display());
    let file = std::fs::File::create(&log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
        // The worker sizes its threads' stacks itself (`shared::runtime`), whatever the tests'.
        .env_remove("RUST_MIN_STACK")
        .envs(vars.iter().cloned())
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary starts")
}

/// An ingest inside the test process.
pub struct TestIngest {
    pub addr: SocketAddr,
    /// Its `/metrics` listener (`INGEST_METRICS_ADDR`).
    pub metrics_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestIngest {
    pub async fn spawn(settings: IngestSettings) -> Self {
        let ingest = ::ingest::Ingest::build(settings).await.expect("ingest builds");
        let addr = ingest.local_addr();
        let metrics_addr = ingest.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingest.run(shutdown.clone()));
        let url = format!("http://{addr}/readyz");
        testkit::eventually("ingest ready", Duration::from_secs(20), || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        Self { addr, metrics_addr, shutdown, task }
    }

    pub async fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> reqwest::StatusCode {
        let mut request = reqwest::Client::new().post(format!("http://{}{path}", self.addr)).body(body.to_vec());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.unwrap().status()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Sends SIGKILL: the process gets no chance to ack, nack or close anything.
pub async fn kill_hard(child: &mut Child) {
    child.start_kill().expect("SIGKILL sent");
    let _ = child.wait().await;
}

/// The real Postgres address behind `url`.
pub fn postgres_addr(url: &str) -> SocketAddr {
    let parsed = reqwest::Url::parse(url).unwrap();
    let host = match parsed.host_str().unwrap() {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{}", parsed.port().unwrap_or(5432)).parse().unwrap()
}
