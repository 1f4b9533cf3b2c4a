//! What goes over the wire: answers as read, the XML documents and S3 error documents (the
//! upload stall watchdog and Retry-After are `transfer::http`'s, shared with Dropbox).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::transfer::TransferError;

pub(super) use crate::transfer::http::{
    BODY_SLICE, Progress, Watched, parse_retry_after, sliced, watch_progress,
};

pub(super) enum Body {
    Empty,
    Xml(Bytes),
    /// A part or object; watched for stalls.
    Upload(Bytes),
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Bytes,
}

pub(super) struct Head {
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    pub(super) sha256: Option<String>,
    pub(super) parts: Option<u64>,
    /// What begin recorded in the object's metadata.
    pub(super) part_size: Option<u64>,
}

impl Head {
    /// Made of parts: S3 writes a multipart object's ETag (and AWS its checksum) with "-{parts}".
    pub(super) fn is_multipart(&self) -> bool {
        let suffixed = |v: &Option<String>| {
            v.as_deref().is_some_and(|v| {
                v.trim_matches('"')
                    .rsplit_once('-')
                    .is_some_and(|(_, n)| n.parse::<u64>().is_ok())
            })
        };
        suffixed(&self.etag)
            || suffixed(&self.sha256)
            || self.parts.is_some()
            || self.part_size.is_some()
    }
}

pub(super) async fn read_reply(response: reqwest::Response) -> reqwest::Result<Reply> {
    let status = response.status();
    let headers = response.headers().clone();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        headers,
        retry_after,
        body,
    })
}

pub(super) fn hex_to_base64(hex: &str) -> Option<String> {
    if hex.len() != 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    Some(BASE64.encode(bytes?))
}

pub(super) use crate::transfer::hex;

pub(super) fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

pub(super) fn parse_xml<T: serde::de::DeserializeOwned>(
    op: &str,
    body: &[u8],
) -> Result<T, TransferError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| TransferError::Temporary(format!("S3 {op}: the answer is not UTF-8")))?;
    quick_xml::de::from_str(text)
        .map_err(|e| TransferError::Temporary(format!("S3 {op}: unreadable answer: {e}")))
}

/// The root element's name.
pub(super) fn root_element(body: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            quick_xml::events::Event::Eof => return None,
            _ => buf.clear(),
        }
    }
}

pub(super) fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    if root_element(body)? != "Error" {
        return None;
    }
    parse_xml("error", body).ok()
}

/// An `<Error>` document where a result was expected.
pub(super) fn error_in_body(body: &[u8]) -> Option<ErrorBody> {
    // Cheap test first: most answers are empty or a result document. S3 may send whitespace
    // to keep the connection open while it completes an upload, before the document.
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    let head = &body[..body.len().min(512)];
    if !head.windows(7).any(|w| w == b"<Error>") {
        return None;
    }
    parse_error(body)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct InitiateMultipartUploadResult {
    pub(super) upload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListPartsResult {
    #[serde(default)]
    pub(super) is_truncated: bool,
    #[serde(default)]
    pub(super) next_part_number_marker: Option<u64>,
    #[serde(default, rename = "Part")]
    pub(super) parts: Vec<ListedPart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListedPart {
    pub(super) part_number: u64,
    #[serde(rename = "ETag")]
    pub(super) etag: String,
    pub(super) size: u64,
    #[serde(default, rename = "ChecksumSHA256")]
    pub(super) checksum_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListBucketResult {
    #[serde(default)]
    pub(super) is_truncated: bool,
    #[serde(default)]
    pub(super) next_continuation_token: Option<String>,
    #[serde(default)]
    pub(super) contents: Vec<ListedObject>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListedObject {
    pub(super) key: String,
    pub(super) size: u64,
    #[serde(default, rename = "ETag")]
    pub(super) etag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListMultipartUploadsResult {
    #[serde(default)]
    pub(super) is_truncated: bool,
    #[serde(default)]
    pub(super) next_key_marker: Option<String>,
    #[serde(default)]
    pub(super) next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    pub(super) uploads: Vec<ListedUpload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListedUpload {
    pub(super) key: String,
    pub(super) upload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct VersioningConfiguration {
    #[serde(default)]
    pub(super) status: Option<String>,
}
