//! Backups through the Home Assistant Supervisor API, as an add-on sees it
//! at `http://supervisor/` with its `SUPERVISOR_TOKEN` (needs
//! `hassio_api: true` and `hassio_role: backup`).
//!
//! Downloads are streamed, never buffered: a backup can be several GiB and
//! the add-on runs on a Raspberry Pi. Resuming uses `Range: bytes=N-`, which
//! the Supervisor's aiohttp `FileResponse` honours with a 206.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use tokio_util::io::StreamReader;
use tracing::{debug, warn};

use super::{BackupInfo, BackupStream, listing_order, parse_ha_date};
use crate::redact::Secret;
use crate::transfer::TransferError;

/// How much of an error body is read, and how many characters of it go
/// into a message (HTML error pages from a proxy would flood the job log).
const ERROR_BODY_LIMIT: usize = 4096;
const ERROR_DETAIL_CHARS: usize = 300;
/// The Supervisor's `size` is MiB rounded to two decimals
/// (`round(size_bytes / 1048576, 2)` in supervisor/backups/backup.py).
const BYTES_PER_SUPERVISOR_MB: f64 = 1_048_576.0;

/// The Supervisor's backup API.
///
/// The `reqwest::Client` should have a connect timeout and a read timeout
/// (`ClientBuilder::read_timeout`), but no total timeout: a download can
/// rightly take hours, while a stalled one must fail rather than hang.
#[derive(Debug, Clone)]
pub struct SupervisorSource {
    base_url: String,
    token: Secret,
    http: reqwest::Client,
}

impl SupervisorSource {
    /// Where an add-on reaches the Supervisor.
    pub const DEFAULT_URL: &'static str = "http://supervisor";

    pub fn new(base_url: String, token: Secret, http: reqwest::Client) -> Self {
        Self {
            base_url,
            token,
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /backups`, oldest first.
    pub async fn list(&self) -> Result<Vec<BackupInfo>, TransferError> {
        let what = "listing backups";
        let resp = self
            .get(&["backups"])?
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.request_error(what, &e))?;
        let status = resp.status();
        debug!(%status, "Supervisor GET /backups");
        if !status.is_success() {
            return Err(status_error(resp, what).await);
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.request_error(what, &e))?;
        // A complete body that does not parse will not parse on a retry
        // either: a wrong base URL or an API change.
        let undecodable = |e: &dyn std::fmt::Display| {
            TransferError::Permanent(format!(
                "{what}: unexpected answer from the Supervisor at {}: {e}",
                self.base_url
            ))
        };
        let envelope: Envelope = serde_json::from_slice(&body).map_err(|e| undecodable(&e))?;
        if envelope.result != "ok" {
            return Err(TransferError::Permanent(format!(
                "{what}: the Supervisor answered {}: {}",
                envelope.result,
                envelope.message.unwrap_or_default()
            )));
        }
        let data: BackupList =
            serde_json::from_value(envelope.data).map_err(|e| undecodable(&e))?;
        let mut list: Vec<BackupInfo> = data.backups.into_iter().filter_map(to_info).collect();
        list.sort_by(listing_order);
        Ok(list)
    }

    /// `GET /backups/{slug}/download` from byte `offset` on. Returns the
    /// stream and the backup's total size.
    pub async fn open(
        &self,
        slug: &str,
        offset: u64,
    ) -> Result<(BackupStream, u64), TransferError> {
        let what = format!("downloading backup {slug}");
        let mut req = self.get(&["backups", slug, "download"])?;
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.request_error(&what, &e))?;
        let status = resp.status();
        debug!(slug, offset, %status, "Supervisor backup download");
        let protocol = |detail: String| {
            TransferError::Permanent(format!("{what} from byte {offset}: {detail}"))
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some((first, last, total)) = content_range(resp.headers()) else {
                    return Err(protocol("206 without a usable Content-Range".into()));
                };
                // Anything but exactly "offset to the end" would splice the
                // wrong bytes into the upload.
                if first != offset || last.checked_add(1) != Some(total) {
                    return Err(protocol(format!(
                        "the Supervisor sent bytes {first}-{last}/{total} for bytes={offset}-"
                    )));
                }
                Ok((
                    body_reader(
                        resp,
                        &format!("backup {slug} from the Supervisor"),
                        0,
                        total - offset,
                    ),
                    total,
                ))
            }
            StatusCode::OK => {
                let total = match content_length(resp.headers()) {
                    Some(n) => n,
                    // aiohttp always sends it for files; should a proxy drop
                    // it, the listing still knows the size.
                    None => self.listed_size(slug).await?.ok_or_else(|| {
                        protocol("neither Content-Length nor a listed size".into())
                    })?,
                };
                if offset > total {
                    return Err(protocol(format!(
                        "the backup has only {total} bytes (it changed since the transfer started)"
                    )));
                }
                if offset > 0 {
                    // The Range header was ignored: the body starts at byte
                    // 0, and the first `offset` bytes are dropped as they
                    // arrive.
                    debug!(slug, offset, "Supervisor ignored Range; skipping bytes");
                }
                Ok((
                    body_reader(
                        resp,
                        &format!("backup {slug} from the Supervisor"),
                        offset,
                        total - offset,
                    ),
                    total,
                ))
            }
            StatusCode::NOT_FOUND => Err(TransferError::NotFound(format!(
                "backup {slug} no longer exists on the Supervisor"
            ))),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // aiohttp answers 416 for a range starting at the end, which
                // is where a transfer that finished reading resumes.
                match unsatisfied_range_size(resp.headers()) {
                    Some(size) if size == offset => Ok((Box::pin(tokio::io::empty()), size)),
                    Some(size) => Err(protocol(format!(
                        "the backup has only {size} bytes (it changed since the transfer started)"
                    ))),
                    None => Err(status_error(resp, &what).await),
                }
            }
            _ => Err(status_error(resp, &what).await),
        }
    }

    /// A GET with the add-on token. An empty token (SUPERVISOR_TOKEN unset
    /// because `hassio_api` is off) is not sent at all, so the Supervisor
    /// answers 401 and the message says what is wrong.
    fn get(&self, segments: &[&str]) -> Result<reqwest::RequestBuilder, TransferError> {
        let req = self.http.get(self.url(segments)?);
        Ok(match self.token.expose() {
            "" => req,
            token => req.bearer_auth(token),
        })
    }

    /// `base_url` plus path segments, each percent-encoded: a slug is data,
    /// not a path.
    fn url(&self, segments: &[&str]) -> Result<Url, TransferError> {
        let invalid = || {
            TransferError::Permanent(format!(
                "invalid Supervisor URL {:?}: needs an http(s) base like {}",
                self.base_url,
                Self::DEFAULT_URL
            ))
        };
        let mut url = Url::parse(&self.base_url).map_err(|_| invalid())?;
        url.path_segments_mut()
            .map_err(|_| invalid())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// The size `GET /backups` reports for `slug`.
    async fn listed_size(&self, slug: &str) -> Result<Option<u64>, TransferError> {
        let list = self.list().await?;
        Ok(list
            .into_iter()
            .find(|b| b.slug == slug)
            .and_then(|b| b.size))
    }

    /// A request that got no response. reqwest's messages name the URL but
    /// never the headers, so the token stays out of them.
    fn request_error(&self, what: &str, e: &reqwest::Error) -> TransferError {
        let msg = format!(
            "{what}: cannot reach the Supervisor at {}: {}",
            self.base_url,
            error_chain(e)
        );
        if e.is_builder() {
            TransferError::Permanent(msg)
        } else {
            TransferError::Temporary(msg)
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    result: String,
    #[serde(default)]
    data: serde_json::Value,
    message: Option<String>,
}

#[derive(Deserialize)]
struct BackupList {
    backups: Vec<RawBackup>,
}

#[derive(Deserialize)]
struct RawBackup {
    slug: String,
    name: Option<String>,
    date: String,
    /// MiB, two decimals.
    size: Option<f64>,
    size_bytes: Option<u64>,
}

fn to_info(raw: RawBackup) -> Option<BackupInfo> {
    let Some(date) = parse_ha_date(&raw.date) else {
        // Without a date retention cannot place the backup; leaving it out
        // is safer than inventing one that makes it look oldest.
        warn!(slug = %raw.slug, date = %raw.date, "skipping backup with an unreadable date");
        return None;
    };
    let size = raw.size_bytes.or_else(|| {
        raw.size
            .filter(|mb| mb.is_finite() && *mb >= 0.0)
            .map(|mb| (mb * BYTES_PER_SUPERVISOR_MB).round() as u64)
    });
    Some(BackupInfo {
        name: raw.name.unwrap_or_else(|| raw.slug.clone()),
        slug: raw.slug,
        date,
        size,
    })
}

/// Classify an unsuccessful answer for the retry decision.
async fn status_error(resp: Response, what: &str) -> TransferError {
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let detail = error_detail(resp).await;
    let msg = format!("{what}: the Supervisor answered {status}: {detail}");
    match status.as_u16() {
        // The Supervisor answers 401 without a token and 403 for an unknown one or a role
        // too weak for /backups. Both happen for a while when the Supervisor restarts or
        // rotates tokens, and both are fixed outside offsite: retried with backoff, shown on
        // the job, and the backup (still at the source) is never given up over them.
        401 => TransferError::Temporary(format!(
            "the Supervisor rejected the add-on token (is hassio_api enabled?): {msg}"
        )),
        403 => TransferError::Temporary(format!(
            "the Supervisor rejected the add-on token (is hassio_api enabled?); \
             the add-on also needs hassio_role: backup: {msg}"
        )),
        429 | 503 if wait.is_some() => TransferError::RetryAfter {
            wait: wait.unwrap_or_default(),
            message: msg,
        },
        // 502/504 and friends: the Supervisor or Core is restarting.
        408 | 429 | 500..=599 => TransferError::Temporary(msg),
        _ => TransferError::Permanent(msg),
    }
}

/// The Supervisor's `message` from an error body, else the start of the
/// body as text. Reads at most [`ERROR_BODY_LIMIT`] bytes.
async fn error_detail(mut resp: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(message) = json.get("message").and_then(|m| m.as_str())
    {
        return message.to_owned();
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        "(no body)".to_owned()
    } else if text.chars().count() > ERROR_DETAIL_CHARS {
        let cut: String = text.chars().take(ERROR_DETAIL_CHARS).collect();
        format!("{cut}…")
    } else {
        text.to_owned()
    }
}

/// `Retry-After` as seconds or an HTTP date; a date in the past is zero.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    crate::transfer::http::parse_retry_after(value, chrono::Utc::now())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range: bytes first-last/total`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last < total).then_some((first, last, total))
}

/// The size in a 416's `Content-Range: bytes */size`.
fn unsatisfied_range_size(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    value.trim().strip_prefix("bytes */")?.parse().ok()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and reqwest often repeat their cause in their own message.
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    msg
}

/// The response body as an `AsyncRead`: drops the first `skip` bytes and
/// insists on exactly `expect` bytes after them, so a body cut short can
/// never pass for a complete backup.
pub(crate) fn body_reader(resp: Response, what: &str, skip: u64, expect: u64) -> BackupStream {
    let body = ExactBody {
        inner: Box::pin(resp.bytes_stream()),
        what: what.to_owned(),
        skip,
        remaining: expect,
        received: 0,
        done: false,
    };
    Box::pin(StreamReader::new(body))
}

struct ExactBody {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// What is downloaded, for messages: "backup X from the Supervisor".
    what: String,
    /// Bytes still to drop (a server that ignored Range).
    skip: u64,
    /// Bytes still owed to the reader after the skip.
    remaining: u64,
    /// Body bytes received so far, for messages.
    received: u64,
    /// An error was reported; the stream is over.
    done: bool,
}

impl ExactBody {
    fn fail(&mut self, kind: io::ErrorKind, detail: String) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        Poll::Ready(Some(Err(io::Error::new(
            kind,
            format!(
                "download of {} broke off after {} body bytes: {detail}",
                self.what, self.received
            ),
        ))))
    }
}

impl Stream for ExactBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(mut chunk)) => {
                    this.received += chunk.len() as u64;
                    if this.skip > 0 {
                        let drop = this.skip.min(chunk.len() as u64);
                        this.skip -= drop;
                        chunk = chunk.slice(drop as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    let len = chunk.len() as u64;
                    if len > this.remaining {
                        return this.fail(
                            io::ErrorKind::InvalidData,
                            "the body is longer than announced".into(),
                        );
                    }
                    this.remaining -= len;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e)) => {
                    let kind = if e.is_timeout() {
                        io::ErrorKind::TimedOut
                    } else {
                        io::ErrorKind::ConnectionAborted
                    };
                    return this.fail(kind, error_chain(&e));
                }
                None if this.skip > 0 || this.remaining > 0 => {
                    let missing = this.skip + this.remaining;
                    return this.fail(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended {missing} bytes early"),
                    );
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl super::BackupSource for SupervisorSource {
    async fn list(&self) -> Result<Vec<BackupInfo>, TransferError> {
        SupervisorSource::list(self).await
    }

    async fn open(&self, slug: &str, offset: u64) -> Result<(BackupStream, u64), TransferError> {
        SupervisorSource::open(self, slug, offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn content_range_forms() {
        let h = |v| headers(header::CONTENT_RANGE, v);
        assert_eq!(content_range(&h("bytes 10-99/100")), Some((10, 99, 100)));
        assert_eq!(content_range(&h("bytes 10-99/*")), None);
        assert_eq!(content_range(&h("bytes 10-100/100")), None);
        assert_eq!(unsatisfied_range_size(&h("bytes */100")), Some(100));
    }

    #[test]
    fn retry_after_forms() {
        let h = |v| headers(header::RETRY_AFTER, v);
        assert_eq!(retry_after(&h("7")), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&h("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = retry_after(&h(&later)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(retry_after(&h("soon")), None);
    }

    #[test]
    fn size_falls_back_to_supervisor_megabytes() {
        let raw = RawBackup {
            slug: "a".into(),
            name: None,
            date: "2026-01-31T03:00:00+00:00".into(),
            size: Some(1.5),
            size_bytes: None,
        };
        let info = to_info(raw).unwrap();
        assert_eq!(info.size, Some(1_572_864));
        assert_eq!(info.name, "a");
    }
}
