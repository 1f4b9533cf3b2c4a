//! The panel over HTTP (ingress prefix, who gets in, CSRF, messages instead of internals) and
//! the Home Assistant integration (notifications and sensors through the fake Supervisor's
//! Core API proxy). The browser test in `browser.rs` drives the same world in Chromium.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use offsite::{
    config::{
        DestinationConfig, HomeAssistantConfig, KindConfig, Secret, SnapshotsConfig, SourceConfig,
    },
    queue::{
        JobState,
        store::{JobFilter, JobRecord, UploadRecord},
    },
};
use regex::Regex;
use reqwest::{Client, StatusCode, header};

use crate::{
    common::{Harness, data},
    support::{
        dropbox::{DEFAULT_CLIENT_ID, FakeDropbox},
        ingress::IngressProxy,
        supervisor::{FakeSupervisor, NotificationCall},
    },
};

pub const MIB: usize = 1024 * 1024;
pub const SUPERVISOR_TOKEN: &str = "supervisor-token-for-the-panel-tests";
/// The ingress proxy's address; the worker answers only it (as the add-on answers only
/// 172.30.32.2).
pub const INGRESS_FROM: &str = "127.0.0.2";
pub const APP_SECRET: &str = "app-secret-that-must-never-show";

/// The add-on as Home Assistant runs it: Supervisor source, a Dropbox destination, Home
/// Assistant integration on, and the panel behind the ingress proxy.
pub struct World {
    pub h: Harness,
    pub dropbox: FakeDropbox,
    pub sup: FakeSupervisor,
    pub ingress: IngressProxy,
}

#[derive(Default)]
pub struct WorldOptions {
    pub throttle_bytes_per_sec: u64,
    pub max_attempts: Option<i64>,
    /// `[devices.<name>]` sections.
    pub devices: Vec<(String, offsite::devices::DeviceConfig)>,
}

impl World {
    pub async fn start(opts: WorldOptions) -> World {
        let dropbox = FakeDropbox::start().await;
        dropbox.set_client_secret(Some(APP_SECRET));
        let sup = FakeSupervisor::start(SUPERVISOR_TOKEN).await;
        let base = dropbox.base_url();
        let dest: DestinationConfig = toml::from_str(&format!(
            "type = \"dropbox\"\npath = \"/HomeAssistant/Backups\"\nchunk_mib = 4\n\
             app_key = \"{DEFAULT_CLIENT_ID}\"\napp_secret = \"{APP_SECRET}\"\n\
             api_url = \"{base}\"\ncontent_url = \"{base}\"\n\
             authorize_url = \"{base}/oauth2/authorize\"\nthrottle_bytes_per_sec = {}\n",
            opts.throttle_bytes_per_sec
        ))
        .unwrap();
        let sup_url = sup.base_url();
        let h = Harness::start_with(move |c| {
            c.sources.insert(
                "ha".into(),
                SourceConfig::Supervisor {
                    url: sup_url.clone(),
                    token: Some(Secret::new(SUPERVISOR_TOKEN)),
                },
            );
            c.destinations.insert("dropbox".into(), dest);
            c.snapshots = Some(SnapshotsConfig {
                enabled: true,
                source: "ha".into(),
                destinations: vec!["dropbox".into()],
                scan_on_start: false,
                schedule: toml::from_str("every = \"24h\"").unwrap(),
            });
            c.queues.insert(
                "uploads".into(),
                offsite::config::QueueConfig { concurrency: 1 },
            );
            c.homeassistant = Some(HomeAssistantConfig {
                enabled: true,
                url: format!("{sup_url}/core/api"),
                token: Some(Secret::new(SUPERVISOR_TOKEN)),
                sensor_prefix: "offsite".into(),
                interval: Duration::from_millis(100),
                refresh: Duration::from_secs(3600),
            });
            c.api.allow_from = vec![INGRESS_FROM.parse().unwrap()];
            c.devices.extend(opts.devices);
            if let Some(m) = opts.max_attempts {
                c.kinds.insert(
                    "snapshot_upload".into(),
                    KindConfig {
                        max_attempts: Some(m),
                        ..Default::default()
                    },
                );
            }
        })
        .await;
        let ingress = IngressProxy::start(
            h.running().addr.unwrap(),
            INGRESS_FROM.parse::<IpAddr>().unwrap(),
        )
        .await;
        World {
            h,
            dropbox,
            sup,
            ingress,
        }
    }

    pub fn add_backup(&self, slug: &str, name: &str, date: &str, len: usize) -> Vec<u8> {
        let bytes = data(len, slug.len() as u64 + len as u64);
        self.sup.add_backup(slug, name, date, bytes.clone());
        bytes
    }

    pub async fn jobs(&self, filter: JobFilter) -> Vec<JobRecord> {
        self.h.store().list_jobs(&filter, 100, None).await.unwrap()
    }

    pub async fn uploads(&self) -> Vec<UploadRecord> {
        self.h.store().uploads(None, false).await.unwrap()
    }
}

/// Waits (up to 30 s) until `check` returns `Some`, polling the real state every 20 ms.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A browser-like client for the ingress URL: keeps cookies by hand, never follows redirects.
struct Browser {
    http: Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all(header::SET_COOKIE) {
            let first = v.to_str().unwrap().split(';').next().unwrap();
            let (k, val) = first.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            self.cookies.push((k.to_string(), val.to_string()));
        }
    }

    async fn get(&mut self, url: &str, extra: &[(&str, &str)]) -> (StatusCode, String) {
        let req = self.http.get(url);
        self.send(req, extra).await
    }

    /// Opens the panel (for a current CSRF token) and presses the button posting to `path`.
    async fn press(&mut self, w: &World, path: &str) -> (StatusCode, String) {
        let (_, page) = self.get(&w.ingress.url(), &[]).await;
        let csrf = csrf_of(&page);
        let url = format!("{}{path}", w.ingress.url());
        self.post(&url, &[("csrf", &csrf)], &[]).await
    }

    /// Follows a redirect the panel answered (a path under the ingress prefix).
    async fn follow(&mut self, w: &World, location: &str) -> (StatusCode, String) {
        let url = format!("{}{location}", w.ingress.origin());
        self.get(&url, &[]).await
    }

    /// Posts a form; answers the status and the Location (redirects) or the body.
    async fn post(
        &mut self,
        url: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let req = self.http.post(url).form(form);
        self.send(req, extra).await
    }

    async fn send(
        &mut self,
        mut req: reqwest::RequestBuilder,
        extra: &[(&str, &str)],
    ) -> (StatusCode, String) {
        req = req.header(header::COOKIE, self.cookie_header());
        // Like every browser, a form POST says where it comes from (the page's origin).
        let built = req.try_clone().unwrap().build().unwrap();
        if built.method() == reqwest::Method::POST
            && !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("origin"))
        {
            let u = built.url();
            req = req.header(
                header::ORIGIN,
                format!(
                    "{}://{}",
                    u.scheme(),
                    u.host_str().unwrap().to_string()
                        + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
                ),
            );
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        self.keep_cookies(&r);
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        let body = r.text().await.unwrap();
        (status, location.unwrap_or(body))
    }
}

fn csrf_of(page: &str) -> String {
    Regex::new(r#"name=csrf value="([^"]+)""#)
        .unwrap()
        .captures(page)
        .expect("a form with a CSRF field")[1]
        .to_string()
}

#[tokio::test]
async fn panel_behind_ingress_prefixes_every_link_and_only_the_proxy_gets_in() {
    let w = World::start(WorldOptions::default()).await;
    w.add_backup("aaaa1111", "Nightly", "2026-11-20T02:00:00+00:00", MIB);
    let mut b = Browser::new();
    let (status, page) = b.get(&w.ingress.url(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // Every link, form, script and stylesheet carries the ingress prefix.
    let attr = Regex::new(r#"(?:href|src|action|data-sections)="([^"]*)""#).unwrap();
    let urls: Vec<String> = attr
        .captures_iter(&page)
        .map(|c| c[1].to_string())
        .collect();
    assert!(urls.len() >= 4, "{urls:?}");
    for u in &urls {
        assert!(
            u.starts_with(&format!("{}/", w.ingress.prefix())),
            "{u} does not start with the ingress prefix"
        );
    }
    // The CSS and script load through the proxy.
    for asset in ["panel/panel.css", "panel/panel.js"] {
        let (status, _) = b.get(&format!("{}{asset}", w.ingress.url()), &[]).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
    }
    assert!(page.contains("Needs authorization"), "{page}");

    // From the proxy's address but without the ingress header (a standalone reverse proxy
    // listed in allow_from, relaying someone): not trusted with the panel.
    let from_proxy = Client::builder()
        .local_address(INGRESS_FROM.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = from_proxy
        .get(format!("{}/", w.h.base_url()))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/panel/login");

    // Straight to the worker's port from another address: refused, page and API alike.
    for path in ["/", "/panel/sections", "/api/v1/jobs"] {
        let r = Client::new()
            .get(format!("{}{path}", w.h.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn forms_need_the_csrf_token_and_a_refused_one_changes_nothing() {
    let w = World::start(WorldOptions::default()).await;
    let jobs_before = w.h.store().counts().await.unwrap();
    let url = format!("{}panel/backup-now", w.ingress.url());

    // No cookie, no field.
    let mut stranger = Browser::new();
    let (status, body) = stranger.post(&url, &[("csrf", "")], &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("did not come from this panel"), "{body}");

    let mut b = Browser::new();
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let csrf = csrf_of(&page);
    let (_, other_page) = Browser::new().get(&w.ingress.url(), &[]).await;
    let other = csrf_of(&other_page);
    assert_ne!(other, csrf);
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let refused: [(&str, &str, Headers); 4] = [
        ("a forged field with the real cookie", "00.11", &[]),
        ("another browser's genuine token", &other, &[]),
        (
            "the right token from another site",
            &csrf,
            &[("sec-fetch-site", "cross-site")],
        ),
        (
            "no Sec-Fetch-Site and a foreign Origin",
            &csrf,
            &[("origin", "http://evil.example")],
        ),
    ];
    for (what, field, extra) in refused {
        let (status, _) = b.post(&url, &[("csrf", field)], extra).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    }
    // Neither Origin nor Sec-Fetch-Site: no browser showing our page sent it (README says
    // Origin is required), even with the right cookie and field.
    let r = Client::new()
        .post(&url)
        .header(header::COOKIE, b.cookie_header())
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A form the framework cannot read is a problem, not plain text.
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let r = Client::new()
        .post(format!("{}panel/jobs/not-a-number/retry", w.ingress.url()))
        .header(header::COOKIE, b.cookie_header())
        .header(header::ORIGIN, w.ingress.origin())
        .form(&[("csrf", csrf_of(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(
        w.h.store().counts().await.unwrap(),
        jobs_before,
        "no refused form enqueued anything"
    );

    // The real thing: back to the panel (under the prefix) with a message.
    let own_origin = w.ingress.origin();
    let (status, location) = b
        .post(&url, &[("csrf", &csrf)], &[("origin", own_origin.as_str())])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with(&format!("{}/?ok=", w.ingress.prefix())),
        "{location}"
    );
    let scans = w
        .jobs(JobFilter {
            kind: Some("snapshot_scan".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(scans.len(), 1);
    let (_, page) = b.follow(&w, &location).await;
    assert!(page.contains("Looking for new backups now"), "{page}");
}

#[tokio::test]
async fn a_rejected_code_is_a_message_on_the_page_and_no_secret_is_shown() {
    let w = World::start(WorldOptions::default()).await;
    let mut b = Browser::new();
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let csrf = csrf_of(&page);
    let (status, _) = b
        .post(
            &format!("{}panel/destinations/dropbox/authorize", w.ingress.url()),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    assert!(page.contains("Open Dropbox"), "{page}");
    let (status, location) = b
        .post(
            &format!(
                "{}panel/destinations/dropbox/authorize/code",
                w.ingress.url()
            ),
            &[("csrf", &csrf), ("code", "not-a-real-code")],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, page) = b.follow(&w, &location).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Dropbox did not accept the code")
            && page.contains("doesn&#39;t exist or has expired"),
        "{page}"
    );
    assert!(page.contains("Needs authorization"));
    for secret in [APP_SECRET, SUPERVISOR_TOKEN] {
        assert!(
            !page.contains(secret),
            "the page with Dropbox's error shows a secret"
        );
    }
    // Only messages offsite signed are shown: a link from elsewhere cannot put words here.
    let forged = location.replace("Dropbox+did+not", "Visit+evil.example%2C+Dropbox+did+not");
    let (_, page) = b.follow(&w, &forged).await;
    assert!(
        !page.contains("evil.example") && !page.contains("did not accept"),
        "{page}"
    );
    for secret in [APP_SECRET, SUPERVISOR_TOKEN] {
        assert!(!page.contains(secret), "the page shows a secret");
    }
    // A job that does not exist: a message, not an error page.
    let (status, location) = b
        .post(
            &format!("{}panel/jobs/999/retry", w.ingress.url()),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = b.follow(&w, &location).await;
    assert!(page.contains("job 999 does not exist"), "{page}");
}

#[tokio::test]
async fn standalone_the_panel_needs_trusted_loopback_or_the_api_token() {
    const TOKEN: &str = "panel-test-token-0123456789";
    let h = Harness::start_with(|c| {
        c.api.token = Some(Secret::new(TOKEN));
        c.api.trust_loopback = true;
    })
    .await;
    let base = h.base_url();
    let mut b = Browser::new();
    // A browser on this machine, with `api.trust_loopback` set.
    let (status, page) = b.get(&format!("{base}/"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // A proxy that names the client only in X-Real-IP relayed it all the same.
    let (status, location) = Browser::new()
        .get(&format!("{base}/"), &[("x-real-ip", "203.0.113.9")])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
    // A page elsewhere that rebinds its DNS name to 127.0.0.1 still names itself in Host.
    let (status, location) = b
        .get(&format!("{base}/"), &[("host", "evil.example:8099")])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
    // The same request relayed by a reverse proxy on this machine is not "local".
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    let mut remote = Browser::new();
    let (status, location) = remote.get(&format!("{base}/"), &proxied).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/panel/login");
    let (status, _) = remote
        .get(&format!("{base}/panel/sections"), &proxied)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, login) = remote.get(&format!("{base}/panel/login"), &proxied).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&login);
    let (status, body) = remote
        .post(
            &format!("{base}/panel/login"),
            &[("csrf", &csrf), ("token", "wrong-token-wrong-token")],
            &proxied,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("not the API token") && !body.contains(TOKEN));
    let (status, _) = remote
        .post(
            &format!("{base}/panel/login"),
            &[("csrf", &csrf), ("token", TOKEN)],
            &proxied,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, page) = remote.get(&format!("{base}/"), &proxied).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<h1>offsite</h1>") && !page.contains(TOKEN));
    // The session cookie is for the panel only: the API still wants the bearer token.
    let r = Client::new()
        .get(format!("{base}/api/v1/jobs"))
        .header("x-forwarded-for", "203.0.113.9")
        .header(header::COOKIE, remote.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// The paste-code flow the way a user does it, over HTTP: start, fetch the code from the fake
/// Dropbox consent page, paste it.
async fn authorize_via_panel(w: &World, b: &mut Browser) {
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let csrf = csrf_of(&page);
    b.post(
        &format!("{}panel/destinations/dropbox/authorize", w.ingress.url()),
        &[("csrf", &csrf)],
        &[],
    )
    .await;
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let link = Regex::new(r#"id="open-dropbox" href="([^"]+)""#)
        .unwrap()
        .captures(&page)
        .expect("the Open Dropbox link")[1]
        .replace("&amp;", "&");
    let consent = url::Url::parse(&link).unwrap();
    let fields: Vec<(String, String)> = consent.query_pairs().into_owned().collect();
    let mut form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("decision", "allow"));
    let shown = Client::new()
        .post(link.split('?').next().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let code = Regex::new(r#"id=code readonly value="([^"]+)""#)
        .unwrap()
        .captures(&shown)
        .expect("the code Dropbox shows")[1]
        .to_string();
    let (status, location) = b
        .post(
            &format!(
                "{}panel/destinations/dropbox/authorize/code",
                w.ingress.url()
            ),
            &[("csrf", &csrf), ("code", &code)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location.contains("?ok="), "{location}");
}

#[tokio::test]
async fn home_assistant_hears_about_authorization_failures_and_recoveries_with_sensors() {
    let w = World::start(WorldOptions::default()).await;
    let bytes = w.add_backup("bbbb2222", "Weekly", "2026-11-21T03:00:00+00:00", 3 * MIB);

    // Not authorized yet: a notification says so, and the sensors exist from the start.
    let n = eventually("the re-authorization notification", || {
        w.sup
            .notifications()
            .get("offsite_reauthorize_dropbox")
            .cloned()
    })
    .await;
    assert!(n.message.contains("Authorize"), "{n:?}");
    let states = eventually("sensors", || {
        let s = w.sup.states();
        s.contains_key("sensor.offsite_next_backup").then_some(s)
    })
    .await;
    assert_eq!(states["sensor.offsite_backups_dropbox"].state, "0");
    assert_eq!(states["sensor.offsite_last_backup"].state, "unknown");
    let next = &states["sensor.offsite_next_backup"];
    assert_eq!(next.attributes["device_class"], "timestamp");
    chrono::DateTime::parse_from_rfc3339(&next.state).expect("next run is a timestamp");

    let mut b = Browser::new();
    authorize_via_panel(&w, &mut b).await;
    eventually("the notification is dismissed after authorizing", || {
        (!w.sup
            .notifications()
            .contains_key("offsite_reauthorize_dropbox"))
        .then_some(())
    })
    .await;
    assert!(
        w.sup
            .notification_calls()
            .contains(&NotificationCall::Dismiss(
                "offsite_reauthorize_dropbox".into()
            ))
    );

    // A backup goes up: the sensors say when, and how many are stored.
    let r = Client::new()
        .post(format!("{}/api/v1/snapshots/run", w.h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the API is ingress-only too"
    );
    b.press(&w, "panel/backup-now").await;
    let uploads = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let u = w.uploads().await;
            if !u.is_empty() {
                break u;
            }
            assert!(Instant::now() < deadline, "the backup was never uploaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(
        w.dropbox.file(&uploads[0].remote_path).unwrap().bytes(),
        bytes
    );
    let states = eventually("sensors after the upload", || {
        let s = w.sup.states();
        (s["sensor.offsite_backups_dropbox"].state == "1"
            && s["sensor.offsite_last_result"].state == "success")
            .then_some(s)
    })
    .await;
    let last = &states["sensor.offsite_last_backup"];
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&last.state)
            .unwrap()
            .timestamp(),
        uploads[0].uploaded_at.timestamp()
    );
    assert_eq!(last.attributes["backup_name"], "Weekly");

    // A job fails for good: one notification naming it; the result sensor says failed.
    w.add_backup("cccc3333", "Daily", "2026-11-22T03:00:00+00:00", MIB);
    w.dropbox.fail_request(1, 400);
    b.press(&w, "panel/backup-now").await;
    let n = eventually("the failed-jobs notification", || {
        w.sup.notifications().get("offsite_failed_jobs").cloned()
    })
    .await;
    assert!(n.message.contains("\"Daily\""), "{n:?}");
    assert!(n.message.contains("HTTP 400"), "{n:?}");
    eventually("last result: failed", || {
        (w.sup.states()["sensor.offsite_last_result"].state == "failed").then_some(())
    })
    .await;
    let failed = w
        .jobs(JobFilter {
            states: vec![JobState::Discarded],
            ..Default::default()
        })
        .await;
    assert_eq!(failed.len(), 1);

    // Retried from the panel, it succeeds: the notification goes away, the sensors recover.
    let (status, _) = b
        .press(&w, &format!("panel/jobs/{}/retry", failed[0].id))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    eventually("recovery dismisses the failed-jobs notification", || {
        let s = w.sup.states();
        (!w.sup.notifications().contains_key("offsite_failed_jobs")
            && s["sensor.offsite_backups_dropbox"].state == "2"
            && s["sensor.offsite_last_result"].state == "success")
            .then_some(())
    })
    .await;
    // The page offers Retry only for failures; a stale form for a job that has since
    // succeeded changes nothing.
    let (_, location) = b
        .press(&w, &format!("panel/jobs/{}/retry", failed[0].id))
        .await;
    let (_, page) = b.follow(&w, &location).await;
    assert!(page.contains("is completed now, not failed"), "{page}");
    let job = w.h.store().job(failed[0].id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    let creates = w
        .sup
        .notification_calls()
        .iter()
        .filter(|c| matches!(c, NotificationCall::Create(n) if n.notification_id == "offsite_failed_jobs"))
        .count();
    assert_eq!(creates, 1, "raised once, not on every sync");
    for (_, _, body) in w.sup.state_writes() {
        let text = body.to_string();
        assert!(!text.contains(APP_SECRET) && !text.contains(SUPERVISOR_TOKEN));
    }
}

#[tokio::test]
async fn an_unreachable_home_assistant_is_caught_up_later_and_a_restart_repeats_nothing() {
    let w = World::start(WorldOptions::default()).await;
    w.sup.set_core_available(false);
    // Core is down (the Supervisor answers 502): nothing can be delivered yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w
        .sup
        .requests()
        .iter()
        .any(|(_, p)| p.starts_with("/core/api/services/persistent_notification"))
    {
        assert!(Instant::now() < deadline, "offsite never tried to notify");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.sup.notifications().is_empty());
    w.sup.set_core_available(true);
    eventually("the notification once Home Assistant is back", || {
        w.sup
            .notifications()
            .get("offsite_reauthorize_dropbox")
            .cloned()
    })
    .await;
    let calls = w.sup.notification_calls().len();

    // The user dismisses it by hand, and offsite restarts: it is not raised again, because
    // nothing changed since it was raised.
    // The fakes stay up (bound, not dropped) while the worker restarts.
    let World {
        mut h,
        sup,
        dropbox: _dropbox,
        ingress: _ingress,
    } = w;
    let config = (*h.running().state.config).clone();
    h.stop().await;
    let dir = h.dir;
    let h2 = Harness::start_in(dir, config).await;
    eventually("sensors written by the restarted worker", || {
        (sup.state_writes().len() >= 8).then_some(())
    })
    .await;
    assert_eq!(
        sup.notification_calls().len(),
        calls,
        "no notification repeated after the restart"
    );
    drop(h2);
}

#[tokio::test]
async fn a_revoked_dropbox_raises_the_reauthorization_notice_and_the_panel_says_why_it_waits() {
    let w = World::start(WorldOptions::default()).await;
    let mut b = Browser::new();
    authorize_via_panel(&w, &mut b).await;
    eventually("no authorization notice once authorized", || {
        (w.sup.notification_calls().iter().any(
            |c| matches!(c, NotificationCall::Dismiss(id) if id == "offsite_reauthorize_dropbox"),
        ) && w.sup.notifications().is_empty())
        .then_some(())
    })
    .await;

    // The user revokes the app in Dropbox: the next upload finds out and waits, unburnt.
    w.dropbox.revoke_refresh_tokens();
    w.dropbox.expire_access_tokens();
    w.add_backup(
        "dddd4444",
        "After revocation",
        "2026-11-22T04:00:00+00:00",
        MIB,
    );
    b.press(&w, "panel/backup-now").await;
    let n = eventually("the re-authorization notice", || {
        w.sup
            .notifications()
            .get("offsite_reauthorize_dropbox")
            .cloned()
    })
    .await;
    assert!(n.title.unwrap().contains("needs authorization"));
    // The notice can come before the job has been parked: wait for that too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let waiting = w
            .jobs(JobFilter {
                kind: Some("snapshot_upload".into()),
                states: vec![JobState::Scheduled],
                ..Default::default()
            })
            .await;
        if !waiting.is_empty() {
            break waiting;
        }
        assert!(Instant::now() < deadline, "the upload was never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].attempt, 0, "waiting does not use an attempt");
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    assert!(page.contains("Needs authorization"), "{page}");
    let activity = &page[page.find("id=activity").unwrap()..page.find("id=problems").unwrap()];
    assert!(
        activity.contains("After revocation")
            && activity.contains("Waiting until")
            && activity.contains("authorize again"),
        "the page shows the upload waiting, and why: {activity}"
    );

    // Authorized again: the upload goes on and the notice is dismissed.
    authorize_via_panel(&w, &mut b).await;
    eventually("the notice is dismissed", || {
        (!w.sup
            .notifications()
            .contains_key("offsite_reauthorize_dropbox"))
        .then_some(())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.uploads().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the waiting upload never went on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const DEVICE_PASSWORD: &str = "panel-device-Pa55word-never-shown";

/// The changed lines of the panel's diff page (removed and added, marked by their class).
fn diff_lines(page: &str) -> Vec<String> {
    Regex::new(r#"<span class=(add|del)>([^<]*)</span>"#)
        .unwrap()
        .captures_iter(page)
        .map(|c| c[2].to_string())
        .collect()
}

#[tokio::test]
async fn the_devices_section_fetches_tests_lists_versions_diffs_and_marks_a_failing_device() {
    use crate::support::devices::FakeDevice;
    use offsite::devices::store::{device_dir, read_index};

    let fake = FakeDevice::start("admin", DEVICE_PASSWORD).await;
    let device: offsite::devices::DeviceConfig = toml::from_str(&format!(
        "type = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"{DEVICE_PASSWORD}\"\nretries = 0\n",
        fake.base
    ))
    .unwrap();
    let w = World::start(WorldOptions {
        devices: vec![("hall".into(), device)],
        ..Default::default()
    })
    .await;
    let dir = device_dir(&w.h.data_dir(), "hall");
    let mut b = Browser::new();
    let mut pages = Vec::new();

    let (s, page) = b.get(&w.ingress.url(), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("<h2>Devices</h2>"), "{page}");
    assert!(page.contains("data-device=\"hall\""), "{page}");
    assert!(page.contains("waiting (not fetched yet)"), "{page}");
    pages.push(page);

    // Fetch now enqueues the device's job, which stores the first version.
    let (s, loc) = b.press(&w, "panel/devices/hall/fetch").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(loc.ends_with("#devices"), "{loc}");
    let (_, page) = b.follow(&w, &loc).await;
    assert!(page.contains("Fetching device hall now"), "{page}");
    pages.push(page);
    let jobs = w
        .jobs(JobFilter {
            kind: Some("device_fetch".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(jobs.len(), 1, "fetch now enqueued one job");
    let first = jobs[0].id;
    crate::common::wait_for(w.h.store(), first, |j| j.state == JobState::Completed).await;

    // A change, fetched again: two versions.
    fake.edit(|s| s.settings["name"] = "Hall lamp".into());
    let (s, _) = b.press(&w, "panel/devices/hall/fetch").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let deadline = Instant::now() + Duration::from_secs(30);
    let index = loop {
        let i = read_index(&dir).await;
        if i.versions.len() == 2 {
            break i;
        }
        assert!(Instant::now() < deadline, "no second version: {i:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    let prefix = w.ingress.prefix();
    for v in &index.versions {
        assert!(
            page.contains(&format!("{prefix}/panel/devices/hall/versions/{}", v.file)),
            "a download link for {}: {page}",
            v.file
        );
    }
    assert!(page.contains("ok (changed)"), "{page}");
    assert!(page.contains("v1.14.0"), "the newest firmware: {page}");
    let link = Regex::new(r#"href="([^"]*/panel/devices/hall/diff\?[^"]*)""#)
        .unwrap()
        .captures(&page)
        .expect("a changes link")[1]
        .replace("&amp;", "&");
    pages.push(page);

    let (s, diff) = b.follow(&w, &link).await;
    assert_eq!(s, StatusCode::OK, "{diff}");
    assert_eq!(
        diff_lines(&diff),
        vec![
            "-   &quot;name&quot;: &quot;Hall light&quot;,",
            "+   &quot;name&quot;: &quot;Hall lamp&quot;,"
        ],
        "exactly the changed line, escaped: {diff}"
    );
    pages.push(diff);

    // A stored version downloads as it is; a file the index does not list does not.
    let (s, body) = b
        .get(
            &format!(
                "{}panel/devices/hall/versions/{}",
                w.ingress.url(),
                index.versions[1].file
            ),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("Hall lamp"), "{body}");
    let (s, _) = b
        .get(
            &format!(
                "{}panel/devices/hall/versions/..%2Foffsite.db",
                w.ingress.url()
            ),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Test connection: what the device said is the page's message.
    let (s, loc) = b.press(&w, "panel/devices/hall/test").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, page) = b.follow(&w, &loc).await;
    let flash = Regex::new(r"id=flash>([^<]*)<")
        .unwrap()
        .captures(&page)
        .expect("a message")[1]
        .to_string();
    assert!(
        flash.contains("Device hall answered") && flash.contains("v1.14.0"),
        "{flash}"
    );
    pages.push(page);

    // Wrong credentials: the test says so; a fetch fails and the row is marked failing.
    fake.edit(|s| s.password = "changed".into());
    let (_, loc) = b.press(&w, "panel/devices/hall/test").await;
    let (_, page) = b.follow(&w, &loc).await;
    assert!(page.contains("class=\"flash error\""), "{page}");
    assert!(page.contains("Test of device hall failed"), "{page}");
    pages.push(page);
    b.press(&w, "panel/devices/hall/fetch").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_index(&dir).await.last_fetch.is_none_or(|l| l.ok) {
        assert!(
            Instant::now() < deadline,
            "the failed fetch was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, page) = b.get(&w.ingress.url(), &[]).await;
    assert!(
        page.contains("class=\"device failed\" data-device=\"hall\""),
        "the row is marked failed: {page}"
    );
    assert!(page.contains("failing since"), "{page}");
    pages.push(page);

    for p in &pages {
        assert!(
            !p.contains(DEVICE_PASSWORD),
            "the device password in a page: {p}"
        );
    }
}

#[tokio::test]
async fn home_assistant_gets_a_sensor_per_device_and_a_notification_when_one_gives_up() {
    use crate::support::devices::FakeDevice;

    let fake = FakeDevice::start("admin", "the-right-one").await;
    let device: offsite::devices::DeviceConfig = toml::from_str(&format!(
        "type = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"{DEVICE_PASSWORD}\"\nretries = 1\n",
        fake.base
    ))
    .unwrap();
    let w = World::start(WorldOptions {
        devices: vec![("Hall Switch".into(), device)],
        ..Default::default()
    })
    .await;
    let sensor = "sensor.offsite_device_hall_switch";
    let notification = "offsite_device_failing_hall_switch";
    let s = eventually("the device sensor", || w.sup.states().get(sensor).cloned()).await;
    assert_eq!(s.state, "waiting", "{s:?}");
    assert_eq!(s.attributes["type"], "shelly_gen1");

    // Wrong credentials: the job fails and is discarded (refused credentials are not retried:
    // the engine gives up at once) — and only then the notification is raised.
    let mut b = Browser::new();
    b.press(&w, "panel/devices/Hall%20Switch/fetch").await;
    let jobs = w
        .jobs(JobFilter {
            kind: Some("device_fetch".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(jobs.len(), 1);
    let id = jobs[0].id;
    let s = eventually("the sensor says failed", || {
        w.sup
            .states()
            .get(sensor)
            .filter(|s| s.state == "failed")
            .cloned()
    })
    .await;
    assert!(s.attributes["failing_since"].is_string(), "{s:?}");
    assert!(
        s.attributes["error"]
            .as_str()
            .unwrap_or("")
            .contains("Hall Switch"),
        "{s:?}"
    );
    let discarded = crate::common::wait_for(w.h.store(), id, |j| {
        matches!(j.state, JobState::Discarded | JobState::Completed)
    })
    .await;
    assert_eq!(discarded.state, JobState::Discarded);
    let n = eventually("the device notification", || {
        w.sup.notifications().get(notification).cloned()
    })
    .await;
    assert!(
        n.title.as_deref().unwrap_or("").contains("Hall Switch")
            && n.message.contains(&format!("job {id}")),
        "{n:?}"
    );

    // Fixed: the next fetch succeeds, the sensor says ok and the notification goes away.
    fake.edit(|s| s.password = DEVICE_PASSWORD.into());
    b.press(&w, "panel/devices/Hall%20Switch/fetch").await;
    let s = eventually("the sensor says ok", || {
        w.sup
            .states()
            .get(sensor)
            .filter(|s| s.state == "ok")
            .cloned()
    })
    .await;
    assert!(s.attributes["last_backup"].is_string(), "{s:?}");
    assert!(s.attributes["last_change"].is_string(), "{s:?}");
    assert_eq!(s.attributes["versions"], 1);
    eventually("the notification is dismissed", || {
        (!w.sup.notifications().contains_key(notification)).then_some(())
    })
    .await;
    assert!(
        w.sup
            .notification_calls()
            .contains(&NotificationCall::Dismiss(notification.into()))
    );
    for (_, _, body) in w.sup.state_writes() {
        assert!(!body.to_string().contains(DEVICE_PASSWORD), "{body}");
    }
    for c in w.sup.notification_calls() {
        assert!(!format!("{c:?}").contains(DEVICE_PASSWORD), "{c:?}");
    }
}
