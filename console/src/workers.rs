//! Whether each configured worker is ready or halted, from its own `/readyz`
//! (`CONSOLE_WORKER_ADDRS`). A worker halts when the database rejects its own SQL
//! (`worker/src/halt.rs`); `/readyz` then answers 503 with the reason.

use std::time::Duration;

use serde::Deserialize;

/// How long one probe may take; the overview does not wait on a worker that hangs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one worker said.
#[derive(Debug, Clone)]
pub struct WorkerHealth {
    pub addr: String,
    pub state: WorkerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    /// The database rejects the worker's own SQL; the reason as the worker gives it.
    Halted(String),
    /// Not ready for another reason (broker, database unreachable, draining).
    NotReady(String),
    Unreachable(String),
}

#[derive(Deserialize)]
struct Readyz {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    broker: bool,
    #[serde(default)]
    database: bool,
    #[serde(default)]
    draining: bool,
    halted: Option<String>,
}

/// A client for the probes: no redirects, short deadlines.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// Probes every address at once.
pub async fn probe_all(client: &reqwest::Client, addrs: &[String]) -> Vec<WorkerHealth> {
    let probes =
        addrs.iter().map(|addr| async move { WorkerHealth { addr: addr.clone(), state: probe(client, addr).await } });
    futures_util::future::join_all(probes).await
}

async fn probe(client: &reqwest::Client, addr: &str) -> WorkerState {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        format!("{}/readyz", addr.trim_end_matches('/'))
    } else {
        format!("http://{addr}/readyz")
    };
    let response = match client.get(&url).send().await {
        Ok(response) => response,
        Err(e) => {
            return WorkerState::Unreachable(if e.is_timeout() { "timed out".into() } else { "no answer".into() })
        }
    };
    let status = response.status();
    let Ok(body) = response.json::<Readyz>().await else {
        return WorkerState::Unreachable(format!("answered {status} without a readiness report"));
    };
    if let Some(reason) = body.halted {
        return WorkerState::Halted(reason);
    }
    if body.ready {
        return WorkerState::Ready;
    }
    let mut why = Vec::new();
    if !body.broker {
        why.push("no broker connection");
    }
    if !body.database {
        why.push("database unreachable");
    }
    if body.draining {
        why.push("draining");
    }
    WorkerState::NotReady(why.join(", "))
}
