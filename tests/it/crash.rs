//! `kill -9` of the real binary mid-way through checkpointed work: the restarted worker
//! reclaims its job at once and finishes it from the last checkpoint, exactly once.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use offsite::queue::{JobState, Store, state::AttemptOutcome, store::JobFilter};
use serde_json::Value;

use crate::cli::{bin, offsite, write_config};

fn start(cfg: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin())
        .current_dir(cfg.parent().unwrap())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start offsite")
}

async fn wait<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn kill_9_mid_job_resumes_from_the_last_checkpoint_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // A long lease: only the restart's own reclaim can bring the job back quickly.
    let cfg = write_config(dir.path(), "[engine]\nlease = \"10m\"\n");
    let log = dir.path().join("offsite.log");
    let mut worker = start(&cfg, &log);

    let o = offsite(
        &cfg,
        &[
            "enqueue",
            "noop",
            "--args",
            "{\"steps\": 40, \"step_ms\": 50}",
            "--json",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["job"]["id"]
        .as_i64()
        .unwrap();
    let store = Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();

    let step = |j: &offsite::queue::store::JobRecord| {
        j.checkpoint
            .as_ref()
            .and_then(|c| c["step"].as_u64())
            .unwrap_or(0)
    };
    wait("8 checkpointed steps", async || {
        store.job(id).await.unwrap().filter(|j| step(j) >= 8)
    })
    .await;
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let at_kill = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        at_kill.state,
        JobState::Running,
        "the dead worker still holds the lease"
    );
    let killed_at_step = step(&at_kill);
    assert!(
        killed_at_step < 40,
        "killed mid-way, at step {killed_at_step}"
    );

    let restarted = Instant::now();
    let mut worker = start(&cfg, &log);
    wait("the job to run again", async || {
        store
            .job(id)
            .await
            .unwrap()
            .filter(|j| j.state == JobState::Running && j.attempt == 2)
    })
    .await;
    let recovery = restarted.elapsed();
    let done = wait("completion", async || {
        store
            .job(id)
            .await
            .unwrap()
            .filter(|j| j.state == JobState::Completed)
    })
    .await;

    let cp = done.checkpoint.unwrap();
    assert_eq!(cp["step"], 40);
    let resumed: Vec<u64> = cp["resumed_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        resumed,
        vec![0, killed_at_step],
        "the second attempt started at the last checkpoint, not at 0"
    );
    let attempts = store.attempts(id).await.unwrap();
    let outcomes: Vec<AttemptOutcome> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Lost, AttemptOutcome::Completed],
        "completed exactly once"
    );
    assert_eq!(
        store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        recovery < Duration::from_secs(10),
        "reclaimed at start-up, not after the 10 min lease ({recovery:?})"
    );

    // SIGTERM: a clean stop.
    let pid = worker.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = worker.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("reclaimed jobs this instance was running"),
        "{logs}"
    );
    assert!(logs.contains("stopped"), "{logs}");
}
