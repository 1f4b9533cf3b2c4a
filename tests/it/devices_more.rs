//! The FRITZ!Box (TR-064 with Digest, the one-time download URL, the second factor), OPNsense
//! and generic HTTP Digest devices through the real binary, against the fakes in
//! `tests/support/fritzbox.rs` and `tests/support/opnsense.rs`.

use std::time::{Duration, Instant};

use offsite::{devices::store::FetchState, queue::JobState};

use crate::{
    common::wait_for,
    devices::{PASSWORD, Run, assert_no_secret_outside_artifacts, cli},
    support::{
        fritzbox::{FIRMWARE, FakeFritzBox},
        opnsense::FakeOpnSense,
    },
};

const EXPORT_PASSWORD: &str = "Exp0rt-Secret-never-logged";

fn fritz_section(name: &str, fake: &FakeFritzBox, password: &str) -> String {
    format!(
        "[devices.{name}]\ntype = \"fritzbox\"\nhost = \"{}\"\nusername = \"offsite\"\npassword = \"{password}\"\nexport_password = \"{EXPORT_PASSWORD}\"\n",
        fake.base
    )
}

/// No secret of a FRITZ!Box fetch (passwords, the download URLs' session ids) in `text`.
fn assert_no_fritz_secret(what: &str, text: &str, fake: &FakeFritzBox) {
    assert!(!text.contains(PASSWORD), "password in {what}: {text}");
    assert!(
        !text.contains(EXPORT_PASSWORD),
        "export password in {what}: {text}"
    );
    for sid in fake.sids() {
        assert!(
            !text.contains(&sid),
            "download session id in {what}: {text}"
        );
    }
    assert!(!text.contains("sid="), "download URL in {what}: {text}");
}

#[tokio::test]
async fn fritzbox_export_through_tr064_digest_stored_once_unchanged_not_again() {
    let fake = FakeFritzBox::start("offsite", PASSWORD).await;
    let mut run = Run::start(&fritz_section("fritz", &fake, PASSWORD)).await;

    let job = run.fetch("fritz").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("fritz");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".export"), "{files:?}");
    let text = std::fs::read_to_string(run.dir("fritz").join(&files[0])).unwrap();
    assert!(
        text.starts_with("**** FRITZ!Box 7590 CONFIGURATION EXPORT"),
        "{text}"
    );
    assert!(text.contains("mode = dsldmode_router;"));
    let index = run.index("fritz").await;
    assert_eq!(index.versions[0].firmware.as_deref(), Some(FIRMWARE));
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(st.export_passwords, vec![EXPORT_PASSWORD.to_string()]);
        assert_eq!(st.downloads.len(), 1, "{:?}", st.downloads);
        assert!(st.downloads[0].ends_with(" ok"), "{:?}", st.downloads);
    }
    // The SOAP call was challenged first (no credentials sent blind), then answered.
    assert_eq!(fake.calls(), vec!["401", "ok"]);

    // Unchanged: a successful fetch, no new file.
    let job = run.fetch("fritz").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("fritz"), files);
    let last = run.index("fritz").await.last_fetch.unwrap();
    assert!(
        last.ok && !last.changed && last.state == FetchState::Ok,
        "{last:?}"
    );

    // Changed: one more.
    fake.edit(|s| s.config = s.config.replace("ethmode_bridge", "ethmode_router"));
    let job = run.fetch("fritz").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("fritz").len(), 2);

    let log = run.finish();
    assert_no_fritz_secret("the log", &log, &fake);
    for secret in [PASSWORD, EXPORT_PASSWORD] {
        assert_no_secret_outside_artifacts(&run.data, secret);
    }
}

#[tokio::test]
async fn fritzbox_second_factor_waits_for_confirmation_then_the_next_fetch_succeeds() {
    let fake = FakeFritzBox::start("offsite", PASSWORD).await;
    fake.edit(|s| s.second_factor = true);
    let mut run = Run::start(&fritz_section("fritz", &fake, PASSWORD)).await;

    let id = run.enqueue("fritz");
    // Snoozed (asked again later without using an attempt), not failed nor retried at once.
    let job = wait_for(&run.store, id, |j| {
        j.state == JobState::Scheduled && j.last_error.is_some()
    })
    .await;
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device fritz") && err.contains("waiting for your confirmation"),
        "{err}"
    );
    assert_eq!(job.attempt, 0, "a wait uses no attempt: {job:?}");
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        job.scheduled_at > now_ms + 60_000,
        "asked again in minutes, not seconds: {job:?}"
    );
    let index = run.index("fritz").await;
    let last = index.last_fetch.clone().unwrap();
    assert_eq!(last.state, FetchState::WaitingForConfirmation, "{last:?}");
    assert!(last.waiting_since.is_some() && !last.ok, "{last:?}");
    assert!(index.versions.is_empty());
    assert_eq!(fake.calls(), vec!["401", "866"], "one question, no loop");

    // The CLI shows it as waiting, not as FAILED.
    let out = cli(&run.cfg, &["devices", "list"]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("fritz: last fetch WAITING FOR YOUR CONFIRMATION"),
        "{said}"
    );
    assert!(!said.contains("FAILED"), "{said}");

    // The user presses the button; the next fetch exports.
    fake.confirm();
    let job = run.fetch("fritz").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("fritz").len(), 1);
    let last = run.index("fritz").await.last_fetch.unwrap();
    assert!(
        last.ok && last.state == FetchState::Ok && last.waiting_since.is_none(),
        "{last:?}"
    );

    let log = run.finish();
    assert_no_fritz_secret("the log", &log, &fake);
}

#[tokio::test]
async fn fritzbox_second_factor_shows_as_waiting_in_the_api() {
    let fake = FakeFritzBox::start("offsite", PASSWORD).await;
    fake.edit(|s| s.second_factor = true);
    let device: offsite::devices::DeviceConfig = toml::from_str(
        fritz_section("x", &fake, PASSWORD)
            .split_once('\n')
            .unwrap()
            .1,
    )
    .unwrap();
    let mut h = crate::common::Harness::start_with(|c| {
        c.devices.insert("fritz".into(), device);
    })
    .await;
    let base = format!("{}/api/v1/devices", h.base_url());
    let c = reqwest::Client::new();
    let r = c.post(format!("{base}/fritz/fetch")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list: serde_json::Value = c.get(&base).send().await.unwrap().json().await.unwrap();
        if list[0]["last_fetch"]["state"] == "waiting_for_confirmation" {
            break list;
        }
        assert!(Instant::now() < deadline, "never waiting: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        list[0]["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("waiting for your confirmation on the FRITZ!Box"),
        "{list}"
    );
    assert_no_fritz_secret("the API's list", &list.to_string(), &fake);
    // Home Assistant is told to go and confirm, once: not "keeps failing".
    let st = &h.running().state;
    let wanted =
        offsite::homeassistant::wanted_notifications(&st.store, &st.services, &st.registry)
            .await
            .unwrap();
    let ids: Vec<&str> = wanted.iter().map(|n| n.id.as_str()).collect();
    assert!(
        ids.contains(&"offsite_device_confirm_fritz"),
        "no confirmation notice: {ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.contains("device_failing")),
        "a wait is not a failure: {ids:?}"
    );
    let notice = wanted
        .iter()
        .find(|n| n.id == "offsite_device_confirm_fritz")
        .unwrap();
    assert!(
        notice.message.contains("Confirm it on the device"),
        "{}",
        notice.message
    );
    assert_no_fritz_secret("the notification", &notice.message, &fake);
    h.stop().await;
}

#[tokio::test]
async fn fritzbox_wrong_password_and_an_expired_download_url_fail_clearly_without_secrets() {
    let fake = FakeFritzBox::start("offsite", "the-box-has-another-one").await;
    let mut run = Run::start(&fritz_section("fritz", &fake, PASSWORD)).await;
    let job = run.fetch("fritz").await;
    assert_eq!(job.state, JobState::Discarded, "not retried: {job:?}");
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device fritz") && err.contains("refused the credentials"),
        "{err}"
    );
    assert_no_fritz_secret("the job's error", &err, &fake);
    let last = run.index("fritz").await.last_fetch.unwrap();
    assert_eq!(last.state, FetchState::Failed, "{last:?}");

    // The right password, but the download URL has expired by the time it is fetched.
    fake.edit(|s| {
        s.password = PASSWORD.into();
        s.validity = Duration::ZERO;
    });
    let out = cli(&run.cfg, &["devices", "test", "fritz"]).await;
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("device fritz") && said.contains("refused its own download URL"),
        "{said}"
    );
    assert_no_fritz_secret("the CLI's answer", &said, &fake);

    let log = run.finish();
    assert_no_fritz_secret("the log", &log, &fake);
    for secret in [PASSWORD, EXPORT_PASSWORD] {
        assert_no_secret_outside_artifacts(&run.data, secret);
    }
}

#[test]
fn fritzbox_without_an_export_password_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (section, field) in [
        (
            "type = \"fritzbox\"\nhost = \"192.168.178.1\"\npassword = \"abcdefghij\"",
            "devices.fb.export_password",
        ),
        (
            "type = \"fritzbox\"\nhost = \"192.168.178.1\"\nexport_password = \"abcdefghij\"",
            "devices.fb.password",
        ),
        (
            "type = \"http\"\nurl = \"http://10.0.0.9/x\"\nauth = \"digest\"",
            "devices.fb.password",
        ),
    ] {
        let cfg = crate::cli::write_config(dir.path(), &format!("[devices.fb]\n{section}\n"));
        let out = crate::cli::offsite(&cfg, &["run"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section}: started");
        assert!(err.contains(field), "{section}: {err}");
    }
}

#[tokio::test]
async fn generic_http_digest_device() {
    let fake = FakeFritzBox::start("offsite", PASSWORD).await;
    let url = fake.issue_url();
    let mut run = Run::start(&format!(
        "[devices.anything]\ntype = \"http\"\nurl = \"{url}\"\nauth = \"digest\"\nusername = \"offsite\"\npassword = \"{PASSWORD}\"\n"
    ))
    .await;
    let job = run.fetch("anything").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("anything");
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(run.dir("anything").join(&files[0])).unwrap();
    assert!(bytes.starts_with(b"**** FRITZ!Box"));
    let log = run.finish();
    assert!(!log.contains(PASSWORD));
}

const API_KEY: &str = "w86XNZob/8Oq8aC5r0kbNarNtdpoQU781fyoeaOBQsBwkXUt";

#[tokio::test]
async fn opnsense_backup_download_stored_as_xml_a_save_without_change_stores_nothing() {
    let fake = FakeOpnSense::start(API_KEY, PASSWORD).await;
    let mut run = Run::start(&format!(
        "[devices.fw]\ntype = \"opnsense\"\nhost = \"{}\"\nusername = \"{API_KEY}\"\npassword = \"{PASSWORD}\"\n",
        fake.base
    ))
    .await;
    let job = run.fetch("fw").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    let files = run.backups("fw");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".xml"), "{files:?}");
    let text = std::fs::read_to_string(run.dir("fw").join(&files[0])).unwrap();
    assert!(text.contains("<hostname>fw</hostname>"), "{text}");

    // A save that changed nothing moves <revision><time>: no new version.
    fake.save();
    let job = run.fetch("fw").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("fw"), files);
    assert_eq!(fake.state.lock().unwrap().downloads, 2);

    // A change: a new version.
    fake.edit(|s| {
        s.saves += 1;
        s.hostname = "gw".into();
    });
    let job = run.fetch("fw").await;
    assert_eq!(job.state, JobState::Completed, "{:?}", job.last_error);
    assert_eq!(run.backups("fw").len(), 2);

    let out = cli(&run.cfg, &["devices", "test", "fw"]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("3 configuration-history revision(s)"),
        "{said}"
    );

    let log = run.finish();
    assert!(!log.contains(PASSWORD) && !log.contains(API_KEY));
    assert_no_secret_outside_artifacts(&run.data, PASSWORD);
    assert_no_secret_outside_artifacts(&run.data, API_KEY);
}

#[tokio::test]
async fn opnsense_wrong_key_and_an_empty_history_fail_clearly() {
    let fake = FakeOpnSense::start(API_KEY, "the-real-secret-is-another").await;
    let mut run = Run::start(&format!(
        "[devices.fw]\ntype = \"opnsense\"\nhost = \"{}\"\nusername = \"{API_KEY}\"\npassword = \"{PASSWORD}\"\n",
        fake.base
    ))
    .await;
    let job = run.fetch("fw").await;
    assert_eq!(job.state, JobState::Discarded, "not retried: {job:?}");
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device fw") && err.contains("refused the API key (HTTP 401)"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD) && !err.contains(API_KEY), "{err}");

    fake.edit(|s| {
        s.secret = PASSWORD.into();
        s.empty_history = true;
    });
    let job = run.fetch("fw").await;
    assert_eq!(job.state, JobState::Discarded, "{job:?}");
    let err = job.last_error.clone().unwrap();
    assert!(
        err.contains("device fw") && err.contains("empty body"),
        "{err}"
    );
    assert!(run.backups("fw").is_empty(), "an empty answer is no backup");

    let log = run.finish();
    assert!(!log.contains(PASSWORD) && !log.contains(API_KEY));
    assert_no_secret_outside_artifacts(&run.data, PASSWORD);
}

#[tokio::test]
async fn an_offline_device_is_retried_then_home_assistant_is_told_it_keeps_failing() {
    // A port nobody listens on: the device is off.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let device: offsite::devices::DeviceConfig = toml::from_str(&format!(
        "type = \"wled\"\nhost = \"127.0.0.1:{port}\"\nretries = 2\ntimeout_secs = 2\n"
    ))
    .unwrap();
    let mut h = crate::common::Harness::start_with(|c| {
        c.devices.insert("lamp".into(), device);
        // Each retry waits a second: wide enough to see the job between its attempts.
        c.engine.backoff_cap = Duration::from_secs(1);
    })
    .await;
    let st = h.running().state.clone();
    let wanted = || async {
        offsite::homeassistant::wanted_notifications(&st.store, &st.services, &st.registry)
            .await
            .unwrap()
    };
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/devices/lamp/fetch", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["job"]["id"]
        .as_i64()
        .unwrap();
    // Retried while attempts are left, and nobody is bothered meanwhile.
    let retrying = wait_for(h.store(), id, |j| j.state == JobState::Retryable).await;
    assert!(
        retrying
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("device lamp"),
        "{retrying:?}"
    );
    assert!(
        !wanted()
            .await
            .iter()
            .any(|n| n.id.contains("device_failing")),
        "told before the retries were used"
    );
    let done = wait_for(h.store(), id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Discarded, "{done:?}");
    assert_eq!(done.attempt, 3, "retries = 2: three attempts");
    let notices = wanted().await;
    let notice = notices
        .iter()
        .find(|n| n.id == "offsite_device_failing_lamp")
        .unwrap_or_else(|| panic!("no notification: {notices:?}"));
    assert!(notice.message.contains("lamp"), "{}", notice.message);
    h.stop().await;
}
