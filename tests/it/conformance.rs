//! One conformance suite for every destination. A destination joins by one line in the
//! `conformance!` list at the bottom: a [`Backend`] says how to configure it, how to authorize
//! it and how to make its server misbehave; every scenario then runs against it, through the
//! real worker (and for `kill -9`, the real binary), and reads the result back through the
//! destination itself.
//!
//! Scenarios a destination cannot have (a local folder has no HTTP status codes) say so when
//! they run and check nothing; everything else is the same assertion for every destination.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use offsite::{
    config::DestinationConfig,
    destinations::{Destination, RemoteFile},
    queue::{JobState, Store, store::JobRecord},
};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::{
    common::{Harness, data, wait_for},
    snapshots::{MIB, harness_with, spawn, wait_uploads},
    support::{
        dropbox::{DEFAULT_CLIENT_ID, FakeDropbox},
        graph::{ApiFault, FakeGraph, UploadFault},
        s3::{Fault, FaultProxy, Moto},
    },
};
use axum::http::Method;

/// Every scenario sends chunks of this size (a multiple of 4 MiB for Dropbox, at least 5 MiB
/// for S3).
pub(crate) const CHUNK: u64 = 8 * MIB as u64;

/// How a destination's server can be made to misbehave.
pub(crate) trait Faults: Send + Sync {
    /// The next request is answered 503 with `Retry-After: secs`.
    fn unavailable_next(&self, secs: u64);
    /// The next request is answered 429 with `Retry-After: secs`.
    fn rate_limited_next(&self, secs: u64);
    /// The next chunk upload is answered with this 5xx status.
    fn fail_next_upload(&self, status: u16);
    /// The next chunk upload has its connection cut mid-body.
    fn drop_next_upload(&self);
    /// The next chunk upload is stored but answered 500: the server is further along than
    /// the checkpoint.
    fn accept_then_fail_next_upload(&self);
    /// The next commit stores other bytes than were sent.
    fn corrupt_next_commit(&self);
}

#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync {
    /// `[destinations.<name>]` without its header.
    fn toml(&self) -> String;
    /// Grants access in `data_dir`'s credential store, before a worker starts.
    async fn authorize_before_start(&self, data_dir: &Path);
    /// Grants access through the running worker's API.
    async fn authorize(&self, h: &Harness);
    /// Something that changes whenever the file at `remote` is written again (bytes received
    /// by the server, or the file's inode and mtime).
    async fn write_marker(&self, remote: &str) -> String;
    /// Bytes of uploads the server has received; None for a folder (no wire).
    fn received(&self) -> Option<u64>;
    /// Makes the server forget every unfinished upload.
    async fn lose_uploads(&self);
    /// Makes the stored partial upload differ from what was sent, where there is no server to
    /// do it (a folder); false where `faults` does it.
    async fn tamper_with_partial(&self) -> bool {
        false
    }
    /// After a `kill -9`, where the destination cannot count what it received (a folder: no
    /// wire): how many bytes of the upload are on disk.
    fn partial_on_disk(&self) -> Option<u64> {
        None
    }
    fn faults(&self) -> Option<&dyn Faults>;
}

fn config(backend: &dyn Backend) -> DestinationConfig {
    toml::from_str(&backend.toml()).expect("the backend's TOML is a destination")
}

pub(crate) async fn start(backend: &dyn Backend, throttle: Option<u64>) -> (Harness, PathBuf) {
    let mut dest = config(backend);
    if let Some(rate) = throttle {
        dest.throttle_bytes_per_sec = rate;
    }
    let (h, inbox) = harness_with(vec![("dst", dest)], |c| {
        // Permanent failures end the job at once; temporary ones come back quickly.
        c.kinds.insert(
            "snapshot_upload".into(),
            offsite::config::KindConfig {
                max_attempts: Some(5),
                ..Default::default()
            },
        );
    })
    .await;
    backend.authorize(&h).await;
    (h, inbox)
}

pub(crate) async fn scan(h: &Harness) -> JobRecord {
    let scan = h
        .enqueue(
            "snapshot_scan",
            json!({"source": "inbox", "destinations": ["dst"]}),
        )
        .await;
    h.wait_state(scan.id, JobState::Completed).await;
    let mut waited = 0;
    loop {
        let jobs = h
            .store()
            .list_jobs(
                &offsite::queue::store::JobFilter {
                    kind: Some("snapshot_upload".into()),
                    ..Default::default()
                },
                10,
                None,
            )
            .await
            .unwrap();
        if let Some(j) = jobs.into_iter().next() {
            return j;
        }
        waited += 1;
        assert!(waited < 2000, "no upload job was enqueued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Scans again and waits for the second backup's upload to be recorded: its job, and the
/// records newest first.
async fn second_upload(h: &Harness) -> (JobRecord, Vec<offsite::queue::store::UploadRecord>) {
    let scan = h
        .enqueue(
            "snapshot_scan",
            json!({"source": "inbox", "destinations": ["dst"]}),
        )
        .await;
    h.wait_state(scan.id, JobState::Completed).await;
    let list = wait_uploads(h.store(), 2).await;
    let job = h
        .store()
        .job(list[0].job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    (job, list)
}

pub(crate) fn acknowledged(j: &JobRecord) -> u64 {
    j.checkpoint
        .as_ref()
        .and_then(|c| c["offset"].as_u64())
        .unwrap_or(0)
}

async fn read_back(dest: &dyn Destination, remote: &str, offset: u64) -> Vec<u8> {
    let mut stream = dest.open_at(remote, offset).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

pub(crate) fn destination(h: &Harness) -> Arc<dyn Destination> {
    h.running()
        .state
        .services
        .destination("dst")
        .unwrap()
        .clone()
}

/// The one thing every scenario ends with: a recorded copy reads back byte for byte as the
/// backup, and with no record there is nothing at the upload's path that looks like a backup.
pub(crate) async fn assert_never_a_false_backup(h: &Harness, job: &JobRecord, bytes: &[u8]) {
    let dest = destination(h);
    let uploads = h.store().uploads(Some("dst"), true).await.unwrap();
    match uploads.first() {
        Some(u) => {
            assert_eq!(u.size as usize, bytes.len());
            assert_eq!(
                u.sha256.as_deref(),
                Some(offsite::transfer::sha256_hex(bytes).as_str())
            );
            let back = read_back(&*dest, &u.remote_path, 0).await;
            assert!(back == bytes, "the recorded copy reads back differently");
        }
        None => {
            let args: offsite::jobs::snapshot::SnapshotUploadArgs =
                serde_json::from_value(job.args.clone()).unwrap();
            let remote = offsite::destinations::remote_path(dest.root(), &args.name, &args.date);
            let found: Option<RemoteFile> = dest.stat(&remote).await.unwrap();
            assert!(
                found.is_none(),
                "nothing recorded, but {found:?} is at the upload's path"
            );
        }
    }
}

// ------------------------------------------------------------------ the scenarios

/// begin / append / finish, read back (whole and from an offset), stat, list, delete.
pub(crate) async fn round_trip(backend: &dyn Backend) {
    let (mut h, _) = start(backend, None).await;
    let dest = destination(&h);
    let bytes = data(2 * CHUNK as usize + 12_345, 41);
    let total = bytes.len() as u64;
    let chunk = dest.chunk_rules().chunk_for(CHUNK, total).unwrap();
    let remote = format!("{}/round_trip.tar", dest.root().trim_end_matches('/'));
    let mut session = dest.begin(&remote, total, chunk).await.unwrap();
    let mut offset = 0u64;
    while total - offset > chunk {
        let piece =
            bytes::Bytes::copy_from_slice(&bytes[offset as usize..(offset + chunk) as usize]);
        dest.append(&mut session, offset, piece).await.unwrap();
        offset += chunk;
    }
    let sha = offsite::transfer::sha256_hex(&bytes);
    let sent = offsite::destinations::Sent {
        size: total,
        sha256: &sha,
    };
    let last = bytes::Bytes::copy_from_slice(&bytes[offset as usize..]);
    let stored = dest
        .finish(&mut session, offset, last, &remote, &sent)
        .await
        .unwrap();
    assert_eq!(stored.size, total);
    assert!(read_back(&*dest, &remote, 0).await == bytes, "read back");
    assert!(
        read_back(&*dest, &remote, 1_000_001).await == bytes[1_000_001..],
        "read back from an offset"
    );
    let found = dest.stat(&remote).await.unwrap().expect("stat finds it");
    assert_eq!(found.size, total);
    let listed = dest.list().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|f| f.path.eq_ignore_ascii_case(&remote) && f.size == total),
        "{listed:?}"
    );
    let source: offsite::transfer::ByteStream = Box::pin(std::io::Cursor::new(bytes.clone()));
    assert!(dest.same_content(&found, source, total).await.unwrap());
    let mut other = bytes.clone();
    other[5] ^= 1;
    let source: offsite::transfer::ByteStream = Box::pin(std::io::Cursor::new(other));
    assert!(!dest.same_content(&found, source, total).await.unwrap());
    dest.delete(&remote).await.unwrap();
    assert_eq!(dest.stat(&remote).await.unwrap(), None);
    assert!(!dest.list().await.unwrap().iter().any(|f| f.path == remote));
    dest.delete(&remote)
        .await
        .expect("deleting what is gone is fine");
    h.stop().await;
}

/// `kill -9` of the real binary mid-upload: the restart resumes from the checkpoint, sends at
/// most one chunk again, and the copy reads back byte for byte through the destination.
pub(crate) async fn kill_9_resumes(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let bytes = data(5 * CHUNK as usize + 1000, 42);
    std::fs::write(inbox.join("big.tar"), &bytes).unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[api]\nenabled = false\n[engine]\nlease = \"10m\"\n\
             [sources.inbox]\ntype = \"folder\"\npath = \"{}\"\n\
             [destinations.dst]\n{}\nthrottle_bytes_per_sec = {CHUNK}\n\
             [snapshots]\nsource = \"inbox\"\ndestinations = [\"dst\"]\n",
            dir.path().join("data").display(),
            inbox.display(),
            backend.toml()
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    backend.authorize_before_start(&data_dir).await;
    let log = dir.path().join("log");
    let mut worker = spawn(&cfg, &log);
    let store = Store::open(&data_dir.join("offsite.db")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = store
            .list_jobs(&Default::default(), 10, None)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.kind == "snapshot_upload" && acknowledged(j) >= 2 * CHUNK)
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
    worker.kill().unwrap();
    worker.wait().unwrap();
    let at_kill = acknowledged(&store.job(job.id).await.unwrap().unwrap());
    let on_disk = backend.partial_on_disk();

    let worker = spawn(&cfg, &log);
    let list = wait_uploads(&store, 1).await;
    let done = wait_for(&store, job.id, |j| j.state == JobState::Completed).await;
    // Every byte the restarted process wrote (the upload's, SQLite's, its log's): an upper
    // bound on what it wrote to the folder.
    let wrote = bytes_written_by(worker.id());
    crate::snapshots::stop(worker);
    let config = offsite::config::Config::load(Some(&cfg)).unwrap();
    let services = offsite::jobs::services::Services::new(&config).unwrap();
    let dest = services.destination("dst").unwrap();
    assert!(
        read_back(&**dest, &list[0].remote_path, 0).await == bytes,
        "byte-identical after the crash"
    );
    let resent = match (backend.received(), on_disk) {
        (Some(received), _) => received - bytes.len() as u64,
        // What it wrote beyond the bytes that were not on disk yet was written twice.
        (None, Some(had)) => wrote.saturating_sub(bytes.len() as u64 - had),
        (None, None) => panic!("the backend cannot tell what was sent twice"),
    };
    assert!(
        resent <= CHUNK,
        "resent {resent} bytes: more than one chunk (acknowledged {at_kill}); log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(at_kill >= 2 * CHUNK, "killed mid-way");
    assert_eq!(
        store.attempts(done.id).await.unwrap().len(),
        2,
        "killed once, resumed once"
    );
}

/// The bytes a live process has passed to `write(2)` and its kin (`wchar` in
/// `/proc/<pid>/io`), whatever file they went to.
fn bytes_written_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("wchar in /proc/<pid>/io")
}

/// The server took a chunk whose answer never came: the next attempt continues from the
/// server's offset instead of starting over.
pub(crate) async fn server_further_along(backend: &dyn Backend) {
    let Some(faults) = backend.faults() else {
        eprintln!(
            "not applicable: a folder keeps no unacknowledged bytes (kill_9_resumes covers it)"
        );
        return;
    };
    let (mut h, inbox) = start(backend, None).await;
    let bytes = data(3 * CHUNK as usize + 77, 43);
    std::fs::write(inbox.join("along.tar"), &bytes).unwrap();
    faults.accept_then_fail_next_upload();
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert!(done.attempt >= 2, "the 500 failed the first attempt");
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let resent = backend.received().unwrap() - bytes.len() as u64;
    assert!(resent <= CHUNK, "resent {resent} bytes: it started over");
    h.stop().await;
}

/// The upload session is gone mid-way: the upload starts over (once) and completes.
pub(crate) async fn upload_gone(backend: &dyn Backend) {
    let (mut h, inbox) = start(backend, Some(CHUNK)).await;
    let bytes = data(3 * CHUNK as usize + 5, 44);
    std::fs::write(inbox.join("gone.tar"), &bytes).unwrap();
    let job = scan(&h).await;
    wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
    backend.lose_uploads().await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_never_a_false_backup(&h, &done, &bytes).await;
    assert!(
        !h.store()
            .uploads(Some("dst"), false)
            .await
            .unwrap()
            .is_empty(),
        "recorded after starting over"
    );
    h.stop().await;
}

/// The file was committed but its record was lost: the retry records it without writing it
/// again.
pub(crate) async fn committed_but_unrecorded(backend: &dyn Backend) {
    let (mut h, inbox) = start(backend, None).await;
    let bytes = data(CHUNK as usize + 999, 45);
    std::fs::write(inbox.join("committed.tar"), &bytes).unwrap();
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    let remote = h.store().uploads(Some("dst"), false).await.unwrap()[0]
        .remote_path
        .clone();
    let marker = backend.write_marker(&remote).await;
    // As if the process died between the commit and the record.
    let mut conn = crate::trust::raw(&h.data_dir().join("offsite.db")).await;
    sqlx::query("delete from uploads")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    h.store().retry(done.id, false).await.unwrap();
    h.running().state.executor.wake();
    wait_uploads(h.store(), 1).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(
        backend.write_marker(&remote).await,
        marker,
        "not written again"
    );
    assert_never_a_false_backup(&h, &done, &bytes).await;
    h.stop().await;
}

/// 429 and 503 with `Retry-After`: the job waits as told without using an attempt.
pub(crate) async fn retry_after_uses_no_attempt(backend: &dyn Backend) {
    let Some(faults) = backend.faults() else {
        eprintln!("not applicable: a folder answers no HTTP status");
        return;
    };
    let (mut h, inbox) = start(backend, None).await;
    let bytes = data(CHUNK as usize + 1, 46);
    std::fs::write(inbox.join("later.tar"), &bytes).unwrap();
    faults.rate_limited_next(1);
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.attempt, 1, "the 429 did not use an attempt");
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let bytes = data(CHUNK as usize + 2, 47);
    std::fs::write(inbox.join("later2.tar"), &bytes).unwrap();
    faults.unavailable_next(1);
    let (second, _) = second_upload(&h).await;
    assert_eq!(second.attempt, 1, "the 503 did not use an attempt");
    h.stop().await;
}

/// 5xx answers and dropped connections are retried and the upload completes intact.
pub(crate) async fn server_errors_and_drops(backend: &dyn Backend) {
    let Some(faults) = backend.faults() else {
        eprintln!(
            "not applicable: a folder has no server (tests/it/trust.rs covers its write errors)"
        );
        return;
    };
    let (mut h, inbox) = start(backend, None).await;
    let bytes = data(2 * CHUNK as usize + 3, 48);
    std::fs::write(inbox.join("bumpy.tar"), &bytes).unwrap();
    faults.fail_next_upload(500);
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert!(done.attempt >= 2);
    assert_never_a_false_backup(&h, &done, &bytes).await;

    let bytes = data(2 * CHUNK as usize + 4, 49);
    std::fs::write(inbox.join("dropped.tar"), &bytes).unwrap();
    faults.drop_next_upload();
    let (second, list) = second_upload(&h).await;
    assert!(
        second.attempt >= 2,
        "the dropped connection failed an attempt"
    );
    let back = read_back(&*destination(&h), &list[0].remote_path, 0).await;
    assert!(back == bytes, "the dropped upload completed intact");
    h.stop().await;
}

/// What the destination stored differs from what was sent: never recorded, and nothing that
/// looks like a good backup is left.
pub(crate) async fn checksum_mismatch(backend: &dyn Backend) {
    let (mut h, inbox) = start(backend, Some(CHUNK)).await;
    let bytes = data(2 * CHUNK as usize + 6, 50);
    std::fs::write(inbox.join("bitrot.tar"), &bytes).unwrap();
    if let Some(faults) = backend.faults() {
        faults.corrupt_next_commit();
    }
    let job = scan(&h).await;
    if backend.faults().is_none() {
        wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
        assert!(
            backend.tamper_with_partial().await,
            "the backend can corrupt its partial"
        );
    }
    let done = wait_for(h.store(), job.id, |j| {
        matches!(j.state, JobState::Completed | JobState::Discarded)
    })
    .await;
    assert_never_a_false_backup(&h, &done, &bytes).await;
    if done.state == JobState::Discarded {
        let why = done.last_error.clone().unwrap_or_default();
        assert!(
            why.contains("not recorded as backed up"),
            "the error says why: {why}"
        );
    }
    h.stop().await;
}

/// A cancelled upload leaves nothing behind at the destination: no partial file, no open
/// multipart upload.
pub(crate) async fn cancelled_upload_leaves_nothing(backend: &dyn Backend) {
    let (mut h, inbox) = start(backend, Some(CHUNK)).await;
    std::fs::write(inbox.join("cancel.tar"), data(4 * CHUNK as usize, 51)).unwrap();
    let job = scan(&h).await;
    wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
    h.store().cancel(job.id).await.unwrap();
    h.running().state.executor.wake();
    h.wait_state(job.id, JobState::Cancelled).await;
    let dest = destination(&h);
    let mut left = dest.partials().await.unwrap();
    for _ in 0..500 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = dest.partials().await.unwrap();
    }
    assert!(
        left.is_empty(),
        "left behind: {:?}",
        left.iter().map(|p| &p.label).collect::<Vec<_>>()
    );
    assert!(
        h.store()
            .uploads(Some("dst"), true)
            .await
            .unwrap()
            .is_empty()
    );
    h.stop().await;
}

// ------------------------------------------------------------------ the destinations

pub(crate) struct FolderBackend {
    dir: PathBuf,
}

impl FolderBackend {
    pub(crate) async fn new() -> Self {
        FolderBackend {
            dir: tempfile::tempdir().unwrap().keep(),
        }
    }

    fn partials(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".offsite-partial"))
            .collect()
    }
}

#[async_trait::async_trait]
impl Backend for FolderBackend {
    fn toml(&self) -> String {
        format!(
            "type = \"folder\"\npath = \"{}\"\nchunk_mib = {}\n",
            self.dir.display(),
            CHUNK / MIB as u64
        )
    }
    async fn authorize_before_start(&self, _: &Path) {}
    async fn authorize(&self, _: &Harness) {}
    async fn write_marker(&self, remote: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.dir.join(remote.trim_start_matches('/'))).unwrap();
        format!("{}:{}", m.ino(), m.mtime_nsec())
    }
    fn received(&self) -> Option<u64> {
        None
    }
    async fn lose_uploads(&self) {
        for p in self.partials() {
            std::fs::remove_file(p).unwrap();
        }
    }
    async fn tamper_with_partial(&self) -> bool {
        let Some(p) = self.partials().pop() else {
            return false;
        };
        let mut f = std::fs::File::options().write(true).open(p).unwrap();
        std::io::Write::write_all(&mut f, b"\0rot").unwrap();
        true
    }
    fn partial_on_disk(&self) -> Option<u64> {
        self.partials()
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .max()
    }
    fn faults(&self) -> Option<&dyn Faults> {
        None
    }
}

pub(crate) struct DropboxBackend {
    fake: FakeDropbox,
}

impl DropboxBackend {
    pub(crate) async fn new() -> Self {
        let fake = FakeDropbox::start().await;
        fake.require_4mib_multiples(true);
        DropboxBackend { fake }
    }
}

impl Faults for FakeDropbox {
    fn unavailable_next(&self, secs: u64) {
        FakeDropbox::unavailable_next(self, 1, secs);
    }
    fn rate_limited_next(&self, secs: u64) {
        self.rate_limit_next(1, secs);
    }
    fn fail_next_upload(&self, status: u16) {
        // 1: get_metadata (is it there already?), 2: upload_session/start, 3: the first append.
        self.fail_request(3, status);
    }
    fn drop_next_upload(&self) {
        self.drop_connection_mid_body(2);
    }
    fn accept_then_fail_next_upload(&self) {
        // 1: upload_session/start, 2: the first append.
        self.accept_then_fail(2);
    }
    fn corrupt_next_commit(&self) {
        self.corrupt_next_commits(1);
    }
}

#[async_trait::async_trait]
impl Backend for DropboxBackend {
    fn toml(&self) -> String {
        let base = self.fake.base_url();
        format!(
            "type = \"dropbox\"\npath = \"/Backups\"\nchunk_mib = {}\napp_key = \"{DEFAULT_CLIENT_ID}\"\n\
             api_url = \"{base}\"\ncontent_url = \"{base}\"\nauthorize_url = \"{base}/oauth2/authorize\"\n",
            CHUNK / MIB as u64
        )
    }
    async fn authorize_before_start(&self, data_dir: &Path) {
        let base = self.fake.base_url();
        let client = offsite::destinations::dropbox::DropboxClient::new(
            offsite::destinations::dropbox::DropboxSettings::at(DEFAULT_CLIENT_ID, &base),
            offsite::jobs::services::token_file(data_dir, "dst"),
            reqwest::Client::new(),
        );
        let pkce = offsite::destinations::auth::Pkce::generate();
        client
            .exchange_code(
                &self.fake.issue_auth_code(&pkce.challenge),
                &pkce.verifier,
                None,
            )
            .await
            .unwrap();
    }
    async fn authorize(&self, h: &Harness) {
        crate::snapshots::authorize(&h.base_url(), &self.fake, "dst").await;
    }
    async fn write_marker(&self, remote: &str) -> String {
        let f = self.fake.file(remote).unwrap();
        format!("{}:{}", self.fake.bytes_received(), f.rev)
    }
    fn received(&self) -> Option<u64> {
        Some(self.fake.bytes_received())
    }
    async fn lose_uploads(&self) {
        self.fake.expire_upload_sessions();
    }
    fn faults(&self) -> Option<&dyn Faults> {
        Some(&self.fake)
    }
}

/// S3 on a real S3 server (moto), through a fault-injecting proxy, with the 1,000-part limit
/// of S3-compatible providers such as Scaleway.
pub(crate) struct S3Backend {
    moto: Moto,
    proxy: FaultProxy,
}

impl S3Backend {
    /// None (the test prints "skipped") when moto is not installed outside CI.
    pub(crate) async fn new() -> Option<Self> {
        let moto = Moto::start().await?;
        let proxy = FaultProxy::start(moto.endpoint()).await;
        Some(S3Backend { moto, proxy })
    }
}

impl Faults for FaultProxy {
    fn unavailable_next(&self, secs: u64) {
        // The upload's first request: is the object there already?
        self.fail(
            Method::HEAD,
            "",
            1,
            Fault::SlowDown {
                retry_after_secs: secs,
            },
        );
    }
    fn rate_limited_next(&self, secs: u64) {
        self.fail(
            Method::HEAD,
            "",
            1,
            Fault::TooManyRequests {
                retry_after_secs: secs,
            },
        );
    }
    fn fail_next_upload(&self, status: u16) {
        assert_eq!(status, 500, "the proxy injects S3's InternalError");
        self.fail(Method::PUT, "partNumber", 1, Fault::InternalError);
    }
    fn drop_next_upload(&self) {
        self.fail(Method::PUT, "partNumber", 1, Fault::Cut);
    }
    fn accept_then_fail_next_upload(&self) {
        self.fail(Method::PUT, "partNumber", 1, Fault::AcceptThenFail);
    }
    fn corrupt_next_commit(&self) {
        self.fail(Method::PUT, "partNumber", 1, Fault::CorruptBody);
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    fn toml(&self) -> String {
        format!(
            "type = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{}\"\n\
             prefix = \"backups\"\naddressing = \"path\"\naccess_key_id = \"testing\"\n\
             secret_access_key = \"testing-secret\"\nmax_parts = 1000\nchunk_mib = {}\n",
            self.proxy.endpoint(),
            self.moto.bucket,
            CHUNK / MIB as u64
        )
    }
    async fn authorize_before_start(&self, _: &Path) {}
    async fn authorize(&self, _: &Harness) {}
    async fn write_marker(&self, _remote: &str) -> String {
        self.proxy.put_bytes().to_string()
    }
    fn received(&self) -> Option<u64> {
        Some(self.proxy.put_bytes())
    }
    async fn lose_uploads(&self) {
        self.moto.abort_all_uploads().await;
    }
    fn faults(&self) -> Option<&dyn Faults> {
        Some(&self.proxy)
    }
}

/// A SharePoint library on the Microsoft Graph fake, in a folder two levels down.
pub(crate) struct SharePointBackend {
    pub(crate) fake: FakeGraph,
}

impl SharePointBackend {
    pub(crate) async fn new() -> Self {
        SharePointBackend {
            fake: FakeGraph::start().await,
        }
    }
}

impl Faults for FakeGraph {
    fn unavailable_next(&self, secs: u64) {
        // The upload's first Graph call: is the file there already?
        self.api_fault(1, ApiFault::Throttle { status: 503, secs });
    }
    fn rate_limited_next(&self, secs: u64) {
        self.api_fault(1, ApiFault::Throttle { status: 429, secs });
    }
    fn fail_next_upload(&self, status: u16) {
        self.upload_fault(1, UploadFault::Status(status));
    }
    fn drop_next_upload(&self) {
        self.upload_fault(1, UploadFault::Cut);
    }
    fn accept_then_fail_next_upload(&self) {
        self.upload_fault(1, UploadFault::AcceptThenFail);
    }
    fn corrupt_next_commit(&self) {
        FakeGraph::corrupt_next_commit(self);
    }
}

#[async_trait::async_trait]
impl Backend for SharePointBackend {
    fn toml(&self) -> String {
        crate::sharepoint::toml(&self.fake, CHUNK / MIB as u64)
    }
    async fn authorize_before_start(&self, _: &Path) {}
    async fn authorize(&self, _: &Harness) {}
    async fn write_marker(&self, remote: &str) -> String {
        let item = self.fake.item(remote).expect("the file is there");
        format!("{}:{}", self.fake.bytes_received(), item.etag)
    }
    fn received(&self) -> Option<u64> {
        Some(self.fake.bytes_received())
    }
    async fn lose_uploads(&self) {
        self.fake.lose_sessions();
    }
    fn faults(&self) -> Option<&dyn Faults> {
        Some(&self.fake)
    }
}

/// A 404 from the destination's side (a proxy in front of S3 answering a part upload) is not
/// a vanished backup: the upload is retried and completes, it is not cancelled.
#[tokio::test]
async fn a_not_found_from_the_destination_does_not_cancel_the_upload() {
    let Some(backend) = S3Backend::new().await else {
        return eprintln!("skipped: moto_server is not installed");
    };
    let (mut h, inbox) = start(&backend, None).await;
    let bytes = data(2 * CHUNK as usize + 8, 52);
    std::fs::write(inbox.join("proxied.tar"), &bytes).unwrap();
    backend.proxy.fail(
        Method::PUT,
        "partNumber",
        1,
        Fault::Error {
            status: 404,
            code: "NotFound",
        },
    );
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert!(done.attempt >= 2, "the 404 failed one attempt");
    assert_never_a_false_backup(&h, &done, &bytes).await;
    h.stop().await;
}

/// The backup file is replaced (same name, another size) while its upload waits for a retry:
/// the resume starts over instead of joining the old file's bytes to the new one's.
#[tokio::test]
async fn a_source_replaced_between_attempts_is_uploaded_whole() {
    let backend = FolderBackend::new().await;
    let (mut h, inbox) = start(&backend, Some(CHUNK)).await;
    let first = data(3 * CHUNK as usize, 53);
    std::fs::write(inbox.join("nightly.tar"), &first).unwrap();
    let job = scan(&h).await;
    wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
    let config = h.running().state.config.as_ref().clone();
    h.stop().await;
    let second = data(3 * CHUNK as usize + 4096, 54);
    std::fs::write(inbox.join("nightly.tar"), &second).unwrap();
    h.start_again(config).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_never_a_false_backup(&h, &done, &second).await;
    h.stop().await;
}

/// One line per destination: every scenario runs against it.
macro_rules! conformance {
    ($($dest:ident => $backend:expr;)*) => {
        $(mod $dest {
            use super::*;
            #[tokio::test]
            async fn round_trip() { super::round_trip(&$backend).await }
            #[tokio::test]
            async fn kill_9_resumes() { super::kill_9_resumes(&$backend).await }
            #[tokio::test]
            async fn server_further_along() { super::server_further_along(&$backend).await }
            #[tokio::test]
            async fn upload_gone() { super::upload_gone(&$backend).await }
            #[tokio::test]
            async fn committed_but_unrecorded() { super::committed_but_unrecorded(&$backend).await }
            #[tokio::test]
            async fn retry_after_uses_no_attempt() { super::retry_after_uses_no_attempt(&$backend).await }
            #[tokio::test]
            async fn server_errors_and_drops() { super::server_errors_and_drops(&$backend).await }
            #[tokio::test]
            async fn checksum_mismatch() { super::checksum_mismatch(&$backend).await }
            #[tokio::test]
            async fn cancelled_upload_leaves_nothing() {
                super::cancelled_upload_leaves_nothing(&$backend).await
            }
        })*
    };
}

conformance! {
    folder => FolderBackend::new().await;
    dropbox => DropboxBackend::new().await;
    sharepoint => SharePointBackend::new().await;
    s3 => match S3Backend::new().await {
        Some(b) => b,
        None => return eprintln!("skipped: moto_server is not installed"),
    };
}
