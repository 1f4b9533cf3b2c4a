//! `[devices]`: each device's last fetch, result, last change and versions; fetch now, test
//! the connection, download a version, and a masked diff between two versions.

use axum::{
    Json, Router,
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
use crate::ops::devices as ops;
pub use crate::ops::devices::DeviceInfo;

/// Every configured device with its last fetch, result, last change and stored versions.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", operation_id = "list_devices",
    responses((status = 200, body = [DeviceInfo])))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<DeviceInfo>> {
    Json(ops::list(&state.config).await)
}

/// Enqueue a fetch of the device now (its schedule's job).
#[utoipa::path(post, path = "/api/v1/devices/{name}/fetch", tag = "devices", operation_id = "fetch_device",
    params(("name" = String, Path, example = "kitchen")),
    responses((status = 201, body = EnqueueResponse), (status = 404, body = Problem)))]
pub async fn fetch(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let enqueued = ops::fetch_now(&state.config, &state.store, &state.registry, &name).await?;
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
    let message = ops::test_connection(&state.config, &state.services, &name).await?;
    Ok(Json(TestResult { message }))
}

/// A stored version's file as it came from the device (it may hold the device's secrets).
#[utoipa::path(get, path = "/api/v1/devices/{name}/versions/{file}", tag = "devices", operation_id = "download_device_version",
    params(("name" = String, Path, example = "kitchen"), ("file" = String, Path, example = "backup_2026-12-02_03-30.json")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = Problem)))]
pub async fn download(
    State(state): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ops::configured(&state.config, &name)?;
    let bytes = ops::version_bytes(&state.config.data_dir, &name, &file).await?;
    Ok(crate::http::attachment(&file, bytes))
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
    let text = ops::diff(&state.config, &name, &q.from, &q.to).await?;
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
