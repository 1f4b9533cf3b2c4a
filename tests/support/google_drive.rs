//! `FakeDrive`: an in-process fake of Google Drive API v3 and of Google's OAuth 2.0 endpoints,
//! for integration tests only (never production code).
//!
//! Follows Google's public documentation:
//! - "OAuth 2.0 for Mobile & Desktop Apps" (installed apps, PKCE with S256, loopback redirect):
//!   `GET /o/oauth2/v2/auth` (accounts.google.com) answers as if the user consented: a 302 to
//!   `{redirect_uri}?state=…&code=…&scope=…`. The redirect URI must be a loopback
//!   `http://127.0.0.1[:port][/path]`, `http://[::1]…` or `http://localhost…` (Desktop-app client
//!   rules), else a 400 page with `Error 400: redirect_uri_mismatch`; the retired out-of-band
//!   `urn:ietf:wg:oauth:2.0:oob` is refused with `invalid_request`. `POST /token`
//!   (oauth2.googleapis.com) does `authorization_code` (single-use codes, redirect URI equal to
//!   the authorization request's, `code_verifier` checked against the S256 or plain challenge)
//!   and `refresh_token`, with Google's error bodies (`invalid_grant` "Bad Request" / "Token has
//!   been expired or revoked.", `invalid_client` "The OAuth client was not found." /
//!   "Unauthorized", `unsupported_grant_type`, `redirect_uri_mismatch`). `POST /revoke?token=…`
//!   revokes a refresh token with its access tokens (an access token's refresh token goes too,
//!   as Google documents). The client authenticates with `client_id` + `client_secret` in the
//!   form or with HTTP Basic. Tokens look like Google's: codes `4/0A…`, access tokens `ya29.…`,
//!   refresh tokens `1//0…`; `expires_in` is 3599.
//! - Drive API v3 reference: `files.get` (`/drive/v3/files/{id}`, also `root`), `files.list`,
//!   `files.get?alt=media` (Range → 206/416), `files.export` (≤ 10 MiB, else 403
//!   `exportSizeLimitExceeded`; Docs Editors files only), the `exportLinks` URLs (no size limit),
//!   `drives.list`, `changes.getStartPageToken`, `changes.list` (one change per file per listing
//!   window, its latest; only the last page has `newStartPageToken`), and "Resolve errors" for
//!   every error body (`{"error":{"code","message","errors":[{message,domain,reason,location?,
//!   locationType?}]}}`), including 401 with `WWW-Authenticate`, 403 `userRateLimitExceeded` /
//!   `rateLimitExceeded`, 429, 500/503 `backendError`.
//!
//! Simplifications, on purpose: every resource carries all its fields whatever `fields` asks for;
//! `q` understands only terms joined by `and`: `trashed = true|false`, `'ID' in parents`,
//! `mimeType = '…'`, `mimeType != '…'`, `name = '…'` (anything else → 400 `invalid` on `q`);
//! files.list returns items in creation order and never the roots; changes of shared drives
//! themselves (`changeType: "drive"`) are listed only with `supportsAllDrives=true`; a file
//! change carries no `driveId` (its `file.driveId` says it).
//!
//! File contents live in temporary files and are streamed, never whole in memory; exports are
//! generated on the fly (deterministic from id, version and MIME type).

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use md5::Md5;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::fault::{ConnHandle, Countdown, ServerGuard, hex, random_token, serve};

pub const CLIENT_ID: &str = "123456789012-offsitefake.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-fake-secret-0123456789";
/// files.export refuses bigger exports ("limited to 10MB").
pub const EXPORT_LIMIT: u64 = 10 * 1024 * 1024;
/// Export length of a Workspace file when none is given.
pub const DEFAULT_EXPORT_LEN: u64 = 4096;
pub const ACCESS_TOKEN_TTL: u64 = 3599;

pub const FOLDER: &str = "application/vnd.google-apps.folder";
pub const DOCUMENT: &str = "application/vnd.google-apps.document";
pub const SPREADSHEET: &str = "application/vnd.google-apps.spreadsheet";
pub const PRESENTATION: &str = "application/vnd.google-apps.presentation";
pub const FORM: &str = "application/vnd.google-apps.form";
pub const SITE: &str = "application/vnd.google-apps.site";
pub const SHORTCUT: &str = "application/vnd.google-apps.shortcut";

pub const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
pub const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
pub const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";
pub const PDF: &str = "application/pdf";

const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
const NOT_DOWNLOADABLE: &str =
    "Only files with binary content can be downloaded. Use Export with Docs Editors files.";

/// (Google type, `exportFormat` of its exportLinks, MIME type) — the export formats Drive lists
/// in `about.exportFormats` for the three Docs Editors types.
const EXPORTS: &[(&str, &str, &str)] = &[
    (DOCUMENT, "docx", DOCX),
    (DOCUMENT, "odt", "application/vnd.oasis.opendocument.text"),
    (DOCUMENT, "rtf", "application/rtf"),
    (DOCUMENT, "pdf", PDF),
    (DOCUMENT, "txt", "text/plain"),
    (DOCUMENT, "zip", "application/zip"),
    (DOCUMENT, "epub", "application/epub+zip"),
    (DOCUMENT, "md", "text/markdown"),
    (SPREADSHEET, "xlsx", XLSX),
    (
        SPREADSHEET,
        "ods",
        "application/x-vnd.oasis.opendocument.spreadsheet",
    ),
    (SPREADSHEET, "pdf", PDF),
    (SPREADSHEET, "csv", "text/csv"),
    (SPREADSHEET, "tsv", "text/tab-separated-values"),
    (SPREADSHEET, "zip", "application/zip"),
    (PRESENTATION, "pptx", PPTX),
    (
        PRESENTATION,
        "odp",
        "application/vnd.oasis.opendocument.presentation",
    ),
    (PRESENTATION, "pdf", PDF),
    (PRESENTATION, "txt", "text/plain"),
];

/// What a Drive API request answers instead of doing its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 403 `usageLimits` / `userRateLimitExceeded`, "User Rate Limit Exceeded".
    RateLimit403User,
    /// 403 `usageLimits` / `rateLimitExceeded`, "Rate Limit Exceeded".
    RateLimit403,
    /// 429 `usageLimits` / `rateLimitExceeded`.
    TooMany429,
    /// 500 or 503 `backendError`.
    Status(u16),
}

/// Request counts, for assertions and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Every Drive API request that passed authentication (faulted ones included).
    pub api: u64,
    pub get: u64,
    pub list: u64,
    pub changes: u64,
    pub start_page_token: u64,
    pub drives: u64,
    /// `alt=media` requests per file id.
    pub media: HashMap<String, u64>,
    /// files.export requests (refused ones included).
    pub exports: u64,
    /// Requests to exportLinks URLs.
    pub export_links: u64,
    /// Body bytes sent by media downloads and exports.
    pub bytes_served: u64,
    /// Drive API requests answered 401.
    pub unauthorized: u64,
}

/// A paused download, from [`FakeDrive::pause_download_at`]. Dropping it releases the download.
#[must_use = "dropping a Gate releases the download at once"]
pub struct Gate {
    state: Arc<GateState>,
}

struct GateState {
    reached: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Gate {
    /// Waits until a download has sent everything before the gate's offset and stopped.
    pub async fn wait_paused(&self) {
        let mut rx = self.state.reached.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
    pub fn is_paused(&self) -> bool {
        *self.state.reached.borrow()
    }
    /// Whether a download is held at the gate right now (false once released, or once the
    /// server dropped the response because the client went away).
    pub fn holding(&self) -> bool {
        self.state.released.receiver_count() > 0
    }
    /// The paused download goes on.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
    }
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    name: String,
    mime: String,
    parents: Vec<String>,
    drive_id: Option<String>,
    version: u64,
    created: DateTime<Utc>,
    modified: DateTime<Utc>,
    trashed: bool,
    explicitly_trashed: bool,
    /// Binary files only.
    content: Option<Blob>,
    export_len: u64,
    shortcut_target: Option<(String, String)>,
    /// Creation order, for files.list.
    seq: u64,
}

#[derive(Debug, Clone)]
struct Blob {
    path: PathBuf,
    size: u64,
    md5: String,
    sha256: String,
}

#[derive(Debug, Clone)]
enum ChangeKey {
    File(String),
    Drive(String),
}

#[derive(Debug, Clone)]
struct Change {
    key: ChangeKey,
    time: DateTime<Utc>,
    removed: bool,
    /// The shared drive the item was in (kept for permanently deleted items).
    drive_id: Option<String>,
}

struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    scope: String,
}

struct RefreshToken {
    scope: String,
    revoked: bool,
}

struct AccessToken {
    refresh: String,
    expires: Instant,
}

struct SharedDrive {
    id: String,
    name: String,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, Item>,
    root: String,
    drives: Vec<SharedDrive>,
    log: Vec<Change>,
    clock: Option<DateTime<Utc>>,
    seq: u64,
    codes: HashMap<String, AuthRequest>,
    refresh_tokens: HashMap<String, RefreshToken>,
    access_tokens: HashMap<String, AccessToken>,
    token_requests: u64,
    faults: Countdown<Fault>,
    fail_next: Vec<Fault>,
    gates: Vec<(String, u64, Arc<GateState>)>,
    cut_after: Option<u64>,
    throttle: Option<u64>,
    counters: Counters,
}

struct Shared {
    base: Mutex<String>,
    dir: tempfile::TempDir,
    inner: Mutex<Inner>,
}

type AppState = Arc<Shared>;

pub struct FakeDrive {
    shared: AppState,
    server: ServerGuard,
}

impl FakeDrive {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            base: Mutex::new(String::new()),
            dir: tempfile::tempdir().unwrap(),
            inner: Mutex::new(Inner::default()),
        });
        {
            let mut inner = shared.inner.lock().unwrap();
            let root = format!("0A{}Uk9PVA", random_token(13));
            let now = tick(&mut inner);
            let item = folder_item(&mut inner, &root, "My Drive", Vec::new(), None, now);
            inner.items.insert(root.clone(), item);
            inner.root = root;
        }
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = serve(router).await;
        *shared.base.lock().unwrap() = server.base_url();
        FakeDrive { shared, server }
    }

    /// `http://127.0.0.1:PORT`: Drive API, OAuth authorize, token and revoke endpoints alike.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }
    /// Google's `https://accounts.google.com/o/oauth2/v2/auth`.
    pub fn auth_url(&self) -> String {
        format!("{}/o/oauth2/v2/auth", self.base_url())
    }
    /// Google's `https://oauth2.googleapis.com/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }
    /// Google's `https://oauth2.googleapis.com/revoke`.
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }
    /// Google's `https://www.googleapis.com/drive/v3`.
    pub fn drive_url(&self) -> String {
        format!("{}/drive/v3", self.base_url())
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    // -- OAuth ---------------------------------------------------------------------------------

    /// What the browser and the consenting user do with `authorize_url`: the URL the browser is
    /// finally redirected to (the one a user pastes back). Panics with the error page if Google
    /// would show one instead.
    pub fn consent(&self, authorize_url: &str) -> String {
        let query = authorize_url.split_once('?').map(|(_, q)| q).unwrap_or("");
        let response = authorize(&self.shared, query, false);
        location_or_panic(response)
    }
    /// As [`Self::consent`], but the user clicks "Cancel": `…?error=access_denied&state=…`.
    pub fn deny(&self, authorize_url: &str) -> String {
        let query = authorize_url.split_once('?').map(|(_, q)| q).unwrap_or("");
        location_or_panic(authorize(&self.shared, query, true))
    }
    /// A refresh token and an access token, as if an authorization-code exchange had happened.
    pub fn issue_tokens(&self, scope: &str) -> (String, String) {
        let mut inner = self.inner();
        let refresh = format!("1//0{}", random_token(100));
        inner.refresh_tokens.insert(
            refresh.clone(),
            RefreshToken {
                scope: scope.into(),
                revoked: false,
            },
        );
        let access = new_access_token(&mut inner, &refresh);
        (refresh, access)
    }
    /// Every refresh token is revoked (and every access token with it).
    pub fn revoke_all(&self) {
        let mut inner = self.inner();
        for t in inner.refresh_tokens.values_mut() {
            t.revoked = true;
        }
        inner.access_tokens.clear();
    }
    /// Access tokens issued so far answer 401 from now on (refresh tokens still work).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for t in self.inner().access_tokens.values_mut() {
            t.expires = now;
        }
    }
    /// `POST /token` requests so far.
    pub fn token_requests(&self) -> u64 {
        self.inner().token_requests
    }

    // -- faults --------------------------------------------------------------------------------

    /// The next `n` Drive API requests (after authentication) answer `fault`.
    pub fn fail_next_api(&self, n: usize, fault: Fault) {
        self.inner().fail_next.extend(std::iter::repeat_n(fault, n));
    }
    /// The `n`-th Drive API request from now (1 = the next) answers `fault`.
    pub fn fail_api_at(&self, n: u64, fault: Fault) {
        self.inner().faults.at(n, fault);
    }
    /// Media downloads send at most this many bytes per second (`None`: no limit).
    pub fn throttle_downloads(&self, bytes_per_sec: Option<u64>) {
        self.inner().throttle = bytes_per_sec.map(|b| b.max(1));
    }
    /// The next media download of `file_id` whose range covers `byte_offset` sends the bytes
    /// before that offset, then stops until the gate is released (or dropped).
    pub fn pause_download_at(&self, file_id: &str, byte_offset: u64) -> Gate {
        let state = Arc::new(GateState {
            reached: watch::channel(false).0,
            released: watch::channel(false).0,
        });
        self.inner()
            .gates
            .push((file_id.into(), byte_offset, state.clone()));
        Gate { state }
    }
    /// The next media download sends `bytes` body bytes, then its connection is cut.
    pub fn cut_download_after(&self, bytes: u64) {
        self.inner().cut_after = Some(bytes);
    }

    // -- counters ------------------------------------------------------------------------------

    pub fn counters(&self) -> Counters {
        self.inner().counters.clone()
    }
    pub fn reset_counters(&self) {
        self.inner().counters = Counters::default();
    }
    /// Drive API requests that passed authentication.
    pub fn api_requests(&self) -> u64 {
        self.inner().counters.api
    }
    /// `alt=media` requests for `id`.
    pub fn media_downloads(&self, id: &str) -> u64 {
        self.inner().counters.media.get(id).copied().unwrap_or(0)
    }
    pub fn bytes_served(&self) -> u64 {
        self.inner().counters.bytes_served
    }

    // -- content -------------------------------------------------------------------------------

    /// The id of My Drive's root folder (also addressable as `root`).
    pub fn root_id(&self) -> String {
        self.inner().root.clone()
    }
    /// The item as `files.get` shows it (with `supportsAllDrives=true`).
    pub fn metadata(&self, id: &str) -> Option<Value> {
        let base = self.base_url();
        let inner = self.inner();
        inner.items.get(id).map(|i| file_json(i, &base))
    }
    pub fn exists(&self, id: &str) -> bool {
        self.inner().items.contains_key(id)
    }
    pub fn version(&self, id: &str) -> u64 {
        self.inner().items[id].version
    }
    /// The path of a binary file's content.
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.blob(id).path
    }
    pub fn content(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.content_path(id)).unwrap()
    }
    /// Hex MD5 of a binary file (its `md5Checksum`).
    pub fn md5(&self, id: &str) -> String {
        self.blob(id).md5
    }
    pub fn size(&self, id: &str) -> u64 {
        self.blob(id).size
    }
    fn blob(&self, id: &str) -> Blob {
        let inner = self.inner();
        let item = inner
            .items
            .get(id)
            .unwrap_or_else(|| panic!("no item {id}"));
        item.content
            .clone()
            .unwrap_or_else(|| panic!("{id} has no binary content"))
    }
    /// What exporting `id` as `mime` answers now (its current version).
    pub fn export_bytes(&self, id: &str, mime: &str) -> Vec<u8> {
        let inner = self.inner();
        let item = &inner.items[id];
        export_content(id, item.version, mime, item.export_len)
    }

    /// A new folder in `parent` (`root` or an id).
    pub fn add_folder(&self, name: &str, parent: &str) -> String {
        let mut inner = self.inner();
        let parent = resolve(&inner, parent);
        let drive = drive_of(&inner, &parent);
        let id = new_id();
        let now = tick(&mut inner);
        let item = folder_item(&mut inner, &id, name, vec![parent], drive, now);
        insert(&mut inner, item);
        id
    }
    /// A new binary file with `bytes` as content.
    pub fn add_file(&self, name: &str, parent: &str, bytes: &[u8]) -> String {
        let blob = self.write_blob(|f| {
            f.write_all(bytes).unwrap();
            bytes.to_vec()
        });
        self.add_blob(name, parent, blob)
    }
    /// A new binary file of `len` deterministic pseudo-random bytes (same `seed`, same bytes).
    pub fn add_file_sized(&self, name: &str, parent: &str, len: u64, seed: u64) -> String {
        let blob = self.write_sized(len, seed);
        self.add_blob(name, parent, blob)
    }
    /// A new Google Workspace item of type `mime` (e.g. [`DOCUMENT`]) whose exports are
    /// `export_len` bytes long.
    pub fn add_workspace(&self, name: &str, parent: &str, mime: &str, export_len: u64) -> String {
        let mut inner = self.inner();
        let parent = resolve(&inner, parent);
        let drive = drive_of(&inner, &parent);
        let now = tick(&mut inner);
        inner.seq += 1;
        let item = Item {
            id: new_id(),
            name: name.into(),
            mime: mime.into(),
            parents: vec![parent],
            drive_id: drive,
            version: 1,
            created: now,
            modified: now,
            trashed: false,
            explicitly_trashed: false,
            content: None,
            export_len,
            shortcut_target: None,
            seq: inner.seq,
        };
        let id = item.id.clone();
        insert(&mut inner, item);
        id
    }
    /// A shortcut to `target`.
    pub fn add_shortcut(&self, name: &str, parent: &str, target: &str) -> String {
        let id = self.add_workspace(name, parent, SHORTCUT, 0);
        let mut inner = self.inner();
        let target_mime = inner.items[target].mime.clone();
        inner.items.get_mut(&id).unwrap().shortcut_target = Some((target.into(), target_mime));
        id
    }
    /// A new shared drive; its id is also its root folder's id.
    pub fn add_shared_drive(&self, name: &str) -> String {
        let mut inner = self.inner();
        let id = format!("0A{}Uk9PVA", random_token(13));
        let now = tick(&mut inner);
        let item = folder_item(&mut inner, &id, name, Vec::new(), Some(id.clone()), now);
        inner.items.insert(id.clone(), item);
        inner.drives.push(SharedDrive {
            id: id.clone(),
            name: name.into(),
        });
        inner.log.push(Change {
            key: ChangeKey::Drive(id.clone()),
            time: now,
            removed: false,
            drive_id: Some(id.clone()),
        });
        id
    }
    /// New content for a binary file.
    pub fn modify(&self, id: &str, bytes: &[u8]) {
        let blob = self.write_blob(|f| {
            f.write_all(bytes).unwrap();
            bytes.to_vec()
        });
        self.change(id, |i| i.content = Some(blob));
    }
    /// New content of `len` pseudo-random bytes for a binary file.
    pub fn modify_sized(&self, id: &str, len: u64, seed: u64) {
        let blob = self.write_sized(len, seed);
        self.change(id, |i| i.content = Some(blob));
    }
    /// A Workspace file is edited (new version, new export bytes), optionally with a new length.
    pub fn edit_workspace(&self, id: &str, export_len: Option<u64>) {
        self.change(id, |i| {
            if let Some(len) = export_len {
                i.export_len = len;
            }
        });
    }
    pub fn rename(&self, id: &str, name: &str) {
        self.change(id, |i| i.name = name.into());
    }
    /// Moves `id` into `new_parent`. Into another drive, what is under it moves along (and
    /// changes too); within a drive only `id` changes.
    pub fn move_to(&self, id: &str, new_parent: &str) {
        let (parent, drive, same_drive) = {
            let inner = self.inner();
            let parent = resolve(&inner, new_parent);
            let drive = drive_of(&inner, &parent);
            let same = inner.items.get(id).map(|i| &i.drive_id) == Some(&drive);
            (parent, drive, same)
        };
        let moved = if same_drive {
            vec![id.to_string()]
        } else {
            self.subtree(id)
        };
        for d in moved {
            let drive = drive.clone();
            let parent = parent.clone();
            let top = d == id;
            self.change(&d, move |i| {
                i.drive_id = drive;
                if top {
                    i.parents = vec![parent];
                }
            });
        }
    }
    /// Moves `id` to the trash; what is under it is trashed too (not explicitly).
    pub fn trash(&self, id: &str) {
        for d in self.subtree(id) {
            let top = d == id;
            self.change(&d, move |i| {
                i.trashed = true;
                i.explicitly_trashed = top;
            });
        }
    }
    pub fn untrash(&self, id: &str) {
        for d in self.subtree(id) {
            self.change(&d, |i| {
                i.trashed = false;
                i.explicitly_trashed = false;
            });
        }
    }
    /// Deletes `id` and what is under it for good: `removed: true` changes.
    pub fn delete_forever(&self, id: &str) {
        let ids = self.subtree(id);
        let mut inner = self.inner();
        for d in ids.into_iter().rev() {
            let Some(item) = inner.items.remove(&d) else {
                continue;
            };
            if let Some(blob) = &item.content {
                let _ = std::fs::remove_file(&blob.path);
            }
            let time = tick(&mut inner);
            inner.log.push(Change {
                key: ChangeKey::File(d),
                time,
                removed: true,
                drive_id: item.drive_id,
            });
        }
    }
    /// The number of entries in the change log (the next start page token minus one).
    pub fn change_count(&self) -> usize {
        self.inner().log.len()
    }

    /// `id` then every item under it, parents before children.
    fn subtree(&self, id: &str) -> Vec<String> {
        let inner = self.inner();
        let id = resolve(&inner, id);
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let mut kids: Vec<&Item> = inner
                .items
                .values()
                .filter(|c| c.parents.contains(&out[i]))
                .collect();
            kids.sort_by_key(|c| c.seq);
            out.extend(kids.into_iter().map(|c| c.id.clone()));
            i += 1;
        }
        out
    }

    fn change(&self, id: &str, f: impl FnOnce(&mut Item)) {
        let mut inner = self.inner();
        let id = resolve(&inner, id);
        let now = tick(&mut inner);
        let item = inner
            .items
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no item {id}"));
        let old = item.content.as_ref().map(|b| b.path.clone());
        f(item);
        if let (Some(old), Some(new)) = (old, item.content.as_ref())
            && old != new.path
        {
            let _ = std::fs::remove_file(old);
        }
        item.version += 1;
        item.modified = now;
        let drive_id = item.drive_id.clone();
        inner.log.push(Change {
            key: ChangeKey::File(id),
            time: now,
            removed: false,
            drive_id,
        });
    }

    fn add_blob(&self, name: &str, parent: &str, blob: Blob) -> String {
        let mime = guess_mime(name);
        let mut inner = self.inner();
        let parent = resolve(&inner, parent);
        let drive = drive_of(&inner, &parent);
        let now = tick(&mut inner);
        inner.seq += 1;
        let item = Item {
            id: new_id(),
            name: name.into(),
            mime: mime.into(),
            parents: vec![parent],
            drive_id: drive,
            version: 1,
            created: now,
            modified: now,
            trashed: false,
            explicitly_trashed: false,
            content: Some(blob),
            export_len: 0,
            shortcut_target: None,
            seq: inner.seq,
        };
        let id = item.id.clone();
        insert(&mut inner, item);
        id
    }

    fn write_blob(&self, write: impl FnOnce(&mut std::fs::File) -> Vec<u8>) -> Blob {
        let path = self.shared.dir.path().join(random_token(16));
        let mut f = std::fs::File::create(&path).unwrap();
        let bytes = write(&mut f);
        Blob {
            path,
            size: bytes.len() as u64,
            md5: hex(&Md5::digest(&bytes)),
            sha256: hex(&Sha256::digest(&bytes)),
        }
    }

    fn write_sized(&self, len: u64, seed: u64) -> Blob {
        let path = self.shared.dir.path().join(random_token(16));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut rng = SplitMix(seed);
        let mut md5 = Md5::new();
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            md5.update(&buf[..n]);
            sha.update(&buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        f.flush().unwrap();
        Blob {
            path,
            size: len,
            md5: hex(&md5.finalize()),
            sha256: hex(&sha.finalize()),
        }
    }
}

// -- helpers -------------------------------------------------------------------------------------

/// splitmix64: deterministic, fast, and ours (no dependency on a crate's generator).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn export_content(id: &str, version: u64, mime: &str, len: u64) -> Vec<u8> {
    let digest = Sha256::digest(format!("{id}\n{version}\n{mime}").as_bytes());
    let mut rng = SplitMix(u64::from_le_bytes(digest[..8].try_into().unwrap()));
    let mut out = vec![0u8; len as usize];
    rng.fill(&mut out);
    out
}

/// A Drive-looking file id: 33 characters.
fn new_id() -> String {
    format!("1{}", random_token(32))
}

/// Strictly increasing timestamps (millisecond resolution), so every change moves modifiedTime.
fn tick(inner: &mut Inner) -> DateTime<Utc> {
    let now = Utc::now();
    let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap();
    let t = match inner.clock {
        Some(last) if now <= last => last + chrono::Duration::milliseconds(1),
        _ => now,
    };
    inner.clock = Some(t);
    t
}

fn folder_item(
    inner: &mut Inner,
    id: &str,
    name: &str,
    parents: Vec<String>,
    drive_id: Option<String>,
    now: DateTime<Utc>,
) -> Item {
    inner.seq += 1;
    Item {
        id: id.into(),
        name: name.into(),
        mime: FOLDER.into(),
        parents,
        drive_id,
        version: 1,
        created: now,
        modified: now,
        trashed: false,
        explicitly_trashed: false,
        content: None,
        export_len: 0,
        shortcut_target: None,
        seq: inner.seq,
    }
}

fn insert(inner: &mut Inner, item: Item) {
    inner.log.push(Change {
        key: ChangeKey::File(item.id.clone()),
        time: item.modified,
        removed: false,
        drive_id: item.drive_id.clone(),
    });
    inner.items.insert(item.id.clone(), item);
}

fn resolve(inner: &Inner, id: &str) -> String {
    if id == "root" {
        inner.root.clone()
    } else {
        id.into()
    }
}

fn drive_of(inner: &Inner, parent: &str) -> Option<String> {
    inner
        .items
        .get(parent)
        .unwrap_or_else(|| panic!("no parent {parent}"))
        .drive_id
        .clone()
}

fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt") => "text/plain",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("pdf") => PDF,
        Some("tar") => "application/x-tar",
        Some("gz" | "tgz") => "application/gzip",
        Some("zip") => "application/zip",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn is_google_type(mime: &str) -> bool {
    mime.starts_with("application/vnd.google-apps.")
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn export_link(base: &str, kind: &str, id: &str, format: &str) -> String {
    match kind {
        SPREADSHEET => format!("{base}/spreadsheets/export?id={id}&exportFormat={format}"),
        PRESENTATION => {
            format!("{base}/feeds/download/presentations/Export?id={id}&exportFormat={format}")
        }
        _ => format!("{base}/feeds/download/documents/export/Export?id={id}&exportFormat={format}"),
    }
}

fn file_json(item: &Item, base: &str) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), json!("drive#file"));
    m.insert("id".into(), json!(item.id));
    m.insert("name".into(), json!(item.name));
    m.insert("mimeType".into(), json!(item.mime));
    if !item.parents.is_empty() {
        m.insert("parents".into(), json!(item.parents));
    }
    m.insert("trashed".into(), json!(item.trashed));
    m.insert("explicitlyTrashed".into(), json!(item.explicitly_trashed));
    m.insert("version".into(), json!(item.version.to_string()));
    m.insert("createdTime".into(), json!(rfc3339(&item.created)));
    m.insert("modifiedTime".into(), json!(rfc3339(&item.modified)));
    if let Some(drive) = &item.drive_id {
        m.insert("driveId".into(), json!(drive));
    }
    if let Some(blob) = &item.content {
        m.insert("size".into(), json!(blob.size.to_string()));
        m.insert("md5Checksum".into(), json!(blob.md5));
        m.insert("sha256Checksum".into(), json!(blob.sha256));
    }
    let links: Map<String, Value> = EXPORTS
        .iter()
        .filter(|(kind, _, _)| *kind == item.mime)
        .map(|(kind, format, mime)| {
            (
                mime.to_string(),
                json!(export_link(base, kind, &item.id, format)),
            )
        })
        .collect();
    if !links.is_empty() {
        m.insert("exportLinks".into(), Value::Object(links));
    }
    if let Some((target, target_mime)) = &item.shortcut_target {
        m.insert(
            "shortcutDetails".into(),
            json!({"targetId": target, "targetMimeType": target_mime}),
        );
    }
    Value::Object(m)
}

fn params(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn flag(p: &HashMap<String, String>, name: &str) -> bool {
    p.get(name).is_some_and(|v| v == "true")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// Drive's error body ("Resolve errors").
fn drive_error(
    status: u16,
    message: &str,
    domain: &str,
    reason: &str,
    location: Option<(&str, &str)>,
) -> Response {
    let mut e = json!({"message": message, "domain": domain, "reason": reason});
    if let Some((loc, kind)) = location {
        e["location"] = json!(loc);
        e["locationType"] = json!(kind);
    }
    json_response(
        StatusCode::from_u16(status).unwrap(),
        json!({"error": {"code": status, "message": message, "errors": [e]}}),
    )
}

fn not_found(id: &str) -> Response {
    let message = format!("File not found: {id}.");
    drive_error(
        404,
        &message,
        "global",
        "notFound",
        Some(("fileId", "parameter")),
    )
}

fn invalid_value(location: &str) -> Response {
    drive_error(
        400,
        "Invalid Value",
        "global",
        "invalid",
        Some((location, "parameter")),
    )
}

fn unauthenticated() -> Response {
    let body = json!({"error": {
        "code": 401,
        "message": UNAUTHENTICATED,
        "errors": [{
            "message": "Invalid Credentials",
            "domain": "global",
            "reason": "authError",
            "location": "Authorization",
            "locationType": "header"
        }],
        "status": "UNAUTHENTICATED"
    }});
    let mut r = json_response(StatusCode::UNAUTHORIZED, body);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""
            .parse()
            .unwrap(),
    );
    r
}

fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::RateLimit403User => drive_error(
            403,
            "User Rate Limit Exceeded",
            "usageLimits",
            "userRateLimitExceeded",
            None,
        ),
        Fault::RateLimit403 => drive_error(
            403,
            "Rate Limit Exceeded",
            "usageLimits",
            "rateLimitExceeded",
            None,
        ),
        Fault::TooMany429 => drive_error(
            429,
            "Rate Limit Exceeded",
            "usageLimits",
            "rateLimitExceeded",
            None,
        ),
        Fault::Status(503) => drive_error(
            503,
            "The service is currently unavailable.",
            "global",
            "backendError",
            None,
        ),
        Fault::Status(status) => {
            drive_error(status, "Backend Error", "global", "backendError", None)
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// The page accounts.google.com shows instead of a consent screen.
fn error_page(error: &str, detail: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><html><head><title>Error 400 ({error})</title></head><body>\
             <h1>Access blocked: Authorization Error</h1><p>{detail}</p>\
             <p>Error 400: {error}</p></body></html>"
        ),
    )
        .into_response()
}

fn location_or_panic(response: Response) -> String {
    if response.status() == StatusCode::FOUND {
        return response.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
    }
    panic!(
        "the authorization request was refused with {}: {:?}",
        response.status(),
        response.into_body()
    );
}

fn new_access_token(inner: &mut Inner, refresh: &str) -> String {
    let token = format!("ya29.{}", random_token(160));
    inner.access_tokens.insert(
        token.clone(),
        AccessToken {
            refresh: refresh.into(),
            expires: Instant::now() + Duration::from_secs(ACCESS_TOKEN_TTL),
        },
    );
    token
}

/// A Desktop-app client's allowed redirect: loopback over plain http, any port and path.
fn loopback(redirect_uri: &str) -> bool {
    let Ok(url) = url::Url::parse(redirect_uri) else {
        return false;
    };
    url.scheme() == "http"
        && matches!(
            url.host_str(),
            Some("127.0.0.1") | Some("localhost") | Some("[::1]")
        )
        && url.fragment().is_none()
}

// -- OAuth handlers --------------------------------------------------------------------------

fn authorize(shared: &Shared, query: &str, deny: bool) -> Response {
    let p = params(query);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != CLIENT_ID {
        return error_page(
            "invalid_client",
            "The OAuth client was not found. (Error 401: invalid_client)",
        );
    }
    let redirect_uri = get("redirect_uri");
    if redirect_uri == "urn:ietf:wg:oauth:2.0:oob" {
        return error_page(
            "invalid_request",
            "The out-of-band (OOB) flow has been blocked in order to keep users secure.",
        );
    }
    if !loopback(redirect_uri) {
        return error_page(
            "redirect_uri_mismatch",
            &format!(
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 \
                 policy. redirect_uri={redirect_uri}"
            ),
        );
    }
    if get("response_type") != "code" {
        return error_page(
            "unsupported_response_type",
            &format!("Invalid response_type: {}", get("response_type")),
        );
    }
    if get("scope").is_empty() {
        return error_page("invalid_request", "Missing required parameter: scope");
    }
    let challenge = match (p.get("code_challenge"), get("code_challenge_method")) {
        (None, _) => None,
        (Some(c), m @ ("S256" | "plain")) => Some((c.clone(), m.to_string())),
        (Some(c), "") => Some((c.clone(), "plain".to_string())),
        (Some(_), m) => {
            return error_page(
                "invalid_request",
                &format!("Invalid code_challenge_method: {m}"),
            );
        }
    };
    let mut url = url::Url::parse(redirect_uri).unwrap();
    {
        let mut q = url.query_pairs_mut();
        if let Some(state) = p.get("state") {
            q.append_pair("state", state);
        }
        if deny {
            q.append_pair("error", "access_denied");
        } else {
            let code = format!("4/0A{}", random_token(70));
            q.append_pair("code", &code);
            q.append_pair("scope", get("scope"));
            shared.inner.lock().unwrap().codes.insert(
                code,
                AuthRequest {
                    client_id: CLIENT_ID.into(),
                    redirect_uri: redirect_uri.into(),
                    challenge,
                    scope: get("scope").into(),
                },
            );
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

fn token(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let mut client = (
        form.get("client_id").cloned(),
        form.get("client_secret").cloned(),
    );
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
        && let Ok(decoded) = String::from_utf8(decoded)
        && let Some((id, secret)) = decoded.split_once(':')
    {
        client = (Some(id.to_string()), Some(secret.to_string()));
    }
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let mut inner = shared.inner.lock().unwrap();
    inner.token_requests += 1;
    match client {
        (Some(id), _) if id != CLIENT_ID => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The OAuth client was not found.",
            );
        }
        (None, _) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Could not determine client ID from request.",
            );
        }
        (Some(_), None) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_secret is missing.",
            );
        }
        (Some(_), Some(secret)) if secret != CLIENT_SECRET => {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized");
        }
        _ => {}
    }
    match field("grant_type") {
        "authorization_code" => {
            let bad = || oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
            // Codes are single-use: a failed exchange spends the code too.
            let Some(req) = inner.codes.remove(field("code")) else {
                return bad();
            };
            if req.client_id != CLIENT_ID {
                return bad();
            }
            if req.redirect_uri != field("redirect_uri") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "redirect_uri_mismatch",
                    "Bad Request",
                );
            }
            if let Some((challenge, method)) = &req.challenge {
                let Some(verifier) = form.get("code_verifier") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Missing code verifier.",
                    );
                };
                let computed = if method == "S256" {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(Sha256::digest(verifier.as_bytes()))
                } else {
                    verifier.clone()
                };
                if &computed != challenge {
                    return bad();
                }
            }
            let refresh = format!("1//0{}", random_token(100));
            inner.refresh_tokens.insert(
                refresh.clone(),
                RefreshToken {
                    scope: req.scope.clone(),
                    revoked: false,
                },
            );
            let access = new_access_token(&mut inner, &refresh);
            json_response(
                StatusCode::OK,
                json!({
                    "access_token": access,
                    "expires_in": ACCESS_TOKEN_TTL,
                    "refresh_token": refresh,
                    "scope": req.scope,
                    "token_type": "Bearer",
                }),
            )
        }
        "refresh_token" => {
            let rt = field("refresh_token").to_string();
            let scope = match inner.refresh_tokens.get(&rt) {
                Some(t) if !t.revoked => t.scope.clone(),
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Token has been expired or revoked.",
                    );
                }
            };
            let access = new_access_token(&mut inner, &rt);
            json_response(
                StatusCode::OK,
                json!({
                    "access_token": access,
                    "expires_in": ACCESS_TOKEN_TTL,
                    "scope": scope,
                    "token_type": "Bearer",
                }),
            )
        }
        "" => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type: ",
        ),
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        ),
    }
}

fn revoke(shared: &Shared, query: &str, body: &[u8]) -> Response {
    let mut token = params(query).remove("token");
    if token.is_none() {
        token = url::form_urlencoded::parse(body)
            .into_owned()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v);
    }
    let token = token.unwrap_or_default();
    let mut inner = shared.inner.lock().unwrap();
    let refresh = if let Some(t) = inner.refresh_tokens.get(&token)
        && !t.revoked
    {
        Some(token.clone())
    } else {
        inner
            .access_tokens
            .get(&token)
            .map(|a| a.refresh.clone())
            .filter(|r| inner.refresh_tokens.get(r).is_some_and(|t| !t.revoked))
    };
    let Some(refresh) = refresh else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "Token expired or revoked",
        );
    };
    inner.refresh_tokens.get_mut(&refresh).unwrap().revoked = true;
    inner.access_tokens.retain(|_, a| a.refresh != refresh);
    json_response(StatusCode::OK, json!({}))
}

// -- Drive routing -----------------------------------------------------------------------------

async fn handle(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    let headers = request.headers().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/o/oauth2/v2/auth") => return authorize(&shared, &query, false),
        (Method::POST, "/token") | (Method::POST, "/revoke") => {
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            return if path == "/token" {
                token(&shared, &headers, &body)
            } else {
                revoke(&shared, &query, &body)
            };
        }
        _ => {}
    }
    let export_kind = match path.as_str() {
        "/feeds/download/documents/export/Export" => Some(DOCUMENT),
        "/spreadsheets/export" => Some(SPREADSHEET),
        "/feeds/download/presentations/Export" => Some(PRESENTATION),
        _ => None,
    };
    let api = match path.strip_prefix("/drive/v3/") {
        Some(api) => api,
        None if export_kind.is_some() => "",
        None => return (StatusCode::NOT_FOUND, "Not Found").into_response(),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let fault = {
        let mut inner = shared.inner.lock().unwrap();
        let valid = bearer
            .as_ref()
            .and_then(|t| inner.access_tokens.get(t))
            .is_some_and(|a| Instant::now() < a.expires);
        if !valid {
            inner.counters.unauthorized += 1;
            return unauthenticated();
        }
        inner.counters.api += 1;
        let scheduled = inner.faults.tick();
        let next = if inner.fail_next.is_empty() {
            None
        } else {
            Some(inner.fail_next.remove(0))
        };
        scheduled.or(next)
    };
    if let Some(fault) = fault {
        return fault_response(fault);
    }
    if method != Method::GET {
        return drive_error(
            403,
            "The fake is read-only.",
            "global",
            "insufficientPermissions",
            None,
        );
    }
    let p = params(&query);
    if let Some(kind) = export_kind {
        return export_link_download(&shared, kind, &p);
    }
    let segs: Vec<String> = api
        .split('/')
        .map(|s| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["files"] => list_files(&shared, &p),
        ["files", id] => {
            if p.get("alt").map(String::as_str) == Some("media") {
                media(&shared, &conn, id, &p, &headers).await
            } else {
                get_file(&shared, id, &p)
            }
        }
        ["files", id, "export"] => export(&shared, id, &p),
        ["drives"] => list_drives(&shared, &p),
        ["drives", id] => get_drive(&shared, id),
        ["changes", "startPageToken"] => start_page_token(&shared, &p),
        ["changes"] => list_changes(&shared, &p),
        _ => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

/// The item `id` as the request may see it (shared-drive items need `supportsAllDrives`).
fn visible(inner: &Inner, id: &str, p: &HashMap<String, String>) -> Option<Item> {
    let id = resolve(inner, id);
    let item = inner.items.get(&id)?;
    if item.drive_id.is_some() && !flag(p, "supportsAllDrives") {
        return None;
    }
    Some(item.clone())
}

fn get_file(shared: &Shared, id: &str, p: &HashMap<String, String>) -> Response {
    let base = shared.base.lock().unwrap().clone();
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.get += 1;
    match visible(&inner, id, p) {
        Some(item) => json_response(StatusCode::OK, file_json(&item, &base)),
        None => not_found(id),
    }
}

enum Term {
    Trashed(bool),
    InParents(String),
    MimeIs(String),
    MimeIsNot(String),
    NameIs(String),
}

fn quoted(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("\\'", "'").replace("\\\\", "\\"))
}

fn parse_q(q: &str) -> Option<Vec<Term>> {
    let mut terms = Vec::new();
    if q.trim().is_empty() {
        return Some(terms);
    }
    for part in q.split(" and ") {
        let part = part.trim();
        let compact: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        let term = if compact == "trashed=false" {
            Term::Trashed(false)
        } else if compact == "trashed=true" {
            Term::Trashed(true)
        } else if let Some(id) = part.strip_suffix(" in parents") {
            Term::InParents(quoted(id)?)
        } else if let Some(v) = part.strip_prefix("mimeType") {
            let v = v.trim_start();
            if let Some(v) = v.strip_prefix("!=") {
                Term::MimeIsNot(quoted(v)?)
            } else {
                Term::MimeIs(quoted(v.strip_prefix('=')?)?)
            }
        } else if let Some(v) = part.strip_prefix("name") {
            Term::NameIs(quoted(v.trim_start().strip_prefix('=')?)?)
        } else {
            return None;
        };
        terms.push(term);
    }
    Some(terms)
}

/// `pageSize` within 1..=max (default `default`), or the 400 Drive answers.
fn page_size(p: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, Response> {
    match p.get("pageSize") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(invalid_value("pageSize")),
        },
    }
}

/// Which `driveId`s a files.list corpus covers.
type DriveFilter = Box<dyn Fn(&Option<String>) -> bool>;

fn list_files(shared: &Shared, p: &HashMap<String, String>) -> Response {
    let base = shared.base.lock().unwrap().clone();
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.list += 1;
    let Some(terms) = parse_q(p.get("q").map(String::as_str).unwrap_or("")) else {
        return invalid_value("q");
    };
    let size = match page_size(p, 100, 1000) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let all_drives = flag(p, "includeItemsFromAllDrives") && flag(p, "supportsAllDrives");
    let corpora = p.get("corpora").map(String::as_str).unwrap_or("user");
    let drive_filter: DriveFilter = match corpora {
        "user" => Box::new(|d| d.is_none()),
        "allDrives" | "drive" if !all_drives => {
            return drive_error(
                403,
                "The includeItemsFromAllDrives parameter must be set to true when corpora is set to allDrives or drive.",
                "global",
                "teamDriveIncludeItemsRequired",
                Some(("includeItemsFromAllDrives", "parameter")),
            );
        }
        "allDrives" => Box::new(|_| true),
        "drive" => {
            let Some(drive) = p.get("driveId").cloned() else {
                return drive_error(
                    400,
                    "The driveId parameter must be specified if and only if corpora is set to drive.",
                    "global",
                    "invalid",
                    Some(("driveId", "parameter")),
                );
            };
            Box::new(move |d| d.as_deref() == Some(drive.as_str()))
        }
        _ => return invalid_value("corpora"),
    };
    let root = inner.root.clone();
    let mut items: Vec<&Item> = inner
        .items
        .values()
        .filter(|i| !i.parents.is_empty())
        .filter(|i| drive_filter(&i.drive_id))
        .filter(|i| {
            terms.iter().all(|t| match t {
                Term::Trashed(b) => i.trashed == *b,
                Term::InParents(id) => {
                    let id = if id == "root" { &root } else { id };
                    i.parents.contains(id)
                }
                Term::MimeIs(m) => &i.mime == m,
                Term::MimeIsNot(m) => &i.mime != m,
                Term::NameIs(n) => &i.name == n,
            })
        })
        .collect();
    items.sort_by_key(|i| i.seq);
    let start = match p.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("~!!~AI9FV7").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => return invalid_value("pageToken"),
        },
    };
    let page: Vec<Value> = items
        .iter()
        .skip(start)
        .take(size)
        .map(|i| file_json(i, &base))
        .collect();
    let mut body = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": page});
    if start + size < items.len() {
        body["nextPageToken"] = json!(format!("~!!~AI9FV7{}", start + size));
    }
    json_response(StatusCode::OK, body)
}

fn drive_json(d: &SharedDrive) -> Value {
    json!({"kind": "drive#drive", "id": d.id, "name": d.name})
}

fn list_drives(shared: &Shared, p: &HashMap<String, String>) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.drives += 1;
    let size = match page_size(p, 10, 100) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let start = match p.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("drives~").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => return invalid_value("pageToken"),
        },
    };
    let drives: Vec<Value> = inner
        .drives
        .iter()
        .skip(start)
        .take(size)
        .map(drive_json)
        .collect();
    let mut body = json!({"kind": "drive#driveList", "drives": drives});
    if start + size < inner.drives.len() {
        body["nextPageToken"] = json!(format!("drives~{}", start + size));
    }
    json_response(StatusCode::OK, body)
}

fn get_drive(shared: &Shared, id: &str) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.drives += 1;
    match inner.drives.iter().find(|d| d.id == id) {
        Some(d) => json_response(StatusCode::OK, drive_json(d)),
        None => {
            let message = format!("Shared drive not found: {id}");
            drive_error(
                404,
                &message,
                "global",
                "notFound",
                Some(("driveId", "parameter")),
            )
        }
    }
}

fn start_page_token(shared: &Shared, _p: &HashMap<String, String>) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.start_page_token += 1;
    let token = inner.log.len() + 1;
    json_response(
        StatusCode::OK,
        json!({"kind": "drive#startPageToken", "startPageToken": token.to_string()}),
    )
}

fn list_changes(shared: &Shared, p: &HashMap<String, String>) -> Response {
    let base = shared.base.lock().unwrap().clone();
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.changes += 1;
    let len = inner.log.len();
    if !p.contains_key("pageToken") {
        return drive_error(
            400,
            "Required parameter: pageToken",
            "global",
            "required",
            Some(("pageToken", "parameter")),
        );
    }
    let Some(from) = p
        .get("pageToken")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| (1..=len + 1).contains(t))
    else {
        return invalid_value("pageToken");
    };
    let size = match page_size(p, 100, 1000) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let supports = flag(p, "supportsAllDrives");
    let all_drives = flag(p, "includeItemsFromAllDrives") && supports;
    let include_removed = p.get("includeRemoved").is_none_or(|v| v != "false");
    let only_my_drive = flag(p, "restrictToMyDrive");
    let one_drive = p.get("driveId").cloned();
    if one_drive.is_some() && !supports {
        return drive_error(
            403,
            "The driveId parameter requires supportsAllDrives.",
            "global",
            "teamDrivesParameterNotSupported",
            Some(("driveId", "parameter")),
        );
    }
    // The latest change of every file (and shared drive) since `from`, in log order.
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, c) in inner.log.iter().enumerate().skip(from - 1) {
        let key = match &c.key {
            ChangeKey::File(id) => format!("f:{id}"),
            ChangeKey::Drive(id) => format!("d:{id}"),
        };
        latest.insert(key, i);
    }
    let mut picked: Vec<usize> = latest.into_values().collect();
    picked.sort_unstable();
    let picked: Vec<usize> = picked
        .into_iter()
        .filter(|&i| {
            let c = &inner.log[i];
            if c.removed && !include_removed {
                return false;
            }
            match &c.key {
                ChangeKey::Drive(id) => {
                    supports && !only_my_drive && one_drive.as_ref().is_none_or(|d| d == id)
                }
                ChangeKey::File(_) => match (&one_drive, &c.drive_id) {
                    (Some(d), Some(cd)) => d == cd,
                    (Some(_), None) => false,
                    (None, Some(_)) => all_drives && !only_my_drive,
                    (None, None) => true,
                },
            }
        })
        .collect();
    let mut changes = Vec::new();
    for &i in picked.iter().take(size) {
        let c = &inner.log[i];
        let mut v = json!({
            "kind": "drive#change",
            "time": rfc3339(&c.time),
            "removed": c.removed,
        });
        match &c.key {
            ChangeKey::File(id) => {
                v["changeType"] = json!("file");
                v["fileId"] = json!(id);
                if !c.removed
                    && let Some(item) = inner.items.get(id)
                {
                    v["file"] = file_json(item, &base);
                }
            }
            ChangeKey::Drive(id) => {
                v["changeType"] = json!("drive");
                v["driveId"] = json!(id);
                if let Some(d) = inner.drives.iter().find(|d| &d.id == id) {
                    v["drive"] = drive_json(d);
                }
            }
        }
        changes.push(v);
    }
    let mut body = json!({"kind": "drive#changeList", "changes": changes});
    if picked.len() > size {
        body["nextPageToken"] = json!((picked[size] + 1).to_string());
    } else {
        body["newStartPageToken"] = json!((len + 1).to_string());
    }
    json_response(StatusCode::OK, body)
}

// -- content -----------------------------------------------------------------------------------

/// `Range: bytes=a-b` / `bytes=a-` / `bytes=-n`, as (first, last) clamped to `size`;
/// `Err(())` when unsatisfiable, `Ok(None)` when absent or not understood (whole body).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        return Ok(Some((size.saturating_sub(n), size - 1)));
    }
    let Ok(a) = a.parse::<u64>() else {
        return Ok(None);
    };
    let b = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(b) if b >= a => b,
            _ => return Ok(None),
        }
    };
    if a >= size {
        return Err(());
    }
    Ok(Some((a, b.min(size - 1))))
}

struct Download {
    file: tokio::fs::File,
    pos: u64,
    end: u64,
    sent: u64,
    gate: Option<(u64, Arc<GateState>)>,
    cut: Option<u64>,
    throttle: Option<u64>,
    conn: ConnHandle,
    shared: AppState,
}

async fn media(
    shared: &AppState,
    conn: &ConnHandle,
    id: &str,
    p: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let (item, gate, cut, throttle) = {
        let mut inner = shared.inner.lock().unwrap();
        let Some(item) = visible(&inner, id, p) else {
            return not_found(id);
        };
        *inner.counters.media.entry(item.id.clone()).or_default() += 1;
        let Some(blob) = item.content.clone().filter(|_| !is_google_type(&item.mime)) else {
            return drive_error(
                403,
                NOT_DOWNLOADABLE,
                "global",
                "fileNotDownloadable",
                Some(("alt", "parameter")),
            );
        };
        let range = match parse_range(headers, blob.size) {
            Ok(r) => r,
            Err(()) => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", blob.size))],
                )
                    .into_response();
            }
        };
        let (first, end) = match range {
            Some((a, b)) => (a, b + 1),
            None => (0, blob.size),
        };
        let gate = inner
            .gates
            .iter()
            .position(|(gid, at, _)| *gid == item.id && first <= *at && *at < end)
            .map(|i| {
                let (_, at, state) = inner.gates.remove(i);
                (at, state)
            });
        let cut = inner.cut_after.take();
        ((item, blob, range, first, end), gate, cut, inner.throttle)
    };
    let (item, blob, range, first, end) = item;
    let mut file = match tokio::fs::File::open(&blob.path).await {
        Ok(f) => f,
        Err(_) => return not_found(id),
    };
    file.seek(std::io::SeekFrom::Start(first)).await.unwrap();
    let download = Download {
        file,
        pos: first,
        end,
        sent: 0,
        gate,
        cut,
        throttle,
        conn: conn.clone(),
        shared: shared.clone(),
    };
    let stream = futures::stream::unfold(download, |mut d| async move {
        if d.pos >= d.end {
            return None;
        }
        if let Some((at, state)) = &d.gate
            && d.pos == *at
        {
            state.reached.send_replace(true);
            let mut rx = state.released.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            d.gate = None;
        }
        let mut want = (d.end - d.pos).min(64 * 1024);
        if let Some((at, _)) = &d.gate {
            want = want.min(at - d.pos);
        }
        if let Some(cut) = d.cut {
            if d.sent >= cut {
                // Let hyper flush what was sent, so the client sees a short body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                d.conn.kill();
                d.pos = d.end;
                return Some((Err(std::io::Error::other("connection cut by the fake")), d));
            }
            want = want.min(cut - d.sent);
        }
        let mut buf = vec![0u8; want as usize];
        if let Err(e) = d.file.read_exact(&mut buf).await {
            d.pos = d.end;
            return Some((Err(e), d));
        }
        d.pos += want;
        d.sent += want;
        d.shared.inner.lock().unwrap().counters.bytes_served += want;
        if let Some(bps) = d.throttle {
            tokio::time::sleep(Duration::from_secs_f64(want as f64 / bps as f64)).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(buf)), d))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, item.mime.parse().unwrap());
    h.insert(header::CONTENT_LENGTH, (end - first).into());
    if let Some((a, b)) = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {a}-{b}/{}", blob.size).parse().unwrap(),
        );
    }
    response
}

fn export(shared: &Shared, id: &str, p: &HashMap<String, String>) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.exports += 1;
    // files.export has no supportsAllDrives parameter: shared-drive files export all the same.
    let Some(item) = inner.items.get(&resolve(&inner, id)).cloned() else {
        return not_found(id);
    };
    let Some(mime) = p.get("mimeType") else {
        return drive_error(
            400,
            "Required parameter: mimeType",
            "global",
            "required",
            Some(("mimeType", "parameter")),
        );
    };
    if !EXPORTS.iter().any(|(kind, _, _)| *kind == item.mime) {
        return drive_error(
            403,
            "Export only supports Docs Editors files.",
            "global",
            "fileNotExportable",
            None,
        );
    }
    if !EXPORTS.iter().any(|(k, _, m)| *k == item.mime && m == mime) {
        return drive_error(
            400,
            "The requested conversion is not supported.",
            "global",
            "badRequest",
            Some(("convertTo", "parameter")),
        );
    }
    if item.export_len > EXPORT_LIMIT {
        return drive_error(
            403,
            "This file is too large to be exported.",
            "global",
            "exportSizeLimitExceeded",
            None,
        );
    }
    inner.counters.bytes_served += item.export_len;
    let bytes = export_content(&item.id, item.version, mime, item.export_len);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, mime.clone())],
        bytes,
    )
        .into_response()
}

/// An `exportLinks` URL: the same bytes as files.export, without its size limit.
fn export_link_download(shared: &Shared, kind: &str, p: &HashMap<String, String>) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.counters.export_links += 1;
    let id = p.get("id").cloned().unwrap_or_default();
    let format = p.get("exportFormat").cloned().unwrap_or_default();
    let Some(item) = inner.items.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let Some((_, _, mime)) = EXPORTS
        .iter()
        .find(|(k, f, _)| *k == kind && *k == item.mime && *f == format)
    else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    inner.counters.bytes_served += item.export_len;
    let bytes = export_content(&item.id, item.version, mime, item.export_len);
    (StatusCode::OK, [(header::CONTENT_TYPE, *mime)], bytes).into_response()
}
