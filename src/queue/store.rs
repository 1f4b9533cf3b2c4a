//! Every SQL statement of the queue lives here, so that another backend (PostgreSQL) can be added
//! by writing one more store.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit that returned is on disk (the WAL is
//! fsynced at every commit) and survives a power cut. Writes of this process go through a
//! single connection, so they queue in memory instead of fighting over SQLite's write lock;
//! other processes on the same file wait on `busy_timeout`. Every write transaction is
//! `BEGIN IMMEDIATE`, so it takes the write lock up front and never fails half-way with
//! `SQLITE_BUSY_SNAPSHOT`.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use sqlx::{
    Connection, Row, SqliteConnection, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::state::{AttemptOutcome, JobState, Millis, now_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// `PRAGMA application_id` of an offsite database ("OFST"), so that no command ever adds its
/// tables to another program's SQLite file.
const APPLICATION_ID: i64 = 0x4F46_5354;

/// Job args and error texts are private: the database and its WAL and shared-memory files are
/// the owner's only (SQLite gives the WAL and -shm the database file's mode).
#[cfg(unix)]
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !path.exists() {
        std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
    }
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(path, private.clone())?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::set_permissions(PathBuf::from(side), private.clone()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "database {path} is not a valid offsite database ({detail}); it was left untouched — restore it from a backup or move it aside"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path} is not an offsite database ({detail}); it was left untouched — point `database` at another file"
    )]
    Foreign { path: PathBuf, detail: String },
    #[error("database {path}: schema migration failed: {detail}")]
    Migrate { path: PathBuf, detail: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What an operator action can run into besides database trouble.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("job {0} does not exist")]
    NotFound(i64),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OpError {
    fn from(e: sqlx::Error) -> Self {
        OpError::Store(StoreError::Db(e))
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub args: Value,
    pub state: JobState,
    pub priority: i64,
    pub attempt: i64,
    pub max_attempts: i64,
    pub idempotency_key: Option<String>,
    pub created_at: Millis,
    pub scheduled_at: Millis,
    pub attempted_at: Option<Millis>,
    pub finalized_at: Option<Millis>,
    pub checkpoint: Option<Value>,
    pub progress: Option<Value>,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
}

const JOB_COLUMNS: &str = "id, kind, queue, args, state, priority, attempt, max_attempts, \
     idempotency_key, created_at, scheduled_at, attempted_at, finalized_at, checkpoint, progress, \
     last_error, cancel_requested, lease_owner, lease_expires_at";

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl JobRecord {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let state: String = row.try_get("state")?;
        let args: String = row.try_get("args")?;
        Ok(JobRecord {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            queue: row.try_get("queue")?,
            args: serde_json::from_str(&args).unwrap_or(Value::Null),
            state: JobState::from_str(&state).map_err(|e| sqlx::Error::Decode(e.into()))?,
            priority: row.try_get("priority")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            idempotency_key: row.try_get("idempotency_key")?,
            created_at: row.try_get("created_at")?,
            scheduled_at: row.try_get("scheduled_at")?,
            attempted_at: row.try_get("attempted_at")?,
            finalized_at: row.try_get("finalized_at")?,
            checkpoint: parse_json(row.try_get("checkpoint")?),
            progress: parse_json(row.try_get("progress")?),
            last_error: row.try_get("last_error")?,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
            lease_owner: row.try_get("lease_owner")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
        })
    }
}

/// One attempt of a job, as stored.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub worker: String,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// A validated job ready to be inserted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    /// Canonical JSON of the typed args.
    pub args: String,
    pub priority: i64,
    pub max_attempts: i64,
    pub scheduled_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    /// What the job waits on, for [`Store::wake_tag`] (e.g. `destination:dropbox`).
    pub tags: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Enqueued {
    pub job: JobRecord,
    /// True when a job with the same idempotency key already existed and was returned instead.
    pub deduplicated: bool,
}

/// A job handed to this process to run.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub args: String,
    pub attempt: i64,
    pub max_attempts: i64,
    pub checkpoint: Option<String>,
    pub lease_token: i64,
}

/// How a worker finished an attempt; applied only if the worker still holds the lease.
#[derive(Debug, Clone)]
pub struct Finish {
    pub job_id: i64,
    pub lease_token: i64,
    pub at: Millis,
    pub how: FinishKind,
}

#[derive(Debug, Clone)]
pub enum FinishKind {
    Completed,
    /// A counted failure; runs again at `at`.
    Retry {
        at: Millis,
        error: String,
    },
    /// Not counted: wait until `at` (Retry-After, destination awaiting authorization).
    Snooze {
        at: Millis,
        reason: String,
    },
    Discard {
        error: String,
    },
    Cancel {
        reason: String,
    },
    /// Shutdown: hand the job back without counting the attempt.
    Release,
}

/// Which jobs a listing or bulk action applies to.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
}

impl JobFilter {
    /// SQL condition and its text binds, appended after `where`.
    fn sql(&self) -> (String, Vec<String>) {
        let mut cond = vec!["1 = 1".to_string()];
        let mut binds = Vec::new();
        if let [state] = self.states.as_slice() {
            cond.push("state = ?".into());
            binds.push(state.as_str().to_string());
        } else if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
            cond.push("state in (select value from json_each(?))".into());
            binds.push(serde_json::to_string(&states).unwrap_or_default());
        }
        if let Some(kind) = &self.kind {
            cond.push("kind = ?".into());
            binds.push(kind.clone());
        }
        if let Some(queue) = &self.queue {
            cond.push("queue = ?".into());
            binds.push(queue.clone());
        }
        (cond.join(" and "), binds)
    }
}

#[derive(Debug, Clone)]
pub struct QueueRecord {
    pub name: String,
    pub paused: bool,
}

/// Ages after which finished jobs are deleted; `None` keeps them.
#[derive(Debug, Clone, Default)]
pub struct PruneAges {
    pub completed: Option<Duration>,
    pub cancelled: Option<Duration>,
    pub discarded: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ScheduleDef {
    pub name: String,
    pub kind: String,
    pub args: String,
    pub queue: Option<String>,
    pub priority: Option<i64>,
    pub max_attempts: Option<i64>,
    pub spec: String,
    pub enabled: bool,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ScheduleRecord {
    pub def: ScheduleDef,
    pub last_slot_at: Option<Millis>,
    pub last_run_at: Option<Millis>,
    pub last_job_id: Option<i64>,
    pub next_run_at: Option<Millis>,
}

#[derive(Clone, Copy)]
enum JsonColumn {
    Checkpoint,
    Progress,
}

#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// Why the last write transaction failed, until one succeeds again (a full disk).
    write_problem: Arc<Mutex<Option<String>>>,
}

/// The one write connection: its transactions are `BEGIN IMMEDIATE`.
type WriteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .pragma("temp_store", "memory")
}

/// Turns SQLite's open-time failures into a message a user can act on.
fn classify_open_error(path: &Path, err: sqlx::Error) -> StoreError {
    let text = err.to_string();
    let code = match &err {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    };
    let primary = code
        .as_deref()
        .and_then(|c| c.parse::<i64>().ok())
        .map(|c| c & 0xff);
    match primary {
        Some(11) | Some(26) => StoreError::Corrupt {
            path: path.into(),
            detail: text,
        },
        Some(8) => StoreError::Open {
            path: path.into(),
            detail: format!(
                "cannot write to it ({text}); check the file and directory permissions"
            ),
        },
        Some(14) => StoreError::Open {
            path: path.into(),
            detail: format!(
                "cannot open it ({text}); check that the directory exists and is writable"
            ),
        },
        _ => StoreError::Open {
            path: path.into(),
            detail: text,
        },
    }
}

async fn quick_check(path: &Path, pool: &SqlitePool) -> Result<(), StoreError> {
    let rows: Vec<String> = sqlx::query_scalar("pragma quick_check")
        .fetch_all(pool)
        .await
        .map_err(|e| classify_open_error(path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.into(),
            detail: rows.join("; "),
        })
    }
}

impl Store {
    /// Opens (creating if missing) and migrates the database. A file that exists but is not a
    /// healthy SQLite database is reported, never recreated.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        if path.is_dir() {
            return Err(StoreError::Open {
                path: path.into(),
                detail: "is a directory, expected a database file".into(),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::Open {
                path: path.into(),
                detail: format!("directory {} does not exist", parent.display()),
            });
        }
        // Two processes opening a new database at once (a worker and a CLI command) must not
        // both switch it to WAL and create the schema: connecting and migrating happen under
        // an exclusive lock on a file beside the database.
        let lock_path = path.with_extension("db-migrate.lock");
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| StoreError::Open {
            path: path.into(),
            detail: e.to_string(),
        })?
        .map_err(|e| StoreError::Open {
            path: path.into(),
            detail: format!("cannot lock it for set-up: {e}"),
        })?;
        if let Err(e) = make_private(path) {
            return Err(StoreError::Open {
                path: path.into(),
                detail: format!("cannot make it private to its owner: {e}"),
            });
        }
        let options = connect_options(path).create_if_missing(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // A transaction that ended in an error (SQLITE_FULL at COMMIT rolls back by itself,
            // and the driver's own ROLLBACK then fails and leaves it believing it is still in
            // one) must not poison every later write: wait for the queued rollback, and close
            // the connection if it is still inside a transaction; the pool opens a fresh one.
            .after_release(|conn, _| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(options.clone())
            .await
            .map_err(|e| classify_open_error(path, e))?;
        // Touch the schema so a file that is not a database fails here, clearly; then the same
        // structural check for every command, before anything writes to it.
        let checked = async {
            // Checked before anything (even the marking) is written to it.
            quick_check(path, &writer).await?;
            Self::claim_file(path, &writer).await?;
            if let Err(e) = Self::reclaim_space_as_it_frees(path, &writer).await {
                // It needs about the database's size in free space; try again next time.
                tracing::warn!(database = %path.display(), error = %e, "could not convert the database to return freed space; trying again at the next start");
            }
            Ok(())
        }
        .await;
        let migrated = match checked {
            Ok(()) => MIGRATOR
                .run(&writer)
                .await
                .map_err(|e| StoreError::Migrate {
                    path: path.into(),
                    detail: e.to_string(),
                }),
            Err(e) => Err(e),
        };
        drop(lock);
        migrated?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(options)
            .await
            .map_err(|e| classify_open_error(path, e))?;
        Ok(Store {
            writer,
            reader,
            path: path.into(),
            write_problem: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a kind's own tables (google_delta's sync state): the one write connection (its
    /// transactions must stay short) and the read pool.
    pub fn pools(&self) -> (&SqlitePool, &SqlitePool) {
        (&self.writer, &self.reader)
    }

    /// Why the database cannot be written right now, if it cannot (said once in the log when
    /// it starts and once when it ends).
    pub fn write_problem(&self) -> Option<String> {
        self.write_problem.lock().ok()?.clone()
    }

    /// Records that a write failed; said once until writes work again.
    fn note_failure<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(e) = &result
            && let Ok(mut problem) = self.write_problem.lock()
            && problem.is_none()
        {
            let text = e.to_string();
            tracing::error!(
                database = %self.path.display(),
                error = %text,
                "the database cannot be written; jobs wait until it can (is its disk full?)"
            );
            *problem = Some(text);
        }
        result
    }

    /// After a commit, while a write problem is recorded: a transaction that wrote nothing
    /// commits on a full disk too, so only a real write proves the problem is over.
    async fn note_success(&self) {
        if self.write_problem().is_none() {
            return;
        }
        let probe = sqlx::query(
            "insert into store_probe (id, at) values (1, ?1) \
             on conflict (id) do update set at = excluded.at",
        )
        .bind(now_ms())
        .execute(&self.writer)
        .await;
        if probe.is_ok()
            && let Ok(mut problem) = self.write_problem.lock()
            && problem.take().is_some()
        {
            tracing::info!(database = %self.path.display(), "the database can be written again");
        }
    }

    async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        let tx = self.writer.begin_with("begin immediate").await;
        self.note_failure(tx)
    }

    async fn commit(&self, tx: WriteTx) -> Result<(), sqlx::Error> {
        let done = tx.commit().await;
        let done = self.note_failure(done);
        if done.is_ok() {
            self.note_success().await;
        }
        done
    }

    /// Pruned jobs give their pages back to the file system (`auto_vacuum = incremental`, with
    /// an incremental vacuum after each prune). A database made before that is converted once.
    async fn reclaim_space_as_it_frees(path: &Path, writer: &SqlitePool) -> Result<(), StoreError> {
        let mode: i64 = sqlx::query_scalar("pragma auto_vacuum")
            .fetch_one(writer)
            .await?;
        if mode == 2 {
            return Ok(());
        }
        // The mode only takes effect through a VACUUM once the file exists (instant while it
        // is new; once for a database made before).
        sqlx::query("pragma auto_vacuum = incremental")
            .execute(writer)
            .await?;
        let tables: i64 = sqlx::query_scalar("select count(*) from sqlite_master")
            .fetch_one(writer)
            .await?;
        if tables > 0 {
            tracing::info!(database = %path.display(), "converting the database to return freed space (once)");
        }
        sqlx::query("vacuum").execute(writer).await?;
        Ok(())
    }

    /// Refuses another program's SQLite file, and marks a new (or pre-marking offsite) one.
    async fn claim_file(path: &Path, writer: &SqlitePool) -> Result<(), StoreError> {
        let id: i64 = sqlx::query_scalar("pragma application_id")
            .fetch_one(writer)
            .await
            .map_err(|e| classify_open_error(path, e))?;
        if id == APPLICATION_ID {
            return Ok(());
        }
        let foreign = |detail: String| StoreError::Foreign {
            path: path.into(),
            detail,
        };
        if id != 0 {
            return Err(foreign(format!("its application id is {id:#x}")));
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%'",
        )
        .fetch_all(writer)
        .await
        .map_err(|e| classify_open_error(path, e))?;
        // Empty (new), or made by an offsite from before the marking.
        let ours = tables.is_empty()
            || tables.iter().any(|t| t == "_sqlx_migrations") && tables.iter().any(|t| t == "jobs");
        if !ours {
            return Err(foreign(format!(
                "it holds other tables ({})",
                tables.join(", ")
            )));
        }
        sqlx::query(&format!("pragma application_id = {APPLICATION_ID}"))
            .execute(writer)
            .await?;
        Ok(())
    }

    /// Writes a consistent copy of the database to `target` (for a hot backup of the data
    /// directory); written beside it and renamed, so `target` is always whole.
    pub async fn snapshot_to(&self, target: &Path) -> Result<(), StoreError> {
        let temp = target.with_extension("snapshot-partial");
        let _ = std::fs::remove_file(&temp);
        sqlx::query("vacuum into ?")
            .bind(temp.display().to_string())
            .execute(&self.writer)
            .await?;
        std::fs::rename(&temp, target).map_err(|e| StoreError::Open {
            path: target.into(),
            detail: format!("cannot move the snapshot into place: {e}"),
        })?;
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A connection of its own, for watching `PRAGMA data_version` (which only changes when
    /// *another* connection commits).
    pub async fn watch_connection(&self) -> Result<SqliteConnection, StoreError> {
        Ok(SqliteConnection::connect_with(&connect_options(&self.path)).await?)
    }

    pub async fn data_version(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("pragma data_version")
            .fetch_one(conn)
            .await?)
    }

    // ---------------------------------------------------------------- enqueue

    async fn insert_job(
        tx: &mut SqliteConnection,
        job: &NewJob,
        now: Millis,
    ) -> Result<Enqueued, sqlx::Error> {
        let run_at = job.scheduled_at.unwrap_or(now);
        let state = if run_at > now {
            "scheduled"
        } else {
            "available"
        };
        let inserted = sqlx::query(&format!(
            "insert into jobs (kind, queue, args, state, priority, max_attempts, idempotency_key, \
             created_at, scheduled_at, tags) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             on conflict (idempotency_key) where idempotency_key is not null do nothing \
             returning {JOB_COLUMNS}"
        ))
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(&job.args)
        .bind(state)
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(&job.idempotency_key)
        .bind(now)
        .bind(run_at)
        .bind(serde_json::to_string(&job.tags).unwrap_or_else(|_| "[]".into()))
        .fetch_optional(&mut *tx)
        .await?;
        let (row, deduplicated) = match inserted {
            Some(row) => (row, false),
            None => {
                let existing = sqlx::query(&format!(
                    "select {JOB_COLUMNS} from jobs where idempotency_key = ?"
                ))
                .bind(&job.idempotency_key)
                .fetch_one(&mut *tx)
                .await?;
                (existing, true)
            }
        };
        Ok(Enqueued {
            job: JobRecord::from_row(&row)?,
            deduplicated,
        })
    }

    /// Inserts one job durably, or returns the job that already holds its idempotency key.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, StoreError> {
        Ok(self
            .enqueue_batch(std::slice::from_ref(job))
            .await?
            .remove(0))
    }

    /// Inserts many jobs in one transaction (one fsync).
    pub async fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let inserted = Self::insert_job(&mut tx, job, now).await;
            out.push(self.note_failure(inserted)?);
        }
        self.commit(tx).await?;
        Ok(out)
    }

    // ---------------------------------------------------------------- inspection

    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("select {JOB_COLUMNS} from jobs where id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|r| JobRecord::from_row(&r)).transpose()?)
    }

    pub async fn attempts(&self, job_id: i64) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query(
            "select attempt, worker, started_at, ended_at, outcome, error from job_attempts \
             where job_id = ? order by id",
        )
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(AttemptRecord {
                    attempt: row.try_get("attempt")?,
                    worker: row.try_get("worker")?,
                    started_at: row.try_get("started_at")?,
                    ended_at: row.try_get("ended_at")?,
                    outcome: AttemptOutcome::from_str(&outcome)
                        .map_err(|e| sqlx::Error::Decode(e.into()))?,
                    error: row.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Newest first; `before_id` continues a previous page.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut states = filter.states.clone();
        states.sort();
        states.dedup();
        if states.len() > 1 {
            // One walk of the (state, id) index per state, each stopping at the limit, then
            // merged: SQLite would otherwise sort every job in those states (a deep queue of
            // available jobs made the panel's refresh take ~70 ms).
            let mut out = Vec::new();
            for state in &states {
                let one = JobFilter {
                    states: vec![*state],
                    ..filter.clone()
                };
                out.extend(Box::pin(self.list_jobs(&one, limit, before_id)).await?);
            }
            out.sort_by_key(|j| std::cmp::Reverse(j.id));
            out.truncate(limit.max(0) as usize);
            return Ok(out);
        }
        let (cond, binds) = filter.sql();
        let sql = format!(
            "select {JOB_COLUMNS} from jobs where {cond} and id < ? order by id desc limit ?"
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query
            .bind(before_id.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(JobRecord::from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// How many jobs are in `state`.
    pub async fn count_in_state(&self, state: JobState) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("select count(*) from jobs where state = ?")
                .bind(state.as_str())
                .fetch_one(&self.reader)
                .await?,
        )
    }

    /// (queue, state, count) for every queue that has jobs.
    pub async fn counts(&self) -> Result<Vec<(String, JobState, i64)>, StoreError> {
        let rows =
            sqlx::query("select queue, state, count(*) as n from jobs group by queue, state")
                .fetch_all(&self.reader)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let state: String = row.try_get("state")?;
            if let Ok(state) = JobState::from_str(&state) {
                out.push((row.try_get("queue")?, state, row.try_get("n")?));
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- the worker's hot path

    /// Applies finished attempts and claims new jobs in one transaction, so one fsync serves both.
    /// Each finish is fenced by its lease token: a worker that lost its lease changes nothing.
    /// Returns the ids whose finish was applied and the claimed jobs.
    /// One write transaction for the dispatcher: marks claimed jobs a worker started as started
    /// (`starts`: id, lease token, when; the attempt counts from then), applies
    /// finished attempts, and claims more. Returns the ids started, the ids whose results
    /// were applied, and the claimed jobs.
    pub async fn finish_and_claim(
        &self,
        starts: &[(i64, i64, Millis)],
        finishes: &[Finish],
        claims: &[(String, i64)],
        owner: &str,
        lease: Duration,
    ) -> Result<(Vec<i64>, Vec<i64>, Vec<ClaimedJob>), StoreError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let written = async {
            let started = Self::start_attempts(&mut tx, starts).await?;
            let applied = Self::apply_finishes(&mut tx, finishes).await?;
            let mut claimed = Vec::new();
            for (queue, limit) in claims {
                if *limit > 0 {
                    claimed.extend(
                        Self::claim(&mut tx, queue, *limit, owner, now, now + ms(lease)).await?,
                    );
                }
            }
            Ok((started, applied, claimed))
        }
        .await;
        let written = self.note_failure(written)?;
        self.commit(tx).await?;
        Ok(written)
    }

    /// A claimed job becomes an attempt only when a worker starts it: until then it holds a
    /// lease (so nobody else takes it) but has used no attempt and has no attempt record, and
    /// a crash hands it back as it was.
    async fn start_attempts(
        tx: &mut SqliteConnection,
        starts: &[(i64, i64, Millis)],
    ) -> Result<Vec<i64>, sqlx::Error> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let triples = serde_json::to_string(starts).unwrap_or_default();
        let ids: Vec<i64> = sqlx::query_scalar(
            "update jobs set attempt = attempt + 1, attempted_at = \
                 (select json_extract(value, '$[2]') from json_each(?1) \
                  where json_extract(value, '$[0]') = jobs.id) \
             where state = 'running' and attempted_at is null and (id, lease_token) in \
                 (select json_extract(value, '$[0]'), json_extract(value, '$[1]') \
                  from json_each(?1)) \
             returning id",
        )
        .bind(&triples)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "insert into job_attempts (job_id, attempt, lease_token, worker, started_at) \
             select id, attempt, lease_token, lease_owner, attempted_at from jobs \
             where id in (select value from json_each(?))",
        )
        .bind(serde_json::to_string(&ids).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        Ok(ids)
    }

    async fn claim(
        tx: &mut SqliteConnection,
        queue: &str,
        limit: i64,
        owner: &str,
        now: Millis,
        expires: Millis,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        let rows = sqlx::query(
            "update jobs set state = 'running', attempted_at = null, \
                 lease_owner = ?2, lease_token = random(), lease_expires_at = ?3 \
             where id in (select id from jobs \
                 where queue = ?4 and state in ('available', 'scheduled', 'retryable') \
                   and scheduled_at <= ?1 \
                   and not exists (select 1 from queues where name = ?4 and paused = 1) \
                 order by priority, scheduled_at, id limit ?5) \
             returning id, kind, queue, args, attempt, max_attempts, checkpoint, lease_token, \
                 priority, scheduled_at",
        )
        .bind(now)
        .bind(owner)
        .bind(expires)
        .bind(queue)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // RETURNING follows table order; hand the jobs out in claim order.
        let mut rows = rows;
        rows.sort_by_key(|r| {
            (
                r.try_get::<i64, _>("priority").unwrap_or(0),
                r.try_get::<i64, _>("scheduled_at").unwrap_or(0),
                r.try_get::<i64, _>("id").unwrap_or(0),
            )
        });
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(ClaimedJob {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                queue: row.try_get("queue")?,
                args: row.try_get("args")?,
                // The attempt it becomes when a worker starts it.
                attempt: row.try_get::<i64, _>("attempt")? + 1,
                max_attempts: row.try_get("max_attempts")?,
                checkpoint: row.try_get("checkpoint")?,
                lease_token: row.try_get("lease_token")?,
            });
        }
        Ok(jobs)
    }

    async fn apply_finishes(
        tx: &mut SqliteConnection,
        finishes: &[Finish],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut applied = Vec::with_capacity(finishes.len());
        // The common case, done set-wise: many jobs completing at once.
        let completed: Vec<(i64, i64)> = finishes
            .iter()
            .filter(|f| matches!(f.how, FinishKind::Completed))
            .map(|f| (f.job_id, f.lease_token))
            .collect();
        if !completed.is_empty() {
            let at = finishes.iter().map(|f| f.at).max().unwrap_or_else(now_ms);
            let pairs = serde_json::to_string(&completed).unwrap_or_default();
            let ids: Vec<i64> = sqlx::query_scalar(
                "update jobs set state = 'completed', finalized_at = ?1, lease_owner = null, \
                     lease_token = null, lease_expires_at = null, cancel_requested = 0 \
                 where state = 'running' and (id, lease_token) in \
                     (select json_extract(value, '$[0]'), json_extract(value, '$[1]') \
                      from json_each(?2)) \
                 returning id",
            )
            .bind(at)
            .bind(&pairs)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "update job_attempts set ended_at = ?1, outcome = 'completed' \
                 where outcome = 'running' and (job_id, lease_token) in \
                     (select json_extract(value, '$[0]'), json_extract(value, '$[1]') \
                      from json_each(?2))",
            )
            .bind(at)
            .bind(&pairs)
            .execute(&mut *tx)
            .await?;
            applied.extend(ids);
        }
        for finish in finishes {
            let (state, scheduled_at, error, outcome, uncount) = match &finish.how {
                FinishKind::Completed => continue,
                FinishKind::Retry { at, error } => {
                    ("retryable", Some(*at), Some(error.as_str()), "retryable", 0)
                }
                FinishKind::Snooze { at, reason } => {
                    ("scheduled", Some(*at), Some(reason.as_str()), "snoozed", 1)
                }
                FinishKind::Discard { error } => {
                    ("discarded", None, Some(error.as_str()), "discarded", 0)
                }
                FinishKind::Cancel { reason } => {
                    ("cancelled", None, Some(reason.as_str()), "cancelled", 0)
                }
                // Handed back, it keeps its place in the queue: started work comes first.
                FinishKind::Release => ("available", None, None, "released", 1),
            };
            let finalized = matches!(state, "discarded" | "cancelled").then_some(finish.at);
            // Error texts are kept and shown (API, panel, Home Assistant): never a secret.
            let error = error.map(crate::redact::redact);
            let error = error.as_deref();
            // A snooze right as its tag is woken (the destination was authorized while the
            // attempt found it unauthorized) must not park the job: no window.
            let done = sqlx::query(
                "update jobs set state = ?1, \
                     scheduled_at = case when ?1 = 'scheduled' and exists (select 1 from wakes w \
                             join json_each(jobs.tags) t on w.tag = t.value \
                             where w.at >= jobs.attempted_at) \
                         then ?8 else coalesce(?2, scheduled_at) end, \
                     finalized_at = ?3, last_error = coalesce(?4, last_error), \
                     attempt = attempt - case when attempted_at is null then 0 else ?5 end, \
                     lease_owner = null, lease_token = null, \
                     lease_expires_at = null, \
                     cancel_requested = case when ?1 = 'cancelled' then 0 else cancel_requested end \
                 where id = ?6 and state = 'running' and lease_token = ?7",
            )
            .bind(state)
            .bind(scheduled_at)
            .bind(finalized)
            .bind(error)
            .bind(uncount)
            .bind(finish.job_id)
            .bind(finish.lease_token)
            .bind(finish.at)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                sqlx::query(
                    "update job_attempts set ended_at = ?1, outcome = ?2, error = ?3 \
                     where job_id = ?4 and lease_token = ?5 and outcome = 'running'",
                )
                .bind(finish.at)
                .bind(outcome)
                .bind(error)
                .bind(finish.job_id)
                .bind(finish.lease_token)
                .execute(&mut *tx)
                .await?;
                applied.push(finish.job_id);
            }
        }
        Ok(applied)
    }

    /// Writes one JSON column of a running job, fenced by its lease token; false when the
    /// caller no longer holds the lease.
    async fn fenced_json(
        &self,
        column: JsonColumn,
        job_id: i64,
        lease_token: i64,
        value: &Value,
    ) -> Result<bool, StoreError> {
        let sql = match column {
            JsonColumn::Checkpoint => {
                "update jobs set checkpoint = ? where id = ? and state = 'running' and lease_token = ?"
            }
            JsonColumn::Progress => {
                "update jobs set progress = ? where id = ? and state = 'running' and lease_token = ?"
            }
        };
        let done = sqlx::query(sql)
            .bind(value.to_string())
            .bind(job_id)
            .bind(lease_token)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Durably stores a job's checkpoint; false when the caller no longer holds the lease.
    pub async fn save_checkpoint(
        &self,
        job_id: i64,
        lease_token: i64,
        checkpoint: &Value,
    ) -> Result<bool, StoreError> {
        self.fenced_json(JsonColumn::Checkpoint, job_id, lease_token, checkpoint)
            .await
    }

    /// Stores the latest progress report (for other processes and the API to read).
    pub async fn save_progress(
        &self,
        job_id: i64,
        lease_token: i64,
        progress: &Value,
    ) -> Result<bool, StoreError> {
        self.fenced_json(JsonColumn::Progress, job_id, lease_token, progress)
            .await
    }

    /// Extends every lease this process holds.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "update jobs set lease_expires_at = ? where state = 'running' and lease_owner = ?",
        )
        .bind(now_ms() + ms(lease))
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Running jobs of this owner that an operator asked to cancel.
    pub async fn cancel_requests(&self, owner: &str) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "select id from jobs where state = 'running' and lease_owner = ? and cancel_requested = 1",
        )
        .bind(owner)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Makes jobs whose lease was lost runnable again (or discards them when that was their last
    /// attempt), recording the lost attempt. `owner = Some(me)` reclaims this instance's own
    /// orphans from before a restart regardless of expiry; `None` rescues every expired lease.
    pub async fn rescue(&self, owner: Option<&str>) -> Result<Vec<i64>, StoreError> {
        self.rescue_except(owner, &[]).await
    }

    /// Like [`Store::rescue`], leaving alone the jobs `running_here` (this process still runs
    /// them: its lease lapsed while the database could not be written, say).
    pub async fn rescue_except(
        &self,
        owner: Option<&str>,
        running_here: &[i64],
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "select id, lease_token, attempt, max_attempts, attempted_at is not null as started, \
                 cancel_requested from jobs where state = 'running' \
             and (case when ?1 is null then lease_expires_at < ?2 else lease_owner = ?1 end) \
             and id not in (select value from json_each(?3))",
        )
        .bind(owner)
        .bind(now)
        .bind(serde_json::to_string(running_here).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&mut *tx)
        .await?;
        let mut rescued = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let token: i64 = row.try_get("lease_token")?;
            let started: bool = row.try_get("started")?;
            let exhausted =
                row.try_get::<i64, _>("attempt")? >= row.try_get::<i64, _>("max_attempts")?;
            let lost = "lease lost: the worker stopped without finishing (crash, kill or hang)";
            // Cancelled while its worker was gone: it ends cancelled, and runs no further step.
            // Claimed but never started: back as it was, no attempt used. A started attempt
            // that was lost counts. Either way it keeps its place in the queue, so work that
            // was started resumes before new work starts.
            let (state, error, outcome) = if row.try_get::<bool, _>("cancel_requested")? {
                ("cancelled", Some("cancelled by operator"), "cancelled")
            } else if !started {
                ("available", None, "released")
            } else if exhausted {
                ("discarded", Some(lost), "lost")
            } else {
                ("available", Some(lost), "lost")
            };
            let finalized = (state != "available").then_some(now);
            sqlx::query(
                "update jobs set state = ?, finalized_at = ?, last_error = coalesce(?, last_error), \
                     cancel_requested = 0, lease_owner = null, lease_token = null, \
                     lease_expires_at = null \
                 where id = ? and lease_token = ?",
            )
            .bind(state)
            .bind(finalized)
            .bind(error)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "update job_attempts set ended_at = ?, outcome = ?, error = ? \
                 where job_id = ? and lease_token = ? and outcome = 'running'",
            )
            .bind(now)
            .bind(outcome)
            .bind(error)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
            rescued.push(id);
        }
        self.commit(tx).await?;
        Ok(rescued)
    }

    /// Shows due scheduled/retryable jobs as `available` (the claim query takes them either way).
    pub async fn promote_due(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "update jobs set state = 'available' \
             where state in ('scheduled', 'retryable') and scheduled_at <= ?",
        )
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Earliest run time of a waiting job in the queue, to sleep exactly until then.
    pub async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query_scalar(
            "select min(scheduled_at) from jobs \
             where queue = ? and state in ('available', 'scheduled', 'retryable')",
        )
        .bind(queue)
        .fetch_one(&self.reader)
        .await?)
    }

    /// Deletes finished jobs older than their state's age; returns how many went.
    pub async fn prune(&self, ages: &PruneAges) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut total = 0;
        for (state, age) in [
            ("completed", ages.completed),
            ("cancelled", ages.cancelled),
            ("discarded", ages.discarded),
        ] {
            let Some(age) = age else { continue };
            let done = sqlx::query("delete from jobs where state = ? and finalized_at < ?")
                .bind(state)
                .bind(now - ms(age))
                .execute(&self.writer)
                .await?;
            total += done.rows_affected();
        }
        if total > 0 {
            // Give the freed pages back, so the file tracks live data; the WAL checkpoint is
            // what moves the truncation into the database file.
            sqlx::query("pragma incremental_vacuum")
                .execute(&self.writer)
                .await?;
            sqlx::query("pragma wal_checkpoint(passive)")
                .execute(&self.writer)
                .await?;
        }
        Ok(total)
    }

    // ---------------------------------------------------------------- operator actions

    async fn job_in(tx: &mut SqliteConnection, id: i64) -> Result<JobRecord, OpError> {
        let row = sqlx::query(&format!("select {JOB_COLUMNS} from jobs where id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(OpError::NotFound(id))?;
        Ok(JobRecord::from_row(&row)?)
    }

    /// Runs a job again now: a finished one is brought back (with one more attempt if they were
    /// used up), a waiting one is moved forward. The checkpoint is kept unless `reset_checkpoint`.
    pub async fn retry(&self, id: i64, reset_checkpoint: bool) -> Result<JobRecord, OpError> {
        self.retry_in_states(id, reset_checkpoint, None).await
    }

    /// Retries the job only while it is failed (discarded or waiting to retry), checked in the
    /// same transaction: a stale page or a second click cannot re-run a job that has since
    /// succeeded.
    pub async fn retry_failed(&self, id: i64) -> Result<JobRecord, OpError> {
        self.retry_in_states(id, false, Some(&[JobState::Discarded, JobState::Retryable]))
            .await
    }

    /// Retries the job only while it is discarded (checked in the same transaction).
    pub async fn retry_discarded(&self, id: i64) -> Result<JobRecord, OpError> {
        self.retry_in_states(id, false, Some(&[JobState::Discarded]))
            .await
    }

    async fn retry_in_states(
        &self,
        id: i64,
        reset_checkpoint: bool,
        only: Option<&[JobState]>,
    ) -> Result<JobRecord, OpError> {
        let mut tx = self.begin().await?;
        let job = Self::job_in(&mut tx, id).await?;
        if let Some(only) = only
            && !only.contains(&job.state)
        {
            return Err(OpError::Conflict(format!(
                "job {id} is {} now, not failed; nothing was changed",
                job.state.as_str()
            )));
        }
        if job.state == JobState::Running {
            return Err(OpError::Conflict(format!(
                "job {id} is running; cancel it first or wait for it to finish"
            )));
        }
        sqlx::query(
            "update jobs set state = 'available', scheduled_at = ?1, finalized_at = null, \
                 max_attempts = max(max_attempts, attempt + 1), cancel_requested = 0, \
                 checkpoint = case when ?2 then null else checkpoint end \
             where id = ?3",
        )
        .bind(now_ms())
        .bind(reset_checkpoint)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let job = Self::job_in(&mut tx, id).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    /// Retries every non-running job that matches; returns the count.
    pub async fn retry_many(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        let (cond, binds) = filter.sql();
        let sql = format!(
            "update jobs set state = 'available', scheduled_at = ?, finalized_at = null, \
                 max_attempts = max(max_attempts, attempt + 1), cancel_requested = 0 \
             where state in ('completed', 'cancelled', 'discarded', 'retryable', 'scheduled') \
               and {cond}"
        );
        let mut query = sqlx::query(&sql).bind(now_ms());
        for b in &binds {
            query = query.bind(b);
        }
        Ok(query.execute(&self.writer).await?.rows_affected())
    }

    /// Cancels a waiting job at once; a running one is flagged so its worker stops it.
    pub async fn cancel(&self, id: i64) -> Result<JobRecord, OpError> {
        let mut tx = self.begin().await?;
        let job = Self::job_in(&mut tx, id).await?;
        match job.state {
            s if s.is_final() => {
                return Err(OpError::Conflict(format!("job {id} is already {s}")));
            }
            JobState::Running => {
                sqlx::query("update jobs set cancel_requested = 1 where id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {
                sqlx::query(
                    "update jobs set state = 'cancelled', finalized_at = ?, \
                         last_error = 'cancelled by operator' where id = ?",
                )
                .bind(now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        let job = Self::job_in(&mut tx, id).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    /// Deletes a job that is not running, with its attempts; its idempotency key is freed.
    pub async fn delete(&self, id: i64) -> Result<(), OpError> {
        let mut tx = self.begin().await?;
        let job = Self::job_in(&mut tx, id).await?;
        if job.state == JobState::Running {
            return Err(OpError::Conflict(format!(
                "job {id} is running; cancel it first"
            )));
        }
        sqlx::query("delete from jobs where id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn queues(&self) -> Result<Vec<QueueRecord>, StoreError> {
        let rows = sqlx::query("select name, paused from queues order by name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(QueueRecord {
                    name: r.try_get("name")?,
                    paused: r.try_get::<i64, _>("paused")? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        sqlx::query(
            "insert into queues (name, paused, updated_at) values (?1, ?2, ?3) \
             on conflict (name) do update set paused = ?2, updated_at = ?3",
        )
        .bind(queue)
        .bind(paused)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- schedules

    /// Replaces the schedule definitions with `defs`: new ones are added, changed ones updated
    /// (their next run recomputed when the spec changed), vanished ones removed.
    pub async fn sync_schedules(&self, defs: &[ScheduleDef]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        sqlx::query("delete from schedules where name not in (select value from json_each(?))")
            .bind(serde_json::to_string(&names).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        for d in defs {
            sqlx::query(
                "insert into schedules (name, kind, args, queue, priority, max_attempts, spec, \
                     enabled, source, updated_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 on conflict (name) do update set kind = ?2, args = ?3, queue = ?4, priority = ?5, \
                     max_attempts = ?6, enabled = ?8, source = ?9, updated_at = ?10, \
                     next_run_at = case when spec = ?7 then next_run_at else null end, spec = ?7",
            )
            .bind(&d.name)
            .bind(&d.kind)
            .bind(&d.args)
            .bind(&d.queue)
            .bind(d.priority)
            .bind(d.max_attempts)
            .bind(&d.spec)
            .bind(d.enabled)
            .bind(&d.source)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = sqlx::query(
            "select name, kind, args, queue, priority, max_attempts, spec, enabled, source, \
                 last_slot_at, last_run_at, last_job_id, next_run_at from schedules order by name",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleRecord {
                    def: ScheduleDef {
                        name: r.try_get("name")?,
                        kind: r.try_get("kind")?,
                        args: r.try_get("args")?,
                        queue: r.try_get("queue")?,
                        priority: r.try_get("priority")?,
                        max_attempts: r.try_get("max_attempts")?,
                        spec: r.try_get("spec")?,
                        enabled: r.try_get::<i64, _>("enabled")? != 0,
                        source: r.try_get("source")?,
                    },
                    last_slot_at: r.try_get("last_slot_at")?,
                    last_run_at: r.try_get("last_run_at")?,
                    last_job_id: r.try_get("last_job_id")?,
                    next_run_at: r.try_get("next_run_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn set_next_run(&self, name: &str, next: Option<Millis>) -> Result<(), StoreError> {
        sqlx::query("update schedules set next_run_at = ? where name = ?")
            .bind(next)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Enqueues a schedule's job and advances the schedule in one transaction. `slot` is the
    /// slot fired (None for "run now", which leaves the slot bookkeeping alone).
    pub async fn fire_schedule(
        &self,
        name: &str,
        job: &NewJob,
        slot: Option<Millis>,
        next: Option<Millis>,
    ) -> Result<Enqueued, StoreError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let enqueued = Self::insert_job(&mut tx, job, now).await?;
        sqlx::query(
            "update schedules set last_run_at = ?1, last_job_id = ?2, \
                 last_slot_at = coalesce(?3, last_slot_at), \
                 next_run_at = case when ?3 is null then next_run_at else ?4 end \
             where name = ?5",
        )
        .bind(now)
        .bind(enqueued.job.id)
        .bind(slot)
        .bind(next)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(enqueued)
    }
}

/// One backup stored on one destination.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UploadRecord {
    pub id: i64,
    pub destination: String,
    pub source: String,
    pub backup_slug: String,
    pub backup_name: String,
    pub backup_date: chrono::DateTime<chrono::Utc>,
    pub size: i64,
    pub remote_path: String,
    /// The destination's own hash of the stored copy, in its own notation.
    pub content_hash: Option<String>,
    /// SHA-256 (hex) of the bytes read from the source; none for uploads recorded before
    /// offsite kept it.
    #[serde(default)]
    pub sha256: Option<String>,
    pub job_id: Option<i64>,
    pub uploaded_at: chrono::DateTime<chrono::Utc>,
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn upload_from_row(r: &SqliteRow) -> Result<UploadRecord, sqlx::Error> {
    use super::state::to_datetime;
    Ok(UploadRecord {
        id: r.try_get("id")?,
        destination: r.try_get("destination")?,
        source: r.try_get("source")?,
        backup_slug: r.try_get("backup_slug")?,
        backup_name: r.try_get("backup_name")?,
        backup_date: to_datetime(r.try_get("backup_date")?),
        size: r.try_get("size")?,
        remote_path: r.try_get("remote_path")?,
        content_hash: r.try_get("content_hash")?,
        sha256: r.try_get("sha256")?,
        job_id: r.try_get("job_id")?,
        uploaded_at: to_datetime(r.try_get("uploaded_at")?),
        deleted_at: r.try_get::<Option<i64>, _>("deleted_at")?.map(to_datetime),
    })
}

impl Store {
    /// Records a finished upload (a replay overwrites the record of the same backup).
    pub async fn record_upload(&self, u: &UploadRecord) -> Result<(), StoreError> {
        sqlx::query(
            "insert into uploads (destination, source, backup_slug, backup_name, backup_date, size, \
                 remote_path, content_hash, job_id, uploaded_at, sha256) \
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             on conflict (destination, backup_slug) do update set source = ?2, backup_name = ?4, \
                 backup_date = ?5, size = ?6, remote_path = ?7, content_hash = ?8, job_id = ?9, \
                 uploaded_at = ?10, sha256 = ?11, deleted_at = null, deleted_by_job = null",
        )
        .bind(&u.destination)
        .bind(&u.source)
        .bind(&u.backup_slug)
        .bind(&u.backup_name)
        .bind(u.backup_date.timestamp_millis())
        .bind(u.size)
        .bind(&u.remote_path)
        .bind(&u.content_hash)
        .bind(u.job_id)
        .bind(u.uploaded_at.timestamp_millis())
        .bind(&u.sha256)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Uploads, newest backup first; `include_deleted` adds the ones retention removed.
    pub async fn uploads(
        &self,
        destination: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        let rows = sqlx::query(
            "select * from uploads where (?1 is null or destination = ?1) \
                 and (?2 or deleted_at is null) order by backup_date desc, id desc",
        )
        .bind(destination)
        .bind(include_deleted)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(upload_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    pub async fn mark_upload_deleted(&self, id: i64, job_id: i64) -> Result<(), StoreError> {
        sqlx::query("update uploads set deleted_at = ?, deleted_by_job = ? where id = ?")
            .bind(now_ms())
            .bind(job_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The checkpoints of jobs of `kind`: of unfinished ones (`finished` false) or of those
    /// that ended cancelled or discarded (`finished` true).
    pub async fn checkpoints(&self, kind: &str, finished: bool) -> Result<Vec<Value>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "select checkpoint from jobs where kind = ?1 and checkpoint is not null and \
             case when ?2 then state in ('cancelled', 'discarded') else finalized_at is null end",
        )
        .bind(kind)
        .bind(finished)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r).ok())
            .collect())
    }

    /// Wakes the waiting (snoozed or retrying) jobs tagged `tag`, e.g. `destination:dropbox`
    /// after it was authorized, and remembers the wake so that an attempt running right now
    /// that snoozes on the same tag is not parked either.
    pub async fn wake_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        sqlx::query(
            "insert into wakes (tag, at) values (?1, ?2) on conflict (tag) do update set at = ?2",
        )
        .bind(tag)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "update jobs set state = 'available', scheduled_at = ?1 \
             where state in ('scheduled', 'retryable') \
               and exists (select 1 from json_each(jobs.tags) where value = ?2)",
        )
        .bind(now)
        .bind(tag)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(done.rows_affected())
    }
}

impl Store {
    /// The most recently finished job of `kind` (completed, cancelled or discarded).
    pub async fn last_finished(&self, kind: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!(
            "select {JOB_COLUMNS} from jobs where kind = ? and finalized_at is not null \
             order by finalized_at desc, id desc limit 1"
        );
        let row = sqlx::query(&sql)
            .bind(kind)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(JobRecord::from_row).transpose()?)
    }

    /// Home Assistant notifications offsite raised and has not dismissed: id → fingerprint.
    pub async fn ha_notifications(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let rows = sqlx::query("select notification_id, fingerprint from ha_notifications")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("notification_id")?, r.try_get("fingerprint")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Remembers a raised notification (`Some(fingerprint)`) or forgets a dismissed one.
    pub async fn set_ha_notification(
        &self,
        id: &str,
        fingerprint: Option<&str>,
    ) -> Result<(), StoreError> {
        match fingerprint {
            Some(fp) => {
                sqlx::query(
                    "insert into ha_notifications (notification_id, fingerprint, created_at) \
                     values (?1, ?2, ?3) on conflict (notification_id) do update set fingerprint = ?2",
                )
                .bind(id)
                .bind(fp)
                .bind(now_ms())
                .execute(&self.writer)
                .await?
            }
            None => {
                sqlx::query("delete from ha_notifications where notification_id = ?")
                    .bind(id)
                    .execute(&self.writer)
                    .await?
            }
        };
        Ok(())
    }
}
