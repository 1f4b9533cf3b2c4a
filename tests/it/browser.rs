//! The panel end to end in real headless Chromium (Debian's `chromium` + `chromedriver`,
//! installed by `.ci/run`), behind the fake ingress proxy with the fake Supervisor and Dropbox:
//! authorize with the paste-code flow, back up now, watch the progress bar move, see the backup
//! listed, make a job fail and retry it from the page. Screenshots of every step go to
//! `target/panel-screenshots/`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::json;

use crate::panel::{MIB, World, WorldOptions};

fn program(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: the browser test needs Chromium and ChromeDriver \
         (Debian: apt-get install chromium chromium-driver; .ci/run installs them), \
         or set {env}"
    );
    path
}

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let chromedriver = program("OFFSITE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver {
            child,
            port,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> Client {
        let chromium = program("OFFSITE_CHROMIUM", "/usr/bin/chromium");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        // chromedriver is on loopback: plain HTTP, no TLS stack needed.
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

/// Numbered screenshots in `target/panel-screenshots/`.
struct Shots {
    dir: PathBuf,
    n: u32,
}

impl Shots {
    fn new() -> Shots {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/panel-screenshots");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Shots { dir, n: 0 }
    }

    /// A screenshot can be cut short by the page's own refresh on a loaded machine; it is
    /// taken again then (three tries).
    async fn take(&mut self, c: &Client, name: &str) {
        self.n += 1;
        let mut tries = 0;
        let png = loop {
            tries += 1;
            match c.screenshot().await {
                Ok(png) => break png,
                Err(e) if tries < 3 => eprintln!("screenshot {name}: {e}; again"),
                Err(e) => panic!("screenshot {name}: {e}"),
            }
        };
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }
}

async fn wait_css(c: &Client, css: &str) -> Element {
    c.wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

/// Runs `f` on the element `css`. The live refresh may replace it between finding and using
/// it; a stale reference means: find it again.
async fn on<T, Fut>(c: &Client, css: &str, f: impl Fn(Element) -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let el = wait_css(c, css).await;
        match f(el).await {
            Ok(v) => return v,
            // ChromeDriver also reports a replaced node as an "unknown error" from the
            // inspector ("Node with given id does not belong to the document").
            Err(e)
                if (e.is_stale_element_reference()
                    || e.to_string().contains("does not belong to the document"))
                    && Instant::now() < deadline =>
            {
                continue;
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    on(c, css, |el| async move { el.text().await }).await
}

/// The text of `css` once it contains `needle` (a message the page shows after a request
/// answers replaces the one before it); the last text seen when it never does.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = text_of(c, css).await;
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(c: &Client, css: &str) {
    on(c, css, |el| async move { el.click().await }).await
}

async fn attr_of(c: &Client, css: &str, name: &'static str) -> Option<String> {
    on(c, css, |el| async move { el.attr(name).await }).await
}

/// The value of the first upload progress bar, if one is on the page.
async fn progress_value(c: &Client) -> Option<u64> {
    let bar = c.find(Locator::Css("#activity progress[max]")).await.ok()?;
    bar.attr("value").await.ok()??.parse().ok()
}

#[tokio::test]
async fn panel_in_chromium_authorize_back_up_watch_progress_fail_and_retry() {
    // Throttled so the upload takes several seconds and the bar can be seen moving.
    let w = World::start(WorldOptions {
        throttle_bytes_per_sec: 6 * MIB as u64,
        ..Default::default()
    })
    .await;
    let first = w.add_backup(
        "e2e00001",
        "Full backup 2026.11.21",
        "2026-11-21T03:00:00+00:00",
        40 * MIB,
    );
    let driver = Driver::start().await;
    let c = driver.browser().await;
    let mut shots = Shots::new();

    // 1. The panel under the ingress prefix: Dropbox is not authorized yet.
    c.goto(&w.ingress.url()).await.unwrap();
    let badge = text_of(&c, "li[data-destination=dropbox] .badge").await;
    assert_eq!(badge, "Needs authorization");
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .starts_with(w.ingress.prefix())
    );
    shots.take(&c, "not-authorized").await;

    // 2. Authorize: the page offers the Dropbox link and a box for the code.
    click(&c, "li[data-destination=dropbox] button[type=submit]").await;
    let href = attr_of(&c, "#open-dropbox", "href")
        .await
        .expect("a link to Dropbox");
    assert!(href.starts_with(&w.dropbox.base_url()), "{href}");
    shots.take(&c, "authorize-steps").await;

    // 3. At (the fake) Dropbox: Allow, and read the code it shows.
    c.goto(&href).await.unwrap();
    shots.take(&c, "dropbox-consent").await;
    click(&c, "#allow").await;
    let code = wait_css(&c, "#code")
        .await
        .prop("value")
        .await
        .unwrap()
        .expect("a code");
    assert!(code.len() > 20);
    shots.take(&c, "dropbox-code").await;

    // 4. Back in the panel: paste it, Finish.
    c.goto(&w.ingress.url()).await.unwrap();
    let typed = code.clone();
    on(&c, "input[name=code]", move |el| {
        let typed = typed.clone();
        async move { el.send_keys(&typed).await }
    })
    .await;
    click(&c, "form.row button[type=submit]").await;
    let flash = wait_text(&c, "#flash", "is authorized").await;
    assert!(flash.contains("is authorized"), "{flash}");
    assert_eq!(
        text_of(&c, "li[data-destination=dropbox] .badge").await,
        "Authorized"
    );
    shots.take(&c, "authorized").await;

    // 5. Back up now; the progress bar appears and moves without a reload.
    click(&c, "#backup-now").await;
    let started = Instant::now();
    let v1 = loop {
        if let Some(v) = progress_value(&c).await.filter(|v| *v > 0) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress bar"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = text_of(&c, "#activity .progress-text").await;
    assert!(text.contains(" of 40.0 MiB"), "{text}");
    shots.take(&c, "progress").await;
    c.execute("window.__same_page = true; return null", vec![])
        .await
        .unwrap();
    let v2 = loop {
        if let Some(v) = progress_value(&c).await.filter(|v| *v > v1) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the bar did not move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(v2 > v1);
    let text = text_of(&c, "#activity .progress-text").await;
    assert!(
        text.contains("/s") && text.contains("left"),
        "speed and ETA: {text}"
    );
    shots.take(&c, "progress-moved").await;

    // 6. The backup appears in the list, still on the same page (live refresh).
    let row_text = text_of(&c, "#uploads tr[data-backup=e2e00001]").await;
    assert!(
        row_text.contains("Full backup 2026.11.21") && row_text.contains("40.0 MiB"),
        "{row_text}"
    );
    let same = c
        .execute("return window.__same_page === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "updated without a reload");
    let uploads = w.uploads().await;
    assert_eq!(
        w.dropbox.file(&uploads[0].remote_path).unwrap().bytes(),
        first
    );
    wait_css(&c, "#activity #idle").await;
    shots.take(&c, "uploaded").await;

    // 7. The next upload fails for good (Dropbox answers 400): it shows under Problems.
    w.add_backup(
        "e2e00002",
        "Partial backup 2026.11.22",
        "2026-11-22T03:00:00+00:00",
        2 * MIB,
    );
    w.dropbox.fail_request(1, 400);
    c.goto(&w.ingress.url()).await.unwrap();
    click(&c, "#backup-now").await;
    let problem = text_of(&c, "#problems li[data-state=discarded]").await;
    assert!(
        problem.contains("Partial backup 2026.11.22") && problem.contains("HTTP 400"),
        "{problem}"
    );
    let result = text_of(&c, "#last-result").await;
    assert_eq!(result, "Failed");
    shots.take(&c, "failed").await;

    // 8. Retry from the page: it uploads, and the problem is gone.
    click(&c, "#problems button[data-retry]").await;
    let flash = wait_text(&c, "#flash", "will run again").await;
    assert!(flash.contains("will run again"), "{flash}");
    wait_css(&c, "#uploads tr[data-backup=e2e00002]").await;
    wait_css(&c, "#problems #no-problems").await;
    assert_eq!(text_of(&c, "#last-result").await, "Succeeded");
    shots.take(&c, "retried").await;
    assert_eq!(w.uploads().await.len(), 2);

    // 9. On a phone: nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&w.ingress.url()).await.unwrap();
    wait_css(&c, "#uploads tr[data-backup=e2e00002]").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "no sideways scrolling on a phone");
    shots.take(&c, "phone").await;
    c.execute(
        "window.scrollTo(0, document.body.scrollHeight); return null",
        vec![],
    )
    .await
    .unwrap();
    shots.take(&c, "phone-bottom").await;

    c.close().await.unwrap();
}

/// The Devices section in Chromium: Fetch now fills the row in by itself (the live refresh),
/// Test connection shows the device's answer, the changes page opens from the list of
/// versions.
#[tokio::test]
async fn devices_in_chromium_fetch_now_test_connection_and_the_row_updates_live() {
    use crate::support::devices::FakeDevice;
    let fake = FakeDevice::start("admin", "browser-device-pw").await;
    let device: offsite::devices::DeviceConfig = toml::from_str(&format!(
        "type = \"shelly_gen1\"\nhost = \"{}\"\npassword = \"browser-device-pw\"\n",
        fake.base
    ))
    .unwrap();
    let w = World::start(WorldOptions {
        devices: vec![("hall".into(), device)],
        ..Default::default()
    })
    .await;
    let driver = Driver::start().await;
    let c = driver.browser().await;
    let mut shots = Shots::new();

    c.goto(&w.ingress.url()).await.unwrap();
    let row = text_of(&c, "#devices tr[data-device=hall] td.result").await;
    assert!(row.contains("waiting"), "{row}");
    click(
        &c,
        "#devices tr[data-device=hall] form[action$='/fetch'] button",
    )
    .await;
    let flash = wait_text(&c, "#flash", "Fetching device hall now").await;
    assert!(flash.contains("hall"), "{flash}");
    let row = wait_text(&c, "#devices tr[data-device=hall] td.result", "ok").await;
    assert!(row.contains("ok (changed)"), "{row}");
    shots.take(&c, "device-fetched").await;

    click(
        &c,
        "#devices tr[data-device=hall] form[action$='/test'] button",
    )
    .await;
    let flash = wait_text(&c, "#flash", "answered").await;
    assert!(flash.contains("v1.14.0"), "{flash}");
    assert!(!c.source().await.unwrap().contains("browser-device-pw"));
    shots.take(&c, "device-tested").await;

    // On a phone: the devices fit the screen.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&w.ingress.url()).await.unwrap();
    wait_css(&c, "#devices tr[data-device=hall]").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "no sideways scrolling on a phone");
    shots.take(&c, "device-phone").await;
    c.close().await.unwrap();
}
