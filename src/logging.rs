//! Logs with tracing: human lines by default, JSON on request. Job lines carry the job's id,
//! kind and attempt through the `job` span. The backup outcome lines (`component=Backup`) can
//! go to the host's syslog as well ([`Syslog`], RFC 5424 over a Unix datagram socket).

use std::{io::IsTerminal, os::unix::net::UnixDatagram, path::PathBuf};

use tracing::{Subscriber, field::Visit};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::{self, MakeWriter},
    layer::{Context, SubscriberExt},
    util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat};

/// sqlx logs every statement at debug under this target. At `debug` they were most of the log
/// (106 of 122 lines in 6 s), so statements belong to `trace`.
const SQL_STATEMENTS: &str = "sqlx::query";

/// The tracing target of the backup outcome lines (`component=Backup`), which [`Syslog`]
/// forwards.
pub const BACKUP_TARGET: &str = "offsite::backup";

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

/// The subscriber `config` asks for, writing to `writer` (the process uses [`init`]; tests
/// pass a buffer of their own to read the lines).
pub fn subscriber<W>(
    config: &LogConfig,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let lines = match config.format {
        LogFormat::Human => fmt::layer()
            .with_target(false)
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    let syslog = config
        .syslog
        .then(|| Syslog::new(config.syslog_socket.clone()));
    Box::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(lines)
            .with(syslog),
    )
}

/// Installs the global subscriber; `RUST_LOG`, when set, wins over the configured level.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| filter(&spec).ok())
        .or_else(|| filter(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = subscriber(
        config,
        filter,
        crate::redact::Stderr,
        std::io::stderr().is_terminal(),
    )
    .try_init();
}

/// Sends the events of [`BACKUP_TARGET`] (the backup outcomes) to a syslog
/// socket as RFC 5424 messages: facility daemon, the event's fields as structured data
/// `[offsite@32473 …]`, secrets masked. A socket that is not there loses the message only.
pub struct Syslog {
    socket: PathBuf,
    hostname: String,
}

impl Syslog {
    pub fn new(socket: PathBuf) -> Syslog {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".into());
        Syslog { socket, hostname }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs.push((field.name(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}

/// RFC 5424 PARAM-VALUE: `"`, `\` and `]` escaped.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message.
pub fn rfc5424(
    level: &tracing::Level,
    hostname: &str,
    message: &str,
    fields: &[(&str, String)],
) -> String {
    const DAEMON: u8 = 3;
    let severity = match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    };
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let sd: String = fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!(" {k}=\"{}\"", sd_escape(v)))
        .collect();
    format!(
        "<{}>1 {now} {hostname} offsite {} backup [offsite@32473{sd}] {message}",
        DAEMON * 8 + severity,
        std::process::id()
    )
}

impl<S: Subscriber> Layer<S> for Syslog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != BACKUP_TARGET {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let line = rfc5424(
            event.metadata().level(),
            &self.hostname,
            &f.message,
            &f.pairs,
        );
        let line = crate::redact::redact(&line);
        if let Ok(sock) = UnixDatagram::unbound() {
            let _ = sock.send_to(line.as_bytes(), &self.socket);
        }
    }
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

    #[test]
    fn syslog_messages_are_rfc5424_with_escaped_structured_data() {
        let m = rfc5424(
            &tracing::Level::ERROR,
            "ha",
            "backup upload failed",
            &[
                ("user", "*system".into()),
                ("component", "Backup".into()),
                ("error", "a \"quoted\" ] thing".into()),
                ("cause", String::new()),
            ],
        );
        let re = regex_lite(&m);
        assert!(re, "{m}");
        assert!(
            m.contains(r#"[offsite@32473 user="*system" component="Backup" error="a \"quoted\" \] thing"] backup upload failed"#),
            "{m}"
        );
        assert!(m.starts_with("<27>1 "), "{m}");
    }

    /// `<PRI>1 TIMESTAMP HOST APP PID MSGID`.
    fn regex_lite(m: &str) -> bool {
        let parts: Vec<&str> = m.splitn(7, ' ').collect();
        parts.len() == 7
            && parts[0].starts_with('<')
            && parts[0].ends_with(">1")
            && parts[1].ends_with('Z')
            && parts[2] == "ha"
            && parts[3] == "offsite"
            && parts[4].parse::<u32>().is_ok()
            && parts[5] == "backup"
    }
}
