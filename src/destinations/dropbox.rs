//! A small typed client for the few Dropbox API v2 routes offsite needs: the OAuth2 code flow
//! with PKCE and refresh tokens, sequential upload sessions, `list_folder` and `delete_v2`.
//!
//! Not the `dropbox-sdk` crate: it hard-codes the hosts (every test here talks to a local fake)
//! and is ~218k lines for a handful of routes.
//!
//! Every failure comes back as a [`TransferError`] already classified for the retry decision,
//! so callers never look at HTTP statuses or Dropbox's `.tag` trees.
//!
//! Credentials: the refresh token lives in `token_file` (JSON, mode 0600, replaced atomically);
//! access tokens live only in memory and are renewed before they expire. Tokens and the app
//! secret never appear in logs or error messages.
//!
//! Timeouts: connecting is bounded by the `reqwest::Client` (see [`http_client`]), RPC and
//! token calls by a total timeout, uploads by a no-progress watchdog instead of a total timeout
//! because a 150 MiB chunk on a slow uplink may legitimately take many minutes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use super::auth::Pkce;
use super::content_hash::{BLOCK, ContentHasher};
use super::{RemoteFile, Session};
use crate::redact::Secret;
use crate::transfer::http::{
    BODY_SLICE, Progress, Watched, parse_retry_after, sliced, watch_progress,
};
use crate::transfer::{ByteStream, TransferError};

pub const DEFAULT_API_URL: &str = "https://api.dropboxapi.com";
pub const DEFAULT_CONTENT_URL: &str = "https://content.dropboxapi.com";
pub const DEFAULT_AUTHORIZE_URL: &str = "https://www.dropbox.com/oauth2/authorize";

/// Largest request body Dropbox accepts on a content route (150 MiB).
pub const MAX_CHUNK: usize = 150 * 1024 * 1024;

/// What [`http_client`] uses: long enough for a slow DNS + TLS handshake, short enough that a
/// dead network fails the attempt quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Total time for an RPC call; a big `list_folder` page can take a while server-side.
const RPC_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// An upload that moves no bytes (and gets no answer) for this long is considered dead.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Renew access tokens this long before Dropbox would reject them, so that a long upload
/// chunk started just before expiry does not bounce.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Dropbox always sends Retry-After with 429; this is only for a 503 from some proxy.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token endpoint omits `expires_in` (Dropbox's usual 4 hours).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(14_400);
/// `list_folder/continue` may answer `reset`; listing again is right, forever is not.
const MAX_LIST_RESETS: u32 = 3;

const NOT_AUTHORIZED: &str = "not authorized yet";
const REVOKED: &str = "Dropbox refused the stored refresh token (revoked?); authorize again";

/// Where the app is registered and where Dropbox lives (configurable so tests can use a fake).
#[derive(Debug, Clone)]
pub struct DropboxSettings {
    pub app_key: String,
    /// Not needed with PKCE; when set, the token endpoint is called with HTTP Basic auth.
    pub app_secret: Option<Secret>,
    pub api_url: String,
    pub content_url: String,
    pub authorize_url: String,
}

impl DropboxSettings {
    /// The real Dropbox hosts.
    pub fn new(app_key: impl Into<String>) -> Self {
        Self {
            app_key: app_key.into(),
            app_secret: None,
            api_url: DEFAULT_API_URL.to_owned(),
            content_url: DEFAULT_CONTENT_URL.to_owned(),
            authorize_url: DEFAULT_AUTHORIZE_URL.to_owned(),
        }
    }

    /// All three hosts at one base URL, as a local fake serves them.
    pub fn at(app_key: impl Into<String>, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            app_key: app_key.into(),
            app_secret: None,
            api_url: base.to_owned(),
            content_url: base.to_owned(),
            authorize_url: format!("{base}/oauth2/authorize"),
        }
    }
}

/// The parts of Dropbox's `FileMetadata` offsite uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMetadata {
    pub name: String,
    // Dropbox omits the paths for files outside the user's namespace; never for ours.
    #[serde(default)]
    pub path_display: String,
    #[serde(default)]
    pub path_lower: String,
    pub size: u64,
    #[serde(default)]
    pub content_hash: Option<String>,
    #[serde(default)]
    pub server_modified: Option<DateTime<Utc>>,
    #[serde(default)]
    pub rev: Option<String>,
}

/// One item of a folder listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File(FileMetadata),
    Folder { name: String, path_display: String },
}

/// A `reqwest::Client` fit for this module: bounded connect time, TCP keepalive so dead peers
/// are noticed, and deliberately no client-wide `read_timeout` — in reqwest 0.12 that timer
/// runs from the start of the request and is not reset while the body is being sent, so it
/// would cap every upload chunk at a fixed duration. Uploads have their own stall watchdog.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("offsite/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Dropbox API v2 client. Clones share credentials, so concurrent jobs refresh once.
#[derive(Clone)]
pub struct DropboxClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: DropboxSettings,
    token_file: PathBuf,
    http: reqwest::Client,
    stall_timeout_ms: AtomicU64,
    /// Never held across an await.
    creds: Mutex<Creds>,
    /// Held across the token request, which makes refreshing single-flight.
    access: tokio::sync::Mutex<Option<AccessToken>>,
}

#[derive(Default)]
struct Creds {
    refresh: Option<Secret>,
    /// Dropbox answered `invalid_grant` for `refresh`.
    revoked: bool,
}

struct AccessToken {
    token: Secret,
    renew_at: Instant,
}

/// The token file's content.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
    #[serde(default)]
    obtained_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for DropboxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropboxClient")
            .field("settings", &self.inner.settings)
            .field("token_file", &self.inner.token_file)
            .finish_non_exhaustive()
    }
}

impl DropboxClient {
    /// Reads `token_file` if it exists (a missing or unreadable file means "not authorized").
    pub fn new(settings: DropboxSettings, token_file: PathBuf, http: reqwest::Client) -> Self {
        let refresh = match read_token_file(&token_file) {
            Ok(stored) => stored.map(|s| Secret::new(s.refresh_token)),
            Err(e) => {
                tracing::warn!(path = %token_file.display(), "ignoring the Dropbox token file: {e}");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                token_file,
                http,
                stall_timeout_ms: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
                creds: Mutex::new(Creds {
                    refresh,
                    revoked: false,
                }),
                access: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// How long an upload may go without moving a byte before it is abandoned (applies to
    /// every clone).
    pub fn with_stall_timeout(self, timeout: Duration) -> Self {
        self.inner
            .stall_timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    /// Refresh token present and not known revoked.
    pub fn is_authorized(&self) -> bool {
        self.usable_refresh_token().is_ok()
    }

    /// Where to send the user. Without `redirect_uri` Dropbox shows them a code to paste back.
    pub fn authorize_url(
        &self,
        pkce: &Pkce,
        redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.inner.settings.app_key)
            .append_pair("token_access_type", "offline")
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(uri) = redirect_uri {
            query.append_pair("redirect_uri", uri);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        let base = &self.inner.settings.authorize_url;
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{}", query.finish())
    }

    /// Trade the code the user pasted for tokens and store the refresh token durably.
    /// `Ok` means the token file has been written and synced.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: Option<&str>,
    ) -> Result<(), TransferError> {
        // Users paste codes with stray whitespace around them.
        let code = code.trim();
        // Holding the slot keeps a concurrent refresh from using the token being replaced.
        let mut slot = self.inner.access.lock().await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
        ];
        if let Some(uri) = redirect_uri {
            form.push(("redirect_uri", uri));
        }
        let asked_at = Instant::now();
        let reply = match self.token_request(&form).await {
            Ok(reply) => reply,
            Err(TokenFailure::Refused { error, description }) if error == "invalid_grant" => {
                return Err(TransferError::Permanent(format!(
                    "the code was not accepted: {}",
                    self.redact(&description)
                )));
            }
            Err(TokenFailure::Refused { error, description }) => {
                return Err(TransferError::Permanent(format!(
                    "Dropbox refused the code exchange: {error}: {}",
                    self.redact(&description)
                )));
            }
            Err(TokenFailure::Failed(e)) => return Err(e),
        };
        let Some(refresh_token) = reply.refresh_token.clone() else {
            return Err(TransferError::Permanent(
                "Dropbox returned no refresh token (token_access_type=offline missing?)".into(),
            ));
        };
        let stored = StoredToken {
            refresh_token,
            account_id: reply.account_id.clone(),
            obtained_at: Some(Utc::now()),
        };
        let path = self.inner.token_file.clone();
        let data = serde_json::to_vec_pretty(&stored).expect("a struct of strings serializes");
        let written =
            tokio::task::spawn_blocking(move || super::auth::write_private_file(&path, &data))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
        if let Err(e) = written {
            // The code is single-use, so a retry cannot succeed: the user must authorize again.
            return Err(TransferError::Permanent(format!(
                "could not store the Dropbox token in {}: {e}",
                self.inner.token_file.display()
            )));
        }
        {
            let mut creds = self.creds();
            creds.refresh = Some(Secret::new(stored.refresh_token));
            creds.revoked = false;
        }
        *slot = Some(AccessToken::from_reply(&reply, asked_at));
        tracing::info!(account_id = ?reply.account_id, "Dropbox authorized");
        Ok(())
    }

    /// Delete the stored token and drop the ones in memory.
    pub async fn forget(&self) -> std::io::Result<()> {
        let mut slot = self.inner.access.lock().await;
        *slot = None;
        *self.creds() = Creds::default();
        match tokio::fs::remove_file(&self.inner.token_file).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Open a sequential upload session with no data yet.
    pub async fn upload_start(&self) -> Result<String, TransferError> {
        #[derive(Deserialize)]
        struct Started {
            session_id: String,
        }
        let started: Started = self
            .content(
                "files/upload_session/start",
                &json!({"close": false}),
                Bytes::new(),
            )
            .await
            .map_err(|e| e.resolve(session_error))?;
        Ok(started.session_id)
    }

    /// Append `data` at `offset`. On `IncorrectOffset(n)` the server already has `n` bytes.
    pub async fn upload_append(
        &self,
        session_id: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<(), TransferError> {
        let arg = json!({
            "cursor": {"session_id": session_id, "offset": offset},
            "close": false,
        });
        self.content::<IgnoredAny>("files/upload_session/append_v2", &arg, data)
            .await
            .map_err(|e| e.resolve(session_error))?;
        Ok(())
    }

    /// Append the last `data` at `offset` and commit the session to `path` (mode add, so an
    /// existing different file is a conflict; identical content is not).
    pub async fn upload_finish(
        &self,
        session_id: &str,
        offset: u64,
        data: Bytes,
        path: &str,
    ) -> Result<FileMetadata, TransferError> {
        let arg = json!({
            "cursor": {"session_id": session_id, "offset": offset},
            "commit": {"path": path, "mode": "add", "autorename": false, "mute": true},
        });
        self.content("files/upload_session/finish", &arg, data)
            .await
            .map_err(|e| e.resolve(session_error))
    }

    /// The file at `path` from byte `offset` on, streamed (never held in memory).
    pub async fn download(&self, path: &str, offset: u64) -> Result<ByteStream, TransferError> {
        let route = "files/download";
        let arg = header_safe_json(&json!({"path": path}).to_string());
        let url = format!(
            "{}/2/{route}",
            self.inner.settings.content_url.trim_end_matches('/')
        );
        let mut token = self.access_token().await?;
        let mut renewed = false;
        loop {
            let mut request = self
                .inner
                .http
                .post(&url)
                .bearer_auth(token.expose())
                .header("Dropbox-API-Arg", arg.as_str());
            if offset > 0 {
                request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(route, e))?;
            let status = response.status();
            if status.is_success() && offset > 0 && status != StatusCode::PARTIAL_CONTENT {
                // The whole file where its tail was asked for: reading it as the tail would
                // give the wrong bytes.
                return Err(TransferError::Temporary(format!(
                    "Dropbox {route}: the range from byte {offset} was not honoured (HTTP {status})"
                )));
            }
            if status.is_success() {
                let body = response
                    .bytes_stream()
                    .map(|r| r.map_err(std::io::Error::other));
                return Ok(Box::pin(tokio_util::io::StreamReader::new(body)));
            }
            let reply = read_reply(response)
                .await
                .map_err(|e| transport_error(route, e))?;
            if status == StatusCode::UNAUTHORIZED {
                let tag = ErrorBody::parse(&reply.body)
                    .and_then(|e| first_tag(&e.error).map(str::to_owned));
                if !renewed
                    && matches!(
                        tag.as_deref(),
                        Some("expired_access_token" | "invalid_access_token")
                    )
                {
                    renewed = true;
                    token = self.renew_after_rejection(&token).await?;
                    continue;
                }
                return Err(self.unauthorized(route, &reply, renewed));
            }
            if status == StatusCode::CONFLICT
                && let Some(error) = ErrorBody::parse(&reply.body)
            {
                let e = EndpointError {
                    route,
                    summary: self.redact(&tidy_summary(&error.error_summary)),
                    error: error.error,
                };
                if e.tags().starts_with(&["path", "not_found"]) {
                    return Err(TransferError::NotFound(format!(
                        "Dropbox has no file {path}"
                    )));
                }
                return Err(e.into_transfer());
            }
            return Err(self.failure(route, &reply));
        }
    }

    /// Direct children of `path` ("" or "/" for the root). A missing folder lists as empty.
    pub async fn list_folder(&self, path: &str) -> Result<Vec<Entry>, TransferError> {
        #[derive(Deserialize)]
        struct Page {
            entries: Vec<WireEntry>,
            cursor: String,
            has_more: bool,
        }
        // Dropbox insists on "" for the root and rejects "/", which everyone types.
        let path = if path == "/" { "" } else { path };
        let mut resets = 0;
        'listing: loop {
            let first = self
                .rpc::<Page>("files/list_folder", &json!({"path": path}))
                .await;
            let mut page = match first {
                Ok(page) => page,
                Err(ApiError::Endpoint(e)) if e.tags().starts_with(&["path", "not_found"]) => {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e.resolve(EndpointError::into_transfer)),
            };
            let mut entries = Vec::new();
            loop {
                entries.extend(page.entries.into_iter().filter_map(WireEntry::into_entry));
                if !page.has_more {
                    return Ok(entries);
                }
                let next = self
                    .rpc::<Page>(
                        "files/list_folder/continue",
                        &json!({"cursor": page.cursor}),
                    )
                    .await;
                page = match next {
                    Ok(page) => page,
                    Err(ApiError::Endpoint(e))
                        if e.tags().first() == Some(&"reset") && resets < MAX_LIST_RESETS =>
                    {
                        resets += 1;
                        tracing::debug!(path, "Dropbox list_folder cursor reset; listing again");
                        continue 'listing;
                    }
                    Err(ApiError::Endpoint(e)) if e.tags().starts_with(&["path", "not_found"]) => {
                        // Deleted while we were paging: it is missing now.
                        return Ok(Vec::new());
                    }
                    Err(e) => return Err(e.resolve(EndpointError::into_transfer)),
                };
            }
        }
    }

    /// The file at `path`, if there is one (a folder there is not a file).
    pub async fn metadata(&self, path: &str) -> Result<Option<FileMetadata>, TransferError> {
        match self
            .rpc::<WireEntry>("files/get_metadata", &json!({"path": path}))
            .await
        {
            Ok(entry) => Ok(match entry.into_entry() {
                Some(Entry::File(meta)) => Some(meta),
                _ => None,
            }),
            Err(ApiError::Endpoint(e)) if e.tags().starts_with(&["path", "not_found"]) => Ok(None),
            Err(e) => Err(e.resolve(EndpointError::into_transfer)),
        }
    }

    /// Delete a file or folder (recursively). Already missing is success.
    pub async fn delete(&self, path: &str) -> Result<(), TransferError> {
        match self
            .rpc::<IgnoredAny>("files/delete_v2", &json!({"path": path}))
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::Endpoint(e)) if e.tags().starts_with(&["path_lookup", "not_found"]) => {
                Ok(())
            }
            Err(e) => Err(e.resolve(EndpointError::into_transfer)),
        }
    }

    /// The account the stored token belongs to; a cheap way to check the credentials work.
    pub async fn account_id(&self) -> Result<String, TransferError> {
        #[derive(Deserialize)]
        struct Account {
            account_id: String,
        }
        let account: Account = self
            .rpc("users/get_current_account", &Value::Null)
            .await
            .map_err(|e| e.resolve(EndpointError::into_transfer))?;
        Ok(account.account_id)
    }

    // -- credentials ------------------------------------------------------

    fn creds(&self) -> std::sync::MutexGuard<'_, Creds> {
        // Nothing panics while holding it, but a poisoned lock must not take uploads down.
        self.inner
            .creds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The refresh token to use. When memory has none (or a revoked one) the file is read
    /// again: another process, such as the CLI's authorize command, may have stored a new one.
    fn usable_refresh_token(&self) -> Result<Secret, TransferError> {
        let mut creds = self.creds();
        if let Some(token) = &creds.refresh
            && !creds.revoked
        {
            return Ok(token.clone());
        }
        match read_token_file(&self.inner.token_file) {
            Ok(Some(stored)) => {
                let token = Secret::new(stored.refresh_token);
                if creds.refresh.as_ref() != Some(&token) {
                    creds.refresh = Some(token.clone());
                    creds.revoked = false;
                    return Ok(token);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %self.inner.token_file.display(), "ignoring the Dropbox token file: {e}");
            }
        }
        Err(TransferError::Unauthorized(
            if creds.revoked {
                REVOKED
            } else {
                NOT_AUTHORIZED
            }
            .to_owned(),
        ))
    }

    /// A current access token, refreshing first if it is missing or about to expire.
    async fn access_token(&self) -> Result<Secret, TransferError> {
        let mut slot = self.inner.access.lock().await;
        if let Some(access) = slot.as_ref()
            && Instant::now() < access.renew_at
        {
            return Ok(access.token.clone());
        }
        self.refresh_into(&mut slot).await
    }

    /// Dropbox rejected `rejected` (401): refresh, unless a concurrent caller already did.
    async fn renew_after_rejection(&self, rejected: &Secret) -> Result<Secret, TransferError> {
        let mut slot = self.inner.access.lock().await;
        if let Some(access) = slot.as_ref()
            && access.token != *rejected
            && Instant::now() < access.renew_at
        {
            return Ok(access.token.clone());
        }
        *slot = None;
        self.refresh_into(&mut slot).await
    }

    /// Get a new access token with the refresh token; the caller holds the access slot.
    async fn refresh_into(&self, slot: &mut Option<AccessToken>) -> Result<Secret, TransferError> {
        // Two rounds: if the stored token was revoked, the file may already hold a newer one.
        for _ in 0..2 {
            let refresh = self.usable_refresh_token()?;
            let asked_at = Instant::now();
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ];
            match self.token_request(&form).await {
                Ok(reply) => {
                    let access = AccessToken::from_reply(&reply, asked_at);
                    tracing::debug!(
                        valid_for_s = reply.expires_in,
                        "refreshed the Dropbox access token"
                    );
                    let token = access.token.clone();
                    *slot = Some(access);
                    return Ok(token);
                }
                Err(TokenFailure::Refused { error, .. }) if error == "invalid_grant" => {
                    tracing::warn!("Dropbox refused the stored refresh token (invalid_grant)");
                    let mut creds = self.creds();
                    if creds.refresh.as_ref() == Some(&refresh) {
                        creds.revoked = true;
                    }
                }
                Err(TokenFailure::Refused { error, description }) => {
                    // invalid_client and the like: the app key or secret is wrong, which the
                    // user fixes in the configuration, not by authorizing again.
                    return Err(TransferError::Permanent(format!(
                        "Dropbox token endpoint refused the refresh: {error}: {}",
                        self.redact(&description)
                    )));
                }
                Err(TokenFailure::Failed(e)) => return Err(e),
            }
        }
        Err(TransferError::Unauthorized(REVOKED.to_owned()))
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenReply, TokenFailure> {
        let settings = &self.inner.settings;
        let url = format!("{}/oauth2/token", settings.api_url.trim_end_matches('/'));
        let mut fields = form.to_vec();
        let mut request = self.inner.http.post(url).timeout(TOKEN_TIMEOUT);
        match &settings.app_secret {
            Some(secret) => request = request.basic_auth(&settings.app_key, Some(secret.expose())),
            None => fields.push(("client_id", &settings.app_key)),
        }
        let reply = async { read_reply(request.form(&fields).send().await?).await }
            .await
            .map_err(|e| TokenFailure::Failed(transport_error("oauth2/token", e)))?;
        if reply.status.is_success() {
            // No serde detail in the message: it could quote the token it failed on.
            return serde_json::from_slice(&reply.body).map_err(|_| {
                TokenFailure::Failed(TransferError::Temporary(
                    "Dropbox oauth2/token: unreadable answer".into(),
                ))
            });
        }
        if matches!(reply.status.as_u16(), 400 | 401)
            && let Ok(refused) = serde_json::from_slice::<OAuthErrorBody>(&reply.body)
        {
            return Err(TokenFailure::Refused {
                error: refused.error,
                description: refused.error_description,
            });
        }
        Err(TokenFailure::Failed(self.failure("oauth2/token", &reply)))
    }

    /// Remove anything secret from text the server sent back (every token is a `Secret`).
    fn redact(&self, text: &str) -> String {
        crate::redact::redact(text).into_owned()
    }

    // -- calls ------------------------------------------------------------

    async fn rpc<T: DeserializeOwned>(
        &self,
        route: &'static str,
        arg: &impl Serialize,
    ) -> Result<T, ApiError> {
        let body = Bytes::from(serde_json::to_vec(arg).expect("JSON values serialize"));
        let reply = self.call(route, &Payload::Rpc(body)).await?;
        decode(route, &reply)
    }

    async fn content<T: DeserializeOwned>(
        &self,
        route: &'static str,
        arg: &impl Serialize,
        data: Bytes,
    ) -> Result<T, ApiError> {
        if data.len() > MAX_CHUNK {
            return Err(TransferError::Permanent(format!(
                "Dropbox {route}: a chunk of {} bytes exceeds the 150 MiB request limit",
                data.len()
            ))
            .into());
        }
        let arg = header_safe_json(&serde_json::to_string(arg).expect("JSON values serialize"));
        let reply = self.call(route, &Payload::Content { arg, data }).await?;
        decode(route, &reply)
    }

    /// One authenticated call, renewing the access token once if Dropbox says it is stale.
    /// Success is the body of a 2xx answer; 409s come back for the route to interpret.
    async fn call(&self, route: &'static str, payload: &Payload) -> Result<Bytes, ApiError> {
        let mut token = self.access_token().await?;
        let mut renewed = false;
        loop {
            let reply = self.send(route, payload, &token).await?;
            let status = reply.status;
            if status.is_success() {
                return Ok(reply.body);
            }
            tracing::debug!(route, status = status.as_u16(), "Dropbox call failed");
            if status == StatusCode::UNAUTHORIZED {
                let error = ErrorBody::parse(&reply.body);
                let tag = error.as_ref().and_then(|e| first_tag(&e.error));
                if !renewed && matches!(tag, Some("expired_access_token" | "invalid_access_token"))
                {
                    renewed = true;
                    token = self.renew_after_rejection(&token).await?;
                    continue;
                }
                return Err(self.unauthorized(route, &reply, renewed).into());
            }
            if status == StatusCode::CONFLICT
                && let Some(error) = ErrorBody::parse(&reply.body)
            {
                return Err(ApiError::Endpoint(EndpointError {
                    route,
                    summary: self.redact(&tidy_summary(&error.error_summary)),
                    error: error.error,
                }));
            }
            return Err(self.failure(route, &reply).into());
        }
    }

    async fn send(
        &self,
        route: &'static str,
        payload: &Payload,
        token: &Secret,
    ) -> Result<Reply, TransferError> {
        let settings = &self.inner.settings;
        match payload {
            Payload::Rpc(body) => {
                let url = format!("{}/2/{route}", settings.api_url.trim_end_matches('/'));
                let request = self
                    .inner
                    .http
                    .post(url)
                    .bearer_auth(token.expose())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .timeout(RPC_TIMEOUT);
                async { read_reply(request.send().await?).await }
                    .await
                    .map_err(|e| transport_error(route, e))
            }
            Payload::Content { arg, data } => {
                let url = format!("{}/2/{route}", settings.content_url.trim_end_matches('/'));
                let progress = Arc::new(Progress::new());
                let mut request = self
                    .inner
                    .http
                    .post(url)
                    .bearer_auth(token.expose())
                    .header("Dropbox-API-Arg", arg.as_str())
                    .header(CONTENT_TYPE, "application/octet-stream");
                request = if data.len() <= BODY_SLICE {
                    request.body(data.clone())
                } else {
                    // A streamed body has no length of its own; Dropbox wants one, not chunked.
                    request
                        .header(CONTENT_LENGTH, data.len())
                        .body(reqwest::Body::wrap_stream(sliced(
                            data.clone(),
                            progress.clone(),
                        )))
                };
                let exchange = async { read_reply(request.send().await?).await };
                let stall =
                    Duration::from_millis(self.inner.stall_timeout_ms.load(Ordering::Relaxed));
                watch_progress(exchange, &progress, stall)
                    .await
                    .map_err(|e| match e {
                        Watched::Failed(e) => transport_error(route, e),
                        Watched::Stalled => TransferError::Temporary(format!(
                            "Dropbox {route}: no progress for {} s; connection abandoned",
                            stall.as_secs_f64()
                        )),
                    })
            }
        }
    }

    /// A 401 we will not (or no longer) cure by refreshing.
    fn unauthorized(&self, route: &str, reply: &Reply, renewed: bool) -> TransferError {
        let summary = self.summary_of(reply);
        if renewed {
            // A token minted a moment ago refused as expired/invalid: odd, likely passing.
            TransferError::Temporary(format!(
                "Dropbox {route}: a freshly refreshed access token was refused: {summary}"
            ))
        } else {
            // missing_scope, user_suspended, ...: only the user can fix these.
            TransferError::Unauthorized(format!("Dropbox {route} refused access: {summary}"))
        }
    }

    /// Classify a non-2xx answer that is not a token problem or a route-specific 409.
    fn failure(&self, route: &str, reply: &Reply) -> TransferError {
        let status = reply.status.as_u16();
        let summary = self.summary_of(reply);
        match status {
            429 | 503 => {
                let wait = reply.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                TransferError::RetryAfter {
                    wait,
                    message: format!(
                        "Dropbox {route}: HTTP {status} {summary}; retry in {} s",
                        wait.as_secs()
                    ),
                }
            }
            408 | 500..=599 => {
                TransferError::Temporary(format!("Dropbox {route}: HTTP {status} {summary}"))
            }
            // 400 is Dropbox saying our request is malformed; 403/404/409 without a usable
            // body and the rest will not change on a retry either.
            _ => TransferError::Permanent(format!("Dropbox {route}: HTTP {status} {summary}")),
        }
    }

    /// `error_summary` when the body has one, else the start of the text.
    fn summary_of(&self, reply: &Reply) -> String {
        let text = match ErrorBody::parse(&reply.body) {
            Some(e) => tidy_summary(&e.error_summary),
            None => {
                let text = String::from_utf8_lossy(&reply.body);
                let text = text.trim();
                match text.char_indices().nth(300) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text.to_owned(),
                }
            }
        };
        self.redact(&text)
    }
}

// -- wire types and classification ----------------------------------------------------------

enum Payload {
    Rpc(Bytes),
    /// `arg` is already escaped for the header.
    Content {
        arg: String,
        data: Bytes,
    },
}

struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

async fn read_reply(response: reqwest::Response) -> reqwest::Result<Reply> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

fn decode<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        TransferError::Temporary(format!("Dropbox {route}: unreadable answer: {e}")).into()
    })
}

fn transport_error(route: &str, e: reqwest::Error) -> TransferError {
    crate::transfer::http::transport_error(&format!("Dropbox {route}"), e)
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    account_id: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

enum TokenFailure {
    /// The token endpoint's own OAuth error (`invalid_grant`, `invalid_client`, ...).
    Refused {
        error: String,
        description: String,
    },
    Failed(TransferError),
}

impl AccessToken {
    fn from_reply(reply: &TokenReply, asked_at: Instant) -> Self {
        let ttl = reply
            .expires_in
            .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
        // Short lifetimes (tests, or a future Dropbox change) still get used for a while.
        let margin = REFRESH_MARGIN.min(ttl / 2);
        Self {
            token: Secret::new(reply.access_token.clone()),
            renew_at: asked_at + (ttl - margin),
        }
    }
}

/// Dropbox's error body: `{"error_summary": "path/not_found/..", "error": {".tag": ...}}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_summary: String,
    #[serde(default)]
    error: Value,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(body)
            .ok()
            .filter(|e| !e.error_summary.is_empty() || !e.error.is_null())
    }
}

/// Dropbox pads summaries with a varying "/..." tail so nobody matches on them.
fn tidy_summary(summary: &str) -> String {
    summary.trim_end_matches(['/', '.', ',']).to_owned()
}

fn first_tag(error: &Value) -> Option<&str> {
    match error {
        Value::String(tag) => Some(tag),
        _ => error.get(".tag").and_then(Value::as_str),
    }
}

enum ApiError {
    Failed(TransferError),
    /// A 409: the route's own error union.
    Endpoint(EndpointError),
}

impl From<TransferError> for ApiError {
    fn from(e: TransferError) -> Self {
        ApiError::Failed(e)
    }
}

impl ApiError {
    fn resolve(self, classify: impl FnOnce(EndpointError) -> TransferError) -> TransferError {
        match self {
            ApiError::Failed(e) => e,
            ApiError::Endpoint(e) => classify(e),
        }
    }
}

struct EndpointError {
    route: &'static str,
    summary: String,
    error: Value,
}

impl EndpointError {
    /// The `.tag` path, e.g. `["lookup_failed", "incorrect_offset"]`.
    fn tags(&self) -> Vec<&str> {
        let mut tags = Vec::new();
        let mut node = &self.error;
        while let Some(tag) = first_tag(node) {
            tags.push(tag);
            match node.get(tag) {
                Some(next) if next.is_object() || next.is_string() => node = next,
                _ => break,
            }
        }
        tags
    }

    /// The innermost tagged object, where fields like `correct_offset` live.
    fn leaf(&self) -> &Value {
        let mut node = &self.error;
        while let Some(next) = first_tag(node).and_then(|tag| node.get(tag)) {
            if !next.is_object() {
                break;
            }
            node = next;
        }
        node
    }

    fn message(&self) -> String {
        format!("Dropbox {}: {}", self.route, self.summary)
    }

    /// Default reading of a route error: write throttling passes, and a full account is the
    /// user's to fix (a backup still at the source is not given up over it); everything else
    /// is about the request itself (bad path, conflict) and will not.
    fn into_transfer(self) -> TransferError {
        let tags = self.tags();
        if tags.contains(&"insufficient_space") {
            TransferError::Temporary(format!(
                "no space left in the Dropbox account: {}",
                self.message()
            ))
        } else if tags
            .iter()
            .any(|t| matches!(*t, "too_many_write_operations" | "too_many_requests"))
        {
            TransferError::Temporary(self.message())
        } else {
            TransferError::Permanent(self.message())
        }
    }
}

/// Errors of the upload-session routes. append_v2 reports session lookup errors at the top,
/// finish nests them under `lookup_failed`.
fn session_error(e: EndpointError) -> TransferError {
    let tags = e.tags();
    let lookup = match tags.split_first() {
        Some((&"lookup_failed", rest)) => rest,
        _ => &tags[..],
    };
    match lookup.first().copied() {
        Some("incorrect_offset") => match e.leaf().get("correct_offset").and_then(Value::as_u64) {
            Some(offset) => TransferError::IncorrectOffset(offset),
            None => TransferError::Temporary(format!("{} (without correct_offset)", e.message())),
        },
        // not_found: expired or never existed; closed: already committed or closed. Either
        // way this session takes no more data and the upload must begin again.
        Some("not_found" | "closed") => TransferError::SessionGone(e.message()),
        // too_large (file over Dropbox's limit), payload_too_large, not_closed (a concurrent
        // session thing we never use), path/...: restarting would hit the same wall.
        _ => e.into_transfer(),
    }
}

#[derive(Deserialize)]
#[serde(tag = ".tag", rename_all = "snake_case")]
enum WireEntry {
    File(FileMetadata),
    Folder {
        name: String,
        #[serde(default)]
        path_display: Option<String>,
    },
    /// `deleted` markers and anything newer.
    #[serde(other)]
    Other,
}

impl WireEntry {
    fn into_entry(self) -> Option<Entry> {
        match self {
            WireEntry::File(meta) => Some(Entry::File(meta)),
            WireEntry::Folder { name, path_display } => Some(Entry::Folder {
                path_display: path_display.unwrap_or_else(|| name.clone()),
                name,
            }),
            WireEntry::Other => None,
        }
    }
}

/// HTTP header values must be visible ASCII, so Dropbox requires the `Dropbox-API-Arg` JSON to
/// escape DEL and every non-ASCII code point as `\uXXXX` (UTF-16 units: astral characters
/// become a surrogate pair). serde_json only emits such characters inside strings, where the
/// escape means the same thing.
fn header_safe_json(json: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

// -- the destination ----------------------------------------------------------------------

/// `type = "dropbox"` in `[destinations.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropboxConfig {
    /// The remote folder, e.g. `/HomeAssistant/Backups`.
    pub path: String,
    /// Dropbox app key (an app of your own, "App folder" or "Full Dropbox").
    #[serde(default)]
    pub app_key: String,
    /// Optional with PKCE.
    pub app_secret: Option<Secret>,
    /// A redirect URI registered with the app, for the redirect flow (`…/callback`).
    pub redirect_uri: Option<String>,
    #[serde(default = "default_api_url")]
    pub api_url: String,
    #[serde(default = "default_content_url")]
    pub content_url: String,
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}
fn default_content_url() -> String {
    DEFAULT_CONTENT_URL.into()
}
fn default_authorize_url() -> String {
    DEFAULT_AUTHORIZE_URL.into()
}

impl DropboxConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.app_key.is_empty() {
            return Err((
                "app_key",
                "a Dropbox destination needs the app key of your Dropbox app".into(),
            ));
        }
        if !self.path.starts_with('/') {
            return Err((
                "path",
                "a Dropbox folder starts with '/', e.g. /HomeAssistant/Backups".into(),
            ));
        }
        for (field, url) in [
            ("api_url", &self.api_url),
            ("content_url", &self.content_url),
            ("authorize_url", &self.authorize_url),
        ] {
            if url::Url::parse(url).is_err() {
                return Err((field, format!("{url:?} is not a URL")));
            }
        }
        Ok(())
    }
}

/// Dropbox as a destination: upload sessions checked against Dropbox's content hash.
pub struct DropboxDestination {
    client: DropboxClient,
    root: String,
    redirect_uri: Option<String>,
}

/// A Dropbox upload session, with the content hash of the acknowledged bytes (the block
/// digests: every acknowledged offset is on a 4 MiB boundary).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "dropbox")]
struct DropboxSession {
    session_id: String,
    /// Hex of the 32-byte digests of the acknowledged 4 MiB blocks.
    #[serde(default)]
    blocks: String,
}

impl DropboxSession {
    fn hasher(&self) -> Result<ContentHasher, TransferError> {
        ContentHasher::resume(&self.blocks).ok_or_else(|| {
            TransferError::SessionGone("the checkpointed content hash is unreadable".into())
        })
    }
}

impl DropboxDestination {
    pub fn new(config: &DropboxConfig, token_file: PathBuf, http: reqwest::Client) -> Self {
        let client = DropboxClient::new(
            DropboxSettings {
                app_key: config.app_key.clone(),
                app_secret: config.app_secret.clone(),
                api_url: config.api_url.trim_end_matches('/').to_string(),
                content_url: config.content_url.trim_end_matches('/').to_string(),
                authorize_url: config.authorize_url.clone(),
            },
            token_file,
            http,
        );
        DropboxDestination {
            client,
            root: config.path.trim_end_matches('/').to_string(),
            redirect_uri: config.redirect_uri.clone(),
        }
    }
}

/// Hashes `bytes` onto `hasher` off the async threads.
async fn hashed(mut hasher: ContentHasher, bytes: Bytes) -> Result<ContentHasher, TransferError> {
    tokio::task::spawn_blocking(move || {
        hasher.update(&bytes);
        hasher
    })
    .await
    .map_err(|e| TransferError::Temporary(format!("hashing failed: {e}")))
}

fn remote_file(meta: FileMetadata) -> RemoteFile {
    RemoteFile {
        path: meta.path_display,
        size: meta.size,
        content_hash: meta.content_hash,
    }
}

#[async_trait::async_trait]
impl super::Destination for DropboxDestination {
    fn info(&self) -> super::DestinationInfo {
        super::DestinationInfo {
            kind: "dropbox",
            location: if self.root.is_empty() {
                "/".into()
            } else {
                self.root.clone()
            },
        }
    }

    /// Appends take whole 4 MiB blocks (so the content hash resumes at any acknowledged
    /// offset), at most 148 MiB (under the 150 MiB request limit).
    fn chunk_rules(&self) -> super::ChunkRules {
        super::ChunkRules {
            multiple: BLOCK as u64,
            min: BLOCK as u64,
            max: 148 * 1024 * 1024,
            max_chunks: None,
        }
    }

    fn root(&self) -> &str {
        &self.root
    }

    fn authorization(&self) -> Option<&dyn super::Authorization> {
        Some(self)
    }

    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        Ok(self
            .client
            .list_folder(&self.root)
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Entry::File(f) => Some(remote_file(f)),
                Entry::Folder { .. } => None,
            })
            .collect())
    }

    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        Ok(self.client.metadata(remote).await?.map(remote_file))
    }

    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        self.client.download(remote, offset).await
    }

    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        self.client.delete(remote).await
    }

    async fn begin(
        &self,
        _remote: &str,
        _size: u64,
        _chunk: u64,
    ) -> Result<Session, TransferError> {
        Ok(Session::new(&DropboxSession {
            session_id: self.client.upload_start().await?,
            blocks: String::new(),
        }))
    }

    /// Dropbox has no call that says where a session is: the next append answers
    /// `incorrect_offset` if it is elsewhere.
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        let state: DropboxSession = session.get()?;
        if state
            .hasher()?
            .state()
            .map(|b| b.len() as u64 / 64 * BLOCK as u64)
            != Some(ours)
        {
            return Err(TransferError::SessionGone(
                "the checkpointed content hash does not cover the acknowledged bytes".into(),
            ));
        }
        Ok(ours)
    }

    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        let mut state: DropboxSession = session.get()?;
        let hashing = hashed(state.hasher()?, chunk.clone());
        let (sent, hasher) = tokio::join!(
            self.client.upload_append(&state.session_id, offset, chunk),
            hashing
        );
        sent?;
        state.blocks = hasher?.state().ok_or_else(|| {
            TransferError::Permanent(format!(
                "internal error: a Dropbox chunk ending at {offset} is not whole 4 MiB blocks"
            ))
        })?;
        session.set(&state);
        Ok(())
    }

    fn caught_up(
        &self,
        session: &mut Session,
        _offset: u64,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        let mut state: DropboxSession = session.get()?;
        let mut hasher = state.hasher()?;
        hasher.update(bytes);
        // Dropbox acknowledges whole appends, which are whole blocks; anything else cannot be
        // checkpointed and the upload starts over.
        state.blocks = hasher.state().ok_or_else(|| {
            TransferError::SessionGone("Dropbox is at an offset inside a 4 MiB block".into())
        })?;
        session.set(&state);
        Ok(())
    }

    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &super::Sent<'_>,
    ) -> Result<RemoteFile, TransferError> {
        let state: DropboxSession = session.get()?;
        let hashing = hashed(state.hasher()?, chunk.clone());
        let (meta, hasher) = tokio::join!(
            self.client
                .upload_finish(&state.session_id, offset, chunk, remote),
            hashing
        );
        let stored = remote_file(meta?);
        let ours = hasher?.finalize();
        if stored.size != sent.size || stored.content_hash.as_deref() != Some(ours.as_str()) {
            // Do not leave a file that looks like a good backup.
            if let Err(e) = self.client.delete(&stored.path).await {
                tracing::warn!(path = %stored.path, error = %e, "could not remove the mismatched upload");
            }
            return Err(TransferError::Permanent(format!(
                "Dropbox stored {} as {} bytes with content hash {}, but {} bytes hashing to \
                 {ours} were sent; removed it, not recorded as backed up",
                stored.path,
                stored.size,
                stored.content_hash.as_deref().unwrap_or("(none)"),
                sent.size
            )));
        }
        Ok(stored)
    }

    /// Dropbox forgets sessions by itself after a week and offers no call to close one early.
    async fn abandon(&self, _session: &Session) -> Result<(), TransferError> {
        Ok(())
    }

    /// Compares Dropbox's own content hash with that of `source`: no download needed.
    async fn same_content(
        &self,
        stored: &RemoteFile,
        mut source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        let Some(theirs) = stored.content_hash.as_deref() else {
            return Ok(false);
        };
        if stored.size != size {
            return Ok(false);
        }
        let mut hasher = ContentHasher::new();
        let mut len = 0u64;
        loop {
            let mut buf = bytes::BytesMut::with_capacity(BLOCK);
            while buf.len() < BLOCK {
                use tokio::io::AsyncReadExt;
                let n = source
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| TransferError::Temporary(format!("reading failed: {e}")))?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            len += buf.len() as u64;
            hasher = hashed(hasher, buf.freeze()).await?;
        }
        Ok(len == size && hasher.finalize() == theirs)
    }
}

#[async_trait::async_trait]
impl super::Authorization for DropboxDestination {
    fn is_authorized(&self) -> bool {
        self.client.is_authorized()
    }

    fn redirect_uri(&self) -> Option<&str> {
        self.redirect_uri.as_deref()
    }

    fn authorize_url(
        &self,
        pkce: &Pkce,
        redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> String {
        self.client.authorize_url(pkce, redirect_uri, state)
    }

    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: Option<&str>,
    ) -> Result<(), TransferError> {
        self.client
            .exchange_code(code, verifier, redirect_uri)
            .await
    }

    async fn forget(&self) -> std::io::Result<()> {
        self.client.forget().await
    }
}

// -- token file -------------------------------------------------------------------------------

fn read_token_file(path: &Path) -> Result<Option<StoredToken>, String> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    // No serde detail: it could quote the token.
    let stored: StoredToken =
        serde_json::from_slice(&data).map_err(|_| "not a valid token file".to_owned())?;
    if stored.refresh_token.is_empty() {
        return Err("the token file holds an empty refresh token".to_owned());
    }
    Ok(Some(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_json_escapes_everything_but_printable_ascii() {
        let json = serde_json::to_string(&json!({"path": "/Zürich/日本/😀\u{7f}.tar"})).unwrap();
        let escaped = header_safe_json(&json);
        assert_eq!(
            escaped,
            r#"{"path":"/Z\u00fcrich/\u65e5\u672c/\ud83d\ude00\u007f.tar"}"#
        );
        assert!(escaped.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert!(reqwest::header::HeaderValue::from_str(&escaped).is_ok());
        // The escape is a JSON-level no-op.
        let back: Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["path"], "/Zürich/日本/😀\u{7f}.tar");
    }

    #[test]
    fn header_json_keeps_ascii_and_existing_escapes() {
        let json = serde_json::to_string(&json!({"p": "/a \"q\" \\ \n\t"})).unwrap();
        assert_eq!(header_safe_json(&json), json);
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(
            pkce.challenge,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn pkce_verifier_is_64_unreserved_chars_and_random() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        assert_eq!(a.verifier.len(), 64);
        assert!(
            a.verifier
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.verifier, b.verifier);
        assert_eq!(a.challenge.len(), 43);
        assert!(!a.challenge.contains('='));
        assert!(!format!("{a:?}").contains(&a.verifier));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    fn endpoint(error: Value) -> EndpointError {
        EndpointError {
            route: "files/upload_session/finish",
            summary: "x".into(),
            error,
        }
    }

    #[test]
    fn session_errors_are_classified() {
        let nested = json!({".tag": "lookup_failed",
            "lookup_failed": {".tag": "incorrect_offset", "correct_offset": 42}});
        assert!(matches!(
            session_error(endpoint(nested)),
            TransferError::IncorrectOffset(42)
        ));
        let top = json!({".tag": "incorrect_offset", "correct_offset": 7});
        assert!(matches!(
            session_error(endpoint(top)),
            TransferError::IncorrectOffset(7)
        ));
        for gone in [
            json!({".tag": "not_found"}),
            json!({".tag": "closed"}),
            json!({".tag": "lookup_failed", "lookup_failed": {".tag": "not_found"}}),
            json!({".tag": "lookup_failed", "lookup_failed": "closed"}),
        ] {
            assert!(
                matches!(
                    session_error(endpoint(gone.clone())),
                    TransferError::SessionGone(_)
                ),
                "{gone}"
            );
        }
        for permanent in [
            json!({".tag": "too_large"}),
            json!({".tag": "payload_too_large"}),
            json!({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "file"}}}),
        ] {
            assert!(
                matches!(
                    session_error(endpoint(permanent.clone())),
                    TransferError::Permanent(_)
                ),
                "{permanent}"
            );
        }
        let full = json!({".tag": "path", "path": {".tag": "insufficient_space"}});
        assert!(
            matches!(session_error(endpoint(full)), TransferError::Temporary(m) if m.contains("no space")),
        );
        let throttled = json!({".tag": "too_many_write_operations"});
        assert!(matches!(
            session_error(endpoint(throttled)),
            TransferError::Temporary(_)
        ));
    }

    #[test]
    fn tags_follow_the_union_tree() {
        let e = endpoint(json!({".tag": "path_lookup", "path_lookup": {".tag": "not_found"}}));
        assert_eq!(e.tags(), ["path_lookup", "not_found"]);
        assert_eq!(
            tidy_summary("path_lookup/not_found/.."),
            "path_lookup/not_found"
        );
        assert_eq!(tidy_summary("reset/..,"), "reset");
    }

    #[test]
    fn list_entries_decode_and_skip_deleted() {
        let page: Vec<WireEntry> = serde_json::from_value(json!([
            {".tag": "folder", "name": "A", "id": "id:1", "path_lower": "/a", "path_display": "/A"},
            {".tag": "file", "name": "f", "id": "id:2", "path_lower": "/a/f", "path_display": "/A/f",
             "size": 3, "rev": "0160000000001", "content_hash": "ab",
             "server_modified": "2015-05-12T15:50:38Z", "client_modified": "2015-05-12T15:50:38Z",
             "is_downloadable": true},
            {".tag": "deleted", "name": "g", "path_lower": "/a/g", "path_display": "/a/g"},
        ]))
        .unwrap();
        let entries: Vec<Entry> = page.into_iter().filter_map(WireEntry::into_entry).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            Entry::Folder {
                name: "A".into(),
                path_display: "/A".into()
            }
        );
        let Entry::File(f) = &entries[1] else {
            panic!("{entries:?}")
        };
        assert_eq!(f.size, 3);
        assert_eq!(
            f.server_modified.unwrap().to_rfc3339(),
            "2015-05-12T15:50:38+00:00"
        );
    }

    #[test]
    fn token_file_is_private_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dropbox.json");
        crate::destinations::auth::write_private_file(&path, b"{\"refresh_token\":\"a\"}").unwrap();
        crate::destinations::auth::write_private_file(&path, b"{\"refresh_token\":\"b\"}").unwrap();
        let stored = read_token_file(&path).unwrap().unwrap();
        assert_eq!(stored.refresh_token, "b");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the token file is left: no temp files.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dropbox.json"]);
        std::fs::write(&path, "{\"refresh_token\": 12}").unwrap();
        let err = read_token_file(&path).err().unwrap();
        assert!(!err.contains("12"), "{err}");
    }
}
