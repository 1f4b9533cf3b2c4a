//! The real `offsite` binary: commands, exit codes, configuration errors, a broken database.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_offsite")
}

/// A config file in `dir` with the API off (no port needed) and data inside `dir`.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("offsite.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{0}/data\"\njobs_dir = \"{0}/jobs\"\ninstance_id = \"cli-test\"\n{extra}\n[api]\nenabled = false\n[snapshots]\nenabled = false\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

pub fn offsite(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(config.parent().unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run offsite")
}

/// A running `offsite run` (in `cwd`) whose log goes to a file.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(config: &Path, cwd: &Path) -> Worker {
        let log = config.with_extension("log");
        let child = Command::new(bin())
            .current_dir(cwd)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run offsite");
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or the worker exits).
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "offsite exited ({status}) before {needle:?}: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the whole log.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(self.child.wait().unwrap().success(), "{}", self.log());
        self.log()
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_the_defaults_and_the_example() {
    let o = Command::new(bin())
        .args(["config", "check"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.contains("configuration OK (built-in defaults)"),
        "{out}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/offsite.example.toml");
    let o = Command::new(bin())
        .args(["--config", example, "config", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn a_bad_value_stops_with_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[queues.default]\nconcurrency = \"many\"\n");
    let o = offsite(&cfg, &["run"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "one readable message: {err}");
    assert!(
        err.contains(&cfg.display().to_string()) && err.contains("`queues.default.concurrency`"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");

    let cfg = write_config(dir.path(), "[queues.default\n");
    let o = offsite(&cfg, &["config", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("not valid TOML (line"),
        "{}",
        text(&o).1
    );

    let o = Command::new(bin())
        .args([
            "--config",
            cfg.parent().unwrap().join("missing.toml").to_str().unwrap(),
            "config",
            "check",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("missing.toml"));

    let cfg = write_config(dir.path(), "");
    let o = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .env("OFFSITE_ENGINE__LEASE", "soon")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("OFFSITE_ENGINE__LEASE") && err.contains("`engine.lease`"),
        "{err}"
    );
}

#[test]
fn a_written_snapshot_schedule_is_used_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let flow = "[sources.s]\ntype = \"folder\"\npath = \"in\"\n\
                [destinations.d]\ntype = \"folder\"\npath = \"out\"\n\
                [snapshots]\nsource = \"s\"\ndestinations = [\"d\"]\n";
    for (schedule, shown) in [
        (
            "cron = \"0 3 * * *\"\ntimezone = \"UTC\"",
            "cron 0 3 * * * (UTC)",
        ),
        (
            "weekdays = [\"mon\", \"thu\"]\nat = \"02:15\"\ntimezone = \"UTC\"",
            "Mon, Thu at 02:15 (UTC)",
        ),
    ] {
        let path = dir.path().join("offsite.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}/data\"\n[api]\nenabled = false\n{flow}[snapshots.schedule]\n{schedule}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let o = offsite(&path, &["config", "check"]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{schedule}: {err}");
        assert!(
            out.contains(&format!("snapshots (snapshot_scan): {shown}")),
            "{out}"
        );
    }
}

#[test]
fn without_a_file_the_environment_still_reshapes_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    let o = Command::new(bin())
        .current_dir(dir.path())
        .args(["config", "check"])
        .env("OFFSITE_DATA_DIR", &data)
        .env("OFFSITE_SNAPSHOTS__SCHEDULE__CRON", "0 3 * * *")
        .env("OFFSITE_SNAPSHOTS__SCHEDULE__TIMEZONE", "UTC")
        .env("OFFSITE_QUEUES__DEFAULT__CONCURRENCY", "7")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.contains("snapshots (snapshot_scan): cron 0 3 * * * (UTC)"),
        "{out}"
    );
    assert!(out.contains("default (7), uploads (1)"), "{out}");
    assert!(
        out.contains(&data.join("offsite.db").display().to_string()),
        "{out}"
    );
}

#[test]
fn a_config_that_puts_the_data_elsewhere_creates_nothing_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let cfg = write_config(dir.path(), "");
    let worker = {
        let mut w = Worker::start(&cfg, &cwd);
        w.wait_for("offsite is running");
        w
    };
    worker.stop();
    assert!(dir.path().join("data/offsite.db").is_file());
    let created: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        created.is_empty(),
        "created in the working directory: {created:?}"
    );
}

#[test]
fn debug_logs_carry_no_sql_statements_and_trace_does() {
    for (level, statements) in [("debug", false), ("trace", true)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &format!("[log]\nlevel = \"{level}\"\n"));
        let o = offsite(&cfg, &["enqueue", "noop", "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        let mut worker = Worker::start(&cfg, dir.path());
        worker.wait_for("}: completed");
        let log = worker.stop();
        // sqlx's statement events carry these fields (sqlx-core logger.rs).
        let sql: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rows_returned=") || l.contains("db.statement"))
            .collect();
        if statements {
            assert!(!sql.is_empty(), "trace shows SQL statements:\n{log}");
        } else {
            assert!(sql.is_empty(), "SQL at {level}: {sql:#?}");
            assert!(log.contains("DEBUG"), "the log is at debug:\n{log}");
        }
    }
}

#[test]
fn schedule_file_errors_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::write(
        dir.path().join("jobs/db.toml"),
        "kind = \"noop\"\n[schedule]\nweekdays = [\"mon\"]\nat = \"25:00\"\n",
    )
    .unwrap();
    let o = offsite(&cfg, &["run"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("jobs/db.toml") && err.contains("`schedule.at`"),
        "{err}"
    );
}

#[test]
fn enqueue_inspect_and_manage_jobs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let o = offsite(
        &cfg,
        &[
            "enqueue",
            "noop",
            "--args",
            "{\"steps\": 2}",
            "--key",
            "cli-1",
            "--run-at",
            "2099-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["job"]["id"].as_i64().unwrap().to_string();
    assert_eq!(v["job"]["state"], "scheduled");

    let o = offsite(
        &cfg,
        &[
            "enqueue",
            "noop",
            "--args",
            "{\"steps\": 2}",
            "--key",
            "cli-1",
        ],
    );
    assert!(text(&o).0.contains("already exists"), "{}", text(&o).0);

    let o = offsite(&cfg, &["jobs", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let o = offsite(&cfg, &["jobs", "show", &id]);
    assert!(text(&o).0.contains("scheduled"), "{}", text(&o).0);

    let o = offsite(&cfg, &["jobs", "cancel", &id]);
    assert_eq!(o.status.code(), Some(0));
    let o = offsite(&cfg, &["jobs", "show", &id, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "cancelled");
    let o = offsite(&cfg, &["jobs", "cancel", &id]);
    assert_eq!(o.status.code(), Some(1), "cancelling twice is a failure");
    assert!(text(&o).1.contains("already cancelled"));

    let o = offsite(&cfg, &["jobs", "retry", &id]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("available"), "{}", text(&o).0);
    let o = offsite(&cfg, &["jobs", "retry", "--all", "--state", "available"]);
    assert!(
        text(&o).0.contains("0 jobs"),
        "available jobs are not finished: {}",
        text(&o).0
    );
    let o = offsite(&cfg, &["jobs", "delete", &id]);
    assert_eq!(o.status.code(), Some(0));
    let o = offsite(&cfg, &["jobs", "show", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("does not exist"));

    let o = offsite(&cfg, &["queues", "pause", "default"]);
    assert_eq!(o.status.code(), Some(0));
    let o = offsite(&cfg, &["queues", "list"]);
    assert!(text(&o).0.contains("default [paused]"), "{}", text(&o).0);
    let o = offsite(&cfg, &["queues", "resume", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    for args in [
        vec!["enqueue", "teleport"],
        vec!["enqueue", "noop", "--args", "{broken"],
        vec!["enqueue", "noop", "--args", "{\"steps\": \"x\"}"],
        vec!["frobnicate"],
        vec!["jobs", "show", "abc"],
    ] {
        let o = offsite(&cfg, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
    }
    let o = offsite(&cfg, &["enqueue", "noop", "--args", "{\"steps\": \"x\"}"]);
    assert!(text(&o).1.contains("args.steps"), "{}", text(&o).1);
}

#[test]
fn a_corrupt_database_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/offsite.db");
    let garbage = b"this is not an sqlite database, it is a shopping list\n".repeat(200);
    std::fs::write(&db, &garbage).unwrap();
    for args in [vec!["run"], vec!["jobs", "list"]] {
        let o = offsite(&cfg, &args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("is not a valid offsite database") && err.contains("offsite.db"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "never recreated or modified"
    );
}

#[test]
fn an_unusable_database_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "database = \"/proc/offsite.db\"\n");
    let o = offsite(&cfg, &["jobs", "list"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/proc/offsite.db") && err.contains("cannot"),
        "{err}"
    );

    let cfg = write_config(
        dir.path(),
        &format!("database = \"{}\"\n", dir.path().display()),
    );
    let o = offsite(&cfg, &["jobs", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("is a directory"), "{}", text(&o).1);
}

#[test]
fn db_snapshot_is_a_consistent_copy_that_a_restored_data_dir_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let o = offsite(
        &cfg,
        &[
            "enqueue",
            "noop",
            "--key",
            "survives",
            "--run-at",
            "2099-01-01T00:00:00Z",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let o = offsite(&cfg, &["db-snapshot"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    // A restore brings back the data dir without the live database files.
    for f in ["offsite.db", "offsite.db-wal", "offsite.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join("data").join(f));
    }
    let o = offsite(&cfg, &["jobs", "list", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let jobs: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs[0]["idempotency_key"], "survives");
}

#[test]
fn addon_mode_reads_the_options_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("options.json");
    std::fs::write(
        &options,
        r#"{"dropbox_app_key": "k", "dropbox_app_secret": "", "backup_interval_hours": 0,
            "max_backups_in_dropbox": 10, "dropbox_backup_path": "/HomeAssistant/Backups"}"#,
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["config", "check"])
        .env("OFFSITE_OPTIONS", &options)
        .env("SUPERVISOR_TOKEN", "t")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("options.json") && err.contains("`backup_interval_hours`"),
        "{err}"
    );
    std::fs::write(
        &options,
        std::fs::read_to_string(&options).unwrap().replace(
            "\"backup_interval_hours\": 0",
            "\"backup_interval_hours\": 6",
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["config", "check"])
        .env("OFFSITE_OPTIONS", &options)
        .env("SUPERVISOR_TOKEN", "t")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.contains("/data/offsite.db") && out.contains("snapshots (snapshot_scan): every 6h"),
        "{out}"
    );
}
