//! The overview: queue depths, what needs attention, the workers, events per minute.

use maud::{html, Markup};

use super::{layout, time, Section};
use crate::auth::{urlencode, LoggedIn};
use crate::read::overview::PER_MINUTE_STATUSES;
use crate::routes::overview::Overview;
use crate::workers::WorkerState;

pub fn page(user: &LoggedIn, overview: &Overview, worker_addrs: &[String]) -> Markup {
    layout(
        "Overview",
        Section::Overview,
        Some(user),
        html! {
            p class="muted" { "As of " (time(&overview.taken_at)) " (kept for 5 s)." }
            div class="grid" {
                section aria-labelledby="attention" {
                    h2 id="attention" { "Needs attention" }
                    @match &overview.counts {
                        Ok(counts) => {
                            dl class="numbers" {
                                div { dt { "Dead events" } dd { a href="/events?status=dead" { (counts.dead) } } }
                                div { dt { "Unverified events" } dd { a href="/unverified" { (counts.unverified) } } }
                                div { dt { "Events waiting for a retry" } dd { a href="/events?status=retrying" { (counts.retrying) } } }
                                div { dt { "Notifications set aside" } dd { a href="/dead?kind=notifications" { (counts.outbox_set_aside) } } }
                            }
                        }
                        Err(error) => p class="error" { "Database unavailable: " (error) },
                    }
                }
                section aria-labelledby="workers" {
                    h2 id="workers" { "Workers" }
                    @if worker_addrs.is_empty() {
                        p class="muted" { "No worker addresses configured (CONSOLE_WORKER_ADDRS)." }
                    } @else {
                        ul class="workers" {
                            @for worker in &overview.workers {
                                li {
                                    code { (worker.addr) } " "
                                    @match &worker.state {
                                        WorkerState::Ready => span class="status st-applied" { "ready" },
                                        WorkerState::Halted(reason) => { span class="status st-dead" { "HALTED" } " " (reason) },
                                        WorkerState::NotReady(why) => { span class="status st-retrying" { "not ready" } " " (why) },
                                        WorkerState::Unreachable(why) => { span class="status st-dead" { "unreachable" } " " (why) },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="queues" {
                h2 id="queues" { "Queues" }
                @match &overview.queues {
                    Ok(queues) => {
                        div class="table-wrap" {
                            table {
                                caption { "Ready messages per queue (from the broker)" }
                                thead { tr { th scope="col" { "Queue" } th scope="col" class="num" { "Messages" } th scope="col" class="num" { "Consumers" } } }
                                tbody {
                                    @for queue in queues {
                                        tr {
                                            th scope="row" { code { (queue.name) } }
                                            td class="num" {
                                                @match queue.messages {
                                                    Some(n) => a href=(queue_link(&queue.name)) { (n) },
                                                    None => span class="muted" { "absent" },
                                                }
                                            }
                                            td class="num" { @if let Some(n) = queue.consumers { (n) } @else { span class="muted" { "–" } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => p class="error" { "Broker unavailable: " (error) },
                }
            }
            section aria-labelledby="per-minute" {
                h2 id="per-minute" { "Events per minute, last hour" }
                @match &overview.counts {
                    Ok(counts) if counts.minutes.is_empty() => p class="muted" { "No event reached an outcome in the last hour." },
                    Ok(counts) => {
                        div class="table-wrap" {
                            table {
                                caption { "By the minute the outcome was reached, newest first" }
                                thead { tr {
                                    th scope="col" { "Minute" }
                                    @for status in PER_MINUTE_STATUSES { th scope="col" class="num" { (status) } }
                                } }
                                tbody {
                                    @for minute in counts.minutes.iter().rev() {
                                        tr {
                                            th scope="row" { (minute.start.format("%H:%M")) }
                                            @for status in PER_MINUTE_STATUSES {
                                                td class="num" {
                                                    @match minute.counts.iter().find(|(s, _)| s == status) {
                                                        Some((_, n)) => a href={ "/events?status=" (status) "&minute=" (urlencode(&minute.start.to_rfc3339())) } { (n) },
                                                        None => span class="muted" { "0" },
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Err(_) => p class="error" { "Database unavailable." },
                }
            }
            section aria-labelledby="reconciliation" {
                h2 id="reconciliation" { "Reconciliation" }
                @match &overview.counts {
                    Ok(counts) if counts.reconciliation.is_empty() => p class="muted" {
                        "No reconciliation has run: the workers reconcile Stripe with STRIPE_API_KEY and Toss with TOSS_SECRET_KEY (docs/operations.md, Reconciliation)."
                    },
                    Ok(counts) => {
                        div class="table-wrap" {
                            table {
                                caption { "Webhooks that never came, looked up in the providers' APIs" }
                                thead { tr {
                                    th scope="col" { "Provider" }
                                    th scope="col" { "Last completed run" }
                                    th scope="col" { "Caught up to (Stripe)" }
                                    th scope="col" { "Running now on" }
                                } }
                                tbody {
                                    @for row in &counts.reconciliation {
                                        tr {
                                            th scope="row" { (row.provider) }
                                            td { @if let Some(at) = &row.last_success_at { (time(at)) } @else { span class="muted" { "never" } } }
                                            td { @if let Some(at) = &row.watermark { (time(at)) } @else { span class="muted" { "–" } } }
                                            td { @if let Some(holder) = &row.running_on { code { (holder) } } @else { span class="muted" { "idle" } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Err(_) => p class="error" { "Database unavailable." },
                }
            }
        },
    )
}

/// The list behind a queue's number.
fn queue_link(queue: &str) -> &'static str {
    if queue.ends_with(".notify.dead") {
        "/dead?kind=notifications"
    } else if queue.ends_with(".dead") {
        "/dead?kind=events"
    } else if queue.contains(".retry.") {
        "/events?status=retrying"
    } else {
        "/events"
    }
}
