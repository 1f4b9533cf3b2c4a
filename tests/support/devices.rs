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

// ------------------------------------------------------------------ Shelly Gen2+

/// A Shelly Gen2+ device: `GET /rpc/Shelly.GetDeviceInfo` without auth, JSON-RPC `POST /rpc`
/// behind Digest SHA-256 (realm = device id, user `admin`, `qop="auth"`, nc must increase),
/// answering 401 with the firmware's `WWW-Authenticate` and JSON error body. `Script.GetCode`
/// sends at most 1024 bytes per call whatever `len` asks (the truncation a one-call reader
/// misses).
pub struct Gen2State {
    pub password: String,
    pub scripts: Vec<(u64, String, String)>,
    pub kvs: Vec<(String, String)>,
    pub schedules_rev: u64,
    pub last_nc: u64,
    pub nonce: String,
    pub calls: Vec<String>,
}

#[derive(Clone)]
pub struct FakeShellyGen2 {
    pub base: String,
    pub state: Arc<Mutex<Gen2State>>,
}

pub const GEN2_ID: &str = "shellyplus1pm-441793d69718";
const GEN2_CHUNK: usize = 1024;

impl FakeShellyGen2 {
    pub async fn start(password: &str) -> FakeShellyGen2 {
        let long: String = (0..300).map(|i| format!("print({i});\n")).collect();
        let state = Arc::new(Mutex::new(Gen2State {
            password: password.into(),
            scripts: vec![
                (1, "lights".into(), long),
                (3, "tiny".into(), "let x=1;".into()),
            ],
            kvs: (0..7).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
            schedules_rev: 1,
            last_nc: 0,
            nonce: "1625038968".into(),
            calls: Vec::new(),
        }));
        let app = Router::new()
            .route("/rpc/Shelly.GetDeviceInfo", get(gen2_info))
            .route("/rpc", axum::routing::post(gen2_rpc))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeShellyGen2 {
            base: format!("http://{addr}"),
            state,
        }
    }
}

type G = State<Arc<Mutex<Gen2State>>>;

async fn gen2_info() -> Response {
    json_response(
        Mode::Normal,
        &json!({"name": null, "id": GEN2_ID, "mac": "441793D69718", "model": "SNSW-001P16EU",
            "gen": 2, "fw_id": "20231107-164738/1.0.8-g0d0f0b6", "ver": "1.0.8",
            "app": "Plus1PM", "auth_en": true, "auth_domain": GEN2_ID}),
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let k = k.trim().trim_start_matches("Digest ").trim();
        (k == name).then(|| v.trim().trim_matches('"'))
    })
}

/// A 401 with a fresh challenge: a new nonce, whose `nc` count starts again at 1.
fn gen2_unauthorized(st: &mut Gen2State, stale: bool) -> Response {
    let n: u64 = st.nonce.parse().unwrap_or(0) + 1;
    st.nonce = n.to_string();
    st.last_nc = 0;
    let challenge = format!(
        "Digest qop=\"auth\", realm=\"{GEN2_ID}\", nonce=\"{}\", algorithm=SHA-256{}",
        st.nonce,
        if stale { ", stale=true" } else { "" }
    );
    let message = format!(
        "{{\"auth_type\": \"digest\", \"nonce\": {}, \"nc\": 1, \"realm\": \"{GEN2_ID}\", \"algorithm\": \"SHA-256\"}}",
        st.nonce
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        axum::Json(json!({"id": 1, "src": GEN2_ID, "error": {"code": 401, "message": message}})),
    )
        .into_response()
}

async fn gen2_rpc(State(s): G, headers: HeaderMap, body: String) -> Response {
    let mut st = s.lock().unwrap();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !auth.starts_with("Digest ") {
        return gen2_unauthorized(&mut st, false);
    }
    let get = |n| param(&auth, n).unwrap_or_default().to_string();
    let nc = u64::from_str_radix(&get("nc"), 16).unwrap_or(0);
    let ha1 = sha256_hex(&format!("admin:{GEN2_ID}:{}", st.password));
    let ha2 = sha256_hex(&format!("POST:{}", get("uri")));
    let want = sha256_hex(&format!(
        "{ha1}:{}:{}:{}:{}:{ha2}",
        get("nonce"),
        get("nc"),
        get("cnonce"),
        get("qop")
    ));
    if get("username") != "admin"
        || get("realm") != GEN2_ID
        || get("algorithm") != "SHA-256"
        || get("response") != want
    {
        return gen2_unauthorized(&mut st, false);
    }
    if get("nonce") != st.nonce || nc <= st.last_nc {
        return gen2_unauthorized(&mut st, true);
    }
    st.last_nc = nc;
    let req: Value = serde_json::from_str(&body).unwrap_or_default();
    let method = req["method"].as_str().unwrap_or_default().to_string();
    let p = &req["params"];
    st.calls.push(method.clone());
    let result = match method.as_str() {
        "Shelly.GetConfig" => json!({
            "ble": {"enable": true}, "cloud": {"enable": false, "server": "shelly-103-eu.shelly.cloud:6022/jrpc"},
            "mqtt": {"enable": true, "server": "10.0.0.2:1883", "user": "shelly", "pass": null},
            "switch:0": {"id": 0, "name": "Hall", "initial_state": "restore_last"},
            "sys": {"device": {"name": "Hall", "mac": "441793D69718", "fw_id": "20231107-164738/1.0.8-g0d0f0b6"}}
        }),
        "Script.List" => json!({"scripts": st.scripts.iter().map(|(id, name, _)|
            json!({"id": id, "name": name, "enable": true, "running": *id == 1})).collect::<Vec<_>>()}),
        "Script.GetCode" => {
            let id = p["id"].as_u64().unwrap_or(0);
            let Some((_, _, code)) = st.scripts.iter().find(|(i, _, _)| *i == id) else {
                return axum::Json(json!({"id": 1, "src": GEN2_ID, "error": {"code": -105, "message": "Argument 'id', value 9 not found!"}})).into_response();
            };
            let off = (p["offset"].as_u64().unwrap_or(0) as usize).min(code.len());
            let len = (p["len"].as_u64().unwrap_or(GEN2_CHUNK as u64) as usize).min(GEN2_CHUNK);
            let end = (off + len).min(code.len());
            json!({"data": &code[off..end], "left": code.len() - end})
        }
        "Schedule.List" => json!({"jobs": [{"id": 1, "enable": true, "timespec": "0 0 22 * * *",
            "calls": [{"method": "Switch.Set", "params": {"id": 0, "on": false}}]}], "rev": st.schedules_rev}),
        "Webhook.List" => json!({"hooks": [], "rev": 0}),
        "KVS.GetMany" => {
            let off = p["offset"].as_u64().unwrap_or(0) as usize;
            let page: Vec<Value> = st.kvs.iter().skip(off).take(3)
                .map(|(k, v)| json!({"key": k, "etag": format!("e-{k}"), "value": v})).collect();
            json!({"items": page, "offset": off, "total": st.kvs.len()})
        }
        _ => return axum::Json(json!({"id": 1, "src": GEN2_ID, "error": {"code": 404, "message": format!("No handler for {method}")}})).into_response(),
    };
    axum::Json(json!({"id": 1, "src": GEN2_ID, "result": result})).into_response()
}
