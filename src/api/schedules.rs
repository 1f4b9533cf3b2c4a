use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};

use super::{
    AppState,
    error::{ApiError, Problem},
    jobs::EnqueueResponse,
};
pub use crate::ops::views::ScheduleInfo;
use crate::queue::scheduler;

/// Schedules with their last and next run.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", operation_id = "list_schedules", responses((status = 200, body = [ScheduleInfo])))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ScheduleInfo>>, ApiError> {
    Ok(Json(
        scheduler::list(&state.store)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Enqueue a schedule's job now, outside its slots.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/run", tag = "schedules", operation_id = "run_schedule",
    params(("name" = String, Path, example = "snapshots")),
    responses((status = 201, body = EnqueueResponse), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let enqueued = crate::ops::run_schedule(&state.store, &state.registry, &name).await?;
    state.nudge();
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            job: enqueued.job.into(),
            deduplicated: false,
        }),
    ))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list))
        .route("/schedules/{name}/run", post(run))
}
