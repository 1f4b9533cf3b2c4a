//! Baseline benchmark of apalis-sqlite 1.0 on the workload offsite is measured on.
//!
//! Phases, all against one fresh file-backed SQLite database in a temp dir:
//! 1. enqueue: the first half of `--jobs` one job per `push` call, the rest with
//!    `push_bulk` in chunks of `--batch-size`;
//! 2. process: `--workers` apalis workers drain the queue; the clock runs from
//!    worker start until the database shows every job `Done`;
//! 3. pickup: on a fresh pool with fresh, idle workers, enqueue one job at a time
//!    and time from the `push` call until the handler starts.
//!
//! Everything about apalis is left at its defaults (`SqliteStorage::setup`, default
//! sqlx pool, default `Config`) so the numbers describe apalis as shipped. The only
//! knob that has no neutral default is how an idle worker learns about new work,
//! hence `--poll`.
//!
//! Run from this directory: `cargo run --release -j1 -- --jobs 2000`. The last line
//! of output is a single JSON object for driver scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_sqlite::callback::HookCallbackListener;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const APALIS_VERSION: &str = "1.0.0";

const USAGE: &str = "\
bench-apalis: baseline throughput/latency of apalis-sqlite 1.0

USAGE: bench-apalis [OPTIONS]

OPTIONS:
  --jobs N              jobs to enqueue and process (default 100000)
  --pickup-samples M    idle pickup-latency samples (default 200)
  --time-limit SECS     cap on the processing phase; the enqueue-one-by-one and
                        pickup phases get a quarter of it each (default 120)
  --workers W           apalis worker instances (default 4)
  --concurrency C       in-flight jobs per worker (default 1)
  --batch-size B        jobs per push_bulk call (default 1000)
  --poll MODE           how an idle worker notices new jobs (default hooked):
                          hooked       SQLite update hook (apalis' event-driven mode)
                          interval:MS  poll every MS milliseconds
                          heartbeat    no strategy: only the 30 s heartbeat wakes it
  -h, --help            print this help
";

/// How idle workers are woken; see `USAGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollMode {
    Hooked,
    Interval(Duration),
    Heartbeat,
}

impl PollMode {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "hooked" => Ok(Self::Hooked),
            "heartbeat" => Ok(Self::Heartbeat),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Self::Interval(Duration::from_millis(ms))),
                _ => Err(format!("invalid --poll {s:?}")),
            },
        }
    }

    fn label(self) -> String {
        match self {
            Self::Hooked => "hooked".into(),
            Self::Interval(d) => format!("interval:{}", d.as_millis()),
            Self::Heartbeat => "heartbeat".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    jobs: u64,
    pickup_samples: u64,
    time_limit: Duration,
    workers: usize,
    concurrency: usize,
    batch_size: usize,
    poll: PollMode,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut o = Options {
            jobs: 100_000,
            pickup_samples: 200,
            time_limit: Duration::from_secs(120),
            workers: 4,
            concurrency: 1,
            batch_size: 1000,
            poll: PollMode::Hooked,
        };
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {v:?}"))
            };
            match flag.as_str() {
                "--jobs" => o.jobs = num(&value)?,
                "--pickup-samples" => o.pickup_samples = num(&value)?,
                "--time-limit" => o.time_limit = Duration::from_secs(num(&value)?),
                "--workers" => o.workers = num(&value)? as usize,
                "--concurrency" => o.concurrency = num(&value)? as usize,
                "--batch-size" => o.batch_size = num(&value)? as usize,
                "--poll" => o.poll = PollMode::parse(&value)?,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.workers == 0 || o.concurrency == 0 || o.batch_size == 0 {
            return Err("--workers, --concurrency and --batch-size must be > 0".into());
        }
        Ok(Some(o))
    }
}

/// The no-op job. `pickup` marks latency probes so the handler can timestamp them
/// without a separate queue (which would change what apalis has to do).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchJob {
    pickup: Option<u64>,
}

/// Shared with every handler through apalis' `Data` extension.
#[derive(Clone)]
struct Probe {
    handled: Arc<AtomicU64>,
    pickups: mpsc::UnboundedSender<(u64, Instant)>,
}

async fn handle(job: BenchJob, probe: Data<Probe>) -> Result<(), BoxDynError> {
    match job.pickup {
        // Ignore send errors: the receiver only disappears at shutdown.
        Some(seq) => drop(probe.pickups.send((seq, Instant::now()))),
        None => {
            probe.handled.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Removes the temp dir even when a phase bails out with `?`.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("bench-apalis-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Report {
    opts: Options,
    enqueue_single: Rate,
    enqueue_batch: Rate,
    process: Rate,
    pickup_ms: Vec<f64>,
    pickup_timeouts: u64,
    pickup_partial: bool,
    workers_died: usize,
    db: DbSettings,
}

#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    count: u64,
    elapsed: Duration,
    partial: bool,
}

impl Rate {
    fn per_s(self) -> Option<f64> {
        (self.count > 0).then(|| self.count as f64 / self.elapsed.as_secs_f64())
    }
}

/// What the database actually ran with, read back rather than assumed, because
/// apalis sets per-connection pragmas through the pool (see `inspect_db`).
#[derive(Debug, Default)]
struct DbSettings {
    sqlite_version: String,
    journal_mode: String,
    /// `PRAGMA synchronous` of every connection the pool held during the run.
    synchronous: Vec<&'static str>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(opts).await {
        Ok(report) => {
            print_report(&report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options) -> BoxResult<Report> {
    let dir = TempDir::new()?;
    let url = format!("sqlite://{}?mode=rwc", dir.0.join("apalis.db").display());
    println!(
        "apalis-sqlite {APALIS_VERSION}: db {url}, jobs {}, workers {} x concurrency {}, poll {}",
        opts.jobs,
        opts.workers,
        opts.concurrency,
        opts.poll.label()
    );

    let (pool, listener) = open_pool(&url, opts.poll).await?;
    let mut producer = SqliteStorage::<BenchJob>::new(&pool);
    let (enqueue_single, enqueue_batch) = enqueue(&mut producer, &opts).await?;

    let (pickup_tx, mut pickup_rx) = mpsc::unbounded_channel();
    let probe = Probe {
        handled: Arc::new(AtomicU64::new(0)),
        pickups: pickup_tx,
    };
    let started = Instant::now();
    let workers = WorkerSet::spawn("process", &pool, listener.as_ref(), &opts, &probe, started);
    let process = wait_processed(&pool, &probe, opts.jobs, started, opts.time_limit).await?;
    println!(
        "process: {} jobs in {:.2?} -> {:.0} jobs/s{}",
        process.count,
        process.elapsed,
        process.per_s().unwrap_or(0.0),
        if process.partial {
            " (PARTIAL: time limit)"
        } else {
            ""
        }
    );
    let mut workers_died = workers.stop().await;

    // After a partial run the backlog would sit in front of every probe job (apalis
    // fetches oldest first), so drop it and start idle workers on an empty queue.
    let dropped = sqlx::query("DELETE FROM Jobs WHERE status <> 'Done'")
        .execute(&pool)
        .await?
        .rows_affected();
    if dropped > 0 {
        println!("dropped {dropped} unprocessed jobs before the pickup phase");
    }
    let db = inspect_db(&pool).await?;
    pool.close().await;

    // A fresh pool, as after an application restart. In hooked mode this matters:
    // the listener queues one event per inserted job and a worker consumes one per
    // poll, and while events are queued it registers no waker. After a partial
    // run tens of thousands remain, so an idle worker would only wake on its 30 s
    // heartbeat, hiding what the hook does for an idle queue.
    let (pool, listener) = open_pool(&url, opts.poll).await?;
    let mut producer = SqliteStorage::<BenchJob>::new(&pool);
    let workers = WorkerSet::spawn(
        "pickup",
        &pool,
        listener.as_ref(),
        &opts,
        &probe,
        Instant::now(),
    );
    let (pickup_ms, pickup_timeouts, pickup_partial) =
        measure_pickup(&mut producer, &mut pickup_rx, &opts).await?;
    workers_died += workers.stop().await;
    pool.close().await;

    Ok(Report {
        opts,
        enqueue_single,
        enqueue_batch,
        process,
        pickup_ms,
        pickup_timeouts,
        pickup_partial,
        workers_died,
        db,
    })
}

/// Opens a pool with sqlx's default options and runs apalis' own `setup`
/// (pragmas + migrations), as an application using apalis-sqlite would.
async fn open_pool(
    url: &str,
    poll: PollMode,
) -> BoxResult<(SqlitePool, Option<HookCallbackListener>)> {
    // The hooked mode needs apalis' own pool constructor (it installs the update
    // hook on every connection); both constructors use sqlx's default pool options.
    let (pool, listener) = match poll {
        PollMode::Hooked => {
            let (pool, listener) = SqliteStorage::connect_with_callback(url)?;
            (pool, Some(listener))
        }
        _ => (SqlitePool::connect(url).await?, None),
    };
    SqliteStorage::setup(&pool).await?;
    Ok((pool, listener))
}

/// Pushes `opts.jobs` jobs: half one per call, the rest batched. If one-by-one
/// pushing is too slow for its time budget, the batched phase takes over the
/// remainder so the processing phase always sees exactly `opts.jobs` jobs.
async fn enqueue(
    producer: &mut SqliteStorage<BenchJob>,
    opts: &Options,
) -> BoxResult<(Rate, Rate)> {
    let budget = opts.time_limit / 4;
    let job = BenchJob { pickup: None };

    let mut single = Rate::default();
    let start = Instant::now();
    while single.count < opts.jobs / 2 {
        if start.elapsed() > budget {
            single.partial = true;
            break;
        }
        producer.push(job.clone()).await?;
        single.count += 1;
    }
    single.elapsed = start.elapsed();
    if let Some(r) = single.per_s() {
        println!(
            "enqueue one per call: {} jobs in {:.2?} -> {r:.0} jobs/s{}",
            single.count,
            single.elapsed,
            if single.partial {
                " (PARTIAL: time budget)"
            } else {
                ""
            }
        );
    }

    let mut batch = Rate::default();
    let remaining = opts.jobs - single.count;
    let start = Instant::now();
    while batch.count < remaining {
        let n = (remaining - batch.count).min(opts.batch_size as u64);
        producer.push_bulk(vec![job.clone(); n as usize]).await?;
        batch.count += n;
    }
    batch.elapsed = start.elapsed();
    if let Some(r) = batch.per_s() {
        println!(
            "enqueue push_bulk({}): {} jobs in {:.2?} -> {r:.0} jobs/s",
            opts.batch_size, batch.count, batch.elapsed
        );
    }
    Ok((single, batch))
}

/// A group of running apalis workers that can be stopped together.
struct WorkerSet {
    stop: watch::Sender<bool>,
    /// Each resolves to whether its worker stopped cleanly.
    handles: Vec<JoinHandle<bool>>,
}

impl WorkerSet {
    /// `prefix` names the workers: apalis refuses to register a name that was
    /// alive within the last heartbeat interval, so each set needs its own.
    fn spawn(
        prefix: &str,
        pool: &SqlitePool,
        listener: Option<&HookCallbackListener>,
        opts: &Options,
        probe: &Probe,
        since: Instant,
    ) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let handles = (0..opts.workers)
            .map(|i| {
                // One strategy per worker: `Strategy` clones share state, and a shared
                // interval timer would wake only one worker per tick.
                let strategy = match (opts.poll, listener) {
                    (PollMode::Hooked, Some(l)) => Strategy::new().stream(l.clone()),
                    (PollMode::Interval(d), _) => Strategy::new().interval(d),
                    _ => Strategy::new(),
                };
                let backend = SqliteStorage::<BenchJob>::new(pool).poll_with_strategy(strategy);
                let name = format!("{prefix}-{i}");
                let worker = WorkerBuilder::new(name.as_str())
                    .backend(backend)
                    .data(probe.clone())
                    .concurrency(opts.concurrency)
                    .build(handle);
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let res = worker
                        .run_until(async move {
                            let _ = stop.wait_for(|s| *s).await;
                            Ok::<(), WorkerError>(())
                        })
                        .await;
                    // Reported as it happens: a worker that dies mid-run (apalis does not
                    // restart it without a `Monitor`) explains a throughput cliff.
                    if let Err(e) = &res {
                        println!("  !! worker {name} died after {:.1?}: {e}", since.elapsed());
                    }
                    res.is_ok()
                })
            })
            .collect();
        Self {
            stop: stop_tx,
            handles,
        }
    }

    /// Stops all workers and returns how many had died with an error.
    async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        let mut died = 0;
        for handle in self.handles {
            // A worker stuck past this is not worth hanging the benchmark over.
            match tokio::time::timeout(Duration::from_secs(10), handle).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => died += 1,
                Ok(Err(e)) => eprintln!("warning: worker task failed: {e}"),
                Err(_) => eprintln!("warning: worker did not stop within 10 s"),
            }
        }
        died
    }
}

/// Waits until every job is `Done` in the database, not merely handled: apalis
/// acknowledges asynchronously in batches, and a job only counts once its ack is
/// durable. The cheap in-process counter gates the (table-scanning) DB check.
async fn wait_processed(
    pool: &SqlitePool,
    probe: &Probe,
    total: u64,
    started: Instant,
    limit: Duration,
) -> BoxResult<Rate> {
    let deadline = started + limit;
    let mut last_report = Instant::now();
    let mut last_handled = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Rate {
                count: count_done(pool).await?,
                elapsed: started.elapsed(),
                partial: true,
            });
        }
        let handled = probe.handled.load(Ordering::Relaxed);
        if handled >= total && count_done(pool).await? >= total {
            return Ok(Rate {
                count: total,
                elapsed: started.elapsed(),
                partial: false,
            });
        }
        // apalis' per-job cost grows with table size, so show the current rate too.
        if last_report.elapsed() >= Duration::from_secs(10) {
            println!(
                "  ... {handled}/{total} handled after {:.0?} (last 10 s: {:.0} jobs/s)",
                started.elapsed(),
                (handled - last_handled) as f64 / last_report.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
            last_handled = handled;
        }
        let step = if handled >= total { 2 } else { 5 };
        tokio::time::sleep(Duration::from_millis(step)).await;
    }
}

async fn count_done(pool: &SqlitePool) -> BoxResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// Returns (latencies in ms, samples that timed out, whether the phase was cut short).
async fn measure_pickup(
    producer: &mut SqliteStorage<BenchJob>,
    rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    opts: &Options,
) -> BoxResult<(Vec<f64>, u64, bool)> {
    let budget = opts.time_limit / 4;
    // Let workers finish their last acks and park, so every sample starts idle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let mut samples = Vec::with_capacity(opts.pickup_samples as usize);
    let mut timeouts = 0;
    let mut partial = false;
    for seq in 0..opts.pickup_samples {
        let Some(left) = budget.checked_sub(start.elapsed()) else {
            partial = true;
            break;
        };
        let t0 = Instant::now();
        producer.push(BenchJob { pickup: Some(seq) }).await?;
        let got = tokio::time::timeout(left, async {
            // Skip stragglers from an earlier timed-out sample.
            while let Some((s, at)) = rx.recv().await {
                if s == seq {
                    return Some(at);
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(at)) => samples.push(at.duration_since(t0).as_secs_f64() * 1e3),
            Ok(None) => return Err("pickup channel closed".into()),
            Err(_) => {
                timeouts += 1;
                partial = true;
                break;
            }
        }
        // Idle gap with a little deterministic jitter so samples do not phase-lock
        // to a polling interval.
        tokio::time::sleep(Duration::from_millis(20 + (seq * 7) % 31)).await;
    }
    Ok((samples, timeouts, partial))
}

/// Reads back the settings every pooled connection ended up with. apalis' `setup`
/// issues `PRAGMA synchronous = OFF` through the pool, which reaches only the one
/// connection that happened to run it; the others keep SQLite's default.
async fn inspect_db(pool: &SqlitePool) -> BoxResult<DbSettings> {
    let mut settings = DbSettings {
        sqlite_version: sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(pool)
            .await?,
        journal_mode: sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await?,
        synchronous: Vec::new(),
    };
    // All workers have stopped, so every live connection is idle; holding `size()`
    // of them at once visits each exactly once without opening new ones.
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        let mut conn = pool.acquire().await?;
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        settings.synchronous.push(match level {
            0 => "OFF",
            1 => "NORMAL",
            2 => "FULL",
            3 => "EXTRA",
            _ => "?",
        });
        held.push(conn);
    }
    settings.synchronous.sort_unstable();
    Ok(settings)
}

/// Nearest-rank percentile of an ascending-sorted slice.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn print_report(r: &Report) {
    let mut sorted = r.pickup_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = percentile(&sorted, 50.0);
    let p99 = percentile(&sorted, 99.0);
    match (p50, p99) {
        (Some(p50), Some(p99)) => println!(
            "pickup: {} samples{}, p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
            sorted.len(),
            if r.pickup_partial { " (PARTIAL)" } else { "" },
            sorted.last().copied().unwrap_or_default()
        ),
        _ => println!("pickup: no sample completed"),
    }
    if r.pickup_timeouts > 0 {
        println!(
            "pickup: {} sample(s) not picked up within the budget",
            r.pickup_timeouts
        );
    }
    let mut levels = r.db.synchronous.clone();
    levels.dedup();
    let sync_summary = levels
        .iter()
        .map(|l| {
            let n = r.db.synchronous.iter().filter(|x| *x == l).count();
            format!("{l}x{n}")
        })
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "sqlite {}: journal_mode {}, synchronous per pooled connection [{sync_summary}]",
        r.db.sqlite_version, r.db.journal_mode
    );

    let partial = r.enqueue_single.partial || r.process.partial || r.pickup_partial;
    let json = serde_json::json!({
        "system": "apalis-sqlite",
        "version": APALIS_VERSION,
        "enqueue_single_per_s": r.enqueue_single.per_s(),
        "enqueue_batch_per_s": r.enqueue_batch.per_s(),
        "process_per_s": r.process.per_s(),
        "pickup_p50_ms": p50,
        "pickup_p99_ms": p99,
        "jobs": r.opts.jobs,
        "jobs_done": r.process.count,
        "partial": partial,
        "pickup_samples": sorted.len(),
        "pickup_timeouts": r.pickup_timeouts,
        "workers": r.opts.workers,
        "workers_died": r.workers_died,
        "concurrency": r.opts.concurrency,
        "batch_size": r.opts.batch_size,
        "poll": r.opts.poll.label(),
        "sqlite_version": r.db.sqlite_version,
        "journal_mode": r.db.journal_mode,
        "synchronous": sync_summary,
    });
    println!("{json}");
}
