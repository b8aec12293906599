//! A live connection, its publisher channels, and the clock that tells whether confirms flow.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};

/// A live connection with its publisher channels.
pub struct Link {
    /// Distinguishes this link from earlier ones, so a failure reported for an old link never
    /// tears down a new one.
    pub(super) generation: u64,
    /// Index of the node (in `AMQP_URL`) this link is connected to.
    pub(super) node: usize,
    pub(super) connection: Connection,
    /// Confirm-mode channels shared round-robin. A slot is empty while the channel it held,
    /// retired after a nack, is being replaced. Behind an `Arc`: a lapin `Channel` is a
    /// dozen reference-counted parts, cloned per publish otherwise.
    publishers: Box<[Mutex<Option<Arc<Channel>>>]>,
    next: AtomicUsize,
    pub(super) confirms: Arc<ConfirmClock>,
}

impl Link {
    pub(super) fn new(generation: u64, node: usize, connection: Connection, publishers: Vec<Channel>) -> Self {
        Self {
            generation,
            node,
            connection,
            publishers: publishers.into_iter().map(|c| Mutex::new(Some(Arc::new(c)))).collect(),
            next: AtomicUsize::new(0),
            confirms: Arc::new(ConfirmClock::new()),
        }
    }

    /// The connection, for consumers that open channels of their own.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The next publisher channel in turn, skipping slots being refilled.
    pub(super) fn publisher(&self) -> Option<(usize, Arc<Channel>)> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.publishers.len()).find_map(|offset| {
            let slot = (start + offset) % self.publishers.len();
            let channel = self.publishers[slot].lock().expect("publisher slot lock").clone();
            channel.filter(|c| c.status().connected()).map(|c| (slot, c))
        })
    }

    /// Empties `slot` if it still holds `channel`; true if this call did it.
    pub(super) fn take_publisher(&self, slot: usize, channel: &Channel) -> bool {
        let mut held = self.publishers[slot].lock().expect("publisher slot lock");
        if held.as_ref().is_some_and(|c| c.id() == channel.id()) {
            *held = None;
            true
        } else {
            false
        }
    }

    pub(super) fn put_publisher(&self, slot: usize, channel: Channel) {
        *self.publishers[slot].lock().expect("publisher slot lock") = Some(Arc::new(channel));
    }

    pub(super) fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// The broker said it blocks publishers (a memory or disk alarm).
    pub(super) fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }
}

/// Opens a channel in confirm mode.
pub(super) async fn open_publisher(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Whether confirms flow on a link: how many are awaited and when the last one arrived.
/// A confirm awaited longer than the publish timeout with none arriving since means the
/// broker or the path to it has stalled, even if the connection looks open.
pub(super) struct ConfirmClock {
    base: Instant,
    outstanding: AtomicUsize,
    /// Microseconds after `base` of the last confirm, or of the first publish after none was
    /// outstanding.
    progress_us: AtomicU64,
}

impl ConfirmClock {
    fn new() -> Self {
        Self { base: Instant::now(), outstanding: AtomicUsize::new(0), progress_us: AtomicU64::new(0) }
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// A publish starts waiting for its confirm; the guard marks its end (whatever the outcome).
    pub(super) fn start(self: &Arc<Self>) -> AwaitedConfirm {
        if self.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.progress_us.store(self.now_us(), Ordering::Release);
        }
        AwaitedConfirm { clock: self.clone() }
    }

    /// How long confirms have been awaited with none arriving; `None` when none is awaited.
    pub(super) fn stalled_for(&self) -> Option<Duration> {
        if self.outstanding.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.now_us().saturating_sub(self.progress_us.load(Ordering::Acquire));
        Some(Duration::from_micros(since))
    }
}

/// One awaited confirm; dropped when it arrived (or its channel or connection failed).
pub(super) struct AwaitedConfirm {
    clock: Arc<ConfirmClock>,
}

impl Drop for AwaitedConfirm {
    fn drop(&mut self) {
        self.clock.progress_us.store(self.clock.now_us(), Ordering::Release);
        self.clock.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_stalls_only_while_confirms_are_awaited() {
        let clock = Arc::new(ConfirmClock::new());
        assert_eq!(clock.stalled_for(), None);
        let first = clock.start();
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.start();
        assert!(clock.stalled_for().unwrap() >= Duration::from_millis(20), "the second publish does not reset it");
        drop(first);
        assert!(clock.stalled_for().unwrap() < Duration::from_millis(20), "a confirm is progress");
        drop(second);
        assert_eq!(clock.stalled_for(), None);
    }
}
