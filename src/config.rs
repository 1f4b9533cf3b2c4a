//! One typed configuration: per-key defaults, then the config file — or, without one, the
//! built-in example configuration (`config/builtin.toml`, compiled in) — then `OFFSITE_*`
//! environment variables (`OFFSITE_API__LISTEN=…`; `__` separates levels). Everything is
//! validated before anything starts; the first problem is reported in one line that names the
//! file, the key and what is wrong.
//!
//! Defaults are per key (serde defaults on the structs), never whole sections: a section the
//! user wrote is never merged with a built-in one. The example flow (inbox → outbox and its
//! schedule) exists only when no config file is given.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::Deserialize;

/// What `offsite run` uses without a config file: the inbox → outbox example flow. Its folder
/// paths are relative to `data_dir`.
pub const BUILTIN: &str = include_str!("../config/builtin.toml");

/// The queues the built-in kinds run on. A `[queues.NAME]` section replaces the one of that
/// name; the others stay.
const BUILTIN_QUEUES: [(&str, usize); 2] = [("default", 4), ("uploads", 1)];

/// Tables with alternative keys: a layer that sets one of these keys replaces the table of the
/// layers below instead of merging into it (`every` below and `cron` above would otherwise make
/// one invalid schedule).
const ALTERNATIVE_TABLES: &[(&str, &[&str])] =
    &[("snapshots.schedule", &["cron", "every", "weekdays"])];

/// A configuration problem: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<String>,
    /// The line in `file` (1-based), where known.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            key: None,
            message: message.into(),
        }
    }
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        let key: String = key.into();
        let key = key.trim_end_matches('.').to_string();
        ConfigError {
            file: None,
            line: None,
            key: (!key.is_empty()).then_some(key),
            message: message.into(),
        }
    }
    pub fn with_key_opt(mut self, key: Option<String>) -> Self {
        if self.key.is_none() {
            self.key = key;
        }
        self
    }
    /// The line the problem is on, unless one is known already.
    pub fn on_line(mut self, line: Option<usize>) -> Self {
        if self.line.is_none() {
            self.line = line;
        }
        self
    }
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file.get_or_insert_with(|| file.display().to_string());
        self
    }
    fn in_source(mut self, source: &str) -> Self {
        self.file.get_or_insert_with(|| source.to_string());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("configuration error")?;
        if let Some(file) = &self.file {
            write!(f, " in {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

pub use crate::redact::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the database, the instance id and credentials live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The SQLite file; default `<data_dir>/offsite.db`.
    pub database: Option<PathBuf>,
    /// Directory of schedule files (`*.toml`).
    #[serde(default = "default_jobs_dir")]
    pub jobs_dir: PathBuf,
    /// Stable name of this worker; default: generated once and kept in the data dir.
    pub instance_id: Option<String>,
    /// IANA time zone for schedules that do not name one; default: the system's.
    pub timezone: Option<String>,
    pub api: ApiConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    /// The built-in queues (`default`, `uploads`) plus any named here.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    #[serde(default)]
    pub kinds: BTreeMap<String, KindConfig>,
    #[serde(default)]
    pub prune: PruneConfig,
    /// Where backups come from, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where backups go, by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// The built-in snapshot schedule: scan a source and upload new backups.
    pub snapshots: Option<SnapshotsConfig>,
    /// PostgreSQL databases dumped on their own schedules (the db_dump kind), by name.
    #[serde(default)]
    pub databases: BTreeMap<String, crate::sources::postgres::DatabaseConfig>,
    /// Network devices whose configuration is fetched on their own schedules (the
    /// device_fetch kind), by name.
    #[serde(default)]
    pub devices: BTreeMap<String, crate::devices::DeviceConfig>,
    /// Google Drive accounts mirrored to destinations through the changes feed (the
    /// google_delta kind), by name.
    #[serde(default)]
    pub google_drive: BTreeMap<String, crate::sources::google_drive::GoogleDriveConfig>,
    /// Not supported (no API reads a whole library since March 2025): a section here is
    /// refused with an explanation of what works instead.
    #[serde(default)]
    pub google_photos: Option<toml::Value>,
    /// Notifications and sensors in Home Assistant (the add-on turns this on).
    pub homeassistant: Option<HomeAssistantConfig>,
    /// Where the configuration came from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Bearer token; without one, offsite generates one and keeps it in `<data_dir>/api-token`.
    pub token: Option<Secret>,
    /// When set, only these client addresses may connect; the add-on sets it to Home
    /// Assistant's ingress proxy.
    #[serde(default)]
    pub allow_from: Vec<std::net::IpAddr>,
    /// Let a browser on this machine in without the token. Off by default: a reverse proxy on
    /// the same machine makes every remote user a loopback client.
    #[serde(default)]
    pub trust_loopback: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

fn default_data_dir() -> PathBuf {
    "offsite-data".into()
}
fn default_jobs_dir() -> PathBuf {
    "jobs".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `offsite=debug,info` …
    pub level: String,
    /// Also send the backup outcome lines (`component=Backup`) to the host's syslog, RFC 5424.
    pub syslog: bool,
    /// The syslog socket (a Unix datagram socket).
    pub syslog_socket: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
            syslog: false,
            syslog_socket: "/dev/log".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            watch_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(8),
            backoff_cap: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub concurrency: usize,
}

/// Overrides of a job kind's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindConfig {
    pub queue: Option<String>,
    pub max_attempts: Option<i64>,
    pub priority: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stall_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Age after which finished jobs are deleted; "0s" keeps them forever.
    #[serde(with = "humantime_serde")]
    pub completed_after: Duration,
    #[serde(with = "humantime_serde")]
    pub cancelled_after: Duration,
    #[serde(with = "humantime_serde")]
    pub discarded_after: Duration,
}

impl Default for PruneConfig {
    fn default() -> Self {
        const DAY: u64 = 86400;
        PruneConfig {
            interval: Duration::from_secs(600),
            completed_after: Duration::from_secs(7 * DAY),
            cancelled_after: Duration::from_secs(30 * DAY),
            discarded_after: Duration::from_secs(30 * DAY),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A directory of backup files (`*.tar`), e.g. Home Assistant's `/backup` mapped read-only.
    Folder { path: PathBuf },
    /// The Home Assistant Supervisor API (add-on mode).
    Supervisor {
        #[serde(default = "default_supervisor_url")]
        url: String,
        /// Default: the `SUPERVISOR_TOKEN` environment variable the Supervisor sets.
        token: Option<Secret>,
    },
}

fn default_supervisor_url() -> String {
    "http://supervisor".into()
}

/// What a destination is, with the settings only that kind has (`type = "…"`). Each kind's
/// module owns its settings and their checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationKind {
    Folder(crate::destinations::folder::FolderConfig),
    Dropbox(crate::destinations::dropbox::DropboxConfig),
    S3(crate::destinations::s3::S3Config),
    #[serde(rename = "sharepoint")]
    SharePoint(crate::destinations::sharepoint::SharePointConfig),
}

impl DestinationKind {
    /// The kind's own checks: the field they name and what is wrong with it.
    fn validate(&self) -> Result<(), (String, String)> {
        let named = |(field, why): (&str, String)| (field.to_string(), why);
        match self {
            DestinationKind::Folder(c) => c.validate().map_err(named),
            DestinationKind::Dropbox(c) => c.validate().map_err(named),
            DestinationKind::S3(c) => c.validate(),
            DestinationKind::SharePoint(c) => c.validate().map_err(named),
        }
    }
}

/// `[destinations.<name>]`: the kind's own settings plus what every destination has.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    pub kind: DestinationKind,
    /// Bytes per request/write, in MiB (Dropbox: a multiple of 4, at most 148; S3: at least 5;
    /// SharePoint: at most 59, rounded up to a multiple of 320 KiB).
    pub chunk_mib: u64,
    /// Keep the newest N backups offsite uploaded here (0: keep all).
    pub max_backups: u32,
    /// Generational retention on top of `max_backups`: keep the newest backup of each of the
    /// last N days / ISO weeks / months / years.
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Upload at most this many bytes per second (0: no limit).
    pub throttle_bytes_per_sec: u64,
}

/// The settings every kind of destination has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonDestinationConfig {
    #[serde(default = "default_chunk_mib")]
    chunk_mib: u64,
    #[serde(default)]
    max_backups: u32,
    #[serde(default)]
    keep_daily: u32,
    #[serde(default)]
    keep_weekly: u32,
    #[serde(default)]
    keep_monthly: u32,
    #[serde(default)]
    keep_yearly: u32,
    #[serde(default)]
    throttle_bytes_per_sec: u64,
}

const COMMON_DESTINATION_KEYS: [&str; 7] = [
    "chunk_mib",
    "max_backups",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "throttle_bytes_per_sec",
];

impl<'de> Deserialize<'de> for DestinationConfig {
    /// The common settings are taken out first; what is left must be exactly the kind's own
    /// (an S3 destination with an `app_key` is refused, naming the field).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut own = toml::Table::deserialize(d)?;
        let mut common = toml::Table::new();
        for key in COMMON_DESTINATION_KEYS {
            if let Some(v) = own.remove(key) {
                common.insert(key.to_string(), v);
            }
        }
        let common: CommonDestinationConfig = common
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        if !own.contains_key("type") {
            return Err(D::Error::missing_field("type"));
        }
        let kind: DestinationKind = toml::Value::Table(own)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        Ok(DestinationConfig {
            kind,
            chunk_mib: common.chunk_mib,
            max_backups: common.max_backups,
            keep_daily: common.keep_daily,
            keep_weekly: common.keep_weekly,
            keep_monthly: common.keep_monthly,
            keep_yearly: common.keep_yearly,
            throttle_bytes_per_sec: common.throttle_bytes_per_sec,
        })
    }
}

pub(crate) fn default_chunk_mib() -> u64 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A name under [sources] (required when enabled).
    #[serde(default)]
    pub source: String,
    /// Names under [destinations].
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Scan once when the worker starts, besides the schedule.
    #[serde(default = "yes")]
    pub scan_on_start: bool,
    /// Same forms as a schedule file's [schedule]: every / cron / weekdays + at. Default: every
    /// hour (only when the section has no `schedule` at all).
    #[serde(default = "default_snapshot_schedule")]
    pub schedule: toml::Value,
}

fn yes() -> bool {
    true
}

fn default_snapshot_schedule() -> toml::Value {
    toml::Value::Table(toml::Table::from_iter([(
        "every".to_string(),
        toml::Value::String("1h".into()),
    )]))
}

/// Home Assistant's Core API, reached through the Supervisor's proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Base of the Core REST API.
    #[serde(default = "default_core_url")]
    pub url: String,
    /// Default: the `SUPERVISOR_TOKEN` environment variable the Supervisor sets.
    pub token: Option<Secret>,
    /// Sensors are named `sensor.<prefix>_last_backup` and so on.
    #[serde(default = "default_sensor_prefix")]
    pub sensor_prefix: String,
    /// How often notifications and sensors are brought up to date.
    #[serde(default = "default_ha_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Every sensor is written again this often, even unchanged (Home Assistant forgets
    /// states set through the API when it restarts).
    #[serde(default = "default_ha_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

fn default_core_url() -> String {
    "http://supervisor/core/api".into()
}
fn default_sensor_prefix() -> String {
    "offsite".into()
}
fn default_ha_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_ha_refresh() -> Duration {
    Duration::from_secs(600)
}

fn figment_error(e: figment::Error, file: Option<&Path>) -> ConfigError {
    let first = e.into_iter().next();
    let Some(err) = first else {
        return ConfigError::new("invalid configuration");
    };
    let key = err.path.join(".");
    let mut out = ConfigError::at(key.clone(), err.kind.to_string());
    if let Some(meta) = &err.metadata {
        match &meta.source {
            Some(figment::Source::File(path)) => out = out.in_file(path),
            Some(figment::Source::Code(_)) => out = out.in_source("the built-in defaults"),
            _ if meta.name.contains("environment") => {
                let var = format!("OFFSITE_{}", key.to_uppercase().replace('.', "__"));
                out = out.in_source(&format!("environment variable {var}"));
            }
            _ => {
                if let Some(file) = file {
                    out = out.in_file(file);
                }
            }
        }
    }
    out
}

/// Where in a TOML text things are, for messages: the 1-based line of a byte offset, and the
/// dotted key in effect there. A small scanner (tables, inline tables, quoted strings), enough
/// to point at the line the user has to change.
pub(crate) mod toml_pos {
    /// The 1-based line of byte `offset`.
    pub fn line_of_offset(text: &str, offset: usize) -> usize {
        text.as_bytes()[..offset.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn unquote(key: &str) -> String {
        key.split('.')
            .map(|p| p.trim().trim_matches('"').trim_matches('\''))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The table header in effect on line `line` (1-based): `schedule` under `[schedule]`.
    fn table_at(text: &str, line: usize) -> String {
        text.lines()
            .take(line)
            .filter_map(|l| {
                let l = l.trim();
                l.starts_with('[')
                    .then(|| unquote(l.trim_start_matches('[').split(']').next().unwrap_or("")))
            })
            .last()
            .unwrap_or_default()
    }

    /// The keys open at the end of `prefix` (part of one line): `schedule = { every = ` gives
    /// `schedule.every`.
    fn keys_open(prefix: &str) -> Vec<String> {
        let mut stack: Vec<String> = vec![String::new()];
        let mut start = 0;
        let mut quote: Option<char> = None;
        for (i, c) in prefix.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '=') => {
                    if let Some(top) = stack.last_mut() {
                        *top = unquote(&prefix[start..i]);
                    }
                }
                (None, '{') => {
                    stack.push(String::new());
                    start = i + 1;
                }
                (None, '}') => {
                    stack.pop();
                    start = i + 1;
                }
                (None, ',') => start = i + 1,
                _ => {}
            }
        }
        stack.into_iter().filter(|k| !k.is_empty()).collect()
    }

    fn join(table: &str, keys: &[String]) -> String {
        std::iter::once(table.to_string())
            .chain(keys.iter().cloned())
            .filter(|k| !k.is_empty())
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The dotted key and line a TOML deserialization error is about.
    pub fn of_error(text: &str, e: &toml::de::Error) -> (Option<String>, Option<usize>) {
        let Some(span) = e.span() else {
            return (None, None);
        };
        let start = span.start.min(text.len());
        let line = line_of_offset(text, start);
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let table = table_at(text, line);
        let message = e.message();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            // The span is the table that lacks it; a line would point nowhere useful.
            return (Some(join(&table, &[field.to_string()])), None);
        }
        let mut keys = keys_open(&text[line_start..start]);
        if message.starts_with("unknown field") || message.starts_with("duplicate key") {
            // The span is the key itself.
            keys.push(unquote(&text[start..span.end.min(text.len())]));
        }
        let key = join(&table, &keys);
        (Some(key).filter(|k| !k.is_empty()), Some(line))
    }

    /// The line where `key` (dotted) is set, or its table or inline table begins.
    pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
        let mut table = String::new();
        for (n, l) in text.lines().enumerate() {
            let t = l.trim();
            let full = if t.starts_with('[') {
                table = unquote(t.trim_start_matches('[').split(']').next().unwrap_or(""));
                table.clone()
            } else if let Some((k, _)) = t.split_once('=') {
                join(&table, &[unquote(k)])
            } else {
                continue;
            };
            if !full.is_empty() && (full == key || key.starts_with(&format!("{full}."))) {
                // A table header matches its own key only, not every key inside it.
                if t.starts_with('[') && full != key {
                    continue;
                }
                return Some(n + 1);
            }
        }
        None
    }
}

/// `[api]`'s per-key defaults. (`ApiConfig` carries no serde defaults of its own, so they are
/// given here, one key each: they fill in keys, never sections.)
fn api_defaults() -> Figment {
    Figment::new()
        .merge(Serialized::default("api.enabled", true))
        .merge(Serialized::default("api.listen", "127.0.0.1:8099"))
}

/// A layer whose alternative tables (`ALTERNATIVE_TABLES`) give way to the layer above.
struct GivesWay<P> {
    inner: P,
    tables: Vec<&'static str>,
}

impl<P: Provider> GivesWay<P> {
    fn under(inner: P, above: &Figment) -> Self {
        let tables = ALTERNATIVE_TABLES
            .iter()
            .filter(|(table, keys)| keys.iter().any(|k| above.contains(&format!("{table}.{k}"))))
            .map(|(table, _)| *table)
            .collect();
        GivesWay { inner, tables }
    }
}

impl<P: Provider> Provider for GivesWay<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for table in &self.tables {
                let (parent, key) = table.rsplit_once('.').unwrap_or(("", table));
                let mut at = Some(&mut *dict);
                for part in parent.split('.').filter(|p| !p.is_empty()) {
                    at = match at.and_then(|d| d.get_mut(part)) {
                        Some(Value::Dict(_, d)) => Some(d),
                        _ => None,
                    };
                }
                if let Some(d) = at {
                    d.remove(key);
                }
            }
        }
        Ok(data)
    }

    fn profile(&self) -> Option<Profile> {
        self.inner.profile()
    }
}

/// The built-in example configuration with its folders placed in `data_dir`.
fn builtin(data_dir: &Path) -> toml::Table {
    let mut table: toml::Table = BUILTIN.parse().expect("config/builtin.toml is valid TOML");
    for section in ["sources", "destinations"] {
        let Some(toml::Value::Table(entries)) = table.get_mut(section) else {
            continue;
        };
        for (_, entry) in entries.iter_mut() {
            if let Some(toml::Value::String(path)) = entry.get_mut("path") {
                let placed = data_dir.join(path.as_str()).display().to_string();
                *path = placed;
            }
        }
    }
    table
}

impl Config {
    /// Per-key defaults, then `file` (which must exist when given; without one the built-in
    /// example configuration), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_backup_env(
            file,
            Env::prefixed("OFFSITE_").split("__").ignore(&["config"]),
            &std::env::vars().collect(),
        )
    }

    /// Like `load`, with the environment layer given (tests pass their own).
    pub fn load_with(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        Self::load_with_backup_env(file, env, &BTreeMap::new())
    }

    /// Like `load_with`, with the FR-011 `BACKUP_*` variables taken from `vars`: they make
    /// `[databases.backup]` (and `[destinations.sharepoint]`), above the file and below the
    /// `OFFSITE_*` variables.
    pub fn load_with_backup_env(
        file: Option<&Path>,
        env: Env,
        vars: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let backup = crate::sources::postgres::from_backup_env(vars).map_err(|e| ConfigError {
            file: Some("the environment".into()),
            ..ConfigError::at(e.var, e.message)
        })?;
        let above = Figment::from(env.clone());
        let mut figment = api_defaults();
        let mut text_of_file = None;
        if let Some(path) = file {
            if !path.is_file() {
                return Err(
                    ConfigError::new("the file does not exist or is not a regular file")
                        .in_file(path),
                );
            }
            // Read it ourselves so that a syntax error names the file and line plainly.
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(format!("cannot read: {e}")).in_file(path))?;
            if let Err(e) = text.parse::<toml::Table>() {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                    .unwrap_or(0);
                return Err(ConfigError::new(format!(
                    "not valid TOML (line {line}): {}",
                    e.message()
                ))
                .in_file(path));
            }
            figment = figment.merge(GivesWay::under(Toml::file_exact(path), &above));
            text_of_file = Some(text);
        } else {
            let data_dir = above
                .extract_inner::<PathBuf>("data_dir")
                .unwrap_or_else(|_| default_data_dir());
            figment = figment.merge(GivesWay::under(
                Serialized::defaults(builtin(&data_dir)),
                &above,
            ));
        }
        if let Some(backup) = backup {
            figment = figment.merge(Serialized::defaults(backup));
        }
        // A problem in the file is shown with the line of its key.
        let on_line = |e: ConfigError| match (&text_of_file, file, &e.key) {
            (Some(text), Some(path), Some(key))
                if e.file.as_deref() == Some(path.display().to_string().as_str()) =>
            {
                let line = toml_pos::line_of_key(text, key);
                e.on_line(line)
            }
            _ => e,
        };
        let mut config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| on_line(figment_error(e, file)))?;
        config.source = file.map(Path::to_path_buf);
        config.add_builtin_queues();
        config.validate().map_err(on_line)?;
        Ok(config)
    }

    /// The per-key defaults with `overlay` (TOML) on top, validated; no file, no environment,
    /// no example flow.
    pub fn from_overlay(overlay: &str) -> Result<Config, ConfigError> {
        let figment = api_defaults().merge(Toml::string(overlay));
        let mut config: Config = figment.extract().map_err(|e| figment_error(e, None))?;
        config.add_builtin_queues();
        config.validate()?;
        Ok(config)
    }

    fn add_builtin_queues(&mut self) {
        for (name, concurrency) in BUILTIN_QUEUES {
            self.queues
                .entry(name.to_string())
                .or_insert(QueueConfig { concurrency });
        }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let e = ConfigError::at(key, message);
        match &self.source {
            Some(path) => e.in_file(path),
            None => e,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api.enabled
            && !self.api.listen.ip().is_loopback()
            && self.api.token.is_none()
            && self.api.allow_from.is_empty()
        {
            return Err(self.err(
                "api.token",
                format!(
                    "a token is required because api.listen ({}) is not a loopback address",
                    self.api.listen
                ),
            ));
        }
        if let Some(token) = &self.api.token
            && token.expose().len() < 16
        {
            return Err(self.err("api.token", "must be at least 16 characters"));
        }
        for (name, q) in &self.queues {
            if !(1..=256).contains(&q.concurrency) {
                return Err(self.err(
                    &format!("queues.{name}.concurrency"),
                    "must be between 1 and 256",
                ));
            }
        }
        for (kind, k) in &self.kinds {
            if let Some(queue) = &k.queue
                && !self.queues.contains_key(queue)
            {
                return Err(self.err(
                    &format!("kinds.{kind}.queue"),
                    format!("queue {queue:?} is not configured under [queues]"),
                ));
            }
            if let Some(p) = k.priority
                && !(1..=4).contains(&p)
            {
                return Err(self.err(&format!("kinds.{kind}.priority"), "must be between 1 and 4"));
            }
            if let Some(m) = k.max_attempts
                && !(1..=1000).contains(&m)
            {
                return Err(self.err(
                    &format!("kinds.{kind}.max_attempts"),
                    "must be between 1 and 1000",
                ));
            }
        }
        if self.engine.lease < Duration::from_secs(3) {
            return Err(self.err("engine.lease", "must be at least 3s"));
        }
        if self.engine.poll_interval.is_zero() || self.engine.watch_interval.is_zero() {
            return Err(self.err(
                "engine.poll_interval",
                "intervals must be greater than zero",
            ));
        }
        if self.prune.interval.is_zero() {
            return Err(self.err("prune.interval", "must be greater than zero"));
        }
        if let Some(tz) = &self.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            return Err(self.err(
                "timezone",
                format!("unknown time zone {tz:?} (use an IANA name such as Europe/Berlin)"),
            ));
        }
        for (name, d) in &self.destinations {
            let key = |k: &str| format!("destinations.{name}.{k}");
            match &d.kind {
                DestinationKind::Dropbox(_)
                    if d.chunk_mib == 0 || d.chunk_mib % 4 != 0 || d.chunk_mib > 148 =>
                {
                    return Err(
                        self.err(&key("chunk_mib"), "must be a multiple of 4 from 4 to 148")
                    );
                }
                DestinationKind::S3(_) if !(5..=5120).contains(&d.chunk_mib) => {
                    return Err(self.err(
                        &key("chunk_mib"),
                        "must be from 5 to 5120 (S3 parts are 5 MiB to 5 GiB)",
                    ));
                }
                DestinationKind::SharePoint(_) if !(1..=59).contains(&d.chunk_mib) => {
                    return Err(self.err(
                        &key("chunk_mib"),
                        "must be from 1 to 59 (Graph fragments are below 60 MiB; each is rounded up to a multiple of 320 KiB)",
                    ));
                }
                _ if d.chunk_mib == 0 || d.chunk_mib > 5120 => {
                    return Err(self.err(&key("chunk_mib"), "must be from 1 to 5120"));
                }
                _ => {}
            }
            if let Err((field, message)) = d.kind.validate() {
                return Err(self.err(&key(&field), message));
            }
        }
        if let Some(s) = self.snapshots.as_ref().filter(|s| s.enabled) {
            if s.source.is_empty() {
                return Err(self.err(
                    "snapshots.source",
                    "name the source to scan, one of those under [sources]",
                ));
            }
            if !self.sources.contains_key(&s.source) {
                return Err(self.err(
                    "snapshots.source",
                    format!("{:?} is not a source under [sources]", s.source),
                ));
            }
            if let Some(d) = s
                .destinations
                .iter()
                .find(|d| !self.destinations.contains_key(*d))
            {
                return Err(self.err(
                    "snapshots.destinations",
                    format!("{d:?} is not a destination under [destinations]"),
                ));
            }
        }
        for (name, db) in &self.databases {
            if let Err((field, message)) = db.validate() {
                return Err(self.err(&format!("databases.{name}.{field}"), message));
            }
            if !self.destinations.contains_key(&db.destination) {
                return Err(self.err(
                    &format!("databases.{name}.destination"),
                    format!(
                        "{:?} is not a destination under [destinations]",
                        db.destination
                    ),
                ));
            }
        }
        for (name, d) in &self.devices {
            if !crate::devices::valid_name(name) {
                return Err(self.err(
                    &format!("devices.{name}"),
                    "a device name is letters, digits, '-' and '_' (it names a directory)",
                ));
            }
            if let Err((field, message)) = d.validate() {
                return Err(self.err(&format!("devices.{name}.{field}"), message));
            }
        }
        if self.google_photos.is_some() {
            return Err(self.err(
                "google_photos",
                crate::sources::google_drive::PHOTOS_EXPLAINED,
            ));
        }
        for (name, g) in &self.google_drive {
            if !crate::devices::valid_name(name) {
                return Err(self.err(
                    &format!("google_drive.{name}"),
                    "a Google Drive source's name is letters, digits, '-' and '_'",
                ));
            }
            if let Err((field, message)) = g.validate() {
                return Err(self.err(&format!("google_drive.{name}.{field}"), message));
            }
            for (i, d) in g.destinations.iter().enumerate() {
                let field = format!("google_drive.{name}.destinations[{i}]");
                match self.destinations.get(d).map(|c| &c.kind) {
                    None => {
                        return Err(self.err(
                            &field,
                            format!("{d:?} is not a destination under [destinations]"),
                        ));
                    }
                    Some(DestinationKind::S3(_) | DestinationKind::Folder(_)) => {}
                    Some(_) => {
                        return Err(self.err(
                            &field,
                            format!(
                                "{d:?} is not an S3 or folder destination: a mirror renames and \
                                 soft-deletes by server-side copies, which only those offer here"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(ha) = self.homeassistant.as_ref().filter(|h| h.enabled) {
            if url::Url::parse(&ha.url).is_err() {
                return Err(self.err("homeassistant.url", format!("{:?} is not a URL", ha.url)));
            }
            let p = &ha.sensor_prefix;
            if p.is_empty()
                || p.starts_with('_')
                || p.ends_with('_')
                || p.contains("__")
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(self.err(
                    "homeassistant.sensor_prefix",
                    "use lower-case letters, digits and single '_' inside (it becomes part of entity ids)",
                ));
            }
            let mut seen: BTreeMap<String, &String> = BTreeMap::new();
            for name in self.destinations.keys() {
                let part = crate::naming::entity_part(name);
                if let Some(other) = seen.insert(part.clone(), name) {
                    return Err(self.err(
                        &format!("destinations.{name}"),
                        format!(
                            "its Home Assistant sensor would be sensor.{}_backups_{part}, the same as destination {other:?}'s; rename one",
                            p
                        ),
                    ));
                }
            }
            if ha.interval < Duration::from_millis(100) || ha.refresh < ha.interval {
                return Err(self.err(
                    "homeassistant.interval",
                    "must be at least 100ms, and refresh at least the interval",
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(self.err(
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            ));
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.data_dir.join("offsite.db"))
    }

    /// The configured time zone, else the system's, else UTC.
    pub fn timezone(&self) -> String {
        self.timezone
            .clone()
            .or_else(|| system_timezone(std::env::var("TZ").ok().as_deref()))
            .unwrap_or_else(|| "UTC".into())
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// An error about `key` with this configuration's file attached.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.err(key, message)
    }
}

/// The server's local zone: `TZ` first (the Supervisor sets it for every add-on, while the
/// image's `/etc/localtime` says UTC), then what the system is set to. Only names chrono-tz
/// knows count.
fn system_timezone(tz_env: Option<&str>) -> Option<String> {
    let known = |tz: &str| tz.parse::<chrono_tz::Tz>().is_ok();
    tz_env
        .map(|tz| tz.trim_start_matches(':').to_string())
        .filter(|tz| known(tz))
        .or_else(|| iana_time_zone::get_timezone().ok().filter(|tz| known(tz)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_local_zone_is_read_from_tz_first() {
        assert_eq!(
            super::system_timezone(Some("Europe/Berlin")).as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            super::system_timezone(Some(":America/New_York")).as_deref(),
            Some("America/New_York")
        );
        // A POSIX rule or nonsense falls back to the system's setting, never to the bad name.
        let fallback = super::system_timezone(None);
        assert_eq!(super::system_timezone(Some("CET-1CEST")), fallback);
        assert_eq!(super::system_timezone(Some("Not/AZone")), fallback);
    }
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("OFFSITE_TEST_UNUSED_")
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_with(None, no_env()).expect("defaults are valid");
        assert!(c.api.listen.ip().is_loopback());
        assert!(c.queues.contains_key("default"));
    }

    #[test]
    fn wrong_type_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offsite.toml");
        std::fs::write(&file, "[queues.default]\nconcurrency = \"lots\"\n").unwrap();
        let e = Config::load_with(Some(&file), no_env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("queues.default.concurrency"));
        assert_eq!(e.file.as_deref(), Some(file.display().to_string().as_str()));
        assert!(e.message.contains("lots"), "{e}");
    }

    #[test]
    fn public_listen_needs_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offsite.toml");
        std::fs::write(&file, "[api]\nlisten = \"0.0.0.0:8099\"\n").unwrap();
        let e = Config::load_with(Some(&file), no_env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("api.token"));
    }

    #[test]
    fn unknown_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offsite.toml");
        std::fs::write(
            &file,
            "[log]\nlevel = \"info\"\n[api]\nlisen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let e = Config::load_with(Some(&file), no_env()).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        assert_eq!(e.line, Some(4), "the line of the wrong key: {e}");
    }

    #[test]
    fn destinations_whose_sensors_would_collide_are_refused() {
        let e = Config::from_overlay(
            "[homeassistant]\nenabled = true\ntoken = \"t\"\n\
             [destinations.\"my-box\"]\ntype = \"folder\"\npath = \"/tmp/a\"\n\
             [destinations.my_box]\ntype = \"folder\"\npath = \"/tmp/b\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("destinations.my_box"), "{e}");
        assert!(e.message.contains("sensor.offsite_backups_my_box"), "{e}");
    }

    fn load_file(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offsite.toml");
        std::fs::write(&file, text).unwrap();
        Config::load_with(Some(&file), no_env())
    }

    #[test]
    fn each_destination_kind_takes_only_its_own_settings() {
        let s3 = "[destinations.eu]\ntype = \"s3\"\nregion = \"eu-central-1\"\nbucket = \"b-1\"\n";
        let c = load_file(&format!(
            "{s3}max_backups = 3\nthrottle_bytes_per_sec = 10\n"
        ))
        .unwrap();
        let d = &c.destinations["eu"];
        assert!(matches!(d.kind, DestinationKind::S3(_)));
        assert_eq!(
            (d.max_backups, d.throttle_bytes_per_sec, d.chunk_mib),
            (3, 10, 8)
        );
        let e = load_file(&format!("{s3}app_key = \"abc\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("destinations.eu") && e.contains("unknown field `app_key`"),
            "{e}"
        );
        let e = load_file(&format!("{s3}chunk_mib = 4\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("destinations.eu.chunk_mib") && e.contains("5 to 5120"),
            "{e}"
        );
        let e = load_file("[destinations.d]\ntype = \"dropbox\"\npath = \"/B\"\nbucket = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bucket`"), "{e}");
        let e = load_file("[destinations.d]\ntype = \"ftp\"\npath = \"/B\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `ftp`"), "{e}");
        let e = load_file("[destinations.d]\npath = \"/B\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `type`"), "{e}");
    }

    #[test]
    fn without_a_file_the_example_flow_lives_in_the_data_dir() {
        let c = Config::load_with(None, no_env()).unwrap();
        let SourceConfig::Folder { path } = &c.sources["inbox"] else {
            panic!("the example reads a folder")
        };
        assert_eq!(path, Path::new("offsite-data/inbox"));
        let DestinationKind::Folder(outbox) = &c.destinations["outbox"].kind else {
            panic!("the example writes to a folder")
        };
        assert_eq!(outbox.path, Path::new("offsite-data/outbox"));
        let b = builtin(Path::new("/srv/offsite"));
        assert_eq!(
            b["sources"]["inbox"]["path"].as_str(),
            Some("/srv/offsite/inbox")
        );
        assert_eq!(
            b["destinations"]["outbox"]["path"].as_str(),
            Some("/srv/offsite/outbox")
        );
    }

    #[test]
    fn a_config_file_gets_no_built_in_sections() {
        let c = load_file("data_dir = \"/var/lib/offsite\"\n[queues.default]\nconcurrency = 2\n")
            .unwrap();
        assert!(c.sources.is_empty(), "{:?}", c.sources);
        assert!(c.destinations.is_empty(), "{:?}", c.destinations);
        assert!(c.snapshots.is_none());
        // Per-key defaults still fill what the file leaves out.
        assert_eq!(c.queues["default"].concurrency, 2);
        assert_eq!(c.queues["uploads"].concurrency, 1, "built-in queues stay");
        assert_eq!(c.engine.lease, Duration::from_secs(30));
        assert_eq!(c.log.level, "info");
        assert!(c.api.enabled && c.api.listen.ip().is_loopback());
    }

    #[test]
    fn a_written_schedule_is_taken_as_written() {
        let flow = "[sources.s]\ntype = \"folder\"\npath = \"/tmp/s\"\n\
                    [destinations.d]\ntype = \"folder\"\npath = \"/tmp/d\"\n\
                    [snapshots]\nsource = \"s\"\ndestinations = [\"d\"]\n";
        for (schedule, keys) in [
            ("cron = \"0 3 * * *\"", vec!["cron"]),
            (
                "weekdays = [\"mon\"]\nat = \"02:15\"",
                vec!["at", "weekdays"],
            ),
        ] {
            let c = load_file(&format!("{flow}[snapshots.schedule]\n{schedule}\n")).unwrap();
            let s = c.snapshots.unwrap();
            let written: Vec<&str> = s
                .schedule
                .as_table()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(written, keys, "nothing built in merged into {schedule}");
            assert!(s.enabled && s.scan_on_start);
        }
        let c = load_file(flow).unwrap();
        assert_eq!(
            c.snapshots.unwrap().schedule,
            default_snapshot_schedule(),
            "a section without a schedule gets the default one"
        );
    }

    #[test]
    fn a_schedule_above_replaces_the_one_below() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offsite.toml");
        std::fs::write(
            &file,
            "[snapshots]\nenabled = false\n[snapshots.schedule]\nevery = \"2h\"\ntimezone = \"UTC\"\n",
        )
        .unwrap();
        let above = Figment::from(Serialized::default("snapshots.schedule.cron", "0 3 * * *"));
        let layered: Config = api_defaults()
            .merge(GivesWay::under(Toml::file_exact(&file), &above))
            .merge(above.clone())
            .extract()
            .unwrap();
        let schedule = layered.snapshots.unwrap().schedule;
        assert_eq!(schedule.as_table().unwrap().len(), 1, "{schedule}");
        assert_eq!(schedule["cron"].as_str(), Some("0 3 * * *"));
        // A key that is no alternative (timezone) merges as usual.
        let above = Figment::from(Serialized::default(
            "snapshots.schedule.timezone",
            "Europe/Berlin",
        ));
        let layered: Config = api_defaults()
            .merge(GivesWay::under(Toml::file_exact(&file), &above))
            .merge(above.clone())
            .extract()
            .unwrap();
        let schedule = layered.snapshots.unwrap().schedule;
        assert_eq!(schedule["every"].as_str(), Some("2h"));
        assert_eq!(schedule["timezone"].as_str(), Some("Europe/Berlin"));
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let example = Config::load_with(
            Some(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/offsite.example.toml"
            ))),
            no_env(),
        )
        .unwrap();
        let defaults = Config::from_overlay("").unwrap();
        let show = |c: &Config| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                c.data_dir, c.jobs_dir, c.api.listen, c.log, c.engine, c.queues, c.prune
            )
        };
        assert_eq!(show(&example), show(&defaults));
    }

    #[test]
    fn secret_debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2hunter2hunter2")), "***");
    }
}
