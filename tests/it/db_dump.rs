//! db_dump against a real PostgreSQL 15 (tests/support/postgres.rs): a scheduled slot dumps to
//! a real mount, the dump restores to equal data, is uploaded and removed; the external path's
//! checks fail fast without an upload; pg_dump missing, too old or dying midway; upload
//! failures until the retries are spent; wrong credentials; the outcome lines in both log
//! formats and on syslog; the schedule across daylight saving and a restart; the FR's
//! environment variables; to the SharePoint destination (the Microsoft Graph fake) through
//! the real binary, configured by the environment alone, and killed with `kill -9`
//! mid-upload.

use std::{
    io::Write,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use chrono::{TimeZone, Utc};
use offsite::{
    config::{Config, LogConfig, LogFormat},
    jobs::db_dump::DatabaseConfig,
    queue::{
        EnqueueRequest, JobState,
        executor::Executor,
        scheduler::{ScheduleSpec, Scheduler},
        state::now_ms,
        store::{JobFilter, JobRecord},
    },
    redact::RedactingWriter,
};
use serde_json::{Value, json};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::{
    cli::bin,
    common::{Harness, registry, test_config, wait_for},
    snapshots::folder_dest,
    support::postgres::Postgres,
    trust::{Tmpfs, may_mount},
};

// ------------------------------------------------------------------ helpers

/// The log lines of this test (its thread: `#[tokio::test]` runs the worker on it), written
/// by the production formatter through the production redaction.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

struct LineWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = RedactingWriter<LineWriter>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(LineWriter(self.0.clone()))
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// The JSON lines of the backup component.
    fn backup_json(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["component"] == "Backup")
            .collect()
    }
    fn outcome_json(&self, outcome: &str) -> Value {
        self.backup_json()
            .into_iter()
            .find(|v| v["fields"]["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line in:\n{}", self.text()))
    }
}

fn capture(format: LogFormat, syslog: Option<&Path>) -> (Lines, tracing::subscriber::DefaultGuard) {
    let lines = Lines::default();
    let config = LogConfig {
        format,
        syslog: syslog.is_some(),
        syslog_socket: syslog.map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    };
    let sub = offsite::logging::subscriber(&config, EnvFilter::new("info"), lines.clone(), false);
    (lines, tracing::subscriber::set_default(sub))
}

/// A database with a few tables, types and rows.
const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE customers (
  id serial PRIMARY KEY,
  name text NOT NULL,
  email text UNIQUE,
  balance numeric(12,2) DEFAULT 0,
  joined timestamptz NOT NULL,
  active boolean NOT NULL,
  tags text[],
  profile jsonb,
  avatar bytea,
  feeling mood
);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  customer int REFERENCES customers(id),
  placed date NOT NULL,
  total double precision,
  note text
);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
INSERT INTO customers (name, email, balance, joined, active, tags, profile, avatar, feeling) VALUES
  ('Ada Lovelace', 'ada@example.org', 1234.56, '2026-01-08 10:00:00+01', true, '{a,b}', '{"vip": true, "n": [1,2]}', '\xdeadbeef', 'happy'),
  ('Bob "Tables"; DROP', NULL, -3.10, '2025-12-31 23:59:59+00', false, '{}', NULL, NULL, 'sad'),
  ('Zoë Ünïcødé 🎉', 'zoe@example.org', 0, '2026-03-29 02:30:00+02', true, NULL, '{"tab": "a\tb", "nl": "x\ny"}', '\x00ff', NULL);
INSERT INTO orders (customer, placed, total, note)
  SELECT 1 + (i % 3), DATE '2026-01-01' + i, i * 1.5, 'order ' || i FROM generate_series(1, 500) i;
"#;

/// What must come back equal after the restore.
const CHECK: &str = "SELECT row_to_json(c)::text FROM customers c ORDER BY id; \
     SELECT count(*), sum(total), max(note) FROM orders; SELECT count(*) FROM big_orders; \
     SELECT last_value FROM orders_id_seq; SELECT enum_range(NULL::mood)::text;";

fn database(pg: &Postgres, db: &str, external: &Path, extra: &str) -> DatabaseConfig {
    toml::from_str(&format!(
        "{}days = [\"Mon\", \"Wed\", \"Fri\"]\ntime = \"02:15\"\ntimezone = \"Europe/Berlin\"\n\
         external_path = \"{}\"\ndestination = \"nas\"\nretries = 0\n{extra}",
        pg.connection_toml(db),
        external.display()
    ))
    .unwrap()
}

fn config_with(dir: &Path, dest: &Path, name: &str, db: DatabaseConfig) -> Config {
    let mut c = test_config(dir);
    c.destinations.insert("nas".into(), folder_dest(dest, 0));
    c.databases.insert(name.into(), db);
    c
}

async fn run_dump(h: &Harness, name: &str) -> JobRecord {
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "db_dump".into(),
            args: json!({ "database": name }),
            max_attempts: h.running().state.config.databases[name]
                .retries
                .checked_add(1)
                .map(i64::from),
            ..Default::default()
        })
        .await;
    wait_for(h.store(), job.id, |j| {
        matches!(
            j.state,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    })
    .await
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_outcome_fields(line: &Value, file_prefix: &str) {
    let f = &line["fields"];
    assert_eq!(f["user"], "*system", "{line}");
    assert_eq!(f["component"], "Backup", "{line}");
    let file = f["file"].as_str().unwrap();
    assert!(
        file.starts_with(file_prefix) && file.ends_with(".sql"),
        "{line}"
    );
    assert!(f["duration"].as_str().unwrap().ends_with('s'), "{line}");
    assert!(f["size"].is_string(), "{line}");
}

// ------------------------------------------------------------------ the whole flow

#[tokio::test]
async fn db_dump_a_scheduled_slot_dumps_to_the_mount_restores_equal_uploads_and_removes_it() {
    if !may_mount() {
        return;
    }
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql("shop", SCHEMA);

    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    let _drive = Tmpfs::mount(&external, "64m").unwrap();
    let dest = dir.path().join("sharepoint-stand-in");
    let syslog_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_nonblocking(true).unwrap();
    let (lines, _guard) = capture(LogFormat::Json, Some(&syslog_path));

    let config = config_with(
        dir.path(),
        &dest,
        "shop",
        database(&pg, "shop", &external, ""),
    );
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;

    // The slot comes due: the scheduler (as it ticks) enqueues the slot's job.
    let state = &h.running().state;
    let schedule = h
        .store()
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.def.name == "db_dump.shop")
        .expect("the database's schedule");
    assert!(
        schedule.def.spec.contains("\"weekly\""),
        "{}",
        schedule.def.spec
    );
    let sched = Scheduler {
        store: state.store.clone(),
        registry: state.registry.clone(),
        executor: state.executor.clone(),
    };
    sched.tick().await.unwrap();
    h.store()
        .set_next_run("db_dump.shop", Some(now_ms() - 1_000))
        .await
        .unwrap();
    sched.tick().await.unwrap();
    let jobs = h
        .store()
        .list_jobs(&JobFilter::default(), 10, None)
        .await
        .unwrap();
    let job = jobs
        .iter()
        .find(|j| j.kind == "db_dump")
        .expect("the slot enqueued a dump");
    assert!(
        job.idempotency_key
            .as_deref()
            .unwrap()
            .starts_with("schedule:db_dump.shop:")
    );
    assert_eq!(job.max_attempts, 1, "retries = 0");
    let job = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(job.state, JobState::Completed);

    // Uploaded under {database}_{YYYY-MM-DD_HH-mm}.sql; nothing left on the drive.
    let uploaded = files_in(&dest);
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    let name = &uploaded[0];
    let re = regex::Regex::new(r"^shop_\d{4}-\d\d-\d\d_\d\d-\d\d\.sql$").unwrap();
    assert!(re.is_match(name), "{name}");
    assert_eq!(
        files_in(&external),
        Vec::<String>::new(),
        "the local dump is removed"
    );

    // A plain SQL dump that restores into a fresh database with equal data.
    let text = std::fs::read_to_string(dest.join(name)).unwrap();
    assert!(text.contains("PostgreSQL database dump"), "plain format");
    pg.sql("postgres", "CREATE DATABASE restored");
    pg.restore("restored", &dest.join(name));
    assert_eq!(pg.sql("restored", CHECK), pg.sql("shop", CHECK));
    assert!(pg.sql("shop", CHECK).contains("Zoë Ünïcødé 🎉"));

    // The outcome lines: dumped, uploaded, with the required fields, no password anywhere.
    let dumped = lines.outcome_json("dumped");
    assert_outcome_fields(&dumped, "shop_");
    let up = lines.outcome_json("upload_succeeded");
    assert_outcome_fields(&up, "shop_");
    assert_eq!(up["fields"]["file"].as_str(), Some(name.as_str()));
    let size = std::fs::metadata(dest.join(name)).unwrap().len();
    assert_eq!(
        up["fields"]["size"].as_str(),
        Some(size.to_string().as_str())
    );
    assert_eq!(up["level"], "INFO");
    assert!(
        !lines.text().contains(&pg.password),
        "the password is never logged"
    );

    // Home Assistant's sensor of the last dump.
    let sensors = offsite::homeassistant::wanted_sensors(
        h.store(),
        &state.services,
        &state.registry,
        &state.config,
        "offsite",
    )
    .await
    .unwrap();
    let dump = sensors
        .iter()
        .find(|s| s.entity_id == "sensor.offsite_last_database_dump")
        .expect("the dump sensor");
    assert_eq!(dump.state, "success");
    assert_eq!(dump.attributes["file"].as_str(), Some(name.as_str()));
    assert_eq!(dump.attributes["bytes"].as_u64(), Some(size));
    assert!(
        dump.attributes["next_run"].is_string(),
        "{:?}",
        dump.attributes
    );

    // The panel lists the dump: result, file, where, and Dump now.
    let page = reqwest::get(format!("{}/", h.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let section = page
        .split("<section id=dumps data-live>")
        .nth(1)
        .expect("a database dumps section")
        .split("</section>")
        .next()
        .unwrap();
    for want in [
        "shop",
        "success",
        name.as_str(),
        "/panel/dumps/shop/run",
        "Dump now",
        "→ nas",
    ] {
        assert!(section.contains(want), "{want} in {section}");
    }

    // And on syslog, RFC 5424.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = syslog.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let line = got
        .iter()
        .find(|l| l.contains("outcome=\"upload_succeeded\""))
        .unwrap_or_else(|| panic!("no upload line on syslog: {got:?}"));
    let re = regex::Regex::new(
        r#"^<30>1 \S+Z \S+ offsite \d+ backup \[offsite@32473 user="\*system" component="Backup" outcome="upload_succeeded" database="shop" file="shop_[^"]+\.sql" size="\d+" duration="[0-9.]+s"\] backup uploaded$"#,
    )
    .unwrap();
    assert!(re.is_match(line), "{line}");
}

// ------------------------------------------------------------------ fail fast

#[tokio::test]
async fn db_dump_external_path_missing_read_only_or_not_a_mount_fails_fast_without_upload() {
    if !may_mount() {
        return;
    }
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let (lines, _guard) = capture(LogFormat::Human, None);

    let missing = dir.path().join("unplugged");
    let plain = dir.path().join("plain-dir");
    std::fs::create_dir_all(&plain).unwrap();
    let ro = dir.path().join("ro-drive");
    let _ro_mount = Tmpfs::mount(&ro, "8m").unwrap();
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount read-only");

    let mut config = test_config(dir.path());
    config
        .destinations
        .insert("nas".into(), folder_dest(&dest, 0));
    for (name, path) in [("missing", &missing), ("plain", &plain), ("ro", &ro)] {
        config
            .databases
            .insert(name.into(), database(&pg, "postgres", path, ""));
    }
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let before: Vec<String> = files_in(dir.path());

    for (name, why) in [
        ("missing", "is missing (is the drive attached and mounted?)"),
        ("plain", "is not a mount point"),
        ("ro", "is not writable"),
    ] {
        let job = run_dump(&h, name).await;
        assert_eq!(job.state, JobState::Discarded, "{name}");
        let text = lines.text();
        let line = text
            .lines()
            .find(|l| {
                l.contains("outcome=\"dump_failed\"") && l.contains(&format!("database=\"{name}\""))
            })
            .unwrap_or_else(|| panic!("no dump_failed line for {name}:\n{text}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("user=\"*system\"") && line.contains("component=\"Backup\""),
            "{line}"
        );
        assert!(line.contains(why), "{name}: {line}");
        assert!(line.contains("duration="), "{line}");
        assert!(!text.contains("upload_"), "no upload attempt: {text}");
    }
    assert!(!missing.exists(), "the missing path was not created");
    assert_eq!(files_in(&plain), Vec::<String>::new());
    assert_eq!(files_in(&ro), Vec::<String>::new());
    assert_eq!(files_in(&dest), Vec::<String>::new(), "nothing uploaded");
    assert_eq!(files_in(dir.path()), before, "nothing written elsewhere");
    assert!(!lines.text().contains(&pg.password));
}

// ------------------------------------------------------------------ pg_dump

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[tokio::test]
async fn db_dump_pg_dump_missing_too_old_or_dying_midway_is_a_clear_error_and_leaves_no_file() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let (lines, _guard) = capture(LogFormat::Json, None);

    let old = script(
        &dir.path().join("old"),
        "pg_dump",
        "echo 'pg_dump (PostgreSQL) 9.6.0'",
    );
    let dying = script(
        &dir.path().join("dying"),
        "pg_dump",
        "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.4'; exit 0; fi\n\
         echo 'CREATE TABLE half (id int);'\necho 'could not read block' >&2\nkill -9 $$",
    );
    let failing = script(
        &dir.path().join("failing"),
        "pg_dump",
        "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.4'; exit 0; fi\n\
         echo 'CREATE TABLE half (id int);'\necho 'pg_dump: error: query failed' >&2\nexit 1",
    );
    let mut config = test_config(dir.path());
    config
        .destinations
        .insert("nas".into(), folder_dest(&dest, 0));
    let cases = [
        (
            "nopgdump",
            "/nonexistent/bin/pg_dump".into(),
            "pg_dump not found at /nonexistent/bin/pg_dump (databases.nopgdump.pg_dump)"
                .to_string(),
        ),
        (
            "old",
            old.clone(),
            format!(
                "pg_dump 9.6 ({}) is older than the server (PostgreSQL 15): pg_dump must be version 15 or newer",
                old.display()
            ),
        ),
        ("dying", dying, "pg_dump failed".into()),
        ("failing", failing, "pg_dump failed".into()),
    ];
    for (name, bin, _) in &cases {
        let extra = format!("require_mount = false\npg_dump = \"{}\"\n", bin.display());
        config
            .databases
            .insert((*name).into(), database(&pg, "postgres", &external, &extra));
    }
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    for (name, _, message) in &cases {
        let job = run_dump(&h, name).await;
        assert_eq!(job.state, JobState::Discarded, "{name}");
        let line = lines
            .backup_json()
            .into_iter()
            .find(|l| l["fields"]["outcome"] == "dump_failed" && l["fields"]["database"] == *name)
            .unwrap_or_else(|| panic!("no dump_failed for {name}:\n{}", lines.text()));
        assert_eq!(
            line["fields"]["error"].as_str(),
            Some(message.as_str()),
            "{line}"
        );
        assert_eq!(line["level"], "ERROR");
        assert_eq!(
            files_in(&external),
            Vec::<String>::new(),
            "{name}: no file, no partial"
        );
    }
    let cause = |name: &str| {
        lines
            .backup_json()
            .into_iter()
            .find(|l| l["fields"]["outcome"] == "dump_failed" && l["fields"]["database"] == name)
            .unwrap()["fields"]["cause"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(cause("dying"), "pg_dump was killed: could not read block");
    assert_eq!(
        cause("failing"),
        "pg_dump exited with status 1: pg_dump: error: query failed"
    );
    assert_eq!(files_in(&dest), Vec::<String>::new());
}

// ------------------------------------------------------------------ credentials

#[tokio::test]
async fn db_dump_wrong_credentials_are_a_clear_error_without_the_secret() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let (lines, _guard) = capture(LogFormat::Json, None);
    let mut config = test_config(dir.path());
    config
        .destinations
        .insert("nas".into(), folder_dest(&dir.path().join("dest"), 0));
    let wrong = "Wr0ng-and-secret-passw0rd";
    let mut db = database(&pg, "postgres", &external, "require_mount = false\n");
    db.password = Some(offsite::config::Secret::new(wrong));
    config.databases.insert("app".into(), db);
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let job = run_dump(&h, "app").await;
    assert_eq!(job.state, JobState::Discarded);
    let line = lines.outcome_json("dump_failed");
    assert_eq!(line["fields"]["error"], "cannot connect to the database");
    let cause = line["fields"]["cause"].as_str().unwrap();
    assert!(
        cause.contains("password authentication failed for user \"postgres\""),
        "{cause}"
    );
    assert!(!lines.text().contains(wrong), "no secret in any log line");
    let stored = format!("{job:?}");
    assert!(!stored.contains(wrong));
    assert_eq!(files_in(&external), Vec::<String>::new());
}

// ------------------------------------------------------------------ upload failures

#[tokio::test]
async fn db_dump_upload_failing_until_retries_are_spent_removes_the_file_and_logs_it() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let blocker = dir.path().join("not-a-dir");
    let (lines, _guard) = capture(LogFormat::Json, None);
    let mut config = test_config(dir.path());
    config
        .destinations
        .insert("nas".into(), folder_dest(&blocker, 0));
    config.engine.backoff_cap = std::time::Duration::from_millis(500);
    config.databases.insert(
        "app".into(),
        database(&pg, "postgres", &external, "require_mount = false\n"),
    );
    config.databases.get_mut("app").unwrap().retries = 1;
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    // The destination's folder, once the worker started, becomes a regular file: every
    // upload fails.
    std::fs::remove_dir_all(&blocker).unwrap();
    std::fs::write(&blocker, b"x").unwrap();
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "db_dump".into(),
            args: json!({ "database": "app" }),
            max_attempts: Some(2),
            ..Default::default()
        })
        .await;
    // After the first failed attempt the dump stays: it is what the retry uploads.
    let first = wait_for(h.store(), job.id, |j| j.state == JobState::Retryable).await;
    assert_eq!(first.attempt, 1);
    let kept = files_in(&external);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let retry = lines.outcome_json("upload_failed_will_retry");
    assert_eq!(retry["level"], "WARN");

    let last = wait_for(h.store(), job.id, |j| j.state == JobState::Discarded).await;
    assert_eq!(last.attempt, 2);
    assert_eq!(
        files_in(&external),
        Vec::<String>::new(),
        "removed after the final failure"
    );
    let failed = lines.outcome_json("upload_failed");
    assert_outcome_fields(&failed, "postgres_");
    assert_eq!(failed["fields"]["file"].as_str(), Some(kept[0].as_str()));
    assert_eq!(failed["level"], "ERROR");
    assert!(
        !failed["fields"]["error"].as_str().unwrap().is_empty(),
        "{failed}"
    );
    assert!(
        format!(
            "{}: {}",
            failed["fields"]["error"], failed["fields"]["cause"]
        )
        .contains("not-a-dir"),
        "the error and its causes: {failed}"
    );
    assert_eq!(
        lines
            .backup_json()
            .iter()
            .filter(|l| l["fields"]["outcome"] == "dumped")
            .count(),
        1,
        "the retry uploads the same dump, it does not dump again"
    );
}

// ------------------------------------------------------------------ schedule

#[tokio::test]
async fn db_dump_schedule_follows_berlin_across_daylight_saving_and_a_restart_does_not_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let db: DatabaseConfig = toml::from_str(
        "database = \"app\"\ndays = [\"Sun\", \"Wed\"]\ntime = \"02:30\"\ntimezone = \"Europe/Berlin\"\n\
         external_path = \"/media/backup\"\ndestination = \"nas\"\n",
    )
    .unwrap();
    let config = config_with(dir.path(), &dir.path().join("dest"), "app", db.clone());
    let (reg, _) = registry(&config);
    let def = offsite::jobs::db_dump::schedule("app", &db, &reg, &config).unwrap();
    assert_eq!(def.name, "db_dump.app");
    assert_eq!(def.max_attempts, Some(6), "5 retries by default");
    let spec: ScheduleSpec = serde_json::from_str(&def.spec).unwrap();
    let utc = |y, m, d, h, mi| Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap();
    // Sunday 29 March 2026 02:30 does not exist in Berlin (02:00 → 03:00): the hour after.
    assert_eq!(
        spec.next_after(utc(2026, 3, 28, 12, 0)),
        Some(utc(2026, 3, 29, 1, 30))
    );
    // Then Wednesday 1 April at 02:30 CEST.
    assert_eq!(
        spec.next_after(utc(2026, 3, 29, 1, 30)),
        Some(utc(2026, 4, 1, 0, 30))
    );
    // Sunday 25 October 2026 02:30 happens twice (03:00 → 02:00): once, the first time.
    assert_eq!(
        spec.next_after(utc(2026, 10, 24, 12, 0)),
        Some(utc(2026, 10, 25, 0, 30))
    );
    assert_eq!(
        spec.next_after(utc(2026, 10, 25, 0, 30)),
        Some(utc(2026, 10, 28, 1, 30))
    );

    // Fired once; a restart on the same database does not fire the slot again; a slot missed
    // while offsite was down is not backfilled.
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let open = || async {
        let store = offsite::queue::Store::open(&config.database_path())
            .await
            .unwrap();
        store
            .sync_schedules(std::slice::from_ref(&def))
            .await
            .unwrap();
        let (reg, _) = registry(&config);
        let reg = Arc::new(reg);
        let executor = Executor::new(
            store.clone(),
            reg.clone(),
            "t".into(),
            Default::default(),
            vec![],
            Default::default(),
        );
        Scheduler {
            store,
            registry: reg,
            executor,
        }
    };
    let s = open().await;
    s.tick().await.unwrap();
    let slot = now_ms() - 5_000;
    s.store
        .set_next_run("db_dump.app", Some(slot))
        .await
        .unwrap();
    s.tick().await.unwrap();
    let jobs = s
        .store
        .list_jobs(&JobFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, "db_dump");
    assert_eq!(jobs[0].max_attempts, 6);
    let next = s.store.schedules().await.unwrap()[0].next_run_at.unwrap();
    assert!(next > now_ms());

    let s = open().await; // the restart
    s.store
        .set_next_run("db_dump.app", Some(slot))
        .await
        .unwrap();
    s.tick().await.unwrap();
    assert_eq!(
        s.store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        1,
        "slot enqueued twice"
    );

    s.store
        .set_next_run("db_dump.app", Some(now_ms() - 2 * 3_600_000))
        .await
        .unwrap();
    s.tick().await.unwrap();
    assert_eq!(
        s.store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        1,
        "backfilled"
    );
    assert!(s.store.schedules().await.unwrap()[0].next_run_at.unwrap() > now_ms());
}

// ------------------------------------------------------------------ the FR's variables

#[test]
fn db_dump_backup_env_configures_a_database_and_bad_values_stop_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::cli::write_config(
        dir.path(),
        &format!(
            "[destinations.nas]\ntype = \"folder\"\npath = \"{}/dest\"\n",
            dir.path().display()
        ),
    );
    let run = |vars: &[(&str, &str)]| {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&cfg)
            .args(["config", "check"])
            .env_remove("RUST_LOG");
        for (k, v) in [
            ("BACKUP_SCHEDULE_DAYS", "Mon,Wed,Fri"),
            ("BACKUP_SCHEDULE_TIME", "02:15"),
            ("BACKUP_TIMEZONE", "Europe/Berlin"),
            ("BACKUP_EXTERNAL_PATH", "/media/backup"),
            ("BACKUP_DESTINATION", "nas"),
        ] {
            c.env(k, v);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ok = run(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out =
        String::from_utf8_lossy(&ok.stdout).into_owned() + &String::from_utf8_lossy(&ok.stderr);
    assert!(out.contains("db_dump.backup"), "{out}");

    for (var, value, says) in [
        ("BACKUP_SCHEDULE_TIME", "02:10", "not on a quarter hour"),
        (
            "BACKUP_SCHEDULE_DAYS",
            "Mon,Someday",
            "unknown weekday \"Someday\"",
        ),
        (
            "BACKUP_EXTERNAL_PATH",
            "media/backup",
            "not an absolute path",
        ),
        ("BACKUP_TIMEZONE", "Europe/Atlantis", "unknown time zone"),
    ] {
        let o = run(&[(var, value)]);
        assert_eq!(o.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one message: {err}");
        assert!(
            lines[0].contains(&format!("`{var}`")) && lines[0].contains(says),
            "{err}"
        );
    }
}

// ------------------------------------------------------------------ keep_last_local

#[tokio::test]
async fn db_dump_keep_last_local_keeps_only_the_last_uploaded_dump() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    // A dump of this database from an earlier day, and someone else's file.
    std::fs::write(external.join("postgres_2026-01-05_02-15.sql"), b"-- old").unwrap();
    std::fs::write(external.join("notes.txt"), b"mine").unwrap();
    let dest = dir.path().join("dest");
    let (_lines, _guard) = capture(LogFormat::Json, None);
    let config = config_with(
        dir.path(),
        &dest,
        "app",
        database(
            &pg,
            "postgres",
            &external,
            "require_mount = false\nkeep_last_local = true\n",
        ),
    );
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    // A dump another job still has to upload (it waits for its retry): not an older one to
    // throw away.
    let owed = "postgres_2026-01-06_02-15.sql";
    std::fs::write(external.join(owed), b"-- still to upload").unwrap();
    let waiting = h
        .store()
        .enqueue(&offsite::queue::store::NewJob {
            kind: "db_dump".into(),
            queue: "uploads".into(),
            args: r#"{"database":"app"}"#.into(),
            priority: 2,
            max_attempts: 6,
            scheduled_at: Some(now_ms() + 3_600_000),
            idempotency_key: None,
            tags: vec![],
        })
        .await
        .unwrap()
        .job;
    let mut db = crate::trust::raw(&h.running().state.config.database_path()).await;
    sqlx::query("update jobs set checkpoint = ?1 where id = ?2")
        .bind(format!(r#"{{"dump":"{owed}"}}"#))
        .bind(waiting.id)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(run_dump(&h, "app").await.state, JobState::Completed);
    let uploaded = files_in(&dest);
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    let mut want = vec![
        ".offsite-keep.app".to_string(),
        "notes.txt".to_string(),
        owed.to_string(),
        uploaded[0].clone(),
    ];
    want.sort();
    assert_eq!(
        files_in(&external),
        want,
        "the last one stays, the older one goes"
    );
    assert_eq!(
        std::fs::read(external.join(&uploaded[0])).unwrap(),
        std::fs::read(dest.join(&uploaded[0])).unwrap()
    );
}

// ------------------------------------------------------------------ to SharePoint

/// A table that makes the dump a few MiB.
const FILLER: &str = "CREATE TABLE filler AS SELECT i, md5(i::text) AS h, \
     repeat(md5((i * 7)::text), 6) AS pad FROM generate_series(1, 30000) i;";

/// What `pg_dump --format=plain` of `db` writes, run here with PostgreSQL 15's own pg_dump
/// (the one offsite picks for a 15 server): the dump offsite must have stored, byte for byte
/// but for the random key of its `\restrict` / `\unrestrict` lines (pg_dump 15.14 and later
/// draw a new one each run).
fn own_dump(pg: &Postgres, db: &str) -> Vec<u8> {
    let out = Command::new(Postgres::bin().join("pg_dump"))
        .args(["--format=plain", "--no-password", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "-d", db])
        .env("PGPASSWORD", &pg.password)
        .env_remove("PGPASSFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `dump` with the key of its `\restrict` / `\unrestrict` lines blanked.
fn without_restrict_keys(dump: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dump.len());
    for line in dump.split_inclusive(|b| *b == b'\n') {
        match [&b"\\restrict "[..], &b"\\unrestrict "[..]]
            .into_iter()
            .find(|p| line.starts_with(p))
        {
            Some(p) => {
                out.extend_from_slice(p);
                out.extend_from_slice(b"KEY\n");
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// Polls the worker's store until the schedule `name` is there (the worker syncs it at start).
async fn wait_schedule(store: &offsite::queue::Store, name: &str, log: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !store
        .schedules()
        .await
        .unwrap()
        .iter()
        .any(|s| s.def.name == name)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no schedule {name}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls the store until a db_dump job exists and `pred` holds for it.
async fn wait_dump_job(
    store: &offsite::queue::Store,
    log: &Path,
    what: &str,
    pred: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let jobs = store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs.into_iter().find(|j| j.kind == "db_dump" && pred(j)) {
            return j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn db_dump_to_sharepoint_via_the_backup_environment_variables() {
    use crate::support::graph::{CLIENT_ID, CLIENT_SECRET, FakeGraph, TENANT_ID, quick_xor_hash};
    if !may_mount() {
        return;
    }
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql("shop", SCHEMA);
    let fake = FakeGraph::start().await;

    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    let _drive = Tmpfs::mount(&external, "64m").unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let log = dir.path().join("log");
    // No configuration file: the FR's variables, PG* for the connection, and the two
    // OFFSITE_* overrides that point the sign-in and Graph at the fake.
    let port = pg.port.to_string();
    let external_s = external.display().to_string();
    let data_s = data_dir.display().to_string();
    let site = fake.site();
    let login = fake.login_url();
    let graph = fake.graph_url();
    let socket = pg.socket_dir().display().to_string();
    let vars: Vec<(&str, &str)> = vec![
        ("BACKUP_SCHEDULE_DAYS", "Mon,Tue,Wed,Thu,Fri,Sat,Sun"),
        ("BACKUP_SCHEDULE_TIME", "02:15"),
        ("BACKUP_TIMEZONE", "Europe/Berlin"),
        ("BACKUP_EXTERNAL_PATH", &external_s),
        ("BACKUP_SHAREPOINT_SITE", &site),
        ("BACKUP_SHAREPOINT_LIBRARY", "Documents"),
        ("BACKUP_SHAREPOINT_FOLDER", "Backups/db"),
        ("BACKUP_SHAREPOINT_TENANT_ID", TENANT_ID),
        ("BACKUP_SHAREPOINT_CLIENT_ID", CLIENT_ID),
        ("BACKUP_SHAREPOINT_CLIENT_SECRET", CLIENT_SECRET),
        ("PGHOST", &socket),
        ("PGPORT", &port),
        ("PGUSER", "postgres"),
        ("PGPASSWORD", &pg.password),
        ("PGDATABASE", "shop"),
        ("OFFSITE_DATA_DIR", &data_s),
        ("OFFSITE_API__ENABLED", "false"),
        ("OFFSITE_LOG__LEVEL", "debug"),
        ("OFFSITE_DESTINATIONS__SHAREPOINT__LOGIN_URL", &login),
        ("OFFSITE_DESTINATIONS__SHAREPOINT__GRAPH_URL", &graph),
    ];
    let command = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.current_dir(dir.path())
            .args(args)
            .env_remove("OFFSITE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("PGPASSFILE");
        for (k, v) in &vars {
            c.env(k, v);
        }
        c
    };
    let log_file = std::fs::File::create(&log).unwrap();
    let worker = command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let store = offsite::queue::Store::open(&data_dir.join("offsite.db"))
        .await
        .unwrap();
    wait_schedule(&store, "db_dump.backup", &log).await;

    // Run now, as an operator would.
    let out = command(&["schedules", "run", "db_dump.backup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = wait_dump_job(&store, &log, "no db_dump job", |_| true).await;
    let job = wait_for(&store, job.id, |j| {
        matches!(j.state, JobState::Completed | JobState::Discarded)
    })
    .await;
    crate::snapshots::stop(worker);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(job.state, JobState::Completed, "{text}");

    // In the library's folder: the dump, byte for byte, with Graph's hash of it.
    let names = fake.names_in("Backups/db");
    assert_eq!(names.len(), 1, "{names:?}");
    let re = regex::Regex::new(r"_\d{4}-\d\d-\d\d_\d\d-\d\d\.sql$").unwrap();
    assert!(re.is_match(&names[0]), "{}", names[0]);
    let path = format!("Backups/db/{}", names[0]);
    let stored = fake.content(&path).unwrap();
    assert!(
        without_restrict_keys(&stored) == without_restrict_keys(&own_dump(&pg, "shop")),
        "the dump's exact bytes"
    );
    assert!(stored.starts_with(b"--\n-- PostgreSQL database dump\n"));
    // And it restores to equal data.
    let restored_from = dir.path().join("restore.sql");
    std::fs::write(&restored_from, &stored).unwrap();
    pg.sql("postgres", "CREATE DATABASE restored");
    pg.restore("restored", &restored_from);
    assert_eq!(pg.sql("restored", CHECK), pg.sql("shop", CHECK));
    let item = fake.item(&path).unwrap();
    assert_eq!(item.size, stored.len() as u64);
    assert_eq!(item.quick_xor_hash, quick_xor_hash(&stored));
    assert_eq!(fake.open_sessions(), 0);
    assert_eq!(files_in(&external), Vec::<String>::new(), "removed locally");

    assert!(text.contains("backup uploaded"), "{text}");
    assert!(
        !text.contains(CLIENT_SECRET),
        "the client secret is logged:\n{text}"
    );
    assert!(
        !text.contains(&pg.password),
        "the password is logged:\n{text}"
    );
}

#[tokio::test]
async fn db_dump_killed_mid_upload_to_sharepoint_resumes_from_the_sessions_ranges() {
    use crate::support::graph::{CLIENT_SECRET, FRAGMENT, FakeGraph, quick_xor_hash};
    if !may_mount() {
        return;
    }
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql("shop", SCHEMA);
    pg.sql("shop", FILLER);
    let fake = FakeGraph::start().await;
    // chunk_mib = 1, the smallest allowed: 1 MiB rounded up to Graph's 320 KiB rule.
    let fragment = 4 * FRAGMENT;

    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    let _drive = Tmpfs::mount(&external, "64m").unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[api]\nenabled = false\n[engine]\nlease = \"10m\"\n\
             [destinations.sp]\n{}throttle_bytes_per_sec = {fragment}\n\
             [databases.shop]\n{}days = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\n\
             time = \"02:15\"\ntimezone = \"Europe/Berlin\"\nexternal_path = \"{}\"\n\
             destination = \"sp\"\n",
            data_dir.display(),
            crate::sharepoint::toml(&fake, 1),
            pg.connection_toml("shop"),
            external.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut worker = crate::snapshots::spawn(&cfg, &log);
    let store = offsite::queue::Store::open(&data_dir.join("offsite.db"))
        .await
        .unwrap();
    wait_schedule(&store, "db_dump.shop", &log).await;
    let out = Command::new(bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "schedules",
            "run",
            "db_dump.shop",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = wait_dump_job(&store, &log, "the upload never got going", |j| {
        crate::conformance::acknowledged(j) >= 2 * fragment
    })
    .await;
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let at_kill = crate::conformance::acknowledged(&store.job(job.id).await.unwrap().unwrap());
    assert!(at_kill >= 2 * fragment, "killed mid-way");

    // The dump stays on the drive for the retry: it is what must arrive.
    let kept = files_in(&external);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let dump = std::fs::read(external.join(&kept[0])).unwrap();
    assert!(
        dump.len() as u64 > at_kill + fragment,
        "a dump of a few MiB: {}",
        dump.len()
    );
    assert!(fake.open_sessions() >= 1, "the session outlives the worker");

    let worker = crate::snapshots::spawn(&cfg, &log);
    let done = wait_dump_job(&store, &log, "the upload did not complete", |j| {
        j.id == job.id && j.state == JobState::Completed
    })
    .await;
    crate::snapshots::stop(worker);
    let text = std::fs::read_to_string(&log).unwrap();

    let path = format!("Backups/HA/{}", kept[0]);
    let stored = fake.content(&path).expect("the item");
    assert!(stored == dump, "byte-identical to the dump");
    assert_eq!(
        fake.item(&path).unwrap().quick_xor_hash,
        quick_xor_hash(&dump)
    );
    let resent = fake.bytes_received() - dump.len() as u64;
    assert!(
        resent <= fragment,
        "resent {resent} bytes, more than one fragment (acknowledged {at_kill}); log:\n{text}"
    );
    let starts: Vec<u64> = fake.fragments().iter().map(|f| f.0).collect();
    assert_eq!(
        starts.iter().filter(|s| **s == 0).count(),
        1,
        "resumed from the session's ranges, not started over: {starts:?}"
    );
    assert_eq!(
        store.attempts(done.id).await.unwrap().len(),
        2,
        "killed once, resumed once"
    );
    assert_eq!(fake.open_sessions(), 0);
    assert_eq!(
        files_in(&external),
        Vec::<String>::new(),
        "removed at the end"
    );
    assert!(text.contains("backup uploaded"), "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
}

// ------------------------------------------------------------------ names, sweeps, limits

/// A temp dir holding an empty `drive` folder (not a mount: `require_mount = false`, then
/// `extra`) and the configuration of section `app`, which dumps database `postgres` there and
/// uploads to the folder destination `dest` beside it.
fn plain_drive(pg: &Postgres, extra: &str) -> (tempfile::TempDir, PathBuf, Config) {
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let config = config_with(
        dir.path(),
        &dir.path().join("dest"),
        "app",
        database(
            pg,
            "postgres",
            &external,
            &format!("require_mount = false\n{extra}"),
        ),
    );
    (dir, external, config)
}

/// A db_dump job of `section` that waits for its retry, its dump `file` named in its
/// checkpoint as an attempt that published it records it (the state a failed upload with
/// retries left leaves, without waiting a backoff out).
async fn waiting_job(h: &Harness, section: &str, file: &str) -> JobRecord {
    let job = h
        .store()
        .enqueue(&offsite::queue::store::NewJob {
            kind: "db_dump".into(),
            queue: "uploads".into(),
            args: json!({ "database": section }).to_string(),
            priority: 2,
            max_attempts: 6,
            scheduled_at: Some(now_ms() + 3_600_000),
            idempotency_key: None,
            tags: vec![],
        })
        .await
        .unwrap()
        .job;
    let mut db = crate::trust::raw(&h.running().state.config.database_path()).await;
    sqlx::query(
        "update jobs set checkpoint = ?1, state = 'retryable', attempt = 1, \
         last_error = 'upload failed' where id = ?2",
    )
    .bind(json!({ "dump": file, "published": true }).to_string())
    .bind(job.id)
    .execute(&mut db)
    .await
    .unwrap();
    h.store().job(job.id).await.unwrap().unwrap()
}

#[tokio::test]
async fn db_dump_a_taken_name_is_never_replaced_and_sections_sharing_a_database_keep_their_own_dumps()
 {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let dest = dir.path().join("dest");
    let (_lines, _guard) = capture(LogFormat::Json, None);
    // Two sections dump the same database to the same drive, each keeping its last dump.
    let mut config = config_with(
        dir.path(),
        &dest,
        "a",
        database(
            &pg,
            "postgres",
            &external,
            "require_mount = false\nkeep_last_local = true\n",
        ),
    );
    let b = database(
        &pg,
        "postgres",
        &external,
        "require_mount = false\nkeep_last_local = true\n",
    );
    config.databases.insert("b".into(), b);
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;

    // The names a dump made this minute or the next one would get belong to dumps that still
    // wait for their upload.
    let now = Utc::now();
    let mut owed = Vec::new();
    for t in [now, now + chrono::Duration::minutes(1)] {
        let name = offsite::sources::postgres::file_name("postgres", t, "Europe/Berlin");
        std::fs::write(external.join(&name), format!("-- owed {name}")).unwrap();
        waiting_job(&h, "a", &name).await;
        owed.push(name);
    }
    let unchanged = |owed: &[String]| {
        for name in owed {
            assert_eq!(
                std::fs::read_to_string(external.join(name)).unwrap(),
                format!("-- owed {name}"),
                "{name} was replaced"
            );
        }
    };

    assert_eq!(run_dump(&h, "a").await.state, JobState::Completed);
    let from_a = files_in(&dest);
    assert_eq!(from_a.len(), 1, "{from_a:?}");
    assert!(from_a[0].ends_with("_2.sql"), "{from_a:?}");
    unchanged(&owed);

    assert_eq!(run_dump(&h, "b").await.state, JobState::Completed);
    let from_b: Vec<String> = files_in(&dest)
        .into_iter()
        .filter(|n| *n != from_a[0])
        .collect();
    assert_eq!(from_b.len(), 1, "{from_b:?}");
    unchanged(&owed);
    let mut want = vec![
        ".offsite-keep.a".to_string(),
        ".offsite-keep.b".to_string(),
        from_a[0].clone(),
        from_b[0].clone(),
    ];
    want.extend(owed.iter().cloned());
    want.sort();
    assert_eq!(
        files_in(&external),
        want,
        "b's cleanup leaves a's kept dump and the owed ones"
    );
    for n in [&from_a[0], &from_b[0]] {
        assert_eq!(
            std::fs::read(external.join(n)).unwrap(),
            std::fs::read(dest.join(n)).unwrap(),
            "{n} is the dump that was uploaded"
        );
    }

    // a's next dump replaces a's kept one, not b's.
    assert_eq!(run_dump(&h, "a").await.state, JobState::Completed);
    let on_drive = files_in(&external);
    assert!(!on_drive.contains(&from_a[0]), "{on_drive:?}");
    assert!(on_drive.contains(&from_b[0]), "{on_drive:?}");
    assert_eq!(on_drive.len(), want.len(), "{on_drive:?}");
    unchanged(&owed);
}

#[tokio::test]
async fn db_dump_the_sweep_removes_dumps_of_cancelled_and_deleted_jobs_and_orphans_but_not_owed_ones()
 {
    let pg = Postgres::start();
    let (lines, _guard) = capture(LogFormat::Json, None);
    let (_dir, external, config) = plain_drive(&pg, "");
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let cancelled = "postgres_2026-01-05_02-15.sql";
    let deleted = "postgres_2026-01-06_02-15.sql";
    let owed = "postgres_2026-01-07_02-15.sql";
    // What a kill -9 leaves: a published dump no job names (an earlier version's kill between
    // the rename and the checkpoint), a staging file and a partial of a job that is gone.
    let orphans = [
        "postgres_2026-01-08_02-15_2.sql",
        ".postgres_job-999999.sql",
        "..postgres_job-999998.sql.partial",
        ".postgres_2026-01-04_02-15.sql.partial",
    ];
    for n in [cancelled, deleted, owed].iter().chain(&orphans) {
        std::fs::write(external.join(n), b"-- dump").unwrap();
    }
    std::fs::write(external.join("notes.txt"), b"mine").unwrap();
    let x = waiting_job(&h, "app", cancelled).await;
    let w = waiting_job(&h, "app", deleted).await;
    let y = waiting_job(&h, "app", owed).await;
    assert_eq!(x.state, JobState::Retryable);

    // Through the API, as an operator would.
    let c = reqwest::Client::new();
    let base = h.base_url();
    let r = c
        .post(format!("{base}/api/v1/jobs/{}/cancel", x.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = c
        .delete(format!("{base}/api/v1/jobs/{}", w.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(
        h.store().job(x.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );

    // The next db_dump run sweeps the drive.
    assert_eq!(run_dump(&h, "app").await.state, JobState::Completed);
    assert_eq!(
        files_in(&external),
        vec!["notes.txt".to_string(), owed.to_string()],
        "only what the waiting job still needs stays (and the user's file)"
    );
    assert_eq!(
        h.store().job(y.id).await.unwrap().unwrap().state,
        JobState::Retryable
    );
    let cleaned: Vec<String> = lines
        .backup_json()
        .into_iter()
        .filter(|l| l["fields"]["outcome"] == "cleaned_up")
        .map(|l| l["fields"]["file"].as_str().unwrap().to_string())
        .collect();
    for n in [cancelled, deleted, orphans[0]] {
        assert!(
            cleaned.iter().any(|c| c == n),
            "{n} not logged: {cleaned:?}"
        );
    }
}

#[tokio::test]
async fn db_dump_a_restart_sweeps_the_dump_of_a_job_cancelled_while_it_waited() {
    let pg = Postgres::start();
    let (_dir, external, config) = plain_drive(&pg, "");
    let mut h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let cancelled = "postgres_2026-01-05_02-15.sql";
    let owed = "postgres_2026-01-07_02-15.sql";
    for n in [cancelled, owed] {
        std::fs::write(external.join(n), b"-- dump").unwrap();
    }
    let x = waiting_job(&h, "app", cancelled).await;
    let y = waiting_job(&h, "app", owed).await;
    h.store().cancel(x.id).await.unwrap();
    assert_eq!(
        h.store().job(x.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    // Nothing ran: the cancelled job's dump is still there until something sweeps.
    assert_eq!(
        files_in(&external),
        vec![cancelled.to_string(), owed.to_string()]
    );

    let config = (*h.running().state.config).clone();
    h.start_again(config).await;
    assert_eq!(
        files_in(&external),
        vec![owed.to_string()],
        "the restart removed the cancelled job's dump, kept the one still owed"
    );
    let y = h.store().job(y.id).await.unwrap().unwrap();
    assert_eq!(
        (y.state, y.attempt),
        (JobState::Retryable, 1),
        "no dump ran"
    );
}

/// A bind mount for one test, unmounted when dropped.
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn db_dump_a_mount_point_on_the_device_of_offsites_data_is_not_an_external_drive() {
    if !may_mount() {
        return;
    }
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // As in the add-on: one system partition holds offsite's data and the folder that is
    // bind-mounted as /media; a drive the host mounts appears below it.
    let system = dir.path().join("system");
    let _system = Tmpfs::mount(&system, "64m").unwrap();
    std::fs::create_dir_all(system.join("data")).unwrap();
    std::fs::create_dir_all(system.join("media/usb")).unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(system.join("media"))
        .arg(&media)
        .status()
        .unwrap()
        .success();
    assert!(ok, "bind mount");
    let _media = Bind(media.clone());
    let usb = media.join("usb");
    let _usb = Tmpfs::mount(&usb, "64m").unwrap();
    let (lines, _guard) = capture(LogFormat::Json, None);

    let dest = dir.path().join("dest");
    let mut config = test_config(dir.path());
    config.data_dir = system.join("data");
    config
        .destinations
        .insert("nas".into(), folder_dest(&dest, 0));
    for (name, path) in [("media", &media), ("system", &system), ("usb", &usb)] {
        config
            .databases
            .insert(name.into(), database(&pg, "postgres", path, ""));
    }
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    for (name, path) in [("media", &media), ("system", &system)] {
        let job = run_dump(&h, name).await;
        assert_eq!(job.state, JobState::Discarded, "{name}");
        let line = lines
            .backup_json()
            .into_iter()
            .find(|l| l["fields"]["outcome"] == "dump_failed" && l["fields"]["database"] == name)
            .unwrap_or_else(|| panic!("no dump_failed for {name}:\n{}", lines.text()));
        let error = line["fields"]["error"].as_str().unwrap();
        assert!(
            error.contains(&format!(
                "the external path {} (databases.{name}.external_path) is on the same device as offsite's own data ({})",
                path.display(),
                system.join("data").display()
            )),
            "{error}"
        );
        assert!(
            error.contains(&format!("set databases.{name}.require_mount = false")),
            "{error}"
        );
    }
    assert_eq!(files_in(&media), vec!["usb".to_string()], "nothing written");
    assert_eq!(run_dump(&h, "usb").await.state, JobState::Completed);
    assert_eq!(files_in(&dest).len(), 1);
}

#[tokio::test]
async fn db_dump_jobs_submitted_through_the_api_get_the_sections_retries() {
    let pg = Postgres::start();
    let (_dir, _external, mut config) = plain_drive(&pg, "");
    config.databases.get_mut("app").unwrap().retries = 2;
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let c = reqwest::Client::new();
    let post = |body: Value| {
        c.post(format!("{}/api/v1/jobs", h.base_url()))
            .json(&body)
            .send()
    };
    let r = post(json!({"kind": "db_dump", "args": {"database": "app"}}))
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["job"]["max_attempts"], 3,
        "retries = 2, plus the first: {v}"
    );
    // What the submission says itself still wins.
    let r = post(json!({"kind": "db_dump", "args": {"database": "app"}, "max_attempts": 9}))
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["job"]["max_attempts"], 9, "{v}");
}

/// Polls until `done` holds (20 s limit).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn db_dump_a_stalled_or_cancelled_dump_writes_its_outcome_line() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let (lines, _guard) = capture(LogFormat::Json, None);
    let version = "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.4'; exit 0; fi";
    // A pg_dump stuck behind a lock after its first line, and a slow one that keeps writing.
    let stuck = script(
        &dir.path().join("stuck"),
        "pg_dump",
        &format!("{version}\necho 'SET x = 1;'\nexec sleep 600"),
    );
    let started = dir.path().join("slow-started");
    let slow = script(
        &dir.path().join("slow"),
        "pg_dump",
        &format!(
            "{version}\n: > {}\nwhile :; do echo '-- still dumping'; sleep 0.1; done",
            started.display()
        ),
    );
    let mut config = test_config(dir.path());
    config
        .destinations
        .insert("nas".into(), folder_dest(&dir.path().join("dest"), 0));
    config.kinds.insert(
        "db_dump".into(),
        offsite::config::KindConfig {
            stall_timeout: Some(std::time::Duration::from_secs(1)),
            ..Default::default()
        },
    );
    for (name, bin) in [("stuck", &stuck), ("slow", &slow)] {
        let extra = format!("require_mount = false\npg_dump = \"{}\"\n", bin.display());
        config
            .databases
            .insert(name.into(), database(&pg, "postgres", &external, &extra));
    }
    let h = Harness::start_in(tempfile::tempdir().unwrap(), config).await;
    let line_of = |name: &str| {
        lines
            .backup_json()
            .into_iter()
            .find(|l| l["fields"]["outcome"] == "dump_failed" && l["fields"]["database"] == name)
            .unwrap_or_else(|| panic!("no dump_failed line for {name}:\n{}", lines.text()))
    };

    let job = run_dump(&h, "stuck").await;
    assert_eq!(job.state, JobState::Discarded);
    let line = line_of("stuck");
    assert_outcome_fields(&line, "postgres_");
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["fields"]["error"], "the dump was stopped", "{line}");
    assert_eq!(
        line["fields"]["cause"], "stalled: no progress reported for 1s: no attempts left",
        "{line}"
    );

    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "db_dump".into(),
            args: json!({ "database": "slow" }),
            ..Default::default()
        })
        .await;
    until("the slow pg_dump never started", || started.exists()).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs/{}/cancel", h.base_url(), job.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let job = h.wait_state(job.id, JobState::Cancelled).await;
    assert_eq!(job.attempt, 1);
    let line = line_of("slow");
    assert_outcome_fields(&line, "postgres_");
    assert_eq!(line["fields"]["error"], "the dump was stopped", "{line}");
    assert_eq!(
        line["fields"]["cause"], "cancelled by operator: no attempts left",
        "{line}"
    );
    // What the stopped dumps wrote goes with them.
    until("the partial dumps stay", || files_in(&external).is_empty()).await;
}

#[tokio::test]
async fn db_dump_pg_dump_gets_the_pg_environment_but_not_the_workers_secrets() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let external = dir.path().join("drive");
    std::fs::create_dir_all(&external).unwrap();
    let dest = dir.path().join("dest");
    let seen = dir.path().join("pg_dump.env");
    let wrapper = script(
        &dir.path().join("wrap"),
        "pg_dump",
        &format!(
            "[ \"$1\" = --version ] || env > {}\nexec {} \"$@\"",
            seen.display(),
            Postgres::bin().join("pg_dump").display()
        ),
    );
    // The password comes from the standard PGPASSWORD, the connection from the section.
    let config = crate::cli::write_config(
        dir.path(),
        &format!(
            "[destinations.nas]\ntype = \"folder\"\npath = \"{}\"\n\
             [databases.app]\nhost = \"{}\"\nport = {}\ndatabase = \"postgres\"\nuser = \"postgres\"\n\
             days = [\"Mon\"]\ntime = \"02:15\"\nexternal_path = \"{}\"\nrequire_mount = false\n\
             destination = \"nas\"\nretries = 3\npg_dump = \"{}\"\n",
            dest.display(),
            pg.socket_dir().display(),
            pg.port,
            external.display(),
            wrapper.display()
        ),
    );
    let secrets = [
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-0123456789"),
        ("SUPERVISOR_TOKEN", "supervisor-token-0123456789"),
        ("OFFSITE_API__TOKEN", "offsite-api-token-0123456789abcdef"),
    ];
    let command = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.current_dir(dir.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("PGPASSFILE")
            .env("PGPASSWORD", &pg.password)
            .env("PGAPPNAME", "offsite-env-test");
        for (k, v) in secrets {
            c.env(k, v);
        }
        c
    };
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let log = dir.path().join("worker.log");
    let worker = command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let store = offsite::queue::Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    wait_schedule(&store, "db_dump.app", &log).await;
    // Through the CLI: the job gets the section's retries.
    let out = command(&[
        "enqueue",
        "db_dump",
        "--args",
        r#"{"database":"app"}"#,
        "--json",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["job"]["id"].as_i64().unwrap();
    let job = wait_for(&store, id, |j| {
        matches!(j.state, JobState::Completed | JobState::Discarded)
    })
    .await;
    crate::snapshots::stop(worker);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(job.state, JobState::Completed, "{text}");
    assert_eq!(files_in(&dest).len(), 1);

    let env = std::fs::read_to_string(&seen).unwrap();
    let vars: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(
        env.contains(&format!("PGPASSWORD={}\n", pg.password)),
        "{vars:?}"
    );
    assert!(env.contains("PGAPPNAME=offsite-env-test\n"), "{vars:?}");
    assert!(env.contains("PGHOST="), "{vars:?}");
    assert!(vars.contains(&"PATH"), "{vars:?}");
    for (k, v) in secrets {
        assert!(!env.contains(v), "{k} reached pg_dump: {vars:?}");
    }
    assert!(!vars.iter().any(|v| v.starts_with("OFFSITE_")), "{vars:?}");
    assert_eq!(
        v["job"]["max_attempts"], 4,
        "retries = 3, plus the first: {v}"
    );
}
