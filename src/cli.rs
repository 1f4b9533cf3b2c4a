//! The command line, on the same library as the worker. Exit codes: 0 ok, 2 bad usage or
//! configuration, 1 runtime failure.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    config::Config,
    http::error::ApiError,
    ops::{
        self, OpsError, Setup, StartError,
        views::{AttemptView, EnqueueResponse, JobDetail, JobView, ScheduleInfo, parse_states},
    },
    queue::{
        EnqueueRequest,
        scheduler::{self, RunNowError},
        state::to_datetime,
        store::JobFilter,
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "offsite",
    version,
    about = "Gets backups off the premises and never loses its place"
)]
pub struct Cli {
    /// Config file (TOML). Without one the built-in defaults are used.
    #[arg(long, short, env = "OFFSITE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: queues, scheduler and HTTP API, until SIGTERM or Ctrl-C.
    Run,
    /// Submit a job.
    Enqueue(EnqueueArgs),
    /// Inspect and manage jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Queue counts, pause and resume.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// List schedules or run one now.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Network devices whose configuration is backed up (`[devices]`).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Google Drive mirrors (`[google_drive]`); authorize one with `offsite authorize <name>`.
    #[command(subcommand)]
    Google(GoogleCommand),
    /// Back up now: scan the snapshot source and upload what is new.
    BackupNow,
    /// Write a consistent copy of the database beside it (`<database>.snapshot`), for a hot
    /// backup of the data directory; used as the add-on's backup_pre.
    DbSnapshot,
    /// What was uploaded where.
    Uploads {
        #[arg(long)]
        destination: Option<String>,
        /// Include copies retention deleted.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Authorize a Dropbox destination or a Google Drive source: prints a link, then reads the
    /// code Dropbox shows, or the address Google's consent ends on.
    Auth { destination: String },
    /// Check the configuration and schedule files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the OpenAPI description of the HTTP API.
    Openapi,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job kind, e.g. noop.
    pub kind: String,
    /// Arguments as JSON.
    #[arg(long, default_value = "{}")]
    pub args: String,
    /// Idempotency key: submitting it again returns the existing job.
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    /// 1 (first) to 4 (last).
    #[arg(long)]
    pub priority: Option<i64>,
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Run no earlier than this time (RFC 3339).
    #[arg(long)]
    pub run_at: Option<DateTime<Utc>>,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Comma-separated states.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its attempts and checkpoint.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a job again (resuming from its checkpoint), or with --all every matching job.
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<i64>,
        /// Start over instead of resuming from the checkpoint.
        #[arg(long)]
        reset_checkpoint: bool,
        /// Retry every job matching --state (default discarded), --kind and --queue.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long, requires = "all")]
        state: Option<String>,
        #[arg(long, requires = "all")]
        kind: Option<String>,
        #[arg(long, requires = "all")]
        queue: Option<String>,
    },
    /// Cancel a job (a running one stops at its next checkpoint).
    Cancel { id: i64 },
    /// Delete a job that is not running.
    Delete { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    List,
    Pause { name: String },
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Enqueue the schedule's job now.
    Run { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Each device with its last fetch, result, last change and stored versions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a fetch of the device now (a running worker picks it up).
    Fetch { name: String },
    /// Contact the device now, from this process, and say whether the credentials work.
    Test { name: String },
}

#[derive(Debug, Subcommand)]
pub enum GoogleCommand {
    /// Each source: authorized, the feed, per destination current / behind / failing.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a sync of the source now (a running worker picks it up).
    Sync { name: String },
    /// What offsite holds of files whose path or name contains QUERY (or with that id).
    Files {
        name: String,
        query: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and the schedule files, and say what would be used.
    Check,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: e.to_string(),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn short(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_jobs(jobs: &[JobView]) {
    println!(
        "{:>8}  {:<16} {:<10} {:<10} {:>7}  {:<19}  ERROR",
        "ID", "KIND", "QUEUE", "STATE", "ATTEMPT", "SCHEDULED"
    );
    for j in jobs {
        println!(
            "{:>8}  {:<16} {:<10} {:<10} {:>3}/{:<3}  {:<19}  {}",
            j.id,
            j.kind,
            j.queue,
            j.state.to_string(),
            j.attempt,
            j.max_attempts,
            short(Some(j.scheduled_at)),
            j.last_error.as_deref().unwrap_or("")
        );
    }
}

fn print_job(job: &JobView, attempts: &[AttemptView]) {
    println!(
        "job {} ({}) on queue {}: {}",
        job.id, job.kind, job.queue, job.state
    );
    println!("  attempt       {}/{}", job.attempt, job.max_attempts);
    println!("  args          {}", job.args);
    if let Some(key) = &job.idempotency_key {
        println!("  key           {key}");
    }
    println!("  created       {}", short(Some(job.created_at)));
    println!("  scheduled     {}", short(Some(job.scheduled_at)));
    println!("  finalized     {}", short(job.finalized_at));
    if let Some(cp) = &job.checkpoint {
        println!("  checkpoint    {cp}");
    }
    if let Some(p) = &job.progress {
        println!("  progress      {p}");
    }
    if let Some(e) = &job.last_error {
        println!("  last error    {e}");
    }
    for a in attempts {
        println!(
            "  attempt {:>3}  {}  {} → {}  {}",
            a.attempt,
            a.worker,
            short(Some(a.started_at)),
            short(a.ended_at),
            serde_json::to_value(a.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
                + &a.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
        );
    }
}

/// The configuration the command line names (the add-on's options in the add-on), validated.
pub fn setup(cli: &Cli) -> Result<Setup, Failure> {
    let config = match (&cli.config, crate::addon::options_file()) {
        // Home Assistant add-on: the options from the Configuration tab.
        (None, Some(options)) => crate::addon::load(&options, std::path::Path::new("/data")),
        (file, _) => Config::load(file.as_deref()),
    }
    .map_err(|e| usage(e.to_string()))?;
    Setup::new(config).map_err(|e| usage(e.to_string()))
}

/// Runs a command other than `run` (the composition root starts the worker).
pub async fn command(setup: Setup, command: Command) -> Result<(), Failure> {
    match command {
        // The composition root's: it starts the worker, and the API describes itself.
        Command::Run | Command::Openapi => unreachable!("app::execute runs these"),
        Command::DbSnapshot => {
            let store = setup.open_store().await?;
            let target = setup.snapshot_path();
            store.snapshot_to(&target).await.map_err(runtime)?;
            println!("database copied to {}", target.display());
        }
        Command::Google(cmd) => {
            let store = setup.open_store().await?;
            let ops_error = |e: OpsError| match e {
                OpsError::NotFound(m) => usage(m),
                other => runtime(other),
            };
            match cmd {
                GoogleCommand::List { json } => {
                    let all = ops::google::list(&setup.services, &store)
                        .await
                        .map_err(ops_error)?;
                    if json {
                        print_json(&all);
                    } else if all.is_empty() {
                        println!("no Google Drive sources configured ([google_drive.<name>])");
                    }
                    for g in all.iter().filter(|_| !json) {
                        let auth = if g.authorized {
                            "authorized".to_string()
                        } else {
                            format!("NOT AUTHORIZED (offsite auth {})", g.name)
                        };
                        let last = match (&g.last_error, &g.last_sync_at) {
                            (Some(e), _) => format!("last sync FAILED: {e}"),
                            (None, Some(t)) => format!("last sync {t}"),
                            (None, None) => "never synced".into(),
                        };
                        println!(
                            "{}: {auth}; {last}; {} files mirrored, {} skipped",
                            g.name, g.files, g.skipped
                        );
                        for d in &g.destinations {
                            println!(
                                "  {}: {} current, {} behind, {} failing, {} in trash, {} bytes",
                                d.destination, d.current, d.behind, d.failing, d.trashed, d.bytes
                            );
                        }
                    }
                }
                GoogleCommand::Sync { name } => {
                    store
                        .sync_schedules(&setup.schedules)
                        .await
                        .map_err(runtime)?;
                    let enq =
                        ops::google::sync_now(&setup.services, &store, &setup.registry, &name)
                            .await
                            .map_err(ops_error)?;
                    println!(
                        "sync of Google Drive {name} enqueued as job {}; a running worker picks it up",
                        enq.job.id
                    );
                }
                GoogleCommand::Files { name, query, json } => {
                    let found = ops::google::files(&setup.services, &store, &name, &query)
                        .await
                        .map_err(ops_error)?;
                    if json {
                        print_json(&found);
                    } else if found.is_empty() {
                        println!("no file of {name} matches {query:?}");
                    }
                    for f in found.iter().filter(|_| !json) {
                        let what = match (&f.path, &f.skipped, f.removed) {
                            (_, _, true) => "removed from Drive".to_string(),
                            (_, Some(why), _) => format!("skipped: {why}"),
                            (Some(p), _, _) => p.clone(),
                            _ => "-".into(),
                        };
                        println!("{} ({}): {what}", f.name, f.file_id);
                        for c in &f.copies {
                            let at = chrono::DateTime::from_timestamp_millis(c.stored_at)
                                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                                .unwrap_or_default();
                            match (&c.remote, &c.trashed_remote) {
                                (Some(r), _) => println!(
                                    "  {}: {r} ({} bytes, since {at})",
                                    c.destination,
                                    c.size.unwrap_or(0)
                                ),
                                (None, Some(t)) => {
                                    println!("  {}: soft-deleted to {t}", c.destination)
                                }
                                _ => println!("  {}: not stored", c.destination),
                            }
                        }
                    }
                }
            }
        }
        Command::Devices(cmd) => match cmd {
            DevicesCommand::List { json } => {
                let mut all = serde_json::Map::new();
                for name in setup.config.devices.keys() {
                    let dir = crate::devices::store::device_dir(&setup.config.data_dir, name);
                    let index = crate::devices::store::read_index(&dir).await;
                    if json {
                        all.insert(
                            name.clone(),
                            serde_json::to_value(&index).unwrap_or_default(),
                        );
                        continue;
                    }
                    let last = match &index.last_fetch {
                        Some(f) if f.ok => format!("ok at {}", f.at.format("%Y-%m-%d %H:%M")),
                        Some(f)
                            if f.state
                                == crate::devices::store::FetchState::WaitingForConfirmation =>
                        {
                            format!(
                                "WAITING FOR YOUR CONFIRMATION on the device since {}",
                                f.waiting_since.unwrap_or(f.at).format("%Y-%m-%d %H:%M")
                            )
                        }
                        Some(f) => format!(
                            "FAILED at {}: {}",
                            f.at.format("%Y-%m-%d %H:%M"),
                            f.error.as_deref().unwrap_or("")
                        ),
                        None => "never fetched".into(),
                    };
                    let change = index
                        .last_change
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{name}: last fetch {last}; last change {change}; {} version(s)",
                        index.versions.len()
                    );
                    for v in index.versions.iter().rev() {
                        println!(
                            "  {}  {:>9} bytes  sha256 {}…  {}",
                            v.file,
                            v.size,
                            &v.sha256[..16],
                            v.firmware.as_deref().unwrap_or("")
                        );
                    }
                }
                if json {
                    print_json(&all);
                } else if setup.config.devices.is_empty() {
                    println!("no devices configured ([devices.<name>])");
                }
            }
            DevicesCommand::Fetch { name } => {
                let store = setup.open_store().await?;
                store
                    .sync_schedules(&setup.schedules)
                    .await
                    .map_err(runtime)?;
                let schedule = format!("{}{name}", crate::jobs::device_fetch::SCHEDULE_PREFIX);
                let enq = scheduler::run_now(&store, &setup.registry, &schedule)
                    .await
                    .map_err(|e| match e {
                        RunNowError::NotFound(_) => {
                            usage(format!("device {name:?} is not configured under [devices]"))
                        }
                        other => runtime(other),
                    })?;
                println!(
                    "fetch of device {name} enqueued as job {}; a running worker picks it up",
                    enq.job.id
                );
            }
            DevicesCommand::Test { name } => {
                if !setup.config.devices.contains_key(&name) {
                    return Err(usage(format!(
                        "device {name:?} is not configured under [devices]"
                    )));
                }
                let said = crate::jobs::device_fetch::test_connection(&setup.services, &name)
                    .await
                    .map_err(runtime)?;
                println!("device {name}: connected ({said})");
            }
        },
        Command::BackupNow => {
            let store = setup.open_store().await?;
            // The worker may not have run yet on a new database: make sure the schedule exists.
            store
                .sync_schedules(&setup.schedules)
                .await
                .map_err(runtime)?;
            let enq = ops::back_up_now(&store, &setup.registry)
                .await
                .map_err(|e| match e {
                    OpsError::NotFound(_) => {
                        usage("no snapshot schedule is configured ([snapshots])")
                    }
                    other => runtime(other),
                })?;
            println!(
                "backup scan enqueued as job {}; a running worker picks it up",
                enq.job.id
            );
        }
        Command::Uploads {
            destination,
            all,
            json,
        } => {
            let store = setup.open_store().await?;
            let list = store
                .uploads(destination.as_deref(), all)
                .await
                .map_err(runtime)?;
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("nothing uploaded yet");
            } else {
                for u in &list {
                    println!(
                        "{:<12} {}  {:>12} bytes  {}  {}{}{}",
                        u.destination,
                        u.backup_date.format("%Y-%m-%d %H:%M"),
                        u.size,
                        u.backup_name,
                        u.remote_path,
                        u.sha256
                            .as_deref()
                            .map(|h| format!("  sha256 {}…", &h[..h.len().min(16)]))
                            .unwrap_or_default(),
                        if u.deleted_at.is_some() {
                            "  [deleted by retention]"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Command::Auth { destination } => {
            let started = ops::authorization::start(&setup.services, &destination, None).map_err(
                |e| match e {
                    OpsError::Conflict(_) => {
                        usage(format!("destination {destination} needs no authorization"))
                    }
                    other => usage(other.to_string()),
                },
            )?;
            println!(
                "1. Open this link and allow access:\n\n   {}\n",
                started.url
            );
            if setup.services.google_drive(&destination).is_some() {
                println!(
                    "2. The browser ends on a page that cannot load (http://127.0.0.1:8765/?code=…): \
                     paste that whole address here and press Enter:"
                );
            } else {
                println!("2. Paste the code Dropbox shows here and press Enter:");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(runtime)?;
            let code = line.trim().to_string();
            ops::authorization::exchange(&setup.services, &destination, &started, &code, None)
                .await
                .map_err(runtime)?;
            let store = setup.open_store().await?;
            let woken = ops::authorization::authorized(&store, &Default::default(), &destination)
                .await
                .map_err(runtime)?;
            println!("{destination} is authorized; {woken} waiting jobs continue");
        }
        Command::Config(ConfigCommand::Check) => {
            let c = &setup.config;
            println!(
                "configuration OK ({})",
                c.source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "built-in defaults".into())
            );
            println!("  database   {}", c.database_path().display());
            println!(
                "  api        {}",
                if c.api.enabled {
                    format!(
                        "http://{}/api/v1{}",
                        c.api.listen,
                        // A token is always required: configured, or generated on first start.
                        match (&c.api.token, c.api.trust_loopback) {
                            (Some(_), false) => " (api.token required)".to_string(),
                            (Some(_), true) =>
                                " (api.token required; loopback trusted)".to_string(),
                            (None, trusted) => format!(
                                " (token required: {}{})",
                                c.data_dir.join(crate::http::auth::TOKEN_FILE).display(),
                                if trusted { "; loopback trusted" } else { "" }
                            ),
                        }
                    )
                } else {
                    "disabled".into()
                }
            );
            println!(
                "  queues     {}",
                c.queues
                    .iter()
                    .map(|(n, q)| format!("{n} ({})", q.concurrency))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "  kinds      {}",
                setup
                    .registry
                    .kinds()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "  schedules  {} from {}",
                setup.schedules.len(),
                c.jobs_dir.display()
            );
            for s in &setup.schedules {
                let when = serde_json::from_str::<scheduler::ScheduleSpec>(&s.spec)
                    .map(|s| s.describe())
                    .unwrap_or_default();
                println!(
                    "    {} ({}): {}{}",
                    s.name,
                    s.kind,
                    when,
                    if s.enabled { "" } else { " [disabled]" }
                );
            }
        }
        Command::Enqueue(a) => {
            let args = serde_json::from_str(&a.args)
                .map_err(|e| usage(format!("--args is not valid JSON: {e}")))?;
            let request = EnqueueRequest {
                kind: a.kind,
                args,
                idempotency_key: a.key,
                queue: a.queue,
                priority: a.priority,
                max_attempts: a.max_attempts,
                run_at: a.run_at,
            };
            let job = setup.registry.prepare(&request).map_err(|errors| {
                usage(
                    errors
                        .iter()
                        .map(|e| format!("invalid {e}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
            let store = setup.open_store().await?;
            let enqueued = store.enqueue(&job).await.map_err(runtime)?;
            let view: JobView = enqueued.job.into();
            if a.json {
                print_json(&EnqueueResponse {
                    job: view,
                    deduplicated: enqueued.deduplicated,
                });
            } else if enqueued.deduplicated {
                println!(
                    "job {} already exists with this key ({}); nothing new enqueued",
                    view.id, view.state
                );
            } else {
                println!(
                    "enqueued job {} ({}) on queue {}",
                    view.id, view.kind, view.queue
                );
            }
        }
        Command::Jobs(cmd) => {
            let store = setup.open_store().await?;
            match cmd {
                JobsCommand::List {
                    state,
                    kind,
                    queue,
                    limit,
                    json,
                } => {
                    let states = match state {
                        Some(s) => parse_states(&s, "--state")
                            .map_err(|e| usage(ApiError::from(e).problem().detail))?,
                        None => Vec::new(),
                    };
                    let jobs: Vec<JobView> = store
                        .list_jobs(
                            &JobFilter {
                                states,
                                kind,
                                queue,
                            },
                            limit.clamp(1, 10_000),
                            None,
                        )
                        .await
                        .map_err(runtime)?
                        .into_iter()
                        .map(Into::into)
                        .collect();
                    if json {
                        print_json(&jobs)
                    } else {
                        print_jobs(&jobs)
                    }
                }
                JobsCommand::Show { id, json } => {
                    let job = store
                        .job(id)
                        .await
                        .map_err(runtime)?
                        .ok_or_else(|| runtime(format!("job {id} does not exist")))?;
                    let attempts: Vec<AttemptView> = store
                        .attempts(id)
                        .await
                        .map_err(runtime)?
                        .into_iter()
                        .map(Into::into)
                        .collect();
                    let view: JobView = job.into();
                    if json {
                        print_json(&JobDetail {
                            job: view,
                            attempts,
                        });
                    } else {
                        print_job(&view, &attempts);
                    }
                }
                JobsCommand::Retry {
                    id: Some(id),
                    reset_checkpoint,
                    ..
                } => {
                    let job = store.retry(id, reset_checkpoint).await.map_err(runtime)?;
                    println!(
                        "job {} is {} again (attempt {}/{})",
                        job.id, job.state, job.attempt, job.max_attempts
                    );
                }
                JobsCommand::Retry {
                    state, kind, queue, ..
                } => {
                    let states = match state {
                        Some(s) => parse_states(&s, "--state")
                            .map_err(|e| usage(ApiError::from(e).problem().detail))?,
                        None => vec![crate::queue::JobState::Discarded],
                    };
                    let n = store
                        .retry_many(&JobFilter {
                            states,
                            kind,
                            queue,
                        })
                        .await
                        .map_err(runtime)?;
                    println!("{n} jobs made available again");
                }
                JobsCommand::Cancel { id } => {
                    let job = store.cancel(id).await.map_err(runtime)?;
                    if job.cancel_requested {
                        println!("job {id} is running; its worker was asked to stop");
                    } else {
                        println!("job {id} cancelled");
                    }
                }
                JobsCommand::Delete { id } => {
                    store.delete(id).await.map_err(runtime)?;
                    println!("job {id} deleted");
                }
            }
        }
        Command::Queues(cmd) => {
            let store = setup.open_store().await?;
            match cmd {
                QueuesCommand::List => {
                    let counts = store.counts().await.map_err(runtime)?;
                    let paused = store.queues().await.map_err(runtime)?;
                    for name in setup.config.queue_names() {
                        let is_paused = paused.iter().any(|p| p.name == name && p.paused);
                        let parts: Vec<String> = counts
                            .iter()
                            .filter(|c| c.0 == name)
                            .map(|c| format!("{} {}", c.1, c.2))
                            .collect();
                        println!(
                            "{name}{}: {}",
                            if is_paused { " [paused]" } else { "" },
                            if parts.is_empty() {
                                "empty".into()
                            } else {
                                parts.join(", ")
                            }
                        );
                    }
                }
                QueuesCommand::Pause { name } | QueuesCommand::Resume { name }
                    if !setup.config.queues.contains_key(&name) =>
                {
                    return Err(usage(format!("queue {name:?} is not configured")));
                }
                QueuesCommand::Pause { name } => {
                    store.set_paused(&name, true).await.map_err(runtime)?;
                    println!("queue {name} paused");
                }
                QueuesCommand::Resume { name } => {
                    store.set_paused(&name, false).await.map_err(runtime)?;
                    println!("queue {name} resumed");
                }
            }
        }
        Command::Schedules(cmd) => {
            let store = setup.open_store().await?;
            match cmd {
                SchedulesCommand::List { json } => {
                    let list: Vec<ScheduleInfo> = scheduler::list(&store)
                        .await
                        .map_err(runtime)?
                        .into_iter()
                        .map(Into::into)
                        .collect();
                    if json {
                        print_json(&list);
                    } else {
                        for s in &list {
                            println!(
                                "{} ({}): {}{} — last {}, next {}",
                                s.name,
                                s.kind,
                                s.when,
                                if s.enabled { "" } else { " [disabled]" },
                                short(s.last_run_at),
                                short(s.next_run_at)
                            );
                        }
                        if list.is_empty() {
                            println!(
                                "no schedules (the worker loads them from {} when it starts)",
                                setup.config.jobs_dir.display()
                            );
                        }
                    }
                }
                SchedulesCommand::Run { name } => {
                    let enq = scheduler::run_now(&store, &setup.registry, &name)
                        .await
                        .map_err(|e| match e {
                            RunNowError::NotFound(_) => usage(e.to_string()),
                            other => runtime(other),
                        })?;
                    println!(
                        "enqueued job {} for schedule {name} at {}",
                        enq.job.id,
                        to_datetime(enq.job.created_at)
                    );
                }
            }
        }
    }
    Ok(())
}
