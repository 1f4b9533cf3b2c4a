//! OPNsense's backup API as `device_fetch` uses it, per `shared/reference/devices.md` and
//! `Core/Api/BackupController.php`: `GET /api/core/backup/download/this` streams the newest
//! configuration-history file (`Content-Type: application/octet-stream`, `Content-Disposition:
//! attachment; filename=config-<host>-<time>.xml`), `GET /api/core/backup/backups/this` lists
//! the revisions. API key + secret as Basic; a wrong key answers 401 with
//! `WWW-Authenticate: Basic realm="api"` and `{"status":401,"message":"Authentication
//! Failed"}`. Every save rewrites `<revision><time>` (and a rule's `last_rule_upd_time`);
//! `empty_history` answers 200 with an empty body, as OPNsense does.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;

pub struct OpnState {
    pub key: String,
    pub secret: String,
    /// The `<system><hostname>`.
    pub hostname: String,
    /// Bumped by [`FakeOpnSense::save`] (a save without a change still moves the clock).
    pub saves: u64,
    pub empty_history: bool,
    pub downloads: u64,
}

#[derive(Clone)]
pub struct FakeOpnSense {
    pub base: String,
    pub state: Arc<Mutex<OpnState>>,
}

type S = State<Arc<Mutex<OpnState>>>;

impl FakeOpnSense {
    pub async fn start(key: &str, secret: &str) -> FakeOpnSense {
        let state = Arc::new(Mutex::new(OpnState {
            key: key.into(),
            secret: secret.into(),
            hostname: "fw".into(),
            saves: 1,
            empty_history: false,
            downloads: 0,
        }));
        let app = Router::new()
            .route("/api/core/backup/download/this", get(download))
            .route("/api/core/backup/backups/this", get(list))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeOpnSense {
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn edit(&self, f: impl FnOnce(&mut OpnState)) {
        f(&mut self.state.lock().unwrap());
    }

    /// A save in the web UI: a new history revision, new `<time>`, same content otherwise.
    pub fn save(&self) {
        self.edit(|s| s.saves += 1);
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Basic realm=\"api\""),
            (header::CONTENT_TYPE, "application/json; charset=UTF-8"),
        ],
        "{\"status\":401,\"message\":\"Authentication Failed\"}",
    )
        .into_response()
}

fn authorized(st: &OpnState, headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", st.key, st.secret))
    );
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(want.as_str())
}

fn time(st: &OpnState) -> u64 {
    1_764_600_000 + st.saves * 37
}

fn config(st: &OpnState) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<opnsense>\n  <version>24.7</version>\n  <revision>\n    <username>root@10.0.0.2</username>\n    <time>{}.4417</time>\n    <description>/system_general.php made changes</description>\n  </revision>\n  <system>\n    <hostname>{}</hostname>\n    <domain>home.arpa</domain>\n    <user>\n      <name>root</name>\n      <password>$2y$10$abcdefghijklmnopqrstuv</password>\n    </user>\n  </system>\n  <filter>\n    <rule>\n      <type>pass</type>\n      <interface>lan</interface>\n      <descr>Default allow LAN to any rule</descr>\n      <updated>\n        <time>{}.1</time>\n      </updated>\n    </rule>\n  </filter>\n  <last_rule_upd_time>{}</last_rule_upd_time>\n</opnsense>\n",
        time(st),
        st.hostname,
        1_764_000_000,
        time(st)
    )
}

async fn download(State(s): S, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    if st.empty_history {
        return (StatusCode::OK, "").into_response();
    }
    st.downloads += 1;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=config-{}.home.arpa-{}.xml",
                    st.hostname,
                    time(&st)
                ),
            ),
        ],
        config(&st),
    )
        .into_response()
}

async fn list(State(s): S, headers: HeaderMap) -> Response {
    let st = s.lock().unwrap();
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let items: Vec<serde_json::Value> = (1..=st.saves)
        .map(|i| {
            serde_json::json!({"time": 1_764_600_000 + i * 37, "time_iso": "", "description": "saved",
                "username": "root@10.0.0.2", "filesize": 4096, "id": format!("config-{}.xml", 1_764_600_000 + i * 37)})
        })
        .collect();
    axum::Json(serde_json::json!({"items": items})).into_response()
}
