//! `snapshot_scan` and `snapshot_upload`: Home Assistant backups (or any folder of `.tar`
//! files) to each destination, once per (backup, destination), resumable from the last
//! acknowledged chunk after a crash.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::{Kind, destination_configured, services::Services, source_configured};
use crate::{
    destinations::{Session, remote_path},
    queue::{
        EnqueueRequest, FieldError, JobArgs, JobContext, JobError, KindSettings, Progress, Worker,
        store::UploadRecord,
    },
    transfer::{
        TransferError,
        checkpoint::CopyCheckpoint,
        copy::{Copied, Copy, copy},
    },
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
    fn describe(&self) -> String {
        "scan for new backups".into()
    }
}

impl Kind for SnapshotScanArgs {
    type Worker = SnapshotScanWorker;
    fn worker(services: &Arc<Services>) -> SnapshotScanWorker {
        SnapshotScanWorker(services.clone())
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        source_configured(services, "source", &self.source)?;
        self.destinations
            .iter()
            .try_for_each(|d| destination_configured(services, "destinations", d))
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
    fn describe(&self) -> String {
        format!("upload of {:?} to {}", self.name, self.destination)
    }
}

impl Kind for SnapshotUploadArgs {
    type Worker = SnapshotUploadWorker;
    fn worker(services: &Arc<Services>) -> SnapshotUploadWorker {
        SnapshotUploadWorker(services.clone())
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        source_configured(services, "source", &self.source)?;
        destination_configured(services, "destination", &self.destination)
    }
}

pub struct SnapshotUploadWorker(pub Arc<Services>);

impl Worker<SnapshotUploadArgs> for SnapshotUploadWorker {
    async fn work(&self, ctx: JobContext, args: SnapshotUploadArgs) -> Result<(), JobError> {
        let services = &self.0;
        let source = services.source(&args.source)?;
        let dest = services.destination(&args.destination)?;
        if let Some(auth) = dest.authorization()
            && !auth.is_authorized()
        {
            return Err(TransferError::Unauthorized(format!(
                "destination {} is waiting for authorization (offsite auth {})",
                args.destination, args.destination
            ))
            .into());
        }
        let backup = source.backup(&args.backup);
        let copied = copy(
            &ctx,
            Copy {
                source: &backup,
                dest: &**dest,
                remote: remote_path(dest.root(), &args.name, &args.date),
                chunk: services.chunk_size(&args.destination),
                label: format!("{} → {}", args.name, args.destination),
                md5: None,
            },
        )
        .await?;
        self.finished(&ctx, &args, copied).await
    }

    async fn abandoned(&self, args: SnapshotUploadArgs, checkpoint: Option<serde_json::Value>) {
        let Some(session) = checkpoint
            .and_then(|v| serde_json::from_value::<CopyCheckpoint>(v).ok())
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
            .filter_map(|v| serde_json::from_value::<CopyCheckpoint>(v).ok()?.session)
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
    // At start-up no worker of this process runs yet, but another instance on the same
    // database may have just created a partial it has not checkpointed yet.
    let orphan_age = if at_start {
        STARTUP_ORPHAN_AGE
    } else {
        ORPHAN_AGE
    };
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
        let ids = |sessions: &[Session]| -> Vec<String> {
            sessions.iter().map(|s| dest.upload_id(s)).collect()
        };
        let (live, ended) = (ids(&live), ids(&ended));
        for partial in partials {
            let id = dest.upload_id(&partial.session);
            if live.contains(&id) {
                continue;
            }
            if partial.idle.is_some_and(|idle| idle >= orphan_age) || ended.contains(&id) {
                match dest.abandon(&partial.session).await {
                    Ok(()) => {
                        info!(upload = %partial.label, "removed an unfinished upload no job will resume");
                        removed += 1;
                    }
                    Err(e) => {
                        warn!(upload = %partial.label, error = %e, "could not remove an unfinished upload")
                    }
                }
            }
        }
    }
    Ok(removed)
}

impl SnapshotUploadWorker {
    /// Records the stored, checked copy and asks for retention.
    async fn finished(
        &self,
        ctx: &JobContext,
        args: &SnapshotUploadArgs,
        copied: Copied,
    ) -> Result<(), JobError> {
        let record = UploadRecord {
            id: 0,
            destination: args.destination.clone(),
            source: args.source.clone(),
            backup_slug: args.backup.clone(),
            backup_name: args.name.clone(),
            backup_date: args.date,
            size: copied.size as i64,
            remote_path: copied.stored.path.clone(),
            content_hash: copied.stored.content_hash.clone(),
            sha256: Some(copied.sha256.clone()),
            job_id: Some(ctx.job_id()),
            uploaded_at: Utc::now(),
            deleted_at: None,
        };
        ctx.store()
            .record_upload(&record)
            .await
            .map_err(JobError::retryable)?;
        ctx.progress(Progress {
            done: copied.size,
            total: Some(copied.size),
            unit: "bytes",
            message: None,
        })
        .await?;
        info!(remote = %copied.stored.path, bytes = copied.size, sha256 = %copied.sha256, "uploaded");
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
