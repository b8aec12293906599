//! Halting when the fault is ours, not the events'.
//!
//! When Postgres rejects the worker's own SQL (an undefined table or column after a bad
//! migration, missing privileges, a wrong database: [`crate::store::db::DbErrorClass::Broken`]),
//! every event would fail the same way. Retrying them on the delay schedule would walk each
//! one through every tier for hours and finally into the dead letters, blaming the events. So
//! the worker halts instead: it logs the cause once, takes no new batches, turns `/readyz` 503
//! (and `worker_halted` 1), keeps the batch it holds unacknowledged (nothing returns to the
//! queue, so no delivery limit is spent) and tries that batch again every [`PROBE_EVERY`]. The
//! first success resumes work, without a restart, once a person fixed the cause. Two things
//! return the batch anyway, each spending one delivery: stopping the worker, and a halt that
//! outlasts the broker's `consumer_timeout` (30 minutes by default), after which the broker
//! closes the channel and delivers the batch again (the held batch, applied later, then finds
//! its copies duplicates).

use std::time::Duration;

use tokio::sync::watch;

/// How often a halted worker tries its batch again.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The halt state of one worker.
pub struct Halt {
    reason: watch::Sender<Option<String>>,
}

impl Default for Halt {
    fn default() -> Self {
        Self { reason: watch::channel(None).0 }
    }
}

impl Halt {
    /// Halts with `reason`; logs only when this starts a halt.
    pub fn trip(&self, reason: &str) {
        let started = self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason.to_string());
            true
        });
        if started {
            tracing::error!(
                %reason,
                retry_every = ?PROBE_EVERY,
                "HALTED: the database rejects the worker's own SQL (schema, privileges or database wrong); \
                 no event is retried or dead-lettered for it, deliveries stay queued until this is fixed"
            );
        }
    }

    /// Resumes after a halt; logs only when one was in force.
    pub fn clear(&self) {
        if self.reason.send_replace(None).is_some() {
            tracing::info!("resumed: the database accepts the worker's SQL again");
        }
    }

    /// The reason of the halt in force.
    pub fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Returns once no halt is in force.
    pub async fn cleared(&self) {
        let mut rx = self.reason.subscribe();
        let _ = rx.wait_for(Option::is_none).await;
    }
}
