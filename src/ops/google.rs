//! Google Drive sources (`[google_drive.<name>]`): what the API, the panel, the CLI and Home
//! Assistant show of each (authorized?, where the feed stands, per destination what is current
//! and what is behind), "sync now", and "what do we have of this file, where, since when".

use serde::Serialize;

use super::OpsError;
use crate::{
    destinations::Authorization,
    jobs::{
        google_delta::{SCHEDULE_PREFIX, state},
        services::Services,
    },
    queue::{Registry, Store, store::Enqueued},
};

/// A Google Drive source as people see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GoogleSourceInfo {
    pub name: String,
    /// A refresh token is stored (or configured) and Google has not refused it.
    pub authorized: bool,
    /// The first full listing is done and the changes feed is followed.
    pub following_changes: bool,
    /// When the first full listing finished (RFC 3339).
    pub initial_sync_at: Option<String>,
    /// When the last sync run ended without an error (RFC 3339).
    pub last_sync_at: Option<String>,
    /// Why the last sync run failed, if it did (redacted).
    pub last_error: Option<String>,
    /// Files (not folders) Drive holds that are mirrored.
    pub files: i64,
    /// Files listed but not mirrored (Forms, Sites, shortcuts, exclusions).
    pub skipped: i64,
    /// Per destination: what it holds.
    pub destinations: Vec<state::DestinationStatus>,
}

/// One file: what Drive says and what each destination holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GoogleFileInfo {
    pub file_id: String,
    /// Path in the mirror (under the prefix); none for a skipped or removed file.
    pub path: Option<String>,
    pub name: String,
    pub mime_type: String,
    pub size: Option<u64>,
    pub md5: Option<String>,
    pub modified_time: Option<String>,
    /// Trashed or deleted in Drive.
    pub removed: bool,
    /// Why it is not mirrored, if it is not.
    pub skipped: Option<String>,
    pub copies: Vec<state::CopyRow>,
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn db(store: &Store) -> state::Db {
    let (w, r) = store.pools();
    (w.clone(), r.clone())
}

fn sql(e: sqlx::Error) -> OpsError {
    OpsError::Internal(format!("the sync state cannot be read: {e}"))
}

pub fn configured(services: &Services, name: &str) -> Result<(), OpsError> {
    match services.google_drive(name) {
        Some(_) => Ok(()),
        None => Err(OpsError::NotFound(format!(
            "Google Drive source {name:?} is not configured under [google_drive]"
        ))),
    }
}

/// Every configured source.
pub async fn list(services: &Services, store: &Store) -> Result<Vec<GoogleSourceInfo>, OpsError> {
    let db = db(store);
    let mut out = Vec::new();
    for name in services.google_drive_names() {
        let Some(drive) = services.google_drive(name) else {
            continue;
        };
        let st = state::source(&db, name).await.map_err(sql)?;
        let (files, skipped) = state::counts(&db, name).await.map_err(sql)?;
        let mut destinations = Vec::new();
        for d in &drive.config().destinations {
            destinations.push(state::status(&db, name, d).await.map_err(sql)?);
        }
        out.push(GoogleSourceInfo {
            name: name.clone(),
            authorized: drive.is_authorized(),
            following_changes: st.page_token.is_some(),
            initial_sync_at: time(st.initial_done_at),
            last_sync_at: time(st.last_sync_at),
            last_error: st
                .last_error
                .map(|e| crate::redact::redact(&e).into_owned()),
            files,
            skipped,
            destinations,
        });
    }
    Ok(out)
}

/// Enqueues the source's schedule job now (the caller wakes its workers).
pub async fn sync_now(
    services: &Services,
    store: &Store,
    registry: &Registry,
    name: &str,
) -> Result<Enqueued, OpsError> {
    configured(services, name)?;
    super::run_schedule(store, registry, &format!("{SCHEDULE_PREFIX}{name}")).await
}

/// Files whose path or name contains `query` (or whose id it is), with their copies.
pub async fn files(
    services: &Services,
    store: &Store,
    name: &str,
    query: &str,
) -> Result<Vec<GoogleFileInfo>, OpsError> {
    configured(services, name)?;
    let db = db(store);
    let mut out = Vec::new();
    for f in state::find(&db, name, query).await.map_err(sql)? {
        let copies = state::copies_of(&db, name, &f.file_id).await.map_err(sql)?;
        out.push(GoogleFileInfo {
            file_id: f.file_id,
            path: f.path,
            name: f.name,
            mime_type: f.mime,
            size: f.size,
            md5: f.md5,
            modified_time: f.modified_time,
            removed: f.removed,
            skipped: f.skipped,
            copies,
        });
    }
    Ok(out)
}
