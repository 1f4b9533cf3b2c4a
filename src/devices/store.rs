//! Artifacts of a device under `<data_dir>/devices/<device>/`: `backup_YYYY-MM-DD_HH-MM.<ext>`
//! (`_2`, `_3` … when a fetch in the same minute finds the name taken), owner-only (0600 in a
//! 0700 directory), written atomically (temporary file, fsync, rename, directory fsync).
//!
//! `index.json` (also written atomically) lists the stored versions, newest last, with their
//! SHA-256, size and firmware, and the last fetch's time and result. A JSON file beside the
//! artifacts rather than a table: it travels with them inside Home Assistant's backups of
//! `/data`, and a restored directory describes itself without the queue's database.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Artifact, DeviceBackupHandler};

/// One stored version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Version {
    pub file: String,
    pub sha256: String,
    pub size: u64,
    pub firmware: Option<String>,
    pub fetched_at: DateTime<Utc>,
}

/// How the last fetch ended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FetchState {
    #[default]
    Ok,
    Failed,
    /// The device waits for the user's confirmation on it (the FRITZ!Box's second factor):
    /// not a failure; asked again on the schedule.
    WaitingForConfirmation,
}

/// The last fetch, successful or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct LastFetch {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// `ok`, `failed` or `waiting_for_confirmation`.
    #[serde(default)]
    pub state: FetchState,
    /// Whether it stored a new version (false: unchanged, or failed).
    pub changed: bool,
    /// Why it failed, or what it waits for (redacted).
    pub error: Option<String>,
    /// Since when the device has been waiting for a confirmation (the first fetch of this
    /// run of waiting answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Index {
    /// Oldest first.
    pub versions: Vec<Version>,
    pub last_fetch: Option<LastFetch>,
    /// When the newest version was stored.
    pub last_change: Option<DateTime<Utc>>,
    /// The first failed fetch since the last successful one (none while fetches succeed).
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// The last successful fetch (changed or not).
    #[serde(default)]
    pub last_ok: Option<DateTime<Utc>>,
}

/// What [`store`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    New(Version),
    Unchanged(Version),
}

pub fn device_dir(data_dir: &Path, device: &str) -> PathBuf {
    data_dir.join("devices").join(device)
}

const INDEX: &str = "index.json";

/// Indexes are read and written one at a time in this process (a fetch and the API's reads).
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn read_index(dir: &Path) -> Index {
    let path = dir.join(INDEX);
    match tokio::fs::read(&path).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), "the device's index is unreadable: {e}");
            Index::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the device's index: {e}");
            Index::default()
        }
    }
}

/// The index a write starts from. A read error fails the fetch (it is retried) rather than
/// replace the index with one that forgets the stored versions. An index that does not parse
/// is kept beside as `index.json.unreadable-<time>` and a new one begun: its versions' files
/// stay where they are, but are no longer listed or pruned.
async fn index_for_update(dir: &Path) -> std::io::Result<Index> {
    let path = dir.join(INDEX);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice(&bytes) {
        Ok(index) => Ok(index),
        Err(e) => {
            let aside = dir.join(format!(
                "{INDEX}.unreadable-{}",
                Utc::now().format("%Y-%m-%dT%H-%M-%S")
            ));
            std::fs::rename(&path, &aside)?;
            tracing::warn!(file = %path.display(), kept_as = %aside.display(),
                "the device's index is unreadable ({e}); kept it aside and began a new one");
            Ok(Index::default())
        }
    }
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// `bytes` at `dir/name`, atomically and owner-only.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn write_index(dir: &Path, index: &Index) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(index).map_err(std::io::Error::other)?;
    write_atomic(dir, INDEX, &bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name for an artifact fetched at `now` that no file has.
fn free_name(dir: &Path, now: DateTime<Utc>, ext: &str) -> String {
    let stem = format!("backup_{}", now.format("%Y-%m-%d_%H-%M"));
    let mut name = format!("{stem}.{ext}");
    let mut n = 2;
    while dir.join(&name).exists() {
        name = format!("{stem}_{n}.{ext}");
        n += 1;
    }
    name
}

/// Stores `artifact` unless its normalised content equals the newest version's; prunes to
/// the newest `keep`; records the fetch.
pub async fn store(
    data_dir: &Path,
    device: &str,
    handler: &dyn DeviceBackupHandler,
    artifact: &Artifact,
    keep: usize,
) -> std::io::Result<Stored> {
    let _g = LOCK.lock().await;
    let dir = device_dir(data_dir, device);
    ensure_dir(&dir)?;
    let mut index = index_for_update(&dir).await?;
    let now = Utc::now();
    if let Some(newest) = index.versions.last().cloned()
        && let Ok(old) = tokio::fs::read(dir.join(&newest.file)).await
        && handler.normalise(&old) == handler.normalise(&artifact.bytes)
    {
        index.last_fetch = Some(LastFetch {
            at: now,
            ok: true,
            state: FetchState::Ok,
            changed: false,
            error: None,
            waiting_since: None,
        });
        index.failing_since = None;
        index.last_ok = Some(now);
        write_index(&dir, &index)?;
        return Ok(Stored::Unchanged(newest));
    }
    let name = free_name(&dir, now, handler.extension());
    write_atomic(&dir, &name, &artifact.bytes)?;
    let version = Version {
        file: name,
        sha256: sha256_hex(&artifact.bytes),
        size: artifact.bytes.len() as u64,
        firmware: artifact.firmware.clone(),
        fetched_at: now,
    };
    index.versions.push(version.clone());
    let excess = index.versions.len().saturating_sub(keep.max(1));
    let pruned: Vec<Version> = index.versions.drain(..excess).collect();
    index.last_fetch = Some(LastFetch {
        at: now,
        ok: true,
        state: FetchState::Ok,
        changed: true,
        error: None,
        waiting_since: None,
    });
    index.last_change = Some(now);
    index.failing_since = None;
    index.last_ok = Some(now);
    write_index(&dir, &index)?;
    for p in pruned {
        if let Err(e) = std::fs::remove_file(dir.join(&p.file))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(device, file = %p.file, "cannot remove a pruned device backup: {e}");
        }
    }
    Ok(Stored::New(version))
}

/// Records a failed fetch (the error is redacted before it is stored).
pub async fn record_failure(data_dir: &Path, device: &str, error: &str) -> std::io::Result<()> {
    let _g = LOCK.lock().await;
    let dir = device_dir(data_dir, device);
    ensure_dir(&dir)?;
    let mut index = index_for_update(&dir).await?;
    let now = Utc::now();
    index.failing_since.get_or_insert(now);
    index.last_fetch = Some(LastFetch {
        at: now,
        ok: false,
        state: FetchState::Failed,
        changed: false,
        error: Some(crate::redact::redact(error).into_owned()),
        waiting_since: None,
    });
    write_index(&dir, &index)
}

/// Records that the device waits for the user's confirmation; returns since when it has
/// been waiting (kept from the previous fetch if that one waited too).
pub async fn record_waiting(
    data_dir: &Path,
    device: &str,
    message: &str,
) -> std::io::Result<DateTime<Utc>> {
    let _g = LOCK.lock().await;
    let dir = device_dir(data_dir, device);
    ensure_dir(&dir)?;
    let mut index = index_for_update(&dir).await?;
    let now = Utc::now();
    let since = index
        .last_fetch
        .as_ref()
        .filter(|f| f.state == FetchState::WaitingForConfirmation)
        .and_then(|f| f.waiting_since)
        .unwrap_or(now);
    index.last_fetch = Some(LastFetch {
        at: now,
        ok: false,
        state: FetchState::WaitingForConfirmation,
        changed: false,
        error: Some(crate::redact::redact(message).into_owned()),
        waiting_since: Some(since),
    });
    write_index(&dir, &index)?;
    Ok(since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::shelly_gen1::ShellyGen1;

    fn art(s: &str) -> Artifact {
        Artifact {
            bytes: s.as_bytes().to_vec(),
            firmware: Some("v1".into()),
        }
    }

    #[tokio::test]
    async fn store_on_change_same_minute_names_and_pruning() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let a = r#"{"device":{},"time":"10:00","name":"a"}"#;
        let a_later = r#"{"device":{},"time":"10:01","name":"a"}"#;
        let b = r#"{"device":{},"time":"10:02","name":"b"}"#;
        let c = r#"{"device":{},"time":"10:02","name":"c"}"#;
        let first = store(d, "sw", &ShellyGen1, &art(a), 2).await.unwrap();
        assert!(matches!(first, Stored::New(_)));
        let same = store(d, "sw", &ShellyGen1, &art(a_later), 2).await.unwrap();
        assert!(matches!(same, Stored::Unchanged(_)), "only the clock moved");
        let Stored::New(vb) = store(d, "sw", &ShellyGen1, &art(b), 2).await.unwrap() else {
            panic!("b changed")
        };
        let Stored::New(vc) = store(d, "sw", &ShellyGen1, &art(c), 2).await.unwrap() else {
            panic!("c changed")
        };
        assert_ne!(vb.file, vc.file, "same minute, distinct files");
        let dir = device_dir(d, "sw");
        let index = read_index(&dir).await;
        assert_eq!(index.versions, vec![vb.clone(), vc.clone()], "kept 2");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("backup_"))
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let mode = std::fs::metadata(dir.join(&vc.file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(vc.sha256, sha256_hex(c.as_bytes()));
        assert_eq!(vc.firmware.as_deref(), Some("v1"));
    }

    #[tokio::test]
    async fn an_unreadable_index_is_kept_aside_and_a_failing_read_stores_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let dir = device_dir(d, "sw");
        ensure_dir(&dir).unwrap();
        std::fs::write(dir.join(INDEX), b"{ not json").unwrap();
        let a = r#"{"device":{},"name":"a"}"#;
        assert!(matches!(
            store(d, "sw", &ShellyGen1, &art(a), 2).await.unwrap(),
            Stored::New(_)
        ));
        let aside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("index.json.unreadable-"))
            .collect();
        assert_eq!(aside.len(), 1, "the unreadable index is kept");
        assert_eq!(
            std::fs::read(dir.join(&aside[0])).unwrap(),
            b"{ not json",
            "as it was"
        );
        assert_eq!(read_index(&dir).await.versions.len(), 1);

        // An index that cannot be read at all (here: a directory): the fetch fails and
        // nothing is stored or rewritten.
        let other = device_dir(d, "plug");
        std::fs::create_dir_all(other.join(INDEX)).unwrap();
        assert!(store(d, "plug", &ShellyGen1, &art(a), 2).await.is_err());
        assert!(record_failure(d, "plug", "x").await.is_err());
        let files: Vec<String> = std::fs::read_dir(&other)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![INDEX.to_string()], "nothing written");
    }
}
