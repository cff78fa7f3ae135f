//! `tracing` setup: human-readable on a terminal, JSON lines otherwise (for log shippers).
//! Level from `AUDITLEDGER_LOG` (or `RUST_LOG`), default `info`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("AUDITLEDGER_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().with_current_span(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
