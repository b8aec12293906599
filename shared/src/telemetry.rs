//! Log set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info,lapin=error`: lapin's own warnings print whole
//! returned messages, payloads included, and every connection problem is logged here anyway).
//!
//! Lines are formatted on the thread that logs and gathered in a buffer that a writer thread
//! writes out in batches ([`writer`]): a request never waits on the disk or a slow log pipe,
//! and a busy process makes one system call and one thread wake-up per batch of lines instead
//! of per line. Nothing is lost: when the buffer is full (a log sink stalled for a long time),
//! logging waits rather than dropping lines. The [`LogGuard`] that [`init`] returns writes what
//! is left when dropped, so binaries keep it until they exit.
//!
//! With an OTLP endpoint configured, the same spans are also exported as traces
//! ([`crate::traces`]); the guard then flushes those too.

pub mod json;
pub mod writer;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::settings::LogFormat;

/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=error";

/// Keeps the log writer thread (and the trace exporter); dropping it writes out every queued
/// line and exports every finished span.
#[must_use = "dropping the guard stops the log writer; keep it until the process exits"]
pub struct LogGuard {
    // Dropped first: span export may still log.
    _traces: Option<crate::traces::Exporter>,
    _writer: writer::BatchWriterGuard,
}

/// Installs the global subscriber writing to stdout, and the trace exporter when one is
/// configured; `service` names the process in traces. A second call (tests) keeps the first
/// subscriber. Fails only when an OTLP endpoint is set but no exporter can be built for it.
pub fn init(format: LogFormat, service: &str) -> Result<LogGuard, String> {
    let (writer, guard) =
        writer::batch_writer(std::io::stdout()).map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let lines = fmt::layer().with_target(false).with_writer(writer);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.fmt_fields(json::JsonFields).event_format(json::JsonLines).boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    let traces = match crate::traces::layer(service)? {
        Some((layer, exporter)) => {
            let _ = registry.with(layer).try_init();
            Some(exporter)
        }
        None => {
            let _ = registry.try_init();
            None
        }
    };
    Ok(LogGuard { _traces: traces, _writer: guard })
}
