//! Configuration backups of network devices (`[devices.<name>]`, the `device_fetch` kind).
//!
//! A device type is one file implementing [`DeviceBackupHandler`] plus one line in [`TYPES`].
//! Every request goes through a [`DeviceClient`], which holds the device's timeout (for the
//! whole request, body included) and size limit, and names the device in every error.
//! Credentials are [`Secret`]s: registered with [`crate::redact`] when the configuration is
//! read, so they are masked in every log line, stored error and API answer.
//! Artifacts are kept by [`store`].

pub mod digest;
pub mod fritzbox;
pub mod generic;
pub mod opnsense;
pub mod shelly_gen1;
pub mod shelly_gen2;
pub mod store;
pub mod tasmota;
pub mod wled;

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;

use crate::redact::Secret;

/// What a fetch brought back.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Vec<u8>,
    /// The firmware or version, where the device reports it.
    pub firmware: Option<String>,
}

/// How an artifact can be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
    Binary,
}

/// A device type: how to fetch its configuration and how to tell whether it changed.
#[async_trait]
pub trait DeviceBackupHandler: Send + Sync {
    /// The artifact's file extension, without the dot.
    fn extension(&self) -> &'static str;
    fn format(&self) -> Format;
    /// The device's configuration as one artifact.
    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError>;
    /// That the device answers with these credentials; a short description (e.g. firmware).
    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError>;
    /// The content with volatile fields (clock, uptime, counters) removed, for "did the
    /// configuration change?". By default the bytes as they are.
    fn normalise(&self, bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
}

/// Every device type, by its `type` in the configuration.
pub static TYPES: &[(&str, &dyn DeviceBackupHandler)] = &[
    ("wled", &wled::Wled),
    ("shelly_gen1", &shelly_gen1::ShellyGen1),
    ("shelly_gen2", &shelly_gen2::ShellyGen2),
    ("tasmota", &tasmota::Tasmota),
    ("fritzbox", &fritzbox::FritzBox),
    ("opnsense", &opnsense::OpnSense),
    ("http", &generic::Generic),
];

pub fn handler(kind: &str) -> Option<&'static dyn DeviceBackupHandler> {
    TYPES.iter().find(|(k, _)| *k == kind).map(|(_, h)| *h)
}

pub fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|(k, _)| *k).collect()
}

// ------------------------------------------------------------------ configuration

pub const DEFAULT_KEEP: usize = 10;
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// `[devices.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// One of [`TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// `http://10.0.0.5`, `10.0.0.5` or `10.0.0.5:8080` (plain HTTP unless a scheme is given).
    pub host: Option<String>,
    /// For `type = "http"`: the URL fetched.
    pub url: Option<String>,
    /// For `type = "http"`: the method (default GET).
    pub method: Option<String>,
    /// For `type = "http"`: extra request headers (their values are treated as secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// For `type = "http"`: `basic`, `digest` or `bearer` (default: basic when a password is
    /// given).
    pub auth: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// For `type = "fritzbox"`: the export password (mandatory; it encrypts the export's
    /// secrets, and a restore asks for it).
    pub export_password: Option<Secret>,
    /// Accept a self-signed (or otherwise invalid) TLS certificate from this device (for an
    /// `https://` host such as a FRITZ!Box's TLS port or OPNsense's web UI). Default false.
    #[serde(default)]
    pub accept_invalid_certs: bool,
    pub token: Option<Secret>,
    /// Any engine schedule form (`every`, `cron`, `weekdays` + `at`); default every 24 hours.
    pub schedule: Option<toml::Value>,
    #[serde(default = "default_keep")]
    pub keep: usize,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_keep() -> usize {
    DEFAULT_KEEP
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn yes() -> bool {
    true
}

impl DeviceConfig {
    /// The field at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if handler(&self.kind).is_none() {
            return Err((
                "type",
                format!(
                    "unknown device type {:?} (known: {})",
                    self.kind,
                    type_names().join(", ")
                ),
            ));
        }
        if self.kind == "http" {
            let Some(u) = &self.url else {
                return Err(("url", "type \"http\" needs the url to fetch".into()));
            };
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") => {}
                _ => return Err(("url", format!("{u:?} is not an http(s) URL"))),
            }
            if let Some(m) = &self.method
                && reqwest::Method::from_bytes(m.as_bytes()).is_err()
            {
                return Err(("method", format!("{m:?} is not an HTTP method")));
            }
            match self.auth.as_deref() {
                None | Some("basic") | Some("none") => {}
                Some("digest") if self.password.is_some() => {}
                Some("digest") => {
                    return Err(("password", "auth \"digest\" needs a password".into()));
                }
                Some("bearer") if self.token.is_some() => {}
                Some("bearer") => return Err(("token", "auth \"bearer\" needs a token".into())),
                Some(a) => {
                    return Err((
                        "auth",
                        format!("{a:?} is not supported (basic, digest, bearer or none)"),
                    ));
                }
            }
            for k in self.headers.keys() {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err(("headers", format!("{k:?} is not a header name")));
                }
            }
        } else {
            let Some(h) = &self.host else {
                return Err((
                    "host",
                    format!("type {:?} needs the device's host", self.kind),
                ));
            };
            if base_url(h).is_none() {
                return Err(("host", format!("{h:?} is not a host or http(s) URL")));
            }
            if self.kind == "opnsense" && (self.username.is_none() || self.password.is_none()) {
                return Err((
                    if self.username.is_none() {
                        "username"
                    } else {
                        "password"
                    },
                    "type \"opnsense\" needs the API key as username and its secret as password"
                        .into(),
                ));
            }
            if self.kind == "opnsense"
                && let Some(key) = &self.username
            {
                // The API key is half the credential: masked like the secret.
                crate::redact::register_kept(key);
            }
            if self.kind == "fritzbox" {
                if self.password.is_none() {
                    return Err((
                        "password",
                        "type \"fritzbox\" needs the TR-064 password".into(),
                    ));
                }
                if self
                    .export_password
                    .as_ref()
                    .is_none_or(|p| p.expose().is_empty())
                {
                    return Err((
                        "export_password",
                        "type \"fritzbox\" needs an export password (the box refuses an export without one; it encrypts the export's secrets)".into(),
                    ));
                }
            }
        }
        if self.keep == 0 {
            return Err(("keep", "keep at least 1 version".into()));
        }
        if self.timeout_secs == 0 {
            return Err(("timeout_secs", "must be at least 1".into()));
        }
        if self.max_bytes == 0 {
            return Err(("max_bytes", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The base URL of `host` (no trailing slash).
    pub fn base(&self) -> Option<String> {
        self.host.as_deref().and_then(base_url)
    }
}

fn base_url(host: &str) -> Option<String> {
    let h = host.trim().trim_end_matches('/');
    let with_scheme = if h.contains("://") {
        h.to_string()
    } else {
        format!("http://{h}")
    };
    let u = url::Url::parse(&with_scheme).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    Some(with_scheme)
}

// ------------------------------------------------------------------ errors

/// A failed fetch, naming the device; `retry` whether another attempt may help (offline,
/// timeout) or not (wrong credentials, wrong answer).
#[derive(Debug, Clone)]
pub struct DeviceError {
    pub message: String,
    pub retry: bool,
    /// Not a failure: the device waits for the user's confirmation on it (the FRITZ!Box's
    /// second factor). Recorded as such and tried again on the schedule.
    pub waiting: bool,
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::redact(&self.message))
    }
}

impl std::error::Error for DeviceError {}

// ------------------------------------------------------------------ the client

/// Credentials of one request.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Basic(&'a str, &'a Secret),
    Bearer(&'a Secret),
}

/// Requests to one device, within its timeout and size limit.
pub struct DeviceClient {
    http: reqwest::Client,
    pub device: String,
    pub timeout: Duration,
    pub max_bytes: u64,
}

/// A response read in full.
pub struct Response {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl DeviceClient {
    pub fn new(http: reqwest::Client, device: &str, config: &DeviceConfig) -> DeviceClient {
        let http = if config.accept_invalid_certs {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap_or(http)
        } else {
            http
        };
        DeviceClient {
            http,
            device: device.to_string(),
            timeout: Duration::from_secs(config.timeout_secs),
            max_bytes: config.max_bytes,
        }
    }

    /// An error naming the device.
    pub fn error(&self, message: impl std::fmt::Display, retry: bool) -> DeviceError {
        DeviceError {
            message: format!("device {}: {message}", self.device),
            retry,
            waiting: false,
        }
    }

    pub async fn get(&self, url: &str, auth: Auth<'_>) -> Result<Response, DeviceError> {
        self.send(reqwest::Method::GET, url, &[], auth).await
    }

    /// One request and its whole body, within the timeout and the size limit.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        auth: Auth<'_>,
    ) -> Result<Response, DeviceError> {
        self.send_body(method, url, headers, auth, None).await
    }

    /// [`DeviceClient::send`] with a request body.
    pub async fn send_body(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        auth: Auth<'_>,
        body: Option<Vec<u8>>,
    ) -> Result<Response, DeviceError> {
        let shown = url::Url::parse(url)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| url.to_string());
        let mut req = self.http.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req = match auth {
            Auth::None => req,
            Auth::Basic(user, password) => req.basic_auth(user, Some(password.expose())),
            Auth::Bearer(token) => req.bearer_auth(token.expose()),
        };
        let work = async {
            let resp = req.send().await.map_err(|e| {
                self.error(format!("cannot reach {shown}: {}", without_url(&e)), true)
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if let Some(len) = resp.content_length()
                && len > self.max_bytes
            {
                return Err(self.too_big(&shown));
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    self.error(format!("reading {shown} failed: {}", without_url(&e)), true)
                })?;
                if body.len() as u64 + chunk.len() as u64 > self.max_bytes {
                    return Err(self.too_big(&shown));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(self.error(
                format!(
                    "timed out after {}s fetching {shown} (timeout_secs)",
                    self.timeout.as_secs()
                ),
                true,
            )),
        }
    }

    fn too_big(&self, shown: &str) -> DeviceError {
        self.error(
            format!(
                "the answer to {shown} is larger than max_bytes ({} bytes)",
                self.max_bytes
            ),
            false,
        )
    }

    /// A 2xx answer, else an error (401/403: the credentials, not retried).
    pub fn ok(&self, what: &str, r: Response) -> Result<Response, DeviceError> {
        let s = r.status;
        if s.is_success() {
            return Ok(r);
        }
        if s == reqwest::StatusCode::UNAUTHORIZED || s == reqwest::StatusCode::FORBIDDEN {
            return Err(self.error(
                format!(
                    "{what}: the device refused the credentials (HTTP {})",
                    s.as_u16()
                ),
                false,
            ));
        }
        Err(self.error(
            format!("{what}: HTTP {}", s.as_u16()),
            s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS,
        ))
    }
}

/// A reqwest error's text without its URL (which may carry a query with credentials).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the body broke off"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A JSON value from a body, or an error naming the device and what was asked.
pub fn json(
    client: &DeviceClient,
    what: &str,
    body: &[u8],
) -> Result<serde_json::Value, DeviceError> {
    serde_json::from_slice(body)
        .map_err(|e| client.error(format!("{what}: the answer is not JSON ({e})"), false))
}

/// JSON re-serialised with sorted keys (serde_json's map is ordered) and `volatile` top-level
/// keys removed.
pub fn canonical_json(bytes: &[u8], strip: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(mut v) => {
            strip(&mut v);
            serde_json::to_vec_pretty(&v).unwrap_or_else(|_| bytes.to_vec())
        }
        Err(_) => bytes.to_vec(),
    }
}

/// A device name: it names a directory under `<data_dir>/devices`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

// ------------------------------------------------------------------ diffs

/// Whether a JSON key names a secret (its value is masked in diffs).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["pass", "psk", "secret", "token", "key", "pwd", "auth"]
        .iter()
        .any(|s| k.contains(s))
}

fn mask(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if secret_key(k) && (v.is_string() || v.is_number()) {
                    *v = serde_json::Value::String("***".into());
                } else {
                    mask(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

/// A readable line diff (`-`/`+`, unchanged lines with two spaces) of two versions of a
/// text format, normalised, with secrets masked (values of secret-looking JSON keys, and
/// every registered credential). `None` for binary formats.
pub fn diff(handler: &dyn DeviceBackupHandler, old: &[u8], new: &[u8]) -> Option<String> {
    let text = |b: &[u8]| -> Option<String> {
        let n = handler.normalise(b);
        match handler.format() {
            Format::Binary => None,
            Format::Json => {
                let mut v: serde_json::Value = serde_json::from_slice(&n).ok()?;
                mask(&mut v);
                serde_json::to_string_pretty(&v).ok()
            }
            Format::Text => String::from_utf8(n).ok(),
        }
    };
    let (a, b) = (text(old)?, text(new)?);
    // similar's Myers line diff, not a hand-written LCS table (whose memory grows with the
    // product of the two line counts: a presets.json of thousands of lines).
    let mut out = String::new();
    for change in similar::TextDiff::from_lines(&a, &b).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Equal => "  ",
            similar::ChangeTag::Delete => "- ",
            similar::ChangeTag::Insert => "+ ",
        };
        out.push_str(sign);
        out.push_str(change.value().trim_end_matches('\n'));
        out.push('\n');
    }
    Some(crate::redact::redact(&out).into_owned())
}
