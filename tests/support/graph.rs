//! `FakeGraph`: an in-process fake of the Microsoft Graph routes a SharePoint destination uses,
//! for integration tests only (never production code).
//!
//! Follows Microsoft's documentation (`driveitem-createuploadsession`, `driveitem-get`,
//! `driveitem-list-children`, `driveitem-get-content`, `driveitem-delete`,
//! `site-getbypath`, `drive-list`, the v2.0 token endpoint): the client-credentials token
//! endpoint checks tenant, app and secret (or a certificate's RS256 client assertion: `x5t`,
//! signature, audience, issuer, validity) and answers refusals with Azure AD's body
//! (`error`, `error_description` starting `AADSTS…:`, `error_codes`); Graph errors are
//! `{"error": {"code", "message", "innerError"}}`; upload sessions live at their own URL
//! (a `tempauth` capability in the query, no Authorization header allowed) and enforce
//! Content-Range, fragments that are multiples of 320 KiB below 60 MiB except the last, in
//! order (416 otherwise), 202 with `nextExpectedRanges`, and a final 201/200 with the driveItem
//! carrying `file.hashes.quickXorHash` (computed here, independently of offsite's code).
//! Downloads redirect (302) to a pre-authenticated URL that honours Range.
//!
//! File contents live in temporary files, never whole in memory.

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::fault::{ConnHandle, Countdown, ServerGuard, random_token, serve};

pub const TENANT_ID: &str = "9f2c5d8e-0000-4c1b-a111-contoso00001";
pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";
pub const CLIENT_ID: &str = "3b1f0c2a-7e55-4d0e-9a31-offsite00001";
pub const CLIENT_SECRET: &str = "Xq8~fake.graph.client-secret_0123456789";
pub const HOST: &str = "contoso.sharepoint.com";
pub const SITE_PATH: &str = "/sites/Backups";
/// A throwaway key for the certificate sign-in tests, and its certificate's SHA-1 thumbprint.
pub const TEST_CERT_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/graph-test-key.pem"
);
pub const TEST_CERT_THUMBPRINT: &str =
    "D7:0D:83:55:AC:C3:28:60:61:04:D8:A6:A0:A0:72:9A:03:EB:A3:22";
/// 320 KiB.
pub const FRAGMENT: u64 = 327_680;
pub const MAX_FRAGMENT: u64 = 60 * 1024 * 1024;

/// Something the next fragment PUT does instead of what it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFault {
    /// Answered with this status and a Graph error body; nothing stored.
    Status(u16),
    /// 429 or 503 with `Retry-After`.
    Throttle { status: u16, secs: u64 },
    /// Half the body is read, then the connection is cut; nothing stored.
    Cut,
    /// Stored, then answered 500.
    AcceptThenFail,
    /// 404: the session is gone.
    Gone,
}

/// Something the next Graph API request (not a token or upload-URL request) does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    Throttle { status: u16, secs: u64 },
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub folder: bool,
    pub size: u64,
    pub quick_xor_hash: String,
    /// Changes whenever the content is written.
    pub etag: String,
    content: Option<PathBuf>,
}

struct UploadSession {
    drive: String,
    parent: String,
    name: String,
    conflict: String,
    size: u64,
    tempauth: String,
    /// Bytes held, in order: the next expected byte.
    received: u64,
    file: PathBuf,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, Instant>,
    token_ttl: u64,
    token_requests: u64,
    items: HashMap<String, Item>,
    sessions: HashMap<String, UploadSession>,
    /// Bytes of fragments the fake kept.
    received: u64,
    /// (start, length) of every fragment kept, in order.
    fragments: Vec<(u64, u64)>,
    upload_faults: Countdown<UploadFault>,
    api_faults: Countdown<ApiFault>,
    corrupt_commits: u32,
    /// Fragment PUTs that carried an Authorization header.
    authorized_fragments: u64,
    quota: Option<u64>,
    /// The registered certificate: its public key and `x5t`.
    certificate: Option<(rsa::RsaPublicKey, String)>,
    assertion_sign_ins: u64,
    page_size: usize,
    counter: u64,
    /// The Azure VM's managed identities as IMDS knows them.
    identity: Identity,
}

/// What the fake Instance Metadata Service hands out tokens for.
#[derive(Default)]
struct Identity {
    system_assigned: bool,
    /// Client ids of user-assigned identities.
    user_assigned: Vec<String>,
    /// The tenant the identities belong to (the token's `tid`).
    tenant: String,
    requests: u64,
}

struct Shared {
    base: Mutex<String>,
    dir: tempfile::TempDir,
    inner: Mutex<Inner>,
}

type AppState = Arc<Shared>;

const SITE_ID: &str = "contoso.sharepoint.com,2C712604-1370-44E7-A1F5-426573FDA80A,2D2244C3-251A-49EA-93A8-39E1C3A060FE";
const DRIVE_ID: &str = "b!BCZxLHATu1q-backups-documents-drive";
const ARCHIVE_DRIVE_ID: &str = "b!BCZxLHATu1q-backups-archive-drive";
const ROOT_ID: &str = "01BYE5RZ56Y2GOVW7725BZO354PWSELRRZ";
const ARCHIVE_ROOT_ID: &str = "01BYE5RZ5ARCHIVEROOT0000000000000";

pub struct FakeGraph {
    shared: AppState,
    server: ServerGuard,
}

impl FakeGraph {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            base: Mutex::new(String::new()),
            dir: tempfile::tempdir().unwrap(),
            inner: Mutex::new(Inner {
                token_ttl: 3599,
                page_size: 200,
                ..Default::default()
            }),
        });
        {
            let mut inner = shared.inner.lock().unwrap();
            for (id, drive) in [(ROOT_ID, DRIVE_ID), (ARCHIVE_ROOT_ID, ARCHIVE_DRIVE_ID)] {
                inner.items.insert(
                    id.into(),
                    Item {
                        id: id.into(),
                        name: "root".into(),
                        parent: None,
                        folder: true,
                        size: 0,
                        quick_xor_hash: String::new(),
                        etag: format!("\"{drive}\""),
                        content: None,
                    },
                );
            }
        }
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = serve(router).await;
        *shared.base.lock().unwrap() = server.base_url();
        FakeGraph { shared, server }
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }
    pub fn login_url(&self) -> String {
        format!("{}/login", self.base_url())
    }
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base_url())
    }
    pub fn site(&self) -> String {
        format!("https://{HOST}{SITE_PATH}")
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// Every access token issued so far stops working (Graph answers 401).
    pub fn expire_tokens(&self) {
        self.inner().tokens.clear();
    }
    pub fn set_token_ttl(&self, secs: u64) {
        self.inner().token_ttl = secs;
    }
    pub fn token_requests(&self) -> u64 {
        self.inner().token_requests
    }
    /// Bytes of fragments kept (a cut or refused fragment is not kept).
    pub fn bytes_received(&self) -> u64 {
        self.inner().received
    }
    /// (start, length) of every fragment kept.
    pub fn fragments(&self) -> Vec<(u64, u64)> {
        self.inner().fragments.clone()
    }
    pub fn authorized_fragments(&self) -> u64 {
        self.inner().authorized_fragments
    }
    pub fn open_sessions(&self) -> usize {
        self.inner().sessions.len()
    }
    /// Every upload session is forgotten: its URL answers 404.
    pub fn lose_sessions(&self) {
        self.inner().sessions.clear();
    }
    /// The `n`-th fragment PUT from now misbehaves.
    pub fn upload_fault(&self, n: u64, fault: UploadFault) {
        self.inner().upload_faults.at(n, fault);
    }
    /// The `n`-th Graph API request from now misbehaves.
    pub fn api_fault(&self, n: u64, fault: ApiFault) {
        self.inner().api_faults.at(n, fault);
    }
    /// The next commit stores one byte flipped (its QuickXorHash is of what is stored).
    pub fn corrupt_next_commit(&self) {
        self.inner().corrupt_commits += 1;
    }
    /// IMDS's token endpoint (`identity_endpoint`).
    pub fn identity_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.base_url())
    }
    /// The VM gets a system-assigned identity in `tenant`.
    pub fn assign_system_identity(&self, tenant: &str) {
        let mut inner = self.inner();
        inner.identity.system_assigned = true;
        inner.identity.tenant = tenant.into();
    }
    /// The VM gets the user-assigned identity `client_id` in `tenant`.
    pub fn assign_user_identity(&self, client_id: &str, tenant: &str) {
        let mut inner = self.inner();
        inner.identity.user_assigned.push(client_id.into());
        inner.identity.tenant = tenant.into();
    }
    pub fn identity_requests(&self) -> u64 {
        self.inner().identity.requests
    }
    pub fn set_quota(&self, bytes: Option<u64>) {
        self.inner().quota = bytes;
    }
    /// Registers the certificate of `TEST_CERT_KEY` with the app (client assertions accepted).
    pub fn register_test_certificate(&self) {
        use rsa::pkcs8::DecodePrivateKey;
        let key =
            rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(TEST_CERT_KEY).unwrap())
                .unwrap();
        let hex: String = TEST_CERT_THUMBPRINT.chars().filter(|c| *c != ':').collect();
        let bytes: Vec<u8> = (0..20)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        self.inner().certificate = Some((key.to_public_key(), x5t));
    }
    /// Sign-ins with a certificate's assertion that were accepted.
    pub fn assertion_sign_ins(&self) -> u64 {
        self.inner().assertion_sign_ins
    }
    pub fn set_page_size(&self, n: usize) {
        self.inner().page_size = n.max(1);
    }

    /// The item at `path` in the Documents library ("Backups/x.tar"), if any.
    pub fn item(&self, path: &str) -> Option<Item> {
        let inner = self.inner();
        find_path(&inner, ROOT_ID, path.trim_matches('/')).cloned()
    }
    /// Names directly in the folder at `path`.
    pub fn names_in(&self, path: &str) -> Vec<String> {
        let inner = self.inner();
        let Some(folder) = find_path(&inner, ROOT_ID, path.trim_matches('/')) else {
            return Vec::new();
        };
        let mut names: Vec<String> = children(&inner, &folder.id)
            .into_iter()
            .map(|i| i.name.clone())
            .collect();
        names.sort();
        names
    }
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        let item = self.item(path)?;
        std::fs::read(item.content?).ok()
    }
    /// Puts a file at `path` (its folders must exist).
    pub fn put_file(&self, path: &str, bytes: &[u8]) {
        let path = path.trim_matches('/');
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let file = self.shared.dir.path().join(random_token(16));
        std::fs::write(&file, bytes).unwrap();
        let mut inner = self.inner();
        let parent = find_path(&inner, ROOT_ID, parent).unwrap().id.clone();
        let id = new_id(&mut inner);
        inner.items.insert(
            id.clone(),
            Item {
                id,
                name: name.into(),
                parent: Some(parent),
                folder: false,
                size: bytes.len() as u64,
                quick_xor_hash: quick_xor_hash(bytes),
                etag: format!("\"{}\"", random_token(12)),
                content: Some(file),
            },
        );
    }
}

fn new_id(inner: &mut Inner) -> String {
    inner.counter += 1;
    format!("01BYE5RZ{:026}", inner.counter)
}

fn children<'a>(inner: &'a Inner, parent: &str) -> Vec<&'a Item> {
    let mut out: Vec<&Item> = inner
        .items
        .values()
        .filter(|i| i.parent.as_deref() == Some(parent))
        .collect();
    out.sort_by_key(|a| a.name.to_lowercase());
    out
}

fn child<'a>(inner: &'a Inner, parent: &str, name: &str) -> Option<&'a Item> {
    // SharePoint names are case-insensitive.
    inner
        .items
        .values()
        .find(|i| i.parent.as_deref() == Some(parent) && i.name.eq_ignore_ascii_case(name))
}

fn find_path<'a>(inner: &'a Inner, root: &str, path: &str) -> Option<&'a Item> {
    let mut item = inner.items.get(root)?;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        item = child(inner, &item.id, seg)?;
    }
    Some(item)
}

fn path_of(inner: &Inner, item: &Item) -> String {
    let mut names = Vec::new();
    let mut at = item.parent.clone();
    while let Some(id) = at {
        let Some(p) = inner.items.get(&id) else { break };
        if p.parent.is_some() {
            names.push(p.name.clone());
        }
        at = p.parent.clone();
    }
    names.reverse();
    names.join("/")
}

fn drive_root(drive: &str) -> Option<&'static str> {
    match drive {
        DRIVE_ID => Some(ROOT_ID),
        ARCHIVE_DRIVE_ID => Some(ARCHIVE_ROOT_ID),
        _ => None,
    }
}

// -- QuickXorHash, written from Microsoft's C# reference (three 64-bit cells) ------------------

struct QuickXor {
    data: [u64; 3],
    length: u64,
    shift_so_far: usize,
}

impl QuickXor {
    fn new() -> Self {
        QuickXor {
            data: [0; 3],
            length: 0,
            shift_so_far: 0,
        }
    }

    fn update(&mut self, array: &[u8]) {
        const WIDTH: usize = 160;
        const SHIFT: usize = 11;
        let mut vector_index = self.shift_so_far / 64;
        let mut vector_offset = self.shift_so_far % 64;
        let iterations = array.len().min(WIDTH);
        for i in 0..iterations {
            let last = vector_index == 2;
            let bits = if last { 32 } else { 64 };
            let mut xored: u8 = 0;
            let mut j = i;
            while j < array.len() {
                xored ^= array[j];
                j += WIDTH;
            }
            if vector_offset <= bits - 8 {
                self.data[vector_index] ^= (xored as u64) << vector_offset;
            } else {
                let next = if last { 0 } else { vector_index + 1 };
                let low = bits - vector_offset;
                self.data[vector_index] ^= (xored as u64) << vector_offset;
                self.data[next] ^= (xored as u64) >> low;
            }
            vector_offset += SHIFT;
            while vector_offset >= bits {
                vector_index = if last { 0 } else { vector_index + 1 };
                vector_offset -= bits;
            }
        }
        self.shift_so_far = (self.shift_so_far + SHIFT * (array.len() % WIDTH)) % WIDTH;
        self.length += array.len() as u64;
    }

    fn finish(&self) -> String {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.data[0].to_le_bytes());
        out[8..16].copy_from_slice(&self.data[1].to_le_bytes());
        out[16..].copy_from_slice(&self.data[2].to_le_bytes()[..4]);
        for (o, l) in out[12..].iter_mut().zip(self.length.to_le_bytes()) {
            *o ^= l;
        }
        STANDARD.encode(out)
    }
}

pub fn quick_xor_hash(bytes: &[u8]) -> String {
    let mut h = QuickXor::new();
    h.update(bytes);
    h.finish()
}

fn hash_file(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut h = QuickXor::new();
    let mut f = std::fs::File::open(path).unwrap();
    // A multiple of 160 so every read keeps the alignment simple.
    let mut buf = vec![0u8; 160 * 8192];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish()
}

// -- answers ---------------------------------------------------------------------------------

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": random_token(8),
                "client-request-id": random_token(8),
            }
        }
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The resource could not be found.",
    )
}

fn throttled(status: u16, secs: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let (code, message) = if status == StatusCode::TOO_MANY_REQUESTS {
        ("activityLimitReached", "The request has been throttled")
    } else {
        (
            "serviceNotAvailable",
            "The service is temporarily unavailable",
        )
    };
    let mut r = graph_error(status, code, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
    r
}

fn json_ok(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn aad_error(status: StatusCode, error: &str, code: u64, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            random_token(8), random_token(8), chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
        ),
        "error_codes": [code],
        "timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
        "trace_id": random_token(8),
        "correlation_id": random_token(8),
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    json_ok(status, body)
}

fn item_json(shared: &Shared, inner: &Inner, item: &Item, drive: &str) -> Value {
    let base = shared.base.lock().unwrap().clone();
    let parent_path = path_of(inner, item);
    let mut v = json!({
        "id": item.id,
        "name": item.name,
        "size": item.size,
        "eTag": item.etag,
        "cTag": item.etag,
        "createdDateTime": "2026-12-01T00:00:00Z",
        "lastModifiedDateTime": "2026-12-01T00:00:00Z",
        "webUrl": format!("https://{HOST}{SITE_PATH}/Shared%20Documents/{}", item.name),
        "parentReference": {
            "driveType": "documentLibrary",
            "driveId": drive,
            "id": item.parent,
            "path": format!("/drives/{drive}/root:/{parent_path}"),
        },
        "@microsoft.graph.downloadUrl": format!("{base}/download/{}?tempauth={}", item.id, random_token(24)),
    });
    if item.folder {
        v["folder"] = json!({"childCount": children(inner, &item.id).len()});
    } else {
        v["file"] = json!({
            "mimeType": "application/x-tar",
            "hashes": {"quickXorHash": item.quick_xor_hash},
        });
    }
    v
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// -- routing ---------------------------------------------------------------------------------

async fn handle(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/login/") {
        return token(&shared, rest, request).await;
    }
    if path == "/metadata/identity/oauth2/token" {
        return identity_token(&shared, &query, request.headers());
    }
    if let Some(id) = path.strip_prefix("/upload/") {
        let id = id.to_string();
        return upload(&shared, &id, &query, &conn, request).await;
    }
    if let Some(id) = path.strip_prefix("/download/") {
        let id = id.to_string();
        return download(&shared, &id, request.headers()).await;
    }
    let Some(api) = path.strip_prefix("/v1.0/") else {
        return not_found();
    };
    // The bearer token.
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let fault = {
        let mut inner = shared.inner.lock().unwrap();
        let valid = bearer
            .as_ref()
            .and_then(|t| inner.tokens.get(t))
            .is_some_and(|exp| Instant::now() < *exp);
        if !valid {
            let message = if bearer.is_none() {
                "Access token is empty."
            } else {
                "Access token has expired or is not yet valid."
            };
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            );
        }
        inner.api_faults.tick()
    };
    match fault {
        Some(ApiFault::Throttle { status, secs }) => return throttled(status, secs),
        Some(ApiFault::Status(status)) => {
            return graph_error(
                StatusCode::from_u16(status).unwrap(),
                "generalException",
                "An unspecified error has occurred.",
            );
        }
        None => {}
    }
    let segments: Vec<String> = api.split('/').map(percent_decode).collect();
    let method = request.method().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["sites", host, rest @ ..] => site(host, rest),
        ["drives", drive, rest @ ..] => {
            let Some(root) = drive_root(drive) else {
                return not_found();
            };
            drive_route(&shared, &method, drive, root, rest, &query, body)
        }
        _ => graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "Invalid request"),
    }
}

async fn token(shared: &Shared, rest: &str, request: Request) -> Response {
    let Some(tenant) = rest.strip_suffix("/oauth2/v2.0/token") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tenant = percent_decode(tenant);
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let mut inner = shared.inner.lock().unwrap();
    inner.token_requests += 1;
    if tenant != TENANT_ID && tenant != TENANT_DOMAIN {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if field("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != CLIENT_ID {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory 'Contoso'. This can happen if the application has not been installed by the administrator of the tenant.",
                field("client_id")
            ),
        );
    }
    if field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        let base = shared.base.lock().unwrap().clone();
        let audience = format!("{base}/login/{tenant}/oauth2/v2.0/token");
        if let Err(refused) = check_assertion(&inner, field("client_assertion"), &audience) {
            return refused;
        }
        inner.assertion_sign_ins += 1;
    } else if field("client_secret") != CLIENT_SECRET {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
            ),
        );
    }
    if field("scope") != "https://graph.microsoft.com/.default" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let token = format!("eyJ0eXAiOiJKV1Qi.{}", random_token(40));
    let ttl = inner.token_ttl;
    inner
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    json_ok(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}),
    )
}

/// The Azure Instance Metadata Service's managed-identity token endpoint, as documented
/// ("How to use managed identities for Azure resources on an Azure VM to acquire an access
/// token"): `GET` with `Metadata: true`, `api-version` and `resource`, optionally `client_id`;
/// the answer's numbers are strings; refusals are 400 `invalid_request` bodies.
fn identity_token(shared: &Shared, query: &str, headers: &axum::http::HeaderMap) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    inner.identity.requests += 1;
    let refuse = |description: &str| {
        json_ok(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": description}),
        )
    };
    if headers.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return refuse("Required metadata header not specified");
    }
    if headers.contains_key("X-Forwarded-For") {
        return refuse("Request contains X-Forwarded-For header");
    }
    if query_param(query, "api-version").is_none() {
        return refuse("Required query variable 'api-version' is missing");
    }
    let Some(resource) = query_param(query, "resource") else {
        return refuse("Required query variable 'resource' is missing");
    };
    if resource.trim_end_matches('/') != "https://graph.microsoft.com" {
        return json_ok(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_resource",
                   "error_description": format!("AADSTS500011: The resource principal named {resource} was not found in the tenant.")}),
        );
    }
    let client_id = query_param(query, "client_id");
    let known = match &client_id {
        Some(id) => inner.identity.user_assigned.iter().any(|u| u == id),
        None => inner.identity.system_assigned,
    };
    if !known {
        return refuse("Identity not found");
    }
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        b64(json!({"typ": "JWT", "alg": "RS256"})),
        b64(
            json!({"aud": "https://graph.microsoft.com", "tid": inner.identity.tenant,
                   "idtyp": "app", "oid": random_token(12)})
        ),
        random_token(40)
    );
    let ttl = inner.token_ttl;
    inner
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json_ok(
        StatusCode::OK,
        json!({
            "access_token": token,
            "client_id": client_id.unwrap_or_else(|| "5f8c1a2b-system-assigned".into()),
            "expires_in": ttl.to_string(),
            "expires_on": (now + ttl).to_string(),
            "ext_expires_in": ttl.to_string(),
            "not_before": now.to_string(),
            "resource": "https://graph.microsoft.com",
            "token_type": "Bearer",
        }),
    )
}

/// A client assertion as Azure AD checks it.
fn check_assertion(inner: &Inner, jwt: &str, audience: &str) -> Result<(), Response> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rsa::signature::Verifier;
    let invalid = |what: &str| {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            &format!("JWT token is invalid or malformed: {what}."),
        )
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, body, signature] = parts[..] else {
        return Err(invalid("not three parts"));
    };
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(header), Some(claims)) = (decode(head), decode(body)) else {
        return Err(invalid("unreadable header or claims"));
    };
    let refused_key = || {
        aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            &format!(
                "Client assertion failed signature validation. The certificate with identifier used to sign the client assertion is not registered on application '{CLIENT_ID}'."
            ),
        )
    };
    let Some((public, x5t)) = &inner.certificate else {
        return Err(refused_key());
    };
    if header["alg"] != "RS256" || header["x5t"].as_str() != Some(x5t.as_str()) {
        return Err(refused_key());
    }
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public.clone());
    let valid = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| rsa::pkcs1v15::Signature::try_from(s.as_slice()).ok())
        .is_some_and(|s| {
            verifier
                .verify(format!("{head}.{body}").as_bytes(), &s)
                .is_ok()
        });
    if !valid {
        return Err(refused_key());
    }
    if claims["aud"].as_str() != Some(audience) {
        return Err(invalid("the audience is not this token endpoint"));
    }
    if claims["iss"] != CLIENT_ID || claims["sub"] != CLIENT_ID || claims["jti"].as_str().is_none()
    {
        return Err(invalid("iss and sub must be the client id, with a jti"));
    }
    let now = chrono::Utc::now().timestamp();
    let (nbf, exp) = (
        claims["nbf"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if nbf > now + 300 || exp < now - 300 || exp - nbf > 86_400 {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

fn site(host: &str, rest: &[&str]) -> Response {
    if host == SITE_ID {
        return match rest {
            ["drives"] => {
                let base = format!("https://{HOST}{SITE_PATH}");
                json_ok(
                    StatusCode::OK,
                    json!({"value": [
                        {"id": DRIVE_ID, "name": "Documents", "driveType": "documentLibrary",
                         "webUrl": format!("{base}/Shared%20Documents")},
                        {"id": ARCHIVE_DRIVE_ID, "name": "Archive", "driveType": "documentLibrary",
                         "webUrl": format!("{base}/Archive")},
                    ]}),
                )
            }
            _ => not_found(),
        };
    }
    // /sites/{host}:/sites/{name}
    let Some(host) = host.strip_suffix(':') else {
        return not_found();
    };
    let path = format!("/{}", rest.join("/"));
    let path = path.trim_end_matches(':');
    if host.eq_ignore_ascii_case(HOST) && path.eq_ignore_ascii_case(SITE_PATH) {
        return json_ok(
            StatusCode::OK,
            json!({"id": SITE_ID, "name": "Backups", "displayName": "Backups",
                   "webUrl": format!("https://{HOST}{SITE_PATH}")}),
        );
    }
    graph_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "Requested site could not be found",
    )
}

/// Where a drive route points: an item (by id or path) and what to do with it.
enum Target {
    Item(String),
    /// `parent`, then a path under it that may not exist yet.
    Path {
        parent: String,
        path: String,
    },
}

fn drive_route(
    shared: &Shared,
    method: &Method,
    drive: &str,
    root: &str,
    rest: &[&str],
    query: &str,
    body: Value,
) -> Response {
    // ["root"], ["root", action], ["root:", a, "b:", action], ["root:", a, "b"],
    // ["items", id], ["items", id, action], ["items", "id:", "name:", action]
    let (target, action): (Target, Option<&str>) = match rest {
        ["root"] => (Target::Item(root.into()), None),
        ["root", action] => (Target::Item(root.into()), Some(*action)),
        ["root:", path @ ..] | ["items", _, path @ ..]
            if rest[0] == "root:" || rest[1].ends_with(':') =>
        {
            let parent = if rest[0] == "root:" {
                root.to_string()
            } else {
                rest[1].trim_end_matches(':').to_string()
            };
            let mut parts = Vec::new();
            let mut action = None;
            for (i, p) in path.iter().enumerate() {
                if let Some(last) = p.strip_suffix(':') {
                    parts.push(last.to_string());
                    action = path.get(i + 1).copied();
                    break;
                }
                parts.push((*p).to_string());
            }
            (
                Target::Path {
                    parent,
                    path: parts.join("/"),
                },
                action,
            )
        }
        ["items", id] => (Target::Item((*id).into()), None),
        ["items", id, action] => (Target::Item((*id).into()), Some(*action)),
        _ => {
            return graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "Invalid request");
        }
    };
    let mut inner = shared.inner.lock().unwrap();
    let resolved: Option<Item> = match &target {
        Target::Item(id) => inner.items.get(id).cloned(),
        Target::Path { parent, path } => find_path(&inner, parent, path).cloned(),
    };
    match (method.as_str(), action) {
        ("GET", None) => match resolved {
            Some(item) => json_ok(StatusCode::OK, item_json(shared, &inner, &item, drive)),
            None => not_found(),
        },
        ("DELETE", None) => match resolved {
            Some(item) if item.parent.is_some() => {
                remove_tree(&mut inner, &item.id);
                StatusCode::NO_CONTENT.into_response()
            }
            Some(_) => graph_error(
                StatusCode::FORBIDDEN,
                "accessDenied",
                "The root cannot be deleted",
            ),
            None => not_found(),
        },
        ("GET", Some("children")) => {
            let Some(folder) = resolved.filter(|i| i.folder) else {
                return not_found();
            };
            let top = query_param(query, "$top")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(200)
                .min(inner.page_size);
            let skip = query_param(query, "$skiptoken")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(0);
            let all: Vec<Item> = children(&inner, &folder.id).into_iter().cloned().collect();
            let page: Vec<Value> = all
                .iter()
                .skip(skip)
                .take(top)
                .map(|i| item_json(shared, &inner, i, drive))
                .collect();
            let mut v = json!({"value": page});
            if skip + top < all.len() {
                let base = shared.base.lock().unwrap().clone();
                v["@odata.nextLink"] = json!(format!(
                    "{base}/v1.0/drives/{drive}/items/{}/children?$top={top}&$skiptoken={}",
                    folder.id,
                    skip + top
                ));
            }
            json_ok(StatusCode::OK, v)
        }
        ("POST", Some("children")) => {
            let Some(folder) = resolved.filter(|i| i.folder) else {
                return not_found();
            };
            let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "A name is required",
                );
            };
            if body.get("folder").is_none() {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "Only folders are created here",
                );
            }
            if child(&inner, &folder.id, name).is_some() {
                return graph_error(
                    StatusCode::CONFLICT,
                    "nameAlreadyExists",
                    "The specified item name already exists.",
                );
            }
            let id = new_id(&mut inner);
            let item = Item {
                id: id.clone(),
                name: name.into(),
                parent: Some(folder.id.clone()),
                folder: true,
                size: 0,
                quick_xor_hash: String::new(),
                etag: format!("\"{}\"", random_token(12)),
                content: None,
            };
            inner.items.insert(id, item.clone());
            json_ok(StatusCode::CREATED, item_json(shared, &inner, &item, drive))
        }
        ("GET", Some("content")) => match resolved.filter(|i| !i.folder) {
            Some(item) => {
                let base = shared.base.lock().unwrap().clone();
                let location = format!("{base}/download/{}?tempauth={}", item.id, random_token(24));
                (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
            }
            None => not_found(),
        },
        ("PUT", Some("content")) => {
            // Simple upload of a small file (an empty one here).
            let Target::Path { parent, path } = &target else {
                return graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "Invalid request");
            };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            let Some(folder) = find_path(&inner, parent, dir).filter(|f| f.folder).cloned() else {
                return not_found();
            };
            let conflict = query_param(query, "@microsoft.graph.conflictBehavior")
                .unwrap_or_else(|| "replace".into());
            let file = shared.dir.path().join(random_token(16));
            std::fs::write(&file, b"").unwrap();
            commit(shared, &mut inner, drive, &folder.id, name, &conflict, file)
        }
        ("POST", Some("createUploadSession")) => {
            let Target::Path { parent, path } = &target else {
                return graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "Invalid request");
            };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            let Some(folder) = find_path(&inner, parent, dir).filter(|f| f.folder).cloned() else {
                return not_found();
            };
            let item = &body["item"];
            // Graph's default is fail.
            let conflict = item["@microsoft.graph.conflictBehavior"]
                .as_str()
                .unwrap_or("fail")
                .to_string();
            if !matches!(conflict.as_str(), "fail" | "replace" | "rename") {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "Invalid conflictBehavior",
                );
            }
            if conflict == "fail" && child(&inner, &folder.id, name).is_some() {
                return graph_error(
                    StatusCode::CONFLICT,
                    "nameAlreadyExists",
                    "The specified item name already exists.",
                );
            }
            let size = item["fileSize"].as_u64().or(body["fileSize"].as_u64());
            if let (Some(quota), Some(size)) = (inner.quota, size) {
                let used: u64 = inner.items.values().map(|i| i.size).sum();
                if used + size > quota {
                    return graph_error(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "quotaLimitReached",
                        "Insufficient Space Available",
                    );
                }
            }
            let sid = random_token(32);
            let tempauth = format!("eyJ0eXAiOiJKV1Qi.{}", random_token(48));
            let file = shared.dir.path().join(format!("session-{sid}"));
            std::fs::write(&file, b"").unwrap();
            inner.sessions.insert(
                sid.clone(),
                UploadSession {
                    drive: drive.into(),
                    parent: folder.id.clone(),
                    name: name.into(),
                    conflict,
                    size: size.unwrap_or(0),
                    tempauth: tempauth.clone(),
                    received: 0,
                    file,
                },
            );
            let base = shared.base.lock().unwrap().clone();
            json_ok(
                StatusCode::OK,
                json!({
                    "uploadUrl": format!("{base}/upload/{sid}?guid='{sid}'&overwrite=False&rename=True&dc=0&tempauth={tempauth}"),
                    "expirationDateTime": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
                    "nextExpectedRanges": ["0-"],
                }),
            )
        }
        _ => graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "Invalid request"),
    }
}

fn remove_tree(inner: &mut Inner, id: &str) {
    let kids: Vec<String> = children(inner, id).iter().map(|i| i.id.clone()).collect();
    for k in kids {
        remove_tree(inner, &k);
    }
    if let Some(item) = inner.items.remove(id)
        && let Some(file) = item.content
    {
        let _ = std::fs::remove_file(file);
    }
}

/// Stores `file` as `name` in `parent`, as the conflict behaviour says.
fn commit(
    shared: &Shared,
    inner: &mut Inner,
    drive: &str,
    parent: &str,
    name: &str,
    conflict: &str,
    file: PathBuf,
) -> Response {
    if inner.corrupt_commits > 0 {
        inner.corrupt_commits -= 1;
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(middle) {
            *b ^= 0x5a;
        }
        std::fs::write(&file, bytes).unwrap();
    }
    let size = std::fs::metadata(&file).unwrap().len();
    let hash = hash_file(&file);
    let existing = child(inner, parent, name).cloned();
    let (status, name) = match (&existing, conflict) {
        (None, _) => (StatusCode::CREATED, name.to_string()),
        (Some(_), "fail") => {
            let _ = std::fs::remove_file(&file);
            return graph_error(
                StatusCode::CONFLICT,
                "nameAlreadyExists",
                "The specified item name already exists.",
            );
        }
        (Some(old), "replace") => {
            if old.folder {
                return graph_error(
                    StatusCode::CONFLICT,
                    "nameAlreadyExists",
                    "A folder with this name exists.",
                );
            }
            let item = inner.items.get_mut(&old.id).unwrap();
            if let Some(old_file) = item.content.replace(file) {
                let _ = std::fs::remove_file(old_file);
            }
            item.size = size;
            item.quick_xor_hash = hash;
            item.etag = format!("\"{}\"", random_token(12));
            let item = item.clone();
            return json_ok(StatusCode::OK, item_json(shared, inner, &item, drive));
        }
        (Some(_), _) => {
            // rename: "name 1.ext", "name 2.ext", …
            let (stem, ext) = match name.rsplit_once('.') {
                Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
                _ => (name.to_string(), String::new()),
            };
            let free = (1..)
                .map(|n| format!("{stem} {n}{ext}"))
                .find(|n| child(inner, parent, n).is_none())
                .unwrap();
            (StatusCode::CREATED, free)
        }
    };
    let id = new_id(inner);
    let item = Item {
        id: id.clone(),
        name,
        parent: Some(parent.into()),
        folder: false,
        size,
        quick_xor_hash: hash,
        etag: format!("\"{}\"", random_token(12)),
        content: Some(file),
    };
    inner.items.insert(id, item.clone());
    json_ok(status, item_json(shared, inner, &item, drive))
}

fn session_status(session: &UploadSession) -> Value {
    json!({
        "expirationDateTime": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
        "nextExpectedRanges": [format!("{}-", session.received)],
    })
}

async fn upload(
    shared: &Shared,
    sid: &str,
    query: &str,
    conn: &ConnHandle,
    request: Request,
) -> Response {
    let tempauth = query_param(query, "tempauth").unwrap_or_default();
    let method = request.method().clone();
    let headers = request.headers().clone();
    // Check the capability.
    {
        let inner = shared.inner.lock().unwrap();
        match inner.sessions.get(sid) {
            None => {
                return graph_error(
                    StatusCode::NOT_FOUND,
                    "itemNotFound",
                    "The upload session was not found or has expired.",
                );
            }
            Some(s) if s.tempauth != tempauth => {
                return graph_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "The tempauth token is invalid.",
                );
            }
            Some(_) => {}
        }
    }
    match method.as_str() {
        "GET" => {
            let inner = shared.inner.lock().unwrap();
            json_ok(StatusCode::OK, session_status(&inner.sessions[sid]))
        }
        "DELETE" => {
            let mut inner = shared.inner.lock().unwrap();
            if let Some(s) = inner.sessions.remove(sid) {
                let _ = std::fs::remove_file(s.file);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        "PUT" => put_fragment(shared, sid, &headers, conn, request.into_body()).await,
        _ => graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalidRequest",
            "Method not allowed",
        ),
    }
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "invalidRequest", message)
}

async fn put_fragment(
    shared: &Shared,
    sid: &str,
    headers: &HeaderMap,
    conn: &ConnHandle,
    body: Body,
) -> Response {
    let (fault, received, declared, file) = {
        let mut inner = shared.inner.lock().unwrap();
        if headers.contains_key(header::AUTHORIZATION) {
            inner.authorized_fragments += 1;
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Do not send an Authorization header to the upload URL.",
            );
        }
        let fault = inner.upload_faults.tick();
        let s = &inner.sessions[sid];
        (fault, s.received, s.size, s.file.clone())
    };
    let Some(range) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return bad_request("The Content-Range header is missing.");
    };
    let parsed = range.strip_prefix("bytes ").and_then(|r| {
        let (span, total) = r.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        Some((
            a.parse::<u64>().ok()?,
            b.parse::<u64>().ok()?,
            total.parse::<u64>().ok()?,
        ))
    });
    let Some((start, last, total)) = parsed.filter(|(a, b, t)| a <= b && b < t) else {
        return bad_request("The Content-Range header is malformed.");
    };
    let len = last - start + 1;
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length != Some(len) {
        return bad_request(
            "The Content-Range header length does not match the provided number of bytes.",
        );
    }
    if declared != 0 && total != declared {
        return bad_request("The Content-Range total does not match the declared file size.");
    }
    if len >= MAX_FRAGMENT {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalidRequest",
            "The fragment must be smaller than 60 MiB.",
        );
    }
    let is_last = last + 1 == total;
    if !is_last && !len.is_multiple_of(FRAGMENT) {
        return bad_request("Fragments must be a multiple of 320 KiB (327,680 bytes).");
    }
    if start != received {
        return graph_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalidRange",
            &format!("The uploaded fragment is not the next expected range; expected {received}-"),
        );
    }
    match fault {
        Some(UploadFault::Status(status)) => {
            drain(body).await;
            return graph_error(
                StatusCode::from_u16(status).unwrap(),
                "generalException",
                "An unspecified error has occurred.",
            );
        }
        Some(UploadFault::Throttle { status, secs }) => {
            drain(body).await;
            return throttled(status, secs);
        }
        Some(UploadFault::Gone) => {
            shared.inner.lock().unwrap().sessions.remove(sid);
            return graph_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "The upload session was not found or has expired.",
            );
        }
        _ => {}
    }
    // Receive into the session's file at `start`; an interrupted fragment is discarded whole.
    let cut_at = (fault == Some(UploadFault::Cut)).then_some(len / 2);
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .await
        .unwrap();
    f.seek(std::io::SeekFrom::Start(start)).await.unwrap();
    let mut got = 0u64;
    let mut stream = body.into_data_stream();
    let mut broken = false;
    while let Some(frame) = stream.next().await {
        let Ok(data) = frame else {
            broken = true;
            break;
        };
        got += data.len() as u64;
        if got > len {
            broken = true;
            break;
        }
        f.write_all(&data).await.unwrap();
        if cut_at.is_some_and(|c| got >= c) {
            f.set_len(start).await.unwrap();
            conn.kill();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    f.flush().await.unwrap();
    if broken || got != len {
        f.set_len(start).await.unwrap();
        return bad_request("The request body was shorter than its Content-Length.");
    }
    drop(f);
    let mut inner = shared.inner.lock().unwrap();
    let Some(session) = inner.sessions.get_mut(sid) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The upload session was not found or has expired.",
        );
    };
    session.received = start + len;
    inner.received += len;
    inner.fragments.push((start, len));
    if fault == Some(UploadFault::AcceptThenFail) {
        if is_last {
            // Committed, answer lost.
            let s = inner.sessions.remove(sid).unwrap();
            let _ = commit(
                shared,
                &mut inner,
                &s.drive,
                &s.parent,
                &s.name,
                &s.conflict,
                s.file,
            );
        }
        return graph_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generalException",
            "An unspecified error has occurred.",
        );
    }
    if !is_last {
        let status = session_status(&inner.sessions[sid]);
        return json_ok(StatusCode::ACCEPTED, status);
    }
    let s = inner.sessions.remove(sid).unwrap();
    commit(
        shared,
        &mut inner,
        &s.drive,
        &s.parent,
        &s.name,
        &s.conflict,
        s.file,
    )
}

async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

async fn download(shared: &Shared, id: &str, headers: &HeaderMap) -> Response {
    let (file, size) = {
        let inner = shared.inner.lock().unwrap();
        match inner.items.get(id) {
            Some(Item {
                content: Some(file),
                size,
                ..
            }) => (file.clone(), *size),
            _ => return not_found(),
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            let a = a.parse::<u64>().ok()?;
            let b = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse::<u64>().ok()?
            };
            Some((a, b.min(size.saturating_sub(1))))
        });
    let mut f = tokio::fs::File::open(&file).await.unwrap();
    match range {
        Some((a, _)) if a >= size => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response(),
        Some((a, b)) => {
            f.seek(std::io::SeekFrom::Start(a)).await.unwrap();
            let stream = tokio_util::io::ReaderStream::new(f.take(b - a + 1));
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}")),
                    (header::CONTENT_LENGTH, (b - a + 1).to_string()),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
        None => (
            StatusCode::OK,
            [(header::CONTENT_LENGTH, size.to_string())],
            Body::from_stream(tokio_util::io::ReaderStream::new(f)),
        )
            .into_response(),
    }
}
