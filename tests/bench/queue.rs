//! Queue benchmark: `cargo bench --bench queue` (add `-- --jobs N --skip-apalis` to change it).
//!
//! Measures, on real SQLite files with the durable defaults (WAL, synchronous=FULL):
//! enqueue throughput (one job per call through the store, the HTTP API and the CLI; and in
//! batches), end-to-end processing of N no-op jobs with 4 workers, pickup latency in-process
//! and cross-process, and the time from a `kill -9` to the job running again after restart.
//! Then runs the apalis-sqlite 1.0 baseline (tests/bench-apalis) on the same workload and
//! prints the ratios. Prints human lines and one JSON line at the end.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use offsite::{
    app::{self, Setup},
    config::Config,
    jobs,
    queue::{
        EnqueueRequest, JobArgs, JobContext, JobError, JobState, KindSettings, Store, Worker,
        store::NewJob,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn config(dir: &Path, api: bool) -> Config {
    let mut c = Config::load_with(
        None,
        figment::providers::Env::prefixed("OFFSITE_BENCH_NONE_"),
    )
    .unwrap();
    c.data_dir = dir.join("data");
    c.jobs_dir = dir.join("jobs");
    c.api.enabled = api;
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.token = Some(offsite::config::Secret::new(BENCH_TOKEN));
    c.instance_id = Some("bench".into());
    c.queues.get_mut("default").unwrap().concurrency = 4;
    c.snapshots = None;
    c.sources.clear();
    c.destinations.clear();
    c
}

fn noop_job() -> NewJob {
    NewJob {
        kind: "noop".into(),
        queue: "default".into(),
        args: "{}".into(),
        priority: 2,
        max_attempts: 25,
        scheduled_at: None,
        idempotency_key: None,
        tags: Vec::new(),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Reports when each `mark` job's handler starts.
#[derive(Clone)]
struct Marks(tokio::sync::mpsc::UnboundedSender<(i64, Instant)>);

#[derive(Serialize, Deserialize)]
struct MarkArgs {}

impl JobArgs for MarkArgs {
    const KIND: &'static str = "mark";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 1,
            priority: 2,
            timeout: None,
            stall_timeout: None,
        }
    }
}

impl Worker<MarkArgs> for Marks {
    async fn work(&self, ctx: JobContext, _: MarkArgs) -> Result<(), JobError> {
        let _ = self.0.send((ctx.job_id(), Instant::now()));
        Ok(())
    }
}

async fn enqueue_single(dir: &Path, n: usize) -> f64 {
    let store = Store::open(&dir.join("single.db")).await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        store.enqueue(&noop_job()).await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn enqueue_batch(store: &Store, n: usize, batch: usize) -> f64 {
    let t = Instant::now();
    let jobs: Vec<NewJob> = (0..batch).map(|_| noop_job()).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        store.enqueue_batch(&jobs[..k]).await.unwrap();
        left -= k;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

const BENCH_TOKEN: &str = "queue-bench-token-0123456789";

async fn enqueue_api(dir: &Path, n: usize) -> f64 {
    let setup = Setup::new(config(dir, true)).unwrap();
    // Paused so the measurement is the API and the enqueue alone.
    let running = app::start(setup).await.unwrap();
    running
        .state
        .store
        .set_paused("default", true)
        .await
        .unwrap();
    let url = format!("http://{}/api/v1/jobs", running.addr.unwrap());
    let client = reqwest::Client::new();
    let t = Instant::now();
    for _ in 0..n {
        let r = client
            .post(&url)
            .bearer_auth(BENCH_TOKEN)
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    running.shutdown().await;
    rate
}

fn write_config_file(dir: &Path, lease: &str) -> std::path::PathBuf {
    let path = dir.join("offsite.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{0}/data\"\njobs_dir = \"{0}/jobs\"\ninstance_id = \"bench-proc\"\n[api]\nenabled = false\n[snapshots]\nenabled = false\n[engine]\nlease = \"{lease}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn enqueue_cli(dir: &Path, n: usize) -> f64 {
    let cfg = write_config_file(dir, "30s");
    let t = Instant::now();
    for _ in 0..n {
        let o = Command::new(env!("CARGO_BIN_EXE_offsite"))
            .current_dir(dir)
            .args(["--config", cfg.to_str().unwrap(), "enqueue", "noop"])
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn process(dir: &Path, n: usize) -> (f64, f64) {
    let c = config(dir, false);
    std::fs::create_dir_all(&c.data_dir).unwrap();
    let store = Store::open(&c.database_path()).await.unwrap();
    let batch_rate = enqueue_batch(&store, n, 1000).await;
    let t = Instant::now();
    let running = app::start(Setup::new(c).unwrap()).await.unwrap();
    loop {
        let counts = store.counts().await.unwrap();
        let done: i64 = counts
            .iter()
            .filter(|c| c.1 == JobState::Completed)
            .map(|c| c.2)
            .sum();
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    running.shutdown().await;
    (batch_rate, rate)
}

async fn pickup_in_process(dir: &Path, samples: usize) -> Vec<f64> {
    let c = config(dir, false);
    let (tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let marks = Marks(tx);
    let services = Arc::new(jobs::services::Services::new(&c).unwrap());
    let mut registry = jobs::registry_with(&c, services.clone()).unwrap();
    registry.register::<MarkArgs, _>(marks.clone(), |_| {});
    let setup = Setup::with(c, registry, services).unwrap();
    let running = app::start(setup).await.unwrap();
    let state = running.state.clone();
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let job = state
            .registry
            .prepare(&EnqueueRequest {
                kind: "mark".into(),
                args: json!({}),
                ..Default::default()
            })
            .unwrap();
        // From the moment the enqueue is durable (what the caller was acknowledged).
        let id = state.store.enqueue(&job).await.unwrap().job.id;
        let t = Instant::now();
        state.executor.wake();
        let started = loop {
            let (job, at) = started_rx.recv().await.unwrap();
            if job == id {
                break at;
            }
        };
        out.push(started.duration_since(t).as_secs_f64() * 1000.0);
        // Let the worker go idle again before the next sample.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.shutdown().await;
    out.sort_by(f64::total_cmp);
    out
}

fn spawn_worker(cfg: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("worker-{}.log", rand_suffix()))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_offsite"))
        .current_dir(dir)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

async fn wait_job(
    store: &Store,
    id: i64,
    pred: impl Fn(&offsite::queue::store::JobRecord) -> bool,
) -> offsite::queue::store::JobRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(j) = store.job(id).await.unwrap()
            && pred(&j)
        {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} stuck");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A worker process picks up jobs another process (this one) enqueues: created_at → attempted_at.
async fn pickup_cross_process(dir: &Path, samples: usize) -> Vec<f64> {
    let cfg = write_config_file(dir, "30s");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let store = Store::open(&dir.join("data/offsite.db")).await.unwrap();
    let mut worker = spawn_worker(&cfg, dir);
    // The first job also waits for the worker to be up.
    let warm = store.enqueue(&noop_job()).await.unwrap().job.id;
    wait_job(&store, warm, |j| j.state == JobState::Completed).await;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        // Vary the gap so samples do not lock onto the watcher's tick.
        tokio::time::sleep(Duration::from_millis(5 + (i as u64 * 37) % 250)).await;
        let job = store.enqueue(&noop_job()).await.unwrap().job;
        let j = wait_job(&store, job.id, |j| j.attempted_at.is_some()).await;
        out.push((j.attempted_at.unwrap() - j.created_at) as f64);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    out.sort_by(f64::total_cmp);
    out
}

/// kill -9 a worker holding a running job; restart it; time until the job runs again.
async fn recovery(dir: &Path, rounds: usize) -> Vec<f64> {
    let cfg = write_config_file(dir, "10m");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let store = Store::open(&dir.join("data/offsite.db")).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut worker = spawn_worker(&cfg, dir);
        let mut job = noop_job();
        job.args = r#"{"steps": 100000, "step_ms": 10}"#.into();
        let job = store.enqueue(&job).await.unwrap().job;
        let running = wait_job(&store, job.id, |j| j.state == JobState::Running).await;
        worker.kill().unwrap();
        worker.wait().unwrap();
        let t = Instant::now();
        let mut worker = spawn_worker(&cfg, dir);
        wait_job(&store, job.id, |j| {
            j.state == JobState::Running && j.attempt == running.attempt + 1
        })
        .await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        store.cancel(job.id).await.unwrap();
        wait_job(&store, job.id, |j| j.state == JobState::Cancelled).await;
        let _ = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
        let _ = worker.wait();
    }
    out.sort_by(f64::total_cmp);
    out
}

fn apalis(jobs: usize) -> Option<Value> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench-apalis/Cargo.toml");
    eprintln!("building and running the apalis-sqlite baseline (tests/bench-apalis) …");
    let out = Command::new(env!("CARGO"))
        .args([
            "run",
            "--release",
            "--quiet",
            "--manifest-path",
            manifest,
            "--",
            "--jobs",
            &jobs.to_string(),
            "--pickup-samples",
            "200",
            "--time-limit",
            "120",
        ])
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--jobs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let root = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let p = root.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    println!(
        "offsite queue benchmark — {n} jobs, 4 workers, WAL + synchronous=FULL, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let single = enqueue_single(&sub("single"), 2000).await;
    println!("enqueue, one job per call (store):   {single:>9.0} jobs/s");
    let api = enqueue_api(&sub("api"), 2000).await;
    println!("enqueue, one job per HTTP request:   {api:>9.0} jobs/s");
    let cli = enqueue_cli(&sub("cli"), 100);
    println!("enqueue, one `offsite enqueue` run:  {cli:>9.0} jobs/s");
    let (batch, processed) = process(&sub("process"), n).await;
    println!("enqueue, batches of 1000:            {batch:>9.0} jobs/s");
    println!("process {n} no-op jobs end to end:  {processed:>9.0} jobs/s");
    let pin = pickup_in_process(&sub("pickup"), 500).await;
    println!(
        "pickup in-process:    p50 {:.2} ms  p99 {:.2} ms",
        pct(&pin, 0.5),
        pct(&pin, 0.99)
    );
    let pcross = pickup_cross_process(&sub("cross"), 100).await;
    println!(
        "pickup cross-process: p50 {:.0} ms  p99 {:.0} ms",
        pct(&pcross, 0.5),
        pct(&pcross, 0.99)
    );
    let rec = recovery(&sub("recovery"), 5).await;
    println!(
        "kill -9 → running again after restart: p50 {:.0} ms  max {:.0} ms",
        pct(&rec, 0.5),
        rec.last().copied().unwrap_or(f64::NAN)
    );

    let baseline = if flag("--skip-apalis") {
        None
    } else {
        apalis(n)
    };
    let mut report = json!({
        "system": "offsite",
        "jobs": n,
        "enqueue_single_store_per_s": single.round(),
        "enqueue_single_api_per_s": api.round(),
        "enqueue_single_cli_per_s": cli.round(),
        "enqueue_batch_per_s": batch.round(),
        "process_per_s": processed.round(),
        "pickup_in_process_p50_ms": pct(&pin, 0.5),
        "pickup_in_process_p99_ms": pct(&pin, 0.99),
        "pickup_cross_process_p50_ms": pct(&pcross, 0.5),
        "pickup_cross_process_p99_ms": pct(&pcross, 0.99),
        "recovery_p50_ms": pct(&rec, 0.5),
        "recovery_max_ms": rec.last().copied(),
    });
    if let Some(b) = baseline {
        let ratio = |ours: f64, key: &str| {
            b[key]
                .as_f64()
                .map(|theirs| (ours / theirs * 10.0).round() / 10.0)
        };
        println!(
            "apalis-sqlite 1.0:    enqueue {} /s single, {} /s batch; process {} /s{}; pickup p50 {} ms",
            b["enqueue_single_per_s"],
            b["enqueue_batch_per_s"],
            b["process_per_s"],
            if b["partial"] == true {
                format!(" (partial: {} jobs in the time limit)", b["jobs_done"])
            } else {
                String::new()
            },
            b["pickup_p50_ms"]
        );
        println!(
            "ratio offsite/apalis: process ×{}, enqueue single ×{}, enqueue batch ×{}",
            ratio(processed, "process_per_s").unwrap_or(f64::NAN),
            ratio(single, "enqueue_single_per_s").unwrap_or(f64::NAN),
            ratio(batch, "enqueue_batch_per_s").unwrap_or(f64::NAN)
        );
        report["apalis"] = b;
    }
    println!("{report}");
}
