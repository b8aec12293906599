//! What the console's tests share: a migrated database and a broker prefix of the test's own,
//! a worker and a console running in the test process, users with known passwords, and an
//! HTTP client that keeps its session cookie and form token as a browser would.
#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use console::PipelineSettings;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use shared::envelope::{EventEnvelope, IngestVerification};
use shared::settings::Settings;
use shared::Provider;
use testkit::{TestBroker, TestDb};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);

/// An operator and a viewer.
pub const OPERATOR: (&str, &str) = ("ann", "ann-correct-horse");
pub const VIEWER: (&str, &str) = ("bob", "bob-battery-staple");

/// `CONSOLE_USERS` for the two users, hashed with a tiny Argon2 cost so tests stay fast (the
/// cost travels in each hash; production hashes use the default).
pub fn users_setting() -> &'static str {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS.get_or_init(|| {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let hash = |password: &str| {
            argon.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).unwrap().to_string()
        };
        format!("{}:operator:{};{}:viewer:{}", OPERATOR.0, hash(OPERATOR.1), VIEWER.0, hash(VIEWER.1))
    })
}

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
        let settings: PipelineSettings = broker.settings(Some(&db.url), &[]);
        worker::store::migrate::migrate(&settings.database).await.expect("migrations apply");
        let sql = db.client().await;
        Self { db, broker, sql }
    }

    pub fn settings<S: Settings>(&self, vars: &[(&str, &str)]) -> S {
        self.broker.settings(Some(&self.db.url), vars)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.broker.prefix)
    }

    /// Declares the topology, as a worker does at its start.
    pub async fn declare(&self) {
        let settings: PipelineSettings = self.settings(&[]);
        shared::topology::Topology::from_settings(&settings.common).declare(self.broker.connection()).await.unwrap();
    }

    /// A booking for a fresh trainer and a pending payment for `order_id`.
    pub async fn seed_payment(&self, order_id: &str, provider: &str, amount: i64, currency: &str) -> Uuid {
        let trainer_id = Uuid::new_v4();
        let booking_id: Uuid = self
            .sql
            .query_one("INSERT INTO bookings (trainer_id) VALUES ($1) RETURNING id", &[&trainer_id])
            .await
            .unwrap()
            .get(0);
        let amount = rust_decimal::Decimal::from(amount);
        self.sql
            .query_one(
                "INSERT INTO payments (order_id, booking_id, provider, amount, currency) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&order_id, &booking_id, &provider, &amount, &currency],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Publishes a signed Stripe event as ingest does.
    pub async fn publish_stripe(&self, event_id: &str, event_type: &str, order_id: &str, amount: i64) {
        let body = testkit::events::stripe_session_event(event_id, event_type, order_id, "paid", amount, "usd");
        let envelope = EventEnvelope {
            provider: Provider::Stripe,
            event_type: event_type.to_string(),
            event_key: event_id.to_string(),
            verification: IngestVerification::Signature,
            received_at: chrono::Utc::now(),
            request_id: format!("req-{event_id}"),
            attempt: 0,
            delivery_headers: [(
                "stripe-signature".to_string(),
                testkit::events::stripe_signature(&body, testkit::events::STRIPE_SECRET),
            )]
            .into_iter()
            .collect(),
            body: body.clone(),
        };
        let channel = self.broker.channel();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let confirm = channel
            .basic_publish(
                format!("{}.events", self.broker.prefix).into(),
                format!("stripe.{event_type}").into(),
                BasicPublishOptions { mandatory: true, immediate: false },
                &body,
                envelope.properties(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(confirm, lapin::Confirmation::Ack(None)), "published and routed");
    }

    /// A single number from `sql`.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql.query_opt(sql, &[]).await.unwrap().map_or(0, |r| r.get(0))
    }

    pub async fn wait_count(&self, what: &str, sql: &str, expected: i64) {
        testkit::eventually(what, WAIT, || async { (self.count(sql).await == expected).then_some(()) }).await
    }

    /// Waits until the dead-letter queue holds `n` messages.
    pub async fn wait_dead_letters(&self, n: u32) {
        testkit::eventually("dead letters", WAIT, || async {
            (self.broker.count(&self.dead_queue()).await == n).then_some(())
        })
        .await
    }

    /// Audit rows `(actor, action, result, detail)`, oldest first.
    pub async fn audit(&self) -> Vec<(String, String, String, String)> {
        self.sql
            .query("SELECT actor, action, result, detail FROM console_audit ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// A worker in this process, ready.
    pub async fn worker(&self, vars: &[(&str, &str)]) -> TestWorker {
        let worker = worker::Worker::build(self.settings(vars)).await.expect("worker builds");
        let addr = worker.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        let url = format!("http://{addr}/readyz");
        testkit::eventually("worker ready", WAIT, || async {
            reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        TestWorker { addr, shutdown, task }
    }

    /// A console in this process, on a port of its own, with the two users.
    pub async fn console(&self, vars: &[(&str, &str)]) -> TestConsole {
        let mut all = vec![("CONSOLE_ADDR", "127.0.0.1:0"), ("CONSOLE_USERS", users_setting())];
        all.extend_from_slice(vars);
        let console_settings = console::ConsoleSettings::from_vars(all.iter().copied()).expect("console settings");
        let settings = self
            .settings(vars.iter().copied().filter(|(k, _)| !k.starts_with("CONSOLE_")).collect::<Vec<_>>().as_slice());
        let console = console::Console::build(settings, console_settings).await.expect("console builds");
        let addr = console.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(console.run(shutdown.clone()));
        TestConsole { addr, shutdown, task }
    }
}

pub struct TestWorker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestWorker {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub struct TestConsole {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestConsole {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    /// A client that is not logged in.
    pub fn anonymous(&self) -> Http {
        Http { base: self.url(""), client: client(), cookie: None, csrf: None }
    }

    /// A client logged in as `user`.
    pub async fn login(&self, (user, password): (&str, &str)) -> Http {
        let mut http = self.anonymous();
        let response = http.login(user, password).await;
        assert_eq!(response.status(), 303, "{user} logs in");
        http
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// An HTTP client that keeps the session cookie and the last form token it saw.
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Http {
    /// GETs the login form (session and token), then posts the credentials.
    pub async fn login(&mut self, user: &str, password: &str) -> reqwest::Response {
        let form = self.get("/login").await;
        assert_eq!(form.status(), 200);
        let page = form.text().await.unwrap();
        self.csrf = Some(form_token(&page).expect("the login form has a token"));
        let csrf = self.csrf.clone().unwrap();
        self.post("/login", &[("user", user), ("password", password), ("csrf", &csrf)]).await
    }

    pub async fn get(&mut self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    /// GETs a page and remembers its form token.
    pub async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        if let Some(token) = form_token(&text) {
            self.csrf = Some(token);
        }
        text
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let body = serde_urlencoded::to_string(fields).unwrap();
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    /// Posts `fields` with this session's form token added.
    pub async fn post_with_token(&mut self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let csrf = self.csrf.clone().expect("a page with a form was loaded");
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        self.post(path, &all).await
    }

    fn keep_cookie(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap().to_string();
            if value.to_ascii_lowercase().contains("max-age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
    }
}

/// The value of the first `csrf` hidden field in a page.
pub fn form_token(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}
