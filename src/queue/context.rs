//! What a running job sees: its attempt, last checkpoint, cancellation, and the means to
//! checkpoint and report progress.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use tokio::sync::Notify;

use super::{
    registry::{EnqueueRequest, FieldError, JobError, Registry},
    state::now_ms,
    store::{Enqueued, Store},
};

/// Progress is written to the database at most this often (checkpoints always are).
const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    job_id: i64,
    kind: String,
    attempt: i64,
    max_attempts: i64,
    lease_token: i64,
    store: Store,
    registry: Arc<Registry>,
    wake: Arc<Notify>,
    checkpoint: Mutex<Option<Value>>,
    cancel: CancellationToken,
    stopping: CancellationToken,
    activity: Mutex<Activity>,
}

struct Activity {
    started: Instant,
    last: Instant,
    /// `done` when this attempt started, for the rate of this attempt only.
    first_done: Option<u64>,
    last_saved: Option<Instant>,
}

/// Touches the job every few seconds while it lives.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A progress report: how much of how much.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    /// What `done` counts: "bytes", "steps", "files" …
    pub unit: &'static str,
    pub message: Option<String>,
}

impl JobContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        job_id: i64,
        kind: String,
        attempt: i64,
        max_attempts: i64,
        lease_token: i64,
        checkpoint: Option<Value>,
        store: Store,
        registry: Arc<Registry>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
        stopping: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        JobContext {
            inner: Arc::new(Inner {
                job_id,
                kind,
                attempt,
                max_attempts,
                lease_token,
                store,
                registry,
                wake,
                checkpoint: Mutex::new(checkpoint),
                cancel,
                stopping,
                activity: Mutex::new(Activity {
                    started: now,
                    last: now,
                    first_done: None,
                    last_saved: None,
                }),
            }),
        }
    }

    /// The database, for what a job records beside its own row (uploads, deletions).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Enqueues another job (validated like any other) and wakes the workers.
    pub async fn enqueue(&self, request: &EnqueueRequest) -> Result<Enqueued, JobError> {
        let job = self
            .inner
            .registry
            .prepare(request)
            .map_err(|errors: Vec<FieldError>| {
                JobError::Permanent(format!("follow-up job is invalid: {}", errors[0]))
            })?;
        let enqueued = self
            .inner
            .store
            .enqueue(&job)
            .await
            .map_err(JobError::retryable)?;
        self.inner.wake.notify_one();
        Ok(enqueued)
    }

    /// Enqueues many jobs in one transaction (each validated; those whose idempotency key is
    /// taken are left as they are); how many are new.
    pub async fn enqueue_many(&self, requests: &[EnqueueRequest]) -> Result<usize, JobError> {
        let mut jobs = Vec::with_capacity(requests.len());
        for r in requests {
            jobs.push(self.inner.registry.prepare(r).map_err(|errors| {
                JobError::Permanent(format!("follow-up job is invalid: {}", errors[0]))
            })?);
        }
        let mut new = 0;
        for batch in jobs.chunks(500) {
            let done = self
                .inner
                .store
                .enqueue_batch(batch)
                .await
                .map_err(JobError::retryable)?;
            new += done.iter().filter(|e| !e.deduplicated).count();
        }
        self.inner.wake.notify_one();
        Ok(new)
    }

    /// Something may be runnable now (a job this one made due): look at once.
    pub fn wake_workers(&self) {
        self.inner.wake.notify_one();
    }

    pub fn job_id(&self) -> i64 {
        self.inner.job_id
    }

    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// 1 for the first attempt.
    pub fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    pub fn max_attempts(&self) -> i64 {
        self.inner.max_attempts
    }

    /// The last checkpoint saved by any attempt of this job, if any and if it has this shape.
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Option<T> {
        let saved = self.inner.checkpoint.lock().ok()?.clone()?;
        serde_json::from_value(saved).ok()
    }

    /// The last checkpoint as stored, whatever its shape.
    pub(crate) fn checkpoint_value(&self) -> Option<Value> {
        self.inner.checkpoint.lock().ok()?.clone()
    }

    /// Durably saves a checkpoint for the next attempt (or a replay) to resume from.
    /// Fails with `LeaseLost` when another attempt owns the job now, and with `Cancelled`
    /// when an operator cancelled it: either way the handler should stop.
    pub async fn save_checkpoint<T: Serialize>(&self, value: &T) -> Result<(), JobError> {
        let value = serde_json::to_value(value)
            .map_err(|e| JobError::Permanent(format!("checkpoint is not serializable: {e}")))?;
        let held = self
            .inner
            .store
            .save_checkpoint(self.inner.job_id, self.inner.lease_token, &value)
            .await
            .map_err(JobError::retryable)?;
        if !held {
            return Err(JobError::LeaseLost);
        }
        if let Ok(mut cp) = self.inner.checkpoint.lock() {
            *cp = Some(value);
        }
        self.touch();
        if self.inner.cancel.is_cancelled() {
            return Err(JobError::Cancelled("cancelled by operator".into()));
        }
        Ok(())
    }

    /// Reports progress; also proves the job is alive for stall detection.
    pub async fn progress(&self, progress: Progress) -> Result<(), JobError> {
        let (record, save) = {
            let mut act = self.inner.activity.lock().expect("activity lock");
            let now = Instant::now();
            act.last = now;
            let first = *act.first_done.get_or_insert(progress.done);
            let secs = now.duration_since(act.started).as_secs_f64();
            let rate = if secs > 0.5 {
                (progress.done.saturating_sub(first)) as f64 / secs
            } else {
                0.0
            };
            let eta = match progress.total {
                Some(total) if rate > 0.0 => {
                    Some(((total.saturating_sub(progress.done)) as f64 / rate).ceil())
                }
                _ => None,
            };
            let save = act
                .last_saved
                .is_none_or(|t| now.duration_since(t) >= PROGRESS_SAVE_EVERY)
                || progress.total == Some(progress.done);
            if save {
                act.last_saved = Some(now);
            }
            let record = json!({
                "done": progress.done,
                "total": progress.total,
                "unit": progress.unit,
                "message": progress.message,
                "rate_per_sec": rate.round(),
                "eta_secs": eta,
                "updated_at": now_ms(),
            });
            (record, save)
        };
        if save {
            let held = self
                .inner
                .store
                .save_progress(self.inner.job_id, self.inner.lease_token, &record)
                .await
                .map_err(JobError::retryable)?;
            if !held {
                return Err(JobError::LeaseLost);
            }
        }
        Ok(())
    }

    /// Keeps the job alive for stall detection until the guard is dropped (a long request).
    pub fn keep_alive(&self) -> KeepAlive {
        let ctx = self.clone();
        KeepAlive(tokio::spawn(async move {
            loop {
                ctx.touch();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }))
    }

    /// Marks the job as alive without a measurable step.
    pub fn touch(&self) {
        if let Ok(mut act) = self.inner.activity.lock() {
            act.last = Instant::now();
        }
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.inner
            .activity
            .lock()
            .map(|a| a.last.elapsed())
            .unwrap_or_default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when an operator cancels the job.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Resolves when the process starts shutting down: save a checkpoint and return
    /// `JobError::Interrupted` soon, or the job is stopped at the end of the grace period.
    pub async fn stopping(&self) {
        self.inner.stopping.cancelled().await
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }
}
