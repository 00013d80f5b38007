//! The gateway's own log (not the access log): JSON lines on stderr through `tracing`,
//! filtered by `TURNPIKE_LOG` (default `info`). Lines about a request carry its
//! `request_id` field.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; does nothing if one is already installed (tests).
pub fn init() {
    let filter = EnvFilter::try_from_env("TURNPIKE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
