//! Schedules: `jobs/*.toml` files (and, in add-on mode, options) that enqueue a typed job at
//! every slot of a cron expression, a fixed interval, or weekdays at a time of day.
//!
//! Each fire carries the idempotency key `schedule:{name}:{slot}`, so a restart, or a second
//! worker on the same database, never enqueues a slot twice. A slot missed by more than
//! `MISFIRE_GRACE` (the process was down) is not backfilled: the schedule waits for its next
//! slot.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    executor::Executor,
    registry::{EnqueueRequest, Registry},
    state::{Millis, now_ms, to_datetime},
    store::{Enqueued, ScheduleDef, ScheduleRecord, Store},
};
use crate::config::{ConfigError, toml_pos};

/// A slot fired up to this late still runs (a restart, a busy moment); later ones are skipped.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// When a schedule fires. Stored as JSON in the `schedules` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// A cron expression (`sec min hour day month weekday [year]`; 5-field forms get `0` seconds).
    Cron { expr: String, timezone: String },
    /// Every `secs` seconds, at multiples of the interval since the Unix epoch (UTC).
    Every { secs: u64 },
    /// On these weekdays at `at` (HH:MM, quarter hours) local to `timezone`.
    Weekly {
        days: Vec<Weekday>,
        at: String,
        timezone: String,
    },
}

fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name)
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin)"))
}

fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

fn parse_at(at: &str) -> Result<NaiveTime, String> {
    let time = NaiveTime::parse_from_str(at, "%H:%M")
        .map_err(|_| format!("invalid time {at:?}: expected HH:MM, e.g. 02:15"))?;
    if time.minute() % 15 != 0 {
        return Err(format!(
            "time {at:?} must be on a quarter hour (:00, :15, :30 or :45)"
        ));
    }
    Ok(time)
}

fn parse_weekday(day: &str) -> Result<Weekday, String> {
    Weekday::from_str(day).map_err(|_| format!("unknown weekday {day:?} (use mon, tue, … sun)"))
}

impl ScheduleSpec {
    /// Checks the parts that deserialization alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ScheduleSpec::Cron { expr, timezone } => {
                parse_tz(timezone)?;
                parse_cron(expr).map(|_| ())
            }
            ScheduleSpec::Every { secs } => {
                if *secs < 60 {
                    return Err("interval must be at least 1 minute".into());
                }
                Ok(())
            }
            ScheduleSpec::Weekly { days, at, timezone } => {
                parse_tz(timezone)?;
                parse_at(at)?;
                if days.is_empty() {
                    return Err("weekdays must name at least one day".into());
                }
                Ok(())
            }
        }
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            ScheduleSpec::Cron { expr, timezone } => {
                let tz = parse_tz(timezone).ok()?;
                let schedule = parse_cron(expr).ok()?;
                schedule
                    .after(&after.with_timezone(&tz))
                    .next()
                    .map(|t| t.with_timezone(&Utc))
            }
            ScheduleSpec::Every { secs } => {
                let step = i64::try_from(*secs).ok()?.checked_mul(1000)?;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1) * step;
                Utc.timestamp_millis_opt(next).single()
            }
            ScheduleSpec::Weekly { days, at, timezone } => {
                let tz = parse_tz(timezone).ok()?;
                let time = parse_at(at).ok()?;
                let start = after.with_timezone(&tz).date_naive();
                (0..=8)
                    .filter_map(|offset| start.checked_add_days(chrono::Days::new(offset)))
                    .filter(|date| days.contains(&date.weekday()))
                    .filter_map(|date| {
                        // In a DST gap the wall time does not exist: take the hour after.
                        let local = date.and_time(time);
                        tz.from_local_datetime(&local).earliest().or_else(|| {
                            tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                                .earliest()
                        })
                    })
                    .map(|t| t.with_timezone(&Utc))
                    .find(|t| *t > after)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ScheduleSpec::Cron { expr, timezone } => format!("cron {expr} ({timezone})"),
            ScheduleSpec::Every { secs } => match *secs {
                86400 => "every day".into(),
                s if s % 86400 == 0 => format!("every {} days", s / 86400),
                s if s % 3600 == 0 => format!("every {}h", s / 3600),
                s if s % 60 == 0 => format!("every {}m", s / 60),
                s => format!(
                    "every {}",
                    humantime::format_duration(Duration::from_secs(s))
                ),
            },
            ScheduleSpec::Weekly { days, at, timezone } => {
                let days: Vec<String> = days.iter().map(|d| d.to_string()).collect();
                format!("{} at {at} ({timezone})", days.join(", "))
            }
        }
    }
}

/// The `[schedule]` table of a schedule file: exactly one of `cron`, `every`, `weekdays`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleForm {
    cron: Option<String>,
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    weekdays: Option<Vec<String>>,
    at: Option<String>,
    timezone: Option<String>,
}

/// One `jobs/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// Defaults to the file name without `.toml`.
    name: Option<String>,
    kind: String,
    #[serde(default = "empty_table")]
    args: toml::Value,
    queue: Option<String>,
    priority: Option<i64>,
    max_attempts: Option<i64>,
    #[serde(default = "yes")]
    enabled: bool,
    schedule: ScheduleForm,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(Default::default())
}

fn yes() -> bool {
    true
}

impl ScheduleForm {
    fn into_spec(self, default_tz: &str) -> Result<ScheduleSpec, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::at(format!("schedule.{key}"), msg);
        let timezone = self.timezone.unwrap_or_else(|| default_tz.to_string());
        let spec = match (self.cron, self.every, self.weekdays) {
            (Some(expr), None, None) => ScheduleSpec::Cron { expr, timezone },
            (None, Some(every), None) => ScheduleSpec::Every {
                secs: every.as_secs(),
            },
            (None, None, Some(days)) => {
                let Some(at) = self.at else {
                    return Err(err(
                        "at",
                        "weekdays need a time of day, e.g. at = \"02:15\"".into(),
                    ));
                };
                let days = days
                    .iter()
                    .map(|d| parse_weekday(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err("weekdays", e))?;
                ScheduleSpec::Weekly { days, at, timezone }
            }
            _ => {
                return Err(err(
                    "",
                    "give exactly one of cron, every or weekdays".into(),
                ));
            }
        };
        spec.validate().map_err(|e| {
            let key = match &spec {
                ScheduleSpec::Cron { .. } if e.contains("time zone") => "timezone",
                ScheduleSpec::Cron { .. } => "cron",
                ScheduleSpec::Every { .. } => "every",
                ScheduleSpec::Weekly { .. } if e.contains("time zone") => "timezone",
                ScheduleSpec::Weekly { .. } if e.contains("weekday") => "weekdays",
                ScheduleSpec::Weekly { .. } => "at",
            };
            err(key, e)
        })?;
        Ok(spec)
    }
}

/// A schedule defined in the configuration rather than a schedule file: `schedule` is the
/// `schedule` table (as in a file), `job` the job it enqueues. Errors name keys relative to the
/// section the caller took it from.
pub fn config_schedule(
    name: &str,
    source: &str,
    schedule: toml::Value,
    job: &EnqueueRequest,
    registry: &Registry,
    default_tz: &str,
) -> Result<ScheduleDef, ConfigError> {
    let form: ScheduleForm = schedule
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::at("schedule", e.message().to_string()))?;
    let spec = form.into_spec(default_tz)?;
    let job = registry
        .prepare(job)
        .map_err(|e| ConfigError::at(e[0].field.clone(), e[0].message.clone()))?;
    Ok(ScheduleDef {
        name: name.into(),
        kind: job.kind,
        args: job.args,
        queue: None,
        priority: None,
        max_attempts: None,
        spec: serde_json::to_string(&spec).unwrap_or_default(),
        enabled: true,
        source: source.into(),
    })
}

/// Parses one schedule file's text into a definition; `registry` checks kind and args.
pub fn parse_schedule(
    text: &str,
    file: &Path,
    registry: &Registry,
    default_tz: &str,
) -> Result<ScheduleDef, ConfigError> {
    let parsed: ScheduleFile = toml::from_str(text).map_err(|e| {
        let (key, line) = toml_pos::of_error(text, &e);
        ConfigError::new(e.message().to_string())
            .with_key_opt(key)
            .on_line(line)
            .in_file(file)
    })?;
    // The checks after parsing name a key; the line is where that key is set.
    definition(parsed, file, registry, default_tz).map_err(|e| {
        let line = e
            .key
            .as_deref()
            .and_then(|k| toml_pos::line_of_key(text, k));
        e.on_line(line)
    })
}

fn definition(
    parsed: ScheduleFile,
    file: &Path,
    registry: &Registry,
    default_tz: &str,
) -> Result<ScheduleDef, ConfigError> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("schedule")
        .to_string();
    let name = parsed.name.clone().unwrap_or(stem);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::at(
            "name",
            format!("{name:?} must be letters, digits, '-', '_' or '.'"),
        )
        .in_file(file));
    }
    let spec = parsed
        .schedule
        .into_spec(default_tz)
        .map_err(|e| e.in_file(file))?;
    let args = serde_json::to_value(&parsed.args)
        .map_err(|e| ConfigError::at("args", e.to_string()).in_file(file))?;
    let request = EnqueueRequest {
        kind: parsed.kind.clone(),
        args,
        queue: parsed.queue.clone(),
        priority: parsed.priority,
        max_attempts: parsed.max_attempts,
        ..Default::default()
    };
    let job = registry.prepare(&request).map_err(|errors| {
        let first = &errors[0];
        ConfigError::at(first.field.clone(), first.message.clone()).in_file(file)
    })?;
    Ok(ScheduleDef {
        name,
        kind: job.kind,
        args: job.args,
        queue: parsed.queue,
        priority: parsed.priority,
        max_attempts: parsed.max_attempts,
        spec: serde_json::to_string(&spec).unwrap_or_default(),
        enabled: parsed.enabled,
        source: file.display().to_string(),
    })
}

/// Reads every `*.toml` directly in `dir` (sorted by name). A missing directory means none.
pub fn load_dir(
    dir: &Path,
    registry: &Registry,
    default_tz: &str,
) -> Result<Vec<ScheduleDef>, ConfigError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(format!("cannot read schedule directory: {e}")).in_file(dir)
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut defs: Vec<ScheduleDef> = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(format!("cannot read: {e}")).in_file(&file))?;
        let def = parse_schedule(&text, &file, registry, default_tz)?;
        if let Some(other) = defs.iter().find(|d| d.name == def.name) {
            return Err(ConfigError::at(
                "name",
                format!(
                    "schedule {:?} is already defined in {}",
                    def.name, other.source
                ),
            )
            .on_line(toml_pos::line_of_key(&text, "name"))
            .in_file(&file));
        }
        defs.push(def);
    }
    Ok(defs)
}

/// What the API and CLI show of a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleView {
    pub record: ScheduleRecord,
    pub spec: Option<ScheduleSpec>,
}

pub async fn list(store: &Store) -> Result<Vec<ScheduleView>, crate::queue::store::StoreError> {
    Ok(store
        .schedules()
        .await?
        .into_iter()
        .map(|record| {
            let spec = serde_json::from_str(&record.def.spec).ok();
            ScheduleView { record, spec }
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error("schedule {0:?} does not exist")]
    NotFound(String),
    #[error("schedule {name:?} no longer validates: {message}")]
    Invalid { name: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::queue::store::StoreError),
}

fn request_for(def: &ScheduleDef, key: String) -> EnqueueRequest {
    EnqueueRequest {
        kind: def.kind.clone(),
        args: serde_json::from_str(&def.args).unwrap_or_default(),
        idempotency_key: Some(key),
        queue: def.queue.clone(),
        priority: def.priority,
        max_attempts: def.max_attempts,
        run_at: None,
    }
}

/// Enqueues a schedule's job now, outside its slots.
pub async fn run_now(
    store: &Store,
    registry: &Registry,
    name: &str,
) -> Result<Enqueued, RunNowError> {
    let record = store
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.def.name == name)
        .ok_or_else(|| RunNowError::NotFound(name.into()))?;
    let key = format!("schedule:{name}:now:{}", now_ms());
    let job = registry
        .prepare(&request_for(&record.def, key))
        .map_err(|e| RunNowError::Invalid {
            name: name.into(),
            message: e[0].to_string(),
        })?;
    Ok(store.fire_schedule(name, &job, None, None).await?)
}

/// Fires schedules at their slots until `stop`.
pub struct Scheduler {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub executor: Executor,
}

impl Scheduler {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let wait = match self.tick().await {
                Ok(next) => next,
                Err(e) => {
                    error!(error = %e, "scheduler pass failed");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}

                _ = stop.cancelled() => return,
            }
        }
    }

    /// Fires what is due; returns how long until the next slot (at most a minute).
    pub async fn tick(&self) -> Result<Duration, crate::queue::store::StoreError> {
        let now = now_ms();
        let mut next_wake = now + 60_000;
        for s in self.store.schedules().await? {
            if !s.def.enabled {
                continue;
            }
            let Ok(spec) = serde_json::from_str::<ScheduleSpec>(&s.def.spec) else {
                warn!(schedule = %s.def.name, "stored schedule spec is unreadable; skipping");
                continue;
            };
            let name = &s.def.name;
            let next_from = |t: Millis| {
                spec.next_after(to_datetime(t))
                    .map(|d| d.timestamp_millis())
            };
            match s.next_run_at {
                None => {
                    let next = next_from(now);
                    self.store.set_next_run(name, next).await?;
                    if let Some(n) = next {
                        info!(schedule = %name, next = %to_datetime(n), "scheduled");
                        next_wake = next_wake.min(n);
                    }
                }
                Some(slot) if slot <= now => {
                    let late = now - slot;
                    let next = next_from(slot.max(now - MISFIRE_GRACE.as_millis() as i64))
                        .map(|n| if n <= now { next_from(now) } else { Some(n) })
                        .unwrap_or(None);
                    if late > MISFIRE_GRACE.as_millis() as i64 {
                        warn!(schedule = %name, slot = %to_datetime(slot), "slot missed while offsite was not running; not backfilled");
                        self.store.set_next_run(name, next).await?;
                    } else {
                        let key = format!("schedule:{name}:{}", to_datetime(slot).to_rfc3339());
                        match self.registry.prepare(&request_for(&s.def, key)) {
                            Ok(job) => {
                                let enq = self
                                    .store
                                    .fire_schedule(name, &job, Some(slot), next)
                                    .await?;
                                info!(schedule = %name, job = enq.job.id, deduplicated = enq.deduplicated, "schedule fired");
                                self.executor.wake();
                            }
                            Err(errors) => {
                                error!(schedule = %name, error = %errors[0], "schedule's job does not validate; skipping slot");
                                self.store.set_next_run(name, next).await?;
                            }
                        }
                    }
                    if let Some(n) = next {
                        next_wake = next_wake.min(n);
                    }
                }
                Some(slot) => next_wake = next_wake.min(slot),
            }
        }
        Ok(Duration::from_millis(
            (next_wake - now_ms()).clamp(0, 60_000) as u64,
        ))
    }
}
