//! Job states and the small value types shared by the store, executor and API.

use std::{fmt, str::FromStr};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Milliseconds since the Unix epoch, UTC: how every time is stored.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The lifecycle of a job, as River defines it. `completed`, `cancelled` and `discarded` are
/// final; a job is `running` exactly while a worker holds its lease.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its run time.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Failed an attempt; waits for its backoff before running again.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Stopped by an operator or by the job itself.
    Cancelled,
    /// Failed permanently or ran out of attempts.
    Discarded,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?} (expected one of: {})",
                    JobState::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still running.
    Running,
    Completed,
    /// Failed with a temporary error; the job was scheduled again with backoff.
    Retryable,
    /// The job asked to wait (e.g. `Retry-After`); not counted as an attempt.
    Snoozed,
    Cancelled,
    Discarded,
    /// The worker's lease expired (the process died or hung); counted as an attempt.
    Lost,
    /// Handed back at shutdown; not counted as an attempt.
    Released,
}

impl FromStr for AttemptOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => Self::Running,
            "completed" => Self::Completed,
            "retryable" => Self::Retryable,
            "snoozed" => Self::Snoozed,
            "cancelled" => Self::Cancelled,
            "discarded" => Self::Discarded,
            "lost" => Self::Lost,
            "released" => Self::Released,
            other => return Err(format!("unknown attempt outcome {other:?}")),
        })
    }
}
