//! Log set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info,lapin=error`; `lapin=error` is added to any value that
//! does not name lapin, see [`filter_directives`]: lapin's own warnings print whole returned
//! messages, payloads included, and every connection problem is logged here anyway).
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

/// The filter for a `RUST_LOG` value: [`DEFAULT_FILTER`] when unset, and `lapin=error` added
/// unless a directive is for lapin as a whole. lapin logs every message the broker returns at
/// `warn` with its whole body (payment payloads, customer details), so an operator who sets
/// `RUST_LOG=warn` or `lapin::channel=trace` must not get those by accident (the more specific
/// directive still wins for its module); `lapin=warn` asks for them.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        None | Some("") => DEFAULT_FILTER.to_string(),
        Some(value) if value.split(',').any(names_lapin) => value.to_string(),
        Some(value) => format!("{value},lapin=error"),
    }
}

/// The filter of `RUST_LOG` through [`filter_directives`]; [`DEFAULT_FILTER`] when it does
/// not parse.
pub fn env_filter() -> EnvFilter {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    EnvFilter::try_new(filter_directives(rust_log.as_deref())).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

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
    let filter = env_filter();
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

/// Whether a directive (`lapin`, `lapin=warn`, `lapin[span]=debug`) is for lapin as a whole.
fn names_lapin(directive: &str) -> bool {
    directive.split(['=', '[']).next().is_some_and(|target| target.trim() == "lapin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_stays_at_error_unless_the_filter_names_it() {
        assert_eq!(filter_directives(None), DEFAULT_FILTER);
        assert_eq!(filter_directives(Some(" ")), DEFAULT_FILTER);
        assert_eq!(filter_directives(Some("warn")), "warn,lapin=error");
        assert_eq!(filter_directives(Some("info,worker::process=debug")), "info,worker::process=debug,lapin=error");
        assert_eq!(filter_directives(Some("debug,lapin=warn")), "debug,lapin=warn");
        assert_eq!(filter_directives(Some("info,lapin[connect]=debug")), "info,lapin[connect]=debug");
        assert_eq!(filter_directives(Some("info,lapin::channel=trace")), "info,lapin::channel=trace,lapin=error");
        assert_eq!(filter_directives(Some("info,lapinx=debug")), "info,lapinx=debug,lapin=error");
    }

    #[test]
    fn with_rust_log_at_warn_lapins_warnings_are_off_and_the_services_are_on() {
        let filter = EnvFilter::try_new(filter_directives(Some("warn"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(!tracing::enabled!(target: "lapin::returned_messages", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "lapin::io_loop", tracing::Level::ERROR));
            assert!(tracing::enabled!(target: "ingest::webhook", tracing::Level::WARN));
            assert!(!tracing::enabled!(target: "ingest::webhook", tracing::Level::INFO));
        });
        let filter = EnvFilter::try_new(filter_directives(Some("info,lapin::channel=trace"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(!tracing::enabled!(target: "lapin::returned_messages", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "lapin::channel", tracing::Level::TRACE));
        });
    }
}
