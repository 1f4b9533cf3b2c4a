//! The faults found when offsite was tried as a full disk, a crash at the worst moment and a
//! careless operator would: each test asserts the behaviour the fault broke.
//!
//! Tests that need a small real file system mount a tmpfs, which needs root (CI runs as root);
//! elsewhere they say they were skipped, and under CI they fail instead.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use offsite::{
    app::{self, Setup},
    config::KindConfig,
    queue::{
        JobState, Store,
        state::now_ms,
        store::{Finish, FinishKind, JobFilter, JobRecord, NewJob, PruneAges},
    },
};
use serde_json::{Value, json};

use crate::{
    cli::{offsite, write_config},
    common::{Harness, data, services, test_config, wait_for},
    snapshots::{MIB, dropbox_dest, folder_dest, harness_with, wait_uploads},
    support::dropbox::{FakeDropbox, content_hash},
};

// ------------------------------------------------------------------ helpers

/// A tmpfs mounted for one test, unmounted when dropped.
pub(crate) struct Tmpfs(PathBuf);

/// True as root; otherwise says the test was skipped (and fails under CI, which runs as root).
pub(crate) fn may_mount() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run these tests as root: they mount file systems"
        );
        eprintln!("skipped: mounting a file system needs root");
    }
    root
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        if !may_mount() {
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "offsite-test"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", path.display());
        Some(Tmpfs(path.into()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An ext4 file system in an image file, loop-mounted for one test (unmounted on drop).
struct Ext4 {
    _mount: Tmpfs,
}

impl Ext4 {
    fn mount(path: &Path, image: &Path, size_mib: u64) -> Option<Ext4> {
        if !may_mount() {
            return None;
        }
        let file = std::fs::File::create(image).unwrap();
        file.set_len(size_mib * 1024 * 1024).unwrap();
        drop(file);
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4");
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "loop-mount {}", image.display());
        Some(Ext4 {
            _mount: Tmpfs(path.into()),
        })
    }
}

async fn scan(h: &Harness, destinations: &[&str]) -> JobRecord {
    let scan = h
        .enqueue(
            "snapshot_scan",
            json!({"source": "inbox", "destinations": destinations}),
        )
        .await;
    h.wait_state(scan.id, JobState::Completed).await
}

async fn uploads_jobs(store: &Store) -> Vec<JobRecord> {
    let filter = JobFilter {
        kind: Some("snapshot_upload".into()),
        ..Default::default()
    };
    store.list_jobs(&filter, 100, None).await.unwrap()
}

/// The one upload job, once there is one.
async fn the_upload(store: &Store) -> JobRecord {
    for _ in 0..2000 {
        if let Some(j) = uploads_jobs(store).await.pop() {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no upload job was enqueued");
}

/// Names of the files in `dir` (hidden ones included; no folders such as `lost+found`).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn no_upload_limit(c: &mut offsite::config::Config) {
    c.kinds.insert(
        "snapshot_upload".into(),
        KindConfig {
            max_attempts: Some(1),
            ..Default::default()
        },
    );
}

// ------------------------------------------------------------------ 1. a full destination disk

/// The destination fills up while a backup is written to it: whether a middle chunk or the
/// last one is the one that does not fit, the job is retried with backoff and says why, nothing
/// is recorded, nothing that looks like a backup is left, and it completes byte-identical once
/// there is room.
async fn full_destination_case(outbox: &Path, backup_len: usize, make_room: impl FnOnce()) {
    let outbox = outbox.to_path_buf();
    let (mut h, inbox) = harness_with(vec![("outbox", folder_dest(&outbox, 0))], |_| {}).await;
    let bytes = data(backup_len, backup_len as u64);
    std::fs::write(inbox.join("big.tar"), &bytes).unwrap();
    scan(&h, &["outbox"]).await;
    let upload = the_upload(h.store()).await;
    let failed = h.wait_state(upload.id, JobState::Retryable).await;
    let error = failed.last_error.clone().unwrap();
    assert!(error.contains("no space left"), "{error}");
    assert_eq!(failed.attempt, 1, "one attempt, then backoff: {error}");
    assert!(
        failed.scheduled_at > now_ms(),
        "retried later, not in a loop"
    );
    assert!(h.store().uploads(None, true).await.unwrap().is_empty());
    let visible: Vec<String> = files_in(&outbox)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        visible.is_empty(),
        "nothing looks like a backup: {visible:?}"
    );

    make_room();
    h.store().retry(upload.id, false).await.unwrap();
    h.running().state.executor.wake();
    let list = wait_uploads(h.store(), 1).await;
    let stored = outbox.join(list[0].remote_path.trim_start_matches('/'));
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    assert_eq!(
        list[0].sha256.as_deref(),
        Some(offsite::transfer::sha256_hex(&bytes).as_str())
    );
    h.wait_state(upload.id, JobState::Completed).await;
    let visible: Vec<String> = files_in(&outbox)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(visible.len(), 1, "{:?}", files_in(&outbox));
    assert!(
        !files_in(&outbox)
            .iter()
            .any(|n| n.ends_with(".offsite-partial")),
        "{:?}",
        files_in(&outbox)
    );
    h.stop().await;
}

#[tokio::test]
async fn a_full_destination_disk_at_a_middle_chunk_is_an_error_with_backoff_not_a_backup() {
    // The case that was found: 20 MiB tmpfs, a 22,026,240-byte backup in 4 MiB chunks.
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let Some(disk) = Tmpfs::mount(&outbox, "20m") else {
        return;
    };
    full_destination_case(&outbox, 22_026_240, || disk.resize("64m")).await;
}

#[tokio::test]
async fn a_full_destination_disk_at_the_last_chunk_is_an_error_not_a_truncated_backup() {
    // Four chunks fit, the last 3 MiB do not.
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let Some(disk) = Tmpfs::mount(&outbox, "18m") else {
        return;
    };
    full_destination_case(&outbox, 16 * MIB + 3 * MIB, || disk.resize("64m")).await;
}

#[tokio::test]
async fn a_full_ext4_destination_is_an_error_with_backoff_not_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let Some(_disk) = Ext4::mount(&outbox, &dir.path().join("disk.img"), 48) else {
        return;
    };
    // Something else takes most of the disk; the backup does not fit beside it.
    let filler = outbox.join(".other-program-data");
    std::fs::write(&filler, vec![1u8; 24 * MIB]).unwrap();
    full_destination_case(&outbox, 22_026_240, || {
        std::fs::remove_file(&filler).unwrap()
    })
    .await;
}

// ------------------------------------------------------------------ 2. a full database disk

#[tokio::test]
async fn a_full_database_disk_is_reported_and_the_worker_carries_on_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let Some(_disk) = Tmpfs::mount(&db_dir, "4m") else {
        return;
    };
    let db = db_dir.join("offsite.db");
    let mut h = Harness::start_with(|c| c.database = Some(db.clone())).await;
    let before = h.enqueue("noop", json!({})).await;
    h.wait_state(before.id, JobState::Completed).await;

    // Fill what is left of the disk.
    let filler = db_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let job = |i: usize| NewJob {
        args: json!({"steps": 0, "pad": "x".repeat(2000), "i": i}).to_string(),
        scheduled_at: Some(now_ms() + 3_600_000),
        ..plain_job(&[])
    };
    let mut error = None;
    for round in 0..200 {
        let batch: Vec<NewJob> = (0..200).map(|i| job(round * 200 + i)).collect();
        if let Err(e) = h.store().enqueue_batch(&batch).await {
            error = Some(e.to_string());
            break;
        }
    }
    let error = error.expect("the database disk never filled");
    assert!(error.contains("full"), "{error}");
    // The same failure again, not a connection stuck in a transaction.
    let again = h.store().enqueue(&job(0)).await.unwrap_err().to_string();
    assert!(
        again.contains("full") && !again.contains("transaction depth"),
        "{again}"
    );
    let health = reqwest::get(format!("{}/api/v1/health", h.base_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert!(body["problem"].as_str().unwrap().contains("full"), "{body}");
    // It stays so while the disk is full, though the dispatcher's empty transactions commit.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        let health = reqwest::get(format!("{}/api/v1/health", h.base_url()))
            .await
            .unwrap();
        assert_eq!(health.status(), 503, "health flipped back while still full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::remove_file(&filler).unwrap();
    let after = h.enqueue("noop", json!({})).await;
    h.wait_state(after.id, JobState::Completed).await;
    let health = reqwest::get(format!("{}/api/v1/health", h.base_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        h.store().job(before.id).await.unwrap().is_some(),
        "nothing stored was lost"
    );
    h.stop().await;
}

// ------------------------------------------------------------------ 3. committed, unrecorded

#[tokio::test]
async fn a_dropbox_commit_whose_answer_was_lost_is_recorded_without_sending_it_again() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness_with(vec![("dropbox", dropbox_dest(&fake, 0))], |_| {}).await;
    crate::snapshots::authorize(&h.base_url(), &fake, "dropbox").await;
    let bytes = data(10 * MIB + 5, 21);
    std::fs::write(inbox.join("nightly.tar"), &bytes).unwrap();
    // start, append, append, finish: the finish is committed, then answered with 500.
    fake.accept_then_fail(4);
    scan(&h, &["dropbox"]).await;
    let upload = the_upload(h.store()).await;
    let done = h.wait_state(upload.id, JobState::Completed).await;
    let list = wait_uploads(h.store(), 1).await;
    assert_eq!(list.len(), 1);
    assert_eq!(fake.file(&list[0].remote_path).unwrap().bytes(), bytes);
    assert_eq!(
        list[0].content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
    assert_eq!(
        fake.bytes_received(),
        bytes.len() as u64,
        "nothing was sent twice"
    );
    assert_eq!(fake.request_count("/2/files/upload_session/start"), 1);
    assert_eq!(done.attempt, 2);
    h.stop().await;
}

#[tokio::test]
async fn a_folder_upload_renamed_but_not_recorded_is_recorded_without_writing_it_again() {
    use std::os::unix::fs::MetadataExt;
    let outbox = tempfile::tempdir().unwrap().keep();
    let (mut h, inbox) = harness_with(vec![("outbox", folder_dest(&outbox, 0))], |_| {}).await;
    let bytes = data(9 * MIB + 7, 22);
    std::fs::write(inbox.join("nightly.tar"), &bytes).unwrap();
    scan(&h, &["outbox"]).await;
    let list = wait_uploads(h.store(), 1).await;
    let upload = the_upload(h.store()).await;
    h.wait_state(upload.id, JobState::Completed).await;
    let stored = outbox.join(list[0].remote_path.trim_start_matches('/'));
    let inode = std::fs::metadata(&stored).unwrap().ino();

    // As if the process died between the rename and the record.
    let mut conn = raw(&h.data_dir().join("offsite.db")).await;
    sqlx::query("delete from uploads")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    h.store().retry(upload.id, false).await.unwrap();
    h.running().state.executor.wake();
    let list = wait_uploads(h.store(), 1).await;
    assert_eq!(
        list[0].sha256.as_deref(),
        Some(offsite::transfer::sha256_hex(&bytes).as_str())
    );
    assert_eq!(
        std::fs::metadata(&stored).unwrap().ino(),
        inode,
        "not written again"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    assert_eq!(files_in(&outbox).len(), 1);
    h.stop().await;
}

// ------------------------------------------------------------------ 4. the database file

#[tokio::test]
async fn every_command_refuses_a_corrupted_database_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/offsite.db");
    {
        let store = Store::open(&db).await.unwrap();
        let jobs: Vec<NewJob> = (0..400)
            .map(|i| NewJob {
                args: json!({"steps": 1, "i": i, "pad": "y".repeat(300)}).to_string(),
                idempotency_key: Some(format!("k{i}")),
                ..plain_job(&[])
            })
            .collect();
        store.enqueue_batch(&jobs).await.unwrap();
        store.close().await;
        // Everything into the database file itself, none of it left in the WAL; and unmarked,
        // as a database from before the marking is: nothing may be written before the check.
        let mut conn = raw(&db).await;
        for sql in [
            "pragma application_id = 0",
            "pragma wal_checkpoint(truncate)",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(
        bytes.len() > 22 * 4096,
        "database too small to corrupt pages 20-22"
    );
    for b in &mut bytes[19 * 4096..22 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    for args in [
        vec!["enqueue", "noop", "--args", "{}"],
        vec!["jobs", "list"],
        vec!["run"],
    ] {
        let o = offsite(&cfg, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("is not a valid offsite database"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "never written to");
}

#[tokio::test]
async fn another_programs_database_is_refused_and_offsites_own_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("recipes.db");
    {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
            "sqlite://{}?mode=rwc",
            foreign.display()
        ))
        .await
        .unwrap();
        sqlx::query("create table recipes (name text)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let cfg = write_config(
        dir.path(),
        &format!("database = \"{}\"\n", foreign.display()),
    );
    let o = offsite(&cfg, &["jobs", "list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is not an offsite database"), "{err}");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        foreign.display()
    ))
    .await
    .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("select name from sqlite_master where type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["recipes"], "no tables were added");

    let own = tempfile::tempdir().unwrap();
    let cfg = write_config(own.path(), "");
    std::fs::create_dir_all(own.path().join("data")).unwrap();
    let o = offsite(&cfg, &["enqueue", "noop", "--args", "{}"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let db = own.path().join("data/offsite.db");
    let store = Store::open(&db).await.unwrap();
    for file in ["offsite.db", "offsite.db-wal", "offsite.db-shm"] {
        let mode = std::fs::metadata(own.path().join("data").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    store.close().await;
}

// ------------------------------------------------------------------ 5. never silently given up

#[tokio::test]
async fn an_upload_that_gave_up_is_tried_again_by_the_next_scan() {
    let outbox = tempfile::tempdir().unwrap().keep();
    let (mut h, inbox) =
        harness_with(vec![("outbox", folder_dest(&outbox, 0))], no_upload_limit).await;
    let bytes = data(5 * MIB, 23);
    std::fs::write(inbox.join("nightly.tar"), &bytes).unwrap();
    // The destination is unusable (a file where its folder should be).
    std::fs::remove_dir(&outbox).unwrap();
    std::fs::write(&outbox, b"not a folder").unwrap();
    scan(&h, &["outbox"]).await;
    let upload = the_upload(h.store()).await;
    let failed = h.wait_state(upload.id, JobState::Discarded).await;
    let error = failed.last_error.unwrap();
    assert!(error.contains(outbox.to_str().unwrap()), "{error}");

    // Fixing the cause is enough: the next scan tries it again.
    std::fs::remove_file(&outbox).unwrap();
    std::fs::create_dir(&outbox).unwrap();
    scan(&h, &["outbox"]).await;
    let done = h.wait_state(upload.id, JobState::Completed).await;
    assert_eq!(done.attempt, 2);
    let list = wait_uploads(h.store(), 1).await;
    let stored = outbox.join(list[0].remote_path.trim_start_matches('/'));
    assert_eq!(std::fs::read(stored).unwrap(), bytes);
    assert_eq!(
        uploads_jobs(h.store()).await.len(),
        1,
        "the same job, not a new one"
    );
    h.stop().await;
}

// ------------------------------------------------------------------ 6. leftovers

#[tokio::test]
async fn a_vanished_backup_leaves_no_partial_file_and_opens_no_dropbox_session() {
    let fake = FakeDropbox::start().await;
    let outbox = tempfile::tempdir().unwrap().keep();
    let (mut h, _inbox) = harness_with(
        vec![
            ("outbox", folder_dest(&outbox, 0)),
            ("dropbox", dropbox_dest(&fake, 0)),
        ],
        |_| {},
    )
    .await;
    crate::snapshots::authorize(&h.base_url(), &fake, "dropbox").await;
    for dest in ["outbox", "dropbox"] {
        let job = h
            .enqueue(
                "snapshot_upload",
                json!({"source": "inbox", "destination": dest, "backup": "gone.tar",
                       "name": "gone", "date": "2026-11-30T03:00:00Z"}),
            )
            .await;
        h.wait_state(job.id, JobState::Cancelled).await;
    }
    assert_eq!(files_in(&outbox), Vec::<String>::new());
    assert_eq!(fake.request_count("/2/files/upload_session/start"), 0);
    h.stop().await;
}

#[tokio::test]
async fn partial_files_go_when_their_upload_is_discarded_and_orphans_go_at_start_up() {
    let outbox = tempfile::tempdir().unwrap().keep();
    let orphan = outbox.join(".crashed_2026-11-01T03-00-00Z.tar.offsite-partial");
    std::fs::write(&orphan, b"half a backup").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // Just made by another instance on the same database: left alone.
    let fresh = outbox.join(".other-instance_2026-11-01T04-00-00Z.tar.offsite-partial");
    std::fs::write(&fresh, b"").unwrap();
    let (mut h, inbox) = harness_with(vec![("outbox", folder_dest(&outbox, 0))], |c| {
        no_upload_limit(c);
        c.destinations
            .get_mut("outbox")
            .unwrap()
            .throttle_bytes_per_sec = 4 * MIB as u64;
    })
    .await;
    assert!(!orphan.exists(), "an orphan is removed at start-up");
    assert!(
        fresh.exists(),
        "a partial only just made is not an orphan yet"
    );
    std::fs::remove_file(&fresh).unwrap();

    let source = inbox.join("nightly.tar");
    std::fs::write(&source, data(16 * MIB, 24)).unwrap();
    scan(&h, &["outbox"]).await;
    let upload = the_upload(h.store()).await;
    wait_for(h.store(), upload.id, |j| {
        j.checkpoint
            .as_ref()
            .and_then(|c| c["offset"].as_u64())
            .is_some_and(|o| o >= 4 * MIB as u64)
    })
    .await;
    assert_eq!(files_in(&outbox).len(), 1, "the upload's partial file");
    // The backup changes under the upload: the attempt fails and, with no attempts left,
    // the job is discarded.
    std::fs::write(&source, data(MIB, 25)).unwrap();
    h.wait_state(upload.id, JobState::Discarded).await;
    // The clean-up runs once the end is recorded.
    for _ in 0..2000 {
        if files_in(&outbox).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        files_in(&outbox),
        Vec::<String>::new(),
        "nothing left behind"
    );
    h.stop().await;
}

// ------------------------------------------------------------------ 7-12. the engine

/// Claims for `owner` as a worker's dispatcher does, without starting anything.
async fn claim(store: &Store, owner: &str, n: i64) -> Vec<offsite::queue::store::ClaimedJob> {
    store
        .finish_and_claim(
            &[],
            &[],
            &[("default".into(), n)],
            owner,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .2
}

async fn start(store: &Store, owner: &str, jobs: &[&offsite::queue::store::ClaimedJob]) {
    let starts: Vec<(i64, i64, i64)> = jobs
        .iter()
        .map(|j| (j.id, j.lease_token, now_ms()))
        .collect();
    let (started, _, _) = store
        .finish_and_claim(&starts, &[], &[], owner, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(started.len(), jobs.len());
}

fn plain_job(tags: &[&str]) -> NewJob {
    NewJob {
        kind: "noop".into(),
        queue: "default".into(),
        args: "{}".into(),
        priority: 2,
        max_attempts: 1,
        scheduled_at: None,
        idempotency_key: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_claimed_job_that_never_started_is_handed_back_without_using_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    for _ in 0..3 {
        store.enqueue(&plain_job(&[])).await.unwrap();
    }
    let claimed = claim(&store, "w", 3).await;
    assert_eq!(claimed.len(), 3);
    start(&store, "w", &[&claimed[0]]).await;
    // The process dies; at restart it takes back its own jobs.
    store.rescue(Some("w")).await.unwrap();
    let started = store.job(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(
        started.state,
        JobState::Discarded,
        "the started one used its only attempt"
    );
    for never in &claimed[1..] {
        let job = store.job(never.id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Available, "{job:?}");
        assert_eq!(job.attempt, 0);
        assert!(job.last_error.is_none());
        assert!(store.attempts(never.id).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn kill_9_with_claimed_ahead_jobs_discards_none_that_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[queues.default]\nconcurrency = 1\n");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/offsite.db");
    let store = Store::open(&db).await.unwrap();
    let jobs: Vec<NewJob> = (0..300)
        .map(|_| NewJob {
            args: json!({"steps": 1, "step_ms": 3}).to_string(),
            ..plain_job(&[])
        })
        .collect();
    store.enqueue_batch(&jobs).await.unwrap();
    let log = dir.path().join("log");
    let mut worker = crate::snapshots::spawn(&cfg, &log);
    let done = |s: Store| async move { s.count_in_state(JobState::Completed).await.unwrap() };
    for _ in 0..3000 {
        if done(store.clone()).await >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    let running = store
        .list_jobs(
            &JobFilter {
                states: vec![JobState::Running],
                ..Default::default()
            },
            500,
            None,
        )
        .await
        .unwrap();
    let executing = running.iter().filter(|j| j.attempted_at.is_some()).count();
    assert!(
        executing <= 1,
        "{executing} jobs marked as executing with one slot"
    );

    let worker = crate::snapshots::spawn(&cfg, &log);
    for _ in 0..6000 {
        let finished = store.count_in_state(JobState::Completed).await.unwrap()
            + store.count_in_state(JobState::Discarded).await.unwrap();
        if finished == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let discarded = store.count_in_state(JobState::Discarded).await.unwrap();
    assert!(
        discarded <= 1,
        "{discarded} jobs discarded as lease lost; only the one executing may be"
    );
    assert_eq!(
        store.count_in_state(JobState::Completed).await.unwrap() + discarded,
        300
    );
    crate::snapshots::stop(worker);
}

/// The attempt of `job` ends waiting an hour "for authorization" (no attempt used).
async fn snooze_an_hour(store: &Store, job: &offsite::queue::store::ClaimedJob) {
    let snooze = Finish {
        job_id: job.id,
        lease_token: job.lease_token,
        at: now_ms(),
        how: FinishKind::Snooze {
            at: now_ms() + 3_600_000,
            reason: "the destination is waiting for authorization".into(),
        },
    };
    store
        .finish_and_claim(&[], &[snooze], &[], "w", Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_snooze_as_its_destination_is_authorized_is_not_parked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    // A kind that names two destinations waits on both.
    let job = store
        .enqueue(&plain_job(&["destination:a", "destination:b"]))
        .await
        .unwrap()
        .job;
    let claimed = claim(&store, "w", 1).await;
    start(&store, "w", &[&claimed[0]]).await;
    // The attempt found `b` unauthorized; `b` is authorized before its snooze is written.
    assert_eq!(store.wake_tag("destination:b").await.unwrap(), 0);
    snooze_an_hour(&store, &claimed[0]).await;
    let parked = store.job(job.id).await.unwrap().unwrap();
    assert!(
        parked.scheduled_at <= now_ms(),
        "parked for an hour after the wake: {parked:?}"
    );

    // A wake before the attempt began says nothing about what the attempt found: parked.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let earlier = store
        .enqueue(&plain_job(&["destination:d"]))
        .await
        .unwrap()
        .job;
    store.wake_tag("destination:d").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let claimed = claim(&store, "w", 1).await;
    assert_eq!(claimed[0].id, earlier.id);
    start(&store, "w", &[&claimed[0]]).await;
    snooze_an_hour(&store, &claimed[0]).await;
    let parked = store.job(earlier.id).await.unwrap().unwrap();
    assert!(parked.scheduled_at > now_ms() + 3_000_000, "{parked:?}");

    // And a waiting job is woken by either of its destinations.
    let other = store
        .enqueue(&NewJob {
            scheduled_at: Some(now_ms() + 3_600_000),
            ..plain_job(&["destination:a", "destination:c"])
        })
        .await
        .unwrap()
        .job;
    assert_eq!(store.wake_tag("destination:c").await.unwrap(), 1);
    let woken = store.job(other.id).await.unwrap().unwrap();
    assert_eq!(woken.state, JobState::Available);
}

#[tokio::test]
async fn started_work_resumes_before_new_work_and_a_cancel_while_down_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let first = store
        .enqueue(&NewJob {
            max_attempts: 5,
            ..plain_job(&[])
        })
        .await
        .unwrap()
        .job;
    let doomed = store
        .enqueue(&NewJob {
            max_attempts: 5,
            ..plain_job(&[])
        })
        .await
        .unwrap()
        .job;
    let claimed = claim(&store, "w", 2).await;
    start(&store, "w", &claimed.iter().collect::<Vec<_>>()).await;
    // An operator cancels one while the worker is down.
    store.cancel(doomed.id).await.unwrap();
    for _ in 0..5 {
        store.enqueue(&plain_job(&[])).await.unwrap();
    }
    store.rescue(Some("w")).await.unwrap();
    assert_eq!(
        store.job(doomed.id).await.unwrap().unwrap().state,
        JobState::Cancelled,
        "it runs no further step"
    );
    let next = claim(&store, "w2", 1).await;
    assert_eq!(
        next[0].id, first.id,
        "the started job comes before new ones"
    );
}

#[tokio::test]
async fn a_second_worker_with_the_same_instance_id_on_one_database_refuses_to_start() {
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("offsite.db");
    let mut first = Harness::start_with(|c| c.database = Some(db.clone())).await;
    let other = tempfile::tempdir().unwrap();
    let mut config = test_config(other.path());
    config.database = Some(db.clone());
    let services = services(&config);
    let (registry, _events) = crate::common::registry_with(&config, services.clone());
    let setup = Setup::with(config, registry, services).unwrap();
    let err = match app::start(setup).await {
        Ok(_) => panic!("a second worker with the same instance id started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("instance id \"test-worker\"") && err.contains("instance_id"),
        "{err}"
    );
    first.stop().await;
}

pub(crate) async fn raw(db: &Path) -> sqlx::SqliteConnection {
    <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn pruned_jobs_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    // A database from before incremental auto-vacuum: offsite converts it when it opens it.
    {
        let store = Store::open(&db).await.unwrap();
        store.close().await;
        let mut conn = raw(&db).await;
        for sql in ["pragma auto_vacuum = none", "vacuum"] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        let mode: i64 = sqlx::query_scalar("pragma auto_vacuum")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(mode, 0);
    }
    let store = Store::open(&db).await.unwrap();
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|i| NewJob {
            args: json!({"i": i, "pad": "z".repeat(400)}).to_string(),
            ..plain_job(&[])
        })
        .collect();
    for batch in jobs.chunks(5000) {
        store.enqueue_batch(batch).await.unwrap();
    }
    // All finished long ago, and everything written into the file itself.
    let mut conn = raw(&db).await;
    sqlx::query("update jobs set state = 'completed', finalized_at = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("pragma wal_checkpoint(truncate)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let peak = size(&db);
    assert!(peak > 8 * 1024 * 1024, "the file grew to {peak} bytes");
    let pruned = store
        .prune(&PruneAges {
            completed: Some(Duration::from_secs(1)),
            cancelled: None,
            discarded: None,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 20_000);
    let after = size(&db);
    assert!(
        after < peak / 4,
        "the file stayed at {after} bytes after pruning everything (was {peak})"
    );
}

// ------------------------------------------------------------------ 17. secrets in error texts

#[tokio::test]
async fn a_token_echoed_in_an_error_is_masked_in_the_log_the_database_and_the_api() {
    let token = "supervisor-token-echoed-0123456789";
    let sup = crate::support::supervisor::FakeSupervisor::start(token).await;
    sup.echo_token_in_error(1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data\"\n[api]\nenabled = false\n\
             [sources.ha]\ntype = \"supervisor\"\nurl = \"{}\"\ntoken = \"{token}\"\n\
             [destinations.outbox]\ntype = \"folder\"\npath = \"{}\"\n\
             [snapshots]\nsource = \"ha\"\ndestinations = [\"outbox\"]\n",
            sup.base_url(),
            outbox.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let log = dir.path().join("log");
    let worker = crate::snapshots::spawn(&cfg, &log);
    let store = Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    // The start-up scan meets the echoing answer and fails (to be retried).
    let mut scan = None;
    for _ in 0..2000 {
        let jobs = store
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.kind == "snapshot_scan" && j.last_error.is_some())
        {
            scan = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scan = scan.expect("the scan never failed");
    crate::snapshots::stop(worker);
    let error = scan.last_error.unwrap();
    assert!(error.contains("Authorization: Bearer ***"), "{error}");
    let attempts = store.attempts(scan.id).await.unwrap();
    assert!(
        attempts
            .iter()
            .all(|a| !a.error.as_deref().unwrap_or("").contains(token))
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Authorization: Bearer ***"), "{logged}");
    assert!(!logged.contains(token), "the log holds the token");
    let db = std::fs::read(dir.path().join("data/offsite.db")).unwrap();
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "the database file holds the token"
    );
    // API answers go through the same mechanism (here the secret is made in this process).
    let _configured = offsite::config::Secret::new(token);
    let problem = offsite::api::error::ApiError::BadRequest(format!("refused: {token}")).problem();
    assert_eq!(problem.detail, "refused: ***");
}

#[tokio::test]
async fn home_assistant_is_told_when_a_backup_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let config = test_config(dir.path());
    let services = services(&config);
    let registry = offsite::jobs::registry_with(&config, services.clone()).unwrap();
    let job = store
        .enqueue(&NewJob {
            max_attempts: 20,
            ..plain_job(&[])
        })
        .await
        .unwrap()
        .job;
    let error = "no space left on the device: cannot write /backups/.x.tar.offsite-partial";
    for attempt in 1..=2 {
        let claimed = claim(&store, "w", 1).await;
        start(&store, "w", &[&claimed[0]]).await;
        let retry = Finish {
            job_id: job.id,
            lease_token: claimed[0].lease_token,
            at: now_ms(),
            how: FinishKind::Retry {
                at: now_ms(),
                error: error.into(),
            },
        };
        store
            .finish_and_claim(&[], &[retry], &[], "w", Duration::from_secs(60))
            .await
            .unwrap();
        let wanted = offsite::homeassistant::wanted_notifications(&store, &services, &registry)
            .await
            .unwrap();
        let notice = wanted.iter().find(|n| n.id == "offsite_retrying_jobs");
        match attempt {
            1 => assert!(notice.is_none(), "one failure is not news yet"),
            _ => {
                let notice = notice.expect("the second failure in a row is reported");
                assert!(notice.message.contains(error), "{}", notice.message);
                assert!(
                    notice.message.contains("failed 2 times"),
                    "{}",
                    notice.message
                );
            }
        }
    }
}

#[tokio::test]
async fn the_panel_shows_a_claimed_ahead_job_as_queued_not_running() {
    let mut h = Harness::start().await;
    // Claimed by another worker's dispatcher (one serving a queue this one does not), not yet
    // started by any of its workers.
    let job = h
        .store()
        .enqueue(&NewJob {
            queue: "spare".into(),
            ..plain_job(&[])
        })
        .await
        .unwrap()
        .job;
    let claimed = h
        .store()
        .finish_and_claim(
            &[],
            &[],
            &[("spare".into(), 1)],
            "elsewhere",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .2;
    assert_eq!(claimed[0].id, job.id);
    let html = reqwest::get(format!("{}/", h.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = format!("data-job=\"{}\" data-state=", job.id);
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("job not on the panel: {html}"));
    assert!(
        html[at + marker.len()..].starts_with("\"claimed\""),
        "{}",
        &html[at..at + 200]
    );
    h.stop().await;
}
