//! Dead letters: the list (filters, replay one or a selection or every one listed, purge),
//! one letter, and what a replay or a purge did.

use maud::{html, Markup};

use hookctl::dead_letters::{DeadLetter, DeadLetterDetail, ReplayOutcome, ReplayReport};
use hookctl::outbox::DeadNotification;

use super::{age, csrf_field, dash, layout, text_or_dash, time, Section};
use crate::actions::{Kind, PEEK_LIMIT};
use crate::app::AppState;
use crate::auth::users::Role;
use crate::auth::{urlencode, LoggedIn};
use crate::routes::dead::DeadFilter;

pub fn list(
    user: &LoggedIn,
    state: &AppState,
    filter: &DeadFilter,
    letters: Option<&[&DeadLetter]>,
    total: usize,
    outbox: &[DeadNotification],
) -> Markup {
    let kind = filter.kind();
    let operator = user.identity.role >= Role::Operator;
    let queue = kind.queue(&state.topology);
    let replay_off = kind == Kind::Events && state.secrets.is_none();
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    layout(
        "Dead letters",
        Section::Dead,
        Some(user),
        html! {
            nav class="tabs" aria-label="Kind" {
                @for (k, label) in [(Kind::Events, "Events"), (Kind::Notifications, "Notifications")] {
                    @if k == kind { a href={ "/dead?kind=" (k.as_str()) } aria-current="page" { (label) } }
                    @else { a href={ "/dead?kind=" (k.as_str()) } { (label) } }
                }
            }
            form class="filters" method="get" action="/dead" {
                input type="hidden" name="kind" value=(kind.as_str());
                label for="provider" { "Provider" }
                select id="provider" name="provider" {
                    option value="" { "any" }
                    @for p in ["stripe", "toss"] { option value=(p) selected[filter.provider.as_deref() == Some(p)] { (p) } }
                }
                label for="reason" { "Reason contains" }
                input id="reason" name="reason" type="text" value=(value(&filter.reason)) maxlength="200";
                label for="since" { "Parked within" }
                input id="since" name="since" type="text" value=(value(&filter.since)) placeholder="e.g. 2h" maxlength="20" size="6";
                button type="submit" { "Filter" }
            }
            @match letters {
                None => p class="notice" { "No queue " code { (queue) } " yet: " (kind.why_missing()) "." },
                Some([]) => p class="notice" { "No dead letter in " code { (queue) } @if total > 0 { " matches the filters (" (total) " in the queue)" } "." },
                Some(letters) => {
                    @if total >= PEEK_LIMIT { p class="notice" { "Only the first " (PEEK_LIMIT) " messages of the queue are read." } }
                    @if replay_off { p class="error" { "Replay is off: the console has no STRIPE_WEBHOOK_SECRET to check events with." } }
                    form method="post" action="/dead/replay" {
                        @if operator { (csrf_field(user)) }
                        input type="hidden" name="kind" value=(kind.as_str());
                        div class="table-wrap" { table {
                            caption { (letters.len()) " of " (total) " in " code { (queue) } ", oldest first" }
                            thead { tr {
                                @if operator && !replay_off { th scope="col" { "Select" } }
                                th scope="col" { "Id" } th scope="col" { "Provider" } th scope="col" { "Type" }
                                th scope="col" { "Reason" } th scope="col" { "Age" } th scope="col" class="num" { "Attempts" }
                                @if operator && !replay_off { th scope="col" { "Action" } }
                            } }
                            tbody {
                                @for (i, l) in letters.iter().enumerate() {
                                    tr {
                                        @if operator && !replay_off {
                                            td {
                                                input type="checkbox" name="id" value=(l.id) id={ "d" (i) };
                                                label for={ "d" (i) } class="visually-hidden" { "Select " (l.id) }
                                            }
                                        }
                                        td { a href={ "/dead/show?kind=" (kind.as_str()) "&id=" (urlencode(&l.id)) } { code { (l.id) } } }
                                        td { (text_or_dash(Some(&l.provider))) }
                                        td { code { (l.event_type) } }
                                        td class="wrap" { (l.reason) }
                                        td { @if let Some(t) = &l.dead_at { span title=(t.to_rfc3339()) { (age(t)) } } @else { (dash()) } }
                                        td class="num" { (l.attempts) }
                                        @if operator && !replay_off {
                                            td { button type="submit" name="one" value=(l.id) { "Replay" span class="visually-hidden" { " " (l.id) } } }
                                        }
                                    }
                                }
                            }
                        } }
                        @if operator && !replay_off {
                            input type="hidden" name="provider" value=(value(&filter.provider));
                            input type="hidden" name="reason" value=(value(&filter.reason));
                            input type="hidden" name="since" value=(value(&filter.since));
                            p class="actions" {
                                button type="submit" { "Replay selected" }
                                button type="submit" name="scope" value="listed" { "Replay every one listed" }
                            }
                            p class="muted" { "Each event is checked as a worker checks it (its signature, key and type) before it goes back to work; one that does not hold stays dead. An event applied meanwhile is recognised as a duplicate." }
                        }
                    }
                    @if operator {
                        form class="danger" method="post" action="/dead/purge" {
                            (csrf_field(user))
                            input type="hidden" name="kind" value=(kind.as_str());
                            p {
                                input type="checkbox" id="confirm" name="confirm" value="yes" required;
                                label for="confirm" { " Delete every message in " code { (queue) } " for good" }
                            }
                            p { button type="submit" class="danger" { "Purge" } }
                        }
                    }
                }
            }
            @if kind == Kind::Notifications {
                section aria-labelledby="outbox" {
                    h2 id="outbox" { "Notifications the broker refused (outbox)" }
                    @if outbox.is_empty() {
                        p class="muted" { "None set aside." }
                    } @else {
                        p { "These wait in Postgres, not in a queue; the console only reads the outbox. Hand them back to the relay with " code { "hookctl dead replay <id> --notifications" } "." }
                        div class="table-wrap" { table {
                            caption { "Set aside after too many refusals" }
                            thead { tr { th scope="col" { "Notification" } th scope="col" { "Type" } th scope="col" class="num" { "Attempts" } th scope="col" { "Set aside" } th scope="col" { "Last error" } } }
                            tbody { @for r in outbox { tr {
                                td { code { (r.id) } } td { code { (r.kind) } } td class="num" { (r.attempts) }
                                td { (time(&r.dead_at)) } td class="wrap" { (text_or_dash(Some(&r.last_error))) }
                            } } }
                        } }
                    }
                }
            }
        },
    )
}

pub fn one(user: &LoggedIn, kind: Kind, detail: &DeadLetterDetail) -> Markup {
    let letter = &detail.letter;
    layout(
        &format!("Dead letter {}", letter.id),
        Section::Dead,
        Some(user),
        html! {
            p { a href={ "/dead?kind=" (kind.as_str()) } { "Back to the dead letters" } }
            dl class="facts" {
                div { dt { "Reason" } dd { (letter.reason) } }
                div { dt { "Provider" } dd { (text_or_dash(Some(&letter.provider))) } }
                div { dt { "Type" } dd { code { (letter.event_type) } } }
                div { dt { "Attempts" } dd { (letter.attempts) } }
                div { dt { "Parked" } dd { @if let Some(t) = &letter.dead_at { (time(t)) " (" (age(t)) " ago)" } @else { (dash()) } } }
            }
            h2 { "Headers" }
            div class="table-wrap" { table {
                caption { "AMQP headers as the message carries them" }
                thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
                tbody { @for (k, v) in &detail.headers { tr { th scope="row" { code { (k) } } td class="wrap" { (v) } } } }
            } }
            h2 { "Body" }
            p class="muted" { "Any " code { "secret" } " member is masked." }
            pre { (detail.body) }
        },
    )
}

/// What a replay did, message by message, and where it stopped if it did.
pub fn replayed(user: &LoggedIn, kind: Kind, report: &ReplayReport) -> Markup {
    let replayed = report.outcomes.iter().filter_map(|o| match o {
        ReplayOutcome::Replayed(l) => Some(l),
        ReplayOutcome::Refused { .. } => None,
    });
    let refused = report.outcomes.iter().filter_map(|o| match o {
        ReplayOutcome::Refused { letter, reason } => Some((letter, reason)),
        ReplayOutcome::Replayed(_) => None,
    });
    layout(
        "Replay",
        Section::Dead,
        Some(user),
        html! {
            p role="status" class="notice" { (report.replayed()) " message(s) moved back to work." }
            @if let Some(error) = &report.stopped {
                p role="alert" class="error" { "The replay stopped: " (error) ". The messages after it stay dead." }
            }
            @if report.replayed() > 0 {
                ul { @for l in replayed { li { "Replayed " code { (l.id) } " (" (l.provider) " " (l.event_type) ")" } } }
            }
            @if report.refused() > 0 {
                h2 { "Left dead" }
                ul { @for (l, why) in refused { li { code { (l.id) } ": " (why) } } }
            }
            @if !report.missing.is_empty() {
                h2 { "Not found" }
                p { "No longer in the queue (replayed or purged meanwhile): " @for id in &report.missing { code { (id) } " " } }
            }
            p { a href={ "/dead?kind=" (kind.as_str()) } { "Back to the dead letters" } }
        },
    )
}

pub fn purged(user: &LoggedIn, kind: Kind, queue: &str, purged: u32) -> Markup {
    layout(
        "Purge",
        Section::Dead,
        Some(user),
        html! {
            p role="status" class="notice" { "Purged " (purged) " message(s) from " code { (queue) } "." }
            p { a href={ "/dead?kind=" (kind.as_str()) } { "Back to the dead letters" } }
        },
    )
}
