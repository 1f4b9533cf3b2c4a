//! db_dump benchmark (issue #10): `cargo bench --bench db_dump -- --size-mib 1024 --runs 3`
//! (`--size-mib 256,1024` measures several sizes in one run).
//!
//! Starts a real PostgreSQL 15 (tests/support/postgres.rs), fills one database per size until
//! its plain dump is about `--size-mib` MiB, and then, interleaved `--runs N` times (default 3,
//! median reported), on the same database and the same file system (the temp dir):
//!
//! - **baseline**: `pg_dump --format=plain -f FILE` (the same PostgreSQL 15 binary offsite is
//!   configured to use), then an fsync of FILE — offsite fsyncs its dump before it renames it,
//!   so the fsync is part of the fair comparison; the time without it is printed too;
//! - **offsite**: the real release binary with `[databases.bench]` (external path in the temp
//!   dir, `require_mount = false`) and a SharePoint destination pointed at the Microsoft Graph
//!   fake (tests/support/graph.rs) served from this process; one dump is started with
//!   `offsite schedules run db_dump.bench`, as an operator would. Measured: the **dump step**,
//!   from the job attempt's start (its `job_attempts` row) to the timestamp of the outcome line
//!   `outcome=dumped` ("database dump written", logged once pg_dump exited 0 and the spool was
//!   fsynced, renamed and its directory fsynced), and **end to end**, attempt start to attempt
//!   end (dump, upload through the copy loop, SharePoint's read-back check, cleanup). The
//!   line's own `duration` field (the dump call alone) is printed beside it.
//!
//! Peak RSS of the offsite process: `VmHWM` when the job is done, and `VmRSS` sampled every
//! 200 ms during the attempt (min / median / max). Before each timed step the temp dir's file
//! system is synced (`sync -f`) so no run inherits another's dirty pages. The Graph fake keeps
//! uploaded files in temporary files on disk, not in memory.

#[path = "../support/mod.rs"]
mod support;

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use offsite::queue::{JobState, Store, store::JobRecord};
use serde_json::{Value, json};
use support::{
    graph::{CLIENT_ID, CLIENT_SECRET, FakeGraph, TENANT_ID},
    postgres::{BIN, Postgres},
};

const MIB: f64 = 1024.0 * 1024.0;
/// The `[databases.<name>]` section, so the schedule is `db_dump.bench`.
const SECTION: &str = "bench";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// A `/proc/PID/status` value in MiB (`VmHWM`, `VmRSS`).
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds of a live process itself (its children not included).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 13 {
        return f64::NAN;
    }
    (f[11] + f[12]) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes back the dirty pages of `dir`'s file system, so a timed step starts clean.
fn sync_fs(dir: &Path) {
    let _ = Command::new("sync").arg("-f").arg(dir).status();
}

// ---------------------------------------------------------------- the database

/// pg_dump with the connection to `db` set (password in the environment).
fn pg_dump(pg: &Postgres, db: &str) -> Command {
    let mut c = Command::new(format!("{BIN}/pg_dump"));
    c.args(["--format=plain", "--no-password", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "-d", db])
        .env("PGPASSWORD", &pg.password)
        .env_remove("PGPASSFILE")
        .stdin(Stdio::null());
    c
}

/// The size of `db`'s plain dump, counted from pg_dump's stdout (nothing written).
fn dump_size(pg: &Postgres, db: &str) -> u64 {
    let mut child = pg_dump(pg, db).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = out.read(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        n += got as u64;
    }
    assert!(child.wait().unwrap().success());
    n
}

const SCHEMA: &str = "
CREATE TABLE accounts (
  id int PRIMARY KEY,
  name text NOT NULL,
  email text,
  created timestamptz NOT NULL,
  balance numeric(14,2),
  active boolean NOT NULL
);
CREATE TABLE events (
  id bigint PRIMARY KEY,
  account int NOT NULL REFERENCES accounts(id),
  at timestamptz NOT NULL,
  amount numeric(12,2),
  kind text NOT NULL,
  payload jsonb,
  note text
);
CREATE TABLE attachments (
  id bigint PRIMARY KEY,
  event bigint NOT NULL,
  data bytea NOT NULL
);
INSERT INTO accounts
  SELECT i, 'account ' || md5(i::text), 'user' || i || '@example.org',
         timestamptz '2020-01-01 00:00:00+00' + i * interval '17 seconds',
         round((random() * 100000)::numeric, 2), i % 3 <> 0
  FROM generate_series(1, 100000) i;
";

/// Events (and every 4th an attachment) `from..=to`.
fn rows(from: u64, to: u64) -> String {
    format!(
        "INSERT INTO events
           SELECT i, 1 + i % 100000, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                  round((random() * 10000)::numeric, 2),
                  (ARRAY['sale', 'refund', 'fee', 'transfer'])[1 + i % 4],
                  jsonb_build_object('ref', md5(i::text), 'n', i % 1000, 'ok', i % 2 = 0,
                                     'tags', jsonb_build_array('t' || i % 7, 't' || i % 11)),
                  md5((i * 7)::text) || ' ' || md5((i * 13)::text)
           FROM generate_series({from}, {to}) i;
         INSERT INTO attachments
           SELECT i, i, decode(md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text)
                               || md5((i + 3)::text), 'hex')
           FROM generate_series({from}, {to}) i WHERE i % 4 = 0;"
    )
}

/// Creates `db` with a plain dump of about `mib` MiB: two small batches measure the bytes per
/// row, the rest is filled in batches of 500,000. Returns the dump's size in bytes.
fn fill(pg: &Postgres, db: &str, mib: u64) -> u64 {
    let started = Instant::now();
    pg.sql("postgres", &format!("CREATE DATABASE {db}"));
    pg.sql(db, SCHEMA);
    let probe = 100_000;
    pg.sql(db, &rows(1, probe));
    let s1 = dump_size(pg, db);
    pg.sql(db, &rows(probe + 1, 2 * probe));
    let s2 = dump_size(pg, db);
    let per_row = (s2 - s1) as f64 / probe as f64;
    let fixed = s1 as f64 - per_row * probe as f64;
    let target = mib as f64 * MIB;
    let total = (((target - fixed) / per_row).max(2.0 * probe as f64)) as u64;
    let mut done = 2 * probe;
    while done < total {
        let to = (done + 500_000).min(total);
        pg.sql(db, &rows(done + 1, to));
        done = to;
    }
    // Hint bits set and statistics taken now, so no measured dump writes them.
    pg.sql(db, "VACUUM (FREEZE, ANALYZE)");
    let size = dump_size(pg, db);
    println!(
        "  database {db}: {done} events, plain dump {:.0} MiB ({per_row:.0} B per event), \
         filled in {:.0} s",
        size as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    size
}

// ---------------------------------------------------------------- baseline

struct Plain {
    /// `pg_dump -f` alone, s.
    dump: f64,
    /// pg_dump + fsync of the file, s.
    dump_fsync: f64,
    bytes: u64,
}

fn plain_dump(pg: &Postgres, db: &str, dir: &Path) -> Plain {
    let file = dir.join(format!("plain-{}.sql", rand::random::<u32>()));
    sync_fs(dir);
    let start = Instant::now();
    let out = pg_dump(pg, db)
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let dump = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let dump_fsync = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file).unwrap().len();
    std::fs::remove_file(&file).unwrap();
    Plain {
        dump,
        dump_fsync,
        bytes,
    }
}

// ---------------------------------------------------------------- offsite

/// VmRSS (MiB) and offsite's own CPU seconds, sampled every 200 ms, with the wall clock (ms).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, f64, f64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let s = (now_ms(), status_mib(pid, "VmRSS:"), cpu_secs(pid));
                    samples.lock().unwrap().push(s);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(f64, f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

struct OffsiteRun {
    /// Attempt start → the `dumped` line, s.
    dump_step: f64,
    /// The `dumped` line's `duration` field, s.
    dump_call: f64,
    /// Attempt start → attempt end, s.
    end_to_end: f64,
    bytes: u64,
    hwm: f64,
    /// VmRSS samples during the attempt, MiB.
    rss: Vec<f64>,
    /// offsite's own CPU (not pg_dump's) during the dump step and the rest, in cores.
    cpu_dump: f64,
    cpu_upload: f64,
}

fn offsite_config(
    pg: &Postgres,
    db: &str,
    fake: &FakeGraph,
    data: &Path,
    external: &Path,
) -> String {
    format!(
        "data_dir = \"{}\"\n[api]\nenabled = false\n[log]\nformat = \"json\"\n\
         [destinations.sp]\ntype = \"sharepoint\"\ntenant_id = \"{TENANT_ID}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nsite = \"{}\"\n\
         library = \"Documents\"\nfolder = \"Backups/db\"\nlogin_url = \"{}\"\ngraph_url = \"{}\"\n\
         [databases.{SECTION}]\n{}days = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\n\
         time = \"02:15\"\ntimezone = \"UTC\"\nexternal_path = \"{}\"\nrequire_mount = false\n\
         destination = \"sp\"\nretries = 0\npg_dump = \"{BIN}/pg_dump\"\n",
        data.display(),
        fake.site(),
        fake.login_url(),
        fake.graph_url(),
        pg.connection_toml(db),
        external.display()
    )
}

/// The binary under test: this build's, or `BENCH_OFFSITE_BIN` (diagnostics: an A/B of two builds).
fn offsite_bin() -> std::path::PathBuf {
    std::env::var_os("BENCH_OFFSITE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_offsite").into())
}

/// The worker, killed if the bench panics before it is stopped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

async fn offsite_dump(pg: &Postgres, db: &str, work: &Path) -> OffsiteRun {
    let fake = FakeGraph::start().await;
    let dir = tempfile::tempdir_in(work).unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(&cfg, offsite_config(pg, db, &fake, &data, &external)).unwrap();
    let log = dir.path().join("log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Diagnostics only: BENCH_WRAP="perf record -g -o FILE" or "strace -f -c -o FILE" runs
    // the worker under a wrapper (the RSS and CPU figures are then the wrapper's).
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(prog) => {
            let mut c = Command::new(prog);
            c.args(words).arg(offsite_bin());
            c
        }
        None => Command::new(offsite_bin()),
    };
    let child = cmd
        .current_dir(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Running(Some(child));
    let db_file = data.join("offsite.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db_file.exists() {
        assert!(Instant::now() < deadline, "{}", read_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = Store::open(&db_file).await.unwrap();
    let schedule = format!("db_dump.{SECTION}");
    while !store
        .schedules()
        .await
        .unwrap()
        .iter()
        .any(|s| s.def.name == schedule)
    {
        assert!(Instant::now() < deadline, "no schedule: {}", read_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sync_fs(work);
    let sampler = Sampler::start(pid);
    let out = Command::new(offsite_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "schedules",
            "run",
            &schedule,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(3600);
    let job: JobRecord = loop {
        let jobs = store
            .list_jobs(&Default::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.kind == "db_dump" && j.state.is_final())
        {
            break j;
        }
        assert!(Instant::now() < deadline, "dump stuck: {}", read_log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let hwm = status_mib(pid, "VmHWM:");
    let samples = sampler.finish();
    stop(child.0.take().unwrap());
    let text = read_log();
    assert_eq!(
        job.state,
        JobState::Completed,
        "{:?}\n{text}",
        job.last_error
    );

    let attempts = store.attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "one attempt");
    let (start, end) = (
        attempts[0].started_at as f64,
        attempts[0].ended_at.unwrap() as f64,
    );
    let dumped: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["outcome"] == "dumped")
        .unwrap_or_else(|| panic!("no outcome=dumped line:\n{text}"));
    let dumped_at = chrono::DateTime::parse_from_rfc3339(dumped["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_micros() as f64
        / 1000.0;
    let dump_call: f64 = dumped["fields"]["duration"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let bytes: u64 = dumped["fields"]["size"].as_str().unwrap().parse().unwrap();
    let names = fake.names_in("Backups/db");
    assert_eq!(names.len(), 1, "{names:?}");
    let item = fake.item(&format!("Backups/db/{}", names[0])).unwrap();
    assert_eq!(item.size, bytes, "the whole dump uploaded");
    assert!(
        std::fs::read_dir(&external).unwrap().next().is_none(),
        "the dump is removed after the upload"
    );

    let during: Vec<&(f64, f64, f64)> = samples
        .iter()
        .filter(|s| s.0 >= start && s.0 <= end)
        .collect();
    // offsite's CPU over a span, from the samples nearest its ends.
    let cpu_at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().partial_cmp(&(b.0 - t).abs()).unwrap())
            .map_or(f64::NAN, |s| s.2)
    };
    let span_cpu = |a: f64, b: f64| (cpu_at(b) - cpu_at(a)) / ((b - a) / 1000.0);
    OffsiteRun {
        dump_step: (dumped_at - start) / 1000.0,
        dump_call,
        end_to_end: (end - start) / 1000.0,
        bytes,
        hwm,
        rss: during.iter().map(|s| s.1).collect(),
        cpu_dump: span_cpu(start, dumped_at),
        cpu_upload: span_cpu(dumped_at, end),
    }
}

// ---------------------------------------------------------------- main

struct SizeResult {
    mib: u64,
    bytes: u64,
    plain: Vec<Plain>,
    offsite: Vec<OffsiteRun>,
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = arg("--size-mib")
        .unwrap_or_else(|| "1024".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--size-mib N[,N…] in MiB"))
        .collect();
    let runs: usize = arg("--runs").map_or(3, |r| r.parse().expect("--runs N"));
    assert!(runs >= 1, "--runs N with N ≥ 1");
    let work = tempfile::tempdir().unwrap();
    println!(
        "offsite db_dump benchmark — {}, PostgreSQL 15 ({BIN}), Graph fake on loopback, \
         temp dir {}, load {}",
        offsite_bin().display(),
        work.path().display(),
        loadavg()
    );
    let pg = Postgres::start();
    let plain_dir = work.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let mut results = Vec::new();
    for &mib in &sizes {
        let db = format!("bench_{mib}");
        let bytes = fill(&pg, &db, mib);
        let mut r = SizeResult {
            mib,
            bytes,
            plain: vec![],
            offsite: vec![],
        };
        // Warm-up, not measured: the same reads for both sides from here on.
        dump_size(&pg, &db);
        for run in 0..runs {
            // Alternate which side goes first.
            for side in [run % 2, 1 - run % 2] {
                if side == 0 {
                    let p = plain_dump(&pg, &db, &plain_dir);
                    println!(
                        "  {mib} MiB run {}: pg_dump -f {:.2} s, + fsync {:.2} s ({:.0} MiB/s), load {}",
                        run + 1,
                        p.dump,
                        p.dump_fsync,
                        p.bytes as f64 / MIB / p.dump_fsync,
                        loadavg()
                    );
                    r.plain.push(p);
                } else {
                    let o = offsite_dump(&pg, &db, work.path()).await;
                    println!(
                        "  {mib} MiB run {}: offsite dump step {:.2} s (dump call {:.2} s, {:.0} MiB/s), \
                         end to end {:.2} s, VmHWM {:.1} MiB, VmRSS {:.1}–{:.1} MiB, load {}",
                        run + 1,
                        o.dump_step,
                        o.dump_call,
                        o.bytes as f64 / MIB / o.dump_step,
                        o.end_to_end,
                        o.hwm,
                        o.rss.iter().copied().fold(f64::INFINITY, f64::min),
                        o.rss.iter().copied().fold(0.0, f64::max),
                        loadavg()
                    );
                    r.offsite.push(o);
                }
            }
        }
        results.push(r);
    }

    let mut out = Vec::new();
    println!(
        "\n## db_dump vs pg_dump -f (median of {runs}; same database, same file system; load now {})",
        loadavg()
    );
    println!(
        "| dump MiB | pg_dump -f + fsync s (MiB/s) | pg_dump -f, no fsync s | offsite dump step s (MiB/s) | offsite dump call s | **ratio** dump step / pg_dump + fsync (goal ≤ 1.10) | offsite end to end s (MiB/s) | upload after the dump MiB/s | offsite CPU dump / upload (cores) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &results {
        let mib = r.bytes as f64 / MIB;
        let plain = median(r.plain.iter().map(|p| p.dump_fsync).collect());
        let plain_nofsync = median(r.plain.iter().map(|p| p.dump).collect());
        let step = median(r.offsite.iter().map(|o| o.dump_step).collect());
        let call = median(r.offsite.iter().map(|o| o.dump_call).collect());
        let e2e = median(r.offsite.iter().map(|o| o.end_to_end).collect());
        let upload = median(
            r.offsite
                .iter()
                .map(|o| mib / (o.end_to_end - o.dump_step))
                .collect(),
        );
        let cpu_d = median(r.offsite.iter().map(|o| o.cpu_dump).collect());
        let cpu_u = median(r.offsite.iter().map(|o| o.cpu_upload).collect());
        println!(
            "| {mib:.0} | {plain:.2} ({:.0}) | {plain_nofsync:.2} | {step:.2} ({:.0}) | {call:.2} | **{:.3}** | {e2e:.2} ({:.0}) | {upload:.0} | {cpu_d:.2} / {cpu_u:.2} |",
            mib / plain,
            mib / step,
            step / plain,
            mib / e2e
        );
        out.push(json!({"size_mib": r.mib, "dump_bytes": r.bytes,
            "pg_dump_fsync_s": r.plain.iter().map(|p| p.dump_fsync).collect::<Vec<_>>(),
            "pg_dump_s": r.plain.iter().map(|p| p.dump).collect::<Vec<_>>(),
            "offsite_dump_step_s": r.offsite.iter().map(|o| o.dump_step).collect::<Vec<_>>(),
            "offsite_dump_call_s": r.offsite.iter().map(|o| o.dump_call).collect::<Vec<_>>(),
            "offsite_end_to_end_s": r.offsite.iter().map(|o| o.end_to_end).collect::<Vec<_>>(),
            "ratio": step / plain,
            "vmhwm_mib": r.offsite.iter().map(|o| o.hwm).collect::<Vec<_>>()}));
    }
    println!("\n## offsite peak RSS (MiB; goal ≤ 64 and flat)");
    println!(
        "| dump MiB | VmHWM, max of {runs} runs | VmRSS during the attempt: min / median / max | samples (every 200 ms) |"
    );
    println!("| --- | --- | --- | --- |");
    for r in &results {
        let hwm = r.offsite.iter().map(|o| o.hwm).fold(0.0, f64::max);
        let all: Vec<f64> = r.offsite.iter().flat_map(|o| o.rss.clone()).collect();
        let (lo, hi) = (
            all.iter().copied().fold(f64::INFINITY, f64::min),
            all.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {:.0} | {hwm:.1} | {lo:.1} / {:.1} / {hi:.1} | {} |",
            r.bytes as f64 / MIB,
            median(all.clone()),
            all.len()
        );
    }
    println!("\n{}", json!({"db_dump": out}));
}
