//! Test support shared by the integration tests of every crate. Each test gets its own
//! database ([`TestDb`]) and its own AMQP prefix ([`TestBroker`]); a [`TcpProxy`] of its own
//! sits between the code under test and a service when a test needs to take that service
//! away without disturbing tests running in parallel; a [`PgServer`] is a PostgreSQL server
//! of the test's own, for tests that run it with TLS or crash the database itself, a
//! [`PgPair`] a primary and its streaming standby, for failover tests, a [`PgBouncer`] a
//! pooler in front of a Postgres, and a [`RabbitCluster`] one of RabbitMQ nodes, for tests
//! that kill broker nodes or raise alarms (or, in a [`NetLab`] of network namespaces, cut
//! them off from each other or from the code under test); [`RoleUsers`] are the deployment's RabbitMQ users, made by its own script.
//!
//! The real services are found through `TEST_DATABASE_URL` (an admin connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).

pub mod amqp;
pub mod broker_policy;
pub mod broker_users;
pub mod compose;
pub mod db;
pub mod events;
pub mod fake_http;
pub mod fake_stripe;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod pg_pair;
pub mod pg_server;
pub mod pgbouncer;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod rabbit_node;
pub mod raw_amqp;

use std::future::Future;
use std::time::Duration;

pub use amqp::TestBroker;
pub use broker_users::RoleUsers;
pub use db::TestDb;
pub use fake_http::{Behavior, FakeEndpoint};
pub use fake_stripe::{FakeStripe, StripeFault};
pub use netns::NetLab;
pub use pg_pair::PgPair;
pub use pg_server::PgServer;
pub use pgbouncer::PgBouncer;
pub use process::{LoggedProcess, UnreadProcess};
pub use proxy::TcpProxy;
pub use rabbit_node::{RabbitCluster, RabbitNode};

/// Admin connection string of the test Postgres.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the test RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A short unique suffix for names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `check` until it returns `Some` or `deadline` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Installs a log subscriber once, writing through the test harness's capture so a failing
/// test shows its logs. `RUST_LOG` filters as in the services (default `info,lapin=error`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter(shared::telemetry::env_filter()).with_test_writer().try_init();
}
