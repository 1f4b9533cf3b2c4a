//! `db_dump`: a PostgreSQL database dumped (plain SQL) on its weekdays at a quarter hour to an
//! external drive ([`crate::sources::postgres`]), then uploaded through the one copy loop to a
//! destination, then removed from the drive (FR-011).
//!
//! - Each `[databases.<name>]` becomes the schedule `db_dump.<name>` ([`schedule`]).
//! - Upload and cleanup: while the job has attempts left the dump stays (it is the resume
//!   source); after the final outcome it is removed. Every outcome is one log line with
//!   `user=*system component=Backup` ([`outcome`]).

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Kind, destination_configured, services::Services};
use crate::{
    config::ConfigError,
    logging::BACKUP_TARGET as TARGET,
    queue::{FieldError, JobArgs, JobContext, JobError, KindSettings, Progress, Worker},
    sources::postgres::{
        STAMP_LEN, default_retries, dump, dump_prefix, file_name, parse_day, remove_partials,
    },
    transfer::{
        TransferError,
        checkpoint::CopyCheckpoint,
        copy::{Copy, copy},
        spool::Spool,
    },
};

pub use crate::sources::postgres::{DatabaseConfig, DumpError, ENV_DATABASE};

/// Schedules made from `[databases.<name>]` are called this plus the name.
pub const SCHEDULE_PREFIX: &str = "db_dump.";

/// The schedule of `[databases.<name>]`: the engine's weekday schedule, no backfill.
pub fn schedule(
    name: &str,
    db: &DatabaseConfig,
    registry: &crate::queue::Registry,
    config: &crate::config::Config,
) -> Result<crate::queue::store::ScheduleDef, ConfigError> {
    let days: Vec<toml::Value> = db
        .days
        .iter()
        .filter_map(|d| parse_day(d).ok())
        .map(|d| toml::Value::String(d.to_string().to_lowercase()))
        .collect();
    let mut table = toml::Table::new();
    table.insert("weekdays".into(), toml::Value::Array(days));
    table.insert("at".into(), toml::Value::String(db.time.trim().into()));
    if let Some(tz) = &db.timezone {
        table.insert("timezone".into(), toml::Value::String(tz.clone()));
    }
    let job = crate::queue::EnqueueRequest {
        kind: DbDumpArgs::KIND.into(),
        args: json!({ "database": name }),
        ..Default::default()
    };
    let mut def = crate::queue::scheduler::config_schedule(
        &format!("{SCHEDULE_PREFIX}{name}"),
        &format!("configuration [databases.{name}]"),
        toml::Value::Table(table),
        &job,
        registry,
        &config.timezone(),
    )
    .map_err(|e| {
        let key = e.key.as_deref().map(|k| match k {
            "schedule.weekdays" => "days",
            "schedule.at" => "time",
            "schedule.timezone" => "timezone",
            k => k.trim_start_matches("args."),
        });
        config.error(
            &format!("databases.{name}.{}", key.unwrap_or("")),
            e.message,
        )
    })?;
    def.max_attempts = Some(i64::from(db.retries) + 1);
    def.enabled = db.enabled;
    Ok(def)
}

// ------------------------------------------------------------------ the kind

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DbDumpArgs {
    /// A name under `[databases]`.
    pub database: String,
}

impl JobArgs for DbDumpArgs {
    const KIND: &'static str = "db_dump";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "uploads".into(),
            max_attempts: default_retries() as i64 + 1,
            priority: 2,
            timeout: None,
            stall_timeout: Some(std::time::Duration::from_secs(600)),
        }
    }
    fn tags(&self) -> Vec<String> {
        vec![format!("database:{}", self.database)]
    }
    fn describe(&self) -> String {
        format!("dump of database {}", self.database)
    }
}

impl Kind for DbDumpArgs {
    type Worker = DbDumpWorker;
    fn worker(services: &Arc<Services>) -> DbDumpWorker {
        DbDumpWorker(services.clone())
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        let Some(db) = services.database(&self.database) else {
            return Err(FieldError::new(
                "database",
                format!(
                    "database {:?} is not configured under [databases]",
                    self.database
                ),
            ));
        };
        destination_configured(services, "database", &db.destination)
    }
    /// The section's `retries` (plus the first attempt), as its schedule's jobs get.
    fn max_attempts(&self, services: &Services) -> Option<i64> {
        services
            .database(&self.database)
            .map(|db| i64::from(db.retries) + 1)
    }
}

pub struct DbDumpWorker(pub Arc<Services>);

/// The first checkpoint of a job, saved once the dump is on the drive (the copy's own
/// checkpoints name the file too, in their remote path).
#[derive(Serialize, Deserialize)]
struct DumpCheckpoint {
    dump: String,
}

/// The dump file a db_dump job made, from its checkpoint (for the views, and for the job's
/// later attempts).
pub fn dump_file_of(checkpoint: Option<serde_json::Value>) -> Option<String> {
    earlier_dump(checkpoint)
}

/// The dump file this job made in an earlier attempt, from its checkpoint.
fn earlier_dump(checkpoint: Option<serde_json::Value>) -> Option<String> {
    let v = checkpoint?;
    if let Ok(d) = serde_json::from_value::<DumpCheckpoint>(v.clone()) {
        return Some(d.dump);
    }
    let cp = serde_json::from_value::<CopyCheckpoint>(v).ok()?;
    let name = cp.remote_path.rsplit('/').next()?.to_string();
    name.ends_with(".sql").then_some(name)
}

/// What happened, for the outcome lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    DumpFailed,
    Dumped,
    UploadSucceeded,
    UploadFailed,
    UploadFailedWillRetry,
    CleanupFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::DumpFailed => "dump_failed",
            Outcome::Dumped => "dumped",
            Outcome::UploadSucceeded => "upload_succeeded",
            Outcome::UploadFailed => "upload_failed",
            Outcome::UploadFailedWillRetry => "upload_failed_will_retry",
            Outcome::CleanupFailed => "cleanup_failed",
        }
    }
}

/// One outcome line: `user=*system component=Backup outcome=… file=… size=… duration=…`, and
/// on failure `error=…` with its `cause` chain.
pub fn outcome(
    what: Outcome,
    database: &str,
    file: &str,
    size: Option<u64>,
    took: std::time::Duration,
    error: Option<&DumpError>,
) {
    let duration = format!("{:.3}s", took.as_secs_f64());
    let size = size
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    let (message, cause) = match error {
        Some(e) => (e.message.as_str(), e.causes.join(": ")),
        None => ("", String::new()),
    };
    macro_rules! line {
        ($level:ident, $text:literal) => {
            tracing::$level!(target: TARGET, user = "*system", component = "Backup",
                outcome = what.as_str(), database, file, size = %size, duration = %duration,
                error = message, cause = %cause, $text)
        };
    }
    match what {
        Outcome::Dumped => line!(info, "database dump written"),
        Outcome::UploadSucceeded => line!(info, "backup uploaded"),
        Outcome::UploadFailedWillRetry => {
            line!(warn, "backup upload failed; will retry, the dump stays")
        }
        Outcome::DumpFailed => line!(error, "database dump failed"),
        Outcome::UploadFailed => line!(error, "backup upload failed"),
        Outcome::CleanupFailed => line!(error, "could not remove the local dump"),
    }
}

impl From<DumpError> for JobError {
    fn from(e: DumpError) -> Self {
        if e.retry {
            JobError::Retryable(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<&JobError> for DumpError {
    fn from(e: &JobError) -> Self {
        let text = e.to_string();
        let mut parts = text.splitn(2, ": ");
        let message = parts.next().unwrap_or_default().to_string();
        let mut d = DumpError::new(message, true);
        if let Some(rest) = parts.next() {
            d = d.because(rest);
        }
        d
    }
}

/// Whether the job gets another attempt after this error (then the dump stays).
fn will_retry(ctx: &JobContext, e: &JobError) -> bool {
    match e {
        JobError::Retryable(_) => ctx.attempt() < ctx.max_attempts(),
        JobError::Snooze { .. } | JobError::Interrupted | JobError::LeaseLost => true,
        JobError::Permanent(_) | JobError::Cancelled(_) => false,
    }
}

impl Worker<DbDumpArgs> for DbDumpWorker {
    async fn work(&self, ctx: JobContext, args: DbDumpArgs) -> Result<(), JobError> {
        let services = &self.0;
        let db = services.database(&args.database).ok_or_else(|| {
            JobError::Permanent(format!(
                "database {:?} is not configured under [databases]",
                args.database
            ))
        })?;
        let tz = db
            .timezone
            .clone()
            .unwrap_or_else(|| services.timezone().to_string());
        let db_name = db.database_name(&args.database);
        let earlier = earlier_dump(ctx.checkpoint::<serde_json::Value>());
        let resumed = earlier.is_some();
        let name = earlier.unwrap_or_else(|| file_name(&db_name, Utc::now(), &tz));
        let spool = Spool::at(db.external_path.join(&name));

        // Only this job's own earlier dump is uploaded as it is; a file of the same name that
        // another job left (a kept dump of the same minute) is replaced by a fresh dump.
        if !(resumed && spool.is_complete().await) {
            let started = Instant::now();
            let alive = {
                let ctx = ctx.clone();
                std::sync::Arc::new(move || ctx.touch())
            };
            let data = ctx.store().path().parent().map(|p| p.to_path_buf());
            match dump(db, &args.database, &spool, alive, data.as_deref()).await {
                Ok(size) => {
                    outcome(
                        Outcome::Dumped,
                        &args.database,
                        &name,
                        Some(size),
                        started.elapsed(),
                        None,
                    );
                }
                Err(e) => {
                    outcome(
                        Outcome::DumpFailed,
                        &args.database,
                        &name,
                        None,
                        started.elapsed(),
                        Some(&e),
                    );
                    return Err(e.into());
                }
            }
            ctx.save_checkpoint(&DumpCheckpoint { dump: name.clone() })
                .await?;
        }
        let size = tokio::fs::metadata(spool.path())
            .await
            .ok()
            .map(|m| m.len());

        let started = Instant::now();
        let result = self.upload(&ctx, db, &name, &spool).await;
        match &result {
            Ok(_) => {
                outcome(
                    Outcome::UploadSucceeded,
                    &args.database,
                    &name,
                    size,
                    started.elapsed(),
                    None,
                );
                self.cleanup(db, &args.database, &name, Some(ctx.store()))
                    .await;
            }
            Err(e) if will_retry(&ctx, e) => {
                outcome(
                    Outcome::UploadFailedWillRetry,
                    &args.database,
                    &name,
                    size,
                    started.elapsed(),
                    Some(&e.into()),
                );
            }
            Err(e) => {
                outcome(
                    Outcome::UploadFailed,
                    &args.database,
                    &name,
                    size,
                    started.elapsed(),
                    Some(&e.into()),
                );
                self.cleanup(db, &args.database, &name, None).await;
            }
        }
        result
    }

    /// Cancelled, or out of time: the dump (and any partial one) goes.
    async fn abandoned(&self, args: DbDumpArgs, checkpoint: Option<serde_json::Value>) {
        let Some(db) = self.0.database(&args.database) else {
            return;
        };
        if let Some(name) = earlier_dump(checkpoint) {
            self.cleanup(db, &args.database, &name, None).await;
        }
        remove_partials(&db.external_path, &db.database_name(&args.database)).await;
    }
}

impl DbDumpWorker {
    async fn upload(
        &self,
        ctx: &JobContext,
        db: &DatabaseConfig,
        name: &str,
        spool: &Spool,
    ) -> Result<(), JobError> {
        let services = &self.0;
        let dest = services.destination(&db.destination)?;
        if let Some(auth) = dest.authorization()
            && !auth.is_authorized()
        {
            return Err(TransferError::Unauthorized(format!(
                "destination {} is waiting for authorization (offsite auth {})",
                db.destination, db.destination
            ))
            .into());
        }
        let root = dest.root().trim_end_matches('/');
        let copied = copy(
            ctx,
            Copy {
                source: spool,
                dest: &**dest,
                remote: format!("{root}/{name}"),
                chunk: services.chunk_size(&db.destination),
                label: format!("{name} → {}", db.destination),
            },
        )
        .await?;
        // The dump is stored: a store hiccup reporting the last progress must not turn that
        // into "upload failed" (and a removed local file).
        if let Err(e) = ctx
            .progress(Progress {
                done: copied.size,
                total: Some(copied.size),
                unit: "bytes",
                message: None,
            })
            .await
        {
            tracing::debug!(error = %e, "could not record the final progress");
        }
        Ok(())
    }

    /// Removes the dump after the upload's final outcome. With `keep_last_local` a successful
    /// one (`uploaded`: the store, to ask) stays and the older ones of this database go
    /// instead — except those another unfinished job still has to upload. A failure is logged
    /// only.
    async fn cleanup(
        &self,
        db: &DatabaseConfig,
        section: &str,
        name: &str,
        uploaded: Option<&crate::queue::Store>,
    ) {
        let dir = &db.external_path;
        let mut doomed = Vec::new();
        if db.keep_last_local
            && let Some(store) = uploaded
        {
            let pending: std::collections::HashSet<String> = match store
                .checkpoints(DbDumpArgs::KIND, false)
                .await
            {
                Ok(cps) => cps
                    .into_iter()
                    .filter_map(|c| earlier_dump(Some(c)))
                    .collect(),
                Err(e) => {
                    // Not knowing which dumps are still owed, remove none.
                    tracing::warn!(error = %e, "cannot tell which dumps are still to upload; keeping the older ones");
                    return;
                }
            };
            let prefix = dump_prefix(&db.database_name(section));
            if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
                while let Ok(Some(e)) = entries.next_entry().await {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n != name
                        && !pending.contains(&n)
                        && n.starts_with(&prefix)
                        && n.ends_with(".sql")
                        && n.len() == prefix.len() + STAMP_LEN
                    {
                        doomed.push(n);
                    }
                }
            }
        } else {
            doomed.push(name.to_string());
        }
        for n in doomed {
            let path = dir.join(&n);
            let started = Instant::now();
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    tracing::info!(target: TARGET, user = "*system", component = "Backup",
                        outcome = "cleaned_up", database = section, file = %n, "local dump removed");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let err = DumpError::new(format!("cannot remove {}", path.display()), true)
                        .because(e);
                    outcome(
                        Outcome::CleanupFailed,
                        section,
                        &n,
                        None,
                        started.elapsed(),
                        Some(&err),
                    );
                }
            }
        }
    }
}
