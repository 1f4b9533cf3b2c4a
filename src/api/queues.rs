use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
};
use crate::queue::JobState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    /// Worker slots of this process; absent for a queue only seen in the database.
    pub concurrency: Option<usize>,
    /// Jobs per state (every state listed, zeros included).
    pub counts: BTreeMap<String, i64>,
}

pub(crate) async fn views(state: &AppState) -> Result<Vec<QueueView>, ApiError> {
    let counts = state.store.counts().await?;
    let paused = state.store.queues().await?;
    let mut names: Vec<String> = state.config.queue_names();
    for (q, _, _) in &counts {
        if !names.contains(q) {
            names.push(q.clone());
        }
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let counts = JobState::ALL
                .iter()
                .map(|s| {
                    let n = counts
                        .iter()
                        .find(|(q, st, _)| *q == name && st == s)
                        .map_or(0, |c| c.2);
                    (s.to_string(), n)
                })
                .collect();
            QueueView {
                paused: paused.iter().any(|p| p.name == name && p.paused),
                concurrency: state.config.queues.get(&name).map(|q| q.concurrency),
                counts,
                name,
            }
        })
        .collect())
}

/// Queues with their job counts per state.
#[utoipa::path(get, path = "/api/v1/queues", tag = "queues", operation_id = "list_queues", responses((status = 200, body = [QueueView])))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<QueueView>>, ApiError> {
    Ok(Json(views(&state).await?))
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<QueueView, ApiError> {
    if !state.config.queues.contains_key(name) {
        return Err(ApiError::NotFound(format!(
            "queue {name:?} is not configured"
        )));
    }
    state.store.set_paused(name, paused).await?;
    state.nudge();
    views(state)
        .await?
        .into_iter()
        .find(|q| q.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("queue {name:?} is not configured")))
}

/// Pause a queue: its waiting jobs stay put until resumed (persisted; running jobs finish).
#[utoipa::path(post, path = "/api/v1/queues/{name}/pause", tag = "queues", operation_id = "pause_queue",
    params(("name" = String, Path, example = "default")), responses((status = 200, body = QueueView), (status = 404, body = Problem)))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    Ok(Json(set_paused(&state, &name, true).await?))
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/api/v1/queues/{name}/resume", tag = "queues", operation_id = "resume_queue",
    params(("name" = String, Path, example = "default")), responses((status = 200, body = QueueView), (status = 404, body = Problem)))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    Ok(Json(set_paused(&state, &name, false).await?))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queues", get(list))
        .route("/queues/{name}/pause", post(pause))
        .route("/queues/{name}/resume", post(resume))
}
