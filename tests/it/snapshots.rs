//! snapshot_scan / snapshot_upload / retention_prune end to end: folder and Supervisor sources,
//! folder and Dropbox destinations (the fakes in tests/support), authorization, crash resume.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use offsite::{
    config::{DestinationConfig, DestinationKind, SnapshotsConfig, SourceConfig},
    destinations::dropbox::{DropboxClient, DropboxSettings, Pkce},
    queue::{EnqueueRequest, JobState, Store, store::UploadRecord},
};
use reqwest::Client;
use serde_json::{Value, json};

use crate::{
    common::{Harness, data, json_of},
    support::{
        dropbox::{DEFAULT_CLIENT_ID, FakeDropbox, content_hash},
        supervisor::FakeSupervisor,
    },
};

pub(crate) const MIB: usize = 1024 * 1024;

pub(crate) fn folder_dest(path: &Path, max_backups: u32) -> DestinationConfig {
    toml::from_str(&format!(
        "type = \"folder\"\npath = \"{}\"\nchunk_mib = 4\nmax_backups = {max_backups}\n",
        path.display()
    ))
    .unwrap()
}

pub(crate) fn dropbox_dest(fake: &FakeDropbox, max_backups: u32) -> DestinationConfig {
    let base = fake.base_url();
    let d: DestinationConfig = toml::from_str(&format!(
        "type = \"dropbox\"\npath = \"/HomeAssistant/Backups\"\nchunk_mib = 4\nmax_backups = {max_backups}\n\
         app_key = \"{DEFAULT_CLIENT_ID}\"\napi_url = \"{base}\"\ncontent_url = \"{base}\"\nauthorize_url = \"{base}/oauth2/authorize\"\n"
    ))
    .unwrap();
    d
}

pub(crate) fn snapshots(source: &str, destinations: &[&str]) -> SnapshotsConfig {
    SnapshotsConfig {
        enabled: true,
        source: source.into(),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
        scan_on_start: false,
        schedule: toml::from_str("every = \"1h\"").unwrap(),
    }
}

/// A worker with an inbox folder source and the given destinations, scanned by `[snapshots]`.
pub(crate) async fn harness(dests: Vec<(&str, DestinationConfig)>) -> (Harness, PathBuf) {
    let names: Vec<String> = dests.iter().map(|(n, _)| n.to_string()).collect();
    harness_with(dests, move |c| {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        c.snapshots = Some(snapshots("inbox", &refs));
    })
    .await
}

/// A worker with an inbox folder source and the given destinations (uploads one at a time),
/// with `tweak` applied to its configuration; returns it and the inbox.
pub(crate) async fn harness_with(
    dests: Vec<(&str, DestinationConfig)>,
    tweak: impl FnOnce(&mut offsite::config::Config),
) -> (Harness, PathBuf) {
    let inbox = tempfile::tempdir().unwrap().keep();
    let inbox_path = inbox.clone();
    let h = Harness::start_with(move |c| {
        c.sources
            .insert("inbox".into(), SourceConfig::Folder { path: inbox_path });
        for (name, d) in dests {
            c.destinations.insert(name.into(), d);
        }
        c.queues.insert(
            "uploads".into(),
            offsite::config::QueueConfig { concurrency: 1 },
        );
        tweak(c);
    })
    .await;
    (h, inbox)
}

pub(crate) async fn authorize(base: &str, fake: &FakeDropbox, dest: &str) {
    let c = Client::new();
    let r: Value = json_of(c.post(format!("{base}/api/v1/destinations/{dest}/authorize"))).await;
    let url = url::Url::parse(r["authorize_url"].as_str().unwrap()).unwrap();
    let challenge = url
        .query_pairs()
        .find(|(k, _)| k == "code_challenge")
        .unwrap()
        .1
        .to_string();
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "token_access_type" && v == "offline")
    );
    let code = fake.issue_auth_code(&challenge);
    let r = c
        .post(format!("{base}/api/v1/destinations/{dest}/authorize/code"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["authorized"], true);
}

pub(crate) async fn wait_uploads(store: &Store, n: usize) -> Vec<UploadRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = store.uploads(None, true).await.unwrap();
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} uploads recorded",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn back_up_now(base: &str) -> i64 {
    let r = Client::new()
        .post(format!("{base}/api/v1/snapshots/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["job"]["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn dropbox_upload_in_chunks_is_byte_identical_with_matching_hash_and_happens_once() {
    let fake = FakeDropbox::start().await;
    fake.require_4mib_multiples(true);
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 0))]).await;
    let bytes = data(10 * MIB + 5, 1);
    std::fs::write(inbox.join("ha-backup.tar"), &bytes).unwrap();

    // Not authorized yet: the upload waits without using attempts.
    let base = h.base_url();
    let dests: Value = json_of(Client::new().get(format!("{base}/api/v1/destinations"))).await;
    assert_eq!(dests[0]["authorized"], false);
    back_up_now(&base).await;
    let upload = crate::common::wait_for(h.store(), 2, |j| j.state == JobState::Scheduled).await;
    assert_eq!(upload.kind, "snapshot_upload");
    assert_eq!(upload.attempt, 0);
    assert!(upload.last_error.unwrap().contains("authorization"));

    authorize(&base, &fake, "dropbox").await;
    let list = wait_uploads(h.store(), 1).await;
    let u = &list[0];
    assert!(
        u.remote_path
            .starts_with("/HomeAssistant/Backups/ha-backup_"),
        "{u:?}"
    );
    let stored = fake.file(&u.remote_path).expect("file on Dropbox");
    assert_eq!(stored.bytes(), bytes);
    assert_eq!(stored.content_hash, content_hash(&bytes));
    assert_eq!(
        u.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
    assert_eq!(u.size, bytes.len() as i64);
    let done = h.wait_state(upload.id, JobState::Completed).await;
    assert_eq!(done.progress.unwrap()["done"], bytes.len());

    // Scanning again finds nothing new: a backup goes to a destination once.
    let calls = fake.upload_calls();
    let scan = back_up_now(&base).await;
    h.wait_state(scan, JobState::Completed).await;
    assert_eq!(fake.upload_calls(), calls);
    let api: Value = json_of(Client::new().get(format!("{base}/api/v1/uploads"))).await;
    assert_eq!(api.as_array().unwrap().len(), 1);
    assert!(!api.to_string().contains("access_token"));
    h.stop().await;
}

#[tokio::test]
async fn destination_further_along_than_the_checkpoint_is_followed_not_restarted() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 0))]).await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    let bytes = data(16 * MIB + 100, 2);
    std::fs::write(inbox.join("b.tar"), &bytes).unwrap();
    // Upload calls: 1 start, 2 first append, 3 second append — stored, but answered 500.
    fake.accept_then_fail(3);
    back_up_now(&h.base_url()).await;
    let list = wait_uploads(h.store(), 1).await;
    assert_eq!(fake.file(&list[0].remote_path).unwrap().bytes(), bytes);
    assert_eq!(
        list[0].content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
    let job = list[0].job_id.unwrap();
    let attempts = h.store().attempts(job).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        fake.upload_calls() <= 8,
        "continued at the server's offset instead of from zero"
    );
    h.stop().await;
}

#[tokio::test]
async fn expired_token_is_refreshed_and_a_revoked_one_waits_for_authorization() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 0))]).await;
    let base = h.base_url();
    authorize(&base, &fake, "dropbox").await;
    std::fs::write(inbox.join("one.tar"), data(MIB, 3)).unwrap();
    fake.expire_access_tokens();
    back_up_now(&base).await;
    wait_uploads(h.store(), 1).await;
    assert!(
        fake.token_grants("refresh_token") >= 1,
        "the expired access token was refreshed"
    );

    // Revoked: the job waits, unburnt, and the destination says it needs authorization.
    fake.revoke_refresh_tokens();
    fake.expire_access_tokens();
    std::fs::write(inbox.join("two.tar"), data(MIB, 4)).unwrap();
    let scan = back_up_now(&base).await;
    h.wait_state(scan, JobState::Completed).await;
    let waiting = h
        .store()
        .list_jobs(&Default::default(), 10, None)
        .await
        .unwrap();
    let upload = waiting
        .iter()
        .find(|j| j.kind == "snapshot_upload" && j.state != JobState::Completed)
        .unwrap()
        .id;
    let parked =
        crate::common::wait_for(h.store(), upload, |j| j.state == JobState::Scheduled).await;
    assert_eq!(parked.attempt, 0);
    let dests: Value = json_of(Client::new().get(format!("{base}/api/v1/destinations"))).await;
    assert_eq!(dests[0]["authorized"], false);

    authorize(&base, &fake, "dropbox").await;
    h.wait_state(upload, JobState::Completed).await;
    assert_eq!(wait_uploads(h.store(), 2).await.len(), 2);
    h.stop().await;
}

fn set_mtime(path: &Path, days_ago: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(days_ago * 86_400))
        .unwrap();
}

#[tokio::test]
async fn retention_keeps_the_newest_by_backup_date_and_never_touches_foreign_files() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 2))]).await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    let foreign = "/HomeAssistant/Backups/someone-elses.tar";
    fake.put_file(
        foreign,
        b"not ours",
        chrono::Utc::now() - chrono::Duration::days(30),
    );
    for (i, age) in [(0u64, 3u64), (1, 1), (2, 2)] {
        let p = inbox.join(format!("b{i}.tar"));
        std::fs::write(&p, data(100_000, i + 10)).unwrap();
        set_mtime(&p, age);
    }
    back_up_now(&h.base_url()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = h.store().uploads(None, true).await.unwrap();
        if all.len() == 3 && all.iter().filter(|u| u.deleted_at.is_some()).count() == 1 {
            let deleted = all.iter().find(|u| u.deleted_at.is_some()).unwrap();
            assert_eq!(deleted.backup_slug, "b0", "the oldest by backup date went");
            assert!(fake.file(&deleted.remote_path).is_none());
            break;
        }
        assert!(Instant::now() < deadline, "retention did not run: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fake.file(foreign).is_some(),
        "a file offsite did not upload is never deleted"
    );

    // Dry run: says what would go, deletes nothing.
    let state = &h.running().state;
    let dry = state
        .registry
        .prepare(&EnqueueRequest {
            kind: "retention_prune".into(),
            args: json!({"destination": "dropbox", "dry_run": true}),
            ..Default::default()
        })
        .unwrap();
    let dry = state.store.enqueue(&dry).await.unwrap().job;
    state.executor.wake();
    let done = h.wait_state(dry.id, JobState::Completed).await;
    assert_eq!(done.checkpoint.unwrap()["would_delete"], json!([]));

    // A failing listing deletes nothing.
    let p = inbox.join("b3.tar");
    std::fs::write(&p, data(1000, 13)).unwrap();
    set_mtime(&p, 5);
    fake.fail_request(1, 500);
    let prune = state
        .registry
        .prepare(&EnqueueRequest {
            kind: "retention_prune".into(),
            args: json!({"destination": "dropbox"}),
            ..Default::default()
        })
        .unwrap();
    let prune = state.store.enqueue(&prune).await.unwrap().job;
    state.executor.wake();
    let failed = h.wait_state(prune.id, JobState::Retryable).await;
    assert!(failed.checkpoint.is_none(), "nothing was deleted");
    assert_eq!(fake.files().len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn supervisor_backup_goes_to_dropbox_and_a_vanished_one_is_cancelled() {
    let fake = FakeDropbox::start().await;
    let sup = FakeSupervisor::start("supervisor-token-123").await;
    let bytes = data(5 * MIB + 7, 5);
    sup.add_backup(
        "a1b2c3d4",
        "Full Backup 2026.11.22",
        "2026-11-22T03:00:00.000000+00:00",
        bytes.clone(),
    );
    let sup_url = sup.base_url();
    let dest = dropbox_dest(&fake, 0);
    let mut h = Harness::start_with(move |c| {
        c.sources.insert(
            "ha".into(),
            SourceConfig::Supervisor {
                url: sup_url,
                token: Some(offsite::config::Secret::new("supervisor-token-123")),
            },
        );
        c.destinations.insert("dropbox".into(), dest);
        c.snapshots = Some(snapshots("ha", &["dropbox"]));
        c.queues.insert(
            "uploads".into(),
            offsite::config::QueueConfig { concurrency: 1 },
        );
    })
    .await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    back_up_now(&h.base_url()).await;
    let list = wait_uploads(h.store(), 1).await;
    assert_eq!(list[0].backup_slug, "a1b2c3d4");
    assert_eq!(
        list[0].remote_path,
        "/HomeAssistant/Backups/Full_Backup_2026.11.22_2026-11-22T03-00-00Z.tar"
    );
    assert_eq!(fake.file(&list[0].remote_path).unwrap().bytes(), bytes);

    let gone = h
        .enqueue(
            "snapshot_upload",
            json!({"source": "ha", "destination": "dropbox", "backup": "deadbeef", "name": "x", "date": "2026-11-01T00:00:00Z"}),
        )
        .await;
    let done = h.wait_state(gone.id, JobState::Cancelled).await;
    assert!(done.last_error.unwrap().contains("no longer exists"));
    assert_eq!(done.attempt, 1, "not retried");
    h.stop().await;
}

// ---------------------------------------------------------------- the real binary

pub(crate) fn spawn(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(crate::cli::bin())
        .current_dir(cfg.parent().unwrap())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub(crate) fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn folder_to_folder_through_the_binary_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let bytes = data(9 * MIB + 123, 6);
    std::fs::write(inbox.join("nightly.tar"), &bytes).unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data\"\n[api]\nenabled = false\n\
             [sources.inbox]\ntype = \"folder\"\npath = \"{0}\"\n\
             [destinations.outbox]\ntype = \"folder\"\npath = \"{1}\"\nchunk_mib = 4\n\
             [snapshots]\nsource = \"inbox\"\ndestinations = [\"outbox\"]\n",
            inbox.display(),
            outbox.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let worker = spawn(&cfg, &dir.path().join("log"));
    let store = Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    let list = wait_uploads(&store, 1).await;
    let copied = outbox.join(list[0].remote_path.trim_start_matches('/'));
    assert_eq!(std::fs::read(&copied).unwrap(), bytes);
    assert_eq!(
        list[0].sha256.as_deref(),
        Some(offsite::transfer::sha256_hex(&bytes).as_str())
    );
    let leftovers: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no partial files left: {leftovers:?}");
    stop(worker);
}

#[tokio::test]
async fn kill_9_mid_upload_resumes_from_the_last_acknowledged_chunk() {
    let fake = FakeDropbox::start().await;
    fake.require_4mib_multiples(true);
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let bytes = data(24 * MIB + 1000, 7);
    std::fs::write(inbox.join("big.tar"), &bytes).unwrap();
    let base = fake.base_url();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data\"\n[api]\nenabled = false\n[engine]\nlease = \"10m\"\n\
             [sources.inbox]\ntype = \"folder\"\npath = \"{0}\"\n\
             [destinations.dropbox]\ntype = \"dropbox\"\npath = \"/Backups\"\nchunk_mib = 4\n\
             throttle_bytes_per_sec = 4194304\napp_key = \"{DEFAULT_CLIENT_ID}\"\n\
             api_url = \"{base}\"\ncontent_url = \"{base}\"\n\
             [snapshots]\nsource = \"inbox\"\ndestinations = [\"dropbox\"]\n",
            inbox.display()
        ),
    )
    .unwrap();
    // Authorize the way `offsite auth` does, into the worker's credential file.
    let client = DropboxClient::new(
        DropboxSettings {
            app_key: DEFAULT_CLIENT_ID.into(),
            app_secret: None,
            api_url: base.clone(),
            content_url: base.clone(),
            authorize_url: format!("{base}/oauth2/authorize"),
        },
        offsite::jobs::services::token_file(&dir.path().join("data"), "dropbox"),
        reqwest::Client::new(),
    );
    let pkce = Pkce::generate();
    client
        .exchange_code(&fake.issue_auth_code(&pkce.challenge), &pkce.verifier, None)
        .await
        .unwrap();

    let log = dir.path().join("log");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let worker = spawn(&cfg, &log);
    let store = Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    let offset = |j: &offsite::queue::store::JobRecord| {
        j.checkpoint
            .as_ref()
            .and_then(|c| c["offset"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = store
            .list_jobs(&Default::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.kind == "snapshot_upload" && offset(j) >= 8 * MIB as u64)
        {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "upload never got going: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut worker = worker;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let acknowledged = offset(&store.job(job.id).await.unwrap().unwrap());

    let worker = spawn(&cfg, &log);
    let list = wait_uploads(&store, 1).await;
    let stored = fake.file(&list[0].remote_path).unwrap();
    assert_eq!(stored.bytes(), bytes, "byte-identical after the crash");
    assert_eq!(stored.content_hash, content_hash(&bytes));
    let cp = store.job(job.id).await.unwrap().unwrap();
    let attempts = store.attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 2, "killed once, resumed once");
    let sent_twice = fake.bytes_received() - bytes.len() as u64;
    assert!(
        sent_twice <= 4 * MIB as u64,
        "resent {sent_twice} bytes: more than one chunk (acknowledged {acknowledged})"
    );
    assert!(acknowledged >= 8 * MIB as u64 && cp.state == JobState::Completed);
    stop(worker);
}

#[tokio::test]
async fn each_backup_goes_to_every_destination_once() {
    let fake = FakeDropbox::start().await;
    let out = tempfile::tempdir().unwrap().keep();
    let (mut h, inbox) = harness(vec![
        ("dropbox", dropbox_dest(&fake, 0)),
        ("nas", folder_dest(&out, 0)),
    ])
    .await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    let bytes = data(5 * MIB, 8);
    std::fs::write(inbox.join("x.tar"), &bytes).unwrap();
    back_up_now(&h.base_url()).await;
    let list = wait_uploads(h.store(), 2).await;
    let by = |d: &str| list.iter().find(|u| u.destination == d).unwrap().clone();
    assert_eq!(
        fake.file(&by("dropbox").remote_path).unwrap().bytes(),
        bytes
    );
    assert_eq!(
        std::fs::read(out.join(by("nas").remote_path.trim_start_matches('/'))).unwrap(),
        bytes
    );
    assert_eq!(by("dropbox").sha256, by("nas").sha256);
    assert_eq!(
        by("nas").sha256.as_deref(),
        Some(offsite::transfer::sha256_hex(&bytes).as_str())
    );
    let keys: Vec<String> = h
        .store()
        .list_jobs(&Default::default(), 20, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == "snapshot_upload")
        .filter_map(|j| j.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.contains(&"snapshot:nas:x".to_string())
            && keys.contains(&"snapshot:dropbox:x".to_string()),
        "{keys:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn redirect_flow_authorizes_through_callback_and_rejects_a_forged_state() {
    let fake = FakeDropbox::start().await;
    let mut dest = dropbox_dest(&fake, 0);
    let DestinationKind::Dropbox(dropbox) = &mut dest.kind else {
        unreachable!()
    };
    dropbox.redirect_uri = Some("https://ha.example/api/hassio_ingress/x/callback".into());
    let (mut h, _) = harness(vec![("dropbox", dest)]).await;
    let base = h.base_url();
    let c = Client::new();
    let r: Value = json_of(c.post(format!("{base}/api/v1/destinations/dropbox/authorize"))).await;
    let url = url::Url::parse(r["authorize_url"].as_str().unwrap()).unwrap();
    let q = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_string())
    };
    assert_eq!(
        q("redirect_uri").as_deref(),
        Some("https://ha.example/api/hassio_ingress/x/callback")
    );
    let state = q("state").unwrap();
    let code = fake.issue_auth_code(&q("code_challenge").unwrap());

    let forged = c
        .get(format!("{base}/callback?code={code}&state=not-{state}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let denied = c
        .get(format!(
            "{base}/callback?error=access_denied&error_description=The+user+said+no"
        ))
        .send()
        .await
        .unwrap();
    // The page says what offsite knows, never text a link put there.
    let denied = denied.text().await.unwrap();
    assert!(denied.contains("Access was denied") && !denied.contains("The user said no"));

    let ok = c
        .get(format!("{base}/callback?code={code}&state={state}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("authorized"));
    let dests: Value = json_of(c.get(format!("{base}/api/v1/destinations"))).await;
    assert_eq!(dests[0]["authorized"], true);
    h.stop().await;
}

#[tokio::test]
async fn rate_limit_waits_for_retry_after_without_using_an_attempt() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 0))]).await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    std::fs::write(inbox.join("r.tar"), data(MIB, 9)).unwrap();
    fake.rate_limit_next(1, 1);
    back_up_now(&h.base_url()).await;
    let list = wait_uploads(h.store(), 1).await;
    let job = h
        .store()
        .job(list[0].job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.attempt, 1, "the 429 did not use an attempt");
    let outcomes: Vec<_> = h
        .store()
        .attempts(job.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(format!("{:?}", outcomes[0]), "Snoozed");
    h.stop().await;
}

#[tokio::test]
async fn a_backup_is_not_uploaded_again_after_its_job_was_pruned() {
    let out = tempfile::tempdir().unwrap().keep();
    let (mut h, inbox) = harness(vec![("nas", folder_dest(&out, 0))]).await;
    std::fs::write(inbox.join("kept.tar"), data(1000, 20)).unwrap();
    back_up_now(&h.base_url()).await;
    let first = wait_uploads(h.store(), 1).await;
    let job = first[0].job_id.unwrap();
    h.wait_state(job, JobState::Completed).await;
    // Pruning deletes the finished job and frees its idempotency key.
    h.store().delete(job).await.unwrap();
    let scan = back_up_now(&h.base_url()).await;
    let done = h.wait_state(scan, JobState::Completed).await;
    assert_eq!(
        done.checkpoint.unwrap()["new_uploads"],
        0,
        "the uploads record still says it is there"
    );
    h.stop().await;
}

#[tokio::test]
async fn dry_run_lists_what_would_go_and_deletes_nothing() {
    let fake = FakeDropbox::start().await;
    let (mut h, inbox) = harness(vec![("dropbox", dropbox_dest(&fake, 1))]).await;
    authorize(&h.base_url(), &fake, "dropbox").await;
    // Retention runs on the default queue: pause it so only the dry run looks.
    h.store().set_paused("default", true).await.unwrap();
    for (slug, age) in [("old", 2u64), ("new", 1)] {
        let p = inbox.join(format!("{slug}.tar"));
        std::fs::write(&p, data(1000, age)).unwrap();
        set_mtime(&p, age);
        let date = chrono::DateTime::<chrono::Utc>::from(
            std::fs::metadata(&p).unwrap().modified().unwrap(),
        );
        h.enqueue(
            "snapshot_upload",
            json!({"source": "inbox", "destination": "dropbox", "backup": slug, "name": slug, "date": date}),
        )
        .await;
    }
    let list = wait_uploads(h.store(), 2).await;
    let old = list
        .iter()
        .find(|u| u.backup_slug == "old")
        .unwrap()
        .remote_path
        .clone();
    let dry = h
        .enqueue_req(EnqueueRequest {
            kind: "retention_prune".into(),
            args: json!({"destination": "dropbox", "dry_run": true}),
            queue: Some("uploads".into()),
            ..Default::default()
        })
        .await;
    let done = h.wait_state(dry.id, JobState::Completed).await;
    assert_eq!(done.checkpoint.unwrap()["would_delete"], json!([old]));
    assert!(fake.file(&old).is_some(), "a dry run deletes nothing");
    assert!(
        h.store().uploads(None, false).await.unwrap().len() == 2,
        "nothing recorded as deleted"
    );
    h.stop().await;
}
