//! Fakes of the network devices `device_fetch` backs up, per `shared/reference/devices.md`
//! and the firmware sources: WLED (`/cfg.json`, `/presets.json`, `/json/info`, no auth),
//! Shelly Gen1 (`/settings`, Basic auth; 401 with `WWW-Authenticate: Basic realm=…` and the
//! firmware's plain "401 Unauthorized" body) and Tasmota (`/dl` with
//! `Content-Disposition: attachment; filename="Config_<host>_<version>.dmp"`, Basic auth as
//! user `admin`). Knobs: a body that hangs after its first bytes, an oversized body.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Normal,
    /// Sends the headers and the first bytes, then nothing, forever.
    HangMidBody,
    /// A valid answer of this many bytes.
    Huge(usize),
}

pub struct DeviceState {
    pub cfg: Value,
    pub presets: Value,
    pub settings: Value,
    pub dmp: Vec<u8>,
    pub user: String,
    pub password: String,
    pub mode: Mode,
    /// Requests seen (path).
    pub requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeDevice {
    pub base: String,
    pub state: Arc<Mutex<DeviceState>>,
}

impl FakeDevice {
    pub async fn start(user: &str, password: &str) -> FakeDevice {
        let state = Arc::new(Mutex::new(DeviceState {
            cfg: json!({
                "rev": [1, 0], "vid": 2405180,
                "id": {"mdns": "wled-kitchen", "name": "Kitchen"},
                "nw": {"ins": [{"ssid": "home", "pskl": 12, "ip": [0,0,0,0]}]},
                "light": {"scale-bri": 100}
            }),
            presets: json!({"0": {}, "1": {"n": "Evening", "bri": 128}}),
            settings: json!({
                "device": {"type": "SHSW-1", "mac": "A4CF12F45A1B", "hostname": "shelly1-F45A1B"},
                "wifi_sta": {"enabled": true, "ssid": "home", "ipv4_method": "dhcp"},
                "login": {"enabled": true, "unprotected": false, "username": "admin"},
                "name": "Hall light",
                "fw": "20230913-112003/v1.14.0-gcb84623",
                "time": "10:00", "unixtime": 1700000000
            }),
            dmp: (0..4096u32).map(|i| (i * 7 % 251) as u8).collect(),
            user: user.into(),
            password: password.into(),
            mode: Mode::Normal,
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/cfg.json", get(cfg))
            .route("/presets.json", get(presets))
            .route("/json/info", get(info))
            .route("/settings", get(settings))
            .route("/dl", get(dl))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeDevice {
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn edit(&self, f: impl FnOnce(&mut DeviceState)) {
        f(&mut self.state.lock().unwrap())
    }
}

type S = State<Arc<Mutex<DeviceState>>>;

fn body_of(mode: Mode, bytes: Vec<u8>) -> Body {
    match mode {
        Mode::Normal => Body::from(bytes),
        Mode::Huge(n) => {
            let mut b = bytes;
            b.resize(n, b' ');
            // Streamed: no Content-Length, so the limit is checked while reading.
            Body::from_stream(futures::stream::iter(
                b.chunks(16 * 1024)
                    .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            ))
        }
        Mode::HangMidBody => {
            let first = bytes::Bytes::copy_from_slice(&bytes[..bytes.len().min(8)]);
            Body::from_stream(
                futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                    .chain(futures::stream::pending()),
            )
        }
    }
}

use futures::StreamExt;

fn json_response(mode: Mode, v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body_of(mode, serde_json::to_vec(v).unwrap()),
    )
        .into_response()
}

async fn cfg(State(s): S) -> Response {
    let mut st = s.lock().unwrap();
    st.requests.push("/cfg.json".into());
    json_response(st.mode, &st.cfg)
}

async fn presets(State(s): S) -> Response {
    let mut st = s.lock().unwrap();
    st.requests.push("/presets.json".into());
    json_response(st.mode, &st.presets)
}

async fn info(State(s): S) -> Response {
    s.lock().unwrap().requests.push("/json/info".into());
    json_response(
        Mode::Normal,
        &json!({"ver": "0.14.4", "vid": 2405180, "name": "Kitchen"}),
    )
}

/// Whether the request carries Basic credentials `user:password`.
fn basic_ok(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {want}"))
}

async fn settings(State(s): S, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    st.requests.push("/settings".into());
    if !basic_ok(&headers, &st.user, &st.password) {
        // Shelly Gen1: a Basic challenge with the device's host name as realm.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"shelly1-F45A1B\"")],
            "401 Unauthorized",
        )
            .into_response();
    }
    json_response(st.mode, &st.settings)
}

async fn dl(State(s): S, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    st.requests.push("/dl".into());
    if !basic_ok(&headers, "admin", &st.password) {
        // Tasmota's WebAuthenticate: requestAuthentication() → 401 with a Basic challenge.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"Login Required\"")],
            "",
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"Config_tasmota-1A2B3C_14.3.0.dmp\"",
            ),
        ],
        body_of(st.mode, st.dmp.clone()),
    )
        .into_response()
}
