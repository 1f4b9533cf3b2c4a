//! `FakeSupervisor`: an in-process fake of the Home Assistant Supervisor API
//! as an add-on sees it at `http://supervisor/`, for integration tests only.
//!
//! Follows the Supervisor source (home-assistant/supervisor:
//! `supervisor/api/backups.py`, `api/utils.py`, `api/middleware/security.py`,
//! `api/proxy.py`) and, for the Core API proxied under `/core/api/`,
//! home-assistant/core `homeassistant/components/api/__init__.py`:
//!
//! - Supervisor answers are wrapped `{"result":"ok","data":…}`; errors are
//!   `{"result":"error","message":…}` (400 unless the error says otherwise,
//!   404 for an unknown backup).
//! - No token → 401 plain text `401: Unauthorized`; a wrong token → 403
//!   `403: Forbidden` (aiohttp's default exception bodies).
//! - `GET /backups/{slug}/download` is aiohttp's `FileResponse` with
//!   `Content-Type: application/tar`: `Range: bytes=…` gives 206 with
//!   `Content-Range`, an unsatisfiable range 416; a backup whose file is gone
//!   gives an empty 404.
//! - The Core API is passed through unwrapped: services answer `[]`, state
//!   writes answer 201 (new) / 200 (update) with the state object.

// Handlers bail out with a ready `Response` as their error value, the usual
// axum idiom; boxing it would only add noise to test code.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::fault::{Countdown, ServerGuard, random_token, serve};

/// Supervisor version reported in backup info.
pub const SUPERVISOR_VERSION: &str = "2026.04.0";
/// Home Assistant version recorded in backups by default.
pub const HOMEASSISTANT_VERSION: &str = "2026.4.1";
const STREAM_CHUNK: usize = 64 * 1024;
/// HA core's `MAX_LENGTH_STATE_STATE`.
const MAX_STATE_LEN: usize = 255;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// What the Supervisor knows about a backup (its `backup.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct BackupSpec {
    pub slug: String,
    pub name: String,
    /// ISO 8601, passed through as given, e.g. "2026-01-31T03:00:00.123456+00:00".
    pub date: String,
    /// "full" or "partial".
    pub backup_type: String,
    pub protected: bool,
    pub compressed: bool,
    /// Home Assistant version if Core is in the backup.
    pub homeassistant: Option<String>,
    pub homeassistant_exclude_database: Option<bool>,
    pub supervisor_version: String,
    pub addons: Vec<BackupAddon>,
    pub folders: Vec<String>,
    pub repositories: Vec<String>,
    /// Client metadata; HA's scheduled backups carry
    /// `{"with_automatic_settings": true}`. Only `/info` shows it.
    pub extra: Value,
}

impl BackupSpec {
    /// A full backup as HA makes it by default.
    pub fn full(slug: &str, name: &str, date: &str) -> Self {
        Self {
            slug: slug.to_owned(),
            name: name.to_owned(),
            date: date.to_owned(),
            backup_type: "full".to_owned(),
            protected: false,
            compressed: true,
            homeassistant: Some(HOMEASSISTANT_VERSION.to_owned()),
            homeassistant_exclude_database: Some(false),
            supervisor_version: SUPERVISOR_VERSION.to_owned(),
            addons: Vec::new(),
            folders: ["share", "addons/local", "ssl", "media"]
                .map(String::from)
                .to_vec(),
            repositories: Vec::new(),
            extra: json!({}),
        }
    }

    /// A partial backup with nothing selected yet.
    pub fn partial(slug: &str, name: &str, date: &str) -> Self {
        Self {
            backup_type: "partial".to_owned(),
            homeassistant: None,
            homeassistant_exclude_database: None,
            folders: Vec::new(),
            ..Self::full(slug, name, date)
        }
    }
}

/// An add-on inside a backup.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupAddon {
    pub slug: String,
    pub name: String,
    pub version: String,
    /// MB, as the Supervisor reports it.
    pub size: f64,
}

/// Where a backup's tar comes from.
#[derive(Clone, Debug)]
pub enum BackupContent {
    /// Written to the fake's temp dir.
    Bytes(Vec<u8>),
    /// Served straight from this file (e.g. a large generated tar).
    File(PathBuf),
}

/// An active persistent notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub notification_id: String,
    pub title: Option<String>,
    pub message: String,
}

/// A call to the persistent_notification services, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotificationCall {
    Create(Notification),
    Dismiss(String),
    DismissAll,
}

/// An entity state as HA holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityState {
    pub entity_id: String,
    pub state: String,
    pub attributes: Value,
    pub last_changed: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    pub last_reported: DateTime<Utc>,
}

impl EntityState {
    /// `State.as_dict()`.
    fn to_json(&self) -> Value {
        json!({
            "entity_id": self.entity_id,
            "state": self.state,
            "attributes": self.attributes,
            "last_changed": iso(self.last_changed),
            "last_reported": iso(self.last_reported),
            "last_updated": iso(self.last_updated),
            "context": {
                "id": random_token(26).to_uppercase(),
                "parent_id": null,
                "user_id": SUPERVISOR_USER_ID,
            },
        })
    }
}

const SUPERVISOR_USER_ID: &str = "5e2c1a4f9e3b4c7d8a6f0b1c2d3e4f50";

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

/// The fake Supervisor. Dropping it stops the server and deletes its files.
pub struct FakeSupervisor {
    shared: Arc<Shared>,
    server: ServerGuard,
}

impl FakeSupervisor {
    /// Start a Supervisor that accepts `token` (the add-on's SUPERVISOR_TOKEN).
    pub async fn start(token: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fake-supervisor-")
            .tempdir()
            .expect("temp dir for fake Supervisor");
        let shared = Arc::new(Shared {
            state: Mutex::new(SupState::new(token)),
            dir,
        });
        let server = serve(router(shared.clone())).await;
        Self { shared, server }
    }

    /// Stands in for `http://supervisor`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    // -- Backups -----------------------------------------------------------

    /// Add a full backup whose tar is `bytes`.
    pub fn add_backup(&self, slug: &str, name: &str, date: &str, bytes: impl Into<Vec<u8>>) {
        self.add_backup_with(
            BackupSpec::full(slug, name, date),
            BackupContent::Bytes(bytes.into()),
        );
    }

    /// Add a full backup served from an existing file (not copied).
    pub fn add_backup_file(&self, slug: &str, name: &str, date: &str, path: impl Into<PathBuf>) {
        self.add_backup_with(
            BackupSpec::full(slug, name, date),
            BackupContent::File(path.into()),
        );
    }

    /// Add (or replace) a backup with full control over its metadata.
    pub fn add_backup_with(&self, spec: BackupSpec, content: BackupContent) {
        let disk = match content {
            BackupContent::File(path) => path,
            BackupContent::Bytes(bytes) => {
                let path = self.shared.dir.path().join(format!("{}.tar", spec.slug));
                std::fs::write(&path, bytes).expect("write fake backup");
                path
            }
        };
        let size_bytes = std::fs::metadata(&disk)
            .unwrap_or_else(|e| panic!("backup file {}: {e}", disk.display()))
            .len();
        let slug = spec.slug.clone();
        self.shared.lock().backups.insert(
            slug,
            StoredBackup {
                spec,
                disk,
                size_bytes,
            },
        );
    }

    /// Forget a backup, as if it was deleted in the HA UI.
    pub fn remove_backup(&self, slug: &str) -> bool {
        self.shared.lock().backups.remove(slug).is_some()
    }

    /// Delete the backup's file but keep it listed, so that downloads hit
    /// the Supervisor's "file vanished" 404.
    pub fn delete_backup_file(&self, slug: &str) {
        let disk = self.shared.lock().backups.get(slug).map(|b| b.disk.clone());
        if let Some(disk) = disk {
            let _ = std::fs::remove_file(disk);
        }
    }

    /// Slugs currently listed.
    pub fn backup_slugs(&self) -> Vec<String> {
        self.shared.lock().backups.keys().cloned().collect()
    }

    /// Slugs removed through `DELETE /backups/{slug}`, in order.
    pub fn deleted_backups(&self) -> Vec<String> {
        self.shared.lock().deleted.clone()
    }

    // -- Behaviour knobs and faults ----------------------------------------

    /// Answer downloads with 200 and the whole file whatever `Range` says.
    pub fn ignore_range(&self, on: bool) {
        self.shared.lock().ignore_range = on;
    }

    /// With `false`, the Core API proxy answers 502 as when Core is down.
    pub fn set_core_available(&self, on: bool) {
        self.shared.lock().core_available = on;
    }

    /// The `n`-th request from now (1 = next, counting every request) gets
    /// `status` with a plausible body.
    pub fn fail_request(&self, n: u64, status: u16) {
        let status = StatusCode::from_u16(status).expect("valid HTTP status");
        self.shared.lock().request_faults.at(n, status);
    }

    /// The `n`-th request from now gets a 500 whose message quotes the request's
    /// `Authorization` header, as a misconfigured proxy in front of the
    /// Supervisor does.
    pub fn echo_token_in_error(&self, n: u64) {
        self.shared.lock().echo_faults.at(n, ());
    }

    /// The `n`-th download from now sends `after_bytes` bytes of its body and
    /// then drops the connection.
    pub fn drop_connection_mid_body(&self, n: u64, after_bytes: u64) {
        self.shared.lock().download_faults.at(n, after_bytes);
    }

    // -- Inspection --------------------------------------------------------

    /// Every request seen, as `(method, path)`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// The `Range` header of every download request (None = no header).
    pub fn download_ranges(&self) -> Vec<Option<String>> {
        self.shared.lock().download_ranges.clone()
    }

    /// Body bytes sent by downloads.
    pub fn bytes_served(&self) -> u64 {
        self.shared.lock().bytes_served
    }

    /// Active persistent notifications by id.
    pub fn notifications(&self) -> BTreeMap<String, Notification> {
        self.shared.lock().notifications.clone()
    }

    /// Every persistent_notification service call, in order.
    pub fn notification_calls(&self) -> Vec<NotificationCall> {
        self.shared.lock().notification_calls.clone()
    }

    /// Current entity states by entity_id.
    pub fn states(&self) -> BTreeMap<String, EntityState> {
        self.shared.lock().states.clone()
    }

    /// Every accepted state write `(entity_id, state, attributes)`, in order.
    pub fn state_writes(&self) -> Vec<(String, String, Value)> {
        self.shared.lock().state_writes.clone()
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Shared {
    state: Mutex<SupState>,
    dir: tempfile::TempDir,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SupState {
    token: String,
    backups: BTreeMap<String, StoredBackup>,
    deleted: Vec<String>,
    ignore_range: bool,
    core_available: bool,
    request_faults: Countdown<StatusCode>,
    echo_faults: Countdown<()>,
    /// Download number -> bytes to send before dropping the connection.
    download_faults: Countdown<u64>,
    requests: Vec<(String, String)>,
    download_ranges: Vec<Option<String>>,
    bytes_served: u64,
    notifications: BTreeMap<String, Notification>,
    notification_calls: Vec<NotificationCall>,
    states: BTreeMap<String, EntityState>,
    state_writes: Vec<(String, String, Value)>,
}

impl SupState {
    fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            backups: BTreeMap::new(),
            deleted: Vec::new(),
            ignore_range: false,
            core_available: true,
            request_faults: Countdown::default(),
            echo_faults: Countdown::default(),
            download_faults: Countdown::default(),
            requests: Vec::new(),
            download_ranges: Vec::new(),
            bytes_served: 0,
            notifications: BTreeMap::new(),
            notification_calls: Vec::new(),
            states: BTreeMap::new(),
            state_writes: Vec::new(),
        }
    }
}

struct StoredBackup {
    spec: BackupSpec,
    disk: PathBuf,
    size_bytes: u64,
}

impl StoredBackup {
    /// MB rounded to two decimals, as `Backup.size`.
    fn size_mb(&self) -> f64 {
        (self.size_bytes as f64 / 1_048_576.0 * 100.0).round() / 100.0
    }

    /// Fields common to the list and info views (local location only).
    fn common_fields(&self) -> serde_json::Map<String, Value> {
        let s = &self.spec;
        let Value::Object(map) = json!({
            "slug": s.slug,
            "name": s.name,
            "date": s.date,
            "type": s.backup_type,
            "size": self.size_mb(),
            "size_bytes": self.size_bytes,
            "location": null,
            "locations": [null],
            "protected": s.protected,
            "location_attributes": {
                ".local": {"protected": s.protected, "size_bytes": self.size_bytes},
            },
            "compressed": s.compressed,
        }) else {
            unreachable!("json! object")
        };
        map
    }

    /// An entry of `GET /backups` (v1: `content.addons`). No `extra` here.
    fn list_entry(&self) -> Value {
        let mut map = self.common_fields();
        map.insert(
            "content".to_owned(),
            json!({
                "homeassistant": self.spec.homeassistant.is_some(),
                "addons": self.spec.addons.iter().map(|a| &a.slug).collect::<Vec<_>>(),
                "folders": self.spec.folders,
            }),
        );
        Value::Object(map)
    }

    /// `GET /backups/{slug}/info` (v1: top-level `addons`).
    fn info(&self) -> Value {
        let s = &self.spec;
        let mut map = self.common_fields();
        let extra = json!({
            "supervisor_version": s.supervisor_version,
            "homeassistant": s.homeassistant,
            "addons": s.addons.iter().map(|a| json!({
                "slug": a.slug, "name": a.name, "version": a.version, "size": a.size,
            })).collect::<Vec<_>>(),
            "repositories": s.repositories,
            "folders": s.folders,
            "homeassistant_exclude_database": s.homeassistant_exclude_database,
            "extra": s.extra,
        });
        if let Value::Object(more) = extra {
            map.extend(more);
        }
        Value::Object(map)
    }
}

// ---------------------------------------------------------------------------
// Router, auth and faults
// ---------------------------------------------------------------------------

type AppState = Arc<Shared>;

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/backups", get(list_backups))
        .route("/backups/info", get(backups_info))
        .route("/backups/{slug}/info", get(backup_info))
        .route("/backups/{slug}/download", get(download))
        .route("/backups/{slug}", axum::routing::delete(delete_backup))
        .route("/core/api/", get(core_api_status))
        .route("/core/api/services/{domain}/{service}", post(call_service))
        .route(
            "/core/api/states/{entity_id}",
            post(set_state).get(get_state),
        )
        .fallback(|| async { aiohttp_error(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn_with_state(shared.clone(), gatekeeper))
        .with_state(shared)
}

/// Records the request, applies injected failures, then checks the token
/// the way the Supervisor's security middleware does.
async fn gatekeeper(State(shared): State<AppState>, req: Request, next: Next) -> Response {
    let injected = {
        let mut st = shared.lock();
        st.requests
            .push((req.method().to_string(), req.uri().path().to_owned()));
        (st.request_faults.tick(), st.echo_faults.tick())
    };
    let (injected, echo) = injected;
    if let Some(status) = injected {
        return injected_status(status);
    }
    if echo.is_some() {
        let auth = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"result": "error", "message": format!("upstream refused the request with Authorization: {auth}")})),
        )
            .into_response();
    }
    let token = supervisor_token(req.headers());
    let expected = shared.lock().token.clone();
    match token {
        None => aiohttp_error(StatusCode::UNAUTHORIZED),
        Some(t) if t != expected => aiohttp_error(StatusCode::FORBIDDEN),
        Some(_) => next.run(req).await,
    }
}

/// `X-Supervisor-Token`, the legacy `X-Hassio-Key`, or the last word of
/// `Authorization` (so "Bearer <token>").
fn supervisor_token(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    get("X-Supervisor-Token")
        .or_else(|| get("X-Hassio-Key"))
        .map(str::to_owned)
        .or_else(|| {
            get(header::AUTHORIZATION.as_str())
                .and_then(|v| v.split(' ').next_back())
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        })
}

fn injected_status(status: StatusCode) -> Response {
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return api_error(status, "Unknown error, see Supervisor logs");
    }
    aiohttp_error(status)
}

// ---------------------------------------------------------------------------
// Backups API
// ---------------------------------------------------------------------------

async fn list_backups(State(shared): State<AppState>) -> Response {
    let st = shared.lock();
    let backups: Vec<Value> = st.backups.values().map(StoredBackup::list_entry).collect();
    api_ok(json!({"backups": backups}))
}

async fn backups_info(State(shared): State<AppState>) -> Response {
    let st = shared.lock();
    let backups: Vec<Value> = st.backups.values().map(StoredBackup::list_entry).collect();
    api_ok(json!({"backups": backups, "days_until_stale": 30}))
}

async fn backup_info(State(shared): State<AppState>, UrlPath(slug): UrlPath<String>) -> Response {
    match shared.lock().backups.get(&slug) {
        Some(b) => api_ok(b.info()),
        None => backup_missing(),
    }
}

async fn delete_backup(State(shared): State<AppState>, UrlPath(slug): UrlPath<String>) -> Response {
    let mut st = shared.lock();
    let Some(backup) = st.backups.remove(&slug) else {
        return backup_missing();
    };
    if backup.disk.starts_with(shared.dir.path()) {
        let _ = std::fs::remove_file(&backup.disk);
    }
    st.deleted.push(slug);
    api_ok(json!({}))
}

fn backup_missing() -> Response {
    api_error(StatusCode::NOT_FOUND, "Backup does not exist")
}

async fn download(
    State(shared): State<AppState>,
    UrlPath(slug): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (disk, name, ignore_range, cut_after) = {
        let mut st = shared.lock();
        let Some(backup) = st.backups.get(&slug) else {
            return backup_missing();
        };
        let found = (backup.disk.clone(), backup.spec.name.clone());
        st.download_ranges.push(range_header.clone());
        let cut_after = st.download_faults.tick();
        (found.0, found.1, st.ignore_range, cut_after)
    };
    // The Supervisor checks the file itself and answers a bare 404.
    let Ok(meta) = tokio::fs::metadata(&disk).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !meta.is_file() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let size = meta.len();
    let range = match range_header.as_deref().filter(|_| !ignore_range) {
        None => None,
        Some(value) => match byte_range(value, size) {
            Some(r) => Some(r),
            None => return unsatisfiable(size),
        },
    };
    let (start, count) = range.unwrap_or((0, size));
    let file = match open_at(&disk, start).await {
        Ok(f) => f,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(file_body(file, count, cut_after, shared.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/tar"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, header_value(count.to_string()));
    h.insert(
        header::CONTENT_DISPOSITION,
        header_value(format!("attachment; filename={}.tar", slugify_name(&name))),
    );
    if let Ok(modified) = meta.modified() {
        let modified: DateTime<Utc> = modified.into();
        h.insert(
            header::LAST_MODIFIED,
            header_value(modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        );
    }
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            header_value(format!("bytes {start}-{}/{size}", start + count - 1)),
        );
    }
    resp
}

/// aiohttp's single-range parsing (`^bytes=(\d*)-(\d*)$`) and FileResponse
/// clamping. Returns `(start, count)`, or None for 416.
fn byte_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(first) || !digits(last) || (first.is_empty() && last.is_empty()) {
        return None;
    }
    let first: Option<u64> = first.parse().ok();
    let last: Option<u64> = last.parse().ok();
    let (start, end) = match (first, last) {
        // "bytes=-N": the last N bytes.
        (None, Some(n)) => (size.saturating_sub(n), size),
        (Some(s), None) => (s, size),
        (Some(s), Some(e)) if e >= s => (s, (e + 1).min(size)),
        _ => return None,
    };
    (start < size).then(|| (start, end - start))
}

fn unsatisfiable(size: u64) -> Response {
    let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    resp.headers_mut().insert(
        header::CONTENT_RANGE,
        header_value(format!("bytes */{size}")),
    );
    resp
}

async fn open_at(path: &Path, start: u64) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    Ok(file)
}

/// Streams `count` bytes of `file`; with `cut_after`, the stream fails after
/// that many bytes, which makes hyper drop the connection mid-body.
fn file_body(file: tokio::fs::File, count: u64, cut_after: Option<u64>, shared: AppState) -> Body {
    struct Cursor {
        file: tokio::fs::File,
        remaining: u64,
        sent: u64,
        cut_after: Option<u64>,
        shared: AppState,
        failed: bool,
    }
    let cursor = Cursor {
        file,
        remaining: count,
        sent: 0,
        cut_after,
        shared,
        failed: false,
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        if c.failed || c.remaining == 0 {
            return None;
        }
        let mut want = c.remaining.min(STREAM_CHUNK as u64);
        if let Some(cut) = c.cut_after {
            if c.sent >= cut {
                c.failed = true;
                // Pause first: hyper flushes what it has buffered while the
                // body is pending, so the client really gets `cut` bytes
                // before the connection dies.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let err = std::io::Error::other("fake Supervisor: injected connection drop");
                return Some((Err(err), c));
            }
            want = want.min(cut - c.sent);
        }
        let mut buf = vec![0u8; want as usize];
        match c.file.read(&mut buf).await {
            // The file shrank under us: end early, the client sees a short body.
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                c.sent += n as u64;
                c.remaining -= n as u64;
                c.shared.lock().bytes_served += n as u64;
                Some((Ok(Bytes::from(buf)), c))
            }
            Err(e) => {
                c.failed = true;
                Some((Err(e), c))
            }
        }
    });
    Body::from_stream(stream)
}

/// `RE_SLUGIFY_NAME.sub('_', name)`: runs of non-alphanumerics become "_".
fn slugify_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Core API proxy (/core/api/…)
// ---------------------------------------------------------------------------

/// The proxy answers 502 when Core is not reachable.
fn core_down(shared: &Shared) -> Option<Response> {
    (!shared.lock().core_available).then(|| aiohttp_error(StatusCode::BAD_GATEWAY))
}

async fn core_api_status(State(shared): State<AppState>) -> Response {
    if let Some(resp) = core_down(&shared) {
        return resp;
    }
    Json(json!({"message": "API running."})).into_response()
}

async fn call_service(
    State(shared): State<AppState>,
    UrlPath((domain, service)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(resp) = core_down(&shared) {
        return resp;
    }
    let data: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return core_message(StatusCode::BAD_REQUEST, "Data should be valid JSON."),
        }
    };
    let call = match (domain.as_str(), service.as_str()) {
        ("persistent_notification", "create") => create_notification(&data),
        ("persistent_notification", "dismiss") => {
            string_field(&data, "notification_id").map(NotificationCall::Dismiss)
        }
        ("persistent_notification", "dismiss_all") => Some(NotificationCall::DismissAll),
        // ServiceNotFound: HTTPBadRequest.
        _ => None,
    };
    // Schema violations (vol.Invalid) are a bare aiohttp 400 as well.
    let Some(call) = call else {
        return aiohttp_error(StatusCode::BAD_REQUEST);
    };
    let mut st = shared.lock();
    match &call {
        NotificationCall::Create(n) => {
            st.notifications
                .insert(n.notification_id.clone(), n.clone());
        }
        NotificationCall::Dismiss(id) => {
            // Dismissing an unknown id is silently accepted.
            st.notifications.remove(id);
        }
        NotificationCall::DismissAll => st.notifications.clear(),
    }
    st.notification_calls.push(call);
    // No entity changes: persistent notifications are not states any more.
    Json(json!([])).into_response()
}

fn create_notification(data: &Value) -> Option<NotificationCall> {
    let message = match data.get("message")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let title = match data.get("title") {
        None | Some(Value::Null) => None,
        Some(_) => Some(string_field(data, "title")?),
    };
    let notification_id = match data.get("notification_id") {
        None | Some(Value::Null) => random_token(26).to_lowercase(),
        Some(_) => string_field(data, "notification_id")?,
    };
    Some(NotificationCall::Create(Notification {
        notification_id,
        title,
        message,
    }))
}

fn string_field(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

async fn set_state(
    State(shared): State<AppState>,
    UrlPath(entity_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Some(resp) = core_down(&shared) {
        return resp;
    }
    let Ok(data) = serde_json::from_slice::<Value>(&body) else {
        return core_message(StatusCode::BAD_REQUEST, "Invalid JSON specified.");
    };
    let new_state = match data.get("state") {
        None | Some(Value::Null) => {
            return core_message(StatusCode::BAD_REQUEST, "No state specified.");
        }
        Some(Value::String(s)) => s.clone(),
        // HA passes the value on unconverted and fails on len() of a
        // non-string: an unhandled error, i.e. aiohttp's 500.
        Some(_) => return unhandled_error(),
    };
    let attributes = match data.get("attributes") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return unhandled_error(),
    };
    if !valid_entity_id(&entity_id) {
        return core_message(StatusCode::BAD_REQUEST, "Invalid entity ID specified.");
    }
    if new_state.chars().count() > MAX_STATE_LEN {
        return core_message(StatusCode::BAD_REQUEST, "Invalid state specified.");
    }

    let mut st = shared.lock();
    let now = Utc::now();
    let previous = st.states.get(&entity_id).cloned();
    let is_new = previous.is_none();
    let state = match previous {
        None => EntityState {
            entity_id: entity_id.clone(),
            state: new_state,
            attributes,
            last_changed: now,
            last_updated: now,
            last_reported: now,
        },
        Some(old) => {
            let state_changed = old.state != new_state;
            let changed = state_changed || old.attributes != attributes;
            EntityState {
                entity_id: entity_id.clone(),
                last_changed: if state_changed { now } else { old.last_changed },
                last_updated: if changed { now } else { old.last_updated },
                last_reported: now,
                state: new_state,
                attributes,
            }
        }
    };
    st.state_writes.push((
        entity_id.clone(),
        state.state.clone(),
        state.attributes.clone(),
    ));
    st.states.insert(entity_id.clone(), state.clone());
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, Json(state.to_json())).into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        header_value(format!("/api/states/{entity_id}")),
    );
    resp
}

async fn get_state(
    State(shared): State<AppState>,
    UrlPath(entity_id): UrlPath<String>,
) -> Response {
    if let Some(resp) = core_down(&shared) {
        return resp;
    }
    match shared.lock().states.get(&entity_id) {
        Some(state) => Json(state.to_json()).into_response(),
        None => core_message(StatusCode::NOT_FOUND, "Entity not found."),
    }
}

/// HA's `valid_entity_id`:
/// `^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$`.
fn valid_entity_id(entity_id: &str) -> bool {
    let Some((domain, object_id)) = entity_id.split_once('.') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || c == '_')
            && !p.starts_with('_')
            && !p.ends_with('_')
    };
    part_ok(domain) && part_ok(object_id) && !entity_id.contains("__")
}

// ---------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------

fn api_ok(data: Value) -> Response {
    Json(json!({"result": "ok", "data": data})).into_response()
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"result": "error", "message": message}))).into_response()
}

/// HA Core's `json_message`.
fn core_message(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"message": message}))).into_response()
}

/// aiohttp's default body for an `HTTPException`: "401: Unauthorized".
fn aiohttp_error(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}: {reason}", status.as_u16()),
    )
        .into_response()
}

/// What aiohttp sends when a handler raises an unexpected exception.
fn unhandled_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("valid header value")
}

/// HA's ISO timestamps: "2026-01-31T03:00:00.123456+00:00".
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}
