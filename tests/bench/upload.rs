//! Upload benchmark: `cargo bench --bench upload` (`-- --sizes 256,2048` in MiB).
//!
//! Runs the real `offsite` binary on one backup per case and reports the upload's MiB/s (from
//! the job's attempt start to its end) and the process's peak RSS (VmHWM). Everything runs on
//! loopback and shares the two cores with offsite. Sections (issue #9):
//!
//! 1. the original matrix: folder / fake Supervisor sources → local folder / fake Dropbox;
//! 2. folder → folder against a plain copy written here (read 8 MiB, write, `sync_data`) on the
//!    same file system, interleaved, `--runs N` times each (default 3), median reported;
//! 3. folder → S3 against `rclone copy` (upload concurrency default and 1) and one plain
//!    `curl -T` PUT, on moto and, when installed, on s3s-fs (a faster S3 server, files on disk);
//! 4. peak RSS per destination per size;
//! 5. bytes re-sent after a `kill -9` mid-upload, per destination.
//!
//! Tools are found on PATH or through env vars: `RCLONE` (rclone), `S3_SERVER` (s3s-fs),
//! `moto_server`, `curl`. A case whose tool is missing is skipped with a printed note.
//! `--only matrix,folder,s3,kill9` runs some sections.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use offsite::{
    destinations::dropbox::{DropboxClient, DropboxSettings, Pkce},
    queue::{JobState, Store, store::JobRecord},
};
use serde_json::json;
use support::{
    dropbox::FakeDropbox,
    s3::{FaultProxy, Moto},
    supervisor::FakeSupervisor,
};

const MIB: u64 = 1024 * 1024;
const CHUNK: u64 = 8 * MIB;
const KEY_ID: &str = "benchkey";
const SECRET: &str = "benchsecret123";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A backup file of `mib` MiB of incompressible bytes.
fn make_backup(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds of a live process (from /proc/PID/stat, 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15.
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

/// The pid of the S3 server process listening on `endpoint`'s port (moto_server or s3s-fs).
fn server_pid(endpoint: &str) -> Option<u32> {
    let port = endpoint.rsplit(':').next()?;
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let server = args
            .iter()
            .any(|a| a.ends_with(b"moto_server") || a.ends_with(b"s3s-fs"));
        (server && args.contains(&port.as_bytes())).then_some(pid)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// An executable: the env var `var` if set, else `name` on PATH.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| exec(p))
}

fn skip(what: &str, why: &str) {
    println!("  SKIPPED {what}: {why}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn acknowledged(j: &JobRecord) -> u64 {
    j.checkpoint
        .as_ref()
        .and_then(|c| c["offset"].as_u64())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- running offsite

/// One offsite worker in a temp dir of its own, configured with a source and one destination.
struct Worker {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    child: Option<Child>,
    store: Option<Store>,
}

impl Worker {
    /// Writes the config; `destination` is the body of `[destinations.dst]`.
    fn new(source: &str, destination: &str, engine: &str) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("offsite.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"data\"\n[api]\nenabled = false\n{engine}{source}\
                 [destinations.dst]\n{destination}\
                 [snapshots]\nsource = \"src\"\ndestinations = [\"dst\"]\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Worker {
            dir,
            cfg,
            child: None,
            store: None,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn authorize_dropbox(&self, dropbox: &FakeDropbox) {
        let client = DropboxClient::new(
            DropboxSettings::at(support::dropbox::DEFAULT_CLIENT_ID, &dropbox.base_url()),
            offsite::jobs::services::token_file(&self.path().join("data"), "dst"),
            reqwest::Client::new(),
        );
        let pkce = Pkce::generate();
        client
            .exchange_code(
                &dropbox.issue_auth_code(&pkce.challenge),
                &pkce.verifier,
                None,
            )
            .await
            .unwrap();
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("log"))
            .unwrap();
        // Diagnostics only: BENCH_WRAP="perf record -g -o FILE" runs the worker under a
        // wrapper (its RSS and CPU figures are then the wrapper's). perf passes the final
        // SIGTERM on; strace (needs -I1) detaches and leaves the worker running: kill it.
        let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(prog) => {
                let mut c = Command::new(prog);
                c.args(words).arg(env!("CARGO_BIN_EXE_offsite"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_offsite")),
        };
        self.child = Some(
            cmd.current_dir(self.path())
                .args(["--config", self.cfg.to_str().unwrap(), "run"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        if self.store.is_none() {
            // The worker creates the database; wait for it.
            let db = self.path().join("data/offsite.db");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !db.exists() {
                assert!(Instant::now() < deadline, "{}", self.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.store = Some(Store::open(&db).await.unwrap());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The upload job once `done` holds for it.
    async fn wait_job(&self, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
        let store = self.store.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let jobs = store
                .list_jobs(&Default::default(), 10, None)
                .await
                .unwrap();
            if let Some(j) = jobs
                .into_iter()
                .find(|j| j.kind == "snapshot_upload" && done(j))
            {
                return j;
            }
            assert!(Instant::now() < deadline, "upload stuck: {}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the upload to finish: (MiB/s over the last attempt, peak RSS MiB, CPU s).
    async fn finish(&mut self, mib: u64) -> (f64, f64, f64) {
        let job = self.wait_job(|j| j.state.is_final()).await;
        assert_eq!(
            job.state,
            JobState::Completed,
            "{:?}\n{}",
            job.last_error,
            self.log()
        );
        let (rss, cpu) = (peak_rss_mib(self.pid()), cpu_secs(self.pid()));
        self.stop();
        let attempts = self.store.as_ref().unwrap().attempts(job.id).await.unwrap();
        let attempt = attempts.last().unwrap();
        let secs = (attempt.ended_at.unwrap() - attempt.started_at) as f64 / 1000.0;
        ((mib as f64) / secs, rss, cpu)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Bytes the live process has passed to `write(2)` and its kin, whatever file they went
    /// to (`wchar` in `/proc/<pid>/io`).
    fn wrote(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn folder_source(inbox: &Path) -> String {
    format!(
        "[sources.src]\ntype = \"folder\"\npath = \"{}\"\n",
        inbox.display()
    )
}

fn folder_dest(out: &Path) -> String {
    format!("type = \"folder\"\npath = \"{}\"\n", out.display())
}

fn dropbox_dest(dropbox: &FakeDropbox) -> String {
    let base = dropbox.base_url();
    format!(
        "type = \"dropbox\"\npath = \"/Bench\"\napp_key = \"{}\"\napi_url = \"{base}\"\n\
         content_url = \"{base}\"\n",
        support::dropbox::DEFAULT_CLIENT_ID
    )
}

fn s3_dest(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!(
        "type = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{bucket}\"\n\
         prefix = \"{prefix}\"\naddressing = \"path\"\naccess_key_id = \"{KEY_ID}\"\n\
         secret_access_key = \"{SECRET}\"\nchunk_mib = {}\n",
        CHUNK / MIB
    )
}

// ---------------------------------------------------------------- 1. the original matrix

async fn matrix_case(source: &str, destination: &str, mib: u64, backup: &Path) -> (f64, f64) {
    let dropbox = FakeDropbox::start().await;
    let supervisor = FakeSupervisor::start("bench-token").await;
    supervisor.add_backup_file(
        "bench01",
        "Bench backup",
        "2026-11-22T03:00:00+00:00",
        backup.to_path_buf(),
    );
    let src = match source {
        "folder" => folder_source(backup.parent().unwrap()),
        _ => format!(
            "[sources.src]\ntype = \"supervisor\"\nurl = \"{}\"\ntoken = \"bench-token\"\n",
            supervisor.base_url()
        ),
    };
    let out = tempfile::tempdir().unwrap();
    let dst = match destination {
        "folder" => folder_dest(&out.path().join("out")),
        _ => dropbox_dest(&dropbox),
    };
    let mut w = Worker::new(&src, &dst, "");
    if destination == "dropbox" {
        w.authorize_dropbox(&dropbox).await;
    }
    w.spawn().await;
    let (rate, rss, _) = w.finish(mib).await;
    (rate, rss)
}

// ---------------------------------------------------------------- 2. folder vs plain copy

/// The baseline: read the source and write + `sync_data` it in 8 MiB chunks to a new file in
/// `dir`. Returns MiB/s.
fn plain_copy(src: &Path, dir: &Path, read_back: bool) -> f64 {
    let start = Instant::now();
    let dst = dir.join(format!("plain-{}", rand::random::<u32>()));
    let mut input = std::fs::File::open(src).unwrap();
    let mut output = std::fs::File::create(&dst).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let got = input.read(&mut buf[n..]).unwrap();
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n]).unwrap();
        output.sync_data().unwrap();
        total += n as u64;
    }
    if read_back {
        // What offsite's folder adds on top (issue #8): read the file back and hash it.
        use sha2::Digest;
        let mut f = std::fs::File::open(&dst).unwrap();
        let mut h = sha2::Sha256::new();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finalize());
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&dst).unwrap();
    total as f64 / MIB as f64 / secs
}

/// Writes every dirty page out (sync(2)), so that a timed case does not pay for the previous
/// one's writeback, nor the first for the backup file just created.
fn settle() {
    let ok = Command::new("sync").status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "sync failed: {ok:?}");
}

struct FolderResult {
    offsite: f64,
    plain: f64,
    plain_verify: f64,
    rss: f64,
    cpu_share: f64,
}

async fn folder_vs_copy(mib: u64, backup: &Path, runs: usize) -> FolderResult {
    let (mut off, mut plain, mut verify, mut rss, mut cpu) = (vec![], vec![], vec![], 0f64, vec![]);
    // Round 0 warms up and is not counted: in the runs of 2026-12-02 its three figures were
    // 2-4x lower than the later rounds', for offsite and the plain copies alike (cause not
    // found; a sync before each case did not change it). It is printed, not counted.
    for _ in 0..=runs {
        let out = tempfile::tempdir().unwrap();
        let mut w = Worker::new(
            &folder_source(backup.parent().unwrap()),
            &folder_dest(&out.path().join("out")),
            "",
        );
        settle();
        w.spawn().await;
        let (rate, r, c) = w.finish(mib).await;
        off.push(rate);
        rss = rss.max(r);
        cpu.push(c / (mib as f64 / rate));
        drop(out);
        // Same temp dir file system (tempfile puts both under the same root).
        let base = tempfile::tempdir().unwrap();
        settle();
        plain.push(plain_copy(backup, base.path(), false));
        settle();
        verify.push(plain_copy(backup, base.path(), true));
    }
    println!(
        "  warm-up round: offsite {:.0}  plain copy {:.0}  copy+read-back {:.0} MiB/s",
        off.remove(0),
        plain.remove(0),
        verify.remove(0)
    );
    cpu.remove(0);
    println!(
        "  runs: offsite {:?}  plain copy {:?}  copy+read-back {:?} MiB/s",
        off.iter().map(|r| r.round()).collect::<Vec<_>>(),
        plain.iter().map(|r| r.round()).collect::<Vec<_>>(),
        verify.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    FolderResult {
        offsite: median(off),
        plain: median(plain),
        plain_verify: median(verify),
        rss,
        cpu_share: median(cpu),
    }
}

// ---------------------------------------------------------------- 3. S3

/// A local S3 server with one bucket.
enum S3Server {
    Moto(Moto),
    S3s {
        child: Child,
        endpoint: String,
        _root: tempfile::TempDir,
    },
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let S3Server::S3s { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl S3Server {
    fn endpoint(&self) -> String {
        match self {
            S3Server::Moto(m) => m.endpoint(),
            S3Server::S3s { endpoint, .. } => endpoint.clone(),
        }
    }

    fn bucket(&self) -> String {
        match self {
            S3Server::Moto(m) => m.bucket.clone(),
            S3Server::S3s { .. } => "bench".into(),
        }
    }

    async fn start(kind: &str) -> Result<S3Server, String> {
        match kind {
            "moto" => Moto::start()
                .await
                .map(S3Server::Moto)
                .ok_or_else(|| "moto_server is not on PATH".into()),
            _ => {
                let Some(bin) = tool("S3_SERVER", "s3s-fs") else {
                    return Err("s3s-fs not found (set S3_SERVER or put s3s-fs on PATH; \
                                `cargo install s3s-fs --version 0.14.1 --features binary`)"
                        .into());
                };
                // On the same file system as everything else.
                let root = tempfile::tempdir().unwrap();
                std::fs::create_dir_all(root.path().join("bench")).unwrap();
                let port = free_port();
                let child = Command::new(bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", KEY_ID, "--secret-key", SECRET])
                    .arg(root.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("s3s-fs did not start: {e}"))?;
                let endpoint = format!("http://127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(20);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    if Instant::now() > deadline {
                        return Err("s3s-fs did not listen".into());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(S3Server::S3s {
                    child,
                    endpoint,
                    _root: root,
                })
            }
        }
    }
}

/// `rclone copy` of `backup` to the server: MiB/s over the process's wall time.
fn rclone_copy(
    rclone: &Path,
    server: &S3Server,
    backup: &Path,
    prefix: &str,
    concurrency: Option<u32>,
    mib: u64,
) -> Result<f64, String> {
    let mut cmd = Command::new(rclone);
    // rclone's HTTP transport cannot load a custom CA bundle (and needs none on loopback).
    cmd.env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BENCH_ENDPOINT", server.endpoint())
        .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
        .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", KEY_ID)
        .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET)
        .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true")
        .args(["--config", "/dev/null", "copy", "--s3-chunk-size", "8M"]);
    if let Some(c) = concurrency {
        cmd.args(["--s3-upload-concurrency", &c.to_string()]);
    }
    cmd.arg(backup)
        .arg(format!("bench:{}/{prefix}", server.bucket()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output().map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "rclone failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(mib as f64 / secs)
}

/// One signed `curl -T` PUT of the whole file: the server's ceiling for a single stream.
fn curl_put(server: &S3Server, backup: &Path, key: &str, mib: u64) -> Result<f64, String> {
    let Some(curl) = tool("CURL", "curl") else {
        return Err("curl not found".into());
    };
    let start = Instant::now();
    let out = Command::new(curl)
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
        ])
        .args(["--user", &format!("{KEY_ID}:{SECRET}")])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg("-T")
        .arg(backup)
        .arg(format!("{}/{}/{key}", server.endpoint(), server.bucket()))
        .output()
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(mib as f64 / secs)
}

#[derive(Default)]
struct S3Result {
    offsite: Option<f64>,
    rss: Option<f64>,
    cpu_share: Option<f64>,
    /// The server's CPU during offsite's upload, in cores.
    server_cpu_share: Option<f64>,
    rclone_default: Option<f64>,
    rclone_1: Option<f64>,
    curl: Option<f64>,
}

async fn s3_compare(kind: &str, mib: u64, backup: &Path) -> Option<S3Result> {
    let mut r = S3Result::default();
    // A fresh server per case: moto keeps every object in memory.
    let fresh = || async {
        match S3Server::start(kind).await {
            Ok(s) => Some(s),
            Err(why) => {
                skip(&format!("{kind} at {mib} MiB"), &why);
                None
            }
        }
    };
    {
        let server = fresh().await?;
        let mut w = Worker::new(
            &folder_source(backup.parent().unwrap()),
            &s3_dest(&server.endpoint(), &server.bucket(), "offsite"),
            "",
        );
        let server_cpu = || server_pid(&server.endpoint()).map_or(f64::NAN, cpu_secs);
        let before = server_cpu();
        w.spawn().await;
        let (rate, rss, cpu) = w.finish(mib).await;
        r.server_cpu_share = Some((server_cpu() - before) / (mib as f64 / rate));
        r.offsite = Some(rate);
        r.rss = Some(rss);
        r.cpu_share = Some(cpu / (mib as f64 / rate));
    }
    match tool("RCLONE", "rclone") {
        None => skip(
            &format!("rclone on {kind}"),
            "rclone not found (set RCLONE or `apt-get install -y rclone`)",
        ),
        Some(rclone) => {
            for (conc, slot) in [(None, &mut r.rclone_default), (Some(1), &mut r.rclone_1)] {
                let server = fresh().await?;
                match rclone_copy(&rclone, &server, backup, "rclone", conc, mib) {
                    Ok(rate) => *slot = Some(rate),
                    Err(e) => skip(&format!("rclone on {kind}"), &e),
                }
            }
        }
    }
    {
        let server = fresh().await?;
        match curl_put(&server, backup, "curl/bench.tar", mib) {
            Ok(rate) => r.curl = Some(rate),
            Err(e) => skip(&format!("curl PUT on {kind}"), &e),
        }
    }
    Some(r)
}

// ---------------------------------------------------------------- 5. kill -9

struct Kill9 {
    destination: &'static str,
    acknowledged: u64,
    resent: u64,
    how: &'static str,
}

/// Uploads a 5-chunk file at one chunk a second, kill -9s the worker once two chunks are
/// acknowledged, restarts it and measures what was sent twice.
async fn kill9(destination: &'static str, work: &Path) -> Result<Kill9, String> {
    let inbox = work.join(format!("kill9-{destination}"));
    std::fs::create_dir_all(&inbox).unwrap();
    let size = 5 * CHUNK + 1000;
    {
        let mut f = std::fs::File::create(inbox.join("big.tar")).unwrap();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut block = vec![0u8; MIB as usize];
        let mut left = size;
        while left > 0 {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            let n = left.min(MIB);
            f.write_all(&block[..n as usize]).unwrap();
            left -= n;
        }
    }
    let throttle = format!("throttle_bytes_per_sec = {CHUNK}\n");
    let out = tempfile::tempdir().unwrap();
    let dropbox = FakeDropbox::start().await;
    let mut s3 = None;
    let dst = match destination {
        "folder" => folder_dest(out.path()),
        "dropbox" => dropbox_dest(&dropbox),
        _ => {
            let Some(moto) = Moto::start().await else {
                return Err("moto_server is not on PATH".into());
            };
            let proxy = FaultProxy::start(moto.endpoint()).await;
            let toml = s3_dest(&proxy.endpoint(), &moto.bucket, "backups");
            s3 = Some((moto, proxy));
            toml
        }
    };
    let mut w = Worker::new(
        &folder_source(&inbox),
        &format!("{dst}{throttle}"),
        "[engine]\nlease = \"10m\"\n",
    );
    if destination == "dropbox" {
        w.authorize_dropbox(&dropbox).await;
    }
    w.spawn().await;
    let job = w.wait_job(|j| acknowledged(j) >= 2 * CHUNK).await;
    w.kill9();
    let at_kill = acknowledged(
        &w.store
            .as_ref()
            .unwrap()
            .job(job.id)
            .await
            .unwrap()
            .unwrap(),
    );
    let partial_len = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".offsite-partial")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max();
    w.spawn().await;
    let done = w.wait_job(|j| j.state.is_final()).await;
    let wrote = w.wrote();
    w.stop();
    if done.state != JobState::Completed {
        return Err(format!("{:?}: {}", done.last_error, w.log()));
    }
    let (resent, how) = match destination {
        "folder" => (
            wrote.saturating_sub(size - partial_len.ok_or("no .offsite-partial file at the kill")?),
            "bytes the restarted process wrote (wchar: upload, SQLite, log) − bytes not on disk at the kill",
        ),
        "dropbox" => (
            dropbox.bytes_received() - size,
            "FakeDropbox::bytes_received − file size",
        ),
        _ => (
            s3.as_ref().unwrap().1.put_bytes() - size,
            "FaultProxy::put_bytes − file size",
        ),
    };
    Ok(Kill9 {
        destination,
        acknowledged: at_kill,
        resent,
        how,
    })
}

// ---------------------------------------------------------------- main

fn fmt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = arg("--sizes")
        .unwrap_or_else(|| "256,2048".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes in MiB"))
        .collect();
    let runs: usize = arg("--runs").map_or(3, |r| r.parse().expect("--runs N"));
    let only = arg("--only").unwrap_or_else(|| "matrix,folder,s3,kill9".into());
    let want = |s: &str| only.split(',').any(|o| o.trim() == s);
    let work = tempfile::tempdir().unwrap();
    println!(
        "offsite upload benchmark — real binary, loopback, chunk 8 MiB, temp dir {}",
        work.path().display()
    );
    for (what, var, name) in [
        ("rclone", "RCLONE", "rclone"),
        ("s3s-fs", "S3_SERVER", "s3s-fs"),
        ("moto_server", "MOTO", "moto_server"),
        ("curl", "CURL", "curl"),
    ] {
        match tool(var, name) {
            Some(p) => println!("  {what}: {}", p.display()),
            None => println!("  {what}: NOT FOUND (cases that need it are skipped)"),
        }
    }
    let mut results = Vec::new();
    let mut matrix = Vec::new();
    let mut folder = BTreeMap::new();
    let mut s3: BTreeMap<(&str, u64), S3Result> = BTreeMap::new();
    let mut dropbox_rss = BTreeMap::new();
    for &mib in &sizes {
        let inbox: PathBuf = work.path().join(format!("in-{mib}"));
        std::fs::create_dir_all(&inbox).unwrap();
        let backup = inbox.join("bench.tar");
        make_backup(&backup, mib);
        if want("matrix") {
            for (source, destination) in [
                ("folder", "folder"),
                ("folder", "dropbox"),
                ("supervisor", "folder"),
                ("supervisor", "dropbox"),
            ] {
                let (rate, rss) = matrix_case(source, destination, mib, &backup).await;
                println!(
                    "  matrix {source} → {destination} {mib} MiB: {rate:.0} MiB/s, {rss:.1} MiB RSS"
                );
                if (source, destination) == ("folder", "dropbox") {
                    dropbox_rss.insert(mib, rss);
                }
                matrix.push((source, destination, mib, rate, rss));
                results.push(
                    json!({"source": source, "destination": destination, "mib": mib,
                    "mib_per_s": rate.round(), "peak_rss_mib": (rss * 10.0).round() / 10.0}),
                );
            }
        }
        if want("folder") {
            println!("  folder → folder vs plain copy, {mib} MiB, {runs} runs each");
            folder.insert(mib, folder_vs_copy(mib, &backup, runs).await);
        }
        if want("s3") {
            for kind in ["moto", "s3s-fs"] {
                println!("  folder → S3 ({kind}) vs rclone vs curl, {mib} MiB");
                if let Some(r) = s3_compare(kind, mib, &backup).await {
                    s3.insert((kind, mib), r);
                }
            }
        }
        std::fs::remove_file(&backup).unwrap();
    }

    if !matrix.is_empty() {
        println!("\n## Matrix (one run each)");
        println!(
            "{:<11} {:<12} {:>8} {:>10} {:>14}",
            "source", "destination", "MiB", "MiB/s", "peak RSS MiB"
        );
        for (s, d, mib, rate, rss) in &matrix {
            println!("{s:<11} {d:<12} {mib:>8} {rate:>10.0} {rss:>14.1}");
        }
    }
    if !folder.is_empty() {
        println!("\n## folder → folder vs plain copy (median of {runs}; same file system)");
        println!(
            "| MiB | offsite MiB/s | plain copy MiB/s | offsite % of copy (target ≥ 90) | copy + read-back hash MiB/s | offsite CPU (cores) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for (mib, f) in &folder {
            println!(
                "| {mib} | {:.0} | {:.0} | {:.0} % | {:.0} | {:.2} |",
                f.offsite,
                f.plain,
                100.0 * f.offsite / f.plain,
                f.plain_verify,
                f.cpu_share
            );
            results.push(
                json!({"case": "folder_vs_copy", "mib": mib, "offsite": f.offsite.round(),
                "plain_copy": f.plain.round(), "copy_read_back": f.plain_verify.round()}),
            );
        }
    }
    if !s3.is_empty() {
        println!("\n## folder → S3 vs rclone copy (MiB/s; one run each)");
        println!(
            "| server | MiB | offsite | rclone (concurrency 4, default) | rclone (concurrency 1) | curl -T single PUT | offsite CPU (cores) | server CPU during offsite (cores) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for ((kind, mib), r) in &s3 {
            println!(
                "| {kind} | {mib} | {} | {} | {} | {} | {} | {} |",
                fmt(r.offsite),
                fmt(r.rclone_default),
                fmt(r.rclone_1),
                fmt(r.curl),
                r.cpu_share.map_or("—".into(), |c| format!("{c:.2}")),
                r.server_cpu_share.map_or("—".into(), |c| format!("{c:.2}"))
            );
            results.push(
                json!({"case": "s3", "server": kind, "mib": mib, "offsite": r.offsite,
                "rclone_default": r.rclone_default, "rclone_1": r.rclone_1, "curl": r.curl}),
            );
        }
    }
    if !folder.is_empty() || !dropbox_rss.is_empty() || !s3.is_empty() {
        println!("\n## peak RSS (VmHWM, MiB; target ≤ 64 and flat)");
        let head: Vec<String> = sizes.iter().map(|m| format!("{m} MiB")).collect();
        println!("| destination | {} |", head.join(" | "));
        println!("| --- |{}", " --- |".repeat(sizes.len()));
        let row = |name: &str, get: &dyn Fn(u64) -> Option<f64>| {
            let cells: Vec<String> = sizes
                .iter()
                .map(|&m| get(m).map_or("—".into(), |v| format!("{v:.1}")))
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        };
        row("folder", &|m| folder.get(&m).map(|f| f.rss));
        row("fake Dropbox", &|m| dropbox_rss.get(&m).copied());
        row("S3 (moto)", &|m| s3.get(&("moto", m)).and_then(|r| r.rss));
        row("S3 (s3s-fs)", &|m| {
            s3.get(&("s3s-fs", m)).and_then(|r| r.rss)
        });
    }
    if want("kill9") {
        println!("\n## bytes re-sent after kill -9 (5 chunks + 1000 B at 8 MiB/s; target ≤ 8 MiB)");
        println!("| destination | acknowledged at kill | re-sent bytes | measured as |");
        println!("| --- | --- | --- | --- |");
        for d in ["folder", "dropbox", "s3"] {
            match kill9(d, work.path()).await {
                Ok(k) => {
                    println!(
                        "| {} | {} ({:.1} MiB) | {} ({:.2} MiB){} | {} |",
                        k.destination,
                        k.acknowledged,
                        k.acknowledged as f64 / MIB as f64,
                        k.resent,
                        k.resent as f64 / MIB as f64,
                        if k.resent <= CHUNK { "" } else { " MISSED" },
                        k.how
                    );
                    results.push(json!({"case": "kill9", "destination": d,
                        "acknowledged": k.acknowledged, "resent": k.resent}));
                }
                Err(e) => println!("| {d} | — | SKIPPED: {e} | |"),
            }
        }
    }
    println!("\n{}", json!({"upload": results}));
}
