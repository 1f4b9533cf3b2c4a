//! Logs with tracing: human lines by default, JSON on request. Job lines carry the job's id,
//! kind and attempt through the `job` span.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, filter::LevelFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// sqlx logs every statement at debug under this target. At `debug` they were most of the log
/// (106 of 122 lines in 6 s), so statements belong to `trace`.
const SQL_STATEMENTS: &str = "sqlx::query";

/// The filter for `spec` (a tracing filter such as `debug` or `offsite=debug,info`). When it
/// goes down to debug but not to trace, and does not name sqlx itself, SQL statements are held
/// at info (sqlx's warning about slow statements still shows).
pub fn filter(spec: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(spec)?;
    if spec.contains("sqlx") || filter.max_level_hint() != Some(LevelFilter::DEBUG) {
        return Ok(filter);
    }
    Ok(filter.add_directive(format!("{SQL_STATEMENTS}=info").parse()?))
}

/// Installs the global subscriber; `RUST_LOG`, when set, wins over the configured level.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| filter(&spec).ok())
        .or_else(|| filter(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(crate::redact::Stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_held_back_only_where_debug_would_show_them() {
        let held = |spec: &str| {
            filter(spec)
                .unwrap()
                .to_string()
                .contains("sqlx::query=info")
        };
        assert!(held("debug"));
        assert!(held("offsite=debug,info"));
        assert!(!held("trace"), "trace shows statements");
        assert!(!held("info"), "nothing to hold back");
        assert!(!held("warn"), "never raised above the configured level");
        assert!(!held("sqlx=debug,info"), "naming sqlx is the user's choice");
    }
}
