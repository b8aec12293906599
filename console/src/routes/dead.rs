//! Dead letters: GET /dead (list with filters), GET /dead/show (one), POST /dead/replay and
//! POST /dead/purge (operators; audited, refusals too).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use hookctl::dead_letters::{DeadLetter, ReplayOutcome};
use hookctl::outbox::DeadNotification;
use serde::Deserialize;

use super::{field, field_values, form_fields};
use crate::actions::{self, Kind};
use crate::app::AppState;
use crate::audit::{self, Outcome};
use crate::auth::{LoggedIn, Operator};
use crate::pages;

/// The list's filters, from the query string (and the hidden fields of "replay every one listed").
#[derive(Deserialize, Default, Debug, Clone)]
pub struct DeadFilter {
    pub kind: Option<String>,
    pub provider: Option<String>,
    /// Text the reason contains (case-insensitive).
    pub reason: Option<String>,
    /// Parked within this long (`30m`, `2h`, `1d`).
    pub since: Option<String>,
}

impl DeadFilter {
    pub fn kind(&self) -> Kind {
        match self.kind.as_deref() {
            Some("notifications") => Kind::Notifications,
            _ => Kind::Events,
        }
    }

    fn since(&self) -> Result<Option<Duration>, String> {
        match self.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(raw) => shared::settings::parse_duration(raw).map(Some),
        }
    }

    /// Whether `letter` passes every filter.
    pub fn keeps(&self, letter: &DeadLetter, since: Option<Duration>) -> bool {
        let provider = self.provider.as_deref().filter(|p| !p.is_empty());
        let reason = self.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()).map(str::to_lowercase);
        let cutoff = since.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
        provider.is_none_or(|p| letter.provider == p)
            && reason.is_none_or(|r| letter.reason.to_lowercase().contains(&r))
            && cutoff.is_none_or(|c| letter.dead_at.is_some_and(|t| t >= c))
    }

    fn from_fields(fields: &[(String, String)]) -> Self {
        let get = |name| field(fields, name).map(str::to_string);
        Self { kind: get("kind"), provider: get("provider"), reason: get("reason"), since: get("since") }
    }
}

pub async fn list(State(state): State<AppState>, user: LoggedIn, Query(filter): Query<DeadFilter>) -> Response {
    let kind = filter.kind();
    let since = match filter.since() {
        Ok(since) => since,
        Err(why) => return pages::error_page(StatusCode::BAD_REQUEST, "Dead letters", &why, Some(&user)),
    };
    let letters = match actions::dead_letters(&state.broker, &state.topology, kind).await {
        Ok(letters) => letters,
        Err(e) => return pages::unavailable("The broker is unavailable", &e, &user),
    };
    let outbox = match kind {
        Kind::Notifications => match outbox_set_aside(&state).await {
            Ok(rows) => rows,
            Err(e) => return pages::unavailable("The outbox could not be read", &e, &user),
        },
        Kind::Events => Vec::new(),
    };
    let shown: Option<Vec<&DeadLetter>> =
        letters.as_ref().map(|l| l.iter().filter(|l| filter.keeps(l, since)).collect());
    let total = letters.as_ref().map_or(0, Vec::len);
    pages::dead::list(&user, &state, &filter, shown.as_deref(), total, &outbox).into_response()
}

#[derive(Deserialize)]
pub struct ShowQuery {
    kind: Option<String>,
    id: String,
}

pub async fn show(State(state): State<AppState>, user: LoggedIn, Query(query): Query<ShowQuery>) -> Response {
    let kind = DeadFilter { kind: query.kind, ..Default::default() }.kind();
    match actions::dead_letter(&state.broker, &state.topology, kind, &query.id).await {
        Ok(Some(detail)) => pages::dead::one(&user, kind, &detail).into_response(),
        Ok(None) => pages::error_page(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            "It may have been replayed or purged.",
            Some(&user),
        ),
        Err(e) => pages::unavailable("The broker is unavailable", &e, &user),
    }
}

/// Replays one (`one`), the selected (`id`…) or every one listed (`scope=listed` with the filters).
pub async fn replay(State(state): State<AppState>, Operator(user): Operator, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let filter = DeadFilter::from_fields(&fields);
    let kind = filter.kind();
    let since = match filter.since() {
        Ok(since) => since,
        Err(why) => return pages::error_page(StatusCode::BAD_REQUEST, "Replay", &why, Some(&user)),
    };
    let ids: Vec<String> = match (field(&fields, "one"), field(&fields, "scope")) {
        (Some(one), _) => vec![one.to_string()],
        (None, Some("listed")) => {
            // The same letters the list showed with these filters, read again now.
            match actions::dead_letters(&state.broker, &state.topology, kind).await {
                Ok(letters) => letters
                    .unwrap_or_default()
                    .iter()
                    .filter(|l| filter.keeps(l, since))
                    .map(|l| l.id.clone())
                    .collect(),
                Err(e) => return pages::unavailable("The broker is unavailable", &e, &user),
            }
        }
        _ => field_values(&fields, "id").into_iter().map(str::to_string).collect(),
    };
    let target = format!("{} dead letters: {}", kind.as_str(), ids.join(", "));
    let record = async |outcome, detail: &str| {
        audit::record(
            &state.pool,
            audit::Entry {
                actor: &user.identity.user,
                role: user.identity.role.as_str(),
                address: user.address,
                action: "replay",
                target: &target,
                outcome,
                detail,
            },
        )
        .await;
    };
    if ids.is_empty() {
        record(Outcome::Refused, "nothing selected").await;
        return pages::error_page(StatusCode::BAD_REQUEST, "Replay", "Select at least one dead letter.", Some(&user));
    }
    match actions::replay(&state.broker, &state.topology, kind, ids, state.secrets.as_ref()).await {
        Ok(report) => {
            let outcome = match (&report.stopped, report.replayed()) {
                (Some(_), _) => Outcome::Failed,
                (None, 0) => Outcome::Refused,
                (None, _) => Outcome::Ok,
            };
            let refused: String = report
                .outcomes
                .iter()
                .filter_map(|o| match o {
                    ReplayOutcome::Refused { letter, reason } => Some(format!(" [{}: {reason}]", letter.id)),
                    ReplayOutcome::Replayed(_) => None,
                })
                .collect();
            let stopped = report.stopped.as_ref().map(|e| format!("; stopped: {e}")).unwrap_or_default();
            let detail = format!(
                "replayed {}; refused {}{refused}; not found {}{stopped}",
                report.replayed(),
                report.refused(),
                report.missing.len()
            );
            record(outcome, &detail).await;
            let status = if report.stopped.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            (status, pages::dead::replayed(&user, kind, &report)).into_response()
        }
        Err(e) => {
            record(Outcome::Failed, &format!("{e:#}")).await;
            pages::error_page(StatusCode::SERVICE_UNAVAILABLE, "Replay failed", &format!("{e:#}"), Some(&user))
        }
    }
}

/// Deletes every dead letter of the kind; the form must say it is meant (`confirm=yes`).
pub async fn purge(State(state): State<AppState>, Operator(user): Operator, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let kind = DeadFilter::from_fields(&fields).kind();
    let queue = kind.queue(&state.topology);
    let record = async |outcome, detail: &str| {
        audit::record(
            &state.pool,
            audit::Entry {
                actor: &user.identity.user,
                role: user.identity.role.as_str(),
                address: user.address,
                action: "purge",
                target: &queue,
                outcome,
                detail,
            },
        )
        .await;
    };
    if field(&fields, "confirm") != Some("yes") {
        record(Outcome::Refused, "not confirmed").await;
        return pages::error_page(StatusCode::BAD_REQUEST, "Purge", "Tick the box that says you mean it.", Some(&user));
    }
    match actions::purge(&state.broker, &state.topology, kind).await {
        Ok(purged) => {
            record(Outcome::Ok, &format!("purged {purged} message(s)")).await;
            pages::dead::purged(&user, kind, &queue, purged).into_response()
        }
        Err(e) => {
            record(Outcome::Failed, &format!("{e:#}")).await;
            pages::error_page(StatusCode::SERVICE_UNAVAILABLE, "Purge failed", &format!("{e:#}"), Some(&user))
        }
    }
}

/// The notifications the broker refused too often (shown; replayed with hookctl, see the page).
async fn outbox_set_aside(state: &AppState) -> anyhow::Result<Vec<DeadNotification>> {
    let client = state.pool.get().await?;
    actions::set_aside(&client).await
}
