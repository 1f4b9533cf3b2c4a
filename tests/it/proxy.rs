//! offsite behind a real reverse proxy (nginx), and the sign-in link a newcomer gets from the
//! start-up log. An address proves nothing: through nginx every remote user is a loopback
//! client with `Host: 127.0.0.1:…`, so standalone only the token lets anyone in.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use offsite::{
    config::{DestinationConfig, SnapshotsConfig, SourceConfig},
    queue::store::JobFilter,
};
use regex::Regex;
use reqwest::{Client, StatusCode, header};

use crate::{common::Harness, panel::eventually, support::nginx::Nginx};

fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of every cookie an answer sets.
fn cookies_of(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect()
}

fn csrf_of(page: &str) -> String {
    Regex::new(r#"name=csrf value="([^"]+)""#)
        .unwrap()
        .captures(page)
        .expect("a form with a CSRF field")[1]
        .to_string()
}

/// A worker with the built-in defaults' access rules (no token configured, loopback not
/// trusted) and a folder backup flow, so the panel offers "Back up now".
async fn standalone() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut config = crate::common::test_config(dir.path());
    config.api.trust_loopback = false;
    config
        .sources
        .insert("inbox".into(), SourceConfig::Folder { path: inbox });
    let dest: DestinationConfig = toml::from_str(&format!(
        "type = \"folder\"\npath = \"{}\"\n",
        outbox.display()
    ))
    .unwrap();
    config.destinations.insert("outbox".into(), dest);
    config.snapshots = Some(SnapshotsConfig {
        enabled: true,
        source: "inbox".into(),
        destinations: vec!["outbox".into()],
        scan_on_start: false,
        schedule: toml::from_str("every = \"24h\"").unwrap(),
    });
    Harness::start_in(dir, config).await
}

async fn scans(h: &Harness) -> usize {
    h.store()
        .list_jobs(
            &JobFilter {
                kind: Some("snapshot_scan".into()),
                ..Default::default()
            },
            100,
            None,
        )
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn behind_nginx_a_remote_user_needs_the_token_for_panel_and_api() {
    let h = standalone().await;
    let nginx = Nginx::plain(h.running().addr.unwrap());
    let proxy = nginx.base_url();
    let c = no_redirects();
    // Headers a browser sends with a form from the page it was shown.
    let same_origin = |rb: reqwest::RequestBuilder| {
        rb.header(header::ORIGIN, &proxy)
            .header("sec-fetch-site", "same-origin")
    };

    // Without the token: the sign-in page, and nothing else.
    let r = c.get(format!("{proxy}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", nginx.error_log());
    assert_eq!(r.headers()[header::LOCATION], "/panel/login");
    let r = c
        .get(format!("{proxy}/panel/sections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.get(format!("{proxy}/panel/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = same_origin(c.post(format!("{proxy}/panel/backup-now")))
        .form(&[("csrf", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "Back up now is refused"
    );
    for (method, path) in [
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/destinations"),
        ("POST", "/api/v1/snapshots/run"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{proxy}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    assert_eq!(scans(&h).await, 0, "nothing was started");

    // With the token: the API.
    let token = std::fs::read_to_string(h.data_dir().join("api-token")).unwrap();
    let r = c
        .get(format!("{proxy}/api/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A wrong sign-in link: back to the sign-in page, no session.
    let r = c
        .get(format!("{proxy}/?token=not-the-token-not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/panel/login");
    assert!(
        cookies_of(&r)
            .iter()
            .all(|c| !c.starts_with("offsite_session"))
    );

    // The sign-in link: a session cookie, and the address without the token.
    let r = c
        .get(format!("{proxy}/?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    let mut jar = cookies_of(&r);
    assert!(
        jar.iter().any(|c| c.starts_with("offsite_session=")),
        "{jar:?}"
    );
    let r = c
        .get(format!("{proxy}/"))
        .header(header::COOKIE, jar.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    jar.extend(cookies_of(&r));
    let page = r.text().await.unwrap();
    assert!(page.contains("Back up now"), "{page}");
    assert!(!page.contains(&token), "the page never shows the token");
    let r = same_origin(c.post(format!("{proxy}/panel/backup-now")))
        .header(header::COOKIE, jar.join("; "))
        .form(&[("csrf", csrf_of(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/?ok="),
        "{:?}",
        r.headers()
    );
    assert_eq!(scans(&h).await, 1, "signed in, Back up now works");
}

#[tokio::test]
async fn trusting_loopback_still_refuses_what_a_proxy_says_it_relayed() {
    // The user chose api.trust_loopback; nginx configured the common way names the client in
    // X-Real-IP, which marks the request as relayed.
    let h = Harness::start_with(|c| c.api.trust_loopback = true).await;
    let nginx = Nginx::start(
        h.running().addr.unwrap(),
        "proxy_set_header X-Real-IP $remote_addr;",
    );
    let c = no_redirects();
    let r = c
        .get(format!("{}/", nginx.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = c
        .get(format!("{}/api/v1/jobs", nginx.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The same worker, asked directly from this machine: trusted as configured.
    let r = c.get(format!("{}/", h.base_url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// README's first command: `offsite run` with the built-in defaults, in an empty directory.
/// The log prints a sign-in link that opens the panel; the link carries a one-time code, so the
/// log never holds a credential that still works: the code signs in once, and the API token
/// appears nowhere in the log (not in any request's log line either, even at `trace`). The
/// file keeping the token is owner-only.
#[tokio::test]
async fn the_first_run_prints_a_one_time_sign_in_link_and_never_logs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_offsite"))
        .arg("run")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("OFFSITE_API__LISTEN", "127.0.0.1:0")
        .env("OFFSITE_LOG__LEVEL", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let link_re =
        Regex::new(r"sign in to the panel: (http://127\.0\.0\.1:\d+/\?token=([0-9a-f]+))").unwrap();
    let (link, code) = eventually("the sign-in link in the log", || {
        let l = log.lock().unwrap();
        link_re
            .captures(&l)
            .map(|c| (c[1].to_string(), c[2].to_string()))
    })
    .await;
    let file = dir.path().join("offsite-data/api-token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_ne!(
        code, token,
        "the link carries a one-time code, not the token"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    let c = no_redirects();
    let r = c.get(&link).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    let jar = cookies_of(&r);
    let base = link.split("/?").next().unwrap();
    let r = c
        .get(format!("{base}/"))
        .header(header::COOKIE, jar.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("<h1>offsite</h1>"));
    // Used up: the same link again leads to the sign-in page.
    let r = c.get(&link).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/panel/login");
    assert!(
        cookies_of(&r)
            .iter()
            .all(|c| !c.starts_with("offsite_session"))
    );
    // Requests carrying the token (in the query too) are not logged with it.
    let r = c
        .get(format!("{base}/api/v1/jobs?token={token}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{base}/?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the token itself signs in too"
    );

    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let log = log.lock().unwrap();
    assert!(!log.contains(&token), "the token is never logged:\n{log}");
    assert_eq!(log.matches(&code).count(), 1, "the code only on its line");
}
