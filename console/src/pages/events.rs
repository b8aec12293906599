//! Lists: events (filtered), one event, unverified events (with "verify now"), the audit trail.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::{csrf_field, event_status, layout, text_or_dash, time, Section};
use crate::actions::pretty_masked;
use crate::audit::Row;
use crate::auth::users::Role;
use crate::auth::{urlencode, LoggedIn};
use crate::pages::order::events_table;
use crate::read::lists::EventFilter;
use crate::read::order::Event;
use crate::read::EVENT_STATUSES;

pub fn list(user: &LoggedIn, filter: &EventFilter, events: &[Event], next: Option<i64>) -> Markup {
    let mut title = String::from("Events");
    if let Some(status) = filter.status {
        title = format!("Events: {status}");
    }
    let filters = |before: Option<i64>| {
        let mut query = before.map(|b| format!("before={b}")).unwrap_or_default();
        for (name, value) in [("status", filter.status), ("provider", filter.provider)] {
            if let Some(value) = value {
                query.push_str(&format!("&{name}={value}"));
                query = query.trim_start_matches('&').to_string();
            }
        }
        if let Some(minute) = &filter.minute {
            query.push_str(&format!("&minute={}", urlencode(&minute.to_rfc3339())));
            query = query.trim_start_matches('&').to_string();
        }
        format!("/events?{query}")
    };
    layout(
        &title,
        Section::None,
        Some(user),
        html! {
            form class="filters" method="get" action="/events" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "any" }
                    @for s in EVENT_STATUSES { option value=(s) selected[filter.status == Some(s)] { (s) } }
                }
                label for="provider" { "Provider" }
                select id="provider" name="provider" {
                    option value="" { "any" }
                    @for p in ["stripe", "toss"] { option value=(p) selected[filter.provider == Some(p)] { (p) } }
                }
                @if let Some(minute) = &filter.minute {
                    input type="hidden" name="minute" value=(minute.to_rfc3339());
                    span class="muted" { "processed in the minute of " (time(minute)) }
                }
                button type="submit" { "Filter" }
            }
            @if events.is_empty() {
                p class="notice" { "No event matches." }
            } @else {
                (events_table(events, "Newest first"))
            }
            nav class="pager" aria-label="Pages" {
                @if filter.before.is_some() { a href=(filters(None)) { "Newest" } }
                @if let Some(next) = next { a href=(filters(Some(next))) rel="next" { "Older events" } }
            }
        },
    )
}

pub fn one(user: &LoggedIn, event: &Event) -> Markup {
    layout(
        &format!("Event {}", event.event_key),
        Section::None,
        Some(user),
        html! {
            dl class="facts" {
                div { dt { "Order" } dd { @match &event.order_id {
                    Some(order) => a href={ "/orders/" (urlencode(order)) } { (order) },
                    None => span class="muted" { "none named" },
                } } }
                div { dt { "Status" } dd { (event_status(&event.status)) } }
                div { dt { "Provider" } dd { (event.provider) } }
                div { dt { "Type" } dd { code { (event.event_type) } } }
                div { dt { "Verification" } dd { (text_or_dash(event.verification.as_deref())) } }
                div { dt { "Attempts" } dd { (event.attempts) } }
                div { dt { "Duplicates" } dd { (event.duplicates) } }
                div { dt { "Received" } dd { (time(&event.received_at)) } }
                div { dt { "Processed" } dd { @if let Some(t) = &event.processed_at { (time(t)) } @else { span class="muted" { "not yet" } } } }
                div { dt { "Request id" } dd { (text_or_dash(event.request_id.as_deref())) } }
                div { dt { "Last error" } dd { (text_or_dash(event.last_error.as_deref())) } }
                div { dt { "Detail" } dd { (text_or_dash(event.detail.as_deref())) } }
            }
            h2 { "Payload" }
            pre { (pretty_masked(event.payload.as_bytes())) }
        },
    )
}

pub fn unverified(
    user: &LoggedIn,
    events: &[Event],
    next: Option<(DateTime<Utc>, i64)>,
    recheck: Result<(), String>,
    message: Option<&str>,
) -> Markup {
    let operator = user.identity.role >= Role::Operator;
    let can_recheck = operator && recheck.is_ok();
    layout(
        "Unverified events",
        Section::Unverified,
        Some(user),
        html! {
            @if let Some(message) = message { p class="notice" role="status" { (message) } }
            p { "Unsigned Toss payment events that nothing could verify. They changed nothing. Once the workers can fetch payments back from Toss (TOSS_SECRET_KEY), “verify now” sends them through a worker again." }
            @if let Err(why) = &recheck { p class="muted" { "Verify now is off: " (why) } }
            @if events.is_empty() {
                p class="notice" { "No unverified event." }
            } @else {
                form method="post" action="/unverified/recheck" {
                    @if can_recheck { (csrf_field(user)) }
                    div class="table-wrap" { table {
                        caption { "Newest first" }
                        thead { tr {
                            @if can_recheck { th scope="col" { "Select" } }
                            th scope="col" { "Received" } th scope="col" { "Order" } th scope="col" { "Type" }
                            th scope="col" { "Event" } th scope="col" class="num" { "Attempts" } th scope="col" { "Detail" }
                        } }
                        tbody {
                            @for (i, e) in events.iter().enumerate() {
                                tr {
                                    @if can_recheck {
                                        td {
                                            input type="checkbox" name="key" value=(e.event_key) id={ "u" (i) };
                                            label for={ "u" (i) } class="visually-hidden" { "Select " (e.event_key) }
                                        }
                                    }
                                    td { (time(&e.received_at)) }
                                    td { @match &e.order_id { Some(o) => a href={ "/orders/" (urlencode(o)) } { (o) }, None => span class="muted" { "–" } } }
                                    td { code { (e.event_type) } }
                                    td { a href={ "/events/" (e.id) } { code { (e.event_key) } } }
                                    td class="num" { (e.attempts) }
                                    td class="wrap" { (text_or_dash(e.detail.as_deref())) }
                                }
                            }
                        }
                    } }
                    @if can_recheck {
                        p class="actions" {
                            button type="submit" name="scope" value="selected" { "Verify selected now" }
                            button type="submit" name="scope" value="all" { "Verify all now" }
                        }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                @if let Some((at, id)) = next {
                    a rel="next" href={ "/unverified?before_at=" (urlencode(&at.to_rfc3339())) "&before_id=" (id) } { "Older events" }
                }
            }
        },
    )
}

pub fn audit(user: &LoggedIn, rows: &[Row], next: Option<i64>) -> Markup {
    layout(
        "Audit trail",
        Section::Audit,
        Some(user),
        html! {
            p { "Every login, logout and action in this console, and every refusal of one." }
            div class="table-wrap" { table {
                caption { "Newest first" }
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Role" } th scope="col" { "From" }
                    th scope="col" { "Action" } th scope="col" { "On" } th scope="col" { "Result" } th scope="col" { "Detail" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (time(&r.at)) }
                            td { (r.actor) }
                            td { (r.role) }
                            td { (r.address) }
                            td { (r.action) }
                            td class="wrap" { (text_or_dash(Some(&r.target))) }
                            td { span class={ "status result-" (r.result) } { (r.result) } }
                            td class="wrap" { (text_or_dash(Some(&r.detail))) }
                        }
                    }
                }
            } }
            nav class="pager" aria-label="Pages" {
                @if let Some(next) = next { a rel="next" href={ "/audit?before=" (next) } { "Older entries" } }
            }
        },
    )
}
