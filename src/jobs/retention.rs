//! `retention_prune`: removes old copies from a destination — only files offsite uploaded
//! there, never the newest one, never anything when the listing failed. Keeps the newest
//! `max_backups` by the backup's own date, plus (optionally) the newest backup of each of the
//! last N days, ISO weeks, months and years. A dry run only says what would go.

use std::{collections::HashSet, sync::Arc};

use chrono::Datelike;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::{Kind, destination_configured, services::Services};
use crate::{
    config::DestinationConfig,
    destinations::{Destination, layers::DryRun},
    queue::{FieldError, JobArgs, JobContext, JobError, KindSettings, Worker, store::UploadRecord},
};

/// The period a backup falls in: (year, day / week / month / 0).
type Bucket = fn(&UploadRecord) -> (i32, u32);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_backups: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl From<&DestinationConfig> for RetentionPolicy {
    fn from(c: &DestinationConfig) -> Self {
        RetentionPolicy {
            max_backups: c.max_backups,
            daily: c.keep_daily,
            weekly: c.keep_weekly,
            monthly: c.keep_monthly,
            yearly: c.keep_yearly,
        }
    }
}

impl RetentionPolicy {
    pub fn keeps_everything(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    /// Indices (into `newest_first`) of the uploads to keep. The newest is always kept.
    pub fn keep(&self, newest_first: &[UploadRecord]) -> HashSet<usize> {
        if self.keeps_everything() {
            return (0..newest_first.len()).collect();
        }
        let mut keep: HashSet<usize> =
            (0..newest_first.len().min(self.max_backups.max(1) as usize)).collect();
        let buckets: [(u32, Bucket); 4] = [
            (self.daily, |u| {
                (u.backup_date.year(), u.backup_date.ordinal())
            }),
            (self.weekly, |u| {
                let w = u.backup_date.iso_week();
                (w.year(), w.week())
            }),
            (self.monthly, |u| {
                (u.backup_date.year(), u.backup_date.month())
            }),
            (self.yearly, |u| (u.backup_date.year(), 0)),
        ];
        for (count, bucket) in buckets {
            let mut seen = HashSet::new();
            for (i, upload) in newest_first.iter().enumerate() {
                if seen.len() >= count as usize {
                    break;
                }
                if seen.insert(bucket(upload)) {
                    keep.insert(i);
                }
            }
        }
        keep
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPruneArgs {
    pub destination: String,
    /// Only report what would be deleted.
    #[serde(default)]
    pub dry_run: bool,
}

impl JobArgs for RetentionPruneArgs {
    const KIND: &'static str = "retention_prune";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 10,
            priority: 3,
            timeout: Some(std::time::Duration::from_secs(1800)),
            stall_timeout: None,
        }
    }
    fn tags(&self) -> Vec<String> {
        vec![super::destination_tag(&self.destination)]
    }
    fn validate(&self) -> Result<(), FieldError> {
        if self.destination.is_empty() {
            return Err(FieldError::new("destination", "must not be empty"));
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("clean-up of old backups on {}", self.destination)
    }
}

impl Kind for RetentionPruneArgs {
    type Worker = RetentionPruneWorker;
    fn worker(services: &Arc<Services>) -> RetentionPruneWorker {
        RetentionPruneWorker(services.clone())
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        destination_configured(services, "destination", &self.destination)
    }
}

pub struct RetentionPruneWorker(pub Arc<Services>);

impl Worker<RetentionPruneArgs> for RetentionPruneWorker {
    async fn work(&self, ctx: JobContext, args: RetentionPruneArgs) -> Result<(), JobError> {
        let inner = self.0.destination(&args.destination)?;
        // A dry run goes through the same steps against a destination that deletes nothing.
        let dry_run = args.dry_run.then(|| DryRun::new(inner.clone()));
        let dest: &dyn Destination = match &dry_run {
            Some(d) => d,
            None => &**inner,
        };
        let policy = self.0.retention(&args.destination);
        // A failed listing fails the job before anything is deleted.
        let listed: HashSet<String> = dest
            .list()
            .await?
            .into_iter()
            .map(|f| f.path.to_lowercase())
            .collect();
        let ours = ctx
            .store()
            .uploads(Some(&args.destination), false)
            .await
            .map_err(JobError::retryable)?;
        // Only copies that are really there count towards what is kept.
        let present: Vec<UploadRecord> = ours
            .into_iter()
            .filter(|u| listed.contains(&u.remote_path.to_lowercase()))
            .collect();
        let keep = policy.keep(&present);
        let doomed: Vec<&UploadRecord> = present
            .iter()
            .enumerate()
            .filter(|(i, _)| !keep.contains(i))
            .map(|(_, u)| u)
            .collect();
        // Two records can name one file (same name and second): never delete a kept one.
        let kept_paths: HashSet<String> = present
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, u)| u.remote_path.to_lowercase())
            .collect();
        let mut deleted = Vec::new();
        let done = |deleted: &Vec<String>| match &dry_run {
            Some(d) => {
                json!({"dry_run": true, "kept": keep.len(), "would_delete": d.would_delete()})
            }
            None => json!({"dry_run": false, "kept": keep.len(), "deleted": deleted}),
        };
        for upload in doomed {
            if !kept_paths.contains(&upload.remote_path.to_lowercase()) {
                if let Err(e) = dest.delete(&upload.remote_path).await {
                    warn!(path = %upload.remote_path, error = %e, "could not delete an old copy");
                    ctx.save_checkpoint(&done(&deleted)).await?;
                    return Err(e.into());
                }
                if dry_run.is_none() {
                    info!(path = %upload.remote_path, "deleted old copy");
                }
                deleted.push(upload.remote_path.clone());
            }
            if dry_run.is_none() {
                ctx.store()
                    .mark_upload_deleted(upload.id, ctx.job_id())
                    .await
                    .map_err(JobError::retryable)?;
            }
        }
        if dry_run.is_some() {
            info!(destination = %args.destination, would_delete = ?deleted, "retention dry run");
        }
        ctx.save_checkpoint(&done(&deleted)).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    fn uploads(dates: &[chrono::DateTime<Utc>]) -> Vec<UploadRecord> {
        dates
            .iter()
            .enumerate()
            .map(|(i, d)| UploadRecord {
                id: i as i64,
                destination: "d".into(),
                source: "s".into(),
                backup_slug: format!("b{i}"),
                backup_name: "n".into(),
                backup_date: *d,
                size: 1,
                remote_path: format!("/b{i}.tar"),
                content_hash: None,
                sha256: None,
                job_id: None,
                uploaded_at: *d,
                deleted_at: None,
            })
            .collect()
    }

    #[test]
    fn count_keeps_the_newest_n() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        let list = uploads(
            &(0..5)
                .map(|i| start - Duration::days(i))
                .collect::<Vec<_>>(),
        );
        let p = RetentionPolicy {
            max_backups: 2,
            ..Default::default()
        };
        let mut keep: Vec<usize> = p.keep(&list).into_iter().collect();
        keep.sort();
        assert_eq!(keep, vec![0, 1]);
    }

    #[test]
    fn zero_everywhere_keeps_all_and_the_newest_is_always_kept() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        let list = uploads(&[start, start - Duration::days(1)]);
        assert_eq!(RetentionPolicy::default().keep(&list).len(), 2);
        let only_monthly = RetentionPolicy {
            monthly: 1,
            ..Default::default()
        };
        assert!(only_monthly.keep(&list).contains(&0));
    }

    #[test]
    fn generations_keep_one_per_day_week_month_year() {
        // Twice a day for 400 days.
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
        let dates: Vec<_> = (0..800).map(|i| start - Duration::hours(12 * i)).collect();
        let list = uploads(&dates);
        let p = RetentionPolicy {
            max_backups: 1,
            daily: 7,
            weekly: 4,
            monthly: 6,
            yearly: 2,
        };
        let keep = p.keep(&list);
        // 7 days; weeks, months and years overlap with newer picks.
        assert!(keep.contains(&0));
        let days: HashSet<_> = keep
            .iter()
            .map(|i| list[*i].backup_date.date_naive())
            .collect();
        assert_eq!(days.len(), keep.len(), "at most one per day kept");
        assert!(keep.len() <= 1 + 7 + 4 + 6 + 2);
        assert!(keep.len() >= 13, "{}", keep.len());
        let oldest = keep.iter().map(|i| list[*i].backup_date).min().unwrap();
        assert!(
            oldest.year() == 2025,
            "the yearly generation reaches last year: {oldest}"
        );
    }
}
