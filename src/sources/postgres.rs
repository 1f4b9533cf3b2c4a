//! A PostgreSQL database as a source of dumps (FR-011): its `[databases.<name>]` settings and
//! their checks, the FR's `BACKUP_*` environment variables, and the dump itself — the external
//! path checked first (exists, is a directory, is writable, is a mount point unless
//! `require_mount = false`; nothing is written before that, and nothing anywhere else),
//! pg_dump's stdout through a [`Spool`] whose partial file lives on the external path, fsynced
//! and renamed to the job's staging file only once pg_dump exited 0 (the job publishes it as
//! `{database}_{YYYY-MM-DD_HH-mm}[_N].sql`, never over an existing file). The pg_dump
//! used is the oldest installed one whose major is at least the server's
//! ([`choose_pg_dump`]); the server's version comes from `psql` (the same libpq connection
//! handling as pg_dump: PG* environment, passfile, TLS settings — no second PostgreSQL client
//! in offsite). The password reaches the children as `PGPASSWORD` in their environment, never
//! on a command line, and the children get a cleared environment (`passed_to_pg`). The job
//! around it is `jobs::db_dump`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};

use chrono::{DateTime, Utc, Weekday};
use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

use crate::{redact::Secret, transfer::spool::Spool};

/// The database the FR's `BACKUP_*` environment variables configure.
pub const ENV_DATABASE: &str = "backup";

/// A bad `BACKUP_*` environment variable: which, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub var: String,
    pub message: String,
}

// ------------------------------------------------------------------ configuration

/// `[databases.<name>]`: one PostgreSQL database, its schedule, its drive and destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database?sslmode=…` instead of the separate keys.
    pub url: Option<Secret>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Weekdays: `Mon` … `Sun` (any case, full names too).
    pub days: Vec<String>,
    /// `HH:mm`, on a quarter hour.
    pub time: String,
    /// IANA time zone of `time`; default: the configuration's, else the server's.
    pub timezone: Option<String>,
    /// The external drive's directory (absolute). Dumps are written here and only here.
    pub external_path: PathBuf,
    /// Refuse to dump unless `external_path` is a mount point (an unplugged drive leaves an
    /// empty directory on the container's own disk).
    #[serde(default = "yes")]
    pub require_mount: bool,
    /// A name under `[destinations]`.
    pub destination: String,
    /// Keep the last successfully uploaded dump on the drive (older ones are removed).
    #[serde(default)]
    pub keep_last_local: bool,
    /// Attempts after the first before the upload counts as failed (and the dump is removed).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A pg_dump binary to use instead of looking for one.
    pub pg_dump: Option<PathBuf>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

pub(crate) fn default_retries() -> u32 {
    5
}

/// Reads `Mon`, `mon`, `Monday`.
pub fn parse_day(day: &str) -> Result<Weekday, String> {
    day.trim()
        .parse::<Weekday>()
        .map_err(|_| format!("unknown weekday {day:?} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `HH:mm` on a quarter hour.
pub fn parse_time(time: &str) -> Result<(), String> {
    let t = chrono::NaiveTime::parse_from_str(time.trim(), "%H:%M")
        .map_err(|_| format!("invalid time {time:?}: expected HH:mm, e.g. 02:15"))?;
    if chrono::Timelike::minute(&t) % 15 != 0 {
        return Err(format!(
            "time {time:?} is not on a quarter hour (use :00, :15, :30 or :45)"
        ));
    }
    Ok(())
}

fn check_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "{:?} is not an absolute path (e.g. /media/backup)",
            path.display().to_string()
        ));
    }
    Ok(())
}

impl DatabaseConfig {
    /// The checks that need nothing but the section: the field they name and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.days.is_empty() {
            return Err(("days", "name at least one weekday (Mon … Sun)".into()));
        }
        for d in &self.days {
            parse_day(d).map_err(|e| ("days", e))?;
        }
        parse_time(&self.time).map_err(|e| ("time", e))?;
        if let Some(tz) = &self.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            return Err((
                "timezone",
                format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"),
            ));
        }
        check_path(&self.external_path).map_err(|e| ("external_path", e))?;
        if let Some(p) = &self.pg_dump {
            check_path(p).map_err(|e| ("pg_dump", e))?;
        }
        if self.retries > 100 {
            return Err(("retries", "must be from 0 to 100".into()));
        }
        if let Some(url) = &self.url {
            if self.host.is_some()
                || self.port.is_some()
                || self.database.is_some()
                || self.user.is_some()
                || self.password.is_some()
            {
                return Err((
                    "url",
                    "give either url or host/port/database/user/password, not both".into(),
                ));
            }
            connection_of_url(url.expose()).map_err(|e| ("url", e))?;
        }
        Ok(())
    }

    /// The environment pg_dump and psql get: what the section sets; beside it the user's PG*
    /// variables (`PGPASSFILE`, `~/.pgpass` through `HOME`) and little else ([`passed_to_pg`]).
    fn connection(&self) -> Result<Vec<(&'static str, EnvValue)>, String> {
        if let Some(url) = &self.url {
            return connection_of_url(url.expose());
        }
        let mut env = Vec::new();
        let plain = |v: &str| EnvValue(v.to_string());
        if let Some(h) = &self.host {
            env.push(("PGHOST", plain(h)));
        }
        if let Some(p) = self.port {
            env.push(("PGPORT", plain(&p.to_string())));
        }
        if let Some(d) = &self.database {
            env.push(("PGDATABASE", plain(d)));
        }
        if let Some(u) = &self.user {
            env.push(("PGUSER", plain(u)));
        }
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", EnvValue(p.expose().to_string())));
        }
        Ok(env)
    }

    /// The database's name in file names: the configured one, else `PGDATABASE`, else the
    /// section's name.
    pub fn database_name(&self, section: &str) -> String {
        let from_url = self
            .url
            .as_ref()
            .and_then(|u| connection_of_url(u.expose()).ok())
            .and_then(|env| {
                env.into_iter()
                    .find(|(k, _)| *k == "PGDATABASE")
                    .map(|(_, v)| v.0)
            });
        self.database
            .clone()
            .or(from_url)
            .or_else(|| std::env::var("PGDATABASE").ok())
            .unwrap_or_else(|| section.to_string())
    }
}

/// A value put into a child's environment; the password one is a registered secret.
struct EnvValue(String);

impl std::fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvValue(***)")
    }
}

impl EnvValue {
    fn expose(&self) -> &str {
        &self.0
    }
}

/// What pg_dump and psql get of offsite's environment: only what libpq and the program need —
/// `PATH`, `HOME` (`~/.pgpass`, `~/.pg_service.conf`), `USER`/`LOGNAME` (libpq's default user),
/// `TZ`, `LANG`/`LC_*` (messages, encoding), `TMPDIR`, and the standard `PG*` variables the
/// user set (connection, `PGPASSFILE`, `PGPASSWORD`, TLS, service). Everything else — a
/// destination's secret, `AWS_*`, `SUPERVISOR_TOKEN`, `OFFSITE_*` — stays with offsite.
pub(crate) fn passed_to_pg(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "USER" | "LOGNAME" | "TZ" | "LANG" | "LANGUAGE" | "TMPDIR"
    ) || name.starts_with("LC_")
        || (name.len() > 2
            && name.starts_with("PG")
            && name[2..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'))
}

/// A pg_dump or psql command with a cleared environment plus what [`passed_to_pg`] lets
/// through and the section's connection (`env`, which wins over the inherited PG* values).
fn pg_command(program: &Path, env: &[(&'static str, EnvValue)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(passed_to_pg) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v.expose());
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    cmd
}

fn connection_of_url(raw: &str) -> Result<Vec<(&'static str, EnvValue)>, String> {
    let url = url::Url::parse(raw)
        .map_err(|_| "not a URL (postgres://user:password@host:port/database)".to_string())?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let decode =
        |s: &str| percent_decode(s).ok_or_else(|| "contains an invalid %-escape".to_string());
    let mut env = Vec::new();
    if let Some(h) = url.host_str() {
        env.push(("PGHOST", EnvValue(h.trim_matches(['[', ']']).to_string())));
    }
    if let Some(p) = url.port() {
        env.push(("PGPORT", EnvValue(p.to_string())));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        env.push(("PGDATABASE", EnvValue(decode(db)?)));
    }
    if !url.username().is_empty() {
        env.push(("PGUSER", EnvValue(decode(url.username())?)));
    }
    if let Some(p) = url.password() {
        let p = decode(p)?;
        crate::redact::register(&p);
        env.push(("PGPASSWORD", EnvValue(p)));
    }
    for (k, v) in url.query_pairs() {
        let var = match &*k {
            "host" => "PGHOST",
            "port" => "PGPORT",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "application_name" => "PGAPPNAME",
            "options" => "PGOPTIONS",
            other => {
                return Err(format!(
                    "the parameter {other:?} is not supported (use host, port, sslmode, sslrootcert, sslcert, sslkey, connect_timeout, application_name or options)"
                ));
            }
        };
        env.push((var, EnvValue(v.into_owned())));
    }
    Ok(env)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The FR-011 environment variables as the `[databases.backup]` section (and, when the
/// `BACKUP_SHAREPOINT_*` ones are set, `[destinations.sharepoint]`), or `None` when none of
/// them is set. A bad value is refused naming the variable. The connection comes from the
/// standard PG* variables, which pg_dump reads itself.
pub fn from_backup_env(vars: &BTreeMap<String, String>) -> Result<Option<toml::Table>, EnvError> {
    const OURS: [&str; 5] = [
        "BACKUP_SCHEDULE_DAYS",
        "BACKUP_SCHEDULE_TIME",
        "BACKUP_TIMEZONE",
        "BACKUP_EXTERNAL_PATH",
        "BACKUP_DESTINATION",
    ];
    const SHAREPOINT: [(&str, &str); 7] = [
        ("BACKUP_SHAREPOINT_TENANT_ID", "tenant_id"),
        ("BACKUP_SHAREPOINT_CLIENT_ID", "client_id"),
        ("BACKUP_SHAREPOINT_CLIENT_SECRET", "client_secret"),
        ("BACKUP_SHAREPOINT_SITE", "site"),
        ("BACKUP_SHAREPOINT_LIBRARY", "library"),
        ("BACKUP_SHAREPOINT_FOLDER", "folder"),
        // Not an FR name: on an Azure VM or container host, the host's identity signs in
        // instead of an app secret (then only the site and library are required).
        ("BACKUP_SHAREPOINT_MANAGED_IDENTITY", "managed_identity"),
    ];
    let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if !OURS
        .iter()
        .chain(SHAREPOINT.iter().map(|(k, _)| k))
        .any(|k| get(k).is_some())
    {
        return Ok(None);
    }
    let bad = |var: &str, message: String| {
        Err(EnvError {
            var: var.to_string(),
            message,
        })
    };
    let s = |v: &str| toml::Value::String(v.to_string());
    let mut db = toml::Table::new();

    let Some(days) = get("BACKUP_SCHEDULE_DAYS") else {
        return bad(
            "BACKUP_SCHEDULE_DAYS",
            "not set: the weekdays to back up on, e.g. Mon,Wed,Fri".into(),
        );
    };
    let mut list = Vec::new();
    for d in days.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if let Err(e) = parse_day(d) {
            return bad("BACKUP_SCHEDULE_DAYS", e);
        }
        list.push(s(d));
    }
    if list.is_empty() {
        return bad(
            "BACKUP_SCHEDULE_DAYS",
            "name at least one weekday, e.g. Mon,Wed,Fri".into(),
        );
    }
    db.insert("days".into(), toml::Value::Array(list));
    let Some(time) = get("BACKUP_SCHEDULE_TIME") else {
        return bad(
            "BACKUP_SCHEDULE_TIME",
            "not set: the time of day, HH:mm on a quarter hour, e.g. 02:15".into(),
        );
    };
    if let Err(e) = parse_time(time) {
        return bad("BACKUP_SCHEDULE_TIME", e);
    }
    db.insert("time".into(), s(time));
    if let Some(tz) = get("BACKUP_TIMEZONE") {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            return bad(
                "BACKUP_TIMEZONE",
                format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"),
            );
        }
        db.insert("timezone".into(), s(tz));
    }
    let Some(path) = get("BACKUP_EXTERNAL_PATH") else {
        return bad(
            "BACKUP_EXTERNAL_PATH",
            "not set: the external drive's directory, e.g. /media/backup".into(),
        );
    };
    if let Err(e) = check_path(Path::new(path)) {
        return bad("BACKUP_EXTERNAL_PATH", e);
    }
    db.insert("external_path".into(), s(path));

    let mut out = toml::Table::new();
    let any_sharepoint = SHAREPOINT.iter().any(|(k, _)| get(k).is_some());
    let destination = match (get("BACKUP_DESTINATION"), any_sharepoint) {
        (Some(d), _) => d.to_string(),
        (None, true) => {
            // The SharePoint destination (`type = "sharepoint"`), as [destinations.sharepoint].
            let mut sp = toml::Table::new();
            sp.insert("type".into(), s("sharepoint"));
            let identity = match get("BACKUP_SHAREPOINT_MANAGED_IDENTITY") {
                None => false,
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => {
                        return bad(
                            "BACKUP_SHAREPOINT_MANAGED_IDENTITY",
                            format!("{v:?} is neither true nor false"),
                        );
                    }
                },
            };
            for (var, key) in SHAREPOINT {
                // With the host's identity only the target is required: a tenant id, when
                // given, is checked against the token's; a client id picks a user-assigned
                // identity; a secret is refused by the destination's own check.
                let optional = key == "folder"
                    || (identity && ["tenant_id", "client_id", "client_secret"].contains(&key));
                match get(var) {
                    Some(_) if key == "managed_identity" => {
                        sp.insert(key.into(), toml::Value::Boolean(identity));
                    }
                    Some(v) => {
                        sp.insert(key.into(), s(v));
                    }
                    None if optional || key == "managed_identity" => {}
                    None => return bad(var, "not set (the SharePoint target needs it)".into()),
                }
            }
            let mut dests = toml::Table::new();
            dests.insert("sharepoint".into(), toml::Value::Table(sp));
            out.insert("destinations".into(), toml::Value::Table(dests));
            "sharepoint".into()
        }
        (None, false) => {
            return bad(
                "BACKUP_SHAREPOINT_SITE",
                "not set: give the SharePoint target (BACKUP_SHAREPOINT_SITE, _LIBRARY, _FOLDER, _TENANT_ID, _CLIENT_ID, _CLIENT_SECRET) or BACKUP_DESTINATION".into(),
            );
        }
    };
    db.insert("destination".into(), s(&destination));
    let mut dbs = toml::Table::new();
    dbs.insert(ENV_DATABASE.into(), toml::Value::Table(db));
    out.insert("databases".into(), toml::Value::Table(dbs));
    Ok(Some(out))
}

/// `{database}_{YYYY-MM-DD_HH-mm}.sql`, the time in the database's time zone.
pub fn file_name(database: &str, at: DateTime<Utc>, timezone: &str) -> String {
    let prefix = dump_prefix(database);
    let local = match timezone.parse::<chrono_tz::Tz>() {
        Ok(tz) => at.with_timezone(&tz).format("%Y-%m-%d_%H-%M").to_string(),
        Err(_) => at.format("%Y-%m-%d_%H-%M").to_string(),
    };
    format!("{prefix}{local}.sql")
}

/// What every dump file of `database` starts with: `{database}_`.
pub(crate) fn dump_prefix(database: &str) -> String {
    let safe: String = database
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}_")
}

/// `name` (`{database}_{YYYY-MM-DD_HH-mm}.sql`) for `n` = 1, else with `_{n}` before `.sql`:
/// the names a dump takes when the earlier ones are taken (two dumps in one minute, two
/// sections naming the same database on one drive).
pub(crate) fn numbered(name: &str, n: u32) -> String {
    match (n, name.strip_suffix(".sql")) {
        (0 | 1, _) | (_, None) => name.to_string(),
        (n, Some(stem)) => format!("{stem}_{n}.sql"),
    }
}

/// Where a job's dump is written before it is published under its name: hidden, on the
/// external path, and the job's own (`.{database}_job-{id}.sql`).
pub(crate) fn staging_name(database: &str, job: i64) -> String {
    format!(".{}job-{job}.sql", dump_prefix(database))
}

/// A file on the external path that a dump of a database (by its [`dump_prefix`]) made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DumpFile {
    /// `{database}_{YYYY-MM-DD_HH-mm}[_N].sql`.
    Published,
    /// A job's staging file or its partial (`.{database}_job-{id}.sql[.partial]`).
    Staging(i64),
    /// The partial of a published name (`.{name}.partial`, from earlier versions).
    Partial(String),
}

/// What `name` is among the files of the database whose prefix is `prefix`, if it is one.
pub(crate) fn dump_file(prefix: &str, name: &str) -> Option<DumpFile> {
    if let Some(rest) = name.strip_prefix(prefix) {
        let stem = rest.strip_suffix(".sql")?;
        let stamp = stem.get(..16)?;
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d_%H-%M").ok()?;
        return match &stem[16..] {
            "" => Some(DumpFile::Published),
            n => {
                let n = n.strip_prefix('_')?;
                (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .then_some(DumpFile::Published)
            }
        };
    }
    let hidden = name.strip_prefix('.')?;
    let staging = hidden.strip_prefix('.').unwrap_or(hidden);
    if let Some(id) = staging
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("job-"))
        .and_then(|r| r.strip_suffix(".sql.partial").or(r.strip_suffix(".sql")))
        .and_then(|id| id.parse::<i64>().ok())
    {
        return Some(DumpFile::Staging(id));
    }
    let published = hidden.strip_suffix(".partial")?;
    (dump_file(prefix, published) == Some(DumpFile::Published))
        .then(|| DumpFile::Partial(published.to_string()))
}

/// A dump problem: what went wrong, then why (outermost first), and whether trying again
/// later can help.
#[derive(Debug, Clone)]
pub struct DumpError {
    pub message: String,
    pub causes: Vec<String>,
    pub retry: bool,
}

impl DumpError {
    pub(crate) fn new(message: impl Into<String>, retry: bool) -> Self {
        DumpError {
            message: message.into(),
            causes: Vec::new(),
            retry,
        }
    }
    pub(crate) fn because(mut self, cause: impl std::fmt::Display) -> Self {
        let c = cause.to_string();
        let c = c.trim();
        if !c.is_empty() {
            self.causes.push(crate::redact::redact(c).into_owned());
        }
        self
    }
}

impl std::fmt::Display for DumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ the dump

/// Checks the external path (`data`: offsite's own data directory, which the drive must not
/// be), finds the right pg_dump, and spools its output there (`spool`, the job's staging
/// file; publishing it under its name is the job's). Returns the dump's size. Nothing is
/// written before the path passed its checks; a pg_dump that fails leaves no file.
/// `alive` is called whenever pg_dump's output moves: a dump that takes an hour is not a stall,
/// a pg_dump that stops writing (stuck behind a lock) still is.
pub async fn dump(
    db: &DatabaseConfig,
    section: &str,
    spool: &Spool,
    alive: Alive,
    data: Option<&Path>,
) -> Result<u64, DumpError> {
    check_external(&db.external_path, db.require_mount, data, section).await?;
    let env = db
        .connection()
        .map_err(|e| DumpError::new(format!("databases.{section}.url"), false).because(e))?;
    let candidates = pg_dump_candidates(db.pg_dump.as_deref());
    let psql = psql_for(db.pg_dump.as_deref(), &candidates);
    let server = server_version(&psql, &env).await?;
    let pg_dump = choose_pg_dump(&candidates, server, db.pg_dump.as_deref(), section).await?;

    let mut cmd = pg_command(&pg_dump, &env);
    cmd.args(["--format=plain", "--no-password"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        DumpError::new(format!("cannot start {}", pg_dump.display()), false).because(e)
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(read_tail(stderr));
    let reader = DumpOutput::new(
        alive,
        stdout,
        Box::pin(async move { child.wait().await }),
        errors,
    );
    let size = spool.fill(reader).await.map_err(|e| {
        let e = e.to_string();
        match e.strip_prefix("the producer failed: ") {
            Some(why) => DumpError::new("pg_dump failed", true).because(why),
            None => DumpError::new(
                format!("cannot write the dump on {}", db.external_path.display()),
                true,
            )
            .because(e),
        }
    })?;
    sync_dir(&db.external_path).await;
    Ok(size)
}

/// The last few KiB of a child's stderr, for the error message.
async fn read_tail(mut stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if all.len() > 8192 {
            all.drain(..all.len() - 8192);
        }
    }
    crate::redact::redact(String::from_utf8_lossy(&all).trim()).into_owned()
}

/// Called as a long step makes progress.
pub type Alive = std::sync::Arc<dyn Fn() + Send + Sync>;

type ExitFuture = Pin<Box<dyn Future<Output = std::io::Result<std::process::ExitStatus>> + Send>>;
type TailFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// How much of pg_dump's output is gathered before it is handed on. pg_dump writes the pipe
/// a few KiB at a time and every piece handed on was one write of the spool (a round trip
/// through tokio's blocking pool each, ~16,000 per 128 MiB); gathered, it is one per MiB.
const GATHER: usize = 1024 * 1024;

/// pg_dump's stdout whose end is an end only when pg_dump exited 0: otherwise the reader
/// fails, so the spool is never completed from a dump that broke off. Hands on its output in
/// pieces of [`GATHER`] bytes (the last one shorter).
struct DumpOutput {
    alive: Alive,
    stdout: tokio::process::ChildStdout,
    exit: Option<ExitFuture>,
    errors: Option<tokio::task::JoinHandle<String>>,
    waiting: Option<(std::process::ExitStatus, TailFuture)>,
    /// Output read but not handed on yet: `gathered[given..have]`.
    gathered: Box<[u8]>,
    have: usize,
    given: usize,
    /// stdout reached its end.
    ended: bool,
}

impl DumpOutput {
    fn new(
        alive: Alive,
        stdout: tokio::process::ChildStdout,
        exit: ExitFuture,
        errors: tokio::task::JoinHandle<String>,
    ) -> Self {
        DumpOutput {
            alive,
            stdout,
            exit: Some(exit),
            errors: Some(errors),
            waiting: None,
            gathered: vec![0u8; GATHER].into_boxed_slice(),
            have: 0,
            given: 0,
            ended: false,
        }
    }
}

impl AsyncRead for DumpOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.exit.is_some() {
            loop {
                // A full piece, or what is left at the end, is handed on.
                if this.given < this.have && (this.have == GATHER || this.ended) {
                    let n = (this.have - this.given).min(buf.remaining());
                    buf.put_slice(&this.gathered[this.given..this.given + n]);
                    this.given += n;
                    if this.given == this.have {
                        (this.given, this.have) = (0, 0);
                    }
                    return Poll::Ready(Ok(()));
                }
                if this.ended {
                    break;
                }
                let mut into = ReadBuf::new(&mut this.gathered[this.have..]);
                std::task::ready!(Pin::new(&mut this.stdout).poll_read(cx, &mut into))?;
                match into.filled().len() {
                    0 => this.ended = true,
                    n => {
                        this.have += n;
                        (this.alive)();
                    }
                }
            }
            // End of output: it counts once pg_dump said how it ended.
            let status = match this.exit.as_mut().expect("checked").as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(s)) => s,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            };
            this.exit = None;
            if status.success() {
                return Poll::Ready(Ok(()));
            }
            let errors = this.errors.take().expect("once");
            let tail: TailFuture = Box::pin(async move { errors.await.unwrap_or_default() });
            this.waiting = Some((status, tail));
        }
        match this.waiting.as_mut() {
            None => Poll::Ready(Ok(())),
            Some((status, tail)) => {
                let stderr = std::task::ready!(tail.as_mut().poll(cx));
                let how = match status.code() {
                    Some(c) => format!("pg_dump exited with status {c}"),
                    None => "pg_dump was killed".to_string(),
                };
                let msg = if stderr.is_empty() {
                    how
                } else {
                    format!("{how}: {stderr}")
                };
                this.waiting = None;
                this.exit = None;
                Poll::Ready(Err(std::io::Error::other(msg)))
            }
        }
    }
}

/// Makes the renames and links in `dir` durable.
pub(crate) async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// How a section's key is called where the user sets it: `databases.<name>.<key>`, and for
/// the FR's section also its environment variable and add-on option.
pub fn option_name(section: &str, key: &str) -> String {
    let mut out = format!("databases.{section}.{key}");
    if section == ENV_DATABASE {
        match key {
            "external_path" => {
                out.push_str(", BACKUP_EXTERNAL_PATH, add-on option backup_external_path")
            }
            "require_mount" => out.push_str(", add-on option backup_require_mount"),
            _ => {}
        }
    }
    out
}

/// The external path must exist, be a directory, be writable, and (when `require_mount`) be
/// a drive of its own: a mount point (listed in `/proc/self/mountinfo`, or on another device
/// than its parent) on another device than offsite's own data (`data`, the directory of its
/// database). The second half is what the add-on needs: there `/media`, `/share` and `/data`
/// are bind mounts of the same system partition, so each is a mount point without any drive;
/// a USB disk or NAS share the host mounts at `/media/<name>` is a device of its own.
/// The writability probe is a file on the path itself, removed at once.
pub async fn check_external(
    path: &Path,
    require_mount: bool,
    data: Option<&Path>,
    section: &str,
) -> Result<(), DumpError> {
    let fail = |m: String| DumpError::new(m, true);
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) => {
            return Err(fail(format!(
                "the external path {} is missing (is the drive attached and mounted?)",
                path.display()
            ))
            .because(e));
        }
    };
    if !meta.is_dir() {
        return Err(fail(format!(
            "the external path {} is not a directory",
            path.display()
        )));
    }
    if require_mount {
        if !is_mount_point(path).await {
            return Err(fail(format!(
                "the external path {} ({}) is not a mount point (is the drive attached and mounted? set {} = false to allow a plain directory)",
                path.display(),
                option_name(section, "external_path"),
                option_name(section, "require_mount"),
            )));
        }
        if let Some(data) = data
            && let Some(shared) = same_device(path, data).await
        {
            return Err(fail(format!(
                "the external path {} ({}) is on the same device as offsite's own data ({}): it is a mount point but not an external drive (is the drive attached? give the drive's own folder, e.g. /media/usb, or set {} = false to allow it)",
                path.display(),
                option_name(section, "external_path"),
                shared.display(),
                option_name(section, "require_mount"),
            )));
        }
    }
    let probe = path.join(format!(".offsite-write-test-{}", std::process::id()));
    let written = async {
        let f = tokio::fs::File::create(&probe).await?;
        f.sync_all().await
    }
    .await;
    let _ = tokio::fs::remove_file(&probe).await;
    written.map_err(|e| {
        fail(format!(
            "the external path {} is not writable",
            path.display()
        ))
        .because(e)
    })
}

/// `data` (canonical) when `path` is on the same device (`st_dev`) as it; `None` when not, or
/// when either cannot be looked at.
async fn same_device(path: &Path, data: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let data = tokio::fs::canonicalize(data).await.ok()?;
    let a = tokio::fs::metadata(path).await.ok()?;
    let b = tokio::fs::metadata(&data).await.ok()?;
    (a.dev() == b.dev()).then_some(data)
}

/// Whether `path` is where a file system is mounted: listed in `/proc/self/mountinfo`, or on
/// another device than its parent.
pub async fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = tokio::fs::canonicalize(path).await else {
        return false;
    };
    if let Ok(info) = tokio::fs::read_to_string("/proc/self/mountinfo").await
        && mount_points(&info).any(|m| Path::new(&m) == path)
    {
        return true;
    }
    let (Ok(me), Some(parent)) = (tokio::fs::metadata(&path).await, path.parent()) else {
        return false;
    };
    tokio::fs::metadata(parent)
        .await
        .is_ok_and(|p| p.dev() != me.dev())
}

/// The mount points (field 5) of a mountinfo text, with its octal escapes (`\040`) undone.
fn mount_points(info: &str) -> impl Iterator<Item = String> + '_ {
    info.lines().filter_map(|l| {
        let raw = l.split(' ').nth(4)?;
        let mut out = Vec::new();
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok());
            if b[i] == b'\\'
                && let Some(n) = octal.and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).ok()
    })
}

/// A PostgreSQL version as comparable number: 15 → 1500, 9.6 → 906.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Major(pub u32);

impl std::fmt::Display for Major {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 1000 {
            write!(f, "{}", self.0 / 100)
        } else {
            write!(f, "{}.{}", self.0 / 100, self.0 % 100)
        }
    }
}

impl Major {
    /// From `server_version_num` (150004, 90624).
    pub fn of_version_num(n: u32) -> Major {
        if n >= 100_000 {
            Major(n / 10_000 * 100)
        } else {
            Major(n / 10_000 * 100 + n / 100 % 100)
        }
    }
    /// From `pg_dump --version`: `pg_dump (PostgreSQL) 15.5 (Debian 15.5-1.pgdg120+1)`.
    pub fn of_version_text(text: &str) -> Option<Major> {
        let v = text
            .split("(PostgreSQL)")
            .nth(1)?
            .split_whitespace()
            .next()?;
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        if major >= 10 {
            Some(Major(major * 100))
        } else {
            let minor: u32 = parts.next()?.parse().ok()?;
            Some(Major(major * 100 + minor))
        }
    }
}

/// The pg_dump binaries to choose from: the configured one alone, else every
/// `/usr/lib/postgresql/*/bin/pg_dump` and the one on `PATH`.
fn pg_dump_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let p = e.path().join("bin/pg_dump");
            if p.is_file() {
                out.push(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("pg_dump"))
            .find(|p| p.is_file())
    {
        out.push(p);
    }
    out.sort();
    out
}

/// psql to ask the server's version with: beside the configured pg_dump, else the newest
/// installed, else the one on `PATH`.
fn psql_for(configured: Option<&Path>, candidates: &[PathBuf]) -> PathBuf {
    let beside = |p: &Path| p.parent().map(|d| d.join("psql")).filter(|p| p.is_file());
    if let Some(p) = configured.and_then(beside) {
        return p;
    }
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.is_file())
        .collect();
    installed.sort_by_key(|p| {
        p.parent()
            .and_then(|b| b.parent())
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    installed
        .pop()
        .or_else(|| candidates.iter().find_map(|c| beside(c)))
        .unwrap_or_else(|| PathBuf::from("psql"))
}

/// The server's major version, asked with `SHOW server_version_num`.
async fn server_version(psql: &Path, env: &[(&'static str, EnvValue)]) -> Result<Major, DumpError> {
    let mut cmd = pg_command(psql, env);
    cmd.args([
        "-X",
        "-A",
        "-t",
        "--no-password",
        "-c",
        "SHOW server_version_num",
    ]);
    let out = cmd.output().await.map_err(|e| {
        DumpError::new(
            format!(
                "cannot ask the server for its version: cannot run {}",
                psql.display()
            ),
            false,
        )
        .because(e)
    })?;
    if !out.status.success() {
        return Err(DumpError::new("cannot connect to the database", true)
            .because(String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<u32>()
        .map(Major::of_version_num)
        .map_err(|_| {
            DumpError::new("the server's version is not readable", true)
                .because(format!("SHOW server_version_num gave {:?}", text.trim()))
        })
}

/// The oldest pg_dump whose major is at least the server's (the matching one when installed).
pub async fn choose_pg_dump(
    candidates: &[PathBuf],
    server: Major,
    configured: Option<&Path>,
    section: &str,
) -> Result<PathBuf, DumpError> {
    let mut found = Vec::new();
    for c in candidates {
        let out = pg_command(c, &[]).arg("--version").output().await;
        match out {
            Ok(o) if o.status.success() => {
                if let Some(v) = Major::of_version_text(&String::from_utf8_lossy(&o.stdout)) {
                    found.push((v, c.clone()));
                }
            }
            Err(e) if configured.is_some() && e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DumpError::new(
                    format!(
                        "pg_dump not found at {} (databases.{section}.pg_dump)",
                        c.display()
                    ),
                    false,
                ));
            }
            _ => {}
        }
    }
    if found.is_empty() {
        return Err(DumpError::new(
            format!(
                "pg_dump not found (looked in /usr/lib/postgresql/*/bin and PATH); install pg_dump {server} or newer, or set databases.{section}.pg_dump"
            ),
            false,
        ));
    }
    found.sort();
    if let Some((_, p)) = found.iter().find(|(v, _)| *v >= server) {
        return Ok(p.clone());
    }
    let (newest, path) = found.last().expect("not empty");
    Err(DumpError::new(
        format!(
            "pg_dump {newest} ({}) is older than the server (PostgreSQL {server}): pg_dump must be version {server} or newer",
            path.display()
        ),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's output as `dump` reads it: `alive` moves with every read.
    fn output_of(script: &str, alive: Alive) -> DumpOutput {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let errors = tokio::spawn(read_tail(child.stderr.take().unwrap()));
        DumpOutput::new(
            alive,
            stdout,
            Box::pin(async move { child.wait().await }),
            errors,
        )
    }

    #[tokio::test]
    async fn a_long_dump_reports_that_it_is_alive_as_its_output_moves() {
        use tokio::io::AsyncReadExt;
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let alive: Alive = std::sync::Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let mut out = output_of("for i in 1 2 3; do echo line $i; done", alive);
        let mut all = String::new();
        out.read_to_string(&mut all).await.unwrap();
        assert!(all.contains("line 3"), "{all}");
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        // A dump that broke off is an error, and no progress was invented for it.
        let quiet = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = quiet.clone();
        let alive: Alive = std::sync::Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let mut out = output_of("echo broken >&2; exit 3", alive);
        let mut all = Vec::new();
        let e = out.read_to_end(&mut all).await.unwrap_err();
        assert!(e.to_string().contains("status 3"), "{e}");
        assert_eq!(quiet.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn pg_dump_gets_the_pg_variables_but_not_the_workers_secrets() {
        for kept in [
            "PATH",
            "HOME",
            "TZ",
            "LANG",
            "LC_ALL",
            "PGPASSFILE",
            "PGPASSWORD",
            "PGHOST",
            "PGSSLROOTCERT",
            "PGSERVICE",
        ] {
            assert!(passed_to_pg(kept), "{kept}");
        }
        for dropped in [
            "BACKUP_SHAREPOINT_CLIENT_SECRET",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "SUPERVISOR_TOKEN",
            "OFFSITE_API__TOKEN",
            "PGX_SECRET1",
            "PG",
            "LD_PRELOAD",
        ] {
            assert!(!passed_to_pg(dropped), "{dropped}");
        }
    }

    #[test]
    fn versions_compare_across_the_numbering_change() {
        assert_eq!(Major::of_version_num(150004), Major(1500));
        assert_eq!(Major::of_version_num(90624), Major(906));
        assert_eq!(
            Major::of_version_text("pg_dump (PostgreSQL) 15.5 (Debian 15.5-1.pgdg120+1)\n"),
            Some(Major(1500))
        );
        assert_eq!(
            Major::of_version_text("pg_dump (PostgreSQL) 9.6.0"),
            Some(Major(906))
        );
        assert!(Major(906) < Major(1000));
        assert_eq!(Major(906).to_string(), "9.6");
        assert_eq!(Major(1700).to_string(), "17");
    }

    #[test]
    fn file_names_use_the_database_and_the_local_time() {
        let at = "2026-03-29T00:30:00Z".parse().unwrap();
        assert_eq!(
            file_name("app", at, "Europe/Berlin"),
            "app_2026-03-29_01-30.sql"
        );
        assert_eq!(file_name("my db", at, "UTC"), "my_db_2026-03-29_00-30.sql");
    }

    #[test]
    fn dump_files_are_told_apart_from_other_files() {
        let p = dump_prefix("shop");
        let is = |n: &str| dump_file(&p, n);
        assert_eq!(is("shop_2026-03-29_01-30.sql"), Some(DumpFile::Published));
        assert_eq!(is("shop_2026-03-29_01-30_2.sql"), Some(DumpFile::Published));
        assert_eq!(
            is("shop_2026-03-29_01-30_12.sql"),
            Some(DumpFile::Published)
        );
        assert_eq!(is(".shop_job-17.sql"), Some(DumpFile::Staging(17)));
        assert_eq!(is("..shop_job-17.sql.partial"), Some(DumpFile::Staging(17)));
        assert_eq!(
            is(".shop_2026-03-29_01-30.sql.partial"),
            Some(DumpFile::Partial("shop_2026-03-29_01-30.sql".into()))
        );
        for other in [
            "shop_2026-03-29_01-30.sql.gz",
            "shop_2026-03-29_01-30_.sql",
            "shop_2026-03-29_01-30_x.sql",
            "shop_notes.sql",
            "shopping_2026-03-29_01-30.sql",
            "shop_x_2026-03-29_01-30.sql",
            "notes.txt",
            ".shop_job-x.sql",
        ] {
            assert_eq!(is(other), None, "{other}");
        }
        assert_eq!(
            numbered("shop_2026-03-29_01-30.sql", 1),
            "shop_2026-03-29_01-30.sql"
        );
        assert_eq!(
            numbered("shop_2026-03-29_01-30.sql", 2),
            "shop_2026-03-29_01-30_2.sql"
        );
        assert_eq!(staging_name("my db", 5), ".my_db_job-5.sql");
    }

    #[test]
    fn the_env_sections_options_are_named_as_the_user_sets_them() {
        let o = option_name(ENV_DATABASE, "external_path");
        assert!(o.contains("databases.backup.external_path"), "{o}");
        assert!(o.contains("BACKUP_EXTERNAL_PATH"), "{o}");
        assert!(o.contains("backup_external_path"), "{o}");
        let o = option_name(ENV_DATABASE, "require_mount");
        assert!(o.contains("backup_require_mount"), "{o}");
        assert_eq!(
            option_name("shop", "require_mount"),
            "databases.shop.require_mount"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n";
        assert_eq!(mount_points(info).collect::<Vec<_>>(), ["/mnt/with space"]);
    }

    #[test]
    fn a_url_becomes_the_libpq_environment_with_the_password_registered() {
        let env = connection_of_url(
            "postgres://app%40x:s3cr%2Ft-passw0rd@db.local:6543/shop?sslmode=require",
        )
        .unwrap();
        let get = |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.expose().to_string())
        };
        assert_eq!(get("PGUSER").as_deref(), Some("app@x"));
        assert_eq!(get("PGPASSWORD").as_deref(), Some("s3cr/t-passw0rd"));
        assert_eq!(get("PGHOST").as_deref(), Some("db.local"));
        assert_eq!(get("PGPORT").as_deref(), Some("6543"));
        assert_eq!(get("PGDATABASE").as_deref(), Some("shop"));
        assert_eq!(get("PGSSLMODE").as_deref(), Some("require"));
        assert_eq!(crate::redact::redact("x s3cr/t-passw0rd y"), "x *** y");
        assert!(connection_of_url("mysql://x").is_err());
        assert!(
            connection_of_url("postgres://h/db?bogus=1")
                .unwrap_err()
                .contains("bogus")
        );
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_backup_env_names_the_variable_that_is_wrong() {
        let ok = [
            ("BACKUP_SCHEDULE_DAYS", "Mon,Wed,Fri"),
            ("BACKUP_SCHEDULE_TIME", "02:15"),
            ("BACKUP_TIMEZONE", "Europe/Berlin"),
            ("BACKUP_EXTERNAL_PATH", "/media/backup"),
            ("BACKUP_DESTINATION", "nas"),
        ];
        let t = from_backup_env(&vars(&ok)).unwrap().unwrap();
        let db = &t["databases"][ENV_DATABASE];
        assert_eq!(db["time"].as_str(), Some("02:15"));
        assert_eq!(db["destination"].as_str(), Some("nas"));
        assert_eq!(db["days"].as_array().unwrap().len(), 3);
        assert!(from_backup_env(&vars(&[])).unwrap().is_none());

        let with = |k: &str, v: &str| {
            let mut all = vars(&ok);
            all.insert(k.into(), v.into());
            from_backup_env(&all).unwrap_err()
        };
        let e = with("BACKUP_SCHEDULE_TIME", "02:10");
        assert_eq!(Some(e.var.as_str()), Some("BACKUP_SCHEDULE_TIME"));
        assert!(e.message.contains("quarter hour"), "{e:?}");
        let e = with("BACKUP_SCHEDULE_DAYS", "Mon,Funday");
        assert_eq!(Some(e.var.as_str()), Some("BACKUP_SCHEDULE_DAYS"));
        assert!(e.message.contains("Funday"), "{e:?}");
        let e = with("BACKUP_EXTERNAL_PATH", "media/backup");
        assert_eq!(Some(e.var.as_str()), Some("BACKUP_EXTERNAL_PATH"));
        let e = with("BACKUP_TIMEZONE", "Mars/Olympus");
        assert_eq!(Some(e.var.as_str()), Some("BACKUP_TIMEZONE"));

        let mut sp = vars(&ok);
        sp.remove("BACKUP_DESTINATION");
        for (k, v) in [
            ("BACKUP_SHAREPOINT_SITE", "contoso.sharepoint.com:/sites/it"),
            ("BACKUP_SHAREPOINT_LIBRARY", "Documents"),
            ("BACKUP_SHAREPOINT_FOLDER", "Backups/db"),
            ("BACKUP_SHAREPOINT_TENANT_ID", "tenant"),
            ("BACKUP_SHAREPOINT_CLIENT_ID", "client"),
            ("BACKUP_SHAREPOINT_CLIENT_SECRET", "secret-value-123"),
        ] {
            sp.insert(k.into(), v.into());
        }
        let t = from_backup_env(&sp).unwrap().unwrap();
        assert_eq!(
            t["destinations"]["sharepoint"]["type"].as_str(),
            Some("sharepoint")
        );
        assert_eq!(
            t["destinations"]["sharepoint"]["library"].as_str(),
            Some("Documents")
        );
        assert_eq!(
            t["databases"][ENV_DATABASE]["destination"].as_str(),
            Some("sharepoint")
        );
        sp.remove("BACKUP_SHAREPOINT_CLIENT_ID");
        let e = from_backup_env(&sp).unwrap_err();
        assert_eq!(Some(e.var.as_str()), Some("BACKUP_SHAREPOINT_CLIENT_ID"));

        // The host's identity: only the site and library are needed.
        let mut mi = sp.clone();
        for k in [
            "BACKUP_SHAREPOINT_TENANT_ID",
            "BACKUP_SHAREPOINT_CLIENT_SECRET",
        ] {
            mi.remove(k);
        }
        mi.insert("BACKUP_SHAREPOINT_MANAGED_IDENTITY".into(), "true".into());
        let t = from_backup_env(&mi).unwrap().unwrap();
        let d = &t["destinations"]["sharepoint"];
        assert_eq!(d["managed_identity"].as_bool(), Some(true));
        assert!(d.get("client_secret").is_none() && d.get("tenant_id").is_none());
        mi.insert("BACKUP_SHAREPOINT_MANAGED_IDENTITY".into(), "maybe".into());
        let e = from_backup_env(&mi).unwrap_err();
        assert_eq!(e.var, "BACKUP_SHAREPOINT_MANAGED_IDENTITY");
        assert!(e.message.contains("\"maybe\""), "{}", e.message);
        // Off, the app's fields are required again.
        mi.insert("BACKUP_SHAREPOINT_MANAGED_IDENTITY".into(), "false".into());
        let e = from_backup_env(&mi).unwrap_err();
        assert_eq!(e.var, "BACKUP_SHAREPOINT_TENANT_ID");
    }
}
