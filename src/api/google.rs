//! `[google_drive]`: each source's state (authorized, the feed, per destination what is
//! current and behind), sync now, and what offsite holds of a file, where and since when.
//! Authorizing a source goes through `/destinations/{name}/authorize`, as for Dropbox.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    AppState,
    error::{ApiError, Problem},
    jobs::EnqueueResponse,
};
use crate::ops::google as ops;
pub use crate::ops::google::{GoogleFileInfo, GoogleSourceInfo};

/// Every Google Drive source with its sync state per destination.
#[utoipa::path(get, path = "/api/v1/google-drive", tag = "google_drive", operation_id = "list_google_drive",
    responses((status = 200, body = [GoogleSourceInfo])))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<GoogleSourceInfo>>, ApiError> {
    Ok(Json(ops::list(&state.services, &state.store).await?))
}

/// Enqueue a sync of the source now (its schedule's job).
#[utoipa::path(post, path = "/api/v1/google-drive/{name}/sync", tag = "google_drive", operation_id = "sync_google_drive",
    params(("name" = String, Path, example = "me")),
    responses((status = 201, body = EnqueueResponse), (status = 404, body = Problem)))]
pub async fn sync(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let enqueued = ops::sync_now(&state.services, &state.store, &state.registry, &name).await?;
    state.nudge();
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            job: enqueued.job.into(),
            deduplicated: enqueued.deduplicated,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FileQuery {
    /// Part of the file's path or name (case-insensitive), or its Drive id.
    #[param(min_length = 1, pattern = "\\S")]
    pub q: String,
}

/// What offsite holds of matching files: Drive's metadata and, per destination, the stored
/// copy (path, size, hashes, when), or where it was soft-deleted to. At most 200.
#[utoipa::path(get, path = "/api/v1/google-drive/{name}/files", tag = "google_drive", operation_id = "google_drive_files",
    params(("name" = String, Path, example = "me"), FileQuery),
    responses((status = 200, body = [GoogleFileInfo]), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn files(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Json<Vec<GoogleFileInfo>>, ApiError> {
    if q.q.trim().is_empty() {
        return Err(
            crate::ops::OpsError::Validation(vec![crate::queue::FieldError::new(
                "q",
                "give part of a path or name, or a file id",
            )])
            .into(),
        );
    }
    Ok(Json(
        ops::files(&state.services, &state.store, &name, q.q.trim()).await?,
    ))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/google-drive", get(list))
        .route("/google-drive/{name}/sync", post(sync))
        .route("/google-drive/{name}/files", get(files))
}
