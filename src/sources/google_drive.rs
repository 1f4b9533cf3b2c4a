//! Google Drive v3 as a source: OAuth 2.0 for an installed application (PKCE, a loopback
//! redirect whose final address the user pastes back), the full listing, the changes feed,
//! downloads resumed with `Range`, and exports of Docs Editors files.
//!
//! Why this flow: Google retired the out-of-band (copy the code from the page) flow, and the
//! device flow does not allow Drive scopes. A *Desktop app* OAuth client may redirect to any
//! `http://127.0.0.1:<port>` address; nothing has to listen there. The browser then shows
//! "cannot connect" with the code in its address bar, and the user pastes that address (or
//! just the code) back into the panel, the API or the CLI. It works behind Home Assistant's
//! ingress, which has no public URL. The scope is `drive.readonly`.
//!
//! Never logged or returned: the client secret, refresh and access tokens (all [`Secret`]s,
//! masked by `crate::redact`), and download URLs (`exportLinks` carry no token, but the
//! requests carry a bearer token, which reqwest never prints).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, header::RANGE};
use serde::{Deserialize, Serialize};

use crate::{
    destinations::auth::{Authorization, Pkce, write_private_file},
    redact::Secret,
    transfer::{ByteSource, ByteStream, TransferError},
};

/// What a `google_photos` section is told: no API reads a whole library any more.
pub const PHOTOS_EXPLAINED: &str = "Google Photos cannot be backed up through an API: since 31 March 2025 Google's \
     Library API only sees what the app itself uploaded, and no API lists a whole library. What \
     works: schedule a Google Takeout export of Photos into Google Drive (takeout.google.com, \
     'Add to Drive', every 2 months) and mirror Drive with a [google_drive.<name>] section; the \
     Takeout archives arrive through Drive's changes feed like any file. Remove [google_photos]";

pub const SCOPE: &str = "https://www.googleapis.com/auth/drive.readonly";
pub const FOLDER: &str = "application/vnd.google-apps.folder";
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Drive's export limit; larger exports go through `exportLinks`.
pub const EXPORT_LIMIT: u64 = 10 * 1024 * 1024;
const NOT_AUTHORIZED: &str =
    "is not authorized yet: authorize it from the panel, the API or `offsite auth";
const REVOKED: &str = "Google refused the stored refresh token (revoked or expired; an app left in \
     \"Testing\" gets tokens that expire after 7 days): authorize again";

/// Fields asked for every file.
const FILE_FIELDS: &str = "id,name,mimeType,parents,md5Checksum,size,modifiedTime,version,trashed,\
     driveId,exportLinks,shortcutDetails";

fn default_api_url() -> String {
    "https://www.googleapis.com".into()
}
fn default_token_url() -> String {
    "https://oauth2.googleapis.com/token".into()
}
fn default_auth_url() -> String {
    "https://accounts.google.com/o/oauth2/v2/auth".into()
}
fn default_redirect_uri() -> String {
    "http://127.0.0.1:8765/".into()
}

fn default_prefix() -> String {
    "google-drive".into()
}
fn default_trash_days() -> u32 {
    30
}
fn default_keep_versions() -> u32 {
    5
}
fn default_retries() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_chunk_mib() -> u64 {
    8
}

/// What Docs Editors files are exported as (a file extension each).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFormats {
    #[serde(default = "ExportFormats::docx")]
    pub document: String,
    #[serde(default = "ExportFormats::xlsx")]
    pub spreadsheet: String,
    #[serde(default = "ExportFormats::pptx")]
    pub presentation: String,
    #[serde(default = "ExportFormats::pdf")]
    pub drawing: String,
}

impl ExportFormats {
    fn docx() -> String {
        "docx".into()
    }
    fn xlsx() -> String {
        "xlsx".into()
    }
    fn pptx() -> String {
        "pptx".into()
    }
    fn pdf() -> String {
        "pdf".into()
    }
}

impl Default for ExportFormats {
    fn default() -> Self {
        ExportFormats {
            document: Self::docx(),
            spreadsheet: Self::xlsx(),
            presentation: Self::pptx(),
            drawing: Self::pdf(),
        }
    }
}

/// The formats Drive exports each Docs Editors type to, by extension.
const EXPORTS: &[(&str, &[(&str, &str)])] = &[
    (
        "application/vnd.google-apps.document",
        &[
            (
                "docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            ("odt", "application/vnd.oasis.opendocument.text"),
            ("pdf", "application/pdf"),
            ("txt", "text/plain"),
            ("rtf", "application/rtf"),
            ("epub", "application/epub+zip"),
            ("md", "text/markdown"),
        ],
    ),
    (
        "application/vnd.google-apps.spreadsheet",
        &[
            (
                "xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            ("ods", "application/vnd.oasis.opendocument.spreadsheet"),
            ("pdf", "application/pdf"),
            ("csv", "text/csv"),
        ],
    ),
    (
        "application/vnd.google-apps.presentation",
        &[
            (
                "pptx",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ),
            ("odp", "application/vnd.oasis.opendocument.presentation"),
            ("pdf", "application/pdf"),
        ],
    ),
    (
        "application/vnd.google-apps.drawing",
        &[
            ("pdf", "application/pdf"),
            ("svg", "image/svg+xml"),
            ("png", "image/png"),
        ],
    ),
];

impl ExportFormats {
    /// (extension, MIME type) a Docs Editors file of `mime` is exported as; None for a type
    /// that cannot be exported (Forms, Sites, shortcuts, folders, ...).
    pub fn for_mime(&self, mime: &str) -> Option<(&str, &'static str)> {
        let ext = match mime {
            "application/vnd.google-apps.document" => &self.document,
            "application/vnd.google-apps.spreadsheet" => &self.spreadsheet,
            "application/vnd.google-apps.presentation" => &self.presentation,
            "application/vnd.google-apps.drawing" => &self.drawing,
            _ => return None,
        };
        let formats = EXPORTS.iter().find(|(m, _)| *m == mime)?.1;
        formats
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(e, m)| (*e, *m))
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (field, mime, ext) in [
            (
                "document",
                "application/vnd.google-apps.document",
                &self.document,
            ),
            (
                "spreadsheet",
                "application/vnd.google-apps.spreadsheet",
                &self.spreadsheet,
            ),
            (
                "presentation",
                "application/vnd.google-apps.presentation",
                &self.presentation,
            ),
            (
                "drawing",
                "application/vnd.google-apps.drawing",
                &self.drawing,
            ),
        ] {
            if self.for_mime(mime).is_none() {
                let known: Vec<&str> = EXPORTS
                    .iter()
                    .find(|(m, _)| *m == mime)
                    .map(|(_, f)| f.iter().map(|(e, _)| *e).collect())
                    .unwrap_or_default();
                return Err((
                    format!("export.{field}"),
                    format!(
                        "{ext:?} is not a format Drive exports to; one of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[google_drive.<name>]`: a Google Drive account mirrored to destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleDriveConfig {
    /// A Desktop-app OAuth client's id; else `GOOGLE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its secret; else `GOOGLE_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A refresh token obtained elsewhere; else `GOOGLE_REFRESH_TOKEN`; else the one stored
    /// by authorizing.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// The loopback address Google sends the browser back to (nothing needs to listen).
    #[serde(default = "default_redirect_uri")]
    pub redirect_uri: String,
    #[serde(default = "default_api_url")]
    pub api_url: String,
    #[serde(default = "default_token_url")]
    pub token_url: String,
    #[serde(default = "default_auth_url")]
    pub auth_url: String,
    /// Also mirror shared drives (Workspace accounts), under `shared-drives/<drive>/`.
    #[serde(default)]
    pub shared_drives: bool,
    /// Destinations (names under `[destinations]`, S3 or folder) that each get the mirror.
    pub destinations: Vec<String>,
    /// Objects go under `<destination root>/<prefix>/<path in Drive>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Paths in Drive (`Photos/Old`, `Shared/tmp`) not mirrored, with all below them.
    #[serde(default)]
    pub exclude_paths: Vec<String>,
    /// File-name patterns not mirrored (`*.tmp`, `.DS_Store`).
    #[serde(default)]
    pub exclude_patterns: Vec<String>,
    #[serde(default)]
    pub export: ExportFormats,
    /// Deleted files stay under `.trash/` this many days before they are purged.
    #[serde(default = "default_trash_days")]
    pub trash_days: u32,
    /// Previous versions kept under `.versions/` per file (where the bucket keeps no versions
    /// of its own).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
    /// Any engine schedule form; default every hour.
    #[serde(default)]
    pub schedule: Option<toml::Value>,
    /// The seed's real-time mode: poll the changes feed this often instead of `schedule`.
    #[serde(default, with = "humantime_serde")]
    pub poll: Option<Duration>,
    /// Attempts after the first, per file.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_chunk_mib")]
    pub chunk_mib: u64,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl GoogleDriveConfig {
    /// Checks what can be checked without the network; (field, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.destinations.is_empty() {
            return Err((
                "destinations".into(),
                "name at least one destination (an S3 bucket or a folder)".into(),
            ));
        }
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty()
            || prefix
                .split('/')
                .any(|p| p == ".." || p == "." || p.is_empty())
        {
            return Err((
                "prefix".into(),
                format!(
                    "{:?} is not a plain relative path (like \"google-drive\")",
                    self.prefix
                ),
            ));
        }
        for (i, p) in self.exclude_patterns.iter().enumerate() {
            globset::Glob::new(p)
                .map_err(|e| (format!("exclude_patterns[{i}]"), format!("{p:?}: {e}")))?;
        }
        if let Some(p) = self.poll
            && p < Duration::from_secs(1)
        {
            return Err(("poll".into(), "poll at most once a second".into()));
        }
        if self.chunk_mib == 0 {
            return Err(("chunk_mib".into(), "must be at least 1".into()));
        }
        self.export.validate()
    }
}

/// A file as Drive describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mime_type: String,
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(default)]
    pub md5_checksum: Option<String>,
    /// Drive sends it as a string.
    #[serde(default, with = "string_u64")]
    pub size: Option<u64>,
    #[serde(default)]
    pub modified_time: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub trashed: bool,
    #[serde(default)]
    pub drive_id: Option<String>,
    #[serde(default)]
    pub export_links: BTreeMap<String, String>,
}

mod string_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            S(String),
            N(u64),
        }
        Ok(match Option::<N>::deserialize(d)? {
            Some(N::S(s)) => Some(s.parse().map_err(serde::de::Error::custom)?),
            Some(N::N(n)) => Some(n),
            None => None,
        })
    }
}

impl DriveFile {
    pub fn is_folder(&self) -> bool {
        self.mime_type == FOLDER
    }
    /// A Google Workspace type (Docs, Sheets, Forms, shortcuts, ...): no bytes of its own.
    pub fn is_workspace(&self) -> bool {
        self.mime_type.starts_with("application/vnd.google-apps.")
    }
}

/// One entry of the changes feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    #[serde(default)]
    pub change_type: Option<String>,
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub file_id: Option<String>,
    #[serde(default)]
    pub file: Option<DriveFile>,
    #[serde(default)]
    pub drive_id: Option<String>,
}

pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
    /// Only on the changes feed's last page.
    pub new_start: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    refresh_token: String,
    obtained_at: DateTime<Utc>,
}

struct Access {
    token: Secret,
    renew_at: Instant,
}

/// A Google Drive account: its OAuth client and the API calls the mirror makes. Shared by the
/// jobs of one source, so concurrent jobs refresh the access token once.
pub struct GoogleDrive {
    name: String,
    conn: GoogleDriveConfig,
    client_id: String,
    client_secret: Option<Secret>,
    /// A refresh token from the configuration or environment, if given.
    configured_refresh: Option<Secret>,
    token_file: PathBuf,
    http: reqwest::Client,
    revoked: Mutex<Option<String>>,
    access: tokio::sync::Mutex<Option<Access>>,
    /// Rate-limit answers in a row, for the backoff.
    limited: AtomicU32,
}

impl std::fmt::Debug for GoogleDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleDrive")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Google's API error body: `{"error": {"code", "message", "errors": [{"reason", ...}]}}`.
#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiError,
}
#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ApiErrorItem>,
}
#[derive(Deserialize)]
struct ApiErrorItem {
    #[serde(default)]
    reason: String,
}

/// A failed API call: the reason Google gave (`userRateLimitExceeded`, `notFound`,
/// `exportSizeLimitExceeded`, ...) beside the classified error.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub reason: String,
    pub error: TransferError,
}

impl From<ApiFailure> for TransferError {
    fn from(f: ApiFailure) -> Self {
        f.error
    }
}

impl From<TransferError> for ApiFailure {
    fn from(error: TransferError) -> Self {
        ApiFailure {
            status: 0,
            reason: String::new(),
            error,
        }
    }
}

impl GoogleDrive {
    /// `env` reads `GOOGLE_CLIENT_ID`, `GOOGLE_CLIENT_SECRET`, `GOOGLE_REFRESH_TOKEN`.
    pub fn new(
        name: &str,
        conn: GoogleDriveConfig,
        token_file: PathBuf,
        http: reqwest::Client,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GoogleDrive, (String, String)> {
        let client_id = conn
            .client_id
            .clone()
            .or_else(|| env("GOOGLE_CLIENT_ID"))
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                (
                    "client_id".to_string(),
                    "not set, and GOOGLE_CLIENT_ID is not in the environment: create an OAuth \
                     client of type \"Desktop app\" in the Google Cloud console and give its id"
                        .to_string(),
                )
            })?;
        let client_secret = conn
            .client_secret
            .clone()
            .or_else(|| env("GOOGLE_CLIENT_SECRET").map(Secret::new));
        let configured_refresh = conn
            .refresh_token
            .clone()
            .or_else(|| env("GOOGLE_REFRESH_TOKEN").map(Secret::new));
        for (field, url) in [
            ("api_url", &conn.api_url),
            ("token_url", &conn.token_url),
            ("auth_url", &conn.auth_url),
            ("redirect_uri", &conn.redirect_uri),
        ] {
            url::Url::parse(url).map_err(|e| (field.to_string(), format!("not a URL: {e}")))?;
        }
        Ok(GoogleDrive {
            name: name.to_string(),
            conn,
            client_id,
            client_secret,
            configured_refresh,
            token_file,
            http,
            revoked: Mutex::new(None),
            access: tokio::sync::Mutex::new(None),
            limited: AtomicU32::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &GoogleDriveConfig {
        &self.conn
    }

    fn revoked(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The refresh token: the stored one (authorizing writes it), else the configured one.
    fn refresh_token(&self) -> Result<Secret, TransferError> {
        let stored = read_token(&self.token_file);
        let token = stored.or_else(|| self.configured_refresh.clone());
        let revoked = self.revoked();
        match token {
            Some(t) if revoked.as_deref() != Some(t.expose()) => Ok(t),
            Some(_) => Err(TransferError::Unauthorized(REVOKED.into())),
            None => Err(TransferError::Unauthorized(format!(
                "Google Drive {} {NOT_AUTHORIZED} {}`",
                self.name, self.name
            ))),
        }
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenReply, TransferError> {
        let mut form = form.to_vec();
        form.push(("client_id", &self.client_id));
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let reply = self
            .http
            .post(&self.conn.token_url)
            .timeout(TOKEN_TIMEOUT)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport("token endpoint", e))?;
        let status = reply.status();
        let body = reply
            .bytes()
            .await
            .map_err(|e| transport("token endpoint", e))?;
        if status.is_success() {
            let parsed: TokenReply = serde_json::from_slice(&body).map_err(|_| {
                TransferError::Temporary("Google token endpoint: unreadable answer".into())
            })?;
            crate::redact::register(&parsed.access_token);
            if let Some(r) = &parsed.refresh_token {
                crate::redact::register(r);
            }
            return Ok(parsed);
        }
        let refused: Option<OAuthError> = serde_json::from_slice(&body).ok();
        let text = match &refused {
            Some(r) => format!("{}: {}", r.error, r.error_description),
            None => format!("HTTP {status}"),
        };
        let text = crate::redact::redact(&text).into_owned();
        Err(match refused.as_ref().map(|r| r.error.as_str()) {
            Some("invalid_grant") => TransferError::Unauthorized(text),
            Some("invalid_client" | "unauthorized_client") => TransferError::Permanent(format!(
                "Google refused the OAuth client ({text}): check client_id and client_secret"
            )),
            _ if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                TransferError::Temporary(format!("Google token endpoint: {text}"))
            }
            _ => TransferError::Permanent(format!("Google token endpoint: {text}")),
        })
    }

    /// A current access token, refreshed when missing or about to expire.
    async fn access_token(&self, rejected: Option<&Secret>) -> Result<Secret, TransferError> {
        let mut slot = self.access.lock().await;
        if let Some(a) = slot.as_ref()
            && Instant::now() < a.renew_at
            && rejected != Some(&a.token)
        {
            return Ok(a.token.clone());
        }
        let refresh = self.refresh_token()?;
        let asked = Instant::now();
        match self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ])
            .await
        {
            Ok(reply) => {
                let token = Secret::new(reply.access_token);
                let life = Duration::from_secs(reply.expires_in.unwrap_or(3600));
                *slot = Some(Access {
                    token: token.clone(),
                    renew_at: asked + life.saturating_sub(Duration::from_secs(60)),
                });
                Ok(token)
            }
            Err(TransferError::Unauthorized(why)) => {
                tracing::warn!(source = %self.name, "Google refused the refresh token: {why}");
                *self.revoked() = Some(refresh.expose().to_string());
                *slot = None;
                Err(TransferError::Unauthorized(REVOKED.into()))
            }
            Err(e) => Err(e),
        }
    }

    /// One GET against the API (JSON or media), with one retry after a rejected access token.
    async fn get(
        &self,
        url: &str,
        query: &[(&str, &str)],
        range: Option<u64>,
        what: &str,
    ) -> Result<reqwest::Response, ApiFailure> {
        let mut rejected: Option<Secret> = None;
        loop {
            let token = self.access_token(rejected.as_ref()).await?;
            let mut request = self.http.get(url).query(query).bearer_auth(token.expose());
            request = match range {
                Some(offset) if offset > 0 => request.header(RANGE, format!("bytes={offset}-")),
                // Media bodies may rightly take long: the body reader watches for stalls.
                Some(_) => request,
                None => request.timeout(CALL_TIMEOUT),
            };
            let reply = request.send().await.map_err(|e| transport(what, e))?;
            let status = reply.status();
            if status.is_success() {
                self.limited.store(0, Ordering::Relaxed);
                return Ok(reply);
            }
            if status == StatusCode::UNAUTHORIZED && rejected.is_none() {
                rejected = Some(token);
                continue;
            }
            let retry_after = reply
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::transfer::http::parse_retry_after(v, Utc::now()));
            let body = reply.bytes().await.unwrap_or_default();
            return Err(self.failure(what, status, retry_after, &body));
        }
    }

    fn failure(
        &self,
        what: &str,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> ApiFailure {
        let parsed: Option<ApiErrorBody> = serde_json::from_slice(body).ok();
        let (message, reason) = match &parsed {
            Some(b) => (
                b.error.message.clone(),
                b.error
                    .errors
                    .first()
                    .map(|e| e.reason.clone())
                    .unwrap_or_default(),
            ),
            None => (
                String::from_utf8_lossy(body).chars().take(200).collect(),
                String::new(),
            ),
        };
        let text = crate::redact::redact(&format!(
            "Google Drive {what}: HTTP {status}{}{}",
            if reason.is_empty() { "" } else { " " },
            if reason.is_empty() {
                message.clone()
            } else {
                format!("{reason}: {message}")
            }
        ))
        .into_owned();
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || matches!(
                reason.as_str(),
                "userRateLimitExceeded" | "rateLimitExceeded" | "sharingRateLimitExceeded"
            );
        let error = if rate_limited {
            // Backs off without using an attempt: the wait doubles with each refusal in a row.
            let n = self.limited.fetch_add(1, Ordering::Relaxed).min(6);
            let wait = retry_after.unwrap_or(Duration::from_secs(1 << n)) + jitter();
            TransferError::RetryAfter {
                wait,
                message: text,
            }
        } else {
            match status.as_u16() {
                401 => TransferError::Unauthorized(text),
                404 => TransferError::NotFound(text),
                408 | 500..=599 => TransferError::Temporary(text),
                _ => TransferError::Permanent(text),
            }
        };
        ApiFailure {
            status: status.as_u16(),
            reason,
            error,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<T, ApiFailure> {
        let url = format!(
            "{}/drive/v3/{path}",
            self.conn.api_url.trim_end_matches('/')
        );
        let reply = self.get(&url, query, None, what).await?;
        let body = reply.bytes().await.map_err(|e| transport(what, e))?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::from(TransferError::Temporary(format!(
                "Google Drive {what}: unreadable answer: {e}"
            )))
        })
    }

    fn drives_query<'a>(&self, q: &mut Vec<(&'a str, &'a str)>) {
        if self.conn.shared_drives {
            q.push(("includeItemsFromAllDrives", "true"));
            q.push(("supportsAllDrives", "true"));
        }
    }

    /// The id of My Drive's root folder.
    pub async fn root_id(&self) -> Result<String, ApiFailure> {
        let f: DriveFile = self
            .get_json("files/root", &[("fields", "id")], "files.get root")
            .await?;
        Ok(f.id)
    }

    /// Shared drives the account can see: (id, name).
    pub async fn list_shared_drives(&self) -> Result<Vec<(String, String)>, ApiFailure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Drives {
            #[serde(default)]
            drives: Vec<DriveEntry>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        #[derive(Deserialize)]
        struct DriveEntry {
            id: String,
            #[serde(default)]
            name: String,
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("pageSize", "100")];
            if let Some(t) = &token {
                q.push(("pageToken", t));
            }
            let page: Drives = self.get_json("drives", &q, "drives.list").await?;
            all.extend(page.drives.into_iter().map(|d| (d.id, d.name)));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    /// One page of every file not in the trash.
    pub async fn list_page(&self, token: Option<&str>) -> Result<Page<DriveFile>, ApiFailure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Files {
            #[serde(default)]
            files: Vec<DriveFile>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let mut q = vec![
            ("q", "trashed = false"),
            ("pageSize", "1000"),
            ("fields", fields.as_str()),
        ];
        if self.conn.shared_drives {
            q.push(("corpora", "allDrives"));
        }
        self.drives_query(&mut q);
        if let Some(t) = token {
            q.push(("pageToken", t));
        }
        let page: Files = self.get_json("files", &q, "files.list").await?;
        Ok(Page {
            items: page.files,
            next: page.next_page_token,
            new_start: None,
        })
    }

    /// Where the changes feed stands now.
    pub async fn start_page_token(&self) -> Result<String, ApiFailure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Start {
            start_page_token: String,
        }
        let mut q = vec![];
        self.drives_query(&mut q);
        let s: Start = self
            .get_json("changes/startPageToken", &q, "changes.getStartPageToken")
            .await?;
        Ok(s.start_page_token)
    }

    /// One page of the changes feed from `token`.
    pub async fn changes_page(&self, token: &str) -> Result<Page<Change>, ApiFailure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Changes {
            #[serde(default)]
            changes: Vec<Change>,
            #[serde(default)]
            next_page_token: Option<String>,
            #[serde(default)]
            new_start_page_token: Option<String>,
        }
        let fields = format!(
            "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,driveId,file({FILE_FIELDS}))"
        );
        let mut q = vec![
            ("pageToken", token),
            ("pageSize", "1000"),
            ("includeRemoved", "true"),
            ("fields", fields.as_str()),
        ];
        self.drives_query(&mut q);
        let page: Changes = self.get_json("changes", &q, "changes.list").await?;
        if page.next_page_token.is_none() && page.new_start_page_token.is_none() {
            return Err(TransferError::Temporary(
                "Google Drive changes.list: a page with neither nextPageToken nor newStartPageToken"
                    .into(),
            )
            .into());
        }
        Ok(Page {
            items: page.changes,
            next: page.next_page_token,
            new_start: page.new_start_page_token,
        })
    }

    /// The file's bytes from `offset` on, exactly `size - offset` of them.
    pub async fn download(
        &self,
        id: &str,
        offset: u64,
        size: u64,
    ) -> Result<ByteStream, TransferError> {
        let url = format!(
            "{}/drive/v3/files/{id}",
            self.conn.api_url.trim_end_matches('/')
        );
        let what = format!("download of file {id}");
        let reply = self
            .get(
                &url,
                &[("alt", "media"), ("supportsAllDrives", "true")],
                Some(offset),
                &what,
            )
            .await?;
        let skip = if offset > 0 && reply.status() != StatusCode::PARTIAL_CONTENT {
            // A server that ignored the Range: drop what we have.
            offset
        } else {
            0
        };
        Ok(super::supervisor::body_reader(
            reply,
            &format!("Google Drive file {id}"),
            skip,
            size - offset,
        ))
    }

    /// Exports a Docs Editors file as `mime`, through `exportLinks` when the file is beyond
    /// the export call's 10 MB limit. Its length is not known before it ends: spool it.
    pub async fn export(&self, file: &DriveFile, mime: &str) -> Result<ByteStream, TransferError> {
        let url = format!(
            "{}/drive/v3/files/{}/export",
            self.conn.api_url.trim_end_matches('/'),
            file.id
        );
        let what = format!("export of file {}", file.id);
        let reply = match self.get(&url, &[("mimeType", mime)], Some(0), &what).await {
            Ok(r) => r,
            Err(f) if f.reason == "exportSizeLimitExceeded" => {
                let link = file.export_links.get(mime).ok_or_else(|| {
                    TransferError::Permanent(format!(
                        "Google Drive file {} is too large to export as {mime}, and it offers no \
                         export link for that format",
                        file.id
                    ))
                })?;
                tracing::info!(file = %file.id, "export beyond 10 MB; using its export link");
                self.get(link, &[], Some(0), &what).await?
            }
            Err(f) => return Err(f.error),
        };
        use futures::TryStreamExt;
        let body = reply
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.without_url()));
        Ok(Box::pin(tokio_util::io::StreamReader::new(body)))
    }

    /// A binary file as a transfer reads it.
    pub fn media<'a>(&'a self, id: &'a str, size: u64) -> Media<'a> {
        Media {
            drive: self,
            id,
            size,
        }
    }
}

/// A binary Drive file, opened at an offset with `Range`.
pub struct Media<'a> {
    drive: &'a GoogleDrive,
    id: &'a str,
    size: u64,
}

#[async_trait::async_trait]
impl ByteSource for Media<'_> {
    fn size(&self) -> Option<u64> {
        Some(self.size)
    }

    async fn open_at(&self, offset: u64) -> Result<(ByteStream, u64), TransferError> {
        if offset > self.size {
            return Err(TransferError::Permanent(format!(
                "offset {offset} is past the end of Google Drive file {} ({} bytes)",
                self.id, self.size
            )));
        }
        if offset == self.size {
            return Ok((Box::pin(tokio::io::empty()), self.size));
        }
        Ok((
            self.drive.download(self.id, offset, self.size).await?,
            self.size,
        ))
    }
}

#[async_trait::async_trait]
impl Authorization for GoogleDrive {
    fn is_authorized(&self) -> bool {
        self.refresh_token().is_ok()
    }

    fn redirect_uri(&self) -> Option<&str> {
        None
    }

    fn authorize_url(
        &self,
        pkce: &Pkce,
        _redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.conn.redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", SCOPE)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("access_type", "offline")
            // Without it Google gives a refresh token only the first time.
            .append_pair("prompt", "consent");
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        let base = &self.conn.auth_url;
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{}", q.finish())
    }

    /// `code` is the code, or the whole address the browser ended on
    /// (`http://127.0.0.1:8765/?code=…&scope=…`).
    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        _redirect_uri: Option<&str>,
    ) -> Result<(), TransferError> {
        let code = code_from_paste(code)?;
        let mut slot = self.access.lock().await;
        let asked = Instant::now();
        let reply = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", verifier),
                ("redirect_uri", &self.conn.redirect_uri),
            ])
            .await
            .map_err(|e| match e {
                TransferError::Unauthorized(m) => {
                    TransferError::Permanent(format!("the code was not accepted: {m}"))
                }
                e => e,
            })?;
        let refresh = reply.refresh_token.clone().ok_or_else(|| {
            TransferError::Permanent(
                "Google returned no refresh token; remove offsite's access at \
                 myaccount.google.com/permissions and authorize again"
                    .into(),
            )
        })?;
        let data = serde_json::to_vec_pretty(&StoredToken {
            refresh_token: refresh,
            obtained_at: Utc::now(),
        })
        .expect("a token serializes");
        let path = self.token_file.clone();
        tokio::task::spawn_blocking(move || write_private_file(&path, &data))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| {
                TransferError::Permanent(format!(
                    "could not store the Google token in {}: {e}",
                    self.token_file.display()
                ))
            })?;
        *self.revoked() = None;
        *slot = Some(Access {
            token: Secret::new(reply.access_token),
            renew_at: asked
                + Duration::from_secs(reply.expires_in.unwrap_or(3600))
                    .saturating_sub(Duration::from_secs(60)),
        });
        tracing::info!(source = %self.name, "Google Drive authorized");
        Ok(())
    }

    async fn forget(&self) -> std::io::Result<()> {
        *self.access.lock().await = None;
        match tokio::fs::remove_file(&self.token_file).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The code out of what the user pasted: the code itself, or the loopback address with it.
pub fn code_from_paste(pasted: &str) -> Result<String, TransferError> {
    let pasted = pasted.trim();
    if pasted.starts_with("http://") || pasted.starts_with("https://") {
        let url = url::Url::parse(pasted)
            .map_err(|e| TransferError::Permanent(format!("not an address: {e}")))?;
        let mut code = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "code" => code = Some(v.into_owned()),
                "error" => {
                    return Err(TransferError::Permanent(format!(
                        "Google did not grant access: {v}"
                    )));
                }
                _ => {}
            }
        }
        return code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| TransferError::Permanent("the address has no code=… in it".into()));
    }
    if pasted.is_empty() {
        return Err(TransferError::Permanent("nothing was pasted".into()));
    }
    Ok(pasted.to_string())
}

fn read_token(path: &Path) -> Option<Secret> {
    let data = std::fs::read(path).ok()?;
    match serde_json::from_slice::<StoredToken>(&data) {
        Ok(t) => Some(Secret::new(t.refresh_token)),
        Err(_) => {
            tracing::warn!(path = %path.display(), "ignoring an unreadable Google token file");
            None
        }
    }
}

fn transport(what: &str, e: reqwest::Error) -> TransferError {
    crate::transfer::http::transport_error(&format!("Google Drive {what}"), e)
}

fn jitter() -> Duration {
    Duration::from_millis(rand::random::<u64>() % 500)
}

/// Parses an RFC 3339 time Drive sent.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_out_of_a_pasted_address_or_as_it_is() {
        assert_eq!(
            code_from_paste(" http://127.0.0.1:8765/?state=x&code=4/0Ab-c_d&scope=https://www.googleapis.com/auth/drive.readonly ")
                .unwrap(),
            "4/0Ab-c_d"
        );
        assert_eq!(code_from_paste("4/0AbCd").unwrap(), "4/0AbCd");
        assert!(
            code_from_paste("http://127.0.0.1:8765/?error=access_denied")
                .unwrap_err()
                .to_string()
                .contains("access_denied")
        );
        assert!(code_from_paste("http://127.0.0.1:8765/?state=x").is_err());
        assert!(code_from_paste("  ").is_err());
    }

    #[test]
    fn sizes_come_as_strings() {
        let f: DriveFile = serde_json::from_str(
            r#"{"id":"a","name":"x","mimeType":"text/plain","size":"123","md5Checksum":"abc"}"#,
        )
        .unwrap();
        assert_eq!(f.size, Some(123));
        assert!(!f.is_workspace());
    }
}
