//! Upload benchmark: `cargo bench --bench upload` (`-- --sizes 256,2048` in MiB).
//!
//! Runs the real `offsite` binary on one backup per case — from the folder source and from the
//! fake Supervisor, to a local folder and to the fake Dropbox, all on loopback — and reports
//! the upload's MiB/s (from the job's attempt start to its end) and the process's peak RSS
//! (VmHWM). The fakes run in this process, so they share the two cores with offsite.

#[path = "../support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use offsite::{
    destinations::dropbox::{DropboxClient, DropboxSettings, Pkce},
    queue::{JobState, Store},
};
use serde_json::json;
use support::{dropbox::FakeDropbox, supervisor::FakeSupervisor};

const MIB: u64 = 1024 * 1024;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A backup file of `mib` MiB of incompressible bytes.
fn make_backup(path: &Path, mib: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Case {
    source: &'static str,
    destination: &'static str,
    mib: u64,
}

async fn run(case: &Case, backup: &Path) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let dropbox = FakeDropbox::start().await;
    let supervisor = FakeSupervisor::start("bench-token").await;
    supervisor.add_backup_file(
        "bench01",
        "Bench backup",
        "2026-11-22T03:00:00+00:00",
        backup.to_path_buf(),
    );
    let inbox = backup.parent().unwrap();
    let source = match case.source {
        "folder" => format!(
            "[sources.src]\ntype = \"folder\"\npath = \"{}\"\n",
            inbox.display()
        ),
        _ => format!(
            "[sources.src]\ntype = \"supervisor\"\nurl = \"{}\"\ntoken = \"bench-token\"\n",
            supervisor.base_url()
        ),
    };
    let base = dropbox.base_url();
    let destination = match case.destination {
        "folder" => format!(
            "[destinations.dst]\ntype = \"folder\"\npath = \"{}/out\"\n",
            dir.path().display()
        ),
        _ => format!(
            "[destinations.dst]\ntype = \"dropbox\"\npath = \"/Bench\"\napp_key = \"{}\"\napi_url = \"{base}\"\ncontent_url = \"{base}\"\n",
            support::dropbox::DEFAULT_CLIENT_ID
        ),
    };
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data\"\n[api]\nenabled = false\n{source}{destination}\
             [snapshots]\nsource = \"src\"\ndestinations = [\"dst\"]\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    if case.destination == "dropbox" {
        let client = DropboxClient::new(
            DropboxSettings::at(support::dropbox::DEFAULT_CLIENT_ID, &base),
            offsite::jobs::services::token_file(&dir.path().join("data"), "dst"),
            reqwest::Client::new(),
        );
        let pkce = Pkce::generate();
        client
            .exchange_code(
                &dropbox.issue_auth_code(&pkce.challenge),
                &pkce.verifier,
                None,
            )
            .await
            .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_offsite"))
        .current_dir(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let store = Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    let job = loop {
        let jobs = store
            .list_jobs(&Default::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.kind == "snapshot_upload" && j.state.is_final())
        {
            break j;
        }
        assert!(Instant::now() < deadline, "upload did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let rss = peak_rss_mib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let attempt = &store.attempts(job.id).await.unwrap()[0];
    let secs = (attempt.ended_at.unwrap() - attempt.started_at) as f64 / 1000.0;
    ((case.mib as f64) / secs, rss)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = arg("--sizes")
        .unwrap_or_else(|| "256,2048".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes in MiB"))
        .collect();
    let work = tempfile::tempdir().unwrap();
    println!("offsite upload benchmark — real binary, fakes on loopback, chunk 8 MiB");
    println!(
        "{:<11} {:<12} {:>8} {:>10} {:>14}",
        "source", "destination", "MiB", "MiB/s", "peak RSS MiB"
    );
    let mut results = Vec::new();
    for mib in sizes {
        let inbox: PathBuf = work.path().join(format!("in-{mib}"));
        std::fs::create_dir_all(&inbox).unwrap();
        let backup = inbox.join("bench.tar");
        make_backup(&backup, mib);
        for (source, destination) in [
            ("folder", "folder"),
            ("folder", "dropbox"),
            ("supervisor", "folder"),
            ("supervisor", "dropbox"),
        ] {
            let case = Case {
                source,
                destination,
                mib,
            };
            let (rate, rss) = run(&case, &backup).await;
            println!("{source:<11} {destination:<12} {mib:>8} {rate:>10.0} {rss:>14.1}");
            results.push(json!({"source": source, "destination": destination, "mib": mib, "mib_per_s": rate.round(), "peak_rss_mib": (rss * 10.0).round() / 10.0}));
        }
        std::fs::remove_file(&backup).unwrap();
    }
    println!("{}", json!({"upload": results}));
}
