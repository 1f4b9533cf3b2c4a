use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ApiJson, Problem},
};
pub use crate::ops::views::{AttemptView, EnqueueResponse, JobDetail, JobView};
use crate::queue::{EnqueueRequest, FieldError, JobState, store::JobFilter};

/// A job to submit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// The job kind, e.g. `noop`.
    pub kind: String,
    /// The kind's arguments.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub args: Value,
    /// Submitting the same key again returns the existing job instead of a new one.
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
    /// Defaults to the kind's queue.
    pub queue: Option<String>,
    /// 1 (first) to 4 (last); defaults per kind.
    #[schema(minimum = 1, maximum = 4)]
    pub priority: Option<i64>,
    /// Run no earlier than this (RFC 3339, years 0001 to 9999).
    pub run_at: Option<DateTime<Utc>>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
}

/// The kinds the description documents, each with its args' schema (a component of the same
/// name): `POST /jobs` is a `oneOf` over them, told apart by `kind`.
pub(crate) fn documented_kinds() -> Vec<(&'static str, &'static str)> {
    use crate::{
        jobs::{
            db_dump::DbDumpArgs,
            noop::NoopArgs,
            retention::RetentionPruneArgs,
            snapshot::{SnapshotScanArgs, SnapshotUploadArgs},
        },
        queue::JobArgs,
    };
    vec![
        (NoopArgs::KIND, "NoopArgs"),
        (SnapshotScanArgs::KIND, "SnapshotScanArgs"),
        (SnapshotUploadArgs::KIND, "SnapshotUploadArgs"),
        (RetentionPruneArgs::KIND, "RetentionPruneArgs"),
        (DbDumpArgs::KIND, "DbDumpArgs"),
    ]
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Submit a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", operation_id = "enqueue_job", request_body = EnqueueBody,
    responses(
        (status = 201, description = "Created", body = EnqueueResponse),
        (status = 200, description = "A job with this idempotency key exists; it is returned", body = EnqueueResponse),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 422, description = "Invalid kind, args or options; `errors` names each field", body = Problem),
    ))]
pub async fn enqueue(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EnqueueBody>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let request = EnqueueRequest {
        kind: body.kind,
        args: body.args,
        idempotency_key: body.idempotency_key,
        queue: body.queue,
        priority: body.priority,
        max_attempts: body.max_attempts,
        run_at: body.run_at,
    };
    let job = state
        .registry
        .prepare(&request)
        .map_err(ApiError::Validation)?;
    let enqueued = state.store.enqueue(&job).await?;
    let status = if enqueued.deduplicated {
        StatusCode::OK
    } else {
        state.nudge();
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(EnqueueResponse {
            job: enqueued.job.into(),
            deduplicated: enqueued.deduplicated,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Comma-separated states, e.g. `discarded,cancelled` (the pattern is set from the states
    /// by `Contract`).
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    pub cursor: Option<String>,
}

/// The `state` filter of the list: states separated by commas, nothing else (the CLI's
/// `--state` is more forgiving about spaces).
pub(crate) fn state_list_pattern() -> String {
    let one = JobState::ALL.map(JobState::as_str).join("|");
    format!("^(({one})(,({one}))*)?$")
}

fn parse_state_list(text: &str) -> Result<Vec<JobState>, ApiError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|s| s.parse::<JobState>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ApiError::Validation(vec![FieldError::new(
                "state",
                format!("{e}; separate states with commas, without spaces"),
            )])
        })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 422, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<JobList>, ApiError> {
    let filter = JobFilter {
        states: p
            .state
            .as_deref()
            .map(parse_state_list)
            .transpose()?
            .unwrap_or_default(),
        kind: p.kind,
        queue: p.queue,
    };
    let limit = match p.limit.as_deref() {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::Validation(vec![FieldError::new(
                    "limit",
                    "must be a whole number from 1 to 500",
                )])
            })?,
    };
    let before = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|c| *c >= 1).ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                "cursor",
                "not a cursor returned by this API",
            )])
        })?),
    };
    let jobs = state.store.list_jobs(&filter, limit + 1, before).await?;
    let more = jobs.len() as i64 > limit;
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .take(limit as usize)
        .map(Into::into)
        .collect();
    let next_cursor = if more {
        jobs.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_cursor }))
}

pub(crate) fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("job id {text:?} is not a number")))
}

/// One job with its attempts and checkpoint.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "show_job",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let id = parse_id(&id)?;
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} does not exist")))?;
    let attempts = state
        .store
        .attempts(id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(JobDetail {
        job: job.into(),
        attempts,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Start over instead of resuming from the last checkpoint.
    #[serde(default)]
    pub reset_checkpoint: bool,
}

/// Run a job again now (replay). Discarded, cancelled and completed jobs come back with one
/// more attempt if theirs were used up; waiting jobs move forward. Resumes from the checkpoint
/// unless `reset_checkpoint`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job",
    params(("id" = i64, Path, description = "Job id")), request_body(content = RetryBody, content_type = "application/json"),
    responses((status = 200, body = JobView), (status = 404, body = Problem),
        (status = 409, description = "The job is running", body = Problem)))]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RetryBody>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let job = state.store.retry(id, body.reset_checkpoint).await?;
    state.nudge();
    Ok(Json(job.into()))
}

/// Cancel a job: a waiting one at once; a running one is signalled and stops at its next
/// checkpoint or await (`cancel_requested` shows it is on its way).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = Problem),
        (status = 409, description = "The job already finished", body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let job = state.store.cancel(id).await?;
    if job.state == JobState::Running {
        state.executor.cancel_running(id);
    }
    Ok(Json(job.into()))
}

/// Delete a job that is not running, with its attempts.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "delete_job",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem),
        (status = 409, description = "The job is running", body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.store.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetryBody {
    /// Only jobs in these states (default: discarded).
    pub states: Option<Vec<JobState>>,
    pub kind: Option<String>,
    pub queue: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkRetryResponse {
    /// How many jobs were made available again.
    pub count: u64,
}

/// Retry every matching job that is not running; returns how many.
#[utoipa::path(post, path = "/api/v1/jobs/retry", tag = "jobs", operation_id = "retry_jobs", request_body = BulkRetryBody,
    responses((status = 200, body = BulkRetryResponse), (status = 422, body = Problem)))]
pub async fn bulk_retry(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<BulkRetryBody>,
) -> Result<Json<BulkRetryResponse>, ApiError> {
    let states = body.states.unwrap_or_else(|| vec![JobState::Discarded]);
    if let Some(s) = states.iter().find(|s| **s == JobState::Running) {
        return Err(ApiError::Validation(vec![FieldError::new(
            "states",
            format!("{s} jobs cannot be retried; cancel them first"),
        )]));
    }
    let filter = JobFilter {
        states,
        kind: body.kind,
        queue: body.queue,
    };
    let count = state.store.retry_many(&filter).await?;
    if count > 0 {
        state.nudge();
    }
    Ok(Json(BulkRetryResponse { count }))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(enqueue).get(list))
        .route("/jobs/retry", post(bulk_retry))
        .route("/jobs/{id}", get(show).delete(delete))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/cancel", post(cancel))
}
