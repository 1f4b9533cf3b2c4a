//! Worker pools. One dispatcher per process claims jobs for every queue (as many as each
//! queue has free slots), runs each on its own task, and writes the results of finished
//! attempts together with the next claim in one transaction — one fsync for both, which is
//! what keeps the durable default fast. Leases are renewed by a heartbeat; another process
//! can take over a job whose lease ran out, and the fencing token then shuts this worker out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
    time::sleep,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{
    context::JobContext,
    registry::{JobError, Registry},
    retry::backoff,
    state::{Millis, now_ms},
    store::{ClaimedJob, Finish, FinishKind, Store},
};

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How long a claim stays valid without a heartbeat.
    pub lease: Duration,
    /// Fallback poll when nothing woke the dispatcher.
    pub poll_interval: Duration,
    /// How often to look for commits by other processes (new jobs, cancel requests).
    pub watch_interval: Duration,
    /// How long running jobs get to checkpoint and finish at shutdown.
    pub shutdown_grace: Duration,
    pub backoff_cap: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            watch_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(8),
            backoff_cap: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub name: String,
    pub concurrency: usize,
}

struct Done {
    queue: usize,
    finish: Finish,
    kind: String,
    /// How long the handler ran; None when it never started.
    elapsed: Option<Duration>,
    /// The args and last checkpoint of a job this attempt ended (cancelled or discarded):
    /// its kind cleans up once the end is recorded.
    abandoned: Option<(String, Option<serde_json::Value>)>,
}

/// A worker starting a claimed job: the dispatcher records the start (batched with the other
/// writes), which is when the attempt begins to count.
struct StartRequest {
    job_id: i64,
    lease_token: i64,
    at: Millis,
}

struct Shared {
    store: Store,
    registry: Arc<Registry>,
    owner: String,
    settings: EngineSettings,
    queues: Vec<QueueSettings>,
    wake: Arc<Notify>,
    running: Mutex<HashMap<i64, CancellationToken>>,
    metrics: Observer,
    /// Soft stop: claim nothing more, ask handlers to wrap up.
    stopping: CancellationToken,
    /// Hard stop: drop handlers still running after the grace period.
    hard_stop: CancellationToken,
}

/// What the executor reports about attempts (the Prometheus counters in `crate::metrics`
/// implement it): the engine says what happened, not where the numbers go.
pub trait AttemptObserver: Send + Sync {
    fn attempt_finished(&self, kind: &str, outcome: &str);
    fn attempt_duration(&self, kind: &str, d: Duration);
}

/// The observer an executor reports to; none by default.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn AttemptObserver>>);

impl Observer {
    pub fn new(observer: impl AttemptObserver + 'static) -> Self {
        Observer(Some(Arc::new(observer)))
    }

    fn attempt_finished(&self, kind: &str, outcome: &str) {
        if let Some(o) = &self.0 {
            o.attempt_finished(kind, outcome);
        }
    }

    fn attempt_duration(&self, kind: &str, d: Duration) {
        if let Some(o) = &self.0 {
            o.attempt_duration(kind, d);
        }
    }
}

/// The running worker pools of this process.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

pub struct ExecutorHandle {
    dispatcher: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    background_stop: CancellationToken,
}

impl Executor {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        owner: String,
        settings: EngineSettings,
        queues: Vec<QueueSettings>,
        metrics: Observer,
    ) -> Self {
        Executor {
            shared: Arc::new(Shared {
                store,
                registry,
                owner,
                settings,
                queues,
                wake: Arc::new(Notify::new()),
                running: Mutex::new(HashMap::new()),
                metrics,
                stopping: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
            }),
        }
    }

    /// Something may be runnable: look now instead of at the next poll.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The jobs this process has claimed and not finished.
    pub fn running_ids(&self) -> Vec<i64> {
        self.shared
            .running
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Signals a job running in this process to stop; false if it does not run here.
    pub fn cancel_running(&self, job_id: i64) -> bool {
        signal_cancel(&self.shared, job_id)
    }

    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Starts the dispatcher, the lease heartbeat and the cross-process watcher.
    pub fn start(&self) -> ExecutorHandle {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(self.shared.clone(), done_tx, done_rx));
        let background_stop = CancellationToken::new();
        let background = vec![
            tokio::spawn(heartbeat(self.shared.clone(), background_stop.clone())),
            tokio::spawn(watch(self.shared.clone(), background_stop.clone())),
        ];
        ExecutorHandle {
            dispatcher,
            background,
            background_stop,
        }
    }

    /// Stops claiming, gives running jobs the grace period to checkpoint and finish, then
    /// stops the rest and hands their jobs back without counting the attempt.
    pub async fn shutdown(&self, mut handle: ExecutorHandle) {
        let shared = &self.shared;
        shared.stopping.cancel();
        let running = shared.running.lock().map(|r| r.len()).unwrap_or(0);
        if running > 0 {
            info!(running, grace = ?shared.settings.shutdown_grace, "waiting for running jobs to finish");
        }
        if tokio::time::timeout(shared.settings.shutdown_grace, &mut handle.dispatcher)
            .await
            .is_err()
        {
            let left = shared.running.lock().map(|r| r.len()).unwrap_or(0);
            warn!(
                jobs = left,
                "grace period over; handing the remaining jobs back"
            );
            shared.hard_stop.cancel();
            let _ = handle.dispatcher.await;
        }
        handle.background_stop.cancel();
        for task in handle.background {
            let _ = task.await;
        }
    }
}

fn signal_cancel(shared: &Shared, job_id: i64) -> bool {
    match shared
        .running
        .lock()
        .ok()
        .and_then(|r| r.get(&job_id).cloned())
    {
        Some(token) => {
            token.cancel();
            true
        }
        None => false,
    }
}

/// Jobs shorter than this on average are claimed a few at a time ahead of free slots, so one
/// transaction carries many of them; longer jobs (uploads) are never claimed ahead.
const SHORT_JOB_MS: f64 = 20.0;

/// The dispatcher's view of one queue. Its `concurrency` worker tasks take claimed jobs from
/// `jobs` on their own, so they keep working while the dispatcher waits on the database.
struct QueueSlot {
    name: String,
    concurrency: usize,
    /// Claimed and not yet finished (running or waiting in the channel).
    outstanding: usize,
    jobs: flume::Sender<ClaimedJob>,
    waiting: flume::Receiver<ClaimedJob>,
    hungry: bool,
    due: Option<Instant>,
    /// Moving average of attempt durations.
    avg_ms: Option<f64>,
}

impl QueueSlot {
    fn prefetch(&self) -> usize {
        match self.avg_ms {
            Some(avg) if avg < SHORT_JOB_MS => (self.concurrency * 16).min(256),
            _ => 0,
        }
    }

    /// How many more jobs to claim now.
    fn want(&self) -> usize {
        (self.concurrency + self.prefetch()).saturating_sub(self.outstanding)
    }

    fn finished(&mut self, elapsed: Option<Duration>) {
        self.outstanding -= 1;
        if let Some(elapsed) = elapsed {
            let ms = elapsed.as_secs_f64() * 1000.0;
            self.avg_ms = Some(self.avg_ms.map_or(ms, |avg| avg * 0.8 + ms * 0.2));
        }
    }
}

fn released(queue: usize, job: ClaimedJob) -> Done {
    Done {
        queue,
        finish: Finish {
            job_id: job.id,
            lease_token: job.lease_token,
            at: now_ms(),
            how: FinishKind::Release,
        },
        kind: job.kind,
        elapsed: None,
        abandoned: None,
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    done_tx: mpsc::UnboundedSender<Done>,
    mut done_rx: mpsc::UnboundedReceiver<Done>,
) {
    let mut queues: Vec<QueueSlot> = Vec::with_capacity(shared.queues.len());
    let mut workers = Vec::new();
    let (start_tx, mut start_rx) = mpsc::unbounded_channel::<StartRequest>();
    for (i, q) in shared.queues.iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        for _ in 0..q.concurrency {
            workers.push(tokio::spawn(work_loop(
                shared.clone(),
                i,
                rx.clone(),
                start_tx.clone(),
                done_tx.clone(),
            )));
        }
        queues.push(QueueSlot {
            name: q.name.clone(),
            concurrency: q.concurrency,
            outstanding: 0,
            jobs: tx,
            waiting: rx,
            hungry: true,
            due: None,
            avg_ms: None,
        });
    }
    drop(done_tx);
    drop(start_tx);
    let mut pending: Vec<Done> = Vec::new();
    let mut starting: Vec<StartRequest> = Vec::new();
    let mut next_poll = Instant::now() + shared.settings.poll_interval;
    let mut write_failures = 0u32;

    loop {
        while let Ok(done) = done_rx.try_recv() {
            queues[done.queue].finished(done.elapsed);
            pending.push(done);
        }
        while let Ok(start) = start_rx.try_recv() {
            starting.push(start);
        }
        let stopping = shared.stopping.is_cancelled();
        if stopping {
            // Claimed but never started: hand them back as they were.
            for (i, q) in queues.iter_mut().enumerate() {
                while let Ok(job) = q.waiting.try_recv() {
                    forget(&shared, job.id);
                    q.finished(None);
                    pending.push(released(i, job));
                }
            }
            if pending.is_empty() && queues.iter().all(|q| q.outstanding == 0) {
                break;
            }
        }
        let now = Instant::now();
        if now >= next_poll {
            queues.iter_mut().for_each(|q| q.hungry = true);
            next_poll = now + shared.settings.poll_interval;
        }
        for q in queues.iter_mut() {
            if q.due.is_some_and(|t| t <= now) {
                q.hungry = true;
                q.due = None;
            }
        }
        let claims: Vec<(String, i64)> = if stopping {
            Vec::new()
        } else {
            queues
                .iter()
                .filter(|q| q.hungry && q.want() > 0)
                .map(|q| (q.name.clone(), q.want() as i64))
                .collect()
        };

        if pending.is_empty() && claims.is_empty() && starting.is_empty() {
            let wake_at = queues
                .iter()
                .filter_map(|q| q.due)
                .fold(next_poll, Instant::min);
            tokio::select! {
                Some(done) = done_rx.recv() => {
                    queues[done.queue].finished(done.elapsed);
                    pending.push(done);
                }
                Some(start) = start_rx.recv() => starting.push(start),
                _ = shared.wake.notified() => queues.iter_mut().for_each(|q| q.hungry = true),
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = shared.stopping.cancelled(), if !stopping => {}
            }
            continue;
        }

        let finishes: Vec<Finish> = pending.iter().map(|d| d.finish.clone()).collect();
        let starts: Vec<(i64, i64, Millis)> = starting
            .iter()
            .map(|s| (s.job_id, s.lease_token, s.at))
            .collect();
        let result = shared
            .store
            .finish_and_claim(
                &starts,
                &finishes,
                &claims,
                &shared.owner,
                shared.settings.lease,
            )
            .await;
        let (_started, applied, claimed) = match result {
            Ok(r) => {
                write_failures = 0;
                r
            }
            Err(e) => {
                if shared.hard_stop.is_cancelled() {
                    // Shutting down and the database will not take the results: leave them;
                    // the jobs' leases run out and a restart reclaims them.
                    error!(error = %e, jobs = pending.len(), "could not record job results at shutdown");
                    break;
                }
                // Keep the results and try again, less often the longer it lasts: leases are
                // still being renewed meanwhile. The store says once that it cannot write.
                debug!(error = %e, "could not write job results or claim jobs; retrying");
                write_failures += 1;
                let wait = Duration::from_millis(250 << write_failures.min(5));
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shared.stopping.cancelled(), if !stopping => {}
                    _ = shared.hard_stop.cancelled() => {}
                }
                continue;
            }
        };
        starting.clear();
        for done in pending.drain(..) {
            let kept = applied.contains(&done.finish.job_id);
            if !kept {
                warn!(
                    job = done.finish.job_id,
                    "result not recorded: the lease was lost to another attempt"
                );
            }
            // Only an end that was recorded: a stale attempt must not clean up what the
            // attempt that owns the job now is using.
            if kept
                && let Some((args, checkpoint)) = done.abandoned
                && let Some(entry) = shared.registry.get(&done.kind)
            {
                let cleanup = entry.abandoned(args, checkpoint);
                let span = info_span!("job", id = done.finish.job_id, kind = %done.kind);
                tokio::spawn(cleanup.instrument(span));
            }
            shared
                .metrics
                .attempt_finished(&done.kind, outcome_label(&done.finish.how, kept));
        }
        for (name, asked) in &claims {
            let got = claimed.iter().filter(|j| &j.queue == name).count() as i64;
            if got < *asked
                && let Some(q) = queues.iter_mut().find(|q| &q.name == name)
            {
                q.hungry = false;
                q.due = next_due_instant(&shared, name).await;
            }
        }
        for job in claimed {
            if let Some(q) = queues.iter_mut().find(|q| q.name == job.queue) {
                // Registered now, so a cancel that comes while the job waits is not missed.
                if let Ok(mut running) = shared.running.lock() {
                    running.insert(job.id, CancellationToken::new());
                }
                q.outstanding += 1;
                let _ = q.jobs.send(job);
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
    debug!("dispatcher stopped");
}

/// One handler slot of a queue: runs claimed jobs one after another until shutdown.
async fn work_loop(
    shared: Arc<Shared>,
    queue: usize,
    jobs: flume::Receiver<ClaimedJob>,
    start_tx: mpsc::UnboundedSender<StartRequest>,
    done_tx: mpsc::UnboundedSender<Done>,
) {
    loop {
        let job = tokio::select! {
            biased;
            _ = shared.stopping.cancelled() => return,
            job = jobs.recv_async() => match job {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if shared.stopping.is_cancelled() {
            forget(&shared, job.id);
            let _ = done_tx.send(released(queue, job));
            return;
        }
        let cancel = shared
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(&job.id).cloned())
            .unwrap_or_default();
        // The attempt counts from here: the start goes into the dispatcher's next
        // transaction with the other results (no wait for it, so throughput stays that of
        // batched writes). A crash before that commit — about a millisecond — hands the job
        // back without charging an attempt; a claimed job that never started is never charged.
        if start_tx
            .send(StartRequest {
                job_id: job.id,
                lease_token: job.lease_token,
                at: now_ms(),
            })
            .is_err()
        {
            forget(&shared, job.id);
            let _ = done_tx.send(released(queue, job));
            return;
        }
        let started = Instant::now();
        let (finish, ended) = run_job(&shared, &job, cancel).await;
        forget(&shared, job.id);
        // Only completed attempts tell how long this queue's work takes (a snooze is quick).
        let elapsed = matches!(finish.how, FinishKind::Completed).then(|| started.elapsed());
        let _ = done_tx.send(Done {
            queue,
            finish,
            kind: job.kind,
            elapsed,
            abandoned: ended.map(|checkpoint| (job.args, checkpoint)),
        });
    }
}

fn forget(shared: &Shared, job_id: i64) {
    if let Ok(mut running) = shared.running.lock() {
        running.remove(&job_id);
    }
}

fn outcome_label(how: &FinishKind, kept: bool) -> &'static str {
    if !kept {
        return "lost";
    }
    match how {
        FinishKind::Completed => "completed",
        FinishKind::Retry { .. } => "retryable",
        FinishKind::Snooze { .. } => "snoozed",
        FinishKind::Discard { .. } => "discarded",
        FinishKind::Cancel { .. } => "cancelled",
        FinishKind::Release => "released",
    }
}

/// When the queue's next waiting job becomes due; a due-but-unclaimed job (a paused queue)
/// is looked at again at the next poll instead.
async fn next_due_instant(shared: &Shared, queue: &str) -> Option<Instant> {
    let at = shared.store.next_due(queue).await.ok().flatten()?;
    let wait = at - now_ms();
    if wait <= 0 {
        return None;
    }
    Some(Instant::now() + Duration::from_millis(wait as u64))
}

/// Runs one attempt. With the finish comes the job's last checkpoint when the attempt ended it
/// cancelled or discarded (for [`Worker::abandoned`](super::Worker::abandoned)).
async fn run_job(
    shared: &Shared,
    job: &ClaimedJob,
    cancel: CancellationToken,
) -> (Finish, Option<Option<serde_json::Value>>) {
    let span = info_span!("job", id = job.id, kind = %job.kind, attempt = job.attempt);
    let started = Instant::now();
    let entry = shared.registry.get(&job.kind);
    let checkpoint: Option<serde_json::Value> = job
        .checkpoint
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    let ctx = JobContext::new(
        job.id,
        job.kind.clone(),
        job.attempt,
        job.max_attempts,
        job.lease_token,
        checkpoint,
        shared.store.clone(),
        shared.registry.clone(),
        shared.wake.clone(),
        cancel.clone(),
        shared.stopping.clone(),
    );
    let result = async {
        let Some(entry) = entry else {
            return Err(JobError::Permanent(format!(
                "no worker for job kind {:?} in this build of offsite",
                job.kind
            )));
        };
        debug!(resumed = job.checkpoint.is_some(), "started");
        let settings = &entry.settings;
        let work = entry.run(ctx.clone(), job.args.clone());
        tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Err(JobError::Cancelled("cancelled by operator".into())),
            _ = sleep_opt(settings.timeout) => Err(JobError::Retryable(format!(
                "attempt timed out after {}",
                humantime::format_duration(settings.timeout.unwrap_or_default())
            ))),
            _ = stall_watch(&ctx, settings.stall_timeout) => Err(JobError::Retryable(format!(
                "stalled: no progress reported for {}",
                humantime::format_duration(settings.stall_timeout.unwrap_or_default())
            ))),
            _ = shared.hard_stop.cancelled() => Err(JobError::Interrupted),
        }
    }
    .instrument(span.clone())
    .await;

    let elapsed = started.elapsed();
    shared.metrics.attempt_duration(&job.kind, elapsed);
    let now = now_ms();
    let enter = span.enter();
    let how = match result {
        Ok(()) => {
            info!(elapsed_ms = elapsed.as_millis() as u64, "completed");
            FinishKind::Completed
        }
        Err(JobError::Retryable(error)) if job.attempt >= job.max_attempts => {
            warn!(%error, "failed; no attempts left, discarding");
            FinishKind::Discard {
                error: format!(
                    "{error} (attempt {} of {}, none left)",
                    job.attempt, job.max_attempts
                ),
            }
        }
        Err(JobError::Retryable(error)) => {
            let wait = backoff(job.attempt as u32, shared.settings.backoff_cap);
            warn!(%error, retry_in = %humantime::format_duration(round_secs(wait)), "failed; will retry");
            FinishKind::Retry {
                at: now + wait.as_millis() as i64,
                error,
            }
        }
        Err(JobError::Permanent(error)) => {
            warn!(%error, "failed permanently; discarding");
            FinishKind::Discard { error }
        }
        Err(JobError::Snooze { wait, reason }) => {
            info!(%reason, wait = %humantime::format_duration(wait), "waiting; attempt not counted");
            FinishKind::Snooze {
                at: now + wait.as_millis() as i64,
                reason,
            }
        }
        Err(JobError::Cancelled(reason)) => {
            info!(%reason, "cancelled");
            FinishKind::Cancel { reason }
        }
        Err(JobError::Interrupted) => {
            info!("interrupted by shutdown; handing the job back");
            FinishKind::Release
        }
        Err(JobError::LeaseLost) => {
            warn!("lease lost to another attempt; stopping");
            FinishKind::Release
        }
    };
    drop(enter);
    let ended = matches!(how, FinishKind::Discard { .. } | FinishKind::Cancel { .. });
    let finish = Finish {
        job_id: job.id,
        lease_token: job.lease_token,
        at: now,
        how,
    };
    (finish, ended.then(|| ctx.checkpoint_value()))
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

async fn sleep_opt(limit: Option<Duration>) {
    match limit {
        Some(d) => sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn stall_watch(ctx: &JobContext, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let tick = (limit / 4).max(Duration::from_millis(10));
    loop {
        sleep(tick).await;
        if ctx.idle_for() >= limit {
            return;
        }
    }
}

/// Keeps this process's leases alive and picks up cancel requests made by other processes.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.lease / 3;
    loop {
        tokio::select! {
            _ = sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = shared
            .store
            .renew_leases(&shared.owner, shared.settings.lease)
            .await
        {
            error!(error = %e, "could not renew job leases");
        }
        pick_up_cancels(&shared).await;
    }
}

async fn pick_up_cancels(shared: &Shared) {
    let busy = shared
        .running
        .lock()
        .map(|r| !r.is_empty())
        .unwrap_or(false);
    if !busy {
        return;
    }
    match shared.store.cancel_requests(&shared.owner).await {
        Ok(ids) => {
            for id in ids {
                signal_cancel(shared, id);
            }
        }
        Err(e) => error!(error = %e, "could not read cancel requests"),
    }
}

/// Notices commits by other processes (a CLI enqueue, a cancel) within `watch_interval`.
async fn watch(shared: Arc<Shared>, stop: CancellationToken) {
    let mut conn = match shared.store.watch_connection().await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot watch the database for other processes; relying on polling");
            return;
        }
    };
    let mut last = Store::data_version(&mut conn).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = sleep(shared.settings.watch_interval) => {}
            _ = stop.cancelled() => return,
        }
        match Store::data_version(&mut conn).await {
            Ok(v) if v != last => {
                last = v;
                shared.wake.notify_one();
                pick_up_cancels(&shared).await;
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "data_version poll failed"),
        }
    }
}
