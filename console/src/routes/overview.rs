//! GET /: the overview. Its numbers are kept for a few seconds, so several people watching
//! (or one pressing reload) cost the database and the broker one round of questions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::app::AppState;
use crate::auth::LoggedIn;
use crate::broker::QueueDepth;
use crate::read::overview::Counts;
use crate::workers::WorkerHealth;

/// How long the numbers are reused.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// Everything the overview shows; each part fails alone.
#[derive(Debug, Clone)]
pub struct Overview {
    pub taken_at: DateTime<Utc>,
    pub queues: Result<Vec<QueueDepth>, String>,
    pub counts: Result<Counts, String>,
    pub workers: Vec<WorkerHealth>,
}

/// The last overview and when it was taken.
#[derive(Default)]
pub struct Cache(tokio::sync::Mutex<Option<(Instant, Arc<Overview>)>>);

pub async fn page(State(state): State<AppState>, user: LoggedIn) -> Response {
    let overview = current(&state).await;
    crate::pages::overview::page(&user, &overview, &state.console.console_worker_addrs).into_response()
}

/// The cached overview, or a fresh one (one refresh at a time: the others wait for it).
pub async fn current(state: &AppState) -> Arc<Overview> {
    let mut cache = state.overview.0.lock().await;
    if let Some((at, overview)) = cache.as_ref() {
        if at.elapsed() < FRESH_FOR {
            return overview.clone();
        }
    }
    let (queues, counts, workers) = tokio::join!(
        state.broker.depths(&state.topology),
        async {
            let client = state.pool.get().await?;
            crate::read::overview::counts(&client).await
        },
        crate::workers::probe_all(&state.http, &state.console.console_worker_addrs),
    );
    let describe = |e: anyhow::Error| {
        tracing::warn!(error = %format!("{e:#}"), "overview");
        format!("{e}")
    };
    let overview = Arc::new(Overview {
        taken_at: Utc::now(),
        queues: queues.map_err(describe),
        counts: counts.map_err(describe),
        workers,
    });
    *cache = Some((Instant::now(), overview.clone()));
    overview
}
