//! device_fetch through the real binary against the fakes in `tests/support/devices.rs`:
//! artifacts 0600 in a 0700 directory, store-on-change, the diff of a change, keep-N,
//! wrong credentials, a device that hangs mid-body, an oversized answer, configuration
//! errors naming the field, and no secret in any log line or stored error.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use offsite::{
    devices::store::{Index, device_dir, read_index},
    queue::{JobState, Store, store::JobRecord},
};

use crate::{
    cli::offsite,
    common::wait_for,
    snapshots::{spawn, stop},
    support::devices::{FakeDevice, Mode},
};

pub(crate) const PASSWORD: &str = "dev1ce-Pa55word-never-logged";

pub(crate) struct Run {
    _dir: tempfile::TempDir,
    pub(crate) cfg: PathBuf,
    log: PathBuf,
    pub(crate) data: PathBuf,
    worker: Option<Child>,
    pub(crate) store: Store,
}

impl Run {
    pub(crate) async fn start(devices: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let cfg = dir.path().join("offsite.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"data\"\n[api]\nenabled = false\n[snapshots]\nenabled = false\n{devices}"
            ),
        )
        .unwrap();
        let log = dir.path().join("log");
        let worker = spawn(&cfg, &log);
        let db = data.join("offsite.db");
        let deadline = Instant::now() + Duration::from_secs(20);
        let store = loop {
            if db.exists()
                && let Ok(s) = Store::open(&db).await
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never made its database"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Run {
            _dir: dir,
            cfg,
            log,
            data,
            worker: Some(worker),
            store,
        }
    }

    /// Fetch now (the schedule's run-now through the CLI), then the job once finished.
    pub(crate) async fn fetch(&self, device: &str) -> JobRecord {
        let id = self.enqueue(device);
        wait_for(&self.store, id, |j| {
            matches!(
                j.state,
                JobState::Completed | JobState::Discarded | JobState::Cancelled
            )
        })
        .await
    }

    /// Fetch now through the CLI; the job's id.
    pub(crate) fn enqueue(&self, device: &str) -> i64 {
        let out = offsite(&self.cfg, &["devices", "fetch", device]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let id: i64 = text
            .split("as job ")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no job id in {text:?}"));
        id
    }

    pub(crate) fn dir(&self, device: &str) -> PathBuf {
        device_dir(&self.data, device)
    }

    pub(crate) async fn index(&self, device: &str) -> Index {
        read_index(&self.dir(device)).await
    }

    pub(crate) fn backups(&self, device: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir(device))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.starts_with("backup_"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops the worker and returns its whole log.
    pub(crate) fn finish(&mut self) -> String {
        if let Some(w) = self.worker.take() {
            stop(w);
        }
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The CLI off the runtime's thread (the fakes run on it, and a test-connection talks to them).
pub(crate) async fn cli(cfg: &Path, args: &[&str]) -> std::process::Output {
    let cfg = cfg.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        offsite(&cfg, &args)
    })
    .await
    .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir` except the artifacts themselves (which hold secrets by design).
pub(crate) fn assert_no_secret_outside_artifacts(dir: &Path, secret: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            assert_no_secret_outside_artifacts(&p, secret);
        } else if !name.starts_with("backup_") && !name.starts_with("offsite.db") {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).to_string();
            assert!(!text.contains(secret), "secret in {}", p.display());
        }
    }
}

#[tokio::test]
async fn wled_fetches_store_on_change_diff_the_change_and_keep_n() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    let mut run = Run::start(&format!(
        "[devices.kitchen]\ntype = \"wled\"\nhost = \"{}\"\nkeep = 2\n",
        fake.base
    ))
    .await;

    let job = run.fetch("kitchen").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("kitchen");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("backup_") && files[0].ends_with(".json"));
    assert_eq!(mode(&run.dir("kitchen").join(&files[0])), 0o600);
    assert_eq!(mode(&run.dir("kitchen")), 0o700);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir("kitchen").join(&files[0])).unwrap())
            .unwrap();
    assert_eq!(stored["cfg"]["id"]["name"], "Kitchen");
    assert_eq!(stored["presets"]["1"]["n"], "Evening");
    let index = run.index("kitchen").await;
    assert_eq!(index.versions.len(), 1);
    assert_eq!(index.versions[0].firmware.as_deref(), Some("0.14.4"));

    let out = cli(&run.cfg, &["devices", "test", "kitchen"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("connected (WLED 0.14.4)"));

    // Unchanged: a successful fetch, no new file.
    let job = run.fetch("kitchen").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("kitchen"), files);
    let index = run.index("kitchen").await;
    let last = index.last_fetch.clone().unwrap();
    assert!(last.ok && !last.changed, "{last:?}");

    // Changed: one more file, and the diff shows exactly the change.
    fake.edit(|s| s.cfg["id"]["name"] = "Kitchen 2".into());
    let job = run.fetch("kitchen").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let two = run.backups("kitchen");
    assert_eq!(two.len(), 2, "{two:?}");
    let index = run.index("kitchen").await;
    let (a, b) = (&index.versions[0].file, &index.versions[1].file);
    let read = |f: &str| std::fs::read(run.dir("kitchen").join(f)).unwrap();
    let h = offsite::devices::handler("wled").unwrap();
    let diff = offsite::devices::diff(h, &read(a), &read(b)).unwrap();
    let changed: Vec<&str> = diff.lines().filter(|l| !l.starts_with("  ")).collect();
    assert_eq!(
        changed,
        vec![
            "-       \"name\": \"Kitchen\"",
            "+       \"name\": \"Kitchen 2\""
        ],
        "{diff}"
    );

    // A third change: keep = 2 prunes the oldest.
    fake.edit(|s| s.presets["2"] = serde_json::json!({"n": "Night"}));
    let job = run.fetch("kitchen").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let now = run.backups("kitchen");
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&files[0]), "the oldest was pruned: {now:?}");
    assert_eq!(run.index("kitchen").await.versions.len(), 2);
    run.finish();
}

#[tokio::test]
async fn scheduled_fetches_write_artifacts() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    let mut run = Run::start(&format!(
        "[devices.hall]\ntype = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n\
         [devices.hall.schedule]\ncron = \"* * * * * *\"\n",
        fake.base
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.backups("hall").is_empty() {
        assert!(Instant::now() < deadline, "the schedule never fetched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The clock fields change on every read; the schedule keeps fetching, no new version.
    fake.edit(|s| s.settings["time"] = "10:01".into());
    let before = fake.state.lock().unwrap().requests.len();
    while fake.state.lock().unwrap().requests.len() < before + 2 {
        assert!(Instant::now() < deadline, "the schedule stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let index = run.index("hall").await;
    assert_eq!(run.backups("hall").len(), 1, "the clock is not a change");
    assert_eq!(
        index.versions[0].firmware.as_deref(),
        Some("20230913-112003/v1.14.0-gcb84623")
    );
    let log = run.finish();
    assert!(!log.contains(PASSWORD), "password in the log");
}

#[tokio::test]
async fn wrong_credentials_fail_clearly_without_the_secret() {
    let fake = FakeDevice::start("admin", "the-real-one").await;
    let mut run = Run::start(&format!(
        "[devices.hall]\ntype = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n",
        fake.base
    ))
    .await;
    let job = run.fetch("hall").await;
    assert_eq!(job.state, JobState::Discarded);
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device hall") && err.contains("refused the credentials"),
        "{err}"
    );
    assert_eq!(job.attempt, 1, "wrong credentials are not retried");
    assert!(!err.contains(PASSWORD));
    let index = run.index("hall").await;
    let last = index.last_fetch.unwrap();
    assert!(!last.ok);
    assert!(last.error.unwrap().contains("refused the credentials"));
    assert!(run.backups("hall").is_empty());
    // The CLI: test-connection says so, list shows the failure; neither shows the secret.
    let out = cli(&run.cfg, &["devices", "test", "hall"]).await;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        said.contains("device hall") && said.contains("refused the credentials"),
        "{said}"
    );
    assert!(!said.contains(PASSWORD));
    let out = offsite(&run.cfg, &["devices", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    assert!(listed.contains("hall: last fetch FAILED"), "{listed}");
    assert!(!listed.contains(PASSWORD));
    let log = run.finish();
    assert!(log.contains("device hall"), "the failure is logged: {log}");
    assert!(!log.contains(PASSWORD), "password in the log");
    assert_no_secret_outside_artifacts(&run.data, PASSWORD);
}

#[tokio::test]
async fn a_device_hanging_mid_body_times_out_naming_the_device() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    fake.set_mode(Mode::HangMidBody);
    let mut run = Run::start(&format!(
        "[devices.plug]\ntype = \"tasmota\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n\
         timeout_secs = 1\nretries = 0\n",
        fake.base
    ))
    .await;
    let job = run.fetch("plug").await;
    assert_eq!(job.state, JobState::Discarded);
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device plug") && err.contains("timed out after 1s"),
        "{err}"
    );
    assert!(
        run.backups("plug").is_empty(),
        "nothing half-written is kept"
    );

    // The same device answering in full: a binary .dmp with its firmware version.
    fake.set_mode(Mode::Normal);
    let job = run.fetch("plug").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("plug");
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with(".dmp"));
    assert_eq!(
        std::fs::read(run.dir("plug").join(&files[0])).unwrap(),
        fake.state.lock().unwrap().dmp
    );
    let index = run.index("plug").await;
    assert_eq!(index.versions[0].firmware.as_deref(), Some("14.3.0"));
    let log = run.finish();
    assert!(!log.contains(PASSWORD), "password in the log");
}

#[tokio::test]
async fn an_oversized_answer_is_refused_naming_the_device() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    fake.set_mode(Mode::Huge(256 * 1024));
    let mut run = Run::start(&format!(
        "[devices.kitchen]\ntype = \"wled\"\nhost = \"{}\"\nmax_bytes = 65536\n",
        fake.base
    ))
    .await;
    let job = run.fetch("kitchen").await;
    assert_eq!(job.state, JobState::Discarded);
    let err = job.last_error.unwrap();
    assert!(
        err.contains("device kitchen") && err.contains("larger than max_bytes (65536 bytes)"),
        "{err}"
    );
    assert_eq!(job.attempt, 1, "a too-large answer is not retried");
    run.finish();
}

#[test]
fn bad_device_config_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (section, field) in [
        ("type = \"toaster\"\nhost = \"10.0.0.5\"", "devices.d1.type"),
        ("type = \"wled\"", "devices.d1.host"),
        ("type = \"http\"\nurl = \"ftp://x\"", "devices.d1.url"),
        (
            "type = \"wled\"\nhost = \"10.0.0.5\"\nkeep = 0",
            "devices.d1.keep",
        ),
        (
            "type = \"wled\"\nhost = \"10.0.0.5\"\n[devices.d1.schedule]\nevery = \"5s\"",
            "devices.d1.schedule",
        ),
    ] {
        let cfg = crate::cli::write_config(dir.path(), &format!("[devices.d1]\n{section}\n"));
        let out = offsite(&cfg, &["run"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section}: started");
        assert!(err.contains(field), "{section}: {err}");
    }
}

#[tokio::test]
async fn shelly_gen2_digest_sha256_reads_every_script_in_full_and_every_kvs_page() {
    let fake = crate::support::devices::FakeShellyGen2::start(PASSWORD).await;
    let mut run = Run::start(&format!(
        "[devices.plus]\ntype = \"shelly_gen2\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n",
        fake.base
    ))
    .await;
    let job = run.fetch("plus").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("plus");
    assert_eq!(files.len(), 1);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir("plus").join(&files[0])).unwrap()).unwrap();
    let want = fake.state.lock().unwrap().scripts[0].2.clone();
    assert!(want.len() > 3000, "the script needs several chunks");
    assert_eq!(doc["scripts"][0]["code"], want.as_str(), "read in full");
    assert_eq!(doc["scripts"][1]["code"], "let x=1;");
    assert_eq!(doc["kvs"].as_array().unwrap().len(), 7, "every page");
    assert_eq!(doc["config"]["switch:0"]["name"], "Hall");
    assert_eq!(doc["schedules"]["jobs"][0]["timespec"], "0 0 22 * * *");
    assert_eq!(
        run.index("plus").await.versions[0].firmware.as_deref(),
        Some("1.0.8")
    );

    // A revision counter moving is not a change.
    fake.state.lock().unwrap().schedules_rev = 2;
    let job = run.fetch("plus").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("plus").len(), 1);

    // Wrong password: refused, named, not retried, no secret anywhere.
    fake.state.lock().unwrap().password = "changed-on-the-device".into();
    let job = run.fetch("plus").await;
    assert_eq!(job.state, JobState::Discarded);
    let err = job.last_error.unwrap();
    assert!(
        err.contains("device plus") && err.contains("refused the credentials"),
        "{err}"
    );
    let log = run.finish();
    assert!(!log.contains(PASSWORD), "password in the log");
    assert_no_secret_outside_artifacts(&run.data, PASSWORD);
}

#[tokio::test]
async fn the_api_lists_fetches_tests_downloads_and_diffs_without_secrets() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    let device: offsite::devices::DeviceConfig = toml::from_str(&format!(
        "type = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n",
        fake.base
    ))
    .unwrap();
    let mut h = crate::common::Harness::start_with(|c| {
        c.devices.insert("hall".into(), device);
    })
    .await;
    let base = format!("{}/api/v1/devices", h.base_url());
    let c = reqwest::Client::new();

    let r = c.post(format!("{base}/hall/test")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let said = r.text().await.unwrap();
    assert!(said.contains("v1.14.0"), "{said}");

    let fetch = |c: reqwest::Client, base: String| async move {
        let r = c.post(format!("{base}/hall/fetch")).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        v["job"]["id"].as_i64().unwrap()
    };
    let id = fetch(c.clone(), base.clone()).await;
    let job = wait_for(h.store(), id, |j| j.state == JobState::Completed).await;
    assert_eq!(job.attempt, 1);
    fake.edit(|s| s.settings["name"] = "Hall lamp".into());
    let id = fetch(c.clone(), base.clone()).await;
    wait_for(h.store(), id, |j| j.state == JobState::Completed).await;

    let list: serde_json::Value = c.get(&base).send().await.unwrap().json().await.unwrap();
    let versions = list[0]["versions"].as_array().unwrap().clone();
    assert_eq!(list[0]["name"], "hall");
    assert_eq!(versions.len(), 2, "{list}");
    assert_eq!(list[0]["last_fetch"]["ok"], true);
    let (a, b) = (
        versions[0]["file"].as_str().unwrap(),
        versions[1]["file"].as_str().unwrap(),
    );

    let r = c
        .get(format!("{base}/hall/versions/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored: serde_json::Value = r.json().await.unwrap();
    assert_eq!(stored["name"], "Hall lamp");
    let r = c
        .get(format!("{base}/hall/versions/..%2F..%2Foffsite.db"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "only listed files are served");

    let r = c
        .get(format!("{base}/hall/diff?from={a}&to={b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let diff = r.text().await.unwrap();
    let changed: Vec<&str> = diff.lines().filter(|l| !l.starts_with("  ")).collect();
    assert_eq!(
        changed,
        vec![
            "-   \"name\": \"Hall light\",",
            "+   \"name\": \"Hall lamp\","
        ],
        "{diff}"
    );

    // Wrong credentials: a problem answer naming the device, without the password.
    fake.edit(|s| s.password = "changed".into());
    let r = c.post(format!("{base}/hall/test")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("device hall") && body.contains("refused"),
        "{body}"
    );
    assert!(!body.contains(PASSWORD) && !list.to_string().contains(PASSWORD));
    let r = c.post(format!("{base}/nope/fetch")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn backup_pre_does_not_wait_on_a_device_fetch_in_progress() {
    let fake = FakeDevice::start("admin", PASSWORD).await;
    fake.set_mode(Mode::HangMidBody);
    let mut run = Run::start(&format!(
        "[devices.plug]\ntype = \"tasmota\"\nhost = \"{}\"\npassword = \"{PASSWORD}\"\n\
         timeout_secs = 60\nretries = 0\n",
        fake.base
    ))
    .await;
    let out = cli(&run.cfg, &["devices", "fetch", "plug"]).await;
    assert!(out.status.success());
    // The fetch is under way: the device got the request and is hanging mid-body.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|r| r == "/dl")
    {
        assert!(Instant::now() < deadline, "the fetch never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The add-on's backup_pre (offsite db-snapshot) returns at once.
    let started = Instant::now();
    let out = cli(&run.cfg, &["db-snapshot"]).await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "backup_pre took {took:?}");
    let jobs = run
        .store
        .list_jobs(&offsite::queue::store::JobFilter::default(), 50, None)
        .await
        .unwrap();
    assert!(
        jobs.iter()
            .any(|j| j.kind == "device_fetch" && j.state == JobState::Running),
        "the device fetch was still running: {jobs:#?}"
    );
    run.finish();
}
