//! S3 and S3-compatible object storage (AWS, MinIO, Scaleway, OVH, Hetzner, Exoscale, ...).
//!
//! Requests are signed by `rusty-s3` (SigV4, sans-IO: it turns a request into a presigned URL
//! and we send it with our own `reqwest` client); the few XML bodies are read with quick-xml.
//!
//! An upload larger than one part is a multipart upload whose id and (number, ETag, SHA-256)
//! part list live in the job's checkpoint, so a restarted job carries on where it stopped; a
//! fresh `position()` asks the server (ListParts) and adopts a part it took but never
//! acknowledged. Every part carries `x-amz-checksum-sha256` (the server refuses a part whose
//! bytes differ); after CompleteMultipartUpload the object's composite checksum is compared
//! with the one the part list gives, and a mismatch deletes the object. An upload that fits in
//! one part is a single PUT carrying the SHA-256 the copy loop computed, so the server only
//! stores it when the bytes match.
//!
//! Never logged: presigned URLs (they are capabilities for an hour), the secret key and session
//! token ([`Secret`]s, masked by `crate::redact`). Transport errors are formatted without their
//! URL for that reason.

mod config;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::TryStreamExt;
use md5::Md5;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use self::config::{Addressing, S3Config, STORAGE_CLASSES, Sse};
use self::config::{Keys, resolve_keys};
use self::wire::*;
use super::{
    ChunkRules, CopyError, Destination, DestinationInfo, Partial, RemoteFile, Sent, Session,
};
use crate::redact::Secret;
use crate::transfer::{ByteStream, TransferError};

/// S3's part limits: every part but the last is 5 MiB..5 GiB, at most 10,000 parts.
pub const MIN_PART: u64 = 5 * 1024 * 1024;
pub const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
pub const AWS_MAX_PARTS: u64 = 10_000;
/// How long a presigned request stays valid. It is signed just before it is sent; the margin
/// is for a clock that runs a little behind the server's.
const PRESIGN_SECS: u64 = 3600;
/// Total time for a call that moves no upload body (list, head, complete, ...).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// An upload that moves no bytes (and gets no answer) for this long is considered dead.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// ListParts / ListObjectsV2 / ListMultipartUploads pages are bounded by the server (1000);
/// this bounds a server that keeps saying "truncated".
const MAX_PAGES: usize = 100_000;
/// User metadata a multipart object carries: its part size, so that `same_content` can compute
/// the composite checksum of a source without reading the object back.
const PART_SIZE_META: &str = "x-amz-meta-offsite-part-size";

// -- the destination --------------------------------------------------------------------------

/// A bucket (and prefix) as a backup destination.
pub struct S3Destination {
    bucket: rusty_s3::Bucket,
    keys: Keys,
    http: reqwest::Client,
    /// The prefix without leading or trailing '/'.
    root: String,
    endpoint: String,
    storage_class: Option<String>,
    sse: Option<Sse>,
    kms_key_id: Option<String>,
    max_parts: u64,
    stall_timeout_ms: AtomicU64,
    /// Entries per list page (max-parts / max-keys / max-uploads).
    page_size: String,
    /// The bucket's versioning as last asked, and when.
    keeps_versions: std::sync::Mutex<Option<(std::time::Instant, Option<bool>)>>,
}

/// How long an answer of GetBucketVersioning is taken as still true.
const VERSIONING_TTL: Duration = Duration::from_secs(600);

impl fmt::Debug for S3Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Destination")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket.name())
            .field("root", &self.root)
            .field("access_key_id", &self.keys.id)
            .finish_non_exhaustive()
    }
}

/// The checkpointed state of one upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "s3")]
struct S3Session {
    key: String,
    /// Declared size at begin.
    size: u64,
    /// Part size; every part but the last has exactly this many bytes.
    chunk: u64,
    /// None until a multipart upload exists (an upload that fits in one part is a single PUT).
    upload_id: Option<String>,
    /// Acknowledged parts, numbered 1.. without gaps.
    parts: Vec<PartRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartRecord {
    number: u64,
    etag: String,
    /// Base64 SHA-256 of the part, as S3 writes it.
    sha256: String,
}

impl S3Destination {
    pub fn new(config: &S3Config, http: reqwest::Client) -> Result<Self, String> {
        Self::with_env(config, http, &|name| std::env::var(name).ok())
    }

    fn with_env(
        config: &S3Config,
        http: reqwest::Client,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        config
            .validate()
            .map_err(|(field, message)| format!("s3.{field}: {message}"))?;
        let keys = resolve_keys(config, env)?;
        let endpoint = config.endpoint();
        let url = url::Url::parse(&format!("{endpoint}/"))
            .map_err(|e| format!("s3.endpoint: not a URL: {e}"))?;
        let style = match config.addressing() {
            Addressing::Path => rusty_s3::UrlStyle::Path,
            Addressing::VirtualHost => rusty_s3::UrlStyle::VirtualHost,
        };
        let bucket = rusty_s3::Bucket::new(
            url,
            style,
            config.bucket.clone(),
            config.region.trim().to_string(),
        )
        .map_err(|e| format!("s3: bucket {} at {endpoint}: {e}", config.bucket))?;
        Ok(Self {
            bucket,
            keys,
            http,
            root: config.prefix.trim_matches('/').to_string(),
            endpoint,
            storage_class: config.storage_class.clone(),
            sse: config.sse,
            kms_key_id: config.kms_key_id.clone(),
            max_parts: config.max_parts,
            stall_timeout_ms: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
            page_size: "1000".into(),
            keeps_versions: Default::default(),
        })
    }

    /// How long a part upload may go without moving a byte before it is abandoned.
    pub fn with_stall_timeout(self, timeout: Duration) -> Self {
        self.stall_timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    /// How many entries one page of ListParts, ListObjectsV2 and ListMultipartUploads asks for
    /// (1000, S3's default and maximum, unless set; small pages let the tests page).
    pub fn with_page_size(mut self, entries: u32) -> Self {
        self.page_size = entries.max(1).to_string();
        self
    }

    /// Whether the bucket keeps old versions (GetBucketVersioning says Enabled); None when the
    /// credentials may not ask (AccessDenied: a least-privilege policy without
    /// s3:GetBucketVersioning). Fails clearly when the bucket does not exist or the
    /// credentials are refused.
    pub async fn versioning(&self) -> Result<Option<bool>, TransferError> {
        let op = "GetBucketVersioning";
        let reply = self
            .send(
                op,
                Method::GET,
                None,
                &[("versioning", "")],
                &[],
                Body::Empty,
            )
            .await?;
        if !reply.status.is_success() {
            if reply.status == StatusCode::FORBIDDEN
                && parse_error(&reply.body).is_some_and(|e| e.code == "AccessDenied")
            {
                return Ok(None);
            }
            return Err(self.failure(op, None, &reply));
        }
        let config: VersioningConfiguration = parse_xml(op, &reply.body)?;
        Ok(Some(config.status.as_deref() == Some("Enabled")))
    }

    /// The object key of a remote path ("{root}/{name}").
    fn key(&self, remote: &str) -> Result<String, TransferError> {
        let key = remote.trim_start_matches('/');
        if key.is_empty() || key.ends_with('/') {
            return Err(TransferError::Permanent(format!(
                "{remote:?} is not an object path"
            )));
        }
        Ok(key.to_string())
    }

    /// "{root}/" (or "" at the top level): what keys directly under root start with.
    fn list_prefix(&self) -> String {
        if self.root.is_empty() {
            String::new()
        } else {
            format!("{}/", self.root)
        }
    }

    fn remote_of(&self, key: &str) -> String {
        let name = key.strip_prefix(&self.list_prefix()).unwrap_or(key);
        format!("{}/{name}", self.root)
    }

    fn bucket_at(&self) -> String {
        format!("bucket {} at {}", self.bucket.name(), self.endpoint)
    }

    /// Storage class and encryption headers for PutObject / CreateMultipartUpload.
    fn object_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(class) = &self.storage_class {
            h.push(("x-amz-storage-class", class.clone()));
        }
        if let Some(sse) = self.sse {
            h.push(("x-amz-server-side-encryption", sse.header().to_string()));
        }
        if let Some(key) = &self.kms_key_id {
            h.push(("x-amz-server-side-encryption-aws-kms-key-id", key.clone()));
        }
        h
    }

    // -- requests -------------------------------------------------------------------------

    /// A presigned URL for the request; `headers` are signed and must all be sent.
    fn presign(
        &self,
        method: &Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> url::Url {
        let url = match key {
            Some(k) => self.bucket.object_url(k),
            None => self.bucket.base_url().clone(),
        };
        let mut query = query.to_vec();
        query.sort();
        let mut headers = headers.to_vec();
        headers.sort();
        let method = match *method {
            Method::GET => rusty_s3::Method::Get,
            Method::HEAD => rusty_s3::Method::Head,
            Method::PUT => rusty_s3::Method::Put,
            Method::POST => rusty_s3::Method::Post,
            _ => rusty_s3::Method::Delete,
        };
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            &self.keys.id,
            self.keys.secret.expose(),
            self.keys.token.as_ref().map(Secret::expose),
            self.bucket.region(),
            PRESIGN_SECS,
            query.into_iter(),
            headers.into_iter(),
        )
    }

    /// Sends one request and reads the whole answer; a non-2xx answer (or an `<Error>` body
    /// under 200, which CompleteMultipartUpload may send) comes back classified.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Reply, TransferError> {
        let reply = self.send(op, method, key, query, headers, body).await?;
        if !reply.status.is_success() {
            return Err(self.failure(op, key, &reply));
        }
        if let Some(error) = error_in_body(&reply.body) {
            // 200 OK whose body is an error: S3 sends it when CompleteMultipartUpload fails
            // after the response started. Treat it as that error, classified as a 500 would be.
            return Err(self.classify(op, key, StatusCode::INTERNAL_SERVER_ERROR, None, &error));
        }
        Ok(reply)
    }

    async fn send(
        &self,
        op: &'static str,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Reply, TransferError> {
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-amz-"))
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let url = self.presign(&method, key, query, &signed);
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let progress = Arc::new(Progress::new());
        let (request, upload) = match body {
            Body::Empty => (request.timeout(CALL_TIMEOUT), false),
            Body::Xml(xml) => (
                request
                    .header(CONTENT_TYPE, "application/xml")
                    .body(xml)
                    .timeout(CALL_TIMEOUT),
                false,
            ),
            Body::Upload(data) if data.len() <= BODY_SLICE => (request.body(data), true),
            Body::Upload(data) => (
                request
                    .header(CONTENT_LENGTH, data.len())
                    .body(reqwest::Body::wrap_stream(sliced(data, progress.clone()))),
                true,
            ),
        };
        let exchange = async { read_reply(request.send().await?).await };
        if !upload {
            return exchange.await.map_err(|e| self.transport_error(op, e));
        }
        let stall = Duration::from_millis(self.stall_timeout_ms.load(Ordering::Relaxed));
        watch_progress(exchange, &progress, stall)
            .await
            .map_err(|e| match e {
                Watched::Failed(e) => self.transport_error(op, e),
                Watched::Stalled => TransferError::Temporary(format!(
                    "S3 {op} ({}): no progress for {} s; connection abandoned",
                    self.bucket_at(),
                    stall.as_secs_f64()
                )),
            })
    }

    fn transport_error(&self, op: &str, e: reqwest::Error) -> TransferError {
        crate::transfer::http::transport_error(&format!("S3 {op} ({})", self.bucket_at()), e)
    }

    fn failure(&self, op: &str, key: Option<&str>, reply: &Reply) -> TransferError {
        let error = parse_error(&reply.body).unwrap_or_else(|| ErrorBody {
            code: String::new(),
            message: summary(&reply.body),
        });
        self.classify(op, key, reply.status, reply.retry_after, &error)
    }

    fn classify(
        &self,
        op: &str,
        key: Option<&str>,
        status: StatusCode,
        retry_after: Option<Duration>,
        error: &ErrorBody,
    ) -> TransferError {
        let code = error.code.as_str();
        let what = match key {
            Some(k) => format!("{} ({}, key {k})", op, self.bucket_at()),
            None => format!("{} ({})", op, self.bucket_at()),
        };
        let detail = match (code.is_empty(), error.message.is_empty()) {
            (true, true) => format!("HTTP {status}"),
            (true, false) => format!("HTTP {status}: {}", error.message),
            (false, true) => format!("HTTP {status} {code}"),
            (false, false) => format!("HTTP {status} {code}: {}", error.message),
        };
        let message = crate::redact::redact(&format!("S3 {what}: {detail}")).into_owned();
        match code {
            "NoSuchUpload" => return TransferError::SessionGone(message),
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled"
            | "AccountProblem"
            | "InvalidSecurity" => {
                return TransferError::Permanent(format!(
                    "{message} (the credentials from {} were refused)",
                    self.keys.from
                ));
            }
            "NoSuchBucket" => {
                return TransferError::Permanent(format!(
                    "{message} (does bucket {} exist in region {} at {}?)",
                    self.bucket.name(),
                    self.bucket.region(),
                    self.endpoint
                ));
            }
            // A clock that is wrong now (a Raspberry Pi before its time sync) is right later.
            "RequestTimeTooSkewed" => {
                return TransferError::Temporary(format!("{message} (check this machine's clock)"));
            }
            "EntityTooSmall"
            | "EntityTooLarge"
            | "InvalidPart"
            | "InvalidPartOrder"
            | "InvalidStorageClass"
            | "InvalidArgument"
            | "InvalidRequest"
            | "KMS.NotFoundException" => {
                return TransferError::Permanent(message);
            }
            // The bytes arrived damaged (or a proxy touched them): sending them again is right.
            "BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest" | "RequestTimeout" => {
                return TransferError::Temporary(message);
            }
            "SlowDown"
            | "ServiceUnavailable"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequests" => {
                return slow_down(retry_after, message);
            }
            "InternalError" => return TransferError::Temporary(message),
            _ => {}
        }
        match status.as_u16() {
            429 | 503 => slow_down(retry_after, message),
            408 | 500..=599 => TransferError::Temporary(message),
            403 => TransferError::Permanent(format!(
                "{message} (the credentials from {} were refused)",
                self.keys.from
            )),
            404 if key.is_none() => TransferError::Permanent(format!(
                "{message} (does bucket {} exist?)",
                self.bucket.name()
            )),
            404 => TransferError::NotFound(message),
            _ => TransferError::Permanent(message),
        }
    }

    async fn head(&self, key: &str, query: &[(&str, &str)]) -> Result<Option<Head>, TransferError> {
        let reply = self
            .send(
                "HeadObject",
                Method::HEAD,
                Some(key),
                query,
                &[("x-amz-checksum-mode", "ENABLED".into())],
                Body::Empty,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.failure("HeadObject", Some(key), &reply));
        }
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                TransferError::Temporary(format!(
                    "S3 HeadObject ({}, key {key}): no Content-Length",
                    self.bucket_at()
                ))
            })?;
        Ok(Some(Head {
            size,
            etag: header("etag"),
            sha256: header("x-amz-checksum-sha256"),
            parts: header("x-amz-mp-parts-count").and_then(|v| v.parse().ok()),
            part_size: header(PART_SIZE_META).and_then(|v| v.parse().ok()),
        }))
    }

    async fn create_multipart(&self, key: &str, part_size: u64) -> Result<String, TransferError> {
        let mut headers = self.object_headers();
        headers.push(("x-amz-checksum-algorithm", "SHA256".into()));
        headers.push((PART_SIZE_META, part_size.to_string()));
        headers.push(("content-type", "application/x-tar".into()));
        let reply = self
            .call(
                "CreateMultipartUpload",
                Method::POST,
                Some(key),
                &[("uploads", "")],
                &headers,
                Body::Empty,
            )
            .await?;
        let created: InitiateMultipartUploadResult =
            parse_xml("CreateMultipartUpload", &reply.body)?;
        Ok(created.upload_id)
    }

    async fn upload_part(
        &self,
        s: &S3Session,
        number: u64,
        data: Bytes,
    ) -> Result<PartRecord, TransferError> {
        let upload_id = s.upload_id.as_deref().unwrap_or_default();
        let sha256 = sha256_off_runtime(data.clone()).await?;
        let number_text = number.to_string();
        let reply = self
            .call(
                "UploadPart",
                Method::PUT,
                Some(&s.key),
                &[("partNumber", &number_text), ("uploadId", upload_id)],
                &[
                    ("x-amz-checksum-sha256", sha256.clone()),
                    ("x-amz-sdk-checksum-algorithm", "SHA256".into()),
                ],
                Body::Upload(data),
            )
            .await?;
        let etag = reply
            .headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                TransferError::Temporary(format!(
                    "S3 UploadPart ({}, key {}): no ETag in the answer",
                    self.bucket_at(),
                    s.key
                ))
            })?
            .to_string();
        Ok(PartRecord {
            number,
            etag,
            sha256,
        })
    }

    async fn list_parts(&self, s: &S3Session) -> Result<Vec<ListedPart>, TransferError> {
        let upload_id = s.upload_id.as_deref().unwrap_or_default();
        let mut parts = Vec::new();
        let mut marker = String::new();
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("max-parts", self.page_size.as_str()),
                ("uploadId", upload_id),
            ];
            if !marker.is_empty() {
                query.push(("part-number-marker", &marker));
            }
            let reply = self
                .call(
                    "ListParts",
                    Method::GET,
                    Some(&s.key),
                    &query,
                    &[],
                    Body::Empty,
                )
                .await?;
            let page: ListPartsResult = parse_xml("ListParts", &reply.body)?;
            parts.extend(page.parts);
            match page.next_part_number_marker {
                Some(next) if page.is_truncated && next.to_string() != marker => {
                    marker = next.to_string();
                }
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    async fn complete(&self, s: &S3Session) -> Result<(), TransferError> {
        let upload_id = s.upload_id.as_deref().unwrap_or_default();
        let mut xml = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for p in &s.parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>",
                p.number,
                escape_xml(&p.etag)
            ));
            // Empty only for a part adopted from a server that lists no checksums.
            if !p.sha256.is_empty() {
                xml.push_str(&format!(
                    "<ChecksumSHA256>{}</ChecksumSHA256>",
                    escape_xml(&p.sha256)
                ));
            }
            xml.push_str("</Part>");
        }
        xml.push_str("</CompleteMultipartUpload>");
        self.call(
            "CompleteMultipartUpload",
            Method::POST,
            Some(&s.key),
            &[("uploadId", upload_id)],
            &[],
            Body::Xml(Bytes::from(xml)),
        )
        .await?;
        Ok(())
    }

    /// AbortMultipartUpload until the upload is gone. AWS documents that a part being
    /// uploaded while the abort runs can survive it ("abort again"), so the upload is looked
    /// for afterwards; a temporary failure is tried again too.
    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), TransferError> {
        let mut last = None;
        for round in 0..4u32 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250 << round)).await;
            }
            match self
                .call(
                    "AbortMultipartUpload",
                    Method::DELETE,
                    Some(key),
                    &[("uploadId", upload_id)],
                    &[],
                    Body::Empty,
                )
                .await
            {
                Ok(_) | Err(TransferError::SessionGone(_) | TransferError::NotFound(_)) => {}
                Err(e @ TransferError::Temporary(_)) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let still = self
                .call(
                    "ListParts",
                    Method::GET,
                    Some(key),
                    &[("uploadId", upload_id)],
                    &[],
                    Body::Empty,
                )
                .await;
            match still {
                Err(TransferError::SessionGone(_) | TransferError::NotFound(_)) => return Ok(()),
                Ok(_) => {
                    last = Some(TransferError::Temporary(format!(
                        "S3 ({}): upload {upload_id} of {key} is still there after the abort",
                        self.bucket_at()
                    )));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TransferError::Temporary("abort failed".into())))
    }

    async fn delete_key(&self, key: &str) -> Result<(), TransferError> {
        match self
            .call(
                "DeleteObject",
                Method::DELETE,
                Some(key),
                &[],
                &[],
                Body::Empty,
            )
            .await
        {
            Ok(_) | Err(TransferError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// After commit: the object must have the size and checksum the session says; else it is
    /// deleted so that nothing looks like a good backup.
    async fn verify_committed(
        &self,
        remote: &str,
        key: &str,
        size: u64,
        expected: &str,
        source_sha256: &str,
    ) -> Result<RemoteFile, TransferError> {
        let head = self.head(key, &[]).await?.ok_or_else(|| {
            TransferError::Temporary(format!(
                "S3 ({}): {key} is missing right after it was committed",
                self.bucket_at()
            ))
        })?;
        let mismatch = if head.size != size {
            Some(format!(
                "the object has {} bytes, {size} were sent",
                head.size
            ))
        } else {
            match &head.sha256 {
                // A server that keeps a full-object checksum for a multipart object (type
                // FULL_OBJECT) is checked against the copy loop's SHA-256 instead.
                Some(stored)
                    if !same_checksum(stored, expected)
                        && hex_to_base64(source_sha256).as_deref() != Some(stored.as_str()) =>
                {
                    Some(format!(
                        "the object's SHA-256 checksum is {stored}, the parts sent give {expected}"
                    ))
                }
                Some(_) => None,
                // A server that keeps no checksum: read the object back and compare it with
                // what the source gave.
                None => {
                    tracing::info!(
                        bucket = self.bucket.name(),
                        endpoint = %self.endpoint,
                        "the S3 server keeps no SHA-256 checksum for {key}; reading it back to check it"
                    );
                    let (len, theirs) =
                        crate::transfer::sha256_of(self.open_at(remote, 0).await?).await?;
                    (len != size || theirs != source_sha256).then(|| {
                        format!("it reads back as {len} bytes with SHA-256 {theirs}, the source's is {source_sha256}")
                    })
                }
            }
        };
        if let Some(why) = mismatch {
            let deleted = match self.delete_key(key).await {
                Ok(()) => "deleted it".to_string(),
                Err(e) => format!("could not delete it: {e}"),
            };
            return Err(TransferError::Permanent(format!(
                "S3 ({}): {key} is not what was sent: {why}; {deleted}, not recorded as backed up",
                self.bucket_at()
            )));
        }
        Ok(RemoteFile {
            path: remote.to_string(),
            size: head.size,
            content_hash: head.sha256.or(head.etag.map(|e| format!("etag:{e}"))),
        })
    }

    /// Reads `source` in `part`-byte pieces (or whole, `part` = None) and gives the checksum
    /// S3 would keep for it, one small buffer at a time.
    async fn checksum_of(
        mut source: ByteStream,
        size: u64,
        part: Option<u64>,
    ) -> Result<Option<String>, TransferError> {
        let mut buf = vec![0u8; 1 << 20];
        let part = part.unwrap_or(u64::MAX).max(1);
        let mut digests: Vec<u8> = Vec::new();
        let mut parts = 0u64;
        let mut hasher = Sha256::new();
        let mut in_part = 0u64;
        let mut total = 0u64;
        loop {
            let want = buf.len().min((part - in_part).min(u64::MAX >> 1) as usize);
            let n = source.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            in_part += n as u64;
            total += n as u64;
            if in_part == part {
                digests.extend_from_slice(&hasher.finalize_reset());
                parts += 1;
                in_part = 0;
            }
        }
        if total != size {
            return Ok(None);
        }
        if part == u64::MAX {
            return Ok(Some(BASE64.encode(hasher.finalize())));
        }
        if in_part > 0 {
            digests.extend_from_slice(&hasher.finalize());
            parts += 1;
        }
        Ok(Some(format!(
            "{}-{parts}",
            BASE64.encode(Sha256::digest(&digests))
        )))
    }
}

/// Base64 SHA-256 of a part, on a blocking thread: hundreds of MiB take a while on a small
/// machine, and the runtime's threads serve the other jobs and the API meanwhile.
async fn sha256_off_runtime(data: Bytes) -> Result<String, TransferError> {
    if data.len() <= 1 << 20 {
        return Ok(BASE64.encode(Sha256::digest(&data)));
    }
    tokio::task::spawn_blocking(move || BASE64.encode(Sha256::digest(&data)))
        .await
        .map_err(|e| TransferError::Temporary(format!("hashing a part: {e}")))
}

/// Composite checksum of a part list: SHA-256 of the parts' SHA-256s, "-{count}".
fn composite(parts: &[PartRecord]) -> Result<String, TransferError> {
    let mut all = Vec::with_capacity(parts.len() * 32);
    for p in parts {
        let digest = BASE64.decode(&p.sha256).map_err(|_| {
            TransferError::Permanent(format!("part {} has no usable checksum", p.number))
        })?;
        all.extend_from_slice(&digest);
    }
    Ok(format!(
        "{}-{}",
        BASE64.encode(Sha256::digest(&all)),
        parts.len()
    ))
}

/// Some servers write the composite checksum without its "-{parts}" suffix.
fn same_checksum(stored: &str, expected: &str) -> bool {
    let base = |s: &str| s.split('-').next().unwrap_or(s).to_string();
    stored == expected
        || (stored.contains('-') != expected.contains('-')) && base(stored) == base(expected)
}

fn slow_down(retry_after: Option<Duration>, message: String) -> TransferError {
    match retry_after {
        Some(wait) => TransferError::RetryAfter {
            message: format!("{message}; retry in {} s", wait.as_secs()),
            wait,
        },
        None => TransferError::Temporary(message),
    }
}

#[async_trait::async_trait]
impl Destination for S3Destination {
    fn info(&self) -> DestinationInfo {
        DestinationInfo {
            kind: "s3",
            location: format!("s3://{}/{}", self.bucket.name(), self.root),
        }
    }

    fn chunk_rules(&self) -> ChunkRules {
        ChunkRules {
            multiple: 1,
            min: MIN_PART,
            max: MAX_PART,
            max_chunks: Some(self.max_parts),
        }
    }

    fn root(&self) -> &str {
        &self.root
    }

    async fn prepare(&self) -> Result<(), TransferError> {
        let versioning = self.versioning().await?;
        if versioning.is_none() {
            // Not allowed to ask: the bucket and credentials must still work for listing.
            let prefix = self.list_prefix();
            let query = [
                ("list-type", "2"),
                ("max-keys", "1"),
                ("prefix", prefix.as_str()),
            ];
            self.call("ListObjectsV2", Method::GET, None, &query, &[], Body::Empty)
                .await?;
            tracing::warn!(
                bucket = self.bucket.name(),
                endpoint = %self.endpoint,
                "cannot tell whether versioning is enabled on S3 bucket {} (GetBucketVersioning \
                 is denied to these credentials)",
                self.bucket.name()
            );
        }
        if versioning == Some(false) {
            tracing::warn!(
                bucket = self.bucket.name(),
                endpoint = %self.endpoint,
                "versioning is not enabled on S3 bucket {}: a deleted or overwritten backup \
                 cannot be recovered; enable it (and a lifecycle rule for noncurrent versions \
                 and incomplete multipart uploads)",
                self.bucket.name()
            );
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        let prefix = self.list_prefix();
        let mut files = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("delimiter", "/"),
                ("list-type", "2"),
                ("max-keys", self.page_size.as_str()),
                ("prefix", prefix.as_str()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let reply = self
                .call("ListObjectsV2", Method::GET, None, &query, &[], Body::Empty)
                .await?;
            let page: ListBucketResult = parse_xml("ListObjectsV2", &reply.body)?;
            files.extend(
                page.contents
                    .into_iter()
                    .filter(|o| {
                        o.key
                            .strip_prefix(&prefix)
                            .is_some_and(|n| !n.is_empty() && !n.contains('/'))
                    })
                    .map(|o| RemoteFile {
                        path: self.remote_of(&o.key),
                        size: o.size,
                        content_hash: o.etag.map(|e| format!("etag:{e}")),
                    }),
            );
            match page.next_continuation_token {
                Some(next) if page.is_truncated => token = Some(next),
                _ => break,
            }
        }
        Ok(files)
    }

    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        let key = self.key(remote)?;
        Ok(self.head(&key, &[]).await?.map(|h| RemoteFile {
            path: remote.to_string(),
            size: h.size,
            content_hash: h.sha256.or(h.etag.map(|e| format!("etag:{e}"))),
        }))
    }

    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        let key = self.key(remote)?;
        self.open_range(&key, offset, None).await
    }

    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        let key = self.key(remote)?;
        self.delete_key(&key).await
    }

    /// Asked once per `VERSIONING_TTL`: the mirror asks before every changed file.
    async fn keeps_versions(&self) -> Option<bool> {
        if let Ok(known) = self.keeps_versions.lock()
            && let Some((at, answer)) = *known
            && at.elapsed() < VERSIONING_TTL
        {
            return answer;
        }
        let answer = self.versioning().await.ok()?;
        if let Ok(mut known) = self.keeps_versions.lock() {
            *known = Some((std::time::Instant::now(), answer));
        }
        answer
    }

    /// CopyObject (up to 5 GiB; larger objects would need UploadPartCopy, and are sent
    /// again instead), asking the server for the copy's SHA-256, which is then checked like an
    /// upload's.
    async fn copy_within(
        &self,
        from: &str,
        to: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        if sent.size > MAX_PART {
            return Err(CopyError::Unsupported);
        }
        let source = self.key(from)?;
        let key = self.key(to)?;
        /// What a key may keep unencoded in x-amz-copy-source: RFC 3986's unreserved and '/'.
        const KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let mut headers = self.object_headers();
        headers.push((
            "x-amz-copy-source",
            format!(
                "/{}/{}",
                self.bucket.name(),
                percent_encoding::utf8_percent_encode(&source, KEY)
            ),
        ));
        // The copy is one part: its own checksum, not the source's part-size metadata.
        headers.push(("x-amz-metadata-directive", "REPLACE".into()));
        headers.push(("x-amz-checksum-algorithm", "SHA256".into()));
        headers.push(("content-type", "application/octet-stream".into()));
        self.call(
            "CopyObject",
            Method::PUT,
            Some(&key),
            &[],
            &headers,
            Body::Empty,
        )
        .await?;
        let expected = hex_to_base64(sent.sha256).ok_or_else(|| {
            TransferError::Permanent(format!("{:?} is not a SHA-256", sent.sha256))
        })?;
        Ok(self
            .verify_committed(to, &key, sent.size, &expected, sent.sha256)
            .await?)
    }

    async fn begin(&self, remote: &str, size: u64, chunk: u64) -> Result<Session, TransferError> {
        let key = self.key(remote)?;
        let mut s = S3Session {
            key,
            size,
            chunk,
            upload_id: None,
            parts: Vec::new(),
        };
        if size > chunk {
            if !(MIN_PART..=MAX_PART).contains(&chunk) {
                return Err(TransferError::Permanent(format!(
                    "S3 parts are {MIN_PART} to {MAX_PART} bytes, not {chunk}"
                )));
            }
            if size.div_ceil(chunk) > self.max_parts {
                return Err(TransferError::Permanent(format!(
                    "{size} bytes in {chunk}-byte parts need more than {} parts",
                    self.max_parts
                )));
            }
            s.upload_id = Some(self.create_multipart(&s.key, s.chunk).await?);
        } else if size > MAX_PART {
            return Err(TransferError::Permanent(format!(
                "a single S3 PUT holds at most {MAX_PART} bytes, not {size}"
            )));
        }
        Ok(Session::new(&s))
    }

    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        let mut s: S3Session = session.get()?;
        if s.upload_id.is_none() {
            // A single PUT: nothing is on the server before finish.
            return if ours == 0 {
                Ok(0)
            } else {
                Err(TransferError::SessionGone(format!(
                    "{}: a single-PUT session cannot hold {ours} bytes",
                    s.key
                )))
            };
        }
        let listed = self.list_parts(&s).await?;
        let mut parts: Vec<PartRecord> = Vec::new();
        for p in listed {
            let expected = parts.len() as u64 + 1;
            if p.part_number != expected || p.size != s.chunk {
                break;
            }
            let ours_part = s.parts.get(parts.len());
            let sha256 = match (&p.checksum_sha256, ours_part) {
                (Some(theirs), Some(mine)) if *theirs != mine.sha256 => {
                    return Err(TransferError::SessionGone(format!(
                        "{}: part {expected} on the server is not the part this job sent",
                        s.key
                    )));
                }
                (_, Some(mine)) => mine.sha256.clone(),
                (Some(theirs), None) => theirs.clone(),
                // Not every server lists part checksums (moto does not): caught_up fills it in
                // from the source, or finish from the committed object.
                (None, None) => String::new(),
            };
            parts.push(PartRecord {
                number: expected,
                etag: p.etag,
                sha256,
            });
        }
        let held = parts.len() as u64 * s.chunk;
        if held < ours {
            return Err(TransferError::SessionGone(format!(
                "{}: the server holds {held} bytes of the upload, the checkpoint {ours}",
                s.key
            )));
        }
        s.parts = parts;
        session.set(&s);
        Ok(held)
    }

    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        let mut s: S3Session = session.get()?;
        if s.chunk == 0 || !offset.is_multiple_of(s.chunk) || chunk.len() as u64 != s.chunk {
            return Err(TransferError::Permanent(format!(
                "S3 parts of this upload are {} bytes at multiples of that; got {} bytes at {offset}",
                s.chunk,
                chunk.len()
            )));
        }
        let index = offset / s.chunk;
        let held = s.parts.len() as u64;
        if index > held {
            return Err(TransferError::IncorrectOffset(held * s.chunk));
        }
        let number = index + 1;
        if number > self.max_parts {
            return Err(TransferError::Permanent(format!(
                "{}: part {number} is over the limit of {} parts",
                s.key, self.max_parts
            )));
        }
        // Sending a part again replaces it on the server.
        s.parts.truncate(index as usize);
        if s.upload_id.is_none() {
            // Declared small, turned out bigger than one part.
            s.upload_id = Some(self.create_multipart(&s.key, s.chunk).await?);
            session.set(&s);
        }
        let part = self.upload_part(&s, number, chunk).await?;
        s.parts.push(part);
        session.set(&s);
        Ok(())
    }

    fn caught_up(
        &self,
        session: &mut Session,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        let mut s: S3Session = session.get()?;
        if s.chunk == 0 || !offset.is_multiple_of(s.chunk) {
            return Ok(());
        }
        // Parts adopted from ListParts: the source's bytes must be what the server holds
        // (its checksum, or its ETag when that is a plain MD5), and give the part's checksum.
        for (i, piece) in bytes.chunks(s.chunk as usize).enumerate() {
            let index = (offset / s.chunk) as usize + i;
            let Some(p) = s.parts.get_mut(index) else {
                break;
            };
            if piece.len() as u64 != s.chunk {
                break;
            }
            let sha256 = BASE64.encode(Sha256::digest(piece));
            let etag = p.etag.trim_matches('"');
            // An ETag is a part's MD5 only without SSE-KMS, and is worth looking at only when
            // the server listed no checksum.
            let md5_differs = p.sha256.is_empty()
                && self.sse != Some(Sse::AwsKms)
                && etag.len() == 32
                && etag.bytes().all(|b| b.is_ascii_hexdigit())
                && !etag.eq_ignore_ascii_case(&hex(&Md5::digest(piece)));
            if (!p.sha256.is_empty() && p.sha256 != sha256) || md5_differs {
                return Err(TransferError::SessionGone(format!(
                    "{}: part {} on the server differs from the source",
                    s.key, p.number
                )));
            }
            p.sha256 = sha256;
        }
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
        let mut s: S3Session = session.get()?;
        let key = self.key(remote)?;
        if key != s.key {
            return Err(TransferError::Permanent(format!(
                "the upload session is for {}, not {key}",
                s.key
            )));
        }
        let total = offset + chunk.len() as u64;
        if total != sent.size {
            return Err(TransferError::Permanent(format!(
                "{key}: {total} bytes reached the destination, the source gave {}",
                sent.size
            )));
        }
        if s.parts.is_empty() && offset == 0 {
            // One PUT, carrying the copy loop's own SHA-256: S3 stores it only if it matches.
            if let Some(id) = s.upload_id.take() {
                self.abort(&s.key, &id).await?;
                session.set(&s);
            }
            let sha256 = hex_to_base64(sent.sha256).ok_or_else(|| {
                TransferError::Permanent(format!("{:?} is not a hex SHA-256", sent.sha256))
            })?;
            if sha256_off_runtime(chunk.clone()).await? != sha256 {
                return Err(TransferError::Permanent(format!(
                    "{key}: the bytes to send do not have the source's SHA-256"
                )));
            }
            let mut headers = self.object_headers();
            headers.push(("x-amz-checksum-sha256", sha256.clone()));
            headers.push(("x-amz-sdk-checksum-algorithm", "SHA256".into()));
            headers.push(("content-type", "application/x-tar".into()));
            self.call(
                "PutObject",
                Method::PUT,
                Some(&key),
                &[],
                &headers,
                Body::Upload(chunk),
            )
            .await?;
            return self
                .verify_committed(remote, &key, total, &sha256, sent.sha256)
                .await;
        }
        let held = s.parts.len() as u64 * s.chunk;
        let index = offset / s.chunk.max(1);
        if s.upload_id.is_none()
            || !offset.is_multiple_of(s.chunk.max(1))
            || index > s.parts.len() as u64
        {
            return Err(TransferError::IncorrectOffset(held));
        }
        // A finish tried again may hold the last part already: kept when it is this chunk
        // (the upload may be complete by now, and a part cannot be added to it), else sent
        // again, which replaces it.
        let last_held = s.parts.len() as u64 == index + 1
            && !chunk.is_empty()
            && s.parts[index as usize].sha256 == sha256_off_runtime(chunk.clone()).await?;
        if !last_held {
            s.parts.truncate(index as usize);
        }
        if !chunk.is_empty() && !last_held {
            let number = s.parts.len() as u64 + 1;
            if number > self.max_parts {
                return Err(TransferError::Permanent(format!(
                    "{key}: part {number} is over the limit of {} parts",
                    self.max_parts
                )));
            }
            let part = self.upload_part(&s, number, chunk).await?;
            s.parts.push(part);
            session.set(&s);
        }
        match self.complete(&s).await {
            Ok(()) => {}
            // An earlier finish completed it and its answer was lost: the object is there
            // (checked below like any other).
            Err(TransferError::SessionGone(_))
                if s.parts.iter().all(|p| !p.sha256.is_empty())
                    && self.head(&key, &[]).await?.is_some_and(|h| h.size == total) => {}
            Err(e) => return Err(e),
        }
        // A part adopted from a server that lists no checksums and never caught up: all that
        // is left to take its checksum from is the committed object.
        for i in 0..s.parts.len() {
            if s.parts[i].sha256.is_empty() {
                let start = i as u64 * s.chunk;
                let stream = self.open_range(&key, start, Some(start + s.chunk)).await?;
                s.parts[i].sha256 = Self::checksum_of(stream, s.chunk, None)
                    .await?
                    .unwrap_or_default();
                tracing::debug!(key, part = s.parts[i].number, "part checksum read back");
            }
        }
        session.set(&s);
        let expected = composite(&s.parts)?;
        self.verify_committed(remote, &key, total, &expected, sent.sha256)
            .await
    }

    async fn abandon(&self, session: &Session) -> Result<(), TransferError> {
        let s: S3Session = session.get()?;
        match &s.upload_id {
            Some(id) => self.abort(&s.key, id).await,
            None => Ok(()),
        }
    }

    /// The multipart upload id: a checkpoint's session holds its parts too, the listing not.
    fn upload_id(&self, session: &Session) -> String {
        match session.get::<S3Session>() {
            Ok(s) => format!("{}\n{}", s.key, s.upload_id.unwrap_or_default()),
            Err(_) => session.0.to_string(),
        }
    }

    async fn partials(&self) -> Result<Vec<Partial>, TransferError> {
        let prefix = self.list_prefix();
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("max-uploads", self.page_size.as_str()),
                ("prefix", prefix.as_str()),
                ("uploads", ""),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", id));
            }
            let reply = self
                .call(
                    "ListMultipartUploads",
                    Method::GET,
                    None,
                    &query,
                    &[],
                    Body::Empty,
                )
                .await?;
            let page: ListMultipartUploadsResult = parse_xml("ListMultipartUploads", &reply.body)?;
            for u in page.uploads {
                let direct = u
                    .key
                    .strip_prefix(&prefix)
                    .is_some_and(|n| !n.is_empty() && !n.contains('/'));
                if !direct {
                    continue;
                }
                // S3 says when an upload began, not when it was last written: another
                // installation's (or a person's) upload under the same prefix may be busy, so
                // none of these is ever taken for an orphan by its age.
                out.push(Partial {
                    label: format!(
                        "s3://{}/{} upload {}",
                        self.bucket.name(),
                        u.key,
                        u.upload_id
                    ),
                    session: Session::new(&S3Session {
                        key: u.key,
                        size: 0,
                        chunk: 0,
                        upload_id: Some(u.upload_id),
                        parts: Vec::new(),
                    }),
                    idle: None,
                });
            }
            match (page.next_key_marker, page.next_upload_id_marker) {
                (Some(k), Some(i)) if page.is_truncated => markers = Some((k, i)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn same_content(
        &self,
        stored: &RemoteFile,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        if stored.size != size {
            return Ok(false);
        }
        let key = self.key(&stored.path)?;
        let Some(head) = self.head(&key, &[]).await? else {
            return Ok(false);
        };
        if head.size != size {
            return Ok(false);
        }
        let Some(stored_sum) = head.sha256.clone() else {
            return self.read_back_equal(&stored.path, source, size).await;
        };
        if !head.is_multipart() {
            let mine = Self::checksum_of(source, size, None).await?;
            return Ok(mine.as_deref() == Some(stored_sum.as_str()));
        }
        // Composite: the source's checksum at the object's part size, which begin recorded
        // in the metadata (else S3 tells the size of part 1).
        let part = match head.part_size {
            Some(p) => Some(p),
            None => match self.head(&key, &[("partNumber", "1")]).await {
                Ok(Some(h)) if h.size > 0 && h.size < size => Some(h.size),
                _ => None,
            },
        };
        match part {
            Some(part) => {
                let mine = Self::checksum_of(source, size, Some(part)).await?;
                Ok(mine.is_some_and(|m| same_checksum(&stored_sum, &m)))
            }
            None => self.read_back_equal(&stored.path, source, size).await,
        }
    }
}

impl S3Destination {
    /// GetObject of bytes [start, end) (to the end without `end`), streamed.
    async fn open_range(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, TransferError> {
        let headers: &[(&str, &str)] = &[];
        let url = self.presign(&Method::GET, Some(key), &[], headers);
        let mut request = self.http.get(url);
        match end {
            Some(end) => request = request.header(RANGE, format!("bytes={start}-{}", end - 1)),
            None if start > 0 => request = request.header(RANGE, format!("bytes={start}-")),
            None => {}
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error("GetObject", e))?;
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // Asked for the end of the object: nothing left to read.
            return Ok(Box::pin(tokio::io::empty()));
        }
        if !status.is_success() {
            let reply = read_reply(response)
                .await
                .map_err(|e| self.transport_error("GetObject", e))?;
            return Err(match self.failure("GetObject", Some(key), &reply) {
                e @ TransferError::NotFound(_) => e,
                e if status == StatusCode::NOT_FOUND => TransferError::NotFound(e.to_string()),
                e => e,
            });
        }
        if (start > 0 || end.is_some()) && status != StatusCode::PARTIAL_CONTENT {
            return Err(TransferError::Permanent(format!(
                "S3 GetObject ({}, key {key}): the server ignored the byte range",
                self.bucket_at()
            )));
        }
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.without_url()));
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn read_back_equal(
        &self,
        remote: &str,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        let stored = self.open_at(remote, 0).await?;
        let theirs = Self::checksum_of(stored, size, None).await?;
        let mine = Self::checksum_of(source, size, None).await?;
        Ok(theirs.is_some() && theirs == mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_presigned_for_the_addressing() {
        let make = |extra: &str| {
            let c: S3Config = toml::from_str(&format!(
                "region = \"eu-west-1\"\nbucket = \"my-backups\"\n\
                 access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"wJalrXUtnFEMIK7MDENG\"\n{extra}"
            ))
            .unwrap();
            S3Destination::with_env(&c, reqwest::Client::new(), &|_| None).unwrap()
        };
        let aws = make("");
        let url = aws.presign(
            &Method::PUT,
            Some("a b/x.tar"),
            &[("uploadId", "u"), ("partNumber", "2")],
            &[("x-amz-checksum-sha256", "abc")],
        );
        assert_eq!(
            url.host_str(),
            Some("my-backups.s3.eu-west-1.amazonaws.com")
        );
        assert_eq!(url.path(), "/a%20b/x.tar");
        let query = url.query().unwrap();
        assert!(
            query.contains("X-Amz-SignedHeaders=host%3Bx-amz-checksum-sha256"),
            "{query}"
        );
        assert!(query.contains("partNumber=2") && query.contains("X-Amz-Signature="));
        assert!(!query.contains("wJalr"), "{query}");
        let minio = make("endpoint = \"http://127.0.0.1:9000\"");
        let url = minio.presign(&Method::GET, None, &[("versioning", "")], &[]);
        assert_eq!(
            url.as_str().split('?').next(),
            Some("http://127.0.0.1:9000/my-backups/")
        );
    }

    #[test]
    fn composite_checksum_and_errors() {
        let parts: Vec<PartRecord> = [b"a".as_slice(), b"b"]
            .iter()
            .enumerate()
            .map(|(i, d)| PartRecord {
                number: i as u64 + 1,
                etag: String::new(),
                sha256: BASE64.encode(Sha256::digest(d)),
            })
            .collect();
        let mut both = Vec::new();
        both.extend_from_slice(&Sha256::digest(b"a"));
        both.extend_from_slice(&Sha256::digest(b"b"));
        let expected = format!("{}-2", BASE64.encode(Sha256::digest(&both)));
        assert_eq!(composite(&parts).unwrap(), expected);
        assert!(same_checksum(&expected, &expected));
        assert!(same_checksum(
            expected.split('-').next().unwrap(),
            &expected
        ));
        assert!(!same_checksum("x-2", &expected));

        let body = b"<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error</Message></Error>";
        let e = error_in_body(body).unwrap();
        assert_eq!(e.code, "InternalError");
        let padded = [b" \n ".repeat(400).as_slice(), body].concat();
        assert_eq!(error_in_body(&padded).unwrap().code, "InternalError");
        assert!(
            error_in_body(
                b"<CompleteMultipartUploadResult><ETag>x</ETag></CompleteMultipartUploadResult>"
            )
            .is_none()
        );
        assert_eq!(
            hex_to_base64("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .unwrap(),
            BASE64.encode(Sha256::digest(b""))
        );
    }

    #[test]
    fn sessions_are_tagged() {
        let s = S3Session {
            key: "k".into(),
            size: 1,
            chunk: 1,
            upload_id: None,
            parts: vec![],
        };
        let session = Session::new(&s);
        assert_eq!(session.0["type"], "s3");
        assert_eq!(session.get::<S3Session>().unwrap(), s);
        let other = Session(serde_json::json!({"type": "dropbox", "session_id": "x"}));
        assert!(matches!(
            other.get::<S3Session>(),
            Err(TransferError::SessionGone(_))
        ));
    }

    #[test]
    fn chunk_for_fits_the_part_limit() {
        let rules = ChunkRules {
            multiple: 1,
            min: MIN_PART,
            max: MAX_PART,
            max_chunks: Some(1000),
        };
        assert_eq!(rules.chunk_for(8 << 20, 100 << 20).unwrap(), 8 << 20);
        let big = 50u64 << 30;
        let chunk = rules.chunk_for(8 << 20, big).unwrap();
        assert!(big.div_ceil(chunk) <= 1000 && chunk >= MIN_PART);
        assert_eq!(rules.chunk_for(1, 1).unwrap(), MIN_PART);
        assert!(rules.chunk_for(8 << 20, 6000u64 << 30).is_err());
    }
}
