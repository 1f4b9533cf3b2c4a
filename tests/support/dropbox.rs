//! `FakeDropbox`: an in-process fake of the Dropbox API v2 for integration
//! tests (never production code).
//!
//! Follows the public spec in dropbox/dropbox-api-spec (`files.stone`,
//! `users.stone`, `auth.stone`) and the Dropbox HTTP documentation: OAuth2
//! code flow with PKCE (S256) and refresh tokens, upload sessions
//! (`upload_session/start`, `append_v2`, `finish`, sequential and concurrent),
//! `list_folder` + `list_folder/continue`, `delete_v2` and
//! `users/get_current_account`. Error bodies use the spec's shapes: HTTP 409
//! with `error_summary` plus a `.tag` tree, 401 for token problems, 429/503
//! with `Retry-After`, and plain-text 400 for malformed requests.
//!
//! One server answers for all three Dropbox hosts (RPC, content and OAuth):
//! point every configurable base URL of the client at [`FakeDropbox::base_url`].
//! Upload data is streamed to files in a temporary directory, never buffered
//! whole in memory, so multi-GiB uploads are fine.

// Handlers bail out with a ready `Response` as their error value, the usual
// axum idiom; boxing it would only add noise to test code.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::fault::{ConnHandle, Countdown, ServerGuard, hex, random_token, serve};

/// Largest request body Dropbox accepts on a content endpoint (150 MiB).
pub const MAX_REQUEST_BODY: u64 = 150 * 1024 * 1024;
/// Content-hash block size; also the unit of concurrent upload sessions.
pub const BLOCK_SIZE: u64 = 4 * 1024 * 1024;
/// Largest file an upload session may produce (2^41 - 2^22 bytes).
pub const MAX_FILE_SIZE: u64 = (1 << 41) - (1 << 22);
/// The app key the fake expects unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "offsite-test-app";
/// Lifetime Dropbox gives short-lived access tokens (4 hours).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 14_400;
const ACCOUNT_ID: &str = "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc";
const UID: &str = "12345678";
const SCOPE: &str = "account_info.read files.content.read files.content.write files.metadata.read files.metadata.write";
const DEFAULT_PAGE_SIZE: usize = 2000;

// ---------------------------------------------------------------------------
// Content hash
// ---------------------------------------------------------------------------

/// Dropbox's `content_hash`, computed incrementally: SHA-256 of every 4 MiB
/// block, then SHA-256 of the concatenated block digests, hex-encoded.
#[derive(Clone, Default)]
pub struct ContentHasher {
    overall: Sha256,
    block: Sha256,
    block_len: u64,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = usize::try_from(BLOCK_SIZE - self.block_len).unwrap_or(usize::MAX);
            let (head, tail) = data.split_at(room.min(data.len()));
            self.block.update(head);
            self.block_len += head.len() as u64;
            data = tail;
            if self.block_len == BLOCK_SIZE {
                self.overall.update(self.block.finalize_reset());
                self.block_len = 0;
            }
        }
    }

    pub fn finalize(mut self) -> String {
        if self.block_len > 0 {
            self.overall.update(self.block.finalize());
        }
        hex(&self.overall.finalize())
    }
}

/// `content_hash` of a whole byte string.
pub fn content_hash(data: &[u8]) -> String {
    let mut hasher = ContentHasher::new();
    hasher.update(data);
    hasher.finalize()
}

/// `content_hash` of a file on disk (read in 4 MiB blocks).
pub fn content_hash_of_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = ContentHasher::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------

/// A file stored in the fake Dropbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropboxFile {
    pub id: String,
    pub name: String,
    pub path_lower: String,
    pub path_display: String,
    pub rev: String,
    pub size: u64,
    pub content_hash: String,
    pub server_modified: DateTime<Utc>,
    pub client_modified: DateTime<Utc>,
    /// Where the content lives on disk (inside the fake's temp dir).
    pub disk_path: PathBuf,
}

impl DropboxFile {
    /// The whole content. Fine for small files; use `disk_path` for big ones.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.disk_path).expect("read fake Dropbox file")
    }
}

/// The fake Dropbox server. Dropping it stops the server and deletes its data.
pub struct FakeDropbox {
    shared: Arc<Shared>,
    server: ServerGuard,
}

impl FakeDropbox {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fake-dropbox-")
            .tempdir()
            .expect("temp dir for fake Dropbox");
        let shared = Arc::new(Shared {
            state: Mutex::new(DbxState::default()),
            dir,
        });
        let server = serve(router(shared.clone())).await;
        Self { shared, server }
    }

    /// `http://127.0.0.1:PORT`, standing in for api.dropboxapi.com,
    /// content.dropboxapi.com and www.dropbox.com alike.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    // -- OAuth -------------------------------------------------------------

    /// The app key (`client_id`) the token endpoint accepts.
    pub fn client_id(&self) -> String {
        self.shared.lock().oauth.client_id.clone()
    }

    pub fn set_client_id(&self, client_id: &str) {
        self.shared.lock().oauth.client_id = client_id.to_owned();
    }

    /// With `Some`, a client that authenticates with a secret (HTTP Basic or
    /// `client_secret`) must present this one. PKCE clients need no secret.
    pub fn set_client_secret(&self, secret: Option<&str>) {
        self.shared.lock().oauth.client_secret = secret.map(str::to_owned);
    }

    /// Simulate the user approving the app in the browser: returns the code
    /// Dropbox shows them, bound to this S256 `code_challenge`.
    pub fn issue_auth_code(&self, code_challenge: &str) -> String {
        let code = random_token(43);
        self.shared
            .lock()
            .oauth
            .codes
            .insert(code.clone(), code_challenge.to_owned());
        code
    }

    /// Skip the OAuth dance: a valid `(access_token, refresh_token)` pair.
    pub fn grant_tokens(&self) -> (String, String) {
        let mut st = self.shared.lock();
        let access = st.oauth.mint_access_token();
        let refresh = st.oauth.mint_refresh_token();
        (access, refresh)
    }

    /// Every refresh token issued so far becomes `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        for revoked in self.shared.lock().oauth.refresh.values_mut() {
            *revoked = true;
        }
    }

    /// Every access token issued so far answers 401 `expired_access_token`.
    pub fn expire_access_tokens(&self) {
        for token in self.shared.lock().oauth.access.values_mut() {
            token.force_expired = true;
        }
    }

    /// Lifetime (and `expires_in`) of access tokens issued from now on.
    pub fn set_access_token_ttl(&self, secs: u64) {
        self.shared.lock().oauth.ttl = Duration::from_secs(secs);
    }

    /// Number of successful token-endpoint grants, by `grant_type`.
    pub fn token_grants(&self, grant_type: &str) -> usize {
        self.shared
            .lock()
            .oauth
            .grants
            .iter()
            .filter(|g| g.as_str() == grant_type)
            .count()
    }

    // -- Behaviour knobs ---------------------------------------------------

    /// Entries per `list_folder` page (the server side cap; the request's
    /// `limit` can only lower it).
    pub fn set_list_page_size(&self, n: usize) {
        assert!(n > 0, "page size must be positive");
        self.shared.lock().list_page_size = n;
    }

    /// Fake-only strictness: also enforce the 4 MiB rule on sequential
    /// sessions (every non-closing chunk a multiple of 4 MiB). Violations get
    /// a plain-text 400 so they cannot be mistaken for a real Dropbox error.
    pub fn require_4mib_multiples(&self, on: bool) {
        self.shared.lock().require_4mib = on;
    }

    /// Forget every upload session, as if their 7 days had passed: further
    /// use answers `not_found`.
    pub fn expire_upload_sessions(&self) {
        let mut st = self.shared.lock();
        for (_, session) in st.sessions.drain() {
            if let Ok(mut s) = session.try_lock() {
                s.expired = true;
                if !s.finished {
                    let _ = std::fs::remove_file(&s.disk);
                }
            }
        }
    }

    /// Invalidate every `list_folder` cursor: `continue` answers `reset`.
    pub fn invalidate_cursors(&self) {
        self.shared.lock().cursors.clear();
    }

    // -- Fault injection ---------------------------------------------------

    /// The next `n` requests (any endpoint) get 429 `too_many_requests`.
    pub fn rate_limit_next(&self, n: u64, retry_after_secs: u64) {
        self.schedule_next(n, || RequestFault::RateLimited {
            reason: "too_many_requests",
            retry_after: retry_after_secs,
        });
    }

    /// The next `n` requests get 429 `too_many_write_operations`.
    pub fn rate_limit_writes_next(&self, n: u64, retry_after_secs: u64) {
        self.schedule_next(n, || RequestFault::RateLimited {
            reason: "too_many_write_operations",
            retry_after: retry_after_secs,
        });
    }

    /// The next `n` requests get 503 with `Retry-After` and an empty body.
    pub fn unavailable_next(&self, n: u64, retry_after_secs: u64) {
        self.schedule_next(n, || RequestFault::Unavailable {
            retry_after: retry_after_secs,
        });
    }

    /// The `n`-th request from now (1 = the next one, counting every
    /// request) is answered with `status` and a plausible body, untouched.
    pub fn fail_request(&self, n: u64, status: u16) {
        let status = StatusCode::from_u16(status).expect("valid HTTP status");
        self.shared
            .lock()
            .faults
            .requests
            .at(n, RequestFault::Status(status));
    }

    /// The `n`-th authenticated upload call from now (start, append_v2 or
    /// finish) has half its body read, then its connection is cut without a
    /// response. Nothing of it is stored.
    pub fn drop_connection_mid_body(&self, n: u64) {
        self.shared
            .lock()
            .faults
            .uploads
            .at(n, UploadFault::DropMidBody);
    }

    /// The `n`-th authenticated upload call from now is fully processed and
    /// stored (a chunk appended, a session started or a file committed) but
    /// answered with 500, so the client's checkpoint falls one step behind.
    pub fn accept_then_fail(&self, n: u64) {
        self.shared
            .lock()
            .faults
            .uploads
            .at(n, UploadFault::AcceptThenFail);
    }

    /// The next `n` commits store the file with its first byte flipped, as a storage fault on
    /// the server would: its `content_hash` (computed over what is stored) no longer matches
    /// what the client sent.
    pub fn corrupt_next_commits(&self, n: u64) {
        self.shared.lock().corrupt_commits = n;
    }

    fn schedule_next(&self, n: u64, fault: impl Fn() -> RequestFault) {
        let mut st = self.shared.lock();
        for k in 1..=n {
            st.faults.requests.at(k, fault());
        }
    }

    // -- Counters ----------------------------------------------------------

    /// Every request seen, as `(method, path)`, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().stats.requests.clone()
    }

    /// How many requests hit `path` (e.g. "/2/files/upload_session/append_v2").
    pub fn request_count(&self, path: &str) -> usize {
        self.shared
            .lock()
            .stats
            .requests
            .iter()
            .filter(|(_, p)| p == path)
            .count()
    }

    /// Total bytes of upload request bodies read, including discarded ones.
    pub fn bytes_received(&self) -> u64 {
        self.shared.lock().stats.bytes_received
    }

    /// Authenticated calls to start / append_v2 / finish.
    pub fn upload_calls(&self) -> u64 {
        self.shared.lock().stats.upload_calls
    }

    /// Upload sessions started and not yet finished (or expired).
    pub fn open_sessions(&self) -> usize {
        let st = self.shared.lock();
        st.sessions
            .values()
            .filter(|s| s.try_lock().map(|s| !s.finished).unwrap_or(true))
            .count()
    }

    // -- Inspection and seeding --------------------------------------------

    /// The file at `path` (case-insensitive), if any.
    pub fn file(&self, path: &str) -> Option<DropboxFile> {
        match self.shared.lock().tree.get(&path.to_lowercase()) {
            Some(Entry::File(f)) => Some(f.clone()),
            _ => None,
        }
    }

    /// All files, ordered by `path_lower`.
    pub fn files(&self) -> Vec<DropboxFile> {
        self.shared
            .lock()
            .tree
            .values()
            .filter_map(|e| match e {
                Entry::File(f) => Some(f.clone()),
                Entry::Folder(_) => None,
            })
            .collect()
    }

    /// Whether a folder exists at `path` (case-insensitive).
    pub fn folder_exists(&self, path: &str) -> bool {
        matches!(
            self.shared.lock().tree.get(&path.to_lowercase()),
            Some(Entry::Folder(_))
        )
    }

    /// Store a file directly (e.g. a foreign file for retention tests),
    /// creating parent folders and replacing any file already there.
    pub fn put_file(
        &self,
        path: &str,
        bytes: &[u8],
        server_modified: DateTime<Utc>,
    ) -> DropboxFile {
        check_path(path).unwrap_or_else(|_| panic!("put_file: malformed path {path:?}"));
        let mut st = self.shared.lock();
        let disk = self.shared.blob_path(st.next_serial());
        std::fs::write(&disk, bytes).expect("write seeded file");
        let when = truncate_to_secs(server_modified);
        st.install_file(
            path,
            disk,
            bytes.len() as u64,
            content_hash(bytes),
            when,
            when,
        )
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Shared {
    state: Mutex<DbxState>,
    dir: tempfile::TempDir,
}

impl Shared {
    /// Tests may panic while holding the lock; later assertions should still
    /// see the state rather than a poison error.
    fn lock(&self) -> MutexGuard<'_, DbxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, serial: u64) -> PathBuf {
        self.dir.path().join(format!("blob-{serial}.bin"))
    }

    fn session_path(&self, serial: u64) -> PathBuf {
        self.dir.path().join(format!("session-{serial}.bin"))
    }

    fn add_received(&self, n: u64) {
        self.lock().stats.bytes_received += n;
    }
}

struct DbxState {
    oauth: OAuthState,
    sessions: HashMap<String, Arc<tokio::sync::Mutex<Session>>>,
    /// Files and folders keyed by `path_lower` (root itself is implicit).
    tree: BTreeMap<String, Entry>,
    cursors: HashMap<String, ListCursor>,
    list_page_size: usize,
    require_4mib: bool,
    faults: Faults,
    stats: Stats,
    serial: u64,
    /// Commits still to store with a flipped byte (see `corrupt_next_commits`).
    corrupt_commits: u64,
}

impl Default for DbxState {
    fn default() -> Self {
        Self {
            oauth: OAuthState::default(),
            sessions: HashMap::new(),
            tree: BTreeMap::new(),
            cursors: HashMap::new(),
            list_page_size: DEFAULT_PAGE_SIZE,
            require_4mib: false,
            faults: Faults::default(),
            stats: Stats::default(),
            serial: 0,
            corrupt_commits: 0,
        }
    }
}

impl DbxState {
    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn new_rev(&mut self) -> String {
        format!("{:x}", 0x0160_0000_0000_u64 + self.next_serial())
    }

    fn new_id() -> String {
        format!("id:{}", random_token(22))
    }
}

struct OAuthState {
    client_id: String,
    client_secret: Option<String>,
    /// Authorization code -> S256 code challenge.
    codes: HashMap<String, String>,
    access: HashMap<String, AccessToken>,
    /// Refresh token -> revoked?
    refresh: HashMap<String, bool>,
    ttl: Duration,
    grants: Vec<String>,
}

impl Default for OAuthState {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: None,
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            ttl: Duration::from_secs(DEFAULT_TOKEN_TTL_SECS),
            grants: Vec::new(),
        }
    }
}

impl OAuthState {
    fn mint_access_token(&mut self) -> String {
        // Short-lived Dropbox tokens start with "sl.".
        let token = format!("sl.{}", random_token(60));
        self.access.insert(
            token.clone(),
            AccessToken {
                expires_at: Instant::now() + self.ttl,
                force_expired: false,
            },
        );
        token
    }

    fn mint_refresh_token(&mut self) -> String {
        let token = random_token(64);
        self.refresh.insert(token.clone(), false);
        token
    }
}

struct AccessToken {
    expires_at: Instant,
    force_expired: bool,
}

#[derive(Default)]
struct Faults {
    requests: Countdown<RequestFault>,
    uploads: Countdown<UploadFault>,
}

enum RequestFault {
    Status(StatusCode),
    RateLimited {
        reason: &'static str,
        retry_after: u64,
    },
    Unavailable {
        retry_after: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UploadFault {
    DropMidBody,
    AcceptThenFail,
}

#[derive(Default)]
struct Stats {
    requests: Vec<(String, String)>,
    bytes_received: u64,
    upload_calls: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    Sequential,
    Concurrent,
}

struct Session {
    kind: SessionKind,
    disk: PathBuf,
    /// Sequential: bytes acknowledged so far (the next valid offset).
    len: u64,
    /// Sequential: content hash of the acknowledged bytes.
    hasher: ContentHasher,
    closed: bool,
    /// Committed by `finish`; the data now belongs to a file.
    finished: bool,
    /// Removed by `expire_upload_sessions` while a request waited on it.
    expired: bool,
    /// Concurrent: offset -> length of every chunk received.
    chunks: BTreeMap<u64, u64>,
    /// Concurrent: total size, known once the closing append arrived.
    final_len: Option<u64>,
}

impl Session {
    fn new(kind: SessionKind, disk: PathBuf) -> Self {
        Self {
            kind,
            disk,
            len: 0,
            hasher: ContentHasher::new(),
            closed: false,
            finished: false,
            expired: false,
            chunks: BTreeMap::new(),
            final_len: None,
        }
    }

    /// Concurrent sessions: is every byte in `0..final_len` present?
    fn is_complete(&self) -> bool {
        let Some(total) = self.final_len else {
            return false;
        };
        let mut covered = 0;
        for (&offset, &len) in &self.chunks {
            if offset > covered {
                return false;
            }
            covered = covered.max(offset + len);
        }
        covered >= total
    }
}

#[derive(Clone)]
enum Entry {
    File(DropboxFile),
    Folder(Folder),
}

#[derive(Clone)]
struct Folder {
    id: String,
    name: String,
    path_lower: String,
    path_display: String,
}

impl Entry {
    fn path_display(&self) -> &str {
        match self {
            Entry::File(f) => &f.path_display,
            Entry::Folder(f) => &f.path_display,
        }
    }

    /// Stands for "this version" when diffing a folder listing.
    fn version(&self) -> String {
        match self {
            Entry::File(f) => f.rev.clone(),
            Entry::Folder(_) => "folder".to_owned(),
        }
    }

    /// Metadata as a member of the `Metadata` union (with `.tag`).
    fn tagged(&self) -> Value {
        match self {
            Entry::File(f) => {
                let mut v = file_metadata(f);
                v[".tag"] = json!("file");
                v
            }
            Entry::Folder(f) => json!({
                ".tag": "folder",
                "name": f.name,
                "id": f.id,
                "path_lower": f.path_lower,
                "path_display": f.path_display,
            }),
        }
    }
}

/// `FileMetadata` as routes typed `FileMetadata` (e.g. `finish`) return it:
/// a plain struct, no `.tag`.
fn file_metadata(f: &DropboxFile) -> Value {
    json!({
        "name": f.name,
        "id": f.id,
        "client_modified": timestamp(f.client_modified),
        "server_modified": timestamp(f.server_modified),
        "rev": f.rev,
        "size": f.size,
        "path_lower": f.path_lower,
        "path_display": f.path_display,
        "is_downloadable": true,
        "content_hash": f.content_hash,
    })
}

/// A `list_folder` cursor. Cursors are immutable snapshots, so a client that
/// retries `continue` with the same cursor gets the same page again.
#[derive(Clone)]
struct ListCursor {
    folder: String,
    recursive: bool,
    page_size: usize,
    /// Entries of the current listing not handed out yet.
    pending: Vec<Value>,
    /// What the client has seen: `path_lower` -> version, for change feeds.
    seen: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// Router, request log and fault middleware, bearer auth
// ---------------------------------------------------------------------------

type AppState = Arc<Shared>;

fn router(shared: AppState) -> Router {
    let api = Router::new()
        .route("/2/files/upload_session/start", post(upload_start))
        .route("/2/files/upload_session/append_v2", post(upload_append))
        .route("/2/files/upload_session/finish", post(upload_finish))
        .route("/2/files/list_folder", post(list_folder))
        .route("/2/files/list_folder/continue", post(list_folder_continue))
        .route("/2/files/delete_v2", post(delete_v2))
        .route("/2/files/get_metadata", post(get_metadata))
        .route("/2/files/download", post(download))
        .route("/2/users/get_current_account", post(get_current_account))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_bearer,
        ));
    Router::new()
        .route("/oauth2/token", post(oauth_token))
        .route(
            "/oauth2/authorize",
            axum::routing::get(authorize_page).post(authorize_decision),
        )
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            log_and_inject,
        ))
        .with_state(shared)
}

async fn not_found(req: Request) -> Response {
    text(
        StatusCode::NOT_FOUND,
        &format!("Unknown API function: {:?}", req.uri().path()),
    )
}

/// Records every request, then applies request-level faults (rate limits,
/// injected statuses) before the real handler runs.
async fn log_and_inject(State(shared): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let fault = {
        let mut st = shared.lock();
        st.stats
            .requests
            .push((req.method().to_string(), path.clone()));
        st.faults.requests.tick()
    };
    let Some(fault) = fault else {
        return next.run(req).await;
    };
    // Read the body first, as a real front end would, so the client is not
    // cut off mid-upload by an early answer.
    drain(&shared, req.into_body()).await;
    fault.into_response_for(&route_name(&path))
}

impl RequestFault {
    fn into_response_for(self, route: &str) -> Response {
        match self {
            RequestFault::RateLimited {
                reason,
                retry_after,
            } => {
                let body = json!({
                    "error_summary": format!("{reason}/.."),
                    "error": {"reason": {".tag": reason}, "retry_after": retry_after},
                });
                let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                set_retry_after(&mut resp, retry_after);
                resp
            }
            RequestFault::Unavailable { retry_after } => {
                let mut resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
                set_retry_after(&mut resp, retry_after);
                resp
            }
            RequestFault::Status(status) => injected_status(status, route),
        }
    }
}

/// A plausible Dropbox answer for an injected status.
fn injected_status(status: StatusCode, route: &str) -> Response {
    match status.as_u16() {
        400 => bad_input(route, "injected bad request"),
        401 => token_error("expired_access_token"),
        409 => conflict("other", json!({".tag": "other"})),
        429 => RequestFault::RateLimited {
            reason: "too_many_requests",
            retry_after: 1,
        }
        .into_response_for(route),
        503 => RequestFault::Unavailable { retry_after: 1 }.into_response_for(route),
        _ => text(status, status.canonical_reason().unwrap_or("Error")),
    }
}

fn set_retry_after(resp: &mut Response, secs: u64) {
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        secs.to_string().parse().expect("header"),
    );
}

/// Bearer-token check for every `/2/` route.
async fn require_bearer(State(shared): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_name(req.uri().path());
    match check_bearer(&shared, req.headers(), &route) {
        Ok(()) => next.run(req).await,
        Err(resp) => {
            drain(&shared, req.into_body()).await;
            resp
        }
    }
}

fn check_bearer(shared: &Shared, headers: &HeaderMap, route: &str) -> Result<(), Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(bad_input(
            route,
            "Must provide HTTP header \"Authorization\" or URL parameter \"authorization\".",
        ));
    };
    let value = value.to_str().unwrap_or_default();
    let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
        return Err(bad_input(
            route,
            &format!(
                "Invalid authorization value in HTTP header \"Authorization\": {value:?}.  \
                 Expecting \"Bearer <oauth2-access-token>\"."
            ),
        ));
    };
    let st = shared.lock();
    match st.oauth.access.get(token) {
        None => Err(token_error("invalid_access_token")),
        Some(t) if t.force_expired || Instant::now() >= t.expires_at => {
            Err(token_error("expired_access_token"))
        }
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// OAuth2 token endpoint
// ---------------------------------------------------------------------------

async fn oauth_token(
    State(shared): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error("invalid_request", "request body must be form-encoded");
    };
    let mut st = shared.lock();
    if let Err(resp) = authenticate_client(&st.oauth, &headers, &form) {
        return resp;
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let result = match field("grant_type") {
        "authorization_code" => {
            exchange_code(&mut st.oauth, field("code"), form.get("code_verifier"))
        }
        "refresh_token" => refresh(&mut st.oauth, field("refresh_token")),
        "" => Err(oauth_error("invalid_request", "No grant_type provided.")),
        other => Err(oauth_error(
            "unsupported_grant_type",
            &format!("grant_type {other:?} is not supported"),
        )),
    };
    match result {
        Ok(body) => Json(body).into_response(),
        Err(resp) => resp,
    }
}

// ---------------------------------------------------------------------------
// The browser side of OAuth: www.dropbox.com/oauth2/authorize
// ---------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Dropbox's error page for a bad authorize request (HTTP 400).
fn authorize_error(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::response::Html(format!(
            "<!doctype html><title>Dropbox - 400</title><h1>Error (400)</h1>\
             <p>It seems the app you were using submitted a bad request. If you would like to \
             report this error to the app's developer, include the information below.</p>\
             <p id=reason>More details for developers: {}</p>",
            html_escape(reason)
        )),
    )
        .into_response()
}

/// Checks the query the way Dropbox does before showing "Allow".
fn check_authorize(oauth: &OAuthState, q: &HashMap<String, String>) -> Result<(), Response> {
    let get = |k: &str| q.get(k).map(String::as_str);
    match get("client_id") {
        None => return Err(authorize_error("Missing client_id.")),
        Some(id) if id != oauth.client_id => return Err(authorize_error("Invalid client_id.")),
        _ => {}
    }
    if get("response_type") != Some("code") {
        return Err(authorize_error(
            "Invalid response_type: must be \"code\" or \"token\".",
        ));
    }
    if let Some(t) = get("token_access_type")
        && !matches!(t, "offline" | "online" | "legacy")
    {
        return Err(authorize_error("Invalid token_access_type."));
    }
    match (get("code_challenge"), get("code_challenge_method")) {
        (Some(c), Some("S256")) if (43..=128).contains(&c.len()) => Ok(()),
        (Some(_), Some("S256")) => Err(authorize_error(
            "code_challenge must be between 43 and 128 characters.",
        )),
        (Some(_), _) => Err(authorize_error(
            "code_challenge_method must be S256 or plain.",
        )),
        // Without PKCE the app must authenticate with its secret at the token endpoint.
        (None, _) => Ok(()),
    }
}

/// The consent page: "<app> would like access to …" with Allow / Cancel.
async fn authorize_page(
    State(shared): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = check_authorize(&shared.lock().oauth, &q) {
        return resp;
    }
    let hidden: String = q
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=hidden name=\"{}\" value=\"{}\">",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    axum::response::Html(format!(
        "<!doctype html><title>API Request Authorization - Dropbox</title>\
         <h1>API Request Authorization</h1>\
         <p>This app would like to access the files and folders in your Dropbox.</p>\
         <form method=post>{hidden}\
         <button type=submit name=decision value=deny id=deny>Cancel</button> \
         <button type=submit name=decision value=allow id=allow>Allow</button></form>"
    ))
    .into_response()
}

/// After Allow: the code, shown to paste (no redirect_uri) or sent to the redirect URI.
async fn authorize_decision(
    State(shared): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut st = shared.lock();
    if let Err(resp) = check_authorize(&st.oauth, &form) {
        return resp;
    }
    let redirect = form.get("redirect_uri").cloned();
    let state = form.get("state").cloned();
    let with_query = |pairs: &[(&str, &str)]| {
        let uri = redirect.clone().unwrap_or_default();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
        if let Some(s) = &state {
            q.append_pair("state", s);
        }
        let sep = if uri.contains('?') { '&' } else { '?' };
        axum::response::Redirect::to(&format!("{uri}{sep}{}", q.finish())).into_response()
    };
    if form.get("decision").map(String::as_str) != Some("allow") {
        return match redirect {
            Some(_) => with_query(&[
                ("error", "access_denied"),
                (
                    "error_description",
                    "The user chose not to give your app access to their Dropbox account.",
                ),
            ]),
            None => axum::response::Html("<!doctype html><h1>Access denied</h1>").into_response(),
        };
    }
    let code = random_token(43);
    let challenge = form.get("code_challenge").cloned().unwrap_or_default();
    st.oauth.codes.insert(code.clone(), challenge);
    match redirect {
        Some(_) => with_query(&[("code", &code)]),
        None => axum::response::Html(format!(
            "<!doctype html><title>Dropbox</title><h1>Access Code Generated</h1>\
             <p>Enter this code into the app to finish the process.</p>\
             <input id=code readonly value=\"{code}\" size=50>"
        ))
        .into_response(),
    }
}

/// The client identifies itself with HTTP Basic auth or `client_id`
/// (+ optional `client_secret`) form fields.
fn authenticate_client(
    oauth: &OAuthState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), Some(secret.to_owned())))
        });
    let (client_id, secret) = match basic {
        Some(pair) => pair,
        None => match form.get("client_id") {
            Some(id) => (id.clone(), form.get("client_secret").cloned()),
            None => {
                return Err(oauth_error(
                    "invalid_request",
                    "No auth function available for given request",
                ));
            }
        },
    };
    let secret_ok = match (&secret, &oauth.client_secret) {
        (None, _) => true,
        (Some(given), Some(expected)) => given == expected,
        (Some(_), None) => false,
    };
    if client_id != oauth.client_id || !secret_ok {
        return Err(oauth_error(
            "invalid_client",
            "Invalid client_id or client_secret",
        ));
    }
    Ok(())
}

fn exchange_code(
    oauth: &mut OAuthState,
    code: &str,
    verifier: Option<&String>,
) -> Result<Value, Response> {
    let Some(challenge) = oauth.codes.get(code).cloned() else {
        return Err(oauth_error(
            "invalid_grant",
            "code doesn't exist or has expired",
        ));
    };
    let Some(verifier) = verifier else {
        return Err(oauth_error("invalid_request", "No code_verifier provided."));
    };
    // RFC 7636 §4.1: 43..=128 characters.
    if !(43..=128).contains(&verifier.len()) {
        return Err(oauth_error(
            "invalid_request",
            "code_verifier must be between 43 and 128 characters",
        ));
    }
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
        return Err(oauth_error("invalid_grant", "invalid code verifier"));
    }
    // Codes are single-use.
    oauth.codes.remove(code);
    oauth.grants.push("authorization_code".to_owned());
    Ok(json!({
        "access_token": oauth.mint_access_token(),
        "token_type": "bearer",
        "expires_in": oauth.ttl.as_secs(),
        "refresh_token": oauth.mint_refresh_token(),
        "scope": SCOPE,
        "uid": UID,
        "account_id": ACCOUNT_ID,
    }))
}

fn refresh(oauth: &mut OAuthState, refresh_token: &str) -> Result<Value, Response> {
    if oauth.refresh.get(refresh_token) != Some(&false) {
        return Err(oauth_error(
            "invalid_grant",
            "refresh token is invalid or revoked",
        ));
    }
    oauth.grants.push("refresh_token".to_owned());
    Ok(json!({
        "access_token": oauth.mint_access_token(),
        "token_type": "bearer",
        "expires_in": oauth.ttl.as_secs(),
    }))
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Upload sessions
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct StartArg {
    #[serde(default)]
    close: bool,
    #[serde(default)]
    session_type: Option<Value>,
    #[serde(default)]
    content_hash: Option<String>,
}

#[derive(Deserialize)]
struct CursorArg {
    session_id: String,
    offset: u64,
}

#[derive(Deserialize)]
struct AppendArg {
    cursor: CursorArg,
    #[serde(default)]
    close: bool,
    #[serde(default)]
    content_hash: Option<String>,
}

#[derive(Deserialize)]
struct FinishArg {
    cursor: CursorArg,
    commit: CommitArg,
    #[serde(default)]
    content_hash: Option<String>,
}

#[derive(Deserialize)]
struct CommitArg {
    path: String,
    #[serde(default)]
    mode: Option<Value>,
    #[serde(default)]
    autorename: bool,
    #[serde(default)]
    client_modified: Option<String>,
    #[serde(default)]
    strict_conflict: bool,
}

/// Everything an upload handler learns before touching the body.
struct UploadCall<A> {
    arg: A,
    route: &'static str,
    fault: Option<UploadFault>,
    /// Declared `Content-Length`, if any.
    declared_len: Option<u64>,
}

/// Common front half of the three upload endpoints: count the call, pick
/// up an injected fault, check size, content type and `Dropbox-API-Arg`.
async fn begin_upload<A: DeserializeOwned>(
    shared: &Shared,
    route: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(UploadCall<A>, Body), Response> {
    let fault = {
        let mut st = shared.lock();
        st.stats.upload_calls += 1;
        st.faults.uploads.tick()
    };
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Oversized bodies are refused from the headers alone, unread.
    if declared_len.is_some_and(|n| n > MAX_REQUEST_BODY) {
        return Err(payload_too_large());
    }
    let checked =
        check_octet_stream(headers, route).and_then(|()| content_arg::<A>(headers, route));
    match checked {
        Ok(arg) => Ok((
            UploadCall {
                arg,
                route,
                fault,
                declared_len,
            },
            body,
        )),
        Err(resp) => {
            drain(shared, body).await;
            Err(resp)
        }
    }
}

/// `payload_too_large` is a top-level member of the start, append and
/// finish error unions alike.
fn payload_too_large() -> Response {
    conflict("payload_too_large", json!({".tag": "payload_too_large"}))
}

fn check_octet_stream(headers: &HeaderMap, route: &str) -> Result<(), Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ok = ct.eq_ignore_ascii_case("application/octet-stream")
        || ct.eq_ignore_ascii_case("text/plain; charset=dropbox-cors-hack");
    if ok {
        Ok(())
    } else {
        Err(bad_input(
            route,
            &format!(
                "Bad HTTP \"Content-Type\" header: {ct:?}.  Expecting one of \
                 \"application/octet-stream\", \"text/plain; charset=dropbox-cors-hack\"."
            ),
        ))
    }
}

/// Parse the JSON argument of a content endpoint from `Dropbox-API-Arg`.
fn content_arg<A: DeserializeOwned>(headers: &HeaderMap, route: &str) -> Result<A, Response> {
    let Some(raw) = headers.get("Dropbox-API-Arg") else {
        return Err(bad_input(
            route,
            "Must provide HTTP header \"Dropbox-API-Arg\" or URL parameter \"arg\".",
        ));
    };
    // HTTP headers carry ASCII only: clients must escape non-ASCII
    // characters in the JSON (\uXXXX), as Dropbox's docs require.
    let Ok(raw) = raw.to_str() else {
        return Err(bad_input(
            route,
            "HTTP header \"Dropbox-API-Arg\": non-ASCII characters must be escaped as \\uXXXX",
        ));
    };
    serde_json::from_str(raw).map_err(|e| {
        bad_input(
            route,
            &format!("HTTP header \"Dropbox-API-Arg\": could not decode input as JSON: {e}"),
        )
    })
}

/// Where and how a request body should be stored.
struct Sink<'a> {
    /// File and offset to write at; `None` discards the data.
    target: Option<(&'a Path, u64)>,
    /// Running session hash to extend (sequential sessions).
    session_hash: Option<ContentHasher>,
    /// Also hash the chunk alone (to check a `content_hash` argument).
    chunk_hash: bool,
    /// Cut the connection after this many bytes.
    cut_after: Option<u64>,
}

struct Received {
    len: u64,
    session_hash: Option<ContentHasher>,
    chunk_hash: Option<String>,
}

enum ReceiveError {
    /// We reached the injected cut-off point.
    Cut,
    /// The client went away or sent a broken body.
    ClientGone,
    /// A body without Content-Length grew beyond 150 MiB.
    TooLarge,
    Io(std::io::Error),
}

/// Stream a request body into `sink`, counting bytes as they arrive.
async fn receive(shared: &Shared, body: Body, sink: Sink<'_>) -> Result<Received, ReceiveError> {
    if sink.cut_after == Some(0) {
        return Err(ReceiveError::Cut);
    }
    let mut writer = match sink.target {
        Some((path, offset)) => {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .await
                .map_err(ReceiveError::Io)?;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(ReceiveError::Io)?;
            Some(BufWriter::with_capacity(1 << 20, file))
        }
        None => None,
    };
    let mut session_hash = sink.session_hash;
    let mut chunk_hash = sink.chunk_hash.then(ContentHasher::new);
    let mut len = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let data = frame.map_err(|_| ReceiveError::ClientGone)?;
        len += data.len() as u64;
        shared.add_received(data.len() as u64);
        if len > MAX_REQUEST_BODY {
            return Err(ReceiveError::TooLarge);
        }
        if let Some(h) = session_hash.as_mut() {
            h.update(&data);
        }
        if let Some(h) = chunk_hash.as_mut() {
            h.update(&data);
        }
        if let Some(w) = writer.as_mut() {
            w.write_all(&data).await.map_err(ReceiveError::Io)?;
        }
        if sink.cut_after.is_some_and(|cut| len >= cut) {
            return Err(ReceiveError::Cut);
        }
    }
    if let Some(w) = writer.as_mut() {
        w.flush().await.map_err(ReceiveError::Io)?;
    }
    Ok(Received {
        len,
        session_hash,
        chunk_hash: chunk_hash.map(ContentHasher::finalize),
    })
}

/// Read and discard a body (so early error answers do not break the client's
/// upload); the bytes still count as received.
async fn drain(shared: &Shared, body: Body) {
    let sink = Sink {
        target: None,
        session_hash: None,
        chunk_hash: false,
        cut_after: None,
    };
    let _ = receive(shared, body, sink).await;
}

/// Where the injected mid-body cut happens: half the declared body.
fn cut_point(fault: Option<UploadFault>, declared_len: Option<u64>) -> Option<u64> {
    (fault == Some(UploadFault::DropMidBody)).then(|| declared_len.map_or(1, |n| n / 2))
}

/// Turn a failed receive into the response (or non-response) it deserves.
fn receive_failure(err: ReceiveError, conn: &ConnHandle) -> Response {
    match err {
        ReceiveError::Cut => {
            conn.kill();
            // Never reaches the client: the socket is already shut down.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        ReceiveError::ClientGone => StatusCode::BAD_REQUEST.into_response(),
        ReceiveError::TooLarge => payload_too_large(),
        ReceiveError::Io(e) => storage_error(e),
    }
}

fn parse_session_kind(v: &Option<Value>, route: &str) -> Result<SessionKind, Response> {
    match v.as_ref().map(tag_of) {
        None | Some(Some("sequential")) => Ok(SessionKind::Sequential),
        Some(Some("concurrent")) => Ok(SessionKind::Concurrent),
        Some(other) => Err(bad_input(
            route,
            &format!("HTTP header \"Dropbox-API-Arg\": session_type: unknown tag {other:?}"),
        )),
    }
}

/// Fake-only strict mode: non-closing sequential chunks must be 4 MiB
/// multiples, like our client always sends.
fn violates_strict_4mib(shared: &Shared, kind: SessionKind, close: bool, len: u64) -> bool {
    kind == SessionKind::Sequential
        && !close
        && !len.is_multiple_of(BLOCK_SIZE)
        && shared.lock().require_4mib
}

fn strict_4mib_error(route: &str, len: u64) -> Response {
    bad_input(
        route,
        &format!(
            "fake strict mode: a non-closing chunk of {len} bytes is not a multiple of \
             4194304 bytes (4 MiB); offsite must upload whole 4 MiB blocks"
        ),
    )
}

fn hash_mismatch(given: &Option<String>, received: &Received) -> bool {
    match (given, &received.chunk_hash) {
        (Some(given), Some(actual)) => !given.eq_ignore_ascii_case(actual),
        _ => false,
    }
}

async fn upload_start(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = "files/upload_session/start";
    let (call, body) = match begin_upload::<StartArg>(&shared, route, &headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let arg = &call.arg;
    let kind = match parse_session_kind(&arg.session_type, route) {
        Ok(kind) => kind,
        Err(resp) => {
            drain(&shared, body).await;
            return resp;
        }
    };
    if kind == SessionKind::Concurrent && arg.close {
        drain(&shared, body).await;
        return conflict(
            "concurrent_session_close_not_allowed",
            json!({".tag": "concurrent_session_close_not_allowed"}),
        );
    }
    let disk = {
        let serial = shared.lock().next_serial();
        shared.session_path(serial)
    };
    let mut session = Session::new(kind, disk);
    let sink = Sink {
        target: Some((&session.disk, 0)),
        session_hash: Some(ContentHasher::new()),
        chunk_hash: arg.content_hash.is_some(),
        cut_after: cut_point(call.fault, call.declared_len),
    };
    let received = match receive(&shared, body, sink).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&session.disk);
            return receive_failure(e, &conn);
        }
    };
    let rejection = if kind == SessionKind::Concurrent && received.len > 0 {
        Some(conflict(
            "concurrent_session_data_not_allowed",
            json!({".tag": "concurrent_session_data_not_allowed"}),
        ))
    } else if hash_mismatch(&arg.content_hash, &received) {
        Some(conflict(
            "content_hash_mismatch",
            json!({".tag": "content_hash_mismatch"}),
        ))
    } else if received.len > 0 && violates_strict_4mib(&shared, kind, arg.close, received.len) {
        Some(strict_4mib_error(route, received.len))
    } else {
        None
    };
    if let Some(resp) = rejection {
        let _ = std::fs::remove_file(&session.disk);
        return resp;
    }
    session.len = received.len;
    session.hasher = received.session_hash.unwrap_or_default();
    session.closed = arg.close;
    let session_id = format!("pid_upload_session:{}", random_token(48));
    shared.lock().sessions.insert(
        session_id.clone(),
        Arc::new(tokio::sync::Mutex::new(session)),
    );
    if call.fault == Some(UploadFault::AcceptThenFail) {
        return injected_500();
    }
    Json(json!({"session_id": session_id})).into_response()
}

fn injected_500() -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

fn lookup_session(shared: &Shared, id: &str) -> Option<Arc<tokio::sync::Mutex<Session>>> {
    shared.lock().sessions.get(id).cloned()
}

/// `UploadSessionLookupError` members as append_v2 reports them (top level).
fn lookup_error(tag: &str, correct_offset: Option<u64>) -> Value {
    match correct_offset {
        Some(n) => json!({".tag": tag, "correct_offset": n}),
        None => json!({".tag": tag}),
    }
}

/// Checks an append against the session before any data is read.
fn precheck_append(s: &Session, offset: u64) -> Result<(), Value> {
    if s.expired {
        return Err(lookup_error("not_found", None));
    }
    match s.kind {
        SessionKind::Sequential => {
            if offset != s.len {
                return Err(lookup_error("incorrect_offset", Some(s.len)));
            }
            if s.closed || s.finished {
                return Err(lookup_error("closed", None));
            }
        }
        SessionKind::Concurrent => {
            if s.finished || s.final_len.is_some_and(|total| offset >= total) {
                return Err(lookup_error("closed", None));
            }
            if !offset.is_multiple_of(BLOCK_SIZE) {
                return Err(lookup_error("concurrent_session_invalid_offset", None));
            }
        }
    }
    Ok(())
}

async fn upload_append(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = "files/upload_session/append_v2";
    let (call, body) = match begin_upload::<AppendArg>(&shared, route, &headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let arg = &call.arg;
    let Some(session) = lookup_session(&shared, &arg.cursor.session_id) else {
        drain(&shared, body).await;
        return append_conflict(lookup_error("not_found", None));
    };
    // One request at a time per session: a racing duplicate sees the new
    // offset once the first one is done, as on the real service.
    let mut s = session.lock().await;
    let offset = arg.cursor.offset;
    if let Err(error) = precheck_append(&s, offset) {
        drain(&shared, body).await;
        return append_conflict(error);
    }
    let sink = Sink {
        target: Some((&s.disk, offset)),
        session_hash: (s.kind == SessionKind::Sequential).then(|| s.hasher.clone()),
        chunk_hash: arg.content_hash.is_some(),
        cut_after: cut_point(call.fault, call.declared_len),
    };
    let received = match receive(&shared, body, sink).await {
        Ok(r) => r,
        Err(e) => return receive_failure(e, &conn),
    };
    if let Some(resp) = reject_chunk(&shared, &s, arg.close, &arg.content_hash, &received, route) {
        return resp;
    }
    if offset + received.len > MAX_FILE_SIZE {
        return append_conflict(lookup_error("too_large", None));
    }
    commit_chunk(&mut s, offset, arg.close, received);
    if call.fault == Some(UploadFault::AcceptThenFail) {
        return injected_500();
    }
    Json(Value::Null).into_response()
}

/// Post-receive checks shared by append and finish.
fn reject_chunk(
    shared: &Shared,
    s: &Session,
    close: bool,
    content_hash: &Option<String>,
    received: &Received,
    route: &str,
) -> Option<Response> {
    if s.kind == SessionKind::Concurrent && !close && !received.len.is_multiple_of(BLOCK_SIZE) {
        return Some(append_conflict(lookup_error(
            "concurrent_session_invalid_data_size",
            None,
        )));
    }
    if violates_strict_4mib(shared, s.kind, close, received.len) {
        return Some(strict_4mib_error(route, received.len));
    }
    if hash_mismatch(content_hash, received) {
        return Some(conflict(
            "content_hash_mismatch",
            json!({".tag": "content_hash_mismatch"}),
        ));
    }
    None
}

/// Acknowledge a fully received chunk.
fn commit_chunk(s: &mut Session, offset: u64, close: bool, received: Received) {
    match s.kind {
        SessionKind::Sequential => {
            s.len = offset + received.len;
            if let Some(h) = received.session_hash {
                s.hasher = h;
            }
        }
        SessionKind::Concurrent => {
            s.chunks.insert(offset, received.len);
            if close {
                s.final_len = Some(offset + received.len);
            }
        }
    }
    if close {
        s.closed = true;
    }
}

fn append_conflict(error: Value) -> Response {
    let summary = summary_of(&error);
    conflict(&summary, error)
}

/// finish wraps session lookup errors in `lookup_failed`.
fn finish_lookup_failed(inner: Value) -> Response {
    let summary = format!("lookup_failed/{}", summary_of(&inner));
    conflict(
        &summary,
        json!({".tag": "lookup_failed", "lookup_failed": inner}),
    )
}

/// Checks a finish against the session before any data is read.
fn precheck_finish(s: &Session, offset: u64, declared_len: Option<u64>) -> Result<(), Response> {
    if s.expired {
        return Err(finish_lookup_failed(lookup_error("not_found", None)));
    }
    if s.finished {
        return Err(finish_lookup_failed(lookup_error("closed", None)));
    }
    match s.kind {
        SessionKind::Sequential => {
            if offset != s.len {
                return Err(finish_lookup_failed(lookup_error(
                    "incorrect_offset",
                    Some(s.len),
                )));
            }
            if s.closed && declared_len.is_some_and(|n| n > 0) {
                return Err(finish_lookup_failed(lookup_error("closed", None)));
            }
        }
        SessionKind::Concurrent => {
            let tag = if declared_len.is_some_and(|n| n > 0) {
                Some("concurrent_session_data_not_allowed")
            } else if !s.closed {
                Some("concurrent_session_not_closed")
            } else if !s.is_complete() {
                Some("concurrent_session_missing_data")
            } else {
                None
            };
            if let Some(tag) = tag {
                return Err(conflict(tag, json!({".tag": tag})));
            }
            let total = s.final_len.unwrap_or_default();
            if offset != total {
                return Err(finish_lookup_failed(lookup_error(
                    "incorrect_offset",
                    Some(total),
                )));
            }
        }
    }
    Ok(())
}

async fn upload_finish(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = "files/upload_session/finish";
    let (call, body) = match begin_upload::<FinishArg>(&shared, route, &headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let arg = &call.arg;
    let commit = match CommitRequest::parse(&arg.commit) {
        Ok(commit) => commit,
        Err(msg) => {
            drain(&shared, body).await;
            return bad_input(route, &msg);
        }
    };
    let Some(session) = lookup_session(&shared, &arg.cursor.session_id) else {
        drain(&shared, body).await;
        return finish_lookup_failed(lookup_error("not_found", None));
    };
    let mut s = session.lock().await;
    let offset = arg.cursor.offset;
    if let Err(resp) = precheck_finish(&s, offset, call.declared_len) {
        drain(&shared, body).await;
        return resp;
    }

    // A sequential finish may carry the last chunk; it is appended before
    // the commit is attempted (a path error leaves it in the session).
    let sink = Sink {
        target: Some((&s.disk, offset)),
        session_hash: (s.kind == SessionKind::Sequential).then(|| s.hasher.clone()),
        chunk_hash: arg.content_hash.is_some(),
        cut_after: cut_point(call.fault, call.declared_len),
    };
    let received = match receive(&shared, body, sink).await {
        Ok(r) => r,
        Err(e) => return receive_failure(e, &conn),
    };
    if let Some(resp) = reject_final_chunk(&s, &arg.content_hash, &received) {
        return resp;
    }
    if s.kind == SessionKind::Sequential {
        commit_chunk(&mut s, offset, false, received);
    }
    let corrupt = {
        let mut st = shared.lock();
        let corrupt = st.corrupt_commits > 0;
        st.corrupt_commits = st.corrupt_commits.saturating_sub(1);
        corrupt
    };
    if corrupt
        && let Ok(mut stored) = std::fs::read(&s.disk)
        && !stored.is_empty()
    {
        stored[0] ^= 0xff;
        std::fs::write(&s.disk, stored).expect("corrupt the fake's copy");
    }
    let (size, hash) = match seal_session(&s).await {
        // What Dropbox reports is the hash of what it stored.
        Ok((size, _)) if corrupt => (size, content_hash(&std::fs::read(&s.disk).unwrap())),
        Ok(x) => x,
        Err(e) => return storage_error(e),
    };
    let file = {
        let mut st = shared.lock();
        let blob = shared.blob_path(st.next_serial());
        match st.commit_upload(&commit, &s.disk, blob, size, hash) {
            Ok(file) => file,
            Err(resp) => return resp,
        }
    };
    s.finished = true;
    if call.fault == Some(UploadFault::AcceptThenFail) {
        return injected_500();
    }
    Json(file_metadata(&file)).into_response()
}

/// Post-receive checks on the data a finish call carried.
fn reject_final_chunk(
    s: &Session,
    content_hash: &Option<String>,
    received: &Received,
) -> Option<Response> {
    if received.len > 0 && s.kind == SessionKind::Concurrent {
        let tag = "concurrent_session_data_not_allowed";
        return Some(conflict(tag, json!({".tag": tag})));
    }
    if received.len > 0 && s.closed {
        return Some(finish_lookup_failed(lookup_error("closed", None)));
    }
    if hash_mismatch(content_hash, received) {
        let tag = "content_hash_mismatch";
        return Some(conflict(tag, json!({".tag": tag})));
    }
    None
}

fn storage_error(e: std::io::Error) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("fake Dropbox storage error: {e}"),
    )
}

/// Trim leftovers of aborted writes and compute the final content hash.
async fn seal_session(s: &Session) -> std::io::Result<(u64, String)> {
    let size = match s.kind {
        SessionKind::Sequential => s.len,
        SessionKind::Concurrent => s.final_len.unwrap_or_default(),
    };
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&s.disk)
        .await?;
    file.set_len(size).await?;
    drop(file);
    let hash = match s.kind {
        SessionKind::Sequential => s.hasher.clone().finalize(),
        SessionKind::Concurrent => {
            // Chunks arrived in any order, so hash the assembled file.
            let disk = s.disk.clone();
            tokio::task::spawn_blocking(move || content_hash_of_file(&disk))
                .await
                .map_err(std::io::Error::other)??
        }
    };
    Ok((size, hash))
}

// ---------------------------------------------------------------------------
// File tree: commit, list, delete
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum WriteMode {
    Add,
    Overwrite,
    Update(String),
}

fn parse_write_mode(v: &Option<Value>) -> Result<WriteMode, String> {
    let Some(v) = v else {
        return Ok(WriteMode::Add);
    };
    match tag_of(v) {
        Some("add") => Ok(WriteMode::Add),
        Some("overwrite") => Ok(WriteMode::Overwrite),
        Some("update") => v
            .get("update")
            .and_then(Value::as_str)
            .map(|rev| WriteMode::Update(rev.to_owned()))
            .ok_or_else(|| "commit.mode: update needs a rev".to_owned()),
        other => Err(format!("commit.mode: unknown tag {other:?}")),
    }
}

struct CommitRequest<'a> {
    path: &'a str,
    mode: WriteMode,
    autorename: bool,
    strict_conflict: bool,
    client_modified: Option<DateTime<Utc>>,
}

impl<'a> CommitRequest<'a> {
    /// Validate `CommitInfo`; Err is the message for a plain-text 400.
    fn parse(arg: &'a CommitArg) -> Result<Self, String> {
        let client_modified = match arg.client_modified.as_deref() {
            Some(t) => Some(parse_timestamp(t)?),
            None => None,
        };
        Ok(Self {
            path: &arg.path,
            mode: parse_write_mode(&arg.mode)?,
            autorename: arg.autorename,
            strict_conflict: arg.strict_conflict,
            client_modified,
        })
    }
}

/// Outcome of resolving a commit against the tree.
enum Placement {
    /// Write a new file at this display path.
    Create(String),
    /// Replace the file at this key.
    Replace(String),
    /// Identical content already there: nothing is written.
    Unchanged(String),
}

impl DbxState {
    /// Commit finished session data at `commit.path`, moving the session
    /// file into place. Errors are the spec's `path` (WriteError) answers.
    fn commit_upload(
        &mut self,
        commit: &CommitRequest<'_>,
        session_disk: &Path,
        blob: PathBuf,
        size: u64,
        hash: String,
    ) -> Result<DropboxFile, Response> {
        let placement = self.place(commit, &hash).map_err(path_error)?;
        let path_display = match placement {
            Placement::Unchanged(key) => {
                let _ = std::fs::remove_file(session_disk);
                return match self.tree.get(&key) {
                    Some(Entry::File(f)) => Ok(f.clone()),
                    _ => unreachable!("placement points at a file"),
                };
            }
            Placement::Replace(key) => self.tree[&key].path_display().to_owned(),
            Placement::Create(display) => display,
        };
        std::fs::rename(session_disk, &blob).map_err(storage_error)?;
        let now = truncate_to_secs(Utc::now());
        let client_modified = commit.client_modified.unwrap_or(now);
        Ok(self.install_file(&path_display, blob, size, hash, now, client_modified))
    }

    /// Decide where a commit lands, following `WriteMode`'s rules.
    fn place(&self, commit: &CommitRequest<'_>, hash: &str) -> Result<Placement, Value> {
        check_path(commit.path).map_err(|_| json!({".tag": "malformed_path"}))?;
        if self.file_ancestor(commit.path) {
            return Err(write_conflict("file_ancestor"));
        }
        let key = commit.path.to_lowercase();
        let conflict_kind = match self.tree.get(&key) {
            None => return Ok(Placement::Create(self.display_path(commit.path))),
            // A folder in the way is always a conflict.
            Some(Entry::Folder(_)) => "folder",
            Some(Entry::File(existing)) => {
                // Identical content is never a conflict unless strict.
                if existing.content_hash == hash && !commit.strict_conflict {
                    return Ok(Placement::Unchanged(key));
                }
                match &commit.mode {
                    WriteMode::Overwrite => return Ok(Placement::Replace(key)),
                    WriteMode::Update(rev) if *rev == existing.rev => {
                        return Ok(Placement::Replace(key));
                    }
                    _ => "file",
                }
            }
        };
        if commit.autorename {
            Ok(Placement::Create(self.free_name(commit.path, &commit.mode)))
        } else {
            Err(write_conflict(conflict_kind))
        }
    }

    fn file_ancestor(&self, path: &str) -> bool {
        ancestors(&path.to_lowercase())
            .iter()
            .any(|a| matches!(self.tree.get(a), Some(Entry::File(_))))
    }

    /// Display path using the casing of folders that already exist.
    fn display_path(&self, path: &str) -> String {
        let (parent, name) = split_parent(path);
        let parent_display = match self.tree.get(&parent.to_lowercase()) {
            Some(entry) => entry.path_display().to_owned(),
            None => parent.to_owned(),
        };
        format!("{parent_display}/{name}")
    }

    /// "name (1).ext", "name (2).ext", ... (or "conflicted copy" for update).
    fn free_name(&self, path: &str, mode: &WriteMode) -> String {
        let (parent, name) = split_parent(path);
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        let candidates = (1..).map(|n| match mode {
            WriteMode::Update(_) if n == 1 => format!("{stem} (conflicted copy){ext}"),
            WriteMode::Update(_) => format!("{stem} (conflicted copy {n}){ext}"),
            _ => format!("{stem} ({n}){ext}"),
        });
        for candidate in candidates {
            let path = format!("{parent}/{candidate}");
            if !self.tree.contains_key(&path.to_lowercase()) {
                return self.display_path(&path);
            }
        }
        unreachable!("an unbounded range always yields a free name")
    }

    /// Create missing parent folders for `path_display`.
    fn ensure_parents(&mut self, path_display: &str) {
        let (parent, _) = split_parent(path_display);
        let mut display = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            display.push('/');
            display.push_str(part);
            let key = display.to_lowercase();
            if let Some(entry) = self.tree.get(&key) {
                // Keep the casing the folder was created with.
                display = entry.path_display().to_owned();
                continue;
            }
            self.tree.insert(
                key.clone(),
                Entry::Folder(Folder {
                    id: Self::new_id(),
                    name: part.to_owned(),
                    path_lower: key,
                    path_display: display.clone(),
                }),
            );
        }
    }

    /// Put a file into the tree (replacing any file at the same path, whose
    /// id it keeps) and return its record.
    fn install_file(
        &mut self,
        path: &str,
        disk: PathBuf,
        size: u64,
        content_hash: String,
        server_modified: DateTime<Utc>,
        client_modified: DateTime<Utc>,
    ) -> DropboxFile {
        self.ensure_parents(path);
        let path_display = self.display_path(path);
        let key = path_display.to_lowercase();
        let id = match self.tree.remove(&key) {
            Some(Entry::File(old)) => {
                if old.disk_path != disk {
                    let _ = std::fs::remove_file(&old.disk_path);
                }
                old.id
            }
            _ => Self::new_id(),
        };
        let file = DropboxFile {
            id,
            name: split_parent(&path_display).1.to_owned(),
            path_lower: key.clone(),
            path_display,
            rev: self.new_rev(),
            size,
            content_hash,
            server_modified,
            client_modified,
            disk_path: disk,
        };
        self.tree.insert(key, Entry::File(file.clone()));
        file
    }

    /// Entries under `folder` ("" = root), in path order. A recursive listing
    /// of a non-root folder includes the folder itself first.
    fn listing(&self, folder: &str, recursive: bool) -> Vec<&Entry> {
        let prefix = format!("{folder}/");
        let mut out: Vec<&Entry> = Vec::new();
        if recursive && let Some(me) = self.tree.get(folder) {
            out.push(me);
        }
        out.extend(
            self.tree
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(k, _)| recursive || !k[prefix.len()..].contains('/'))
                .map(|(_, e)| e),
        );
        out
    }

    /// Check that `folder` can be listed; Err is a `LookupError` tag.
    fn check_folder(&self, folder: &str) -> Result<(), &'static str> {
        if folder.is_empty() {
            return Ok(());
        }
        match self.tree.get(folder) {
            Some(Entry::Folder(_)) => Ok(()),
            Some(Entry::File(_)) => Err("not_folder"),
            None => Err("not_found"),
        }
    }

    /// Answer one page of a listing and mint the cursor for the rest.
    fn page(&mut self, mut cursor: ListCursor) -> Value {
        let rest = cursor
            .pending
            .split_off(cursor.page_size.min(cursor.pending.len()));
        let entries = std::mem::replace(&mut cursor.pending, rest);
        let has_more = !cursor.pending.is_empty();
        let id = random_token(56);
        self.cursors.insert(id.clone(), cursor);
        json!({"entries": entries, "cursor": id, "has_more": has_more})
    }

    /// Current versions of everything a cursor watches.
    fn snapshot(&self, folder: &str, recursive: bool) -> BTreeMap<String, String> {
        self.listing(folder, recursive)
            .into_iter()
            .map(|e| (e.path_display().to_lowercase(), e.version()))
            .collect()
    }
}

fn write_conflict(kind: &str) -> Value {
    json!({".tag": "conflict", "conflict": {".tag": kind}})
}

/// `UploadSessionFinishError.path` (a `WriteError`).
fn path_error(write_error: Value) -> Response {
    let summary = format!("path/{}", summary_of(&write_error));
    conflict(&summary, json!({".tag": "path", "path": write_error}))
}

#[derive(Deserialize)]
struct ListFolderArg {
    path: String,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct ContinueArg {
    cursor: String,
}

#[derive(Deserialize)]
struct DeleteArg {
    path: String,
    #[serde(default)]
    parent_rev: Option<String>,
}

#[derive(Deserialize)]
struct GetMetadataArg {
    path: String,
    #[serde(default)]
    #[allow(dead_code)]
    include_deleted: bool,
}

/// `files/get_metadata`: the file or folder at a path; `path/not_found` (409) when nothing is
/// there. The root has no metadata (Dropbox answers 400 for "").
async fn get_metadata(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let route = "files/get_metadata";
    let arg: GetMetadataArg = match rpc_arg(&headers, &body, route) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if arg.path.is_empty() || arg.path == "/" {
        return bad_input(route, "request body: path: The root folder is unsupported.");
    }
    if check_path(&arg.path).is_err() {
        return lookup_path_error("path", "malformed_path");
    }
    let st = shared.lock();
    match st.tree.get(&arg.path.to_lowercase()) {
        Some(entry) => Json(Entry::tagged(entry)).into_response(),
        None => lookup_path_error("path", "not_found"),
    }
}

#[derive(Deserialize)]
struct DownloadArg {
    path: String,
}

/// `files/download`: the content as the body, the metadata in `Dropbox-API-Result`; a `Range:
/// bytes=N-` answers 206 with the rest from N (what Dropbox does for ranged downloads).
async fn download(State(shared): State<AppState>, headers: HeaderMap) -> Response {
    let route = "files/download";
    let arg: DownloadArg = match content_arg(&headers, route) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if check_path(&arg.path).is_err() {
        return lookup_path_error("path", "malformed_path");
    }
    let file = match shared.lock().tree.get(&arg.path.to_lowercase()) {
        Some(Entry::File(f)) => f.clone(),
        Some(Entry::Folder(_)) => return lookup_path_error("path", "not_file"),
        None => return lookup_path_error("path", "not_found"),
    };
    let data = std::fs::read(&file.disk_path).expect("read fake Dropbox file");
    let from = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let meta = header_safe(&file_metadata(&file).to_string());
    match from {
        Some(from) if from > data.len() => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        Some(from) => (
            StatusCode::PARTIAL_CONTENT,
            [("Dropbox-API-Result", meta)],
            data[from..].to_vec(),
        )
            .into_response(),
        None => (StatusCode::OK, [("Dropbox-API-Result", meta)], data).into_response(),
    }
}

/// JSON for an HTTP header: non-ASCII escaped as \uXXXX, as Dropbox does.
fn header_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

async fn list_folder(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let route = "files/list_folder";
    let arg: ListFolderArg = match rpc_arg(&headers, &body, route) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if arg.path == "/" {
        return bad_input(
            route,
            "request body: path: Specify the root folder as an empty string rather than as \"/\".",
        );
    }
    if !arg.path.is_empty() && check_path(&arg.path).is_err() {
        return bad_input(
            route,
            &format!(
                "request body: path: {:?} did not match pattern '(/(.|[\\r\\n])*)?|id:.*|(ns:[0-9]+(/.*)?)'",
                arg.path
            ),
        );
    }
    if arg.limit.is_some_and(|l| !(1..=2000).contains(&l)) {
        return bad_input(route, "request body: limit: must be between 1 and 2000");
    }
    let folder = arg.path.to_lowercase();
    let mut st = shared.lock();
    if let Err(tag) = st.check_folder(&folder) {
        return lookup_path_error("path", tag);
    }
    let entries: Vec<Value> = st
        .listing(&folder, arg.recursive)
        .into_iter()
        .map(Entry::tagged)
        .collect();
    let cursor = ListCursor {
        seen: st.snapshot(&folder, arg.recursive),
        folder,
        recursive: arg.recursive,
        page_size: arg
            .limit
            .map_or(st.list_page_size, |l| (l as usize).min(st.list_page_size)),
        pending: entries,
    };
    Json(st.page(cursor)).into_response()
}

async fn list_folder_continue(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = "files/list_folder/continue";
    let arg: ContinueArg = match rpc_arg(&headers, &body, route) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let mut st = shared.lock();
    let Some(mut cursor) = st.cursors.get(&arg.cursor).cloned() else {
        return conflict("reset", json!({".tag": "reset"}));
    };
    if cursor.pending.is_empty() {
        // Listing done: report what changed since the cursor was minted.
        if let Err(tag) = st.check_folder(&cursor.folder) {
            return lookup_path_error("path", tag);
        }
        let now = st.snapshot(&cursor.folder, cursor.recursive);
        cursor.pending = changes(&st, &cursor.seen, &now);
        cursor.seen = now;
    }
    Json(st.page(cursor)).into_response()
}

/// Entries added or changed since `seen`, plus `deleted` markers.
fn changes(
    st: &DbxState,
    seen: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<Value> {
    let mut out: Vec<Value> = seen
        .keys()
        .filter(|k| !now.contains_key(*k))
        .map(|k| {
            json!({
                ".tag": "deleted",
                "name": split_parent(k).1,
                "path_lower": k,
                "path_display": k,
            })
        })
        .collect();
    out.extend(
        now.iter()
            .filter(|(k, v)| seen.get(*k) != Some(v))
            .filter_map(|(k, _)| st.tree.get(k).map(Entry::tagged)),
    );
    out
}

async fn delete_v2(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let route = "files/delete_v2";
    let arg: DeleteArg = match rpc_arg(&headers, &body, route) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if check_path(&arg.path).is_err() {
        return lookup_path_error("path_lookup", "malformed_path");
    }
    let key = arg.path.to_lowercase();
    let mut st = shared.lock();
    let Some(entry) = st.tree.get(&key).cloned() else {
        return lookup_path_error("path_lookup", "not_found");
    };
    if let (Some(rev), Entry::File(f)) = (&arg.parent_rev, &entry)
        && *rev != f.rev
    {
        // The spec does not say which error a stale parent_rev gets; a
        // write conflict is what the file being "in the way" amounts to.
        let error = json!({".tag": "path_write", "path_write": write_conflict("file")});
        return conflict("path_write/conflict/file", error);
    }
    let prefix = format!("{key}/");
    let doomed: Vec<String> = st
        .tree
        .range(key.clone()..)
        .take_while(|(k, _)| **k == key || k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        if let Some(Entry::File(f)) = st.tree.remove(&k) {
            let _ = std::fs::remove_file(&f.disk_path);
        }
    }
    Json(json!({"metadata": entry.tagged()})).into_response()
}

async fn get_current_account(headers: HeaderMap, body: Bytes) -> Response {
    let route = "users/get_current_account";
    // A Void argument: no body, or the JSON `null`.
    if !body.is_empty() {
        if let Err(resp) = rpc_arg::<Value>(&headers, &body, route) {
            return resp;
        }
        if body.as_ref() != b"null" {
            return bad_input(route, "request body: expected null, got value");
        }
    }
    Json(json!({
        "account_id": ACCOUNT_ID,
        "name": {
            "given_name": "Test",
            "surname": "User",
            "familiar_name": "Test",
            "display_name": "Test User",
            "abbreviated_name": "TU",
        },
        "email": "offsite-test@example.com",
        "email_verified": true,
        "disabled": false,
        "country": "US",
        "locale": "en",
        "referral_link": "https://db.tt/fake",
        "is_paired": false,
        "account_type": {".tag": "basic"},
        "root_info": {
            ".tag": "user",
            "root_namespace_id": "3235641",
            "home_namespace_id": "3235641",
        },
    }))
    .into_response()
}

/// Parse the JSON body of an RPC endpoint.
fn rpc_arg<A: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    route: &str,
) -> Result<A, Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let base = ct.split(';').next().unwrap_or_default().trim();
    if !base.eq_ignore_ascii_case("application/json")
        && !ct.eq_ignore_ascii_case("text/plain; charset=dropbox-cors-hack")
    {
        return Err(bad_input(
            route,
            &format!(
                "Bad HTTP \"Content-Type\" header: {ct:?}.  Expecting one of \
                 \"application/json\", \"application/json; charset=utf-8\", \
                 \"text/plain; charset=dropbox-cors-hack\"."
            ),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        bad_input(
            route,
            &format!("request body: could not decode input as JSON: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Paths in the user's Dropbox: "/a/b", no empty components, no trailing "/".
fn check_path(path: &str) -> Result<(), ()> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(());
    };
    if rest.is_empty() || rest.split('/').any(str::is_empty) {
        return Err(());
    }
    Ok(())
}

/// ("/a/b", "c") for "/a/b/c"; ("", "c") for "/c".
fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Proper ancestors of a lower-cased path, shortest first, root excluded.
fn ancestors(path: &str) -> Vec<String> {
    let (parent, _) = split_parent(path);
    let mut out = Vec::new();
    let mut acc = String::new();
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        acc.push('/');
        acc.push_str(part);
        out.push(acc.clone());
    }
    out
}

/// The tag of a void union member, serialized either as "tag" or {".tag": "tag"}.
fn tag_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get(".tag").and_then(Value::as_str),
        _ => None,
    }
}

/// "a/b/c" from {".tag":"a","a":{".tag":"b","b":{".tag":"c"}}}.
fn summary_of(error: &Value) -> String {
    let mut parts = Vec::new();
    let mut cur = error;
    while let Some(tag) = cur.get(".tag").and_then(Value::as_str) {
        parts.push(tag.to_owned());
        match cur.get(tag) {
            Some(next) if next.is_object() => cur = next,
            _ => break,
        }
    }
    parts.join("/")
}

/// HTTP 409 with Dropbox's endpoint-specific error body.
fn conflict(summary: &str, error: Value) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({"error_summary": format!("{summary}/.."), "error": error})),
    )
        .into_response()
}

/// 409 for a `LookupError` nested under `field` (e.g. path/not_found).
fn lookup_path_error(field: &str, tag: &str) -> Response {
    conflict(
        &format!("{field}/{tag}"),
        json!({".tag": field, field: {".tag": tag}}),
    )
}

/// 401 with an `AuthError` tag.
fn token_error(tag: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error_summary": format!("{tag}/.."), "error": {".tag": tag}})),
    )
        .into_response()
}

/// Dropbox answers malformed requests with a plain-text 400.
fn bad_input(route: &str, msg: &str) -> Response {
    text(
        StatusCode::BAD_REQUEST,
        &format!("Error in call to API function \"{route}\": {msg}"),
    )
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

fn route_name(path: &str) -> String {
    path.trim_start_matches("/2/")
        .trim_start_matches('/')
        .to_owned()
}

/// Dropbox timestamps: "2015-05-12T15:50:38Z" (seconds, UTC).
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn truncate_to_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc())
        .map_err(|_| format!("commit.client_modified: {s:?} is not of the form %Y-%m-%dT%H:%M:%SZ"))
}
