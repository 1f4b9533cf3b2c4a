//! A SharePoint document library as a destination, through Microsoft Graph with an app-only
//! sign-in (OAuth2 client credentials of an Azure app registration: a client secret, or a
//! certificate whose private key signs a client-assertion JWT, RS256).
//!
//! - Sign-in: a token from `{login_url}/{tenant}/oauth2/v2.0/token`, kept in memory until
//!   shortly before it expires, fetched again then or when Graph answers 401 (client
//!   credentials have no refresh token). A refused sign-in is permanent and says which of
//!   tenant, app, secret or certificate is wrong (AADSTS90002 / 700016 / 7000215 / 700027);
//!   the secret is a [`Secret`] and never appears anywhere, nor does a signed assertion.
//! - Where: site (`GET /sites/{host}:/{path}`) → library by name (`GET /sites/{id}/drives`) →
//!   folder (`GET /drives/{id}/root:/{folder}`, created when missing, segment by segment);
//!   resolved once, at start-up or on first use, and cached.
//! - Upload: `createUploadSession` with the configured conflict behaviour, then fragments PUT to
//!   the session's `uploadUrl` without an Authorization header (the URL is the credential),
//!   each a multiple of 320 KiB below 60 MiB except the last, with `Content-Range`. The
//!   checkpointed session holds the `uploadUrl` and the QuickXorHash of the acknowledged
//!   bytes; a resume asks the URL for `nextExpectedRanges`. At the end the stored item's size
//!   and `file.hashes.quickXorHash` must be what was sent, else the item is deleted.
//! - The `uploadUrl` is a bearer capability: registered with `crate::redact` whenever it is
//!   made or read back from a checkpoint, and its `tempauth` parameter is masked by that
//!   mechanism's capability patterns wherever a checkpoint is shown. Transport errors are
//!   formatted without their URL.
//!
//! Not here: managed identity (it only exists on Azure hosts).

mod config;
mod quickxor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::TryStreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap, RANGE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use self::config::{
    Conflict, DEFAULT_GRAPH_URL, DEFAULT_LIBRARY, DEFAULT_LOGIN_URL, SharePointConfig, SiteRef,
    thumbprint_bytes,
};
pub use self::quickxor::{QuickXorHash, quick_xor_hash};
use super::{ChunkRules, Destination, DestinationInfo, RemoteFile, Sent, Session};
use crate::redact::Secret;
use crate::transfer::http::{
    BODY_SLICE, Progress, Watched, parse_retry_after, sliced, watch_progress,
};
use crate::transfer::{ByteStream, TransferError};

/// Every fragment but the last is a multiple of this (320 KiB).
pub const FRAGMENT: u64 = 327_680;
/// Every fragment is smaller than 60 MiB.
pub const MAX_FRAGMENT: u64 = 60 * 1024 * 1024 - 1;
/// Total time for a call that moves no upload body.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A fragment that moves no bytes (and gets no answer) for this long is abandoned.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// A token is fetched again this long before it expires, so no request carries a dying one.
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// When a 429 comes without `Retry-After` (Graph nearly always sends one).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Listing pages are bounded by the server; this bounds one that never stops paging.
const MAX_PAGES: usize = 10_000;
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// An OAuth error answer (Azure AD's token endpoint, the Instance Metadata Service).
#[derive(Deserialize, Default)]
struct Refused {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// The library's drive id and the folder's item id, as Graph names them.
#[derive(Debug, Clone)]
struct Ids {
    drive: String,
    folder: String,
}

struct AccessToken {
    token: Secret,
    renew_at: Instant,
}

/// How the app proves who it is.
enum Credential {
    Secret(Secret),
    /// A certificate's private key and its thumbprint as JWT `x5t` (base64url of the SHA-1).
    Certificate {
        key: Box<rsa::RsaPrivateKey>,
        x5t: String,
    },
    /// The Azure host's managed identity, asked for through the Instance Metadata Service
    /// (never through a proxy: IMDS refuses forwarded requests, and a proxy is not the host).
    ManagedIdentity {
        endpoint: String,
        /// A user-assigned identity's client id; none for the system-assigned one.
        client_id: Option<String>,
        http: reqwest::Client,
    },
}

/// The resource a managed-identity token is asked for (IMDS takes a resource, not a scope).
const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The IMDS token API version every Azure SDK uses.
const IMDS_API_VERSION: &str = "2018-02-01";

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn read_private_key(path: &std::path::Path) -> Result<rsa::RsaPrivateKey, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "sharepoint.certificate_key: cannot read {}: {e}",
            path.display()
        )
    })?;
    // No parser detail: it could quote the key.
    rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|_| {
            format!(
                "sharepoint.certificate_key: {} holds no RSA private key in PEM (PKCS#8 \
                 \"BEGIN PRIVATE KEY\" or PKCS#1 \"BEGIN RSA PRIVATE KEY\")",
                path.display()
            )
        })
}

/// A SharePoint document library (and folder) as a backup destination.
pub struct SharePointDestination {
    http: reqwest::Client,
    tenant: String,
    client_id: String,
    credential: Credential,
    site: SiteRef,
    library: String,
    /// Inside the library, without leading or trailing '/'.
    folder: String,
    /// `/{folder}`, or "" for the library's top level.
    root: String,
    conflict: Conflict,
    login_url: String,
    graph_url: String,
    /// Held across the token request: concurrent uploads fetch one token, not one each.
    token: tokio::sync::Mutex<Option<AccessToken>>,
    /// Held while resolving: resolved once.
    ids: tokio::sync::Mutex<Option<Ids>>,
    stall_timeout_ms: AtomicU64,
}

impl std::fmt::Debug for SharePointDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharePointDestination")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("site", &self.site)
            .field("library", &self.library)
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

/// The checkpointed state of one upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "sharepoint")]
struct UploadSession {
    /// Graph's `uploadUrl`, a bearer capability ("" for an empty file, sent in one PUT).
    upload_url: String,
    /// The path asked for, under the library.
    remote: String,
    size: u64,
    /// QuickXorHash of the acknowledged bytes.
    hash: QuickXorHash,
}

/// The parts of a driveItem offsite reads.
#[derive(Debug, Clone, Deserialize)]
struct DriveItem {
    id: String,
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    file: Option<FileFacet>,
    #[serde(default)]
    folder: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct FileFacet {
    #[serde(default)]
    hashes: Option<Hashes>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hashes {
    #[serde(default)]
    quick_xor_hash: Option<String>,
}

impl DriveItem {
    fn quick_xor_hash(&self) -> Option<String> {
        self.file
            .as_ref()
            .and_then(|f| f.hashes.as_ref())
            .and_then(|h| h.quick_xor_hash.clone())
    }
}

struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

async fn read_reply(response: reqwest::Response) -> reqwest::Result<Reply> {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()))
}

/// The `tid` claim of an access token (a JWT; read, not verified: Graph verifies it), when
/// the token is one.
fn token_tenant(token: &str) -> Option<String> {
    use base64::Engine;
    let claims = token.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&claims).ok()?;
    claims.get("tid")?.as_str().map(str::to_string)
}

/// Graph's error body: `{"error": {"code": "...", "message": "...", "innerError": {...}}}`.
fn graph_error(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (String::new(), excerpt(body)),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn redacted(text: String) -> String {
    crate::redact::redact(&text).into_owned()
}

/// The first of `nextExpectedRanges` ("N-" or "N-M"): where the server wants bytes next.
fn next_expected(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ranges {
        #[serde(default)]
        next_expected_ranges: Vec<String>,
    }
    let ranges: Ranges = serde_json::from_slice(body).ok()?;
    ranges
        .next_expected_ranges
        .iter()
        .filter_map(|r| r.split('-').next()?.trim().parse::<u64>().ok())
        .min()
}

/// Splits "{parent}/{name}" (relative to the library, no leading '/').
fn split_remote(remote: &str) -> Result<(String, String), TransferError> {
    let path = remote.trim_start_matches('/');
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (p.to_string(), n.to_string()),
        None => (String::new(), path.to_string()),
    };
    if name.is_empty() {
        return Err(TransferError::Permanent(format!(
            "{remote:?} is not a file path"
        )));
    }
    Ok((parent, name))
}

impl SharePointDestination {
    pub fn new(config: &SharePointConfig, http: reqwest::Client) -> Result<Self, String> {
        config
            .validate()
            .map_err(|(field, message)| format!("sharepoint.{field}: {message}"))?;
        let site = SiteRef::parse(&config.site).map_err(|e| format!("sharepoint.site: {e}"))?;
        let folder = config.folder();
        let credential = match (
            &config.client_secret,
            &config.certificate_key,
            &config.certificate_thumbprint,
        ) {
            _ if config.managed_identity => Credential::ManagedIdentity {
                endpoint: config.identity_endpoint.trim().to_string(),
                client_id: Some(config.client_id.trim().to_string()).filter(|c| !c.is_empty()),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .map_err(|e| format!("sharepoint.managed_identity: {e}"))?,
            },
            (Some(secret), _, _) => Credential::Secret(secret.clone()),
            (None, Some(path), Some(thumbprint)) => {
                use base64::Engine;
                let thumbprint = thumbprint_bytes(thumbprint).ok_or_else(|| {
                    "sharepoint.certificate_thumbprint: 40 hex digits".to_string()
                })?;
                Credential::Certificate {
                    key: Box::new(read_private_key(path)?),
                    x5t: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumbprint),
                }
            }
            _ => return Err("sharepoint.client_secret: required".into()),
        };
        Ok(SharePointDestination {
            http,
            tenant: config.tenant_id.trim().to_string(),
            client_id: config.client_id.trim().to_string(),
            credential,
            site,
            library: config.library.trim().to_string(),
            root: if folder.is_empty() {
                String::new()
            } else {
                format!("/{folder}")
            },
            folder,
            conflict: config.conflict,
            login_url: config.login_url.trim_end_matches('/').to_string(),
            graph_url: config.graph_url.trim_end_matches('/').to_string(),
            token: tokio::sync::Mutex::new(None),
            ids: tokio::sync::Mutex::new(None),
            stall_timeout_ms: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
        })
    }

    /// How long a fragment may go without moving a byte before it is abandoned.
    pub fn with_stall_timeout(self, timeout: Duration) -> Self {
        self.stall_timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    fn where_(&self) -> String {
        let folder = if self.folder.is_empty() {
            String::new()
        } else {
            format!("/{}", self.folder)
        };
        format!(
            "{}{} library {:?}{folder}",
            self.site.host, self.site.path, self.library
        )
    }

    // -- sign-in ----------------------------------------------------------------------------

    async fn access_token(&self) -> Result<Secret, TransferError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.token.clone());
        }
        let fresh = self.fetch_token().await?;
        let token = fresh.token.clone();
        *slot = Some(fresh);
        Ok(token)
    }

    /// Graph refused `rejected` (401): a new one, unless a concurrent caller got it already.
    async fn renew_token(&self, rejected: &Secret) -> Result<Secret, TransferError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && t.token != *rejected
            && Instant::now() < t.renew_at
        {
            return Ok(t.token.clone());
        }
        *slot = None;
        tracing::debug!("Graph refused the access token; signing in again");
        let fresh = self.fetch_token().await?;
        let token = fresh.token.clone();
        *slot = Some(fresh);
        Ok(token)
    }

    async fn fetch_token(&self) -> Result<AccessToken, TransferError> {
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        if let Credential::ManagedIdentity {
            endpoint,
            client_id,
            http,
        } = &self.credential
        {
            return self
                .identity_token(endpoint, client_id.as_deref(), http)
                .await;
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.login_url, self.tenant);
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", GRAPH_SCOPE.into()),
        ];
        match &self.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose().into())),
            Credential::ManagedIdentity { .. } => unreachable!("asked for above"),
            Credential::Certificate { key, x5t } => {
                let assertion = self.client_assertion(key, x5t, &url)?;
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push(("client_assertion", assertion.expose().into()));
            }
        }
        let asked_at = Instant::now();
        let reply = async {
            read_reply(
                self.http
                    .post(&url)
                    .timeout(TOKEN_TIMEOUT)
                    .form(&form)
                    .send()
                    .await?,
            )
            .await
        }
        .await
        .map_err(|e| self.transport_error("sign-in", e))?;
        if reply.status.is_success() {
            // No serde detail: it could quote the token.
            let granted: Granted = serde_json::from_slice(&reply.body).map_err(|_| {
                TransferError::Temporary("SharePoint sign-in: unreadable token answer".into())
            })?;
            let token = Secret::new(granted.access_token);
            let ttl = Duration::from_secs(granted.expires_in.unwrap_or(3600));
            let margin = RENEW_MARGIN.min(ttl / 2);
            return Ok(AccessToken {
                token,
                renew_at: asked_at + (ttl - margin),
            });
        }
        Err(self.sign_in_refused(&reply))
    }

    /// A token for Graph from the host's managed identity: `GET` the Instance Metadata
    /// Service's token endpoint with `Metadata: true`. Its answer carries `expires_in` as a
    /// string. A `tenant_id` in the configuration must be the identity's (the token's `tid`):
    /// the files go to that tenant's SharePoint.
    async fn identity_token(
        &self,
        endpoint: &str,
        client_id: Option<&str>,
        http: &reqwest::Client,
    ) -> Result<AccessToken, TransferError> {
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            #[serde(default)]
            expires_in: Option<Value>,
        }
        let which = match client_id {
            Some(id) => format!("the user-assigned managed identity {id}"),
            None => "the system-assigned managed identity".to_string(),
        };
        let mut query = vec![
            ("api-version", IMDS_API_VERSION),
            ("resource", GRAPH_RESOURCE),
        ];
        if let Some(id) = client_id {
            query.push(("client_id", id));
        }
        let asked_at = Instant::now();
        let reply = async {
            read_reply(
                http.get(endpoint)
                    .query(&query)
                    .header("Metadata", "true")
                    .timeout(TOKEN_TIMEOUT)
                    .send()
                    .await?,
            )
            .await
        }
        .await
        .map_err(|e| match self.transport_error("sign-in", e) {
            TransferError::Temporary(m) => TransferError::Temporary(format!(
                "{m} (no answer from the Azure Instance Metadata Service at {endpoint}: a managed identity exists only on an Azure VM; elsewhere set client_secret or a certificate and managed_identity = false)"
            )),
            other => other,
        })?;
        let status = reply.status.as_u16();
        if !reply.status.is_success() {
            let refused: Refused = serde_json::from_slice(&reply.body).unwrap_or_default();
            let detail = redacted(format!(
                "HTTP {status} {}: {}",
                refused.error, refused.error_description
            ));
            // IMDS's advice: 404 (it is being updated), 410, 429 and 5xx pass; the rest is
            // how this host is set up.
            return Err(match status {
                404 | 410 | 429 | 500..=599 => match reply.retry_after {
                    Some(wait) => TransferError::RetryAfter {
                        wait,
                        message: format!("SharePoint sign-in with {which}: {detail}"),
                    },
                    None => TransferError::Temporary(format!(
                        "SharePoint sign-in with {which}: {detail}"
                    )),
                },
                _ if refused.error_description.contains("Identity not found") => {
                    TransferError::Permanent(format!(
                        "sharepoint.managed_identity: this host has no {}; assign it to the VM in the Azure portal (Identity), or fix client_id ({detail})",
                        which.trim_start_matches("the ")
                    ))
                }
                _ => TransferError::Permanent(format!(
                    "SharePoint sign-in with {which} refused: {detail}"
                )),
            });
        }
        // No serde detail: it could quote the token.
        let granted: Granted = serde_json::from_slice(&reply.body).map_err(|_| {
            TransferError::Temporary("SharePoint sign-in: unreadable token answer".into())
        })?;
        let token = Secret::new(granted.access_token);
        if !self.tenant.is_empty() {
            match token_tenant(token.expose()) {
                Some(tid) if tid.eq_ignore_ascii_case(&self.tenant) => {}
                Some(tid) => {
                    return Err(TransferError::Permanent(format!(
                        "sharepoint.tenant_id: {which} belongs to tenant {tid}, not {}",
                        self.tenant
                    )));
                }
                // A domain cannot be compared with the token's tenant id.
                None if !self.tenant.contains('.') => {
                    return Err(TransferError::Permanent(format!(
                        "sharepoint.tenant_id: the token of {which} names no tenant to compare with {}; leave tenant_id empty to accept the identity's",
                        self.tenant
                    )));
                }
                None => {}
            }
        }
        let secs = match granted.expires_in {
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        let ttl = Duration::from_secs(secs.unwrap_or(3600));
        let margin = RENEW_MARGIN.min(ttl / 2);
        Ok(AccessToken {
            token,
            renew_at: asked_at + (ttl - margin),
        })
    }

    /// A client-assertion JWT for the token endpoint `audience`, signed RS256 with the
    /// certificate's key, valid for ten minutes.
    fn client_assertion(
        &self,
        key: &rsa::RsaPrivateKey,
        x5t: &str,
        audience: &str,
    ) -> Result<Secret, TransferError> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use rsa::signature::{SignatureEncoding, Signer};
        let now = Utc::now().timestamp();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
        let claims = json!({
            "aud": audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": format!("{:032x}", rand::random::<u128>()),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((*key).clone());
        let signature = signer.try_sign(signing_input.as_bytes()).map_err(|e| {
            TransferError::Permanent(format!(
                "SharePoint sign-in: cannot sign with certificate_key: {e}"
            ))
        })?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )))
    }

    /// Azure AD's answer to a refused sign-in, said the way the user can fix it.
    fn sign_in_refused(&self, reply: &Reply) -> TransferError {
        let status = reply.status.as_u16();
        let refused: Refused = serde_json::from_slice(&reply.body).unwrap_or_default();
        // The description's first line; the rest is trace and correlation ids.
        let description = refused
            .error_description
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let detail = redacted(if refused.error.is_empty() {
            format!("HTTP {status} {}", excerpt(&reply.body))
        } else {
            format!("HTTP {status} {}: {description}", refused.error)
        });
        let has = |code: u64| {
            refused.error_codes.contains(&code) || description.contains(&format!("AADSTS{code}:"))
        };
        let what = if has(90002) || has(900023) {
            format!(
                "tenant_id {:?} is not a known Azure AD tenant (AADSTS90002)",
                self.tenant
            )
        } else if has(700016) {
            format!(
                "tenant {} has no app with client_id {:?} (AADSTS700016): check client_id and tenant_id",
                self.tenant, self.client_id
            )
        } else if has(7000215) {
            format!(
                "the client_secret of app {} was refused (AADSTS7000215): use the secret's Value, not its Secret ID",
                self.client_id
            )
        } else if has(700027) {
            format!(
                "the certificate of app {} was refused (AADSTS700027): check \
                 certificate_thumbprint, and that this certificate is uploaded to the app \
                 registration",
                self.client_id
            )
        } else if has(700024) {
            // A clock that is wrong now (a Raspberry Pi before its time sync) is right later.
            return TransferError::Temporary(format!(
                "SharePoint sign-in: the signed assertion is outside its valid time \
                 (AADSTS700024; check this machine's clock) ({detail})"
            ));
        } else if has(7000222) {
            format!(
                "the client_secret of app {} has expired (AADSTS7000222): create a new one",
                self.client_id
            )
        } else {
            match status {
                429 | 503 => {
                    let wait = reply.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                    return TransferError::RetryAfter {
                        wait,
                        message: format!(
                            "SharePoint sign-in: {detail}; retry in {} s",
                            wait.as_secs()
                        ),
                    };
                }
                408 | 500..=599 => {
                    return TransferError::Temporary(format!("SharePoint sign-in: {detail}"));
                }
                _ => format!(
                    "Azure AD refused app {} in tenant {}",
                    self.client_id, self.tenant
                ),
            }
        };
        TransferError::Permanent(format!("SharePoint sign-in: {what} ({detail})"))
    }

    // -- Graph calls ------------------------------------------------------------------------

    /// `{graph_url}/{segments...}`, each segment percent-encoded.
    fn api<S: AsRef<str>>(&self, segments: &[S]) -> url::Url {
        let mut url = url::Url::parse(&format!("{}/", self.graph_url)).expect("validated URL");
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL has a path");
            path.pop_if_empty();
            for s in segments {
                path.push(s.as_ref());
            }
        }
        url
    }

    /// The item at `path` in the drive (`/drives/{d}/root:/{path}`), or the route `action`
    /// under it (`/drives/{d}/root:/{path}:/{action}`).
    fn item_url(&self, drive: &str, path: &str, action: Option<&str>) -> url::Url {
        let path = path.trim_matches('/');
        let mut segments: Vec<String> = vec!["drives".into(), drive.into()];
        if path.is_empty() {
            segments.push("root".into());
        } else {
            segments.push("root:".into());
            let parts: Vec<&str> = path.split('/').collect();
            for (i, p) in parts.iter().enumerate() {
                if i + 1 == parts.len() && action.is_some() {
                    segments.push(format!("{p}:"));
                } else {
                    segments.push((*p).to_string());
                }
            }
        }
        if let Some(action) = action {
            segments.push(action.into());
        }
        self.api(&segments)
    }

    /// One authenticated call, signing in again once if Graph refuses the token. Any status
    /// comes back for the caller to read.
    async fn call(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, TransferError> {
        let mut token = self.access_token().await?;
        let mut renewed = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .timeout(CALL_TIMEOUT);
            if let Some(body) = body {
                request = request.json(body);
            }
            let reply = async { read_reply(request.send().await?).await }
                .await
                .map_err(|e| self.transport_error(what, e))?;
            if reply.status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                token = self.renew_token(&token).await?;
                continue;
            }
            return Ok(reply);
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
    ) -> Result<Option<T>, TransferError> {
        let reply = self.call(what, Method::GET, url, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.failure(what, &reply));
        }
        decode(what, &reply.body).map(Some)
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> TransferError {
        match crate::transfer::http::transport_error(&format!("SharePoint {what}"), e) {
            TransferError::Permanent(m) => TransferError::Permanent(redacted(m)),
            other => TransferError::Temporary(redacted(other.to_string())),
        }
    }

    /// A non-2xx answer, classified for the retry decision.
    fn failure(&self, what: &str, reply: &Reply) -> TransferError {
        let status = reply.status.as_u16();
        let (code, message) = graph_error(&reply.body);
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, true) => format!("HTTP {status}"),
            (true, false) => format!("HTTP {status}: {message}"),
            (false, true) => format!("HTTP {status} {code}"),
            (false, false) => format!("HTTP {status} {code}: {message}"),
        };
        let message = redacted(format!("SharePoint {what} ({}): {detail}", self.where_()));
        match status {
            429 | 503 => match reply.retry_after {
                Some(wait) => TransferError::RetryAfter {
                    message: format!("{message}; retry in {} s", wait.as_secs()),
                    wait,
                },
                None if status == 429 => TransferError::RetryAfter {
                    message: format!("{message}; retry in {} s", DEFAULT_RETRY_AFTER.as_secs()),
                    wait: DEFAULT_RETRY_AFTER,
                },
                None => TransferError::Temporary(message),
            },
            // Over quota: someone frees space or raises it; the backup waits at the source.
            507 => {
                TransferError::Temporary(format!("no space left in the SharePoint site: {message}"))
            }
            408 | 500..=599 => TransferError::Temporary(message),
            401 => TransferError::Permanent(format!(
                "{message} (Graph refused a freshly issued token: does the app registration \
                 have an application permission for SharePoint, granted by an admin?)"
            )),
            403 => TransferError::Permanent(format!(
                "{message} (the app needs Sites.Selected with a write grant on this site, \
                 or Sites.ReadWrite.All)"
            )),
            404 => TransferError::NotFound(message),
            _ => TransferError::Permanent(message),
        }
    }

    // -- where the files go ------------------------------------------------------------------

    /// The library's drive and the folder's item id, resolved on first use.
    async fn ids(&self) -> Result<Ids, TransferError> {
        let mut slot = self.ids.lock().await;
        if let Some(ids) = slot.as_ref() {
            return Ok(ids.clone());
        }
        let ids = self.resolve().await?;
        *slot = Some(ids.clone());
        Ok(ids)
    }

    /// Drops the resolved ids: the next call resolves site, library and folder again (and
    /// creates the folder if it was removed).
    async fn forget_ids(&self) {
        *self.ids.lock().await = None;
    }

    async fn resolve(&self) -> Result<Ids, TransferError> {
        #[derive(Deserialize)]
        struct Site {
            id: String,
        }
        #[derive(Deserialize)]
        struct Drive {
            id: String,
            #[serde(default)]
            name: String,
            #[serde(rename = "webUrl", default)]
            web_url: String,
        }
        #[derive(Deserialize)]
        struct Drives {
            value: Vec<Drive>,
        }
        let site_url = if self.site.path.is_empty() {
            self.api(&["sites", self.site.host.as_str()])
        } else {
            let mut segments = vec!["sites".to_string(), format!("{}:", self.site.host)];
            segments.extend(
                self.site
                    .path
                    .trim_matches('/')
                    .split('/')
                    .map(str::to_string),
            );
            self.api(&segments)
        };
        let site: Site = self
            .get_json("site lookup", site_url.as_str())
            .await?
            .ok_or_else(|| {
                TransferError::Permanent(format!(
                    "SharePoint has no site {}{} (check `site`; the app may also lack a grant on it)",
                    self.site.host, self.site.path
                ))
            })?;
        let drives: Drives = self
            .get_json(
                "library lookup",
                self.api(&["sites", site.id.as_str(), "drives"]).as_str(),
            )
            .await?
            .ok_or_else(|| {
                TransferError::Permanent(format!(
                    "SharePoint site {}{} lists no document libraries",
                    self.site.host, self.site.path
                ))
            })?;
        let wanted = self.library.to_lowercase();
        let url_name = |d: &Drive| {
            let last = d
                .web_url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            url::form_urlencoded::parse(last.replace('+', "%2B").as_bytes())
                .next()
                .map(|(k, _)| k.to_lowercase())
                .unwrap_or_default()
        };
        let drive = drives
            .value
            .iter()
            .find(|d| d.name.to_lowercase() == wanted)
            .or_else(|| drives.value.iter().find(|d| url_name(d) == wanted))
            .ok_or_else(|| {
                let names: Vec<&str> = drives.value.iter().map(|d| d.name.as_str()).collect();
                TransferError::Permanent(format!(
                    "SharePoint site {}{} has no document library {:?} (check `library`; it has: {})",
                    self.site.host,
                    self.site.path,
                    self.library,
                    names.join(", ")
                ))
            })?
            .id
            .clone();
        let folder = self.folder_id(&drive).await?;
        tracing::info!(
            site = %format!("{}{}", self.site.host, self.site.path),
            library = %self.library,
            folder = %self.folder,
            "SharePoint destination ready"
        );
        Ok(Ids { drive, folder })
    }

    /// The folder's item id; missing folders are created, one level at a time.
    async fn folder_id(&self, drive: &str) -> Result<String, TransferError> {
        let root: DriveItem = self
            .get_json("folder lookup", self.item_url(drive, "", None).as_str())
            .await?
            .ok_or_else(|| {
                TransferError::Permanent(format!(
                    "SharePoint library {:?} has no root",
                    self.library
                ))
            })?;
        let mut parent = root.id;
        let mut path = String::new();
        for segment in self.folder.split('/').filter(|s| !s.is_empty()) {
            path = if path.is_empty() {
                segment.to_string()
            } else {
                format!("{path}/{segment}")
            };
            let found: Option<DriveItem> = self
                .get_json("folder lookup", self.item_url(drive, &path, None).as_str())
                .await?;
            let item = match found {
                Some(item) => item,
                None => self.create_folder(drive, &parent, segment, &path).await?,
            };
            if item.folder.is_none() {
                return Err(TransferError::Permanent(format!(
                    "SharePoint: {path} in library {:?} is a file, not a folder (check `folder`)",
                    self.library
                )));
            }
            parent = item.id;
        }
        Ok(parent)
    }

    async fn create_folder(
        &self,
        drive: &str,
        parent: &str,
        name: &str,
        path: &str,
    ) -> Result<DriveItem, TransferError> {
        let what = "folder creation";
        let url = self.api(&["drives", drive, "items", parent, "children"]);
        let body = json!({
            "name": name,
            "folder": {},
            "@microsoft.graph.conflictBehavior": "fail",
        });
        let reply = self
            .call(what, Method::POST, url.as_str(), Some(&body))
            .await?;
        if reply.status == StatusCode::CONFLICT {
            // Made meanwhile by someone else: use it.
            return self
                .get_json(what, self.item_url(drive, path, None).as_str())
                .await?
                .ok_or_else(|| {
                    TransferError::Temporary(format!("SharePoint: folder {path} came and went"))
                });
        }
        if !reply.status.is_success() {
            return Err(self.failure(what, &reply));
        }
        tracing::info!(library = %self.library, folder = %path, "created the SharePoint folder");
        decode(what, &reply.body)
    }

    /// The committed file at `remote` (a folder there is no file).
    async fn item(&self, remote: &str) -> Result<Option<DriveItem>, TransferError> {
        let ids = self.ids().await?;
        let item: Option<DriveItem> = self
            .get_json(
                "file lookup",
                self.item_url(&ids.drive, remote, None).as_str(),
            )
            .await?;
        Ok(item.filter(|i| i.file.is_some()))
    }

    fn remote_file(&self, parent: &str, item: &DriveItem) -> RemoteFile {
        let parent = parent.trim_matches('/');
        RemoteFile {
            path: if parent.is_empty() {
                format!("/{}", item.name)
            } else {
                format!("/{parent}/{}", item.name)
            },
            size: item.size,
            content_hash: item.quick_xor_hash(),
        }
    }

    async fn delete_item_id(&self, drive: &str, id: &str) -> Result<(), TransferError> {
        let url = self.api(&["drives", drive, "items", id]);
        let reply = self
            .call("delete", Method::DELETE, url.as_str(), None)
            .await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.failure("delete", &reply))
    }

    // -- upload sessions ---------------------------------------------------------------------

    /// The session's state; its `uploadUrl` is masked in logs and errors from here on, also
    /// after a restart that read it back from a checkpoint.
    fn state(session: &Session) -> Result<UploadSession, TransferError> {
        let s: UploadSession = session.get()?;
        crate::redact::register(&s.upload_url);
        Ok(s)
    }

    fn conflict_error(&self, remote: &str, reply: &Reply) -> TransferError {
        let (code, message) = graph_error(&reply.body);
        TransferError::Permanent(redacted(format!(
            "SharePoint ({}) already has a file {remote} and `conflict` is \"{}\": {code}: {message}",
            self.where_(),
            self.conflict.as_str()
        )))
    }

    async fn create_session(&self, remote: &str, size: u64) -> Result<String, TransferError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            upload_url: String,
        }
        let what = "createUploadSession";
        let ids = self.ids().await?;
        let (parent, name) = split_remote(remote)?;
        let url = if parent == self.folder {
            self.api(&[
                "drives".to_string(),
                ids.drive.clone(),
                "items".into(),
                format!("{}:", ids.folder),
                format!("{name}:"),
                "createUploadSession".into(),
            ])
        } else {
            self.item_url(&ids.drive, remote, Some("createUploadSession"))
        };
        let body = json!({
            "item": {
                "@microsoft.graph.conflictBehavior": self.conflict.as_str(),
                "name": name,
                "fileSize": size,
            }
        });
        let reply = self
            .call(what, Method::POST, url.as_str(), Some(&body))
            .await?;
        match reply.status.as_u16() {
            200 | 201 => {}
            409 => return Err(self.conflict_error(remote, &reply)),
            507 => {
                let e = self.failure(what, &reply);
                return Err(TransferError::Temporary(format!(
                    "{e} (the backup is {size} bytes)"
                )));
            }
            404 => {
                // The folder was removed (or moved): look it up again next time.
                self.forget_ids().await;
                return Err(TransferError::Temporary(format!(
                    "{} (was the folder removed? it is looked up again at the next attempt)",
                    self.failure(what, &reply)
                )));
            }
            _ => return Err(self.failure(what, &reply)),
        }
        // No serde detail: it would quote the URL.
        let created: Created = serde_json::from_slice(&reply.body).map_err(|_| {
            TransferError::Temporary("SharePoint createUploadSession: unreadable answer".into())
        })?;
        let url = Secret::new(created.upload_url);
        if url::Url::parse(url.expose()).is_err() {
            return Err(TransferError::Temporary(
                "SharePoint createUploadSession: the uploadUrl is not a URL".into(),
            ));
        }
        Ok(url.expose().to_string())
    }

    /// One call to an upload session's own URL (no Authorization: the URL is the credential).
    async fn session_call(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, TransferError> {
        async { read_reply(request.timeout(CALL_TIMEOUT).send().await?).await }
            .await
            .map_err(|e| self.transport_error(what, e))
    }

    /// Where the session wants bytes next (GET uploadUrl, no Authorization).
    async fn session_position(&self, s: &UploadSession) -> Result<u64, TransferError> {
        let what = "upload session status";
        let reply = self
            .session_call(what, self.http.get(&s.upload_url))
            .await?;
        match reply.status.as_u16() {
            200 => next_expected(&reply.body).ok_or_else(|| {
                TransferError::SessionGone(format!(
                    "SharePoint: the upload session of {} expects no more bytes",
                    s.remote
                ))
            }),
            401 | 404 | 410 => Err(TransferError::SessionGone(
                self.failure(what, &reply).to_string(),
            )),
            _ => Err(self.failure(what, &reply)),
        }
    }

    /// PUTs bytes `[offset, offset + data.len())` to the session, watched for stalls.
    async fn put_fragment(
        &self,
        s: &UploadSession,
        offset: u64,
        data: Bytes,
    ) -> Result<Reply, TransferError> {
        let len = data.len() as u64;
        if len == 0 {
            return Err(TransferError::Permanent(format!(
                "internal error: an empty fragment for {} at {offset}",
                s.remote
            )));
        }
        if len > MAX_FRAGMENT {
            return Err(TransferError::Permanent(format!(
                "a fragment of {len} bytes is over Graph's 60 MiB limit"
            )));
        }
        let range = format!("bytes {offset}-{}/{}", offset + len - 1, s.size);
        let progress = Arc::new(Progress::new());
        // Deliberately no bearer token: the uploadUrl is the credential, and Graph refuses
        // fragments that carry one.
        let request = self
            .http
            .put(&s.upload_url)
            .header(CONTENT_RANGE, range)
            .header(CONTENT_LENGTH, len);
        let request = if data.len() <= BODY_SLICE {
            request.body(data)
        } else {
            request.body(reqwest::Body::wrap_stream(sliced(data, progress.clone())))
        };
        let stall = Duration::from_millis(self.stall_timeout_ms.load(Ordering::Relaxed));
        watch_progress(
            async { read_reply(request.send().await?).await },
            &progress,
            stall,
        )
        .await
        .map_err(|e| match e {
            Watched::Failed(e) => self.transport_error("fragment upload", e),
            Watched::Stalled => TransferError::Temporary(format!(
                "SharePoint fragment upload of {}: no progress for {} s; connection abandoned",
                s.remote,
                stall.as_secs_f64()
            )),
        })
    }

    /// What a fragment answer other than the expected one means.
    async fn fragment_failure(
        &self,
        s: &UploadSession,
        offset: u64,
        reply: &Reply,
    ) -> TransferError {
        match reply.status.as_u16() {
            // Already received (an answer that never came): ask where the session is.
            416 => match self.session_position(s).await {
                Ok(at) if at > offset => TransferError::IncorrectOffset(at),
                Ok(at) => TransferError::Temporary(format!(
                    "SharePoint refused the fragment at {offset} of {} (416) but expects {at}",
                    s.remote
                )),
                Err(e) => e,
            },
            // The session is gone, or its URL's own authorization (`tempauth`) has run out: a
            // new bearer token cannot help, a new session does.
            401 | 404 | 410 => {
                TransferError::SessionGone(self.failure("fragment upload", reply).to_string())
            }
            409 => self.conflict_error(&s.remote, reply),
            _ => self.failure("fragment upload", reply),
        }
    }

    /// Small files: one PUT of the content (upload sessions cannot hold an empty file).
    async fn put_whole(&self, s: &UploadSession, data: Bytes) -> Result<DriveItem, TransferError> {
        let what = "upload";
        let ids = self.ids().await?;
        let mut url = self.item_url(&ids.drive, &s.remote, Some("content"));
        url.query_pairs_mut()
            .append_pair("@microsoft.graph.conflictBehavior", self.conflict.as_str());
        let mut token = self.access_token().await?;
        let mut renewed = false;
        loop {
            let reply = async {
                read_reply(
                    self.http
                        .put(url.as_str())
                        .bearer_auth(token.expose())
                        .timeout(CALL_TIMEOUT)
                        .body(data.clone())
                        .send()
                        .await?,
                )
                .await
            }
            .await
            .map_err(|e| self.transport_error(what, e))?;
            match reply.status.as_u16() {
                200 | 201 => return decode(what, &reply.body),
                401 if !renewed => {
                    renewed = true;
                    token = self.renew_token(&token).await?;
                }
                409 => return Err(self.conflict_error(&s.remote, &reply)),
                _ => return Err(self.failure(what, &reply)),
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, TransferError> {
    serde_json::from_slice(body)
        .map_err(|e| TransferError::Temporary(format!("SharePoint {what}: unreadable answer: {e}")))
}

/// `hasher` with `bytes` folded in, off the async threads for big pieces.
async fn hashed(mut hasher: QuickXorHash, bytes: Bytes) -> Result<QuickXorHash, TransferError> {
    if bytes.len() <= 1 << 20 {
        hasher.update(&bytes);
        return Ok(hasher);
    }
    tokio::task::spawn_blocking(move || {
        hasher.update(&bytes);
        hasher
    })
    .await
    .map_err(|e| TransferError::Temporary(format!("hashing failed: {e}")))
}

#[async_trait::async_trait]
impl Destination for SharePointDestination {
    fn info(&self) -> DestinationInfo {
        DestinationInfo {
            kind: "sharepoint",
            location: format!(
                "https://{}{}/{}{}",
                self.site.host, self.site.path, self.library, self.root
            ),
        }
    }

    /// Fragments are multiples of 320 KiB below 60 MiB (Graph's rule).
    fn chunk_rules(&self) -> ChunkRules {
        ChunkRules {
            multiple: FRAGMENT,
            min: FRAGMENT,
            max: MAX_FRAGMENT,
            max_chunks: None,
        }
    }

    fn root(&self) -> &str {
        &self.root
    }

    /// Signs in and finds (or creates) the folder: a wrong tenant, app, secret, site or
    /// library stops start-up with a message naming it.
    async fn prepare(&self) -> Result<(), TransferError> {
        self.ids().await.map(|_| ())
    }

    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        #[derive(Deserialize)]
        struct Page {
            value: Vec<DriveItem>,
            #[serde(rename = "@odata.nextLink", default)]
            next: Option<String>,
        }
        let ids = self.ids().await?;
        let mut url = self.api(&[
            "drives",
            ids.drive.as_str(),
            "items",
            ids.folder.as_str(),
            "children",
        ]);
        url.query_pairs_mut().append_pair("$top", "1000");
        let mut next = Some(url.to_string());
        let mut files = Vec::new();
        for _ in 0..MAX_PAGES {
            let Some(page_url) = next.take() else { break };
            let Some(page) = self.get_json::<Page>("listing", &page_url).await? else {
                self.forget_ids().await;
                return Err(TransferError::Temporary(format!(
                    "SharePoint: the folder {} is gone; it is looked up again at the next attempt",
                    self.where_()
                )));
            };
            files.extend(
                page.value
                    .iter()
                    .filter(|i| i.file.is_some())
                    .map(|i| self.remote_file(&self.folder, i)),
            );
            next = page.next;
        }
        Ok(files)
    }

    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        let (parent, _) = split_remote(remote)?;
        Ok(self
            .item(remote)
            .await?
            .map(|i| self.remote_file(&parent, &i)))
    }

    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        let what = "download";
        let ids = self.ids().await?;
        let url = self.item_url(&ids.drive, remote, Some("content"));
        let mut token = self.access_token().await?;
        let mut renewed = false;
        loop {
            // Graph answers with a redirect to a pre-authenticated URL, which reqwest follows
            // (dropping the Authorization header if the host changes).
            let mut request = self.http.get(url.as_str()).bearer_auth(token.expose());
            if offset > 0 {
                request = request.header(RANGE, format!("bytes={offset}-"));
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(what, e))?;
            let status = response.status();
            if status == StatusCode::RANGE_NOT_SATISFIABLE {
                return Ok(Box::pin(tokio::io::empty()));
            }
            if status.is_success() {
                if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
                    return Err(TransferError::Temporary(format!(
                        "SharePoint download of {remote}: the range from byte {offset} was not honoured (HTTP {status})"
                    )));
                }
                let stream = response
                    .bytes_stream()
                    .map_err(|e| std::io::Error::other(e.without_url()));
                return Ok(Box::pin(tokio_util::io::StreamReader::new(stream)));
            }
            let reply = read_reply(response)
                .await
                .map_err(|e| self.transport_error(what, e))?;
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                token = self.renew_token(&token).await?;
                continue;
            }
            return Err(self.failure(what, &reply));
        }
    }

    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        let ids = self.ids().await?;
        let url = self.item_url(&ids.drive, remote, None);
        let reply = self
            .call("delete", Method::DELETE, url.as_str(), None)
            .await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.failure("delete", &reply))
    }

    async fn begin(&self, remote: &str, size: u64, _chunk: u64) -> Result<Session, TransferError> {
        split_remote(remote)?;
        let upload_url = if size == 0 {
            String::new()
        } else {
            self.create_session(remote, size).await?
        };
        Ok(Session::new(&UploadSession {
            upload_url,
            remote: remote.to_string(),
            size,
            hash: QuickXorHash::new(),
        }))
    }

    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        let s = Self::state(session)?;
        if s.hash.len() != ours {
            return Err(TransferError::SessionGone(format!(
                "the checkpointed QuickXorHash covers {} bytes, the checkpoint {ours}",
                s.hash.len()
            )));
        }
        if s.upload_url.is_empty() {
            return Ok(0);
        }
        let at = self.session_position(&s).await?;
        if at < ours {
            return Err(TransferError::SessionGone(format!(
                "SharePoint expects byte {at} of {} next, but {ours} were acknowledged",
                s.remote
            )));
        }
        Ok(at)
    }

    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        let mut s = Self::state(session)?;
        if s.hash.len() != offset {
            return Err(TransferError::IncorrectOffset(s.hash.len()));
        }
        let end = offset + chunk.len() as u64;
        let (reply, hasher) = tokio::join!(
            self.put_fragment(&s, offset, chunk.clone()),
            hashed(s.hash.clone(), chunk)
        );
        let reply = reply?;
        if reply.status != StatusCode::ACCEPTED {
            return Err(self.fragment_failure(&s, offset, &reply).await);
        }
        match next_expected(&reply.body) {
            Some(at) if at == end => {}
            other => {
                return Err(TransferError::Temporary(format!(
                    "SharePoint took the fragment {offset}..{end} of {} but expects {} next",
                    s.remote,
                    other.map_or("nothing".to_string(), |n| n.to_string())
                )));
            }
        }
        s.hash = hasher?;
        session.set(&s);
        Ok(())
    }

    fn caught_up(
        &self,
        session: &mut Session,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        let mut s = Self::state(session)?;
        if s.hash.len() != offset {
            return Err(TransferError::SessionGone(format!(
                "the checkpointed QuickXorHash covers {} bytes, not {offset}",
                s.hash.len()
            )));
        }
        s.hash.update(bytes);
        session.set(&s);
        Ok(())
    }

    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError> {
        let s = Self::state(session)?;
        if s.remote != remote {
            return Err(TransferError::Permanent(format!(
                "the upload session is for {}, not {remote}",
                s.remote
            )));
        }
        if s.hash.len() != offset {
            return Err(TransferError::IncorrectOffset(s.hash.len()));
        }
        let total = offset + chunk.len() as u64;
        if total != sent.size || total != s.size {
            return Err(TransferError::Permanent(format!(
                "{remote}: {total} bytes reached the destination, the source gave {} (the session was opened for {})",
                sent.size, s.size
            )));
        }
        let (item, hasher) = if s.upload_url.is_empty() {
            (self.put_whole(&s, chunk).await?, s.hash.clone())
        } else {
            let (reply, hasher) = tokio::join!(
                self.put_fragment(&s, offset, chunk.clone()),
                hashed(s.hash.clone(), chunk)
            );
            let reply = reply?;
            match reply.status.as_u16() {
                200 | 201 => (decode::<DriveItem>("upload", &reply.body)?, hasher?),
                202 => {
                    return Err(TransferError::Temporary(format!(
                        "SharePoint took the last fragment of {remote} but still expects bytes from {}",
                        next_expected(&reply.body).map_or("?".to_string(), |n| n.to_string())
                    )));
                }
                _ => return Err(self.fragment_failure(&s, offset, &reply).await),
            }
        };
        let ours = hasher.finalize();
        let (parent, _) = split_remote(remote)?;
        let stored = self.remote_file(&parent, &item);
        let theirs = item.quick_xor_hash();
        let mismatch = if item.size != sent.size {
            Some(format!("{} bytes, {} were sent", item.size, sent.size))
        } else {
            match &theirs {
                Some(theirs) if *theirs != ours => {
                    Some(format!("QuickXorHash {theirs}, the bytes sent give {ours}"))
                }
                Some(_) => None,
                // Only OneDrive for Business and SharePoint keep the hash; anything else is
                // read back and compared with the source's SHA-256.
                None => {
                    let (len, sha) =
                        crate::transfer::sha256_of(self.open_at(&stored.path, 0).await?).await?;
                    (len != sent.size || sha != sent.sha256).then(|| {
                        format!(
                            "it reads back as {len} bytes with SHA-256 {sha}, the source's is {}",
                            sent.sha256
                        )
                    })
                }
            }
        };
        if let Some(why) = mismatch {
            let ids = self.ids().await?;
            let removed = match self.delete_item_id(&ids.drive, &item.id).await {
                Ok(()) => "removed it".to_string(),
                Err(e) => format!("could not remove it: {e}"),
            };
            return Err(TransferError::Permanent(format!(
                "SharePoint stored {} as {why}; {removed}, not recorded as backed up",
                stored.path
            )));
        }
        Ok(RemoteFile {
            content_hash: Some(ours),
            ..stored
        })
    }

    async fn abandon(&self, session: &Session) -> Result<(), TransferError> {
        let s = Self::state(session)?;
        if s.upload_url.is_empty() {
            return Ok(());
        }
        let what = "upload session cancel";
        let reply = self
            .session_call(what, self.http.delete(&s.upload_url))
            .await?;
        if reply.status.is_success() || matches!(reply.status.as_u16(), 404 | 410) {
            return Ok(());
        }
        Err(self.failure(what, &reply))
    }

    /// The path and a digest of the upload URL: never the URL itself.
    fn upload_id(&self, session: &Session) -> String {
        match session.get::<UploadSession>() {
            Ok(s) => format!(
                "{} {}",
                s.remote,
                &crate::transfer::sha256_hex(s.upload_url.as_bytes())[..16]
            ),
            Err(_) => crate::transfer::sha256_hex(session.0.to_string().as_bytes()),
        }
    }

    // `same_content` is the trait's: read back and compare SHA-256. SharePoint's QuickXorHash is
    // not enough to say "this is our file": it is an XOR of shifted bytes, so blocks of 160
    // bytes in another order (two fragments swapped) hash alike.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination() -> SharePointDestination {
        let c: SharePointConfig = toml::from_str(
            "tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"sharepoint-unit-secret\"\n\
             site = \"https://contoso.sharepoint.com/sites/Backups\"\nfolder = \"HA/Back ups\"\n\
             graph_url = \"http://127.0.0.1:9/v1.0\"\n",
        )
        .unwrap();
        SharePointDestination::new(&c, reqwest::Client::new()).unwrap()
    }

    #[test]
    fn item_urls_use_graph_path_syntax() {
        let d = destination();
        assert_eq!(d.root(), "/HA/Back ups");
        assert_eq!(
            d.item_url("b!x", "/HA/Back ups/a#1.tar", Some("content"))
                .as_str(),
            "http://127.0.0.1:9/v1.0/drives/b!x/root:/HA/Back%20ups/a%231.tar:/content"
        );
        assert_eq!(
            d.item_url("b!x", "HA", None).as_str(),
            "http://127.0.0.1:9/v1.0/drives/b!x/root:/HA"
        );
        assert_eq!(
            d.item_url("b!x", "", None).as_str(),
            "http://127.0.0.1:9/v1.0/drives/b!x/root"
        );
    }

    #[test]
    fn fragments_are_320_kib_multiples_below_60_mib() {
        let rules = destination().chunk_rules();
        for mib in [1, 5, 8, 10, 59] {
            let chunk = rules.chunk_for(mib << 20, 1 << 40).unwrap();
            assert!(
                chunk.is_multiple_of(FRAGMENT) && chunk < 60 << 20,
                "{mib}: {chunk}"
            );
            assert!(chunk >= mib << 20 && chunk - (mib << 20) < FRAGMENT);
        }
        assert_eq!(rules.chunk_for(10 << 20, 1).unwrap(), 32 * FRAGMENT);
        assert_eq!(rules.chunk_for(100 << 20, 1).unwrap(), 191 * FRAGMENT);
        assert!(!rules.allows(FRAGMENT + 1) && rules.allows(3 * FRAGMENT));
    }

    #[test]
    fn ranges_and_error_bodies_are_read() {
        assert_eq!(
            next_expected(br#"{"expirationDateTime":"2026-12-03T00:00:00Z","nextExpectedRanges":["655360-"]}"#),
            Some(655_360)
        );
        assert_eq!(
            next_expected(br#"{"nextExpectedRanges":["12-55","3-5"]}"#),
            Some(3)
        );
        assert_eq!(next_expected(br#"{"nextExpectedRanges":[]}"#), None);
        assert_eq!(
            graph_error(br#"{"error":{"code":"itemNotFound","message":"The resource could not be found.","innerError":{"date":"x"}}}"#),
            ("itemNotFound".into(), "The resource could not be found.".into())
        );
        assert_eq!(
            graph_error(b"<html>bad gateway</html>").1,
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn sessions_are_tagged_and_their_url_is_masked() {
        let s = UploadSession {
            upload_url: "https://contoso.sharepoint.com/_api/v2.0/uploadSession?guid=1&tempauth=unit-capability-123".into(),
            remote: "/HA/x.tar".into(),
            size: 10,
            hash: QuickXorHash::new(),
        };
        let session = Session::new(&s);
        assert_eq!(session.0["type"], "sharepoint");
        SharePointDestination::state(&session).unwrap();
        assert!(!crate::redact::redact(&session.0.to_string()).contains("unit-capability-123"));
        let id = destination().upload_id(&session);
        assert!(
            !id.contains("tempauth") && id.starts_with("/HA/x.tar "),
            "{id}"
        );
        let other = Session(json!({"type": "s3", "key": "k"}));
        assert!(matches!(
            other.get::<UploadSession>(),
            Err(TransferError::SessionGone(_))
        ));
    }
}
