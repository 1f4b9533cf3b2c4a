//! Operator actions and read models: authorize a destination, back up now, run a schedule,
//! the destinations overview, job counts. The API, the panel, the CLI, Home Assistant and the
//! metrics all come here, so none of them needs another, and per-destination special cases
//! (which destinations need an authorization step) live in one place.

pub mod authorization;
pub mod destinations;
pub mod devices;
pub mod google;
mod setup;
pub mod views;

pub use authorization::{Pending, PendingAuth, authorization};
pub use destinations::DestinationView;
pub use setup::{Setup, StartError};

use crate::queue::{
    FieldError, JobState, Registry, Store,
    scheduler::{self, RunNowError},
    store::{Enqueued, OpError, StoreError},
};

/// Why an operator action did not happen, in the terms a caller answers with (the HTTP side maps
/// each to a status, the CLI to an exit code).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    /// A service offsite depends on (Dropbox) could not be reached or failed.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OpError> for OpsError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(_) => OpsError::NotFound(e.to_string()),
            OpError::Conflict(m) => OpsError::Conflict(m),
            OpError::Store(s) => OpsError::Store(s),
        }
    }
}

/// Enqueues schedule `name`'s job now, outside its slots (the caller wakes its workers).
pub async fn run_schedule(
    store: &Store,
    registry: &Registry,
    name: &str,
) -> Result<Enqueued, OpsError> {
    scheduler::run_now(store, registry, name)
        .await
        .map_err(|e| match e {
            RunNowError::NotFound(_) => OpsError::NotFound(e.to_string()),
            RunNowError::Invalid { .. } => {
                OpsError::Validation(vec![FieldError::new("schedule", e.to_string())])
            }
            RunNowError::Store(s) => s.into(),
        })
}

/// Back up now: the snapshot schedule's scan, at once. NotFound when `[snapshots]` is not
/// configured.
pub async fn back_up_now(store: &Store, registry: &Registry) -> Result<Enqueued, OpsError> {
    run_schedule(store, registry, crate::jobs::SNAPSHOTS).await
}

/// Jobs in the database by queue and state: every state of every configured queue (0 when
/// none), then whatever other queues hold jobs.
pub async fn job_counts(
    store: &Store,
    queues: &[String],
) -> Result<Vec<(String, JobState, i64)>, StoreError> {
    let counts = store.counts().await?;
    let mut out = Vec::new();
    for queue in queues {
        for state in JobState::ALL {
            let n = counts
                .iter()
                .find(|(q, s, _)| q == queue && *s == state)
                .map_or(0, |(_, _, n)| *n);
            out.push((queue.clone(), state, n));
        }
    }
    out.extend(counts.into_iter().filter(|(q, _, _)| !queues.contains(q)));
    Ok(out)
}
