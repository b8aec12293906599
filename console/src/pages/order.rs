//! The order page (payment, events in time order with their payloads, notifications) and the
//! search results.

use maud::{html, Markup};

use super::{dash, event_status, layout, payment_status, text_or_dash, time, Section};
use crate::actions::pretty_masked;
use crate::auth::{urlencode, LoggedIn};
use crate::read::order::{Delivery, Event, OrderStory};
use crate::read::search::Found;

pub fn page(user: &LoggedIn, story: &OrderStory) -> Markup {
    layout(
        &format!("Order {}", story.order_id),
        Section::Search,
        Some(user),
        html! {
            section aria-labelledby="payment" {
                h2 id="payment" { "Payment" }
                @match &story.payment {
                    None => p class="notice" { "No payment row has this order id: the app has not created it yet. Its events wait in the retry tiers until it exists." },
                    Some(p) => dl class="facts" {
                        div { dt { "Status" } dd { (payment_status(&p.status)) } }
                        div { dt { "Provider" } dd { (text_or_dash(p.provider.as_deref())) } }
                        div { dt { "Amount" } dd { (text_or_dash(p.amount.as_deref())) " " (p.currency.as_deref().unwrap_or("")) } }
                        div { dt { "Payment key" } dd { (text_or_dash(p.provider_payment_id.as_deref())) } }
                        div { dt { "Paid at" } dd { @if let Some(t) = &p.paid_at { (time(t)) } @else { (dash()) } } }
                        div { dt { "Last event applied (provider's date)" } dd { @if let Some(t) = &p.last_event_at { (time(t)) } @else { (dash()) } } }
                        div { dt { "Created" } dd { (time(&p.created_at)) } }
                        div { dt { "Updated" } dd { (time(&p.updated_at)) } }
                        div { dt { "Payment id" } dd { code { (p.id) } } }
                        div { dt { "Booking id" } dd { @if let Some(b) = &p.booking_id { code { (b) } } @else { (dash()) } } }
                    },
                }
            }
            section aria-labelledby="events" {
                h2 id="events" { "Events, in the order received" }
                @if story.events.is_empty() {
                    p class="notice" { "No webhook for this order has reached a worker." }
                } @else {
                    (events_table(&story.events, "Every webhook received for this order"))
                    @if story.more_events { p class="muted" { "Only the first " (story.events.len()) " events are shown." } }
                    h3 { "Payloads" }
                    p class="muted" { "As stored (Toss bodies without their secret); any " code { "secret" } " member is masked." }
                    @for event in &story.events {
                        details class="payload" {
                            summary { (event.event_type) " · " code { (event.event_key) } }
                            pre { (pretty_masked(event.payload.as_bytes())) }
                        }
                    }
                }
            }
            section aria-labelledby="notifications" {
                h2 id="notifications" { "Notifications" }
                @if story.notifications.is_empty() {
                    p class="muted" { "None: no status change of this payment notified anyone yet." }
                } @else {
                    div class="table-wrap" { table {
                        caption { "Notifications this payment caused, and where their message is" }
                        thead { tr {
                            th scope="col" { "Created" } th scope="col" { "Type" } th scope="col" { "Message" }
                            th scope="col" { "Delivery" } th scope="col" { "Trace id" }
                        } }
                        tbody {
                            @for n in &story.notifications {
                                tr {
                                    td { (time(&n.created_at)) }
                                    td { code { (n.kind) } }
                                    td { strong { (n.title) } br; (n.message) }
                                    @match &n.delivery {
                                        Delivery::Published => {
                                            td { span class="status st-applied" { "published" } " (confirmed by the broker; no outbox row)" }
                                            td { (dash()) }
                                        }
                                        Delivery::Pending { attempts, last_error, traceparent } => {
                                            td { span class="status st-retrying" { "in the outbox" } " attempts " (attempts) @if let Some(e) = last_error { br; (e) } }
                                            td { (text_or_dash(traceparent.as_deref().and_then(trace_id))) }
                                        }
                                        Delivery::SetAside { attempts, last_error, dead_at } => {
                                            td { span class="status st-dead" { "set aside" } " after " (attempts) " refusals, " (time(dead_at)) @if let Some(e) = last_error { br; (e) } }
                                            td { (dash()) }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        },
    )
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// Events as a table (the order page, the event lists).
pub fn events_table(events: &[Event], caption: &str) -> Markup {
    html! {
        div class="table-wrap" { table class="events" {
            caption { (caption) }
            thead { tr {
                th scope="col" { "Received" } th scope="col" { "Provider" } th scope="col" { "Type" }
                th scope="col" { "Event" } th scope="col" { "Status" } th scope="col" { "Verification" }
                th scope="col" class="num" { "Attempts" } th scope="col" { "Last error / detail" } th scope="col" { "Request id" }
            } }
            tbody {
                @for e in events {
                    tr {
                        td { (time(&e.received_at)) }
                        td { (e.provider) }
                        td { code { (e.event_type) } }
                        td { a href={ "/events/" (e.id) } { code { (e.event_key) } } }
                        td { (event_status(&e.status)) @if e.duplicates > 0 { br; span class="muted" { (e.duplicates) " duplicate(s)" } } }
                        td { (text_or_dash(e.verification.as_deref())) }
                        td class="num" { (e.attempts) }
                        td class="wrap" {
                            @if let Some(error) = &e.last_error { (error) @if e.detail.is_some() { br; } }
                            @if let Some(detail) = &e.detail { span class="muted" { (detail) } }
                            @if e.last_error.is_none() && e.detail.is_none() { (dash()) }
                        }
                        td { (text_or_dash(e.request_id.as_deref())) }
                    }
                }
            }
        } }
    }
}

pub fn search_results(user: &LoggedIn, query: &str, found: &Found) -> Markup {
    layout(
        "Search",
        Section::Search,
        Some(user),
        html! {
            @if found.orders.is_empty() && found.orphan_events.is_empty() {
                p class="notice" { "Nothing has the id " code { (query) } ": no order id, payment key, event id or request id." }
            } @else {
                p { "Several matches for " code { (query) } ":" }
                ul {
                    @for (order, how) in &found.orders {
                        li { a href={ "/orders/" (urlencode(order)) } { "Order " (order) } " (" (how) ")" }
                    }
                    @for (id, key, how) in &found.orphan_events {
                        li { a href={ "/events/" (id) } { "Event " (key) } " (" (how) ", no order id)" }
                    }
                }
            }
        },
    )
}
