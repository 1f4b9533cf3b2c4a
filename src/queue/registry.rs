//! Job kinds: each is a serde type with a stable kind string and a worker. The registry
//! validates args at enqueue time and dispatches claimed jobs to their worker.

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    context::JobContext,
    store::{JobRecord, NewJob},
};

/// Why a job failed, and so what the engine does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Temporary: retried with exponential backoff until attempts run out.
    #[error("{0}")]
    Retryable(String),
    /// Permanent: discarded at once.
    #[error("{0}")]
    Permanent(String),
    /// The remote named a wait (429/503 `Retry-After`) or a precondition is missing (a
    /// destination awaiting authorization): run again after `wait`, without using an attempt.
    #[error("{reason} (waiting {})", humantime::format_duration(*wait))]
    Snooze { wait: Duration, reason: String },
    /// The job should end cancelled (an operator asked, or its input vanished).
    #[error("{0}")]
    Cancelled(String),
    /// The process is shutting down; the job is handed back without using an attempt.
    #[error("interrupted by shutdown")]
    Interrupted,
    /// This worker no longer holds the job's lease; another attempt owns it now.
    #[error("lease lost to a newer attempt")]
    LeaseLost,
}

impl JobError {
    pub fn retryable(e: impl fmt::Display) -> Self {
        JobError::Retryable(e.to_string())
    }
    pub fn permanent(e: impl fmt::Display) -> Self {
        JobError::Permanent(e.to_string())
    }
}

/// A problem with one field of a submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `args.steps`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Per-kind defaults; config can override them.
#[derive(Debug, Clone)]
pub struct KindSettings {
    pub queue: String,
    pub max_attempts: i64,
    pub priority: i64,
    /// Longest an attempt may run.
    pub timeout: Option<Duration>,
    /// An attempt that reports no progress for this long fails (retryable).
    pub stall_timeout: Option<Duration>,
}

/// The typed arguments of a job kind.
pub trait JobArgs: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name stored with every job; never rename it.
    const KIND: &'static str;
    fn settings() -> KindSettings;
    /// Checks beyond what the types say; errors name the field (without the `args.` prefix).
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
    /// What the job waits on, e.g. `destination:dropbox`: [`crate::queue::Store::wake_tag`]
    /// wakes every waiting job with the tag.
    fn tags(&self) -> Vec<String> {
        Vec::new()
    }
    /// What the job is about, in words for people (the panel, Home Assistant, the CLI):
    /// `upload of "Weekly" to dropbox`. By default the kind's name in words.
    fn describe(&self) -> String {
        humanize(Self::KIND)
    }
}

/// A kind's name in words: `snapshot_scan` → `snapshot scan`.
pub fn humanize(kind: &str) -> String {
    kind.replace('_', " ")
}

/// Runs jobs of one kind.
pub trait Worker<A: JobArgs>: Send + Sync + 'static {
    fn work(&self, ctx: JobContext, args: A) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Called when an attempt of this kind ended the job cancelled or discarded, with the last
    /// checkpoint it saved: the place to throw away what an unfinished attempt left behind (a
    /// partial file, an open upload). The attempt's own future may have been dropped by then
    /// (cancel, timeout), so this runs on its own.
    fn abandoned(&self, _args: A, _checkpoint: Option<Value>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

type Handler =
    Arc<dyn Fn(JobContext, String) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

type Abandon = Arc<dyn Fn(String, Option<Value>) -> BoxFuture<'static, ()> + Send + Sync>;

/// [`JobArgs::describe`] of stored args; `None` when they do not parse as the kind's.
type Describe = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct KindEntry {
    pub settings: KindSettings,
    validate: Validate,
    handler: Handler,
    abandon: Abandon,
    describe: Describe,
}

impl KindEntry {
    pub fn run(&self, ctx: JobContext, args: String) -> BoxFuture<'static, Result<(), JobError>> {
        (self.handler)(ctx, args)
    }

    /// See [`Worker::abandoned`].
    pub fn abandoned(&self, args: String, checkpoint: Option<Value>) -> BoxFuture<'static, ()> {
        (self.abandon)(args, checkpoint)
    }

    /// See [`JobArgs::describe`]; `None` when `args` are not this kind's.
    pub fn describe(&self, args: &Value) -> Option<String> {
        (self.describe)(args)
    }
}

fn parse_args<A: JobArgs>(value: &Value) -> Result<A, FieldError> {
    let args: A = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "args".to_string()
        } else {
            format!("args.{path}")
        };
        FieldError::new(field, e.into_inner().to_string())
    })?;
    args.validate()
        .map_err(|e| FieldError::new(format!("args.{}", e.field), e.message))?;
    Ok(args)
}

/// Parses, checks and canonicalizes submitted args; returns them with the job's tags and the
/// attempts the args ask for (e.g. a database section's `retries`), if they ask.
type Validate =
    Arc<dyn Fn(&Value) -> Result<(String, Vec<String>, Option<i64>), FieldError> + Send + Sync>;

type Check<A> = Arc<dyn Fn(&A) -> Result<(), FieldError> + Send + Sync>;

type MaxAttempts<A> = Arc<dyn Fn(&A) -> Option<i64> + Send + Sync>;

/// What an operator or schedule submits.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    pub kind: String,
    pub args: Value,
    pub idempotency_key: Option<String>,
    pub queue: Option<String>,
    pub priority: Option<i64>,
    pub max_attempts: Option<i64>,
    pub run_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
    queues: Vec<String>,
}

impl Registry {
    pub fn new(queues: Vec<String>) -> Self {
        Registry {
            kinds: BTreeMap::new(),
            queues,
        }
    }

    /// Adds a kind. `overrides` tweaks its default settings (from config).
    pub fn register<A: JobArgs, W: Worker<A>>(
        &mut self,
        worker: W,
        overrides: impl FnOnce(&mut KindSettings),
    ) {
        self.register_checked(worker, overrides, |_: &A| Ok(()));
    }

    /// Like `register`, with a check of the args against this installation (e.g. that a named
    /// destination is configured); its field names are relative to `args`.
    pub fn register_checked<A: JobArgs, W: Worker<A>>(
        &mut self,
        worker: W,
        overrides: impl FnOnce(&mut KindSettings),
        check: impl Fn(&A) -> Result<(), FieldError> + Send + Sync + 'static,
    ) {
        self.register_with(worker, overrides, check, |_: &A| None);
    }

    /// Like `register_checked`, with the attempts a job's args ask for (`None`: the kind's
    /// setting). A submission's own `max_attempts` still wins.
    pub fn register_with<A: JobArgs, W: Worker<A>>(
        &mut self,
        worker: W,
        overrides: impl FnOnce(&mut KindSettings),
        check: impl Fn(&A) -> Result<(), FieldError> + Send + Sync + 'static,
        max_attempts: impl Fn(&A) -> Option<i64> + Send + Sync + 'static,
    ) {
        let check: Check<A> = Arc::new(check);
        let max_attempts: MaxAttempts<A> = Arc::new(max_attempts);
        let validate = Arc::new(move |value: &Value| {
            let args = parse_args::<A>(value)?;
            check(&args).map_err(|e| FieldError::new(format!("args.{}", e.field), e.message))?;
            let json =
                serde_json::to_string(&args).map_err(|e| FieldError::new("args", e.to_string()))?;
            Ok((json, args.tags(), max_attempts(&args)))
        });
        let worker = Arc::new(worker);
        let abandon: Abandon = {
            let worker = worker.clone();
            Arc::new(move |raw, checkpoint| {
                let worker = worker.clone();
                Box::pin(async move {
                    let args = serde_json::from_str::<Value>(&raw)
                        .ok()
                        .and_then(|v| parse_args::<A>(&v).ok());
                    if let Some(args) = args {
                        worker.abandoned(args, checkpoint).await;
                    }
                })
            })
        };
        let handler: Handler = Arc::new(move |ctx, raw| {
            let worker = worker.clone();
            Box::pin(async move {
                let value: Value = serde_json::from_str(&raw)
                    .map_err(|e| JobError::Permanent(format!("stored args are not JSON: {e}")))?;
                let args = parse_args::<A>(&value)
                    .map_err(|e| JobError::Permanent(format!("invalid args: {e}")))?;
                worker.work(ctx, args).await
            })
        });
        let describe: Describe =
            Arc::new(|value: &Value| A::deserialize(value).ok().map(|args: A| args.describe()));
        let mut settings = A::settings();
        overrides(&mut settings);
        self.kinds.insert(
            A::KIND,
            KindEntry {
                settings,
                validate,
                handler,
                abandon,
                describe,
            },
        );
    }

    pub fn get(&self, kind: &str) -> Option<&KindEntry> {
        self.kinds.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = (&'static str, &KindEntry)> {
        self.kinds.iter().map(|(k, v)| (*k, v))
    }

    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// What a job of `kind` with `args` is about, in the kind's own words ([`JobArgs::describe`]);
    /// `None` for a kind not registered or args that are not its.
    pub fn describe(&self, kind: &str, args: &Value) -> Option<String> {
        self.kinds.get(kind)?.describe(args)
    }

    /// What a stored job is about, in words: its kind's description, else its kind's name in
    /// words (a kind no longer registered, args it no longer reads).
    pub fn describe_job(&self, job: &JobRecord) -> String {
        self.describe(&job.kind, &job.args)
            .unwrap_or_else(|| humanize(&job.kind))
    }

    /// Validates a submission and resolves its defaults; every problem names its field.
    pub fn prepare(&self, req: &EnqueueRequest) -> Result<NewJob, Vec<FieldError>> {
        let Some(entry) = self.kinds.get(req.kind.as_str()) else {
            let known: Vec<&str> = self.kinds.keys().copied().collect();
            return Err(vec![FieldError::new(
                "kind",
                format!(
                    "unknown job kind {:?} (known kinds: {})",
                    req.kind,
                    known.join(", ")
                ),
            )]);
        };
        let mut errors = Vec::new();
        let args = match (entry.validate)(&req.args) {
            Ok(args) => Some(args),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let queue = req
            .queue
            .clone()
            .unwrap_or_else(|| entry.settings.queue.clone());
        if !self.queues.contains(&queue) {
            errors.push(FieldError::new(
                "queue",
                format!(
                    "unknown queue {queue:?} (configured: {})",
                    self.queues.join(", ")
                ),
            ));
        }
        let priority = req.priority.unwrap_or(entry.settings.priority);
        if !(1..=4).contains(&priority) {
            errors.push(FieldError::new(
                "priority",
                "must be between 1 (first) and 4 (last)",
            ));
        }
        let asked = args.as_ref().and_then(|(_, _, m)| *m);
        let max_attempts = req
            .max_attempts
            .or(asked)
            .unwrap_or(entry.settings.max_attempts);
        if !(1..=1000).contains(&max_attempts) {
            errors.push(FieldError::new(
                "max_attempts",
                "must be between 1 and 1000",
            ));
        }
        if let Some(key) = &req.idempotency_key
            && (key.is_empty() || key.chars().count() > 255)
        {
            errors.push(FieldError::new(
                "idempotency_key",
                "must be 1 to 255 characters",
            ));
        }
        // RFC 3339 has four-digit years; year 0 or -1 is a mistake, not a plan.
        if let Some(t) = req.run_at
            && !(1..=9999).contains(&chrono::Datelike::year(&t))
        {
            errors.push(FieldError::new(
                "run_at",
                "must be a time in the years 0001 to 9999",
            ));
        }
        match args {
            Some((args, tags, _)) if errors.is_empty() => Ok(NewJob {
                kind: req.kind.clone(),
                queue,
                args,
                tags,
                priority,
                max_attempts,
                scheduled_at: req.run_at.map(|t| t.timestamp_millis()),
                idempotency_key: req.idempotency_key.clone(),
            }),
            _ => Err(errors),
        }
    }
}
