//! `[devices]`: each device's last fetch, result, last change and versions; fetch now, test
//! the connection, download a version, and a masked diff between two versions.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use super::{
    AppState,
    error::{ApiError, Problem},
    jobs::EnqueueResponse,
};
use crate::devices::store::{self, Index};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub enabled: bool,
    pub keep: usize,
    #[serde(flatten)]
    pub index: Index,
}

fn configured(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.config.devices.contains_key(name) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "device {name:?} is not configured under [devices]"
        )))
    }
}

/// Every configured device with its last fetch, result, last change and stored versions.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", operation_id = "list_devices",
    responses((status = 200, body = [DeviceInfo])))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<DeviceInfo>> {
    let mut out = Vec::new();
    for (name, d) in &state.config.devices {
        let index = store::read_index(&store::device_dir(&state.config.data_dir, name)).await;
        out.push(DeviceInfo {
            name: name.clone(),
            kind: d.kind.clone(),
            enabled: d.enabled,
            keep: d.keep,
            index,
        });
    }
    Json(out)
}

/// Enqueue a fetch of the device now (its schedule's job).
#[utoipa::path(post, path = "/api/v1/devices/{name}/fetch", tag = "devices", operation_id = "fetch_device",
    params(("name" = String, Path, example = "kitchen")),
    responses((status = 201, body = EnqueueResponse), (status = 404, body = Problem)))]
pub async fn fetch(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    configured(&state, &name)?;
    let schedule = format!("{}{name}", crate::jobs::device_fetch::SCHEDULE_PREFIX);
    let enqueued = crate::ops::run_schedule(&state.store, &state.registry, &schedule).await?;
    state.nudge();
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            job: enqueued.job.into(),
            deduplicated: false,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    /// What the device said about itself (e.g. its firmware).
    pub message: String,
}

/// Contact the device now and check the credentials; 502 with the reason when it fails.
#[utoipa::path(post, path = "/api/v1/devices/{name}/test", tag = "devices", operation_id = "test_device",
    params(("name" = String, Path, example = "kitchen")),
    responses((status = 200, body = TestResult), (status = 404, body = Problem), (status = 502, body = Problem)))]
pub async fn test(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TestResult>, ApiError> {
    configured(&state, &name)?;
    crate::jobs::device_fetch::test_connection(&state.services, &name)
        .await
        .map(|message| Json(TestResult { message }))
        .map_err(|e| ApiError::BadGateway(e.to_string()))
}

/// A stored version's file as it came from the device (it may hold the device's secrets).
#[utoipa::path(get, path = "/api/v1/devices/{name}/versions/{file}", tag = "devices", operation_id = "download_device_version",
    params(("name" = String, Path, example = "kitchen"), ("file" = String, Path, example = "backup_2026-12-02_03-30.json")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = Problem)))]
pub async fn download(
    State(state): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    configured(&state, &name)?;
    let bytes = version_bytes(&state, &name, &file).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// Only a file the index lists (no path from the request reaches the file system otherwise).
async fn version_bytes(state: &AppState, name: &str, file: &str) -> Result<Vec<u8>, ApiError> {
    let dir = store::device_dir(&state.config.data_dir, name);
    let index = store::read_index(&dir).await;
    if !index.versions.iter().any(|v| v.file == file) {
        return Err(ApiError::NotFound(format!(
            "device {name} has no stored version {file:?}"
        )));
    }
    tokio::fs::read(dir.join(file))
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read {file}: {e}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DiffQuery {
    /// The older version's file.
    pub from: String,
    /// The newer version's file.
    pub to: String,
}

/// A line diff of two versions (`-`/`+`), normalised, with secrets masked; 422 for binary
/// formats.
#[utoipa::path(get, path = "/api/v1/devices/{name}/diff", tag = "devices", operation_id = "diff_device_versions",
    params(("name" = String, Path, example = "kitchen"), DiffQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn diff(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, ApiError> {
    configured(&state, &name)?;
    let kind = &state.config.devices[&name].kind;
    let handler = crate::devices::handler(kind)
        .ok_or_else(|| ApiError::Internal(format!("unknown device type {kind}")))?;
    let a = version_bytes(&state, &name, &q.from).await?;
    let b = version_bytes(&state, &name, &q.to).await?;
    let text = crate::devices::diff(handler, &a, &b).ok_or_else(|| {
        ApiError::Validation(vec![crate::queue::FieldError::new(
            "from",
            format!("{kind} backups are binary; no text diff"),
        )])
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", get(list))
        .route("/devices/{name}/fetch", post(fetch))
        .route("/devices/{name}/test", post(test))
        .route("/devices/{name}/versions/{file}", get(download))
        .route("/devices/{name}/diff", get(diff))
}
