//! The destinations overview the API, the panel and Home Assistant show.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::OpsError;
use crate::{
    jobs::services::Services,
    queue::{Store, store::UploadRecord},
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DestinationView {
    pub name: String,
    /// `folder`, `dropbox`, `s3` or `sharepoint`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where backups go on it.
    pub folder: String,
    /// False while the user has to authorize it; its uploads wait meanwhile.
    pub authorized: bool,
    /// Backups currently stored there by offsite.
    pub backups: usize,
    pub last_upload_at: Option<DateTime<Utc>>,
}

/// The view of destination `name`.
pub async fn view(
    store: &Store,
    services: &Services,
    name: &str,
) -> Result<DestinationView, OpsError> {
    let uploads = store.uploads(Some(name), false).await?;
    view_from(services, name, &uploads)
}

/// The view of destination `name` given uploads already read (only its own, not deleted,
/// are counted).
pub fn view_from(
    services: &Services,
    name: &str,
    uploads: &[UploadRecord],
) -> Result<DestinationView, OpsError> {
    let dest = services
        .destination(name)
        .map_err(|_| OpsError::NotFound(format!("destination {name:?} is not configured")))?;
    let stored = || {
        uploads
            .iter()
            .filter(|u| u.destination == name && u.deleted_at.is_none())
    };
    let info = dest.info();
    Ok(DestinationView {
        name: name.into(),
        kind: info.kind.into(),
        folder: info.location,
        authorized: !super::authorization::needs_authorization(services, name),
        backups: stored().count(),
        last_upload_at: stored().map(|u| u.uploaded_at).max(),
    })
}

/// Every configured destination, in configuration order.
pub async fn all(store: &Store, services: &Services) -> Result<Vec<DestinationView>, OpsError> {
    let mut out = Vec::new();
    for name in services.destination_names() {
        out.push(view(store, services, name).await?);
    }
    Ok(out)
}
