//! Backups: what was uploaded where, "back up now", destinations and their authorization.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Html,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ApiJson, Problem},
    jobs::EnqueueResponse,
};
use crate::{
    app::SNAPSHOTS,
    destinations::dropbox::Pkce,
    queue::{FieldError, store::UploadRecord},
    transfer::TransferError,
};

/// An authorization started and not finished yet.
#[derive(Clone)]
pub struct Pending {
    pkce: Pkce,
    /// Where the user was sent, so the panel can offer the link again.
    pub url: String,
    /// For the redirect flow: the `state` Dropbox hands back to `/callback`.
    state: String,
}

/// Pending authorizations, by destination.
pub type PendingAuth = Arc<Mutex<HashMap<String, Pending>>>;

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
    super::schedules::enqueue_now(&state, SNAPSHOTS)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => {
                ApiError::NotFound("no snapshot schedule is configured ([snapshots])".into())
            }
            other => other,
        })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DestinationView {
    pub name: String,
    /// `folder` or `dropbox`.
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

pub(crate) async fn view(state: &AppState, name: &str) -> Result<DestinationView, ApiError> {
    let uploads = state.store.uploads(Some(name), false).await?;
    view_from(state, name, &uploads)
}

/// The view of destination `name` given uploads already read (only its own, not deleted,
/// are counted).
pub(crate) fn view_from(
    state: &AppState,
    name: &str,
    uploads: &[UploadRecord],
) -> Result<DestinationView, ApiError> {
    let dest = state
        .services
        .destination(name)
        .map_err(|_| ApiError::NotFound(format!("destination {name:?} is not configured")))?;
    let stored = || {
        uploads
            .iter()
            .filter(|u| u.destination == name && u.deleted_at.is_none())
    };
    Ok(DestinationView {
        name: name.into(),
        kind: dest.info().kind.into(),
        folder: dest.info().location,
        authorized: dest.authorization().is_none_or(|a| a.is_authorized()),
        backups: stored().count(),
        last_upload_at: stored().map(|u| u.uploaded_at).max(),
    })
}

/// Destinations with their authorization state.
#[utoipa::path(get, path = "/api/v1/destinations", tag = "backups", operation_id = "list_destinations", responses((status = 200, body = [DestinationView])))]
pub async fn destinations(
    State(state): State<AppState>,
) -> Result<Json<Vec<DestinationView>>, ApiError> {
    let mut out = Vec::new();
    for name in state.services.destination_names() {
        out.push(view(&state, name).await?);
    }
    Ok(Json(out))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeStart {
    /// Open this in a browser, allow access, and paste the code Dropbox shows back.
    pub authorize_url: String,
}

/// Start authorizing a Dropbox destination (PKCE; no redirect needed).
#[utoipa::path(post, path = "/api/v1/destinations/{name}/authorize", tag = "backups", operation_id = "authorize_destination",
    params(("name" = String, Path, example = "dropbox")),
    responses((status = 200, body = AuthorizeStart), (status = 404, body = Problem),
        (status = 409, description = "Not a destination that needs authorization", body = Problem)))]
pub async fn authorize(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AuthorizeStart>, ApiError> {
    Ok(Json(AuthorizeStart {
        authorize_url: begin_authorization(&state, &name)?,
    }))
}

/// Starts (or restarts) authorizing `name`; returns the URL to send the user to.
pub(crate) fn begin_authorization(state: &AppState, name: &str) -> Result<String, ApiError> {
    let client = dropbox_of(state, name)?;
    let pkce = Pkce::generate();
    let nonce = format!("{:032x}", rand::random::<u128>());
    // With a registered redirect URI Dropbox sends the user back to /callback; without one it
    // shows a code to paste.
    let redirect = client.redirect_uri().map(str::to_owned);
    let url = client.authorize_url(
        &pkce,
        redirect.as_deref(),
        redirect.as_ref().map(|_| nonce.as_str()),
    );
    state
        .auth
        .lock()
        .map_err(|_| ApiError::Internal("auth lock poisoned".into()))?
        .insert(
            name.to_string(),
            Pending {
                pkce,
                url: url.clone(),
                state: nonce,
            },
        );
    Ok(url)
}

/// The authorization of `name` waiting for its code, if any.
pub(crate) fn pending_authorization(state: &AppState, name: &str) -> Option<Pending> {
    state.auth.lock().ok()?.get(name).cloned()
}

fn dropbox_of<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<&'a dyn crate::destinations::Authorization, ApiError> {
    state
        .services
        .destination(name)
        .map_err(|_| ApiError::NotFound(format!("destination {name:?} is not configured")))?
        .authorization()
        .ok_or_else(|| ApiError::Conflict(format!("destination {name:?} needs no authorization")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeCode {
    /// The code Dropbox showed after "Allow" (spaces around it are ignored).
    #[schema(pattern = "\\S")]
    pub code: String,
}

/// Finish authorizing with the pasted code; waiting uploads continue at once.
#[utoipa::path(post, path = "/api/v1/destinations/{name}/authorize/code", tag = "backups", operation_id = "authorize_destination_code",
    params(("name" = String, Path, example = "dropbox")), request_body = AuthorizeCode,
    responses((status = 200, body = DestinationView), (status = 404, body = Problem),
        (status = 409, description = "No authorization was started", body = Problem),
        (status = 422, description = "Dropbox did not accept the code", body = Problem),
        (status = 502, description = "Dropbox could not be reached or failed", body = Problem)))]
pub async fn authorize_code(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AuthorizeCode>,
) -> Result<Json<DestinationView>, ApiError> {
    finish_authorization(&state, &name, &body.code).await?;
    Ok(Json(view(&state, &name).await?))
}

/// Exchanges the pasted code; on success the waiting uploads of `name` run at once.
pub(crate) async fn finish_authorization(
    state: &AppState,
    name: &str,
    code: &str,
) -> Result<(), ApiError> {
    let client = dropbox_of(state, name)?;
    let code = code.trim();
    if code.is_empty() {
        return Err(ApiError::Validation(vec![FieldError::new(
            "code",
            "paste the code Dropbox showed",
        )]));
    }
    let pkce = pending_authorization(state, name).ok_or_else(|| {
        ApiError::Conflict("start the authorization first (POST …/authorize)".into())
    })?;
    client
        .exchange_code(code, &pkce.pkce.verifier, None)
        .await
        .map_err(|e| match e {
            TransferError::Permanent(m) | TransferError::Unauthorized(m) => {
                ApiError::Validation(vec![FieldError::new("code", m)])
            }
            // Dropbox unreachable or failing: not our fault, and worth trying again.
            other => ApiError::BadGateway(format!("Dropbox could not be asked: {other}")),
        })?;
    authorized(state, name).await?;
    Ok(())
}

/// After a successful code exchange (either flow): the pending authorization is done and the
/// jobs that waited for the destination run now.
async fn authorized(state: &AppState, destination: &str) -> Result<u64, ApiError> {
    if let Ok(mut pending) = state.auth.lock() {
        pending.remove(destination);
    }
    let woken = state
        .store
        .wake_tag(&crate::jobs::destination_tag(destination))
        .await?;
    state.nudge();
    Ok(woken)
}

#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The panel's message page (the callback is opened outside ingress, so no prefix).
fn page(status: StatusCode, title: &str, text: &str) -> (StatusCode, Html<String>) {
    (
        status,
        Html(crate::web::page::message_page("", title, text)),
    )
}

/// Where Dropbox sends the user back in the redirect flow (a redirect URI registered with the
/// app and set as the destination's `redirect_uri`). The `state` proves the request is ours.
pub async fn callback(
    State(state): State<AppState>,
    Query(p): Query<CallbackParams>,
) -> (StatusCode, Html<String>) {
    // Anyone can make a link to this page with any text in `error_description`, so the page
    // says only what we know: access was not granted.
    if let Some(error) = p.error {
        let why = if error == "access_denied" {
            "Access was denied in Dropbox. Start the authorization again from the panel and \
             press Allow."
        } else {
            "Dropbox did not grant access. Start the authorization again from the panel."
        };
        return page(
            StatusCode::BAD_REQUEST,
            "Authorization was not granted",
            why,
        );
    }
    let (Some(code), Some(nonce)) = (p.code, p.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Missing code",
            "This page is opened by Dropbox after you allow access.",
        );
    };
    let found = state.auth.lock().ok().and_then(|pending| {
        pending
            .iter()
            .find(|(_, p)| super::ct_eq(p.state.as_bytes(), nonce.as_bytes()))
            .map(|(name, p)| (name.clone(), p.clone()))
    });
    let Some((name, pending)) = found else {
        return page(
            StatusCode::BAD_REQUEST,
            "Unknown or expired authorization",
            "Start the authorization again.",
        );
    };
    let Ok(client) = dropbox_of(&state, &name) else {
        return page(StatusCode::NOT_FOUND, "Unknown destination", &name);
    };
    let redirect = client.redirect_uri().map(str::to_owned);
    if let Err(e) = client
        .exchange_code(&code, &pending.pkce.verifier, redirect.as_deref())
        .await
    {
        return page(
            StatusCode::BAD_REQUEST,
            "Dropbox did not accept the code",
            &e.to_string(),
        );
    }
    if let Err(e) = authorized(&state, &name).await {
        tracing::error!(error = ?e, "could not wake waiting jobs");
    }
    page(
        StatusCode::OK,
        "Dropbox is authorized",
        &format!("Destination {name} is ready; you can close this page."),
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/uploads", get(uploads))
        .route("/snapshots/run", post(run))
        .route("/destinations", get(destinations))
        .route("/destinations/{name}/authorize", post(authorize))
        .route("/destinations/{name}/authorize/code", post(authorize_code))
}
