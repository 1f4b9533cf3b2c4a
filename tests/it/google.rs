//! google_delta end to end: the Google Drive fake (tests/support/google_drive.rs) as the source,
//! two buckets on moto's S3 server as the destinations (the second with a 1,000-part limit),
//! offsite running in-process. Authorized through the installed-app flow (the pasted loopback
//! address), an initial sync of a tree, then a delta with additions, a modification, a rename,
//! a move and deletions; the mirror is compared object by object with what Drive holds.

use std::{collections::BTreeMap, time::Duration};

use offsite::{config::Config, jobs::services::Services, ops, queue::JobState};
use serde_json::json;

use crate::common::{Harness, test_config};
use crate::support::google_drive::{self as gd, FakeDrive};
use crate::support::s3::Moto;

fn s3_dest(moto: &Moto, extra: &str) -> offsite::config::DestinationConfig {
    toml::from_str(&format!(
        "type = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{}\"\n\
         prefix = \"mirror\"\naddressing = \"path\"\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing-secret\"\n{extra}",
        moto.endpoint(),
        moto.bucket
    ))
    .unwrap()
}

fn config(dir: &std::path::Path, drive: &FakeDrive, aws: &Moto, eu: &Moto, extra: &str) -> Config {
    let mut c = test_config(dir);
    c.destinations.insert(
        "aws".into(),
        s3_dest(aws, "storage_class = \"INTELLIGENT_TIERING\""),
    );
    c.destinations
        .insert("eu".into(), s3_dest(eu, "max_parts = 1000"));
    let g = toml::from_str(&format!(
        "client_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{}\"\ntoken_url = \"{}\"\n\
         auth_url = \"{}\"\ndestinations = [\"aws\", \"eu\"]\n\
         exclude_patterns = [\"*.tmp\"]\nschedule = {{ every = \"24h\" }}\n{extra}",
        gd::CLIENT_ID,
        gd::CLIENT_SECRET,
        drive.base_url(),
        drive.token_url(),
        drive.auth_url(),
    ))
    .unwrap();
    c.google_drive.insert("drive".into(), g);
    c
}

/// Authorizes the source the way a user does: open the link, consent, paste the address the
/// browser ended on.
async fn authorize(config: &Config, drive: &FakeDrive) {
    let services = Services::new(config).unwrap();
    assert!(ops::authorization::needs_authorization(&services, "drive"));
    let started = ops::authorization::start(&services, "drive", None).unwrap();
    let landed = drive.consent(&started.url);
    assert!(landed.starts_with("http://127.0.0.1:8765/?"), "{landed}");
    ops::authorization::exchange(&services, "drive", &started, &landed, None)
        .await
        .unwrap();
    assert!(!ops::authorization::needs_authorization(&services, "drive"));
}

/// Every object in the bucket, by key, with its bytes.
async fn objects(moto: &Moto) -> BTreeMap<String, Vec<u8>> {
    let (_, listing) = moto.get("?list-type=2&max-keys=1000").await;
    let keys: Vec<String> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(|k| k.replace("&amp;", "&"))
        .collect();
    // Objects are read signed, through the S3 destination's own read-back.
    let cfg: offsite::destinations::s3::S3Config = toml::from_str(&format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{}\"\naddressing = \"path\"\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing-secret\"\n",
        moto.endpoint(),
        moto.bucket
    ))
    .unwrap();
    let s3 = offsite::destinations::s3::S3Destination::new(&cfg, reqwest::Client::new()).unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let mut bytes = Vec::new();
        use offsite::destinations::Destination;
        use tokio::io::AsyncReadExt;
        s3.open_at(&k, 0)
            .await
            .unwrap()
            .read_to_end(&mut bytes)
            .await
            .unwrap();
        out.insert(k, bytes);
    }
    out
}

/// Runs one sync and waits until it and every file job it made are done.
async fn sync(h: &Harness) {
    let job = h.enqueue("google_delta", json!({"source": "drive"})).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.state, JobState::Completed);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = h.store().counts().await.unwrap();
        let open: i64 = counts
            .iter()
            .filter(|(_, s, _)| {
                matches!(
                    s,
                    JobState::Available
                        | JobState::Running
                        | JobState::Retryable
                        | JobState::Scheduled
                )
            })
            .map(|(_, _, n)| *n)
            .sum();
        let failed: Vec<_> = counts
            .iter()
            .filter(|(k, s, _)| k == "google_file" && *s == JobState::Discarded)
            .collect();
        assert!(failed.is_empty(), "file jobs gave up: {failed:?}");
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs still open: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_drive_tree_is_mirrored_and_follows_its_changes() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let eu = Moto::start().await.unwrap();
    let drive = FakeDrive::start().await;
    let work = drive.add_folder("Work", "root");
    let sub = drive.add_folder("Sub", &work);
    let notes = drive.add_file("notes.txt", &work, b"first notes");
    let big = drive.add_file_sized("big.bin", &sub, 24 * 1024 * 1024 + 17, 7);
    let twin = drive.add_file("copy of notes.txt", "root", b"first notes");
    let plan = drive.add_workspace("Plan", &work, gd::DOCUMENT, 5000);
    let form = drive.add_workspace("Survey", &work, gd::FORM, 0);
    let tmp = drive.add_file("scratch.tmp", "root", b"temporary");
    let doomed = drive.add_file("old.txt", "root", b"to be deleted");
    let trashed = drive.add_file("trashed.txt", &sub, b"to be trashed");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &drive, &aws, &eu, "");
    authorize(&cfg, &drive).await;
    let h = Harness::start_in(dir, cfg).await;
    sync(&h).await;
    let docx = drive.export_bytes(&plan, gd::DOCX);
    for moto in [&aws, &eu] {
        let got = objects(moto).await;
        let want: BTreeMap<String, Vec<u8>> = [
            ("mirror/google-drive/Work/notes.txt", drive.content(&notes)),
            ("mirror/google-drive/Work/Sub/big.bin", drive.content(&big)),
            (
                "mirror/google-drive/copy of notes.txt",
                drive.content(&twin),
            ),
            ("mirror/google-drive/Work/Plan.docx", docx.clone()),
            ("mirror/google-drive/old.txt", drive.content(&doomed)),
            (
                "mirror/google-drive/Work/Sub/trashed.txt",
                drive.content(&trashed),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "the mirror holds every file, the Form and the excluded file not"
        );
        for (k, v) in &want {
            assert!(
                &got[k] == v,
                "{k} is byte-identical to Drive's file ({} bytes stored, {} in Drive)",
                got[k].len(),
                v.len()
            );
        }
    }
    // One download per destination; the twin's content was copied on the server.
    assert_eq!(drive.media_downloads(&big), 2);
    assert_eq!(
        drive.media_downloads(&notes) + drive.media_downloads(&twin),
        2,
        "identical content is downloaded once per destination"
    );
    assert_eq!(drive.media_downloads(&tmp), 0);
    let _ = form;

    // The delta.
    drive.reset_counters();
    drive.modify(&notes, b"second notes, longer");
    drive.rename(&big, "big-renamed.bin");
    let added = drive.add_file("new.txt", &sub, b"added later");
    drive.move_to(&twin, &sub);
    drive.delete_forever(&doomed);
    drive.trash(&trashed);
    sync(&h).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for moto in [&aws, &eu] {
        let got = objects(moto).await;
        let live: BTreeMap<&str, Vec<u8>> = [
            ("mirror/google-drive/Work/notes.txt", drive.content(&notes)),
            (
                "mirror/google-drive/Work/Sub/big-renamed.bin",
                drive.content(&big),
            ),
            (
                "mirror/google-drive/Work/Sub/copy of notes.txt",
                b"first notes".to_vec(),
            ),
            (
                "mirror/google-drive/Work/Sub/new.txt",
                drive.content(&added),
            ),
            ("mirror/google-drive/Work/Plan.docx", docx.clone()),
        ]
        .into_iter()
        .collect();
        for (k, v) in &live {
            assert!(got.get(*k) == Some(v), "{k} is current");
        }
        for gone in [
            "mirror/google-drive/old.txt",
            "mirror/google-drive/Work/Sub/big.bin",
            "mirror/google-drive/copy of notes.txt",
            "mirror/google-drive/Work/Sub/trashed.txt",
        ] {
            assert!(!got.contains_key(gone), "{gone} left its old path");
            let kept = gone.replace(
                "mirror/google-drive/",
                &format!("mirror/google-drive/.trash/{today}/"),
            );
            assert!(
                got.contains_key(&kept),
                "{kept} holds the soft-deleted file"
            );
        }
        let versions: Vec<&String> = got
            .keys()
            .filter(|k| k.starts_with("mirror/google-drive/.versions/Work/notes.txt/"))
            .collect();
        assert_eq!(versions.len(), 1, "{:?}", got.keys());
        assert_eq!(got[versions[0]], b"first notes");
    }
    // A rename and a move are copies on the server: nothing downloaded again.
    assert_eq!(drive.media_downloads(&big), 0);
    assert_eq!(drive.media_downloads(&twin), 0);
    assert_eq!(drive.media_downloads(&notes), 2);

    // Trash older than trash_days is purged.
    let (writer, _) = h.store().pools();
    sqlx::query("update gdrive_kept set kept_at = kept_at - 31 * 86400000 where kind = 'trash'")
        .execute(writer)
        .await
        .unwrap();
    sync(&h).await;
    for moto in [&aws, &eu] {
        let got = objects(moto).await;
        assert!(
            !got.keys().any(|k| k.contains("/.trash/")),
            "purged: {:?}",
            got.keys()
        );
        assert!(got.contains_key("mirror/google-drive/Work/notes.txt"));
    }
}

#[tokio::test]
async fn a_revoked_token_makes_the_source_wait_for_authorization() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let eu = Moto::start().await.unwrap();
    let drive = FakeDrive::start().await;
    drive.add_file("a.txt", "root", b"a");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &drive, &aws, &eu, "");
    authorize(&cfg, &drive).await;
    drive.revoke_all();
    let h = Harness::start_in(dir, cfg).await;
    let job = h.enqueue("google_delta", json!({"source": "drive"})).await;
    let waiting = crate::common::wait_for(h.store(), job.id, |j| {
        j.state == JobState::Scheduled && j.last_error.is_some()
    })
    .await;
    assert_eq!(waiting.attempt, 0, "waiting uses no attempt");
    let err = waiting.last_error.unwrap_or_default();
    assert!(err.contains("authorize again"), "{err}");
    // Authorizing again wakes it, and it runs.
    let services = Services::new(&config(
        h.data_dir().parent().unwrap(),
        &drive,
        &aws,
        &eu,
        "",
    ))
    .unwrap();
    let started = ops::authorization::start(&services, "drive", None).unwrap();
    let landed = drive.consent(&started.url);
    ops::authorization::exchange(&services, "drive", &started, &landed, None)
        .await
        .unwrap();
    let woken = ops::authorization::authorized(h.store(), &Default::default(), "drive")
        .await
        .unwrap();
    assert!(woken >= 1);
    h.wait_state(job.id, JobState::Completed).await;
}

#[test]
fn a_google_photos_section_explains_what_works_instead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offsite.toml");
    std::fs::write(&path, "[google_photos]\nenabled = true\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("google_photos"), "{err}");
    assert!(err.contains("Takeout"), "{err}");
    assert!(err.contains("31 March 2025"), "{err}");
}

#[tokio::test]
async fn the_api_panel_and_home_assistant_show_the_mirror() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let eu = Moto::start().await.unwrap();
    let drive = FakeDrive::start().await;
    let notes = drive.add_file("notes.txt", "root", b"some notes");
    drive.add_workspace("Survey", "root", gd::FORM, 0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &drive, &aws, &eu, "");
    let h = Harness::start_in(dir, cfg).await;
    let base = h.base_url();
    let http = reqwest::Client::new();
    let st = &h.running().state;

    // Not authorized yet: the panel offers it, Home Assistant is told.
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h2>Google Drive</h2>"), "{page}");
    assert!(page.contains("Needs authorization"));
    let wanted =
        offsite::homeassistant::wanted_notifications(&st.store, &st.services, &st.registry)
            .await
            .unwrap();
    assert!(
        wanted
            .iter()
            .any(|n| n.id == "offsite_reauthorize_drive" && n.title.contains("Google Drive")),
        "{wanted:?}"
    );
    // The API starts the authorization; the pasted address finishes it.
    let started =
        crate::common::json_of(http.post(format!("{base}/api/v1/destinations/drive/authorize")))
            .await;
    let url = started["authorize_url"]
        .as_str()
        .expect("a link")
        .to_string();
    assert!(
        url.contains("access_type=offline") && url.contains("drive.readonly"),
        "{url}"
    );
    let landed = drive.consent(&url);
    let finished = http
        .post(format!("{base}/api/v1/destinations/drive/authorize/code"))
        .json(&json!({ "code": landed }))
        .send()
        .await
        .unwrap();
    assert!(
        finished.status().is_success(),
        "{}",
        finished.text().await.unwrap()
    );

    // Sync now through the API.
    let reply = http
        .post(format!("{base}/api/v1/google-drive/drive/sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let job: serde_json::Value = reply.json().await.unwrap();
    h.wait_state(job["job"]["id"].as_i64().unwrap(), JobState::Completed)
        .await;
    // Wait for the file jobs.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let list = loop {
        let list = crate::common::json_of(http.get(format!("{base}/api/v1/google-drive"))).await;
        let current: Vec<i64> = list[0]["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["current"].as_i64().unwrap())
            .collect();
        if current == [1, 1] {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list[0]["authorized"], true);
    assert_eq!(list[0]["following_changes"], true);
    assert_eq!(list[0]["files"], 1);
    assert_eq!(list[0]["skipped"], 1);
    assert_eq!(list[0]["destinations"][0]["behind"], 0);
    // What do we have of notes.txt, where, since when.
    let files =
        crate::common::json_of(http.get(format!("{base}/api/v1/google-drive/drive/files?q=NOTES")))
            .await;
    assert_eq!(files[0]["file_id"], notes.as_str());
    assert_eq!(files[0]["md5"], drive.md5(&notes).as_str());
    let copies = files[0]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0]["remote"], "mirror/google-drive/notes.txt");
    assert!(copies[0]["stored_at"].as_i64().unwrap() > 0);
    let survey = crate::common::json_of(
        http.get(format!("{base}/api/v1/google-drive/drive/files?q=survey")),
    )
    .await;
    assert!(
        survey[0]["skipped"].as_str().unwrap().contains("Form"),
        "{survey}"
    );
    let empty = http
        .get(format!("{base}/api/v1/google-drive/drive/files?q=%20"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 422);
    let unknown = http
        .post(format!("{base}/api/v1/google-drive/nope/sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );

    // The panel and Home Assistant say it is mirrored; no secret anywhere.
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Mirrored") && page.contains("Sync now"),
        "{page}"
    );
    let sensors = offsite::homeassistant::wanted_sensors(
        &st.store,
        &st.services,
        &st.registry,
        &st.config,
        "offsite",
    )
    .await
    .unwrap();
    let sensor = sensors
        .iter()
        .find(|s| s.entity_id == "sensor.offsite_google_drive_drive")
        .expect("a sensor per source");
    assert_eq!(sensor.state, "ok");
    assert_eq!(sensor.attributes["files"], 1);
    let wanted =
        offsite::homeassistant::wanted_notifications(&st.store, &st.services, &st.registry)
            .await
            .unwrap();
    assert!(!wanted.iter().any(|n| n.id == "offsite_reauthorize_drive"));
    let token_file = h.data_dir().join("credentials/google-drive.json");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    let refresh = stored["refresh_token"].as_str().unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for text in [
        page,
        list.to_string(),
        files.to_string(),
        format!("{sensors:?}"),
    ] {
        assert!(!text.contains(refresh), "the refresh token leaked");
        assert!(
            !text.contains(gd::CLIENT_SECRET),
            "the client secret leaked"
        );
    }
}

#[tokio::test]
async fn a_refused_page_token_lists_everything_again_and_what_is_gone_is_soft_deleted() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let eu = Moto::start().await.unwrap();
    let drive = FakeDrive::start().await;
    let kept = drive.add_file("kept.txt", "root", b"stays");
    let gone = drive.add_file("gone.txt", "root", b"deleted while the token was lost");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &drive, &aws, &eu, "");
    authorize(&cfg, &drive).await;
    let h = Harness::start_in(dir, cfg).await;
    sync(&h).await;
    // The token offsite holds is no longer one Drive accepts, and meanwhile a file went.
    let (writer, _) = h.store().pools();
    sqlx::query("update gdrive_sources set page_token = 'no-longer-valid'")
        .execute(writer)
        .await
        .unwrap();
    drive.delete_forever(&gone);
    drive.reset_counters();
    sync(&h).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for moto in [&aws, &eu] {
        let got = objects(moto).await;
        assert_eq!(got["mirror/google-drive/kept.txt"], b"stays");
        assert!(
            !got.contains_key("mirror/google-drive/gone.txt"),
            "{:?}",
            got.keys()
        );
        assert!(
            got.contains_key(&format!("mirror/google-drive/.trash/{today}/gone.txt")),
            "{:?}",
            got.keys()
        );
    }
    assert_eq!(
        drive.media_downloads(&kept),
        0,
        "what is unchanged is not sent again"
    );
    assert!(drive.counters().list >= 1, "everything was listed again");
    // And the feed is followed again from a token Drive gave.
    let (_, reader) = h.store().pools();
    let token: Option<String> = sqlx::query_scalar("select page_token from gdrive_sources")
        .fetch_one(reader)
        .await
        .unwrap();
    assert!(token.is_some_and(|t| t != "no-longer-valid"));
}

#[tokio::test]
async fn each_source_has_its_schedule_and_poll_is_the_real_time_mode() {
    let drive = FakeDrive::start().await;
    // Destinations are only named here; nothing is sent.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    for d in ["aws", "eu"] {
        cfg.destinations.insert(
            d.into(),
            toml::from_str(&format!(
                "type = \"folder\"\npath = \"{}\"",
                dir.path().join(d).display()
            ))
            .unwrap(),
        );
    }
    for (name, extra) in [
        ("hourly", ""),
        ("cron", "schedule = { cron = \"0 30 2 * * *\" }"),
        ("live", "schedule = { every = \"24h\" }\npoll = \"30s\""),
    ] {
        let g = toml::from_str(&format!(
            "client_id = \"{}\"\napi_url = \"{}\"\ndestinations = [\"aws\", \"eu\"]\n{extra}",
            gd::CLIENT_ID,
            drive.base_url()
        ))
        .unwrap();
        cfg.google_drive.insert(name.into(), g);
    }
    let h = Harness::start_in(dir, cfg).await;
    let all = offsite::queue::scheduler::list(h.store()).await.unwrap();
    let spec = |name: &str| {
        all.iter()
            .find(|s| s.record.def.name == format!("google_delta.{name}"))
            .and_then(|s| s.spec.as_ref())
            .map(|s| s.describe())
            .unwrap_or_else(|| panic!("no schedule google_delta.{name}"))
    };
    assert_eq!(spec("hourly"), "every 1h");
    assert!(
        spec("cron").starts_with("cron 0 30 2 * * *"),
        "{}",
        spec("cron")
    );
    // Below the engine's minute, each run (every minute) polls the feed every 30 s itself.
    assert_eq!(spec("live"), "every 1m", "poll wins over schedule");
}

#[test]
fn a_wrong_google_drive_section_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offsite.toml");
    let check = |body: &str| {
        std::fs::write(&path, body).unwrap();
        Config::load(Some(&path)).unwrap_err().to_string()
    };
    let dest = "[destinations.box]\ntype = \"dropbox\"\npath = \"/B\"\napp_key = \"k\"\n\
                [destinations.nas]\ntype = \"folder\"\npath = \"/tmp/nas\"\n";
    let e = check(&format!(
        "{dest}[google_drive.me]\ndestinations = [\"box\"]\n"
    ));
    assert!(
        e.contains("google_drive.me.destinations[0]") && e.contains("S3 or folder"),
        "{e}"
    );
    let e = check(&format!(
        "{dest}[google_drive.me]\ndestinations = [\"nowhere\"]\n"
    ));
    assert!(e.contains("\"nowhere\" is not a destination"), "{e}");
    let e = check(&format!(
        "{dest}[google_drive.me]\ndestinations = [\"nas\"]\nexport = {{ document = \"xlsx\" }}\n"
    ));
    assert!(
        e.contains("google_drive.me.export.document") && e.contains("docx"),
        "{e}"
    );
    let e = check(&format!(
        "{dest}[google_drive.me]\ndestinations = [\"nas\"]\nexclude_patterns = [\"[\"]\n"
    ));
    assert!(e.contains("exclude_patterns[0]"), "{e}");
    let e = check(&format!("{dest}[google_drive.me]\ndestinations = []\n"));
    assert!(e.contains("google_drive.me.destinations"), "{e}");
    let e = check(&format!(
        "{dest}[google_drive.me]\ndestinations = [\"nas\"]\nprefix = \"../up\"\n"
    ));
    assert!(e.contains("google_drive.me.prefix"), "{e}");
}

#[tokio::test]
async fn the_real_time_mode_picks_a_change_up_within_its_poll_interval() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let eu = Moto::start().await.unwrap();
    let drive = FakeDrive::start().await;
    drive.add_file("first.txt", "root", b"first");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &drive, &aws, &eu, "poll = \"1s\"");
    authorize(&cfg, &drive).await;
    let mut h = Harness::start_in(dir, cfg).await;
    let job = h.enqueue("google_delta", json!({"source": "drive"})).await;
    let reader = h.store().pools().1.clone();
    let stored = |name: &'static str| {
        let reader = reader.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from gdrive_copies c join gdrive_files f using (source, file_id) \
                 where f.name = ? and c.remote is not null",
            )
            .bind(name)
            .fetch_one(&reader)
            .await
            .unwrap();
            n
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stored("first.txt").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first sync never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drive.add_file("second.txt", "root", b"second");
    let added = std::time::Instant::now();
    while stored("second.txt").await < 2 {
        assert!(
            added.elapsed() < Duration::from_secs(15),
            "the change was not picked up while the run polls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same run found it: it is still polling, and no other sync ran.
    let runs: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'google_delta'")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    let still = h.store().job(job.id).await.unwrap().unwrap();
    assert_eq!(still.state, JobState::Running);
    h.stop().await;
}

/// The real binary, killed with SIGKILL while a large file is half mirrored, resumes from its
/// last acknowledged part: the object is byte-identical (MD5 checked by offsite against Drive's)
/// and the restart downloads only what was not acknowledged.
#[tokio::test]
async fn kill_9_mid_file_resumes_from_the_last_acknowledged_part() {
    let Some(aws) = Moto::start().await else {
        return;
    };
    let drive = FakeDrive::start().await;
    const MIB: u64 = 1024 * 1024;
    let size = 48 * MIB + 123;
    let big = drive.add_file_sized("big.bin", "root", size, 11);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = crate::cli::write_config(
        dir.path(),
        &format!(
            "[engine]\nlease = \"10m\"\n\
             [destinations.aws]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             bucket = \"{}\"\nprefix = \"mirror\"\naddressing = \"path\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing-secret\"\n\
             [google_drive.drive]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
             api_url = \"{}\"\ntoken_url = \"{}\"\nauth_url = \"{}\"\n\
             destinations = [\"aws\"]\nchunk_mib = 8\nschedule = {{ every = \"24h\" }}\n",
            aws.endpoint(),
            aws.bucket,
            gd::CLIENT_ID,
            gd::CLIENT_SECRET,
            drive.base_url(),
            drive.token_url(),
            drive.auth_url(),
        ),
    );
    let cfg = Config::load(Some(&cfg_path)).unwrap();
    authorize(&cfg, &drive).await;
    // The download stops sending at 30 MiB: the parts before it are sent, and all but the one
    // whose answer waits beside the stalled read are checkpointed.
    let gate = drive.pause_download_at(&big, 30 * MIB);
    let log = dir.path().join("offsite.log");
    let spawn = || {
        std::process::Command::new(crate::cli::bin())
            .current_dir(dir.path())
            .args(["--config", cfg_path.to_str().unwrap(), "run"])
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    };
    let mut worker = spawn();
    let o = crate::cli::offsite(&cfg_path, &["google", "sync", "drive"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    gate.wait_paused().await;
    let store = offsite::queue::Store::open(&dir.path().join("data/offsite.db"))
        .await
        .unwrap();
    let acked = |store: &offsite::queue::Store| {
        let store = store.clone();
        async move {
            let jobs = store
                .list_jobs(
                    &offsite::queue::store::JobFilter {
                        kind: Some("google_file".into()),
                        ..Default::default()
                    },
                    10,
                    None,
                )
                .await
                .unwrap();
            jobs.iter()
                .filter_map(|j| j.checkpoint.as_ref()?["offset"].as_u64())
                .max()
                .unwrap_or(0)
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked(&store).await < 16 * MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "no parts acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let at_kill = acked(&store).await;
    drop(gate);
    let served_before = drive.bytes_served();
    assert!(served_before < size, "the kill came mid-download");

    let mut worker = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (_, reader) = store.pools();
    loop {
        let stored: i64 = sqlx::query_scalar(
            "select count(*) from gdrive_copies where remote is not null and md5 is not null",
        )
        .fetch_one(reader)
        .await
        .unwrap();
        if stored == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never finished after the restart; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    let got = objects(&aws).await;
    assert_eq!(got.len(), 1, "{:?}", got.keys());
    assert!(
        got["mirror/google-drive/big.bin"] == drive.content(&big),
        "byte-identical"
    );
    let again = drive.bytes_served() - served_before;
    // From the checkpoint on (Range), not from byte 0: what was acknowledged is not fetched
    // again.
    assert!(at_kill >= 16 * MIB);
    assert!(
        again <= size - at_kill,
        "the restart downloaded {again} bytes; {} were left after the {at_kill} acknowledged",
        size - at_kill
    );
    let (_, uploads) = aws.get("?uploads").await;
    assert!(
        !uploads.contains("<Upload>"),
        "no multipart upload left: {uploads}"
    );
}
