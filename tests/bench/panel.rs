//! Panel benchmark: `cargo bench --bench panel` (`-- --jobs N --uploads N --requests N`).
//!
//! The panel refreshes its live sections every second while it is open, and the Home
//! Assistant sync runs every 15 s; both read the whole picture from SQLite. This measures how
//! long one refresh takes (`GET /panel/sections`, and the full page `GET /`) over loopback with
//! a large database: N jobs queued (in a paused queue), 1,000 scheduled ones, and N uploads
//! recorded. Prints human
//! lines and one JSON line.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use offsite::{
    app::{self, Setup},
    config::Config,
    queue::store::{NewJob, UploadRecord},
};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &Path) -> Config {
    let mut c = Config::load_with(
        None,
        figment::providers::Env::prefixed("OFFSITE_BENCH_NONE_"),
    )
    .unwrap();
    c.data_dir = dir.join("data");
    c.jobs_dir = dir.join("jobs");
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    // The bench measures rendering, not signing in: this machine's browser is trusted.
    c.api.trust_loopback = true;
    c.instance_id = Some("bench".into());
    c.snapshots = None;
    c.sources.clear();
    c.destinations.clear();
    c.prune.completed_after = Duration::ZERO;
    c
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Times `n` GETs of `url` sending `cookie`; sorted milliseconds and the last answer's size.
async fn time_requests(url: &str, cookie: &str, n: usize) -> (Vec<f64>, usize) {
    let http = reqwest::Client::new();
    let mut ms = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).header("cookie", cookie).send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        size = r.bytes().await.unwrap().len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms, size)
}

#[tokio::main]
async fn main() {
    let jobs = arg("--jobs", 100_000);
    let uploads = arg("--uploads", 1_000);
    let requests = arg("--requests", 200);
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(config(dir.path())).unwrap();

    // Fill the database: queued jobs (the queue counts scan them all), waiting ones, uploads.
    {
        let store = setup.open_store().await.unwrap();
        store.set_paused("default", true).await.unwrap();
        let job = |delay: bool| NewJob {
            kind: "noop".into(),
            queue: "default".into(),
            args: "{}".into(),
            priority: 2,
            max_attempts: 25,
            scheduled_at: delay.then_some(i64::MAX / 2),
            idempotency_key: None,
            tags: Vec::new(),
        };
        let t = Instant::now();
        for chunk in (0..jobs).collect::<Vec<_>>().chunks(5_000) {
            let batch: Vec<NewJob> = chunk.iter().map(|_| job(false)).collect();
            store.enqueue_batch(&batch).await.unwrap();
        }
        let waiting: Vec<NewJob> = (0..1_000).map(|_| job(true)).collect();
        store.enqueue_batch(&waiting).await.unwrap();
        for i in 0..uploads {
            let date = chrono::Utc::now() - chrono::Duration::hours(i as i64);
            store
                .record_upload(&UploadRecord {
                    id: 0,
                    destination: "outbox".into(),
                    source: "inbox".into(),
                    backup_slug: format!("slug{i:06}"),
                    backup_name: format!("Backup {i}"),
                    backup_date: date,
                    size: 1 << 30,
                    remote_path: format!("/Backups/Backup_{i}.tar"),
                    content_hash: None,
                    sha256: None,
                    job_id: None,
                    uploaded_at: date,
                    deleted_at: None,
                })
                .await
                .unwrap();
        }
        println!(
            "filled: {jobs} jobs + 1000 waiting, {uploads} uploads in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        store.close().await;
    }

    let running = app::start(setup).await.unwrap();
    if std::env::args().any(|a| a == "--parts") {
        let store = &running.state.store;
        use offsite::queue::{JobState, store::JobFilter};
        for _ in 0..3 {
            let t = Instant::now();
            store.counts().await.unwrap();
            let counts = t.elapsed();
            let t = Instant::now();
            for states in [
                vec![JobState::Running],
                vec![JobState::Available, JobState::Scheduled],
                vec![JobState::Discarded, JobState::Retryable],
            ] {
                store
                    .list_jobs(
                        &JobFilter {
                            states,
                            ..Default::default()
                        },
                        30,
                        None,
                    )
                    .await
                    .unwrap();
            }
            let lists = t.elapsed();
            let t = Instant::now();
            store.last_finished("snapshot_upload").await.unwrap();
            let last = t.elapsed();
            let t = Instant::now();
            store.uploads(None, true).await.unwrap();
            let up = t.elapsed();
            println!("counts {counts:?} lists {lists:?} last {last:?} uploads {up:?}");
        }
    }
    let base = format!("http://{}", running.addr.unwrap());
    // The first request sets the CSRF cookie the sections endpoint wants; send it ourselves.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    let cookie = page
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (sections, sections_size) =
        time_requests(&format!("{base}/panel/sections"), &cookie, requests).await;
    let (full, full_size) = time_requests(&format!("{base}/"), &cookie, requests / 4).await;
    println!(
        "GET /panel/sections: p50 {:.1} ms, p99 {:.1} ms ({} KiB)",
        pct(&sections, 0.5),
        pct(&sections, 0.99),
        sections_size / 1024
    );
    println!(
        "GET / (whole page):  p50 {:.1} ms, p99 {:.1} ms ({} KiB)",
        pct(&full, 0.5),
        pct(&full, 0.99),
        full_size / 1024
    );
    println!(
        "{}",
        json!({
            "jobs": jobs, "uploads": uploads,
            "sections_ms_p50": pct(&sections, 0.5), "sections_ms_p99": pct(&sections, 0.99),
            "page_ms_p50": pct(&full, 0.5), "page_ms_p99": pct(&full, 0.99),
            "sections_bytes": sections_size,
        })
    );
    running.shutdown().await;
}
