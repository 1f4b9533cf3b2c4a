use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    jobs::EnqueueResponse,
};
use crate::queue::{
    scheduler::{self, RunNowError, ScheduleView},
    state::to_datetime,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleInfo {
    pub name: String,
    pub kind: String,
    /// When it fires, in words: `every 6h`, `mon, thu at 02:15 (Europe/Berlin)` …
    pub when: String,
    pub enabled: bool,
    /// The file it was defined in.
    pub source: String,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<i64>,
    pub next_run_at: Option<DateTime<Utc>>,
}

impl From<ScheduleView> for ScheduleInfo {
    fn from(v: ScheduleView) -> Self {
        let r = v.record;
        ScheduleInfo {
            when: v
                .spec
                .map(|s| s.describe())
                .unwrap_or_else(|| "unreadable".into()),
            name: r.def.name,
            kind: r.def.kind,
            enabled: r.def.enabled,
            source: r.def.source,
            last_run_at: r.last_run_at.map(to_datetime),
            last_job_id: r.last_job_id,
            next_run_at: r.next_run_at.filter(|_| r.def.enabled).map(to_datetime),
        }
    }
}

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
    enqueue_now(&state, &name).await
}

/// Enqueues a schedule's job now and answers 201 with it.
pub(crate) async fn enqueue_now(
    state: &AppState,
    name: &str,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let enqueued = scheduler::run_now(&state.store, &state.registry, name)
        .await
        .map_err(|e| match e {
            RunNowError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RunNowError::Invalid { .. } => {
                ApiError::Validation(vec![crate::queue::FieldError::new(
                    "schedule",
                    e.to_string(),
                )])
            }
            RunNowError::Store(s) => s.into(),
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list))
        .route("/schedules/{name}/run", post(run))
}
