//! Shared test harness: a temp data dir, a config pointing into it, a registry with a `probe`
//! kind whose behaviour each job chooses, and waits on real conditions (never fixed sleeps).

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use figment::providers::Env;
use offsite::{
    app::{self, Running, Setup},
    config::Config,
    jobs::{self, services::Services},
    queue::{
        EnqueueRequest, JobArgs, JobContext, JobError, JobState, KindSettings, Registry, Store,
        Worker, store::JobRecord,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Defaults plus a temp data dir, an ephemeral API port and short timings.
pub fn test_config(dir: &Path) -> Config {
    let mut c =
        Config::load_with(None, Env::prefixed("OFFSITE_NOT_SET_IN_TESTS_")).expect("defaults");
    c.data_dir = dir.join("data");
    c.jobs_dir = dir.join("jobs");
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    // The in-process tests call the API from this machine; the tests of who gets in
    // (api.rs, panel.rs, proxy.rs) turn this off again.
    c.api.trust_loopback = true;
    c.engine.lease = Duration::from_secs(3);
    c.engine.shutdown_grace = Duration::from_secs(2);
    c.engine.watch_interval = Duration::from_millis(50);
    c.instance_id = Some("test-worker".into());
    c.queues.insert(
        "other".into(),
        offsite::config::QueueConfig { concurrency: 2 },
    );
    // The built-in inbox → outbox flow is tested on its own, in temp dirs.
    c.snapshots = None;
    c.sources.clear();
    c.destinations.clear();
    c
}

/// What a probe job reports to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub job: i64,
    pub attempt: i64,
    pub what: &'static str,
}

/// The probe kinds' settings: queue `default`, 3 attempts, normal priority.
fn probe_settings(timeout: Option<Duration>, stall_timeout: Option<Duration>) -> KindSettings {
    KindSettings {
        queue: "default".into(),
        max_attempts: 3,
        priority: 2,
        timeout,
        stall_timeout,
    }
}

/// A job whose behaviour is chosen by its args, for exercising every engine path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeArgs {
    pub mode: String,
    #[serde(default)]
    pub n: u64,
}

impl JobArgs for ProbeArgs {
    const KIND: &'static str = "probe";
    fn settings() -> KindSettings {
        probe_settings(None, None)
    }
}

/// Same behaviours, with a 300 ms attempt timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrictArgs {
    pub mode: String,
}

impl JobArgs for StrictArgs {
    const KIND: &'static str = "strict";
    fn settings() -> KindSettings {
        probe_settings(Some(Duration::from_millis(300)), None)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StallArgs {}

impl JobArgs for StallArgs {
    const KIND: &'static str = "stall";
    fn settings() -> KindSettings {
        probe_settings(None, Some(Duration::from_millis(300)))
    }
}

#[derive(Clone)]
pub struct Probe {
    events: mpsc::UnboundedSender<Event>,
}

impl Probe {
    fn emit(&self, ctx: &JobContext, what: &'static str) {
        let _ = self.events.send(Event {
            job: ctx.job_id(),
            attempt: ctx.attempt(),
            what,
        });
    }

    async fn behave(&self, ctx: JobContext, mode: &str, n: u64) -> Result<(), JobError> {
        self.emit(&ctx, "started");
        match mode {
            "ok" => Ok(()),
            "fail" => Err(JobError::retryable("boom")),
            "fail_until" if (ctx.attempt() as u64) < n => {
                Err(JobError::retryable(format!("not yet ({})", ctx.attempt())))
            }
            "fail_until" => Ok(()),
            "permanent" => Err(JobError::permanent("bad input")),
            "cancel_self" => Err(JobError::Cancelled("the backup vanished".into())),
            "snooze_once" => {
                if ctx.checkpoint::<Value>().is_none() {
                    ctx.save_checkpoint(&json!({"snoozed": true})).await?;
                    return Err(JobError::Snooze {
                        wait: Duration::from_millis(n),
                        reason: "rate limited".into(),
                    });
                }
                Ok(())
            }
            // Counts checkpoints across attempts, failing after each until `n` are saved.
            "count" => {
                let mut seen = ctx
                    .checkpoint::<Value>()
                    .and_then(|v| v["count"].as_u64())
                    .unwrap_or(0);
                seen += 1;
                ctx.save_checkpoint(&json!({"count": seen})).await?;
                if seen < n {
                    Err(JobError::retryable("more to do"))
                } else {
                    Ok(())
                }
            }
            // Runs until an operator cancels it or shutdown asks it to stop.
            "block" => {
                tokio::select! {
                    _ = ctx.stopping() => {
                        self.emit(&ctx, "stopping");
                        Err(JobError::Interrupted)
                    }
                    _ = std::future::pending::<()>() => unreachable!(),
                }
            }
            // Ignores every signal: only the engine's own limits end it.
            "hang" => std::future::pending().await,
            other => Err(JobError::permanent(format!("unknown probe mode {other}"))),
        }
    }
}

impl Worker<ProbeArgs> for Probe {
    async fn work(&self, ctx: JobContext, args: ProbeArgs) -> Result<(), JobError> {
        let r = self.behave(ctx.clone(), &args.mode, args.n).await;
        self.emit(&ctx, "finished");
        r
    }
}

impl Worker<StrictArgs> for Probe {
    async fn work(&self, ctx: JobContext, args: StrictArgs) -> Result<(), JobError> {
        self.behave(ctx, &args.mode, 0).await
    }
}

impl Worker<StallArgs> for Probe {
    async fn work(&self, ctx: JobContext, _args: StallArgs) -> Result<(), JobError> {
        self.emit(&ctx, "started");
        std::future::pending().await
    }
}

/// The real kinds plus the probes.
pub fn registry(config: &Config) -> (Registry, mpsc::UnboundedReceiver<Event>) {
    registry_with(config, services(config))
}

pub fn services(config: &Config) -> Arc<Services> {
    Arc::new(Services::new(config).expect("services"))
}

pub fn registry_with(
    config: &Config,
    services: Arc<Services>,
) -> (Registry, mpsc::UnboundedReceiver<Event>) {
    let mut registry = jobs::registry_with(config, services).expect("registry");
    let (tx, rx) = mpsc::unbounded_channel();
    let probe = Probe { events: tx };
    registry.register::<ProbeArgs, _>(probe.clone(), |_| {});
    registry.register::<StrictArgs, _>(probe.clone(), |_| {});
    registry.register::<StallArgs, _>(probe, |_| {});
    (registry, rx)
}

/// A worker running in this process on a temp dir.
pub struct Harness {
    pub dir: TempDir,
    pub running: Option<Running>,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: TempDir, config: Config) -> Harness {
        let services = services(&config);
        let (registry, events) = registry_with(&config, services.clone());
        let setup = Setup::with(config, registry, services).expect("setup");
        let running = app::start(setup).await.expect("worker starts");
        Harness {
            dir,
            running: Some(running),
            events,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn store(&self) -> &Store {
        &self.running().state.store
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.running().addr.expect("api enabled"))
    }

    pub async fn enqueue(&self, kind: &str, args: Value) -> JobRecord {
        self.enqueue_req(EnqueueRequest {
            kind: kind.into(),
            args,
            ..Default::default()
        })
        .await
    }

    pub async fn enqueue_req(&self, req: EnqueueRequest) -> JobRecord {
        let state = &self.running().state;
        let job = state.registry.prepare(&req).expect("valid job");
        let enq = state.store.enqueue(&job).await.expect("enqueue");
        state.executor.wake();
        enq.job
    }

    pub async fn probe(&self, mode: &str, n: u64) -> JobRecord {
        self.enqueue("probe", json!({"mode": mode, "n": n})).await
    }

    /// Waits for the probe event `what` of job `job`, skipping others.
    pub async fn event(&mut self, job: i64, what: &str) -> Event {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(e)) if e.job == job && e.what == what => return e,
                Ok(Some(_)) => continue,
                _ => panic!("job {job} never reported {what:?}"),
            }
        }
    }

    pub async fn wait_state(&self, id: i64, state: JobState) -> JobRecord {
        wait_for(self.store(), id, |j| j.state == state).await
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the worker again, after `stop`, on the same database (with `config`, usually the
    /// one it ran with: `running().state.config`).
    pub async fn start_again(&mut self, config: Config) {
        self.stop().await;
        let services = services(&config);
        let (registry, events) = registry_with(&config, services.clone());
        let setup = Setup::with(config, registry, services).expect("setup");
        self.running = Some(app::start(setup).await.expect("worker starts again"));
        self.events = events;
    }
}

/// Polls the database until the job satisfies `pred` (20 s limit).
pub async fn wait_for(store: &Store, id: i64, pred: impl Fn(&JobRecord) -> bool) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(job) = store.job(id).await.expect("read job") {
            if pred(&job) {
                return job;
            }
            last = Some(job);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never reached the expected condition; last seen: {last:#?}");
}

/// Deterministic, incompressible-looking bytes (xorshift), the same for the same seed.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends the request and reads the answer as JSON (any status).
pub async fn json_of(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}
