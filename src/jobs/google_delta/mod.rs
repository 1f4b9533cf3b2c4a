//! `google_delta`: a Google Drive account followed through its changes feed and mirrored to
//! S3 and folder destinations, with the sync state in SQLite ([`state`]).
//!
//! One run of `google_delta` (per `[google_drive.<name>]`, on its schedule or "sync now"):
//! the first time it lists every file (taking the feed's position *before*, so nothing that
//! changes meanwhile is missed); afterwards it pages `changes.list` to the end. Every page is
//! recorded with the feed position that follows it in one transaction, so a crash repeats at
//! most a page and never loses the token. It then works out each file's path in the mirror
//! ([`paths`]) and enqueues one `google_file` job per file and destination that is behind.
//! Last, soft-deleted objects older than `trash_days` are purged.
//!
//! One `google_file` job makes one destination hold what Drive holds of one file, reading the
//! wanted state when it runs (so a stale job does the current thing, or nothing):
//! - new or changed content: streamed from Drive (Range-resumed, MD5-checked) or exported
//!   (spooled first) through the copy loop, which checkpoints every part, so `kill -9` resumes
//!   mid-file. Content the destination already has under another path is copied on the server.
//!   The previous content of a changed file is kept under `.versions/` (keep-N), unless the
//!   bucket keeps versions itself.
//! - renamed or moved: a server-side copy to the new path, and the old path soft-deleted.
//! - trashed, deleted or excluded in Drive: moved to `.trash/<date>/`, never deleted at once.
//!
//! A destination that fails does not hold up the other: each has its own jobs and its own
//! state, and the next run enqueues what is still behind.

pub mod paths;
pub mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Kind, services::Services};
use crate::{
    config::ConfigError,
    destinations::{CopyError, Destination, Sent},
    queue::{EnqueueRequest, FieldError, JobArgs, JobContext, JobError, KindSettings, Worker},
    sources::google_drive::{DriveFile, GoogleDrive, GoogleDriveConfig},
    transfer::{
        TransferError,
        copy::{Copy, copy},
        spool::Spool,
    },
};

/// Schedules made from `[google_drive.<name>]` are called this plus the name.
pub const SCHEDULE_PREFIX: &str = "google_delta.";

/// The engine's shortest schedule interval; `poll` below it is done inside each run.
const POLL_WINDOW: Duration = Duration::from_secs(60);

/// The tag of a source's jobs: they wait while it needs authorization, and authorizing it
/// wakes them.
pub fn source_tag(source: &str) -> String {
    format!("google_drive:{source}")
}

/// The schedule of `[google_drive.<name>]`: `poll` (the real-time mode), else its `schedule`,
/// else every hour.
pub fn schedule(
    name: &str,
    g: &GoogleDriveConfig,
    registry: &crate::queue::Registry,
    config: &crate::config::Config,
) -> Result<crate::queue::store::ScheduleDef, ConfigError> {
    let form = match (g.poll, &g.schedule) {
        (Some(p), _) => super::every(&humantime::format_duration(p.max(POLL_WINDOW)).to_string()),
        (None, Some(s)) => s.clone(),
        (None, None) => super::every("1h"),
    };
    let mut def = super::section_schedule::<GoogleDeltaArgs>(
        "google_drive",
        name,
        form,
        json!({ "source": name }),
        |k| k.unwrap_or("schedule").to_string(),
        registry,
        config,
    )?;
    def.enabled = g.enabled;
    Ok(def)
}

impl From<crate::sources::google_drive::ApiFailure> for JobError {
    fn from(f: crate::sources::google_drive::ApiFailure) -> Self {
        f.error.into()
    }
}

fn db(ctx: &JobContext) -> state::Db {
    let (w, r) = ctx.store().pools();
    (w.clone(), r.clone())
}

fn sql(e: sqlx::Error) -> JobError {
    JobError::retryable(format!("the sync state could not be read or written: {e}"))
}

fn drive<'a>(services: &'a Services, name: &str) -> Result<&'a Arc<GoogleDrive>, JobError> {
    services.google_drive(name).ok_or_else(|| {
        JobError::Permanent(format!(
            "Google Drive source {name:?} is not configured under [google_drive]"
        ))
    })
}

fn check_source(services: &Services, name: &str) -> Result<(), FieldError> {
    match services.google_drive(name) {
        Some(_) => Ok(()),
        None => Err(FieldError::new(
            "source",
            format!("{name:?} is not configured under [google_drive]"),
        )),
    }
}

// -- google_delta --------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GoogleDeltaArgs {
    /// A name under `[google_drive]`.
    pub source: String,
}

impl JobArgs for GoogleDeltaArgs {
    const KIND: &'static str = "google_delta";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 5,
            priority: 1,
            timeout: None,
            stall_timeout: None,
        }
    }
    fn tags(&self) -> Vec<String> {
        vec![source_tag(&self.source)]
    }
    fn describe(&self) -> String {
        format!("Google Drive {} changes", self.source)
    }
}

impl Kind for GoogleDeltaArgs {
    type Worker = GoogleDeltaWorker;
    fn worker(services: &Arc<Services>) -> GoogleDeltaWorker {
        GoogleDeltaWorker(services.clone())
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        check_source(services, &self.source)
    }
}

pub struct GoogleDeltaWorker(Arc<Services>);

/// What one run did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Synced {
    pub listed: usize,
    pub changes: usize,
    pub enqueued: usize,
    pub purged: usize,
}

impl Worker<GoogleDeltaArgs> for GoogleDeltaWorker {
    async fn work(&self, ctx: JobContext, args: GoogleDeltaArgs) -> Result<(), JobError> {
        let db = db(&ctx);
        // The real-time mode below a minute (the engine's shortest interval): this run, fired
        // every minute, reads the feed again every `poll` until its minute is nearly over.
        let poll = drive(&self.0, &args.source)?
            .config()
            .poll
            .filter(|p| *p < POLL_WINDOW);
        let started = std::time::Instant::now();
        let mut full = true;
        loop {
            let result = sync(&self.0, &ctx, &db, &args.source, full).await;
            full = false;
            let error = result.as_ref().err().map(|e| e.to_string());
            if let Err(e) = state::set_result(&db, &args.source, error.as_deref()).await {
                tracing::warn!(source = %args.source, "cannot record the sync's result: {e}");
            }
            let s = result?;
            if s.changes > 0 || s.listed > 0 || s.enqueued > 0 || poll.is_none() {
                tracing::info!(source = %args.source, listed = s.listed, changes = s.changes,
                    enqueued = s.enqueued, purged = s.purged, "Google Drive sync done");
            }
            match poll {
                Some(p) if started.elapsed() + p < POLL_WINDOW - Duration::from_secs(5) => {
                    tokio::select! {
                        _ = tokio::time::sleep(p) => {}
                        _ = ctx.stopping() => return Ok(()),
                    }
                    ctx.touch();
                }
                _ => return Ok(()),
            }
        }
    }
}

/// One pass: the feed, then (if `full`, or if the feed brought anything) the paths, the file
/// jobs of what is behind, and the purge. A real-time run's later polls are not full: most
/// find nothing, and the rest of the pass would read every file's row for nothing.
async fn sync(
    services: &Services,
    ctx: &JobContext,
    db: &state::Db,
    source: &str,
    full: bool,
) -> Result<Synced, JobError> {
    let drive = drive(services, source)?;
    let cfg = drive.config();
    let mut done = Synced::default();
    let mut st = state::source(db, source).await.map_err(sql)?;
    if st.page_token.is_none() && st.start_token.is_none() {
        // The feed's position first: what changes while the listing runs is in the feed.
        let start = drive.start_page_token().await?;
        let root = drive.root_id().await?;
        state::begin_listing(db, source, &start, &root)
            .await
            .map_err(sql)?;
        st = state::source(db, source).await.map_err(sql)?;
    }
    if cfg.shared_drives {
        let drives = drive.list_shared_drives().await?;
        state::put_shared_drives(db, source, &drives)
            .await
            .map_err(sql)?;
    }
    // At most twice: once more after Drive refused the page token and everything was listed
    // again.
    'feed: for _ in 0..2 {
        if st.page_token.is_none() {
            let mut cursor = st.list_cursor.clone();
            loop {
                let page = drive.list_page(cursor.as_deref()).await?;
                done.listed += page.items.len();
                state::apply_listing(db, source, &page.items, page.next.as_deref())
                    .await
                    .map_err(sql)?;
                ctx.touch();
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            st = state::source(db, source).await.map_err(sql)?;
        }
        // The feed, from where the last run (or page) left it.
        let Some(token) = st.page_token.clone() else {
            break;
        };
        let mut cursor = st.changes_cursor.clone().unwrap_or(token);
        loop {
            let page = match drive.changes_page(&cursor).await {
                Ok(p) => p,
                Err(f) if f.status == 400 && f.reason == "invalid" => {
                    // The token is no longer valid: list everything again. What is unchanged
                    // is not sent again (the copies say what each destination has), and what
                    // the new listing does not see is gone.
                    tracing::warn!(
                        source,
                        "Drive refused the stored page token; listing everything again"
                    );
                    let start = drive.start_page_token().await?;
                    let root = drive.root_id().await?;
                    state::begin_listing(db, source, &start, &root)
                        .await
                        .map_err(sql)?;
                    st = state::source(db, source).await.map_err(sql)?;
                    continue 'feed;
                }
                Err(f) => return Err(f.error.into()),
            };
            done.changes += page.items.len();
            state::apply_changes(
                db,
                source,
                &page.items,
                page.next.as_deref(),
                page.new_start.as_deref(),
            )
            .await
            .map_err(sql)?;
            ctx.touch();
            match (page.next, page.new_start) {
                (Some(n), None) => cursor = n,
                _ => break 'feed,
            }
        }
    }
    if !full && done.listed == 0 && done.changes == 0 {
        return Ok(done);
    }
    // Paths (a renamed folder moves everything under it).
    let st = state::source(db, source).await.map_err(sql)?;
    let root = st.root_id.clone().unwrap_or_else(|| "root".into());
    let rows = state::files(db, source).await.map_err(sql)?;
    let resolved = paths::resolve(&rows, &root, cfg);
    let changed: HashMap<String, (Option<String>, Option<String>)> = rows
        .iter()
        .filter(|r| !r.is_folder)
        .filter_map(|r| {
            let new = resolved.get(&r.file_id)?;
            (new.0 != r.path || new.1 != r.skipped).then(|| (r.file_id.clone(), new.clone()))
        })
        .collect();
    if !changed.is_empty() {
        state::set_paths(db, source, &changed).await.map_err(sql)?;
    }
    // One job per file and destination that is behind.
    let mut requests = Vec::new();
    for d in &cfg.destinations {
        for (file_id, rev) in state::behind(db, source, d).await.map_err(sql)? {
            requests.push(EnqueueRequest {
                kind: GoogleFileArgs::KIND.into(),
                args: json!({ "source": source, "destination": d, "file_id": file_id }),
                idempotency_key: Some(format!("google_file:{source}:{d}:{file_id}:{rev}")),
                max_attempts: Some(i64::from(cfg.retries) + 1),
                ..Default::default()
            });
        }
    }
    done.enqueued = ctx.enqueue_many(&requests).await?;
    // Trash older than trash_days goes for good.
    let before = chrono::Utc::now().timestamp_millis() - i64::from(cfg.trash_days) * 86_400_000;
    for d in &cfg.destinations {
        let Ok(dest) = services.destination(d) else {
            continue;
        };
        let old = state::kept(db, source, d, "trash", None, Some(before))
            .await
            .map_err(sql)?;
        for remote in old {
            match dest.delete(&remote).await {
                Ok(()) => {
                    state::forget_kept(db, source, d, &remote)
                        .await
                        .map_err(sql)?;
                    done.purged += 1;
                }
                Err(e) => {
                    tracing::warn!(source, destination = %d, "cannot purge old trash: {e}");
                    break;
                }
            }
        }
    }
    Ok(done)
}

// -- google_file ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GoogleFileArgs {
    /// A name under `[google_drive]`.
    pub source: String,
    /// One of its destinations.
    pub destination: String,
    /// Drive's id of the file.
    pub file_id: String,
}

impl JobArgs for GoogleFileArgs {
    const KIND: &'static str = "google_file";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 4,
            priority: 2,
            timeout: None,
            stall_timeout: None,
        }
    }
    fn tags(&self) -> Vec<String> {
        vec![
            source_tag(&self.source),
            super::destination_tag(&self.destination),
        ]
    }
    fn describe(&self) -> String {
        format!(
            "Google Drive {} file {} to {}",
            self.source, self.file_id, self.destination
        )
    }
}

impl Kind for GoogleFileArgs {
    type Worker = GoogleFileWorker;
    fn worker(services: &Arc<Services>) -> GoogleFileWorker {
        GoogleFileWorker {
            services: services.clone(),
            busy: Default::default(),
        }
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        check_source(services, &self.source)?;
        super::destination_configured(services, "destination", &self.destination)
    }
}

pub struct GoogleFileWorker {
    services: Arc<Services>,
    /// One job at a time per (source, destination, file): two revisions of one file must not
    /// be written to one path at once; and per content, so that two files with the same
    /// content are sent once and copied once, not sent twice side by side.
    busy: Arc<Locks>,
}

/// Per-key async locks that are dropped once nobody holds or waits for them.
#[derive(Default)]
struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    async fn hold<T>(&self, key: String, work: impl std::future::Future<Output = T>) -> T {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let out = {
            let _held = lock.lock().await;
            work.await
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            map.remove(&key);
        }
        out
    }
}

impl Worker<GoogleFileArgs> for GoogleFileWorker {
    async fn work(&self, ctx: JobContext, args: GoogleFileArgs) -> Result<(), JobError> {
        let key = format!("{}\n{}\n{}", args.source, args.destination, args.file_id);
        let result = self
            .busy
            .hold(key, mirror_file(&self.services, &ctx, &args, &self.busy))
            .await;
        if let Err(e) = &result
            && !matches!(e, JobError::Snooze { .. } | JobError::Interrupted)
        {
            let db = db(&ctx);
            let _ = state::record_error(
                &db,
                &args.source,
                &args.destination,
                &args.file_id,
                &e.to_string(),
            )
            .await;
        }
        result
    }
}

/// `<root>/<prefix>/<path>` in the destination's path syntax.
fn remote(dest: &dyn Destination, cfg: &GoogleDriveConfig, path: &str) -> String {
    let root = dest.root().trim_end_matches('/');
    format!("{root}/{}/{path}", cfg.prefix.trim_matches('/'))
}

/// `remote` with `<prefix>/` replaced by `<prefix>/<aside>/`: where a soft-deleted file or an
/// old version goes.
fn aside(
    dest: &dyn Destination,
    cfg: &GoogleDriveConfig,
    remote_path: &str,
    aside: &str,
) -> String {
    let base = remote(dest, cfg, "");
    let rel = remote_path.strip_prefix(&base).unwrap_or(remote_path);
    remote(
        dest,
        cfg,
        &format!("{aside}/{}", rel.trim_start_matches('/')),
    )
}

/// What the content was made from: Drive's MD5 for a binary file, the modification time and
/// format for an export.
fn identity(f: &state::FileRow, export: Option<&str>) -> String {
    match export {
        Some(ext) => format!(
            "export:{ext}:{}",
            f.modified_time.as_deref().unwrap_or_default()
        ),
        None => format!(
            "md5:{}:{}",
            f.md5.as_deref().unwrap_or_default(),
            f.size.unwrap_or(0)
        ),
    }
}

async fn mirror_file(
    services: &Services,
    ctx: &JobContext,
    args: &GoogleFileArgs,
    locks: &Locks,
) -> Result<(), JobError> {
    let content = state::file(&db(ctx), &args.source, &args.file_id)
        .await
        .map_err(sql)?
        .and_then(|f| f.md5.map(|m| format!("{m}:{}", f.size.unwrap_or(0))));
    match content {
        Some(c) => {
            let key = format!("{}\n{}\ncontent:{c}", args.source, args.destination);
            locks
                .hold(key, mirror_file_locked(services, ctx, args))
                .await
        }
        None => mirror_file_locked(services, ctx, args).await,
    }
}

async fn mirror_file_locked(
    services: &Services,
    ctx: &JobContext,
    args: &GoogleFileArgs,
) -> Result<(), JobError> {
    let db = db(ctx);
    let drive = drive(services, &args.source)?;
    let cfg = drive.config();
    let dest = services.destination(&args.destination)?.clone();
    let dest = &*dest;
    let Some(f) = state::file(&db, &args.source, &args.file_id)
        .await
        .map_err(sql)?
    else {
        return Ok(());
    };
    let old = state::copy(&db, &args.source, &args.destination, &f.file_id)
        .await
        .map_err(sql)?;
    if old.as_ref().is_some_and(|c| c.rev >= f.rev) {
        return Ok(()); // a later job did it
    }
    let now = chrono::Utc::now().timestamp_millis();
    let current = old.as_ref().filter(|c| c.remote.is_some());
    let wanted = (!f.removed && !f.is_folder)
        .then_some(f.path.as_deref())
        .flatten()
        .map(|p| remote(dest, cfg, p));
    let meta: DriveFile = serde_json::from_str(&f.meta)
        .map_err(|e| JobError::Permanent(format!("unreadable file record: {e}")))?;
    let export = cfg.export.for_mime(&f.mime);
    let ident = identity(&f, export.map(|(e, _)| e));

    let Some(target) = wanted else {
        // Gone from Drive (or excluded): soft-delete what the destination holds.
        let mut record = old.clone().unwrap_or_else(|| blank(args, f.rev, now));
        if let Some(c) = current {
            let from = c.remote.clone().unwrap_or_default();
            let to = trash(dest, cfg, &db, args, c, &from).await?;
            record.trashed_remote = Some(to);
            record.trashed_at = Some(now);
        }
        record.remote = None;
        record.rev = f.rev;
        state::record_copy(&db, &args.source, &record)
            .await
            .map_err(sql)?;
        return Ok(());
    };

    // Same content, new path (a rename or move): copy on the server, then soft-delete the old.
    if let Some(c) = current
        && c.identity.as_deref() == Some(ident.as_str())
    {
        let from = c.remote.clone().unwrap_or_default();
        let mut record = c.clone();
        record.rev = f.rev;
        if from != target {
            match copy_stored(dest, c, &from, &target).await {
                Ok(_) => {
                    trash(dest, cfg, &db, args, c, &from).await?;
                    record.remote = Some(target.clone());
                    record.stored_at = now;
                    state::record_copy(&db, &args.source, &record)
                        .await
                        .map_err(sql)?;
                    tracing::info!(source = %args.source, destination = %args.destination,
                        from = %from, to = %target, "moved in the mirror (copied on the server)");
                    return Ok(());
                }
                Err(CopyError::Unsupported) => {} // sent again below
                Err(CopyError::Failed(e)) => return Err(e.into()),
            }
        } else {
            state::record_copy(&db, &args.source, &record)
                .await
                .map_err(sql)?;
            return Ok(());
        }
    }

    // New content at `target`. The content there now, if any, is kept as a version first.
    if let Some(c) = current
        && c.remote.as_deref() == Some(target.as_str())
        && dest.keeps_versions().await != Some(true)
    {
        keep_version(dest, cfg, &db, args, c, &f).await?;
    }

    let mut stored: Option<(u64, String, Option<String>)> = None;
    // Content this destination already holds for another file: copied, not sent.
    if export.is_none()
        && let (Some(md5), Some(size)) = (&f.md5, f.size)
        && let Some(twin) =
            state::same_content(&db, &args.source, &args.destination, md5, size, &f.file_id)
                .await
                .map_err(sql)?
    {
        let from = twin.remote.clone().unwrap_or_default();
        match copy_stored(dest, &twin, &from, &target).await {
            Ok(_) => {
                tracing::info!(source = %args.source, destination = %args.destination,
                    from = %from, to = %target, "same content already stored; copied on the server");
                stored = Some((
                    size,
                    twin.sha256.clone().unwrap_or_default(),
                    Some(md5.clone()),
                ));
            }
            Err(CopyError::Unsupported) => {}
            Err(CopyError::Failed(e)) => {
                tracing::warn!(source = %args.source, "server-side copy failed, sending the file: {e}");
            }
        }
    }
    let chunk = cfg.chunk_mib * 1024 * 1024;
    let label = format!(
        "Google Drive {} → {}",
        f.path.as_deref().unwrap_or(&f.name),
        args.destination
    );
    let (size, sha256, md5) = match stored {
        Some(s) => s,
        None => match export {
            None => {
                let size = f.size.ok_or_else(|| {
                    JobError::Permanent(format!("Drive gives no size for file {}", f.file_id))
                })?;
                let media = drive.media(&f.file_id, size);
                let copied = copy(
                    ctx,
                    Copy {
                        source: &media,
                        dest,
                        remote: target.clone(),
                        chunk,
                        label,
                        md5: f.md5.clone(),
                    },
                )
                .await?;
                (copied.size, copied.sha256, f.md5.clone())
            }
            Some((ext, mime)) => {
                let spool = Spool::at(
                    services
                        .data_dir()
                        .join("spool")
                        .join("google")
                        .join(&args.source)
                        // Per destination: each one's job exports on its own, at its own time.
                        .join(&args.destination)
                        .join(format!(
                            "{}-{}.{ext}",
                            f.file_id,
                            crate::transfer::sha256_hex(ident.as_bytes())
                                .get(..16)
                                .unwrap_or_default()
                        )),
                );
                if !spool.is_complete().await {
                    let body = drive.export(&meta, mime).await?;
                    spool.fill(body).await?;
                }
                let copied = copy(
                    ctx,
                    Copy {
                        source: &spool,
                        dest,
                        remote: target.clone(),
                        chunk,
                        label,
                        md5: None,
                    },
                )
                .await?;
                spool.remove().await;
                (copied.size, copied.sha256, None)
            }
        },
    };
    if let Some(c) = current
        && c.remote.as_deref() != Some(target.as_str())
    {
        let from = c.remote.clone().unwrap_or_default();
        trash(dest, cfg, &db, args, c, &from).await?;
    }
    let record = state::CopyRow {
        destination: args.destination.clone(),
        file_id: f.file_id.clone(),
        rev: f.rev,
        remote: Some(target.clone()),
        size: Some(size),
        md5,
        sha256: Some(sha256),
        identity: Some(ident),
        stored_at: now,
        ..Default::default()
    };
    state::record_copy(&db, &args.source, &record)
        .await
        .map_err(sql)?;
    tracing::info!(source = %args.source, destination = %args.destination, path = %target,
        size, "mirrored");
    Ok(())
}

fn blank(args: &GoogleFileArgs, rev: i64, now: i64) -> state::CopyRow {
    state::CopyRow {
        destination: args.destination.clone(),
        file_id: args.file_id.clone(),
        rev,
        stored_at: now,
        ..Default::default()
    }
}

/// Copies the stored copy `c` (at `from`) to `to` on the server, checked against what was
/// recorded of it.
async fn copy_stored(
    dest: &dyn Destination,
    c: &state::CopyRow,
    from: &str,
    to: &str,
) -> Result<crate::destinations::RemoteFile, CopyError> {
    let sha = c.sha256.clone().unwrap_or_default();
    let sent = Sent {
        size: c.size.unwrap_or(0),
        sha256: &sha,
    };
    dest.copy_within(from, to, &sent).await
}

/// Sets the stored copy `c` (at `from`) aside at `to` (a soft delete, an old version) and
/// records it as kept, as `kind`; false when `from` is gone already (removed by hand: nothing
/// to keep). A destination that cannot copy on the server cannot set anything aside:
/// permanent, and `from` stays (nothing is deleted that is not kept elsewhere).
async fn set_aside(
    dest: &dyn Destination,
    db: &state::Db,
    args: &GoogleFileArgs,
    c: &state::CopyRow,
    (from, to): (&str, &str),
    kind: &str,
    cannot: &str,
) -> Result<bool, JobError> {
    match copy_stored(dest, c, from, to).await {
        Ok(_) => {}
        Err(CopyError::Failed(TransferError::NotFound(_))) => return Ok(false),
        Err(CopyError::Unsupported) => {
            return Err(JobError::Permanent(format!(
                "destination {} cannot copy on the server, so {cannot}",
                args.destination
            )));
        }
        Err(CopyError::Failed(e)) => return Err(e.into()),
    }
    state::keep(db, &args.source, &args.destination, to, kind, &c.file_id)
        .await
        .map_err(sql)?;
    Ok(true)
}

/// Copies `from` on the server to `.trash/<date>/…`, records it for the purge, then removes
/// `from`. A destination that cannot copy keeps the file where it is (nothing is deleted that
/// is not kept elsewhere).
async fn trash(
    dest: &dyn Destination,
    cfg: &GoogleDriveConfig,
    db: &state::Db,
    args: &GoogleFileArgs,
    c: &state::CopyRow,
    from: &str,
) -> Result<String, JobError> {
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let to = aside(dest, cfg, from, &format!(".trash/{date}"));
    let cannot = format!("{from} cannot be soft-deleted; left in place");
    if !set_aside(dest, db, args, c, (from, &to), "trash", &cannot).await? {
        return Ok(to);
    }
    dest.delete(from).await?;
    tracing::info!(source = %args.source, destination = %args.destination, from, to = %to,
        "soft-deleted (kept under .trash)");
    Ok(to)
}

/// Keeps the content at `c.remote` under `.versions/<path>/<time>` and drops versions beyond
/// `keep_versions`.
async fn keep_version(
    dest: &dyn Destination,
    cfg: &GoogleDriveConfig,
    db: &state::Db,
    args: &GoogleFileArgs,
    c: &state::CopyRow,
    f: &state::FileRow,
) -> Result<(), JobError> {
    if cfg.keep_versions == 0 {
        return Ok(());
    }
    let from = c.remote.clone().unwrap_or_default();
    let stamp = chrono::DateTime::from_timestamp_millis(c.stored_at)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H-%M-%S%.3fZ");
    let to = format!("{}/{stamp}", aside(dest, cfg, &from, ".versions"));
    let cannot = format!("the previous version of {from} cannot be kept; not overwritten");
    if !set_aside(dest, db, args, c, (&from, &to), "version", &cannot).await? {
        return Ok(());
    }
    let versions = state::kept(
        db,
        &args.source,
        &args.destination,
        "version",
        Some(&f.file_id),
        None,
    )
    .await
    .map_err(sql)?;
    for old in versions.iter().skip(cfg.keep_versions as usize) {
        dest.delete(old).await?;
        state::forget_kept(db, &args.source, &args.destination, old)
            .await
            .map_err(sql)?;
    }
    Ok(())
}
