//! `snapshot_scan` and `snapshot_upload`: Home Assistant backups (or any folder of `.tar`
//! files) to each destination, once per (backup, destination), resumable from the last
//! acknowledged chunk after a crash.

use std::{sync::Arc, time::Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::services::Services;
use crate::{
    destinations::{Session, content_hash::ContentHasher, remote_path},
    queue::{
        EnqueueRequest, FieldError, JobArgs, JobContext, JobError, KindSettings, Progress, Worker,
        store::UploadRecord,
    },
    sources::BackupStream,
    transfer::TransferError,
};

// ------------------------------------------------------------------ snapshot_scan

/// Lists a source and enqueues one upload per (backup, destination) not uploaded yet.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotScanArgs {
    pub source: String,
    pub destinations: Vec<String>,
}

impl JobArgs for SnapshotScanArgs {
    const KIND: &'static str = "snapshot_scan";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 10,
            priority: 2,
            timeout: Some(std::time::Duration::from_secs(600)),
            stall_timeout: None,
        }
    }
    fn validate(&self) -> Result<(), FieldError> {
        if self.destinations.is_empty() {
            return Err(FieldError::new(
                "destinations",
                "name at least one destination",
            ));
        }
        Ok(())
    }
}

pub struct SnapshotScanWorker(pub Arc<Services>);

/// The key that makes a backup go to a destination once, ever, unless an operator replays it.
pub fn upload_key(destination: &str, slug: &str) -> String {
    format!("snapshot:{destination}:{slug}")
}

impl Worker<SnapshotScanArgs> for SnapshotScanWorker {
    async fn work(&self, ctx: JobContext, args: SnapshotScanArgs) -> Result<(), JobError> {
        let source = self.0.source(&args.source)?;
        let backups = source.list().await?;
        // The idempotency key goes when finished jobs are pruned; the uploads record stays, so
        // a backup that was uploaded once (even if retention removed it since) is never sent again.
        let mut done = std::collections::HashMap::new();
        for destination in &args.destinations {
            let uploaded: std::collections::HashSet<String> = ctx
                .store()
                .uploads(Some(destination), true)
                .await
                .map_err(JobError::retryable)?
                .into_iter()
                .map(|u| u.backup_slug)
                .collect();
            done.insert(destination.clone(), uploaded);
        }
        let mut new = 0;
        let mut retried = 0;
        for backup in &backups {
            for destination in &args.destinations {
                if done
                    .get(destination)
                    .is_some_and(|d| d.contains(&backup.slug))
                {
                    continue;
                }
                let upload = SnapshotUploadArgs {
                    source: args.source.clone(),
                    destination: destination.clone(),
                    backup: backup.slug.clone(),
                    name: backup.name.clone(),
                    date: backup.date,
                };
                let request = EnqueueRequest {
                    kind: SnapshotUploadArgs::KIND.into(),
                    args: serde_json::to_value(&upload).map_err(JobError::permanent)?,
                    idempotency_key: Some(upload_key(destination, &backup.slug)),
                    ..Default::default()
                };
                let enqueued = ctx.enqueue(&request).await?;
                if !enqueued.deduplicated {
                    new += 1;
                } else if enqueued.job.state == crate::queue::JobState::Discarded {
                    // The backup is still at the source: an upload that gave up (a full disk,
                    // a revoked permission) gets one more attempt each scan, so fixing the
                    // cause is enough.
                    match ctx.store().retry_discarded(enqueued.job.id).await {
                        Ok(_) => {
                            retried += 1;
                            ctx.wake_workers();
                        }
                        Err(crate::queue::store::OpError::Conflict(_)) => {}
                        Err(e) => return Err(JobError::retryable(e)),
                    }
                }
            }
        }
        let swept = sweep_partials(&self.0, ctx.store(), false)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "could not look for unfinished uploads to remove");
                0
            });
        info!(source = %args.source, backups = backups.len(), new_uploads = new, retried, swept, "scanned");
        ctx.save_checkpoint(
            &json!({"backups": backups.len(), "new_uploads": new, "retried": retried}),
        )
        .await
    }
}

// ------------------------------------------------------------------ snapshot_upload

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotUploadArgs {
    pub source: String,
    pub destination: String,
    /// The backup's slug (Supervisor) or id (folder source).
    pub backup: String,
    pub name: String,
    /// The backup's own date: names the remote file and orders retention.
    pub date: DateTime<Utc>,
}

impl JobArgs for SnapshotUploadArgs {
    const KIND: &'static str = "snapshot_upload";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "uploads".into(),
            max_attempts: 20,
            priority: 2,
            timeout: None,
            stall_timeout: Some(std::time::Duration::from_secs(600)),
        }
    }
    fn validate(&self) -> Result<(), FieldError> {
        if self.backup.is_empty() {
            return Err(FieldError::new("backup", "must not be empty"));
        }
        Ok(())
    }
    fn tags(&self) -> Vec<String> {
        vec![super::destination_tag(&self.destination)]
    }
}

/// Saved after every acknowledged chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadCheckpoint {
    pub remote_path: String,
    pub session: Option<Session>,
    /// Bytes the destination has acknowledged.
    pub offset: u64,
    /// Content-hash state at `offset`: the block digests so far (hex).
    pub hash: String,
}

impl UploadCheckpoint {
    /// The hash state covers exactly the acknowledged bytes.
    fn is_consistent(&self) -> bool {
        ContentHasher::resume(&self.hash).is_some()
            && (self.hash.len() / 64) as u64 * crate::destinations::content_hash::BLOCK as u64
                == self.offset
    }
}

pub struct SnapshotUploadWorker(pub Arc<Services>);

/// Chunk buffers, reused: allocating a fresh chunk for every request fragments the heap and
/// lets memory creep up over a long upload.
#[derive(Default)]
struct Buffers(Option<BytesMut>);

impl Buffers {
    fn take(&mut self, size: usize) -> BytesMut {
        match self.0.take() {
            Some(mut b) => {
                b.clear();
                b.reserve(size);
                b
            }
            None => BytesMut::with_capacity(size),
        }
    }

    /// Takes a sent chunk back once nobody else holds it.
    fn recycle(&mut self, chunk: Bytes) {
        if let Ok(b) = chunk.try_into_mut() {
            self.0 = Some(b);
        }
    }
}

/// Reads up to `size` bytes (fewer only at the end of the stream).
async fn read_chunk(
    stream: &mut BackupStream,
    size: usize,
    buffers: &mut Buffers,
) -> Result<Bytes, TransferError> {
    let mut buf = buffers.take(size);
    while buf.len() < size {
        // A reused buffer may have room for more than one chunk: never read past `size`.
        let room = size - buf.len();
        let n = stream
            .read_buf(&mut (&mut buf).limit(room))
            .await
            .map_err(|e| TransferError::Temporary(format!("reading the backup failed: {e}")))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Paces uploads to `rate` bytes per second over the attempt.
struct Throttle {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Throttle {
    async fn sent(&mut self, n: usize, ctx: &JobContext) -> Result<(), JobError> {
        if self.rate == 0 {
            return Ok(());
        }
        self.sent += n as u64;
        let due = std::time::Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            ctx.touch();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.stopping() => return Err(JobError::Interrupted),
            }
            ctx.touch();
        }
        Ok(())
    }
}

/// How often one attempt may start an upload over after losing its session. Past that the
/// attempt fails and backs off: a destination that keeps losing what it was given must not be
/// fed the same bytes in a tight loop.
const RESTARTS_PER_ATTEMPT: u32 = 1;

impl Worker<SnapshotUploadArgs> for SnapshotUploadWorker {
    async fn work(&self, ctx: JobContext, args: SnapshotUploadArgs) -> Result<(), JobError> {
        let services = &self.0;
        let source = services.source(&args.source)?;
        let dest = services.destination(&args.destination)?;
        if !dest.is_authorized() {
            return Err(TransferError::Unauthorized(format!(
                "destination {} is waiting for authorization (offsite auth {})",
                args.destination, args.destination
            ))
            .into());
        }
        let remote = remote_path(dest.folder(), &args.name, &args.date);
        let chunk = dest.chunk_size();
        let fresh = || UploadCheckpoint {
            remote_path: remote.clone(),
            ..Default::default()
        };
        let mut cp: UploadCheckpoint = ctx
            .checkpoint()
            .filter(|c: &UploadCheckpoint| c.remote_path == remote && c.is_consistent())
            .unwrap_or_else(fresh);
        let mut throttle = Throttle {
            rate: services.throttle(&args.destination),
            started: Instant::now(),
            sent: 0,
        };
        let mut restarts = 0;

        'session: loop {
            // A later attempt of an upload that had begun: if the last one died after the
            // destination committed the file but before the answer came, the file is there.
            if cp.session.is_some()
                && ctx.attempt() > 1
                && restarts == 0
                && let Some(done) = self.take_committed(&ctx, &args, &remote).await?
            {
                return done;
            }
            if let Some(session) = &cp.session {
                match dest.resume(session, cp.offset).await {
                    Ok(()) => info!(offset = cp.offset, "resuming upload from its checkpoint"),
                    Err(TransferError::SessionGone(why)) => {
                        warn!(%why, "upload session is gone");
                        cp = self.start_over(&ctx, &mut restarts, &remote).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let (session, mut stream, total) = match cp.session.clone() {
                Some(session) => {
                    let (stream, total) = source.open(&args.backup, cp.offset).await?;
                    (session, stream, total)
                }
                None => {
                    if let Some(done) = self.take_committed(&ctx, &args, &remote).await? {
                        return done;
                    }
                    // The source first: a backup that vanished opens no destination session.
                    let (stream, total) = source.open(&args.backup, 0).await?;
                    let session = dest.begin(&remote).await?;
                    cp = UploadCheckpoint {
                        session: Some(session.clone()),
                        ..fresh()
                    };
                    ctx.save_checkpoint(&cp).await?;
                    (session, stream, total)
                }
            };
            let mut hasher = ContentHasher::resume(&cp.hash).unwrap_or_default();
            let mut offset = cp.offset;
            let mut buffers = Buffers::default();
            let mut current = read_chunk(&mut stream, chunk, &mut buffers).await?;
            loop {
                let end = offset + current.len() as u64;
                if end > total || (end < total && current.len() < chunk) {
                    return Err(JobError::retryable(format!(
                        "the source changed size while reading: {end} of {total} bytes"
                    )));
                }
                let last = end == total;
                // Hash the chunk on another thread while the destination takes it.
                let hashing = {
                    let bytes = current.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut h = ContentHasher::new();
                        h.update(&bytes);
                        h
                    })
                };
                // A slow chunk is progress too: the client watches the request itself.
                let keepalive = ctx.keep_alive();
                let (sent, chunk_hash) = if last {
                    // The destination checks what it stored against everything sent.
                    let chunk_hash = joined(hashing).await?;
                    let mut all = hasher.clone();
                    if !all.append(chunk_hash.clone()) {
                        all.update(&current);
                    }
                    let sent = dest
                        .finish(&session, offset, current.clone(), &remote, &all.finalize())
                        .await
                        .map(Some);
                    (sent, chunk_hash)
                } else {
                    let sent = dest
                        .append(&session, offset, current.clone())
                        .await
                        .map(|()| None);
                    (sent, joined(hashing).await?)
                };
                drop(keepalive);
                match sent {
                    Ok(stored) => {
                        if !hasher.append(chunk_hash) {
                            hasher.update(&current);
                        }
                        offset = end;
                        if let Some(stored) = stored {
                            return self
                                .finished(&ctx, &args, hasher.finalize(), stored, total)
                                .await;
                        }
                        let Some(hash) = hasher.state() else {
                            return Err(JobError::Permanent(format!(
                                "internal error: chunk end {offset} is not on a 4 MiB block boundary"
                            )));
                        };
                        // Checkpoint first, then wait: a kill during the wait re-sends nothing.
                        cp.offset = offset;
                        cp.hash = hash;
                        ctx.save_checkpoint(&cp).await?;
                        ctx.progress(Progress {
                            done: offset,
                            total: Some(total),
                            unit: "bytes",
                            message: Some(format!("{} → {}", args.name, args.destination)),
                        })
                        .await?;
                        throttle.sent(current.len(), &ctx).await?;
                        buffers.recycle(std::mem::take(&mut current));
                        current = read_chunk(&mut stream, chunk, &mut buffers).await?;
                    }
                    // The destination got more than our checkpoint knows (it acknowledged a
                    // chunk we never heard back about): hash the bytes it has and go on from there.
                    Err(TransferError::IncorrectOffset(at)) if at > offset && at <= total => {
                        warn!(
                            ours = offset,
                            theirs = at,
                            "destination is further along; continuing from its offset"
                        );
                        let mut pending = current.clone();
                        while offset < at {
                            if pending.is_empty() {
                                pending = read_chunk(&mut stream, chunk, &mut buffers).await?;
                                if pending.is_empty() {
                                    return Err(JobError::retryable(
                                        "the source ended before the destination's offset",
                                    ));
                                }
                            }
                            let take = ((at - offset) as usize).min(pending.len());
                            hasher.update(&pending[..take]);
                            pending = pending.slice(take..);
                            offset += take as u64;
                            ctx.touch();
                        }
                        // Only a block boundary can be checkpointed (the hash state is per block).
                        if let Some(hash) = hasher.state() {
                            cp.offset = offset;
                            cp.hash = hash;
                            ctx.save_checkpoint(&cp).await?;
                        }
                        current = if pending.len() >= chunk
                            || offset + pending.len() as u64 == total
                        {
                            pending
                        } else {
                            let mut joined = BytesMut::from(&pending[..]);
                            let more = read_chunk(&mut stream, chunk - pending.len(), &mut buffers)
                                .await?;
                            joined.extend_from_slice(&more);
                            joined.freeze()
                        };
                    }
                    Err(
                        e @ (TransferError::IncorrectOffset(_) | TransferError::SessionGone(_)),
                    ) => {
                        warn!(error = %e, "upload session lost or inconsistent");
                        cp = self.start_over(&ctx, &mut restarts, &remote).await?;
                        continue 'session;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    async fn abandoned(&self, args: SnapshotUploadArgs, checkpoint: Option<serde_json::Value>) {
        let Some(session) = checkpoint
            .and_then(|v| serde_json::from_value::<UploadCheckpoint>(v).ok())
            .and_then(|cp| cp.session)
        else {
            return;
        };
        if let Ok(dest) = self.0.destination(&args.destination) {
            match dest.abandon(&session).await {
                Ok(()) => info!("removed the unfinished upload"),
                Err(e) => warn!(error = %e, "could not remove the unfinished upload"),
            }
        }
    }
}

/// An unfinished upload named by no job is left alone this long after its last write before a
/// scan removes it (a job may be between creating it and checkpointing it).
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// At start-up an unfinished upload named by no job goes once it is this old.
const STARTUP_ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes unfinished uploads (a folder's hidden partial files) that no job will resume: those
/// of uploads that ended cancelled or discarded, and those no job names at all once they are
/// `STARTUP_ORPHAN_AGE` old at start-up, `ORPHAN_AGE` old later. Returns how many went.
pub async fn sweep_partials(
    services: &Services,
    store: &crate::queue::Store,
    at_start: bool,
) -> Result<usize, JobError> {
    let sessions = |checkpoints: Vec<serde_json::Value>| -> Vec<Session> {
        checkpoints
            .into_iter()
            .filter_map(|v| serde_json::from_value::<UploadCheckpoint>(v).ok()?.session)
            .collect()
    };
    let kind = SnapshotUploadArgs::KIND;
    let live = sessions(
        store
            .checkpoints(kind, false)
            .await
            .map_err(JobError::retryable)?,
    );
    let ended = sessions(
        store
            .checkpoints(kind, true)
            .await
            .map_err(JobError::retryable)?,
    );
    let mut removed = 0;
    for name in services.destination_names() {
        let dest = services.destination(name)?;
        // One unusable destination must not keep the others (or the scan) from their work.
        let partials = match dest.partials().await {
            Ok(p) => p,
            Err(e) => {
                warn!(destination = %name, error = %e, "could not look for unfinished uploads");
                continue;
            }
        };
        for partial in partials {
            if live.contains(&partial) {
                continue;
            }
            let Session::Folder { temp } = &partial else {
                continue;
            };
            let age = std::fs::metadata(temp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            // At start-up no worker of this process runs yet, but another instance on the
            // same database may have just created a partial it has not checkpointed yet.
            let orphan_age = if at_start {
                STARTUP_ORPHAN_AGE
            } else {
                ORPHAN_AGE
            };
            if age >= orphan_age || ended.contains(&partial) {
                match dest.abandon(&partial).await {
                    Ok(()) => {
                        info!(file = %temp.display(), "removed an unfinished upload no job will resume");
                        removed += 1;
                    }
                    Err(e) => {
                        warn!(file = %temp.display(), error = %e, "could not remove an unfinished upload")
                    }
                }
            }
        }
    }
    Ok(removed)
}

async fn joined(task: tokio::task::JoinHandle<ContentHasher>) -> Result<ContentHasher, JobError> {
    task.await
        .map_err(|e| JobError::retryable(format!("hashing failed: {e}")))
}

/// Reads the whole stream for its length and content hash, as a destination would compute it.
async fn hash_stream(
    ctx: &JobContext,
    stream: &mut BackupStream,
) -> Result<(u64, String), TransferError> {
    let mut hasher = ContentHasher::new();
    let mut buffers = Buffers::default();
    let mut len = 0u64;
    loop {
        let chunk = read_chunk(
            stream,
            crate::destinations::content_hash::BLOCK,
            &mut buffers,
        )
        .await?;
        if chunk.is_empty() {
            return Ok((len, hasher.finalize()));
        }
        len += chunk.len() as u64;
        let (h, chunk) = tokio::task::spawn_blocking(move || {
            let mut h = ContentHasher::new();
            h.update(&chunk);
            (h, chunk)
        })
        .await
        .map_err(|e| TransferError::Temporary(format!("hashing failed: {e}")))?;
        if !hasher.append(h) {
            hasher.update(&chunk);
        }
        buffers.recycle(chunk);
        ctx.touch();
    }
}

impl SnapshotUploadWorker {
    /// Begins the upload again from byte 0, at most `RESTARTS_PER_ATTEMPT` times an attempt.
    async fn start_over(
        &self,
        ctx: &JobContext,
        restarts: &mut u32,
        remote: &str,
    ) -> Result<UploadCheckpoint, JobError> {
        *restarts += 1;
        if *restarts > RESTARTS_PER_ATTEMPT {
            return Err(JobError::retryable(
                "the destination lost the upload session again; trying later",
            ));
        }
        warn!("starting the upload again from the beginning");
        let cp = UploadCheckpoint {
            remote_path: remote.to_string(),
            ..Default::default()
        };
        ctx.save_checkpoint(&cp).await?;
        Ok(cp)
    }

    /// A crash after the destination committed the file but before we heard back leaves it
    /// there unrecorded: record it (and finish) if it is this backup, byte for byte, instead
    /// of sending it all again.
    async fn take_committed(
        &self,
        ctx: &JobContext,
        args: &SnapshotUploadArgs,
        remote: &str,
    ) -> Result<Option<Result<(), JobError>>, JobError> {
        let Some((stored, ours)) = self.committed_copy(ctx, args, remote).await? else {
            return Ok(None);
        };
        info!(remote = %stored.path, "the destination already has this backup, complete and intact");
        let size = stored.size;
        Ok(Some(self.finished(ctx, args, ours, stored, size).await))
    }

    /// The file already at `remote`, with the content hash of the source, when it is this
    /// backup exactly: the same length and the same content hash as the source read locally
    /// (reading costs far less than sending).
    async fn committed_copy(
        &self,
        ctx: &JobContext,
        args: &SnapshotUploadArgs,
        remote: &str,
    ) -> Result<Option<(crate::destinations::RemoteFile, String)>, JobError> {
        let dest = self.0.destination(&args.destination)?;
        let Some(found) = dest.stat(remote, None).await? else {
            return Ok(None);
        };
        let (mut stream, total) = self.0.source(&args.source)?.open(&args.backup, 0).await?;
        if found.size != total {
            warn!(
                remote,
                theirs = found.size,
                ours = total,
                "a file of another size is already at the upload's path"
            );
            return Ok(None);
        }
        // Reading a large file back (a folder on a slow NAS) is progress too.
        let keepalive = ctx.keep_alive();
        let found = match found.content_hash {
            Some(_) => found,
            None => match dest.stat(remote, Some(total)).await? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        let (len, ours) = hash_stream(ctx, &mut stream).await?;
        drop(keepalive);
        if len != total || found.content_hash.as_deref() != Some(ours.as_str()) {
            warn!(
                remote,
                "a file with other content is already at the upload's path"
            );
            return Ok(None);
        }
        Ok(Some((found, ours)))
    }

    /// Records a stored file whose content hash the destination reported as `theirs`; `ours` is
    /// the hash of the bytes read from the source.
    async fn finished(
        &self,
        ctx: &JobContext,
        args: &SnapshotUploadArgs,
        ours: String,
        stored: crate::destinations::RemoteFile,
        total: u64,
    ) -> Result<(), JobError> {
        let hash_differs = stored
            .content_hash
            .as_ref()
            .is_some_and(|theirs| *theirs != ours);
        if stored.size != total || hash_differs {
            let theirs = stored.content_hash.as_deref().unwrap_or("(none)");
            // Do not leave a file that looks like a good backup.
            if let Ok(dest) = self.0.destination(&args.destination)
                && let Err(e) = dest.delete(&stored.path).await
            {
                warn!(path = %stored.path, error = %e, "could not remove the mismatched upload");
            }
            return Err(JobError::Permanent(format!(
                "the stored copy differs from the backup: {} has {} bytes with content hash \
                 {theirs}, the {total} bytes read hash to {ours}; not recorded as backed up",
                stored.path, stored.size
            )));
        }
        let record = UploadRecord {
            id: 0,
            destination: args.destination.clone(),
            source: args.source.clone(),
            backup_slug: args.backup.clone(),
            backup_name: args.name.clone(),
            backup_date: args.date,
            size: total as i64,
            remote_path: stored.path.clone(),
            content_hash: Some(ours.clone()),
            job_id: Some(ctx.job_id()),
            uploaded_at: Utc::now(),
            deleted_at: None,
        };
        ctx.store()
            .record_upload(&record)
            .await
            .map_err(JobError::retryable)?;
        ctx.progress(Progress {
            done: total,
            total: Some(total),
            unit: "bytes",
            message: None,
        })
        .await?;
        info!(remote = %stored.path, bytes = total, content_hash = %ours, "uploaded");
        if self.0.has_retention(&args.destination) {
            let prune = super::retention::RetentionPruneArgs {
                destination: args.destination.clone(),
                dry_run: false,
            };
            ctx.enqueue(&EnqueueRequest {
                kind: super::retention::RetentionPruneArgs::KIND.into(),
                args: serde_json::to_value(prune).map_err(JobError::permanent)?,
                idempotency_key: Some(format!(
                    "retention:{}:after-job:{}",
                    args.destination,
                    ctx.job_id()
                )),
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
