//! A live connection, its publisher channels, and the clock that tells whether confirms flow.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};

/// Which channels a publish goes out on. A message the broker cannot route comes back
/// (`basic.return`) without a delivery tag, and lapin hands it to whichever confirm on that
/// channel it resolves next, in no set order when one ack covers several: on a shared
/// channel, one publish can be told another's outcome. Broadcasts, unroutable whenever
/// nobody subscribes, therefore never share a channel with publishes that must be stored,
/// which are unroutable only when a queue is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PublishKind {
    Stored,
    Broadcast,
}

/// A live connection with its publisher channels.
pub struct Link {
    /// Distinguishes this link from earlier ones, so a failure reported for an old link never
    /// tears down a new one.
    pub(super) generation: u64,
    /// Index of the node (in `AMQP_URL`) this link is connected to.
    pub(super) node: usize,
    pub(super) connection: Connection,
    /// Confirm-mode channels: all but the last shared round-robin by the publishes that must
    /// be stored, the last one by broadcasts ([`super::Broker::publish_broadcast`]). A slot
    /// is empty while the channel it held, retired after a nack, is being replaced. Behind an
    /// `Arc`: a lapin `Channel` is a dozen reference-counted parts, cloned per publish
    /// otherwise.
    publishers: Box<[Mutex<Option<Arc<Channel>>>]>,
    next: AtomicUsize,
    pub(super) confirms: Arc<ConfirmClock>,
}

impl Link {
    /// `publishers`: at least two channels, the last one for broadcasts.
    pub(super) fn new(generation: u64, node: usize, connection: Connection, publishers: Vec<Channel>) -> Self {
        assert!(publishers.len() >= 2, "a channel for stored publishes and one for broadcasts");
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

    /// The next publisher channel in turn for `kind`, skipping slots being refilled.
    pub(super) fn publisher(&self, kind: PublishKind) -> Option<(usize, Arc<Channel>)> {
        let shared = self.publishers.len() - 1;
        let in_slot = |slot: usize| {
            let channel = self.publishers[slot].lock().expect("publisher slot lock").clone();
            channel.filter(|c| c.status().connected()).map(|c| (slot, c))
        };
        match kind {
            PublishKind::Stored => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..shared).find_map(|offset| in_slot((start + offset) % shared))
            }
            PublishKind::Broadcast => in_slot(shared),
        }
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

/// Whether confirms flow on a link: how many are awaited and when the last one arrived in
/// time. A confirm awaited longer than the publish timeout with none arriving in time since
/// means the broker or the path to it has stalled, even if the connection looks open. A
/// confirm that comes only after its request gave up is no progress: a link on which every
/// confirm comes too late (a channel still sending to a queue leader lost in a partition,
/// resent from there long after) fails every request, just as a silent one does.
pub(super) struct ConfirmClock<C: Clock = Monotonic> {
    time: C,
    outstanding: AtomicUsize,
    /// Microseconds (of `time`) of the last confirm in time, or of the first publish after
    /// none was outstanding.
    progress_us: AtomicU64,
}

/// Where a [`ConfirmClock`] reads the time: the monotonic clock, or in unit tests a clock the
/// test moves by hand, so that what the clock says does not depend on how busy the machine is.
pub(super) trait Clock {
    /// Microseconds since an arbitrary, fixed start.
    fn now_us(&self) -> u64;
}

/// The process's monotonic clock, counted from when the link was made.
pub(super) struct Monotonic(Instant);

impl Clock for Monotonic {
    fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

impl ConfirmClock {
    fn new() -> Self {
        Self::with_time(Monotonic(Instant::now()))
    }
}

impl<C: Clock> ConfirmClock<C> {
    fn with_time(time: C) -> Self {
        Self { time, outstanding: AtomicUsize::new(0), progress_us: AtomicU64::new(0) }
    }

    /// A publish starts waiting for its confirm; the guard marks its end (whatever the outcome).
    pub(super) fn start(self: &Arc<Self>) -> AwaitedConfirm<C> {
        if self.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.progress_us.store(self.time.now_us(), Ordering::Release);
        }
        AwaitedConfirm { clock: self.clone(), late: Arc::new(AtomicBool::new(false)) }
    }

    /// How long confirms have been awaited with none arriving; `None` when none is awaited.
    pub(super) fn stalled_for(&self) -> Option<Duration> {
        if self.outstanding.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.time.now_us().saturating_sub(self.progress_us.load(Ordering::Acquire));
        Some(Duration::from_micros(since))
    }
}

/// One awaited confirm; dropped when it arrived (or its channel or connection failed, or
/// nobody waits for it any more).
pub(super) struct AwaitedConfirm<C: Clock = Monotonic> {
    clock: Arc<ConfirmClock<C>>,
    /// Set once its request gave up waiting: what comes after is no progress.
    late: Arc<AtomicBool>,
}

impl<C: Clock> AwaitedConfirm<C> {
    /// A handle that marks this confirm late ([`Late::now`]) while the guard itself is held
    /// by the future awaiting the confirm.
    pub(super) fn late(&self) -> Late {
        Late(self.late.clone())
    }
}

/// Marks an awaited confirm late: its request gave up waiting.
pub(super) struct Late(Arc<AtomicBool>);

impl Late {
    pub(super) fn now(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl<C: Clock> Drop for AwaitedConfirm<C> {
    fn drop(&mut self) {
        if !self.late.load(Ordering::Acquire) {
            self.clock.progress_us.store(self.clock.time.now_us(), Ordering::Release);
        }
        self.clock.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when the test says so.
    #[derive(Default)]
    struct Manual(AtomicU64);

    impl Manual {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_micros() as u64, Ordering::Relaxed);
        }
    }

    impl Clock for Manual {
        fn now_us(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn the_clock_counts_stalls_only_while_confirms_are_awaited() {
        let clock = Arc::new(ConfirmClock::with_time(Manual::default()));
        assert_eq!(clock.stalled_for(), None);
        clock.time.advance(Duration::from_secs(7));
        assert_eq!(clock.stalled_for(), None, "time with nothing awaited is no stall");
        let first = clock.start();
        clock.time.advance(Duration::from_millis(20));
        let second = clock.start();
        assert_eq!(clock.stalled_for(), Some(Duration::from_millis(20)), "the second publish does not reset it");
        clock.time.advance(Duration::from_millis(5));
        drop(first);
        assert_eq!(clock.stalled_for(), Some(Duration::ZERO), "a confirm is progress");
        clock.time.advance(Duration::from_millis(3));
        assert_eq!(clock.stalled_for(), Some(Duration::from_millis(3)), "counted again from that confirm");
        drop(second);
        assert_eq!(clock.stalled_for(), None);
    }

    #[test]
    fn a_confirm_that_comes_after_its_request_gave_up_is_no_progress() {
        let clock = Arc::new(ConfirmClock::with_time(Manual::default()));
        let first = clock.start();
        let second = clock.start();
        clock.time.advance(Duration::from_secs(3));
        first.late().now();
        drop(first);
        assert_eq!(clock.stalled_for(), Some(Duration::from_secs(3)), "a late confirm does not reset the stall");
        clock.time.advance(Duration::from_secs(4));
        assert_eq!(clock.stalled_for(), Some(Duration::from_secs(7)));
        drop(second);
        assert_eq!(clock.stalled_for(), None, "nothing awaited, no stall");
    }
}
