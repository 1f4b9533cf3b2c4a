use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, error::ApiError};

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the database answers and takes writes; `degraded` when it cannot be written
    /// (answered with 503).
    pub status: String,
    /// Why the database cannot be written (a full disk), while it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub version: String,
    pub instance_id: String,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, body = Health),
        (status = 503, description = "The database cannot be written", body = Health),
        (status = 500, body = super::error::Problem)))]
pub async fn health(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.store.counts().await?;
    let problem = state.store.write_problem();
    let status = if problem.is_some() {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    let health = Health {
        status: if problem.is_some() { "degraded" } else { "ok" }.into(),
        problem,
        version: env!("CARGO_PKG_VERSION").into(),
        instance_id: state.instance_id.clone(),
    };
    Ok((status, Json(health)).into_response())
}

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}
