//! Log set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info,lapin=error`: lapin's own warnings print whole
//! returned messages, payloads included, and every connection problem is logged here anyway).

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=error";

/// Installs the global subscriber. A second call (tests) keeps the first one.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}
