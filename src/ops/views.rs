//! What a job, an attempt, a schedule looks like to people: the API answers these, the CLI
//! prints them (`--json` prints the same shapes).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::OpsError;
use crate::queue::{
    FieldError, JobState,
    scheduler::ScheduleView,
    state::{AttemptOutcome, to_datetime},
    store::{AttemptRecord, JobRecord},
};

/// A job as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    /// 1 runs first, 4 last.
    pub priority: i64,
    /// Attempts used so far (snoozes and shutdown hand-backs do not count).
    pub attempt: i64,
    pub max_attempts: i64,
    pub idempotency_key: Option<String>,
    #[schema(value_type = Object)]
    pub args: Value,
    pub created_at: DateTime<Utc>,
    /// When it runs (or ran) next.
    pub scheduled_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
    /// The last checkpoint saved by the job; a retry resumes from it.
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<Value>,
    /// Latest progress report: done, total, unit, rate_per_sec, eta_secs.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    pub last_error: Option<String>,
    /// An operator asked a running job to stop.
    pub cancel_requested: bool,
    /// The worker instance holding the lease while running.
    pub worker: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            queue: j.queue,
            state: j.state,
            priority: j.priority,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            idempotency_key: j.idempotency_key,
            args: j.args,
            created_at: to_datetime(j.created_at),
            scheduled_at: to_datetime(j.scheduled_at),
            attempted_at: j.attempted_at.map(to_datetime),
            finalized_at: j.finalized_at.map(to_datetime),
            // A checkpoint may hold an upload session's URL, a credential by itself.
            checkpoint: j.checkpoint.map(crate::redact::redact_json),
            progress: j.progress,
            last_error: j.last_error,
            cancel_requested: j.cancel_requested,
            worker: j.lease_owner,
            lease_expires_at: j.lease_expires_at.map(to_datetime),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            attempt: a.attempt,
            worker: a.worker,
            started_at: to_datetime(a.started_at),
            ended_at: a.ended_at.map(to_datetime),
            outcome: a.outcome,
            error: a.error,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnqueueResponse {
    pub job: JobView,
    /// True when a job with this idempotency key existed and is returned instead.
    pub deduplicated: bool,
}

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

/// A list of states separated by commas (spaces around them ignored); `field` names the
/// parameter in the error.
pub fn parse_states(text: &str, field: &str) -> Result<Vec<JobState>, OpsError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<JobState>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OpsError::Validation(vec![FieldError::new(field, e)]))
}
