//! Schedules: slot arithmetic, file validation, firing with idempotent slot keys, no double
//! enqueue across a restart, no backfill of missed slots, and run-now.

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone, Utc, Weekday};
use offsite::queue::{
    JobState, Store,
    executor::Executor,
    scheduler::{self, ScheduleSpec, Scheduler},
    state::now_ms,
    store::JobFilter,
};

use crate::common::{registry, test_config};

#[test]
fn every_slots_are_aligned_to_the_interval() {
    let spec = ScheduleSpec::Every { secs: 6 * 3600 };
    let t = Utc.with_ymd_and_hms(2026, 11, 22, 7, 30, 0).unwrap();
    assert_eq!(
        spec.next_after(t).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    );
    let on_slot = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    assert_eq!(
        spec.next_after(on_slot).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 22, 18, 0, 0).unwrap()
    );
}

#[test]
fn weekly_slots_follow_the_time_zone_across_daylight_saving() {
    let spec = ScheduleSpec::Weekly {
        days: vec![Weekday::Sun, Weekday::Wed],
        at: "02:30".into(),
        timezone: "Europe/Berlin".into(),
    };
    // Saturday 2026-03-28: next is Sunday 29 March, the night clocks jump 02:00 → 03:00.
    let sat = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
    let next = spec.next_after(sat).unwrap();
    assert_eq!(
        next,
        Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap(),
        "02:30 does not exist; 03:30 CEST"
    );
    // Then Wednesday 1 April at 02:30 CEST = 00:30 UTC.
    assert_eq!(
        spec.next_after(next).unwrap(),
        Utc.with_ymd_and_hms(2026, 4, 1, 0, 30, 0).unwrap()
    );
    // In winter, 02:30 CET = 01:30 UTC.
    let nov = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    assert_eq!(
        spec.next_after(nov).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 25, 1, 30, 0).unwrap()
    );
}

#[test]
fn cron_accepts_five_and_six_field_forms() {
    let five = ScheduleSpec::Cron {
        expr: "15 3 * * *".into(),
        timezone: "UTC".into(),
    };
    let six = ScheduleSpec::Cron {
        expr: "0 15 3 * * *".into(),
        timezone: "UTC".into(),
    };
    let t = Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap();
    let want = Utc.with_ymd_and_hms(2026, 11, 23, 3, 15, 0).unwrap();
    assert_eq!(five.next_after(t).unwrap(), want);
    assert_eq!(six.next_after(t).unwrap(), want);
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn schedule_files_are_validated_with_file_and_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (reg, _) = registry(&config);
    let jobs = dir.path().join("jobs");
    // (file, text, key, line, message)
    let cases = [
        (
            "a.toml",
            "kind = \"noop\"\n[schedule]\nweekdays = [\"mon\"]\nat = \"02:10\"\n",
            "schedule.at",
            Some(4),
            "quarter hour",
        ),
        (
            "b.toml",
            "kind = \"noop\"\n[schedule]\nevery = \"6h\"\ncron = \"* * * * *\"\n",
            "schedule",
            Some(2),
            "exactly one",
        ),
        (
            "c.toml",
            "kind = \"nope\"\n[schedule]\nevery = \"6h\"\n",
            "kind",
            Some(1),
            "unknown job kind",
        ),
        (
            "d.toml",
            "kind = \"noop\"\nargs = { steps = -1 }\n[schedule]\nevery = \"6h\"\n",
            "args.steps",
            Some(2),
            "invalid value",
        ),
        (
            "e.toml",
            "kind = \"noop\"\n[schedule]\ncron = \"61 * * * *\"\n",
            "schedule.cron",
            Some(3),
            "invalid cron",
        ),
        (
            "f.toml",
            "kind = \"noop\"\n[schedule]\nweekdays = [\"mon\"]\nat = \"02:15\"\ntimezone = \"Mars/Olympus\"\n",
            "schedule.timezone",
            Some(5),
            "unknown time zone",
        ),
        (
            "g.toml",
            "kind = \"noop\"\n[schedule]\nweekdays = [\"funday\"]\nat = \"02:15\"\n",
            "schedule.weekdays",
            Some(3),
            "unknown weekday",
        ),
        // The key on the line after a valid one is the wrong one, not its neighbour.
        (
            "h.toml",
            "kind = \"noop\"\nwhen = 3\n[schedule]\nevery = \"6h\"\n",
            "when",
            Some(2),
            "unknown field `when`",
        ),
        (
            "i.toml",
            "kind = \"noop\"\n[schedule]\nevery = \"6h\"\nsoon = true\n",
            "schedule.soon",
            Some(4),
            "unknown field `soon`",
        ),
        (
            "j.toml",
            "kind = \"noop\"\npriority = \"high\"\n[schedule]\nevery = \"6h\"\n",
            "priority",
            Some(2),
            "invalid type",
        ),
        (
            "k.toml",
            "kind = \"noop\"\n\nschedule = { every = 5 }\n",
            "schedule.every",
            Some(3),
            "invalid type",
        ),
        (
            "l.toml",
            "kind = \"noop\"\n",
            "schedule",
            None,
            "missing field `schedule`",
        ),
    ];
    for (file, text, key, line, message) in cases {
        let _ = std::fs::remove_dir_all(&jobs);
        write(&jobs, file, text);
        let e = scheduler::load_dir(&jobs, &reg, "UTC").unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{file}: {e}");
        assert_eq!(e.line, line, "{file}: {e}");
        assert!(e.message.contains(message), "{file}: {e}");
        assert!(e.file.as_deref().unwrap().ends_with(file), "{file}: {e}");
        if let Some(line) = line {
            assert!(
                e.to_string().contains(&format!("{file}:{line}: `{key}`")),
                "{e}"
            );
        }
    }
}

async fn setup(dir: &std::path::Path, schedule: &str) -> (Store, Scheduler) {
    let config = test_config(dir);
    let (reg, _) = registry(&config);
    write(&dir.join("jobs"), "nightly.toml", schedule);
    let defs = scheduler::load_dir(&dir.join("jobs"), &reg, "UTC").unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let store = Store::open(&config.database_path()).await.unwrap();
    store.sync_schedules(&defs).await.unwrap();
    let reg = Arc::new(reg);
    let executor = Executor::new(
        store.clone(),
        reg.clone(),
        "sched-test".into(),
        Default::default(),
        vec![],
        Default::default(),
    );
    let s = Scheduler {
        store: store.clone(),
        registry: reg,
        executor,
    };
    (store, s)
}

const EVERY_HOUR: &str = "kind = \"noop\"\nargs = { steps = 0 }\n[schedule]\nevery = \"1h\"\n";

#[tokio::test]
async fn a_due_slot_fires_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sched) = setup(dir.path(), EVERY_HOUR).await;
    // First pass computes the next slot without firing.
    sched.tick().await.unwrap();
    let rec = &store.schedules().await.unwrap()[0];
    let next = rec.next_run_at.unwrap();
    assert!(next > now_ms() && next % 3_600_000 == 0);
    assert!(
        store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Pretend the slot came due 5 s ago.
    let slot = now_ms() - 5_000;
    store.set_next_run("nightly", Some(slot)).await.unwrap();
    sched.tick().await.unwrap();
    let jobs = store
        .list_jobs(&JobFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let key = jobs[0].idempotency_key.clone().unwrap();
    assert!(key.starts_with("schedule:nightly:"), "{key}");
    let rec = &store.schedules().await.unwrap()[0];
    assert_eq!(rec.last_slot_at, Some(slot));
    assert_eq!(rec.last_job_id, Some(jobs[0].id));
    assert!(rec.next_run_at.unwrap() > now_ms());

    // A restart that lost the "advanced" state (crash between enqueue and bookkeeping, or a
    // second worker) fires the same slot again: the key makes it the same job.
    let (store2, sched2) = {
        store.set_next_run("nightly", Some(slot)).await.unwrap();
        let config = test_config(dir.path());
        let (reg, _) = registry(&config);
        let reg = Arc::new(reg);
        let store2 = Store::open(&config.database_path()).await.unwrap();
        let executor = Executor::new(
            store2.clone(),
            reg.clone(),
            "other".into(),
            Default::default(),
            vec![],
            Default::default(),
        );
        (
            store2.clone(),
            Scheduler {
                store: store2,
                registry: reg,
                executor,
            },
        )
    };
    sched2.tick().await.unwrap();
    assert_eq!(
        store2
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        1,
        "slot enqueued twice"
    );
}

#[tokio::test]
async fn a_missed_slot_is_not_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sched) = setup(dir.path(), EVERY_HOUR).await;
    sched.tick().await.unwrap();
    // The process was down for two hours: the slot is long past.
    store
        .set_next_run("nightly", Some(now_ms() - 2 * 3_600_000))
        .await
        .unwrap();
    sched.tick().await.unwrap();
    assert!(
        store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let rec = &store.schedules().await.unwrap()[0];
    assert!(
        rec.next_run_at.unwrap() > now_ms(),
        "waits for the next slot"
    );
    assert_eq!(rec.last_slot_at, None);
}

#[tokio::test]
async fn run_now_enqueues_outside_the_slots_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sched) = setup(dir.path(), EVERY_HOUR).await;
    sched.tick().await.unwrap();
    let a = scheduler::run_now(&store, &sched.registry, "nightly")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let b = scheduler::run_now(&store, &sched.registry, "nightly")
        .await
        .unwrap();
    assert_ne!(a.job.id, b.job.id);
    assert_eq!(a.job.state, JobState::Available);
    let rec = &store.schedules().await.unwrap()[0];
    assert_eq!(rec.last_job_id, Some(b.job.id));
    assert!(matches!(
        scheduler::run_now(&store, &sched.registry, "missing").await,
        Err(scheduler::RunNowError::NotFound(_))
    ));
}

#[tokio::test]
async fn changing_a_schedule_recomputes_its_next_run_and_removed_files_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sched) = setup(dir.path(), EVERY_HOUR).await;
    sched.tick().await.unwrap();
    assert!(store.schedules().await.unwrap()[0].next_run_at.is_some());
    let config = test_config(dir.path());
    let (reg, _) = registry(&config);
    write(
        &dir.path().join("jobs"),
        "nightly.toml",
        "kind = \"noop\"\n[schedule]\nevery = \"2h\"\n",
    );
    let defs = scheduler::load_dir(&dir.path().join("jobs"), &reg, "UTC").unwrap();
    store.sync_schedules(&defs).await.unwrap();
    assert_eq!(store.schedules().await.unwrap()[0].next_run_at, None);
    store.sync_schedules(&[]).await.unwrap();
    assert!(store.schedules().await.unwrap().is_empty());
}

#[test]
fn shipped_schedule_examples_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The names the examples use.
    config.sources.insert(
        "ha".into(),
        offsite::config::SourceConfig::Supervisor {
            url: "http://supervisor".into(),
            token: Some(offsite::config::Secret::new("t")),
        },
    );
    config.destinations.insert(
        "dropbox".into(),
        toml::from_str("type = \"dropbox\"\npath = \"/B\"\napp_key = \"k\"").unwrap(),
    );
    config.databases.insert(
        "app".into(),
        toml::from_str(
            "days = [\"Mon\"]\ntime = \"02:15\"\nexternal_path = \"/media/backup\"\ndestination = \"dropbox\"",
        )
        .unwrap(),
    );
    config.devices.insert(
        "living-room-wled".into(),
        toml::from_str("type = \"wled\"\nhost = \"192.168.1.50\"").unwrap(),
    );
    config.destinations.insert(
        "aws".into(),
        toml::from_str("type = \"folder\"\npath = \"/tmp/aws\"").unwrap(),
    );
    config.google_drive.insert(
        "me".into(),
        toml::from_str("client_id = \"c\"\ndestinations = [\"aws\"]").unwrap(),
    );
    let (reg, _) = registry(&config);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples");
    let planned: [&str; 0] = [];
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let kind = text.parse::<toml::Table>().unwrap()["kind"]
            .as_str()
            .unwrap()
            .to_string();
        match scheduler::parse_schedule(&text, &file, &reg, "UTC") {
            Ok(def) => assert_eq!(def.kind, kind),
            // A kind still to be built: everything but the kind itself must be right.
            Err(e) => assert!(
                planned.contains(&kind.as_str()) && e.key.as_deref() == Some("kind"),
                "{}: {e}",
                file.display()
            ),
        }
        kinds.push(kind);
    }
    for kind in planned.iter().chain(
        [
            "noop",
            "snapshot_scan",
            "retention_prune",
            "db_dump",
            "google_delta",
        ]
        .iter(),
    ) {
        assert!(kinds.iter().any(|k| k == kind), "no example for {kind}");
    }
}
