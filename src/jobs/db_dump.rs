//! `db_dump`: a PostgreSQL database dumped (plain SQL) on its weekdays at a quarter hour to an
//! external drive ([`crate::sources::postgres`]), then uploaded through the one copy loop to a
//! destination, then removed from the drive (FR-011).
//!
//! - Each `[databases.<name>]` becomes the schedule `db_dump.<name>` ([`schedule`]).
//! - The dump is staged in the job's own hidden file and published under the FR's name, or
//!   `_2`, `_3` … when that is taken, never over a file (`publish`).
//! - Upload and cleanup: while the job has attempts left the dump stays (it is the resume
//!   source); after the final outcome it is removed (or, with `keep_last_local`, named in the
//!   section's keep marker). A sweep removes what no unfinished job names and no section
//!   keeps (`sweep`). Every outcome is one log line with `user=*system component=Backup`
//!   ([`outcome`]), a dump or upload stopped from outside included (`Stopped`).

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Kind, destination_configured, services::Services};
use crate::{
    config::ConfigError,
    logging::BACKUP_TARGET as TARGET,
    queue::{
        FieldError, JobArgs, JobContext, JobError, JobState, KindSettings, Progress, Store, Worker,
        store::JobFilter,
    },
    sources::postgres::{
        DumpFile, default_retries, dump, dump_file, dump_prefix, file_name, numbered, parse_day,
        staging_name, sync_dir,
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
    let mut def = super::section_schedule::<DbDumpArgs>(
        "databases",
        name,
        toml::Value::Table(table),
        json!({ "database": name }),
        |k| {
            match k {
                Some("schedule.weekdays") => "days",
                Some("schedule.at") => "time",
                Some("schedule.timezone") => "timezone",
                Some(k) => k.trim_start_matches("args."),
                None => "",
            }
            .to_string()
        },
        registry,
        config,
    )?;
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
        Self::worker_with(services, &Self::settings())
    }
    fn worker_with(services: &Arc<Services>, settings: &KindSettings) -> DbDumpWorker {
        DbDumpWorker {
            services: services.clone(),
            timeout: settings.timeout,
            stall_timeout: settings.stall_timeout,
            store: std::sync::OnceLock::new(),
        }
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

pub struct DbDumpWorker {
    services: Arc<Services>,
    /// The kind's limits, to name which one stopped an attempt.
    timeout: Option<std::time::Duration>,
    stall_timeout: Option<std::time::Duration>,
    /// The queue's store, known once a job ran (for the sweep after an abandoned one).
    store: std::sync::OnceLock<Store>,
}

/// Names on a drive are chosen, published and swept one at a time in this process, so a
/// sweep never sees a name that a job is about to record, and two jobs never pick one name.
static DRIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A job's dump: its name, saved before the file is published under it (`published`
/// false), and again once it is (the copy's own checkpoints name the file too, in their
/// remote path). A checkpoint from before `published` existed was saved after publishing.
#[derive(Serialize, Deserialize)]
struct DumpCheckpoint {
    dump: String,
    #[serde(default = "yes")]
    published: bool,
}

fn yes() -> bool {
    true
}

/// The dump file a db_dump job made or is making, from its checkpoint (for the views, and
/// for the sweep: a file named here is one an unfinished job still needs).
pub fn dump_file_of(checkpoint: Option<serde_json::Value>) -> Option<String> {
    earlier_dump(checkpoint).map(|(name, _)| name)
}

/// The dump this job named in an earlier attempt, and whether it was published.
fn earlier_dump(checkpoint: Option<serde_json::Value>) -> Option<(String, bool)> {
    let v = checkpoint?;
    if let Ok(d) = serde_json::from_value::<DumpCheckpoint>(v.clone()) {
        return Some((d.dump, d.published));
    }
    let cp = serde_json::from_value::<CopyCheckpoint>(v).ok()?;
    let name = cp.remote_path.rsplit('/').next()?.to_string();
    name.ends_with(".sql").then_some((name, true))
}

/// The marker on the external path that names the dump `keep_last_local` keeps for a section
/// (`.offsite-keep.{section}`): what the sweeps of every section leave alone.
fn keep_marker(section: &str) -> String {
    let safe = dump_prefix(section);
    format!("{KEEP_MARKER}{}", safe.trim_end_matches('_'))
}

const KEEP_MARKER: &str = ".offsite-keep.";

/// Whether two paths are the same file (a hard link of the staging file is its published one).
async fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (tokio::fs::metadata(a).await, tokio::fs::metadata(b).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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

/// The outcome line of a dump or upload that the engine stopped from outside — a cancel, the
/// stall limit, the attempt's timeout, a shutdown — written when the step's future is dropped
/// unfinished (the engine drops it; the step itself never returns).
struct Stopped<'a> {
    worker: &'a DbDumpWorker,
    ctx: &'a JobContext,
    section: &'a str,
    file: String,
    /// Where the bytes go, for the size so far.
    growing: std::path::PathBuf,
    upload: bool,
    started: Instant,
    attempt_started: Instant,
    armed: bool,
}

impl Stopped<'_> {
    fn done(mut self) {
        self.armed = false;
    }

    /// Why the engine stopped the attempt, in the engine's words, and whether the job runs
    /// again.
    fn why(&self) -> (String, bool) {
        let ctx = self.ctx;
        let left = ctx.attempt() < ctx.max_attempts();
        if ctx.is_cancelled() {
            return ("cancelled by operator".into(), false);
        }
        if ctx.is_stopping() {
            return ("interrupted by shutdown".into(), true);
        }
        let fmt = |d: std::time::Duration| humantime::format_duration(d).to_string();
        if let Some(limit) = self.worker.stall_timeout
            && ctx.idle_for() >= limit
        {
            return (
                format!("stalled: no progress reported for {}", fmt(limit)),
                left,
            );
        }
        if let Some(limit) = self.worker.timeout
            && self.attempt_started.elapsed() >= limit
        {
            return (format!("attempt timed out after {}", fmt(limit)), left);
        }
        ("stopped by the worker".into(), left)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (why, again) = self.why();
        let size = std::fs::metadata(&self.growing).ok().map(|m| m.len());
        let (what, message) = match (self.upload, again) {
            (false, _) => (Outcome::DumpFailed, "the dump was stopped"),
            (true, true) => (Outcome::UploadFailedWillRetry, "the upload was stopped"),
            (true, false) => (Outcome::UploadFailed, "the upload was stopped"),
        };
        let then = match (self.upload, again) {
            (_, true) => "the job runs again",
            (false, false) => "no attempts left",
            (true, false) => "no attempts left; the dump is removed",
        };
        let e = DumpError::new(message, again).because(why).because(then);
        outcome(
            what,
            self.section,
            &self.file,
            size,
            self.started.elapsed(),
            Some(&e),
        );
    }
}

impl Worker<DbDumpArgs> for DbDumpWorker {
    async fn work(&self, ctx: JobContext, args: DbDumpArgs) -> Result<(), JobError> {
        let attempt_started = Instant::now();
        let services = &self.services;
        let _ = self.store.set(ctx.store().clone());
        let db = services.database(&args.database).ok_or_else(|| {
            JobError::Permanent(format!(
                "database {:?} is not configured under [databases]",
                args.database
            ))
        })?;
        let section = args.database.as_str();
        let tz = db
            .timezone
            .clone()
            .unwrap_or_else(|| services.timezone().to_string());
        let db_name = db.database_name(section);
        let dir = &db.external_path;
        // What cancelled or deleted jobs left on this drive goes first.
        sweep(db, section, ctx.store()).await;

        let staging = Spool::at(dir.join(staging_name(&db_name, ctx.job_id())));
        let mut name = None;
        match earlier_dump(ctx.checkpoint::<serde_json::Value>()) {
            // Only this job's own published dump is uploaded as it is.
            Some((n, true)) if Spool::at(dir.join(&n)).is_complete().await => name = Some(n),
            // Published by a link, then stopped before it was recorded.
            Some((n, false)) if same_file(staging.path(), &dir.join(&n)).await => {
                ctx.save_checkpoint(&DumpCheckpoint {
                    dump: n.clone(),
                    published: true,
                })
                .await?;
                let _ = tokio::fs::remove_file(staging.path()).await;
                name = Some(n);
            }
            _ => {}
        }
        let name = match name {
            Some(n) => n,
            None => {
                let intended = file_name(&db_name, Utc::now(), &tz);
                let started = Instant::now();
                let stopped = Stopped {
                    worker: self,
                    ctx: &ctx,
                    section,
                    file: intended.clone(),
                    growing: dir.join(format!(".{}.partial", staging_name(&db_name, ctx.job_id()))),
                    upload: false,
                    started,
                    attempt_started,
                    armed: true,
                };
                let alive = {
                    let ctx = ctx.clone();
                    std::sync::Arc::new(move || ctx.touch())
                };
                let data = ctx.store().path().parent().map(|p| p.to_path_buf());
                // A staging file pg_dump completed in an earlier attempt (stopped before it
                // was published) is published as it is.
                let dumped = if staging.is_complete().await {
                    Ok(())
                } else {
                    dump(db, section, &staging, alive, data.as_deref())
                        .await
                        .map(|_| ())
                };
                let published = match dumped {
                    Ok(()) => publish(&ctx, db, &staging, &intended).await,
                    Err(e) => Err((e.clone().into(), e)),
                };
                stopped.done();
                match published {
                    Ok(n) => {
                        let size = tokio::fs::metadata(dir.join(&n))
                            .await
                            .ok()
                            .map(|m| m.len());
                        outcome(Outcome::Dumped, section, &n, size, started.elapsed(), None);
                        n
                    }
                    Err((e, logged)) => {
                        outcome(
                            Outcome::DumpFailed,
                            section,
                            &intended,
                            None,
                            started.elapsed(),
                            Some(&logged),
                        );
                        sweep(db, section, ctx.store()).await;
                        return Err(e);
                    }
                }
            }
        };
        let spool = Spool::at(dir.join(&name));
        let size = tokio::fs::metadata(spool.path())
            .await
            .ok()
            .map(|m| m.len());

        let started = Instant::now();
        let stopped = Stopped {
            worker: self,
            ctx: &ctx,
            section,
            file: name.clone(),
            growing: spool.path().to_path_buf(),
            upload: true,
            started,
            attempt_started,
            armed: true,
        };
        let result = self.upload(&ctx, db, &name, &spool).await;
        stopped.done();
        match &result {
            Ok(_) => {
                outcome(
                    Outcome::UploadSucceeded,
                    section,
                    &name,
                    size,
                    started.elapsed(),
                    None,
                );
                cleanup(db, section, &name, true).await;
            }
            Err(e) if will_retry(&ctx, e) => {
                outcome(
                    Outcome::UploadFailedWillRetry,
                    section,
                    &name,
                    size,
                    started.elapsed(),
                    Some(&e.into()),
                );
            }
            Err(e) => {
                outcome(
                    Outcome::UploadFailed,
                    section,
                    &name,
                    size,
                    started.elapsed(),
                    Some(&e.into()),
                );
                cleanup(db, section, &name, false).await;
            }
        }
        sweep(db, section, ctx.store()).await;
        result
    }

    /// Cancelled, or out of time or attempts while running: the job is recorded as ended, so
    /// the sweep removes its dump, its staging file and any partial one.
    async fn abandoned(&self, args: DbDumpArgs, _checkpoint: Option<serde_json::Value>) {
        let (Some(db), Some(store)) = (self.services.database(&args.database), self.store.get())
        else {
            return;
        };
        sweep(db, &args.database, store).await;
    }
}

/// Publishes the job's complete staging file under `intended`, or `_2`, `_3` … when that name
/// is taken: never over an existing file. Each name is checkpointed before it is published
/// (a kill in between leaves a name the job's next attempt checks, or a file no unfinished
/// job names, which the sweep removes), and again once it is. A hard link publishes
/// atomically (it fails on an existing name); where the file system has none (FAT, exFAT,
/// some FUSE ones) the staging file is renamed onto a name just seen free, under [`DRIVE`].
/// Fails with what the job returns and what its outcome line says.
async fn publish(
    ctx: &JobContext,
    db: &DatabaseConfig,
    staging: &Spool,
    intended: &str,
) -> Result<String, (JobError, DumpError)> {
    let _drive = DRIVE.lock().await;
    let dir = &db.external_path;
    let cannot = |what: String, e: std::io::Error| {
        let e = DumpError::new(what, true).because(e);
        (JobError::from(e.clone()), e)
    };
    let unrecorded = |e: JobError| {
        let logged = DumpError::new("cannot record the dump's name", true).because(&e);
        (e, logged)
    };
    for n in 1..=1000 {
        let name = numbered(intended, n);
        let target = dir.join(&name);
        if tokio::fs::symlink_metadata(&target).await.is_ok() {
            continue;
        }
        ctx.save_checkpoint(&DumpCheckpoint {
            dump: name.clone(),
            published: false,
        })
        .await
        .map_err(unrecorded)?;
        let linked = match tokio::fs::hard_link(staging.path(), &target).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) if tokio::fs::symlink_metadata(&target).await.is_ok() => continue,
            Err(_) => {
                tokio::fs::rename(staging.path(), &target)
                    .await
                    .map_err(|e| {
                        cannot(
                            format!("cannot publish the dump as {}", target.display()),
                            e,
                        )
                    })?;
                false
            }
        };
        sync_dir(dir).await;
        ctx.save_checkpoint(&DumpCheckpoint {
            dump: name.clone(),
            published: true,
        })
        .await
        .map_err(unrecorded)?;
        if linked {
            let _ = tokio::fs::remove_file(staging.path()).await;
            sync_dir(dir).await;
        }
        return Ok(name);
    }
    let e = DumpError::new(
        format!("cannot publish the dump on {}", dir.display()),
        false,
    )
    .because(format!(
        "{intended} and its numbered names up to _1000 are all taken"
    ));
    Err((e.clone().into(), e))
}

impl DbDumpWorker {
    async fn upload(
        &self,
        ctx: &JobContext,
        db: &DatabaseConfig,
        name: &str,
        spool: &Spool,
    ) -> Result<(), JobError> {
        let services = &self.services;
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
                md5: None,
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
}

/// After the upload's final outcome: the dump is removed — or, with `keep_last_local` after
/// a success, named in the section's keep marker instead (the sweep then removes the one kept
/// before). A failure is logged only.
async fn cleanup(db: &DatabaseConfig, section: &str, name: &str, uploaded: bool) {
    let dir = &db.external_path;
    let started = Instant::now();
    if uploaded && db.keep_last_local {
        let _drive = DRIVE.lock().await;
        let marker = dir.join(keep_marker(section));
        let tmp = dir.join(format!("{}.tmp", keep_marker(section)));
        let written = async {
            tokio::fs::write(&tmp, format!("{name}\n")).await?;
            tokio::fs::rename(&tmp, &marker).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            let err = DumpError::new(
                format!("cannot record the kept dump in {}", marker.display()),
                true,
            )
            .because(e);
            outcome(
                Outcome::CleanupFailed,
                section,
                name,
                None,
                started.elapsed(),
                Some(&err),
            );
        }
        return;
    }
    remove(dir, section, name).await;
}

/// Removes one dump file, with its outcome line.
async fn remove(dir: &std::path::Path, section: &str, name: &str) {
    let path = dir.join(name);
    let started = Instant::now();
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {
            tracing::info!(target: TARGET, user = "*system", component = "Backup",
                outcome = "cleaned_up", database = section, file = %name, "local dump removed");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let err = DumpError::new(format!("cannot remove {}", path.display()), true).because(e);
            outcome(
                Outcome::CleanupFailed,
                section,
                name,
                None,
                started.elapsed(),
                Some(&err),
            );
        }
    }
}

/// At start-up, before any worker runs: every configured section's drive is swept (see
/// [`sweep`]), so the dump of a job cancelled or deleted while it waited for a retry goes
/// even when its section's next run is days away. A drive that is not there is skipped.
pub async fn sweep_at_start(config: &crate::config::Config, store: &Store) {
    for (section, db) in &config.databases {
        sweep(db, section, store).await;
    }
}

/// Removes what no one needs any more from the section's external path: files of the
/// section's database (`{database}_{YYYY-MM-DD_HH-mm}[_N].sql`, staging files and partials)
/// that no unfinished db_dump job names — of any section: two sections may dump one database
/// to one drive — and that no section's keep marker names (`keep_last_local`). So a cancelled
/// or deleted job's dump goes, a dump another job still has to upload stays, and another
/// section's kept dump stays. Runs when a db_dump attempt starts and ends, and after a running
/// one was abandoned. The directory is listed before the jobs are read: a file listed was
/// named in its job's checkpoint before it was published.
async fn sweep(db: &DatabaseConfig, section: &str, store: &Store) {
    let _drive = DRIVE.lock().await;
    let dir = &db.external_path;
    let prefix = dump_prefix(&db.database_name(section));
    if !db.keep_last_local {
        let _ = tokio::fs::remove_file(dir.join(keep_marker(section))).await;
    }
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let mut found = Vec::new();
    let mut kept = std::collections::HashSet::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(KEEP_MARKER) && !n.ends_with(".tmp") {
            if let Ok(text) = tokio::fs::read_to_string(e.path()).await {
                kept.insert(text.trim().to_string());
            }
        } else if let Some(kind) = dump_file(&prefix, &n) {
            found.push((n, kind));
        }
    }
    if found.is_empty() {
        return;
    }
    let unfinished = JobFilter {
        states: vec![
            JobState::Scheduled,
            JobState::Available,
            JobState::Running,
            JobState::Retryable,
        ],
        kind: Some(DbDumpArgs::KIND.into()),
        queue: None,
    };
    let jobs = match store.list_jobs(&unfinished, i64::MAX, None).await {
        Ok(j) => j,
        Err(e) => {
            // Not knowing which dumps are still owed, remove none.
            tracing::warn!(error = %e, "cannot tell which dumps are still to upload; leaving the drive as it is");
            return;
        }
    };
    let live: std::collections::HashSet<i64> = jobs.iter().map(|j| j.id).collect();
    let owed: std::collections::HashSet<String> = jobs
        .into_iter()
        .filter_map(|j| dump_file_of(j.checkpoint))
        .collect();
    for (n, kind) in found {
        let needed = match &kind {
            DumpFile::Published => owed.contains(&n) || kept.contains(&n),
            DumpFile::Staging(id) => live.contains(id),
            DumpFile::Partial(of) => owed.contains(of),
        };
        if needed {
            continue;
        }
        match kind {
            DumpFile::Published => remove(dir, section, &n).await,
            _ => {
                let _ = tokio::fs::remove_file(dir.join(&n)).await;
            }
        }
    }
}
