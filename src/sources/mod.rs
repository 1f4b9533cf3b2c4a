//! Backup sources: where Home Assistant backups come from.
//!
//! A source lists backups and opens one for sequential reading from a byte
//! offset, so an interrupted transfer resumes from its checkpoint instead of
//! starting over. Two kinds exist:
//!
//! - [`FolderSource`]: a directory of `.tar` files, e.g. `/backup` mapped
//!   read-only into the add-on (`map: backup:ro`), or any folder on a plain
//!   install.
//! - [`SupervisorSource`]: the Supervisor API (`GET /backups`,
//!   `GET /backups/{slug}/download`), for when the folder is not mapped or
//!   backups live in other locations the Supervisor knows about.

use chrono::{DateTime, NaiveDateTime, Utc};

use std::sync::Arc;

use crate::transfer::{ByteSource, ByteStream, TransferError};

pub mod folder;
pub mod google_drive;
pub mod postgres;
pub mod supervisor;

pub use folder::{FolderSource, read_backup_json};
pub use supervisor::SupervisorSource;

/// One backup as a source lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupInfo {
    /// The source's identifier of the backup: what [`Source::open`] takes.
    pub slug: String,
    pub name: String,
    /// When the backup was made (from `backup.json`), or the file's mtime
    /// for archives that are not Home Assistant backups.
    pub date: DateTime<Utc>,
    /// Bytes, when the source knows them.
    pub size: Option<u64>,
}

/// The bytes of one backup from the requested offset on, read sequentially.
///
/// A failure in the middle (connection dropped, file unreadable, body shorter
/// than announced) surfaces as an `io::Error` from the reader; callers treat
/// that as temporary and resume from their last checkpoint.
pub type BackupStream = ByteStream;

/// Where backups come from: one file per kind of source, behind this trait.
#[async_trait::async_trait]
pub trait BackupSource: Send + Sync {
    /// The backups available now, oldest first.
    async fn list(&self) -> Result<Vec<BackupInfo>, TransferError>;

    /// Open backup `slug` for reading from byte `offset` on. Returns the
    /// stream and the backup's total size in bytes (not the remaining
    /// length), so callers can check the checkpoint against it.
    ///
    /// A backup that no longer exists is [`TransferError::NotFound`].
    async fn open(&self, slug: &str, offset: u64) -> Result<(BackupStream, u64), TransferError>;
}

/// A configured source, shared by the jobs that read from it.
#[derive(Clone)]
pub struct Source(Arc<dyn BackupSource>);

impl<T: BackupSource + 'static> From<T> for Source {
    fn from(s: T) -> Self {
        Source(Arc::new(s))
    }
}

impl std::ops::Deref for Source {
    type Target = dyn BackupSource;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Source {
    /// One backup of this source as a transfer reads it.
    pub fn backup(&self, slug: &str) -> Backup {
        Backup {
            source: self.clone(),
            slug: slug.to_string(),
        }
    }
}

/// One backup, opened at an offset by the copy loop.
pub struct Backup {
    source: Source,
    slug: String,
}

#[async_trait::async_trait]
impl ByteSource for Backup {
    async fn open_at(&self, offset: u64) -> Result<(ByteStream, u64), TransferError> {
        self.source.open(&self.slug, offset).await
    }
}

/// The order [`Source::list`] promises: oldest first, slug as tie-breaker
/// so the order is stable between listings.
fn listing_order(a: &BackupInfo, b: &BackupInfo) -> std::cmp::Ordering {
    a.date.cmp(&b.date).then_with(|| a.slug.cmp(&b.slug))
}

/// Parse a backup date as Home Assistant writes it.
///
/// The Supervisor writes Python's `isoformat()` of an aware UTC datetime
/// (`2026-01-31T03:00:00.123456+00:00`), which is RFC 3339. Very old backups
/// and hand-edited ones may lack the offset or use a space separator; those
/// are taken as UTC, which is what the Supervisor always used.
fn parse_ha_date(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(raw, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, format) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_date_forms_home_assistant_has_written() {
        let want = "2026-01-31T03:00:00.123456Z"
            .parse::<DateTime<Utc>>()
            .unwrap();
        assert_eq!(
            parse_ha_date("2026-01-31T03:00:00.123456+00:00"),
            Some(want)
        );
        assert_eq!(
            parse_ha_date("2026-01-31T04:00:00.123456+01:00"),
            Some(want)
        );
        assert_eq!(parse_ha_date("2026-01-31T03:00:00.123456"), Some(want));
        assert_eq!(
            parse_ha_date("2026-01-31 03:00:00.123456+00:00"),
            Some(want)
        );
        assert_eq!(
            parse_ha_date("2026-01-31T03:00:00+00:00"),
            Some("2026-01-31T03:00:00Z".parse().unwrap())
        );
        assert_eq!(parse_ha_date("yesterday"), None);
    }
}
