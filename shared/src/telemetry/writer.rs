//! The log writer: lines are appended to a shared buffer by the threads that log, and a writer
//! thread writes out whatever has gathered with one `write` every [`LINGER`] at most.
//!
//! A thread that logs takes a lock and copies its line; it wakes the writer only when the
//! buffer was empty and the writer is idle, or when the buffer passes [`FLUSH_BYTES`]. A busy
//! process thus pays one wake-up and one system call per batch, not per line (a channel per
//! line, as `tracing-appender` has, costs a wake-up of the writer thread for most lines, which
//! on a loaded 2-core machine was a quarter of ingest's CPU per request). Nothing is dropped:
//! past [`MAX_BUFFERED_BYTES`] (a log sink stalled for a long time) logging waits for room.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer before it is written.
pub const LINGER: Duration = Duration::from_millis(5);

/// A buffer this full is written at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Past this, logging waits for the writer (tens of thousands of lines; reached only when the
/// log sink stalls).
pub const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

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
    /// Set by the guard: write what is left and stop.
    closed: bool,
    /// Cleared by the writer thread as it stops; from then on loggers write directly.
    running: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits on this for lines.
    wake: Condvar,
    /// Loggers wait on this for room when the buffer is full.
    room: Condvar,
    /// Where lines go: written by the writer thread, and by loggers directly once it stopped.
    out: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding the lock left whole lines behind: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn out(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_out(&self, bytes: &[u8]) {
        write_to(&mut **self.out(), bytes);
    }
}

fn write_to(out: &mut dyn Write, bytes: &[u8]) {
    // A log sink that fails (a closed pipe) cannot be reported anywhere better; the lines are
    // dropped rather than blocking the process.
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// The [`MakeWriter`] handed to the formatting layer; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every buffered line.
pub struct BatchWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread writing to `out`.
pub fn batch_writer(out: impl Write + Send + 'static) -> std::io::Result<(BatchWriter, BatchWriterGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::with_capacity(FLUSH_BYTES),
            writer: Writer::Busy,
            closed: false,
            running: true,
        }),
        wake: Condvar::new(),
        room: Condvar::new(),
        out: Mutex::new(Box::new(out)),
    });
    let thread = std::thread::Builder::new().name("log-writer".into()).spawn({
        let shared = shared.clone();
        move || write_batches(&shared)
    })?;
    Ok((BatchWriter { shared: shared.clone() }, BatchWriterGuard { shared, thread: Some(thread) }))
}

/// Marks the writer stopped when `write_batches` returns, or unwinds (a sink that panicked):
/// loggers then write directly instead of waiting for a writer that is gone.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        // Holding the sink first keeps each thread's lines in order: a logger that finds the
        // writer stopped writes after what is left here.
        let mut out = self.0.out();
        let rest = {
            let mut state = self.0.lock();
            state.running = false;
            std::mem::take(&mut state.lines)
        };
        self.0.room.notify_all();
        write_to(&mut **out, &rest);
    }
}

fn write_batches(shared: &Shared) {
    let _stopped = Stopped(shared);
    let mut batch = Vec::with_capacity(FLUSH_BYTES);
    let mut state = shared.lock();
    loop {
        if state.lines.is_empty() {
            if state.closed {
                break;
            }
            state.writer = Writer::Idle;
            state =
                shared.wake.wait_while(state, |s| s.lines.is_empty() && !s.closed).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        if state.lines.len() < FLUSH_BYTES && !state.closed {
            state.writer = Writer::Lingering;
            state = shared
                .wake
                .wait_timeout_while(state, LINGER, |s| s.lines.len() < FLUSH_BYTES && !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.writer = Writer::Busy;
        std::mem::swap(&mut state.lines, &mut batch);
        let was_full = batch.len() >= MAX_BUFFERED_BYTES;
        drop(state);
        if was_full {
            shared.room.notify_all();
        }
        shared.write_out(&batch);
        batch.clear();
        if batch.capacity() > 4 * FLUSH_BYTES {
            batch.shrink_to(FLUSH_BYTES);
        }
        state = shared.lock();
    }
}

impl BatchWriter {
    fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        while state.lines.len() >= MAX_BUFFERED_BYTES && state.running {
            state = self.shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if !state.running {
            // The writer thread has stopped (the guard was dropped) and wrote everything
            // buffered before: write directly.
            drop(state);
            self.shared.write_out(line);
            return;
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
            self.shared.wake.notify_one();
        }
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
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
