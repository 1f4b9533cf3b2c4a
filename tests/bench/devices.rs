//! device_fetch benchmark (issue #11): `cargo bench --bench devices` (`-- --devices N
//! --probes M` to change it).
//!
//! N fake WLED devices (tests/support/devices.rs, each its own axum server on 127.0.0.1), each
//! configured as `[devices.wled-<i>]` with a daily schedule; "all firing at once" is N
//! `device_fetch` jobs enqueued in one go, as the scheduler does when their slots coincide.
//! The engine runs in this process with the shipped queue settings (`default`: 4 workers).
//!
//! Measured, in the same run:
//! - **time to fetch all**: from the enqueue of the N jobs to the last one's completion, and
//!   that each device has one stored version afterwards;
//! - **pickup latency** of another job (a `probe` job on its own queue, one worker: enqueue
//!   durable → its handler runs), M samples while the fetches run, against M samples on the
//!   idle engine just before (the baseline);
//! - **peak RSS** (`VmHWM`) of this process, which also holds the N fakes, before and after.
//!
//! The fakes answer at once; real devices on Wi-Fi take 50–500 ms per request, which would
//! make "time to fetch all" mostly waiting (4 at a time), not offsite's work.

#[path = "../support/mod.rs"]
mod support;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use offsite::{
    app::{self, Setup},
    config::Config,
    jobs,
    queue::{EnqueueRequest, JobArgs, JobContext, JobError, JobState, KindSettings, Worker},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::devices::FakeDevice;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Reports when each `probe` job's handler starts.
#[derive(Clone)]
struct Probes(tokio::sync::mpsc::UnboundedSender<(i64, Instant)>);

#[derive(Serialize, Deserialize)]
struct ProbeArgs {}

impl JobArgs for ProbeArgs {
    const KIND: &'static str = "probe";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "probe".into(),
            max_attempts: 1,
            priority: 2,
            timeout: None,
            stall_timeout: None,
        }
    }
}

impl Worker<ProbeArgs> for Probes {
    async fn work(&self, ctx: JobContext, _: ProbeArgs) -> Result<(), JobError> {
        let _ = self.0.send((ctx.job_id(), Instant::now()));
        Ok(())
    }
}

fn config(dir: &Path, devices: &[FakeDevice]) -> Config {
    let mut c = Config::load_with(
        None,
        figment::providers::Env::prefixed("OFFSITE_BENCH_NONE_"),
    )
    .unwrap();
    c.data_dir = dir.join("data");
    c.jobs_dir = dir.join("jobs");
    c.api.enabled = false;
    c.instance_id = Some("bench".into());
    c.snapshots = None;
    c.sources.clear();
    c.destinations.clear();
    c.queues
        .insert("probe".into(), toml::from_str("concurrency = 1").unwrap());
    for (i, d) in devices.iter().enumerate() {
        c.devices.insert(
            format!("wled-{i}"),
            toml::from_str(&format!(
                "type = \"wled\"\nhost = \"{}\"\nschedule = {{ cron = \"0 0 3 * * *\" }}\n",
                d.base
            ))
            .unwrap(),
        );
    }
    c
}

/// `samples` pickups of a probe job (ms), one at a time.
async fn pickups(
    state: &offsite::http::AppState,
    started: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, Instant)>,
    samples: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let job = state
            .registry
            .prepare(&EnqueueRequest {
                kind: "probe".into(),
                args: json!({}),
                ..Default::default()
            })
            .unwrap();
        let id = state.store.enqueue(&job).await.unwrap().job.id;
        let t = Instant::now();
        state.executor.wake();
        let at = loop {
            let (job, at) = started.recv().await.unwrap();
            if job == id {
                break at;
            }
        };
        out.push(at.duration_since(t).as_secs_f64() * 1000.0);
        // Let the probe worker go idle again before the next sample.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.sort_by(f64::total_cmp);
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = arg("--devices").map_or(50, |v| v.parse().expect("--devices N"));
    let m: usize = arg("--probes").map_or(200, |v| v.parse().expect("--probes M"));
    let dir = tempfile::tempdir().unwrap();
    let mut devices = Vec::with_capacity(n);
    for _ in 0..n {
        devices.push(FakeDevice::start("admin", "unused").await);
    }
    let c = config(dir.path(), &devices);
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let services = Arc::new(jobs::services::Services::new(&c).unwrap());
    let mut registry = jobs::registry_with(&c, services.clone()).unwrap();
    registry.register::<ProbeArgs, _>(Probes(tx), |_| {});
    let setup = Setup::with(c, registry, services).unwrap();
    let running = app::start(setup).await.unwrap();
    let state = running.state.clone();
    let rss_before = vm_hwm_mib();

    let idle = pickups(&state, &mut started, m).await;

    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let job = state
            .registry
            .prepare(&EnqueueRequest {
                kind: "device_fetch".into(),
                args: json!({ "device": format!("wled-{i}") }),
                ..Default::default()
            })
            .unwrap();
        ids.push(state.store.enqueue(&job).await.unwrap().job.id);
    }
    state.executor.wake();
    // Probes while the fetches run; those taken after the last fetch finished are dropped.
    let mut busy = Vec::new();
    let mut all_done = None;
    while all_done.is_none() {
        busy.extend(pickups(&state, &mut started, 5).await);
        let mut done = true;
        for id in &ids {
            let j = state.store.job(*id).await.unwrap().unwrap();
            assert!(
                !matches!(j.state, JobState::Discarded | JobState::Cancelled),
                "fetch {id} failed: {:?}",
                j.last_error
            );
            done &= j.state == JobState::Completed;
        }
        if done {
            all_done = Some(t.elapsed());
        }
    }
    let all = all_done.unwrap();
    busy.sort_by(f64::total_cmp);
    for i in 0..n {
        let index = offsite::devices::store::read_index(&offsite::devices::store::device_dir(
            &state.config.data_dir,
            &format!("wled-{i}"),
        ))
        .await;
        assert_eq!(index.versions.len(), 1, "wled-{i} stored one version");
    }
    let rss_after = vm_hwm_mib();
    running.shutdown().await;

    println!("device_fetch benchmark — {n} fake WLED devices, in-process engine, 4 workers");
    println!(
        "  time to fetch all {n}: {:.0} ms ({:.1} ms per device)",
        all.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "  probe pickup, idle engine ({} samples): p50 {:.2} ms  p99 {:.2} ms",
        idle.len(),
        pct(&idle, 0.5),
        pct(&idle, 0.99)
    );
    println!(
        "  probe pickup while the fetches ran ({} samples): p50 {:.2} ms  p99 {:.2} ms",
        busy.len(),
        pct(&busy, 0.5),
        pct(&busy, 0.99)
    );
    println!(
        "  peak RSS of this process (engine + {n} fakes): {rss_before:.1} MiB before, {rss_after:.1} MiB after"
    );
    println!(
        "{}",
        json!({"devices": {
            "n": n,
            "all_ms": all.as_secs_f64() * 1000.0,
            "pickup_idle_p50_ms": pct(&idle, 0.5),
            "pickup_idle_p99_ms": pct(&idle, 0.99),
            "pickup_busy_p50_ms": pct(&busy, 0.5),
            "pickup_busy_p99_ms": pct(&busy, 0.99),
            "busy_samples": busy.len(),
            "vm_hwm_before_mib": rss_before,
            "vm_hwm_after_mib": rss_after,
        }})
    );
}
