//! Backups: what was uploaded where, "back up now", destinations and their authorization.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ApiJson, Problem},
    jobs::EnqueueResponse,
};
pub use crate::ops::DestinationView;
use crate::{ops, queue::store::UploadRecord};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    pub destination: Option<String>,
    /// Also list copies retention has deleted.
    pub include_deleted: Option<bool>,
}

/// What was uploaded where, newest backup first.
#[utoipa::path(get, path = "/api/v1/uploads", tag = "backups", operation_id = "list_uploads", params(UploadParams),
    responses((status = 200, body = [UploadRecord])))]
pub async fn uploads(
    State(state): State<AppState>,
    Query(p): Query<UploadParams>,
) -> Result<Json<Vec<UploadRecord>>, ApiError> {
    Ok(Json(
        state
            .store
            .uploads(p.destination.as_deref(), p.include_deleted.unwrap_or(false))
            .await?,
    ))
}

/// Back up now: scan the snapshot source and upload what is new, at once.
#[utoipa::path(post, path = "/api/v1/snapshots/run", tag = "backups", operation_id = "back_up_now",
    responses((status = 201, body = EnqueueResponse), (status = 404, description = "No [snapshots] configured", body = Problem)))]
pub async fn run(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let enqueued = ops::back_up_now(&state.store, &state.registry)
        .await
        .map_err(|e| match e {
            ops::OpsError::NotFound(_) => {
                ApiError::NotFound("no snapshot schedule is configured ([snapshots])".into())
            }
            other => other.into(),
        })?;
    state.nudge();
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            job: enqueued.job.into(),
            deduplicated: false,
        }),
    ))
}

/// Destinations with their authorization state.
#[utoipa::path(get, path = "/api/v1/destinations", tag = "backups", operation_id = "list_destinations", responses((status = 200, body = [DestinationView])))]
pub async fn destinations(
    State(state): State<AppState>,
) -> Result<Json<Vec<DestinationView>>, ApiError> {
    Ok(Json(
        ops::destinations::all(&state.store, &state.services).await?,
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeStart {
    /// Open this in a browser, allow access, and paste the code Dropbox shows back.
    pub authorize_url: String,
}

/// Start authorizing a Dropbox destination or a Google Drive source (PKCE; no redirect
/// needed: Google's consent ends on a loopback address the user pastes back).
#[utoipa::path(post, path = "/api/v1/destinations/{name}/authorize", tag = "backups", operation_id = "authorize_destination",
    params(("name" = String, Path, example = "dropbox")),
    responses((status = 200, body = AuthorizeStart), (status = 404, body = Problem),
        (status = 409, description = "Not a destination that needs authorization", body = Problem)))]
pub async fn authorize(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AuthorizeStart>, ApiError> {
    Ok(Json(AuthorizeStart {
        authorize_url: ops::authorization::begin_authorization(
            &state.services,
            &state.auth,
            &name,
        )?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeCode {
    /// The code Dropbox showed after "Allow", or for Google the address the browser ended on
    /// (`http://127.0.0.1:8765/?code=…`) or its code (spaces around it are ignored).
    #[schema(pattern = "\\S")]
    pub code: String,
}

/// What was authorized: a destination, or a Google Drive source.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum Authorized {
    Destination(DestinationView),
    GoogleDrive(crate::ops::google::GoogleSourceInfo),
}

/// Finish authorizing with the pasted code (for a Google Drive source: the address the
/// browser ended on, or its code); waiting jobs continue at once.
#[utoipa::path(post, path = "/api/v1/destinations/{name}/authorize/code", tag = "backups", operation_id = "authorize_destination_code",
    params(("name" = String, Path, example = "dropbox")), request_body = AuthorizeCode,
    responses((status = 200, body = Authorized), (status = 404, body = Problem),
        (status = 409, description = "No authorization was started", body = Problem),
        (status = 422, description = "Dropbox did not accept the code", body = Problem),
        (status = 502, description = "Dropbox could not be reached or failed", body = Problem)))]
pub async fn authorize_code(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AuthorizeCode>,
) -> Result<Json<Authorized>, ApiError> {
    ops::authorization::finish_authorization(
        &state.store,
        &state.services,
        &state.auth,
        &name,
        &body.code,
    )
    .await?;
    state.nudge();
    if state.services.google_drive(&name).is_some() && !state.services.has_destination(&name) {
        let all = crate::ops::google::list(&state.services, &state.store).await?;
        if let Some(g) = all.into_iter().find(|g| g.name == name) {
            return Ok(Json(Authorized::GoogleDrive(g)));
        }
    }
    Ok(Json(Authorized::Destination(
        ops::destinations::view(&state.store, &state.services, &name).await?,
    )))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/uploads", get(uploads))
        .route("/snapshots/run", post(run))
        .route("/destinations", get(destinations))
        .route("/destinations/{name}/authorize", post(authorize))
        .route("/destinations/{name}/authorize/code", post(authorize_code))
}
