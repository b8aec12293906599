//! Log set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info,lapin=error`: lapin's own warnings print whole
//! returned messages, payloads included, and every connection problem is logged here anyway).
//!
//! Lines are formatted on the thread that logs and handed to a writer thread
//! (`tracing-appender`'s non-blocking writer), which writes each batch it finds waiting with
//! one `write` through a buffer: a request never waits on the disk or a slow log pipe, and a
//! busy process makes one system call per batch of lines instead of one per line. The channel
//! is not lossy: when it is full (a log sink stalled for a long time), logging waits rather than
//! dropping lines. The [`LogGuard`] that [`init`] returns flushes what is left when dropped, so
//! binaries keep it until they exit.

use std::io::BufWriter;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=error";

/// Buffer of the writer thread: a batch of lines up to this size goes out in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Lines waiting for the writer thread before logging blocks. At a few hundred bytes a line,
/// tens of MiB at most, reached only if the log sink stalls.
const QUEUED_LINES: usize = 100_000;

/// Keeps the log writer thread; dropping it writes out every queued line.
#[must_use = "dropping the guard stops the log writer; keep it until the process exits"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber writing to stdout. A second call (tests) keeps the first one.
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(WRITE_BUFFER_BYTES, std::io::stdout()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
    LogGuard { _writer: guard }
}
