//! A private copy of the destination trait from /work/spec/destination-trait.rs, so the S3
//! destination compiles before the trait lands on main (where it lives in
//! `src/destinations/mod.rs`, and this file goes away: main's version wins at merge).
//! `ByteStream` is `crate::transfer::ByteStream` there; `Authorization` is a stand-in.
#![allow(dead_code)]

use std::pin::Pin;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::transfer::TransferError;

pub type ByteStream = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// Stand-in for main's OAuth authorization trait.
pub trait Authorization: Send + Sync {}

/// What a destination is, for people (API, panel, Home Assistant show it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationInfo {
    /// "folder", "dropbox", "s3", ...
    pub kind: &'static str,
    /// Where backups land, as a user would write it: "/media/backups",
    /// "dropbox:/HomeAssistant/Backups", "s3://bucket/prefix".
    pub location: String,
}

/// How a destination wants its bytes cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRules {
    /// Every chunk but the last is a multiple of this many bytes.
    pub multiple: u64,
    /// Every chunk but the last is at least this long.
    pub min: u64,
    /// No chunk is longer.
    pub max: u64,
    /// At most this many chunks per upload (S3's part limit), if limited.
    pub max_chunks: Option<u64>,
}
impl ChunkRules {
    /// The chunk size for a `total`-byte upload: `preferred` rounded to the rules, raised until
    /// `max_chunks` chunks hold `total`. Err when no size fits (object too large).
    pub fn chunk_for(&self, preferred: u64, total: u64) -> Result<u64, TransferError> {
        let multiple = self.multiple.max(1);
        let round_up = |n: u64| n.div_ceil(multiple) * multiple;
        let mut chunk = round_up(preferred.clamp(self.min, self.max));
        if let Some(limit) = self.max_chunks.filter(|&l| l > 0)
            && total.div_ceil(chunk.max(1)) > limit
        {
            chunk = round_up(total.div_ceil(limit)).max(chunk);
        }
        if chunk > self.max {
            return Err(TransferError::Permanent(format!(
                "{total} bytes do not fit in {} chunks of at most {} bytes",
                self.max_chunks.unwrap_or(0),
                self.max
            )));
        }
        Ok(chunk)
    }
}

/// An open upload's state, owned by its destination and opaque to the copy loop; serde so the
/// job checkpoints it after every acknowledged chunk. Each destination (de)serializes its own
/// struct into it, tagged with `"type": "<kind>"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Session(pub serde_json::Value);
impl Session {
    pub fn new<T: Serialize>(state: &T) -> Session {
        Session(serde_json::to_value(state).expect("a session serializes"))
    }
    /// SessionGone when the checkpoint holds another destination's session.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, TransferError> {
        serde_json::from_value(self.0.clone()).map_err(|e| {
            TransferError::SessionGone(format!("the checkpoint holds another session: {e}"))
        })
    }
    pub fn set<T: Serialize>(&mut self, state: &T) {
        *self = Session::new(state);
    }
}

/// A stored file as the destination reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// The destination's own hash of the content when it keeps one (Dropbox content_hash,
    /// S3 checksum / ETag), in its own notation.
    pub content_hash: Option<String>,
}

/// What the copy loop vouches for at finish: the plain bytes it read from the source.
pub struct Sent<'a> {
    pub size: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: &'a str,
}

/// An unfinished upload a destination holds on its own (a folder's hidden partial file, an S3
/// multipart upload), for the sweep that removes those no job will resume.
pub struct Partial {
    pub session: Session,
    /// How long since it was last written (since initiated, for S3).
    pub age: std::time::Duration,
    /// For logs: a path or an upload id.
    pub label: String,
}

#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    fn info(&self) -> DestinationInfo;
    fn chunk_rules(&self) -> ChunkRules;
    /// The folder or prefix backups go under, in the destination's own path syntax; upload
    /// paths are `remote_path(root, name, date)` = "{root}/{name}_{date}.tar". For S3 it is the
    /// configured prefix (may be ""), and a remote path maps to the key by stripping a leading '/'.
    fn root(&self) -> &str;
    /// OAuth destinations; None for those that need no user step.
    fn authorization(&self) -> Option<&dyn Authorization> {
        None
    }
    /// Once at start-up: checks it can be used, logs (warn) what a user should fix
    /// (S3: bucket versioning is off).
    async fn prepare(&self) -> Result<(), TransferError> {
        Ok(())
    }
    /// The files directly under `root` (not the partials).
    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError>;
    /// The committed file at `remote`, if any.
    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError>;
    /// Reads a committed file from byte `offset` on (verify and restore).
    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError>;
    /// Ok when already gone.
    async fn delete(&self, remote: &str) -> Result<(), TransferError>;
    /// Opens an upload of `size` bytes to be sent in `chunk`-byte pieces (from `chunk_for`).
    async fn begin(&self, remote: &str, size: u64, chunk: u64) -> Result<Session, TransferError>;
    /// Before resuming a checkpointed session: where the destination says it is, given that
    /// the checkpoint has `ours` bytes acknowledged. Returns ours, or more when the server has
    /// more (a chunk that was taken but never acknowledged); the session is updated to match.
    /// Err(SessionGone) when the session no longer exists.
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError>;
    /// Sends bytes [offset, offset + chunk.len()) (not the last chunk). May fail with
    /// IncorrectOffset(at) when the server is elsewhere.
    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError>;
    /// The server holds bytes [offset, offset + bytes.len()) that were never acknowledged (it
    /// answered IncorrectOffset further along): fold them into the session's integrity state.
    fn caught_up(
        &self,
        _session: &mut Session,
        _offset: u64,
        _bytes: &[u8],
    ) -> Result<(), TransferError> {
        Ok(())
    }
    /// Sends the last chunk (may be empty) and commits the file at `remote`, after checking its
    /// own integrity state (per-part checksums, content hash, read-back) and what `sent` says.
    /// A mismatch: nothing left that looks like a good backup, Err(Permanent).
    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError>;
    /// Throws away an unfinished upload (cancelled/discarded job): S3 AbortMultipartUpload.
    async fn abandon(&self, session: &Session) -> Result<(), TransferError>;
    /// Unfinished uploads this destination holds (under root).
    async fn partials(&self) -> Result<Vec<Partial>, TransferError> {
        Ok(Vec::new())
    }
    /// Whether `stored` holds exactly `source` (`size` bytes, SHA-256 `sha256` hex when the
    /// caller already knows it): a committed file no job recorded. The default reads the file
    /// back with open_at and compares SHA-256; a destination with a cheaper hash overrides it.
    async fn same_content(
        &self,
        stored: &RemoteFile,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError>;
}
