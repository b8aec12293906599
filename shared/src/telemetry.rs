//! Log set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]; dependencies that log what they carry are
//! held back unless `RUST_LOG` names them, see [`filter_directives`]). Text lines escape every
//! control character in a value ([`text`]), JSON lines are JSON ([`json`]): a value from outside
//! cannot break a line or forge one. Colours only when stdout is a terminal.
//!
//! Lines are formatted on the thread that logs and gathered in a buffer that a writer thread
//! writes out in batches ([`writer`]): logging never waits on the disk or a log pipe, and a
//! busy process makes one system call and one thread wake-up per batch of lines instead of per
//! line. When the buffer is full (a log sink stalled for a long time), lines are dropped and
//! counted (`log_lines_dropped_total`) rather than stalling the process: a tokio worker that
//! waited for the log would stall payments. The [`LogGuard`] that [`init`] returns writes what
//! is left when dropped (waiting a few seconds at most), so binaries keep it until they exit.
//!
//! With an OTLP endpoint configured, the same spans are also exported as traces
//! ([`crate::traces`]); the guard then flushes those too.

pub mod json;
pub mod text;
pub mod writer;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::settings::LogFormat;

/// Log filter when `RUST_LOG` is not set: [`filter_directives`] of `info`.
pub const DEFAULT_FILTER: &str = "info,lapin=error";

/// Dependencies whose logs carry payment data, and the level each is held at unless `RUST_LOG`
/// names it as a whole. lapin logs every message the broker returns at `warn` with its whole
/// body (payment payloads, customer details); tokio_postgres logs every statement with its
/// parameters (order ids, payment metadata) at `debug`.
pub const HELD_BACK: [(&str, &str); 2] = [("lapin", "error"), ("tokio_postgres", "info")];

/// The filter for a `RUST_LOG` value: `info` when unset, and for each of [`HELD_BACK`] its
/// directive added unless one is for that crate as a whole, so that an operator who sets
/// `RUST_LOG=warn`, `RUST_LOG=debug` or `lapin::channel=trace` does not get payment data by
/// accident (the more specific directive still wins for its module); `lapin=warn` or
/// `tokio_postgres=debug` asks for it. `tokio_postgres=info` is added only when the value can
/// turn on something below `info`, so that `RUST_LOG=warn` stays quiet.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    let value = match rust_log.map(str::trim) {
        None | Some("") => "info",
        Some(value) => value,
    };
    let mut filter = value.to_string();
    for (target, level) in HELD_BACK {
        let named = value.split(',').any(|directive| names_crate(directive, target));
        let lowers = level != "info" || value.split(',').any(enables_below_info);
        if !named && lowers {
            filter.push_str(&format!(",{target}={level}"));
        }
    }
    filter
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
    let notice = match format {
        LogFormat::Text => text::notice,
        LogFormat::Json => json::notice,
    };
    let (writer, guard) = writer::batch_writer(std::io::stdout(), notice)
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let filter = env_filter();
    let lines = fmt::layer().with_target(false).with_ansi(colours()).with_writer(writer);
    let lines = match format {
        LogFormat::Text => lines.fmt_fields(text::TextFields).boxed(),
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

/// Colours (ANSI escape codes) only on a terminal, and not with `NO_COLOR` set: a file or a
/// log shipper's pipe gets plain text.
fn colours() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether a directive (`lapin`, `lapin=warn`, `lapin[span]=debug`) is for `target` as a whole.
fn names_crate(directive: &str, target: &str) -> bool {
    directive.split(['=', '[']).next().is_some_and(|t| t.trim() == target)
}

/// Whether a directive may turn on `debug` or `trace` lines: anything but a level up to `info`
/// (`warn`, `worker=info`). A target without a level means all of its lines.
fn enables_below_info(directive: &str) -> bool {
    let directive = directive.trim().to_ascii_lowercase();
    let level = directive.rsplit_once('=').map_or(directive.as_str(), |(_, level)| level);
    !matches!(level.trim(), "" | "off" | "error" | "warn" | "info")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_stays_at_error_unless_the_filter_names_it() {
        assert_eq!(filter_directives(None), DEFAULT_FILTER);
        assert_eq!(filter_directives(Some(" ")), DEFAULT_FILTER);
        assert_eq!(filter_directives(Some("warn")), "warn,lapin=error");
        assert_eq!(
            filter_directives(Some("info,worker::process=debug")),
            "info,worker::process=debug,lapin=error,tokio_postgres=info"
        );
        assert_eq!(filter_directives(Some("info,lapin=warn")), "info,lapin=warn");
        assert_eq!(
            filter_directives(Some("info,lapin[connect]=debug")),
            "info,lapin[connect]=debug,tokio_postgres=info"
        );
        assert_eq!(
            filter_directives(Some("info,lapin::channel=trace")),
            "info,lapin::channel=trace,lapin=error,tokio_postgres=info"
        );
        assert_eq!(filter_directives(Some("info,lapinx=warn")), "info,lapinx=warn,lapin=error");
    }

    #[test]
    fn tokio_postgres_stays_at_info_unless_the_filter_names_it() {
        assert_eq!(filter_directives(Some("debug")), "debug,lapin=error,tokio_postgres=info");
        assert_eq!(filter_directives(Some("TRACE")), "TRACE,lapin=error,tokio_postgres=info");
        assert_eq!(filter_directives(Some("warn,tokio=debug")), "warn,tokio=debug,lapin=error,tokio_postgres=info");
        assert_eq!(filter_directives(Some("info,worker")), "info,worker,lapin=error,tokio_postgres=info");
        assert_eq!(filter_directives(Some("debug,tokio_postgres=debug")), "debug,tokio_postgres=debug,lapin=error");
        assert_eq!(filter_directives(Some("debug,tokio_postgres")), "debug,tokio_postgres,lapin=error");
        assert_eq!(
            filter_directives(Some("debug,tokio_postgres::query=trace")),
            "debug,tokio_postgres::query=trace,lapin=error,tokio_postgres=info"
        );
        // Nothing below info is on: the directive would only turn tokio_postgres's info on.
        assert_eq!(filter_directives(Some("error,worker=info")), "error,worker=info,lapin=error");
    }

    #[test]
    fn with_rust_log_at_warn_lapins_warnings_are_off_and_the_services_are_on() {
        let filter = EnvFilter::try_new(filter_directives(Some("warn"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(!tracing::enabled!(target: "lapin::returned_messages", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "lapin::io_loop", tracing::Level::ERROR));
            assert!(tracing::enabled!(target: "ingest::webhook", tracing::Level::WARN));
            assert!(!tracing::enabled!(target: "ingest::webhook", tracing::Level::INFO));
            assert!(!tracing::enabled!(target: "tokio_postgres::query", tracing::Level::INFO));
        });
        let filter = EnvFilter::try_new(filter_directives(Some("info,lapin::channel=trace"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(!tracing::enabled!(target: "lapin::returned_messages", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "lapin::channel", tracing::Level::TRACE));
        });
    }

    /// tokio_postgres logs `executing statement {} with parameters: [...]` at debug.
    #[test]
    fn with_rust_log_at_debug_statement_parameters_are_off_and_the_services_debug_is_on() {
        let filter = EnvFilter::try_new(filter_directives(Some("debug"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(!tracing::enabled!(target: "tokio_postgres::query", tracing::Level::DEBUG));
            assert!(tracing::enabled!(target: "tokio_postgres::connection", tracing::Level::INFO));
            assert!(tracing::enabled!(target: "worker::process", tracing::Level::DEBUG));
        });
        let filter = EnvFilter::try_new(filter_directives(Some("debug,tokio_postgres=debug"))).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), || {
            assert!(tracing::enabled!(target: "tokio_postgres::query", tracing::Level::DEBUG));
        });
    }
}
