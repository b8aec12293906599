//! What the pages read from Postgres, one query per question, each through an index that
//! exists for it (listed beside each query): the console must stay fast with millions of
//! events and must not weigh on the database the workers write to.

pub mod lists;
pub mod order;
pub mod overview;
pub mod search;

/// The statuses an inbox row can have (`webhook_events.status`), in the order pages show them.
pub const EVENT_STATUSES: [&str; 6] = ["applied", "ignored", "unverified", "retrying", "dead", "processing"];

/// `status` if it is one of [`EVENT_STATUSES`] (so it can be written into SQL as a literal).
pub fn known_status(status: &str) -> Option<&'static str> {
    EVENT_STATUSES.iter().copied().find(|s| *s == status)
}
