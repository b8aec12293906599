//! The log writer: lines are appended to a shared buffer by the threads that log, and a writer
//! thread writes out whatever has gathered with one `write` every [`LINGER`] at most.
//!
//! A thread that logs takes a lock and copies its line; it wakes the writer only when the
//! buffer was empty and the writer is idle, or when the buffer passes [`FLUSH_BYTES`]. A busy
//! process thus pays one wake-up and one system call per batch, not per line (a channel per
//! line, as `tracing-appender` has, costs a wake-up of the writer thread for most lines, which
//! on a loaded 2-core machine was a quarter of ingest's CPU per request).
//!
//! Logging never waits for the sink: only the writer thread writes to it. Past
//! [`MAX_BUFFERED_BYTES`] (a log sink that stalled: a stuck log shipper, a pipe nobody reads)
//! lines are dropped and counted ([`lines_dropped`], exported as `log_lines_dropped_total`),
//! because a tokio worker that waited here would stall every task on it, and a worker waiting
//! inside a transaction holds payment rows locked. One line says when dropping starts and one,
//! once the sink takes lines again, how many were dropped; both are throttled to one per
//! [`NOTICE_INTERVAL`]. A line the sink refused (a closed pipe) is counted the same way.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer before it is written.
pub const LINGER: Duration = Duration::from_millis(5);

/// A buffer this full is written at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Past this, lines are dropped (tens of thousands of lines, seconds of a busy process's
/// logging: reached only when the log sink stalls).
pub const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

/// Fewest time between two notices about dropped lines (apart from the one that closes an
/// announced stall), so a sink that keeps stalling does not fill the log with them.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);

/// Longest the guard waits at exit for the buffered lines to be written: an exiting process
/// must not hang on a stalled log sink.
pub const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Log lines this process dropped: past the buffer's cap, or refused by the sink.
static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines this process dropped so far, of every writer (`log_lines_dropped_total`).
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Ordering::Relaxed)
}

/// What the writer says about the lines it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The buffer is full: lines are dropped from here on.
    Dropping,
    /// The sink takes lines again (or the process exits); this many were dropped.
    Dropped(u64),
}

impl Notice {
    /// The notice's message; [`Notice::Dropped`] lines add the count as the field `dropped`.
    pub fn message(self) -> &'static str {
        match self {
            Notice::Dropping => {
                "the log sink is not taking lines: dropping log lines until it does (counted in log_lines_dropped_total)"
            }
            Notice::Dropped(_) => "the log sink takes lines again; log lines were dropped while it stalled",
        }
    }
}

/// Appends a notice as one log line in the process's log format.
pub type FormatNotice = fn(Notice, &mut Vec<u8>);

/// What the writer thread is doing, so that loggers wake it only when it waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Waiting for a first line.
    Idle,
    /// Has lines; waits up to [`LINGER`] for more, or for the buffer to fill.
    Lingering,
    /// Writing, or already woken: nobody needs to wake it.
    Busy,
}

struct State {
    lines: Vec<u8>,
    writer: Writer,
    /// Set by the guard: the process is exiting; write every line at once, no lingering.
    closing: bool,
    /// Every [`BatchWriter`] is gone: write what is left and stop.
    detached: bool,
    /// The writer thread has ended.
    stopped: bool,
    drops: Drops,
}

/// Dropped lines, and what the log has been told about them.
#[derive(Default)]
struct Drops {
    /// The buffer was full at the last line.
    dropping: bool,
    /// The current stall was announced: its end is reported at once.
    announced: bool,
    /// Dropped and not yet reported in a [`Notice::Dropped`] line.
    unreported: u64,
    last_notice: Option<Instant>,
    /// Dropped by this writer, in all.
    total: u64,
}

impl Drops {
    fn notice_due(&self, now: Instant) -> bool {
        self.last_notice.is_none_or(|last| now.duration_since(last) >= NOTICE_INTERVAL)
    }
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits on this for lines.
    wake: Condvar,
    /// The guard waits on this for the writer to have written everything, or to have stopped.
    settled: Condvar,
    notice: FormatNotice,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding the lock left whole lines behind: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Drops a line that found the buffer full; the first of a stall is announced (beyond the
    /// cap: one line) unless a notice was written a moment ago.
    fn drop_line(&mut self, notice: FormatNotice) {
        LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        let drops = &mut self.drops;
        drops.total += 1;
        drops.unreported += 1;
        if !drops.dropping {
            drops.dropping = true;
            let now = Instant::now();
            if drops.notice_due(now) {
                drops.announced = true;
                drops.last_notice = Some(now);
                notice(Notice::Dropping, &mut self.lines);
            }
        }
    }

    /// A line found room after lines were dropped: says how many, at once if the stall was
    /// announced, otherwise once a notice is due.
    fn report_drops(&mut self, notice: FormatNotice, at_exit: bool) {
        let drops = &mut self.drops;
        let ended = std::mem::replace(&mut drops.dropping, false);
        if drops.unreported == 0 {
            return;
        }
        let now = Instant::now();
        if at_exit || (ended && drops.announced) || drops.notice_due(now) {
            notice(Notice::Dropped(std::mem::take(&mut drops.unreported)), &mut self.lines);
            drops.announced = false;
            drops.last_notice = Some(now);
        }
    }
}

/// The [`MakeWriter`] handed to the formatting layer; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    handle: Arc<Handle>,
}

/// Owned by every [`BatchWriter`] clone: when the last one goes, the writer thread stops.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.wake.notify_one();
    }
}

/// Writes out what is buffered when dropped, waiting [`EXIT_FLUSH_TIMEOUT`] at most. Lines
/// logged later are still written, without lingering, until the process exits.
pub struct BatchWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread writing to `out`; `notice` formats its lines about dropped lines.
pub fn batch_writer(
    out: impl Write + Send + 'static,
    notice: FormatNotice,
) -> std::io::Result<(BatchWriter, BatchWriterGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::with_capacity(FLUSH_BYTES),
            writer: Writer::Busy,
            closing: false,
            detached: false,
            stopped: false,
            drops: Drops::default(),
        }),
        wake: Condvar::new(),
        settled: Condvar::new(),
        notice,
    });
    let thread = std::thread::Builder::new().name("log-writer".into()).spawn({
        let shared = shared.clone();
        move || write_batches(&shared, out)
    })?;
    let handle = Arc::new(Handle { shared: shared.clone() });
    Ok((BatchWriter { handle }, BatchWriterGuard { shared, thread: Some(thread) }))
}

/// Wakes a guard waiting for the writer when the thread ends, however it ends.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.settled.notify_all();
    }
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let _stopped = Stopped(shared);
    let mut batch = Vec::with_capacity(FLUSH_BYTES);
    let mut state = shared.lock();
    loop {
        if state.lines.is_empty() {
            if state.detached {
                break;
            }
            state.writer = Writer::Idle;
            if state.closing {
                shared.settled.notify_all();
            }
            state =
                shared.wake.wait_while(state, |s| s.lines.is_empty() && !s.detached).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        if state.lines.len() < FLUSH_BYTES && !state.closing && !state.detached {
            state.writer = Writer::Lingering;
            state = shared
                .wake
                .wait_timeout_while(state, LINGER, |s| s.lines.len() < FLUSH_BYTES && !s.closing && !s.detached)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.writer = Writer::Busy;
        std::mem::swap(&mut state.lines, &mut batch);
        drop(state);
        if !write_to(&mut out, &batch) {
            let lost = batch.iter().filter(|&&b| b == b'\n').count() as u64;
            LINES_DROPPED.fetch_add(lost, Ordering::Relaxed);
            shared.lock().drops.total += lost;
        }
        batch.clear();
        if batch.capacity() > 4 * FLUSH_BYTES {
            batch.shrink_to(FLUSH_BYTES);
        }
        state = shared.lock();
    }
}

/// Writes `bytes`; false when the sink failed (a closed pipe) or panicked. Neither can be
/// reported anywhere better than the drop count, and the thread carries on with the next batch.
fn write_to(out: &mut impl Write, bytes: &[u8]) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| out.write_all(bytes).and_then(|()| out.flush())))
        .is_ok_and(|written| written.is_ok())
}

impl BatchWriter {
    fn append(&self, line: &[u8]) {
        let shared = &*self.handle.shared;
        let mut state = shared.lock();
        if state.lines.len() >= MAX_BUFFERED_BYTES {
            // The writer is busy writing (the buffer passed FLUSH_BYTES long ago): no wake-up.
            state.drop_line(shared.notice);
            return;
        }
        if state.drops.dropping || state.drops.unreported > 0 {
            state.report_drops(shared.notice, false);
        }
        state.lines.extend_from_slice(line);
        let wake = match state.writer {
            Writer::Idle => {
                state.writer = Writer::Lingering;
                true
            }
            Writer::Lingering if state.lines.len() >= FLUSH_BYTES => {
                state.writer = Writer::Busy;
                true
            }
            _ => false,
        };
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Lines this writer dropped so far.
    pub fn dropped(&self) -> u64 {
        self.handle.shared.lock().drops.total
    }
}

/// One line (the formatting layer writes each event with a single `write_all`).
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

impl Drop for BatchWriterGuard {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        state.closing = true;
        state.report_drops(shared.notice, true);
        shared.wake.notify_one();
        let (state, waited) = shared
            .settled
            .wait_timeout_while(state, EXIT_FLUSH_TIMEOUT, |s| {
                !(s.stopped || (s.lines.is_empty() && s.writer == Writer::Idle))
            })
            .unwrap_or_else(|p| p.into_inner());
        // Without writers left the thread ends as soon as it is idle.
        let stopped = state.stopped || (state.detached && !waited.timed_out());
        drop(state);
        // A thread stuck in a write to a stalled sink is left behind: the process exits anyway.
        if let Some(thread) = self.thread.take().filter(|_| stopped) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
