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
                if !ctx.enqueue(&request).await?.deduplicated {
                    new += 1;
                }
            }
        }
        info!(source = %args.source, backups = backups.len(), new_uploads = new, "scanned");
        ctx.save_checkpoint(&json!({"backups": backups.len(), "new_uploads": new}))
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
        let mut cp: UploadCheckpoint = ctx
            .checkpoint()
            .filter(|c: &UploadCheckpoint| c.remote_path == remote && c.is_consistent())
            .unwrap_or(UploadCheckpoint {
                remote_path: remote.clone(),
                ..Default::default()
            });
        let mut throttle = Throttle {
            rate: services.throttle(&args.destination),
            started: Instant::now(),
            sent: 0,
        };

        'session: loop {
            let session = match cp.session.clone() {
                Some(session) => match dest.resume(&session, cp.offset).await {
                    Ok(()) => {
                        info!(offset = cp.offset, "resuming upload from its checkpoint");
                        session
                    }
                    Err(TransferError::SessionGone(why)) => {
                        warn!(%why, "upload session is gone; starting again from the beginning");
                        cp = UploadCheckpoint {
                            remote_path: remote.clone(),
                            ..Default::default()
                        };
                        continue 'session;
                    }
                    Err(e) => return Err(e.into()),
                },
                None => {
                    let session = dest.begin(&remote).await?;
                    cp = UploadCheckpoint {
                        remote_path: remote.clone(),
                        session: Some(session.clone()),
                        offset: 0,
                        hash: String::new(),
                    };
                    ctx.save_checkpoint(&cp).await?;
                    session
                }
            };
            let mut hasher = ContentHasher::resume(&cp.hash).unwrap_or_default();
            let (mut stream, total) = source.open(&args.backup, cp.offset).await?;
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
                let sent = if last {
                    dest.finish(&session, offset, current.clone(), &remote)
                        .await
                        .map(Some)
                } else {
                    dest.append(&session, offset, current.clone())
                        .await
                        .map(|()| None)
                };
                drop(keepalive);
                let chunk_hash = hashing
                    .await
                    .map_err(|e| JobError::retryable(format!("hashing failed: {e}")))?;
                match sent {
                    Ok(stored) => {
                        if !hasher.append(chunk_hash) {
                            hasher.update(&current);
                        }
                        offset = end;
                        if let Some(stored) = stored {
                            return self.finished(&ctx, &args, hasher, stored, total).await;
                        }
                        throttle.sent(current.len(), &ctx).await?;
                        let Some(hash) = hasher.state() else {
                            return Err(JobError::Permanent(format!(
                                "internal error: chunk end {offset} is not on a 4 MiB block boundary"
                            )));
                        };
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
                    Err(TransferError::IncorrectOffset(_)) | Err(TransferError::SessionGone(_)) => {
                        warn!(
                            "upload session lost or inconsistent; starting again from the beginning"
                        );
                        cp = UploadCheckpoint {
                            remote_path: remote.clone(),
                            ..Default::default()
                        };
                        ctx.save_checkpoint(&cp).await?;
                        continue 'session;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

impl SnapshotUploadWorker {
    async fn finished(
        &self,
        ctx: &JobContext,
        args: &SnapshotUploadArgs,
        hasher: ContentHasher,
        stored: crate::destinations::RemoteFile,
        total: u64,
    ) -> Result<(), JobError> {
        let ours = hasher.finalize();
        if let Some(theirs) = &stored.content_hash
            && *theirs != ours
        {
            // Do not leave a file that looks like a good backup.
            if let Ok(dest) = self.0.destination(&args.destination)
                && let Err(e) = dest.delete(&stored.path).await
            {
                warn!(path = %stored.path, error = %e, "could not remove the mismatched upload");
            }
            return Err(JobError::Permanent(format!(
                "content hash mismatch: {} has {theirs}, the bytes read hash to {ours}; not recorded as backed up",
                stored.path
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
