//! Where backups go. Every destination is one file behind one trait: what it is, how it wants
//! its bytes cut, list / stat / read back / delete, and a resumable upload session (begin,
//! append, finish, "where does the server say we are") whose state is its own serde struct,
//! checkpointed by the job after every acknowledged chunk. Each destination also keeps its own
//! integrity state in that session and checks it at finish; the copy loop (`transfer::copy`)
//! separately vouches for the SHA-256 of the bytes it read from the source.
//!
//! What wraps a destination (throttling, dry runs) implements the same trait: see `layers`.

pub mod auth;
pub mod content_hash;
pub mod dropbox;
pub mod folder;
pub mod layers;
pub mod s3;
pub mod sharepoint;

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use crate::transfer::ByteStream;
use crate::transfer::TransferError;
pub use auth::Authorization;

/// What a destination is, for people: the API, the panel and Home Assistant show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationInfo {
    /// `folder`, `dropbox`, `s3`, …
    pub kind: &'static str,
    /// Where backups land, as a user would write it: `/media/backups` (a folder),
    /// `/HomeAssistant/Backups` (a Dropbox folder), `s3://bucket/prefix`.
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
    /// Any size, one byte at a time if need be.
    pub const ANY: ChunkRules = ChunkRules {
        multiple: 1,
        min: 1,
        max: u64::MAX,
        max_chunks: None,
    };

    /// The chunk size for a `total`-byte upload: `preferred` fitted to the rules, raised until
    /// `max_chunks` chunks hold `total`.
    pub fn chunk_for(&self, preferred: u64, total: u64) -> Result<u64, TransferError> {
        let multiple = self.multiple.max(1);
        let round_up = |n: u64| n.div_ceil(multiple).saturating_mul(multiple);
        let mut chunk = round_up(preferred.max(self.min).max(1));
        if let Some(limit) = self.max_chunks.filter(|l| *l > 0) {
            chunk = chunk.max(round_up(total.div_ceil(limit)));
        }
        let largest = self.max / multiple * multiple;
        if chunk > largest {
            if self.max_chunks.is_some() && round_up(preferred.max(self.min)) <= largest {
                return Err(TransferError::Permanent(format!(
                    "{total} bytes do not fit in {} pieces of at most {largest} bytes",
                    self.max_chunks.unwrap_or_default()
                )));
            }
            chunk = largest;
        }
        Ok(chunk.max(1))
    }

    /// Whether a chunk of `len` bytes that is not the last one is allowed.
    pub fn allows(&self, len: u64) -> bool {
        len >= self.min && len <= self.max && len.is_multiple_of(self.multiple.max(1))
    }
}

/// An open upload's state, owned by its destination and opaque to the copy loop; serde so the
/// job checkpoints it after every acknowledged chunk. Each destination keeps its own struct in
/// it, tagged `"type": "<kind>"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Session(pub serde_json::Value);

impl Session {
    pub fn new<T: Serialize>(state: &T) -> Session {
        Session(serde_json::to_value(state).expect("session state serializes"))
    }

    /// The destination's own state; a checkpoint of another destination's session is gone
    /// for this one.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, TransferError> {
        serde_json::from_value(self.0.clone()).map_err(|e| {
            TransferError::SessionGone(format!(
                "the checkpoint holds another destination's upload ({e})"
            ))
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
    /// The destination's own hash of the content, in its own notation, when it keeps one:
    /// Dropbox's content hash, an S3 checksum, a folder's SHA-256 of what it read back.
    pub content_hash: Option<String>,
}

/// What the copy loop vouches for at finish: the plain bytes it read from the source.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub size: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: &'a str,
}

/// An unfinished upload a destination holds on its own (a folder's hidden partial file, an S3
/// multipart upload), for the sweep that removes those no job will resume.
#[derive(Debug, Clone)]
pub struct Partial {
    pub session: Session,
    /// Since it was last written, where the destination can tell; None where it cannot (S3
    /// only says when an upload began): such a partial is never taken for an orphan by age.
    pub idle: Option<Duration>,
    /// For the log: a path or an upload id.
    pub label: String,
}

#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    fn info(&self) -> DestinationInfo;

    fn chunk_rules(&self) -> ChunkRules;

    /// The folder or prefix backups go under, in the destination's own path syntax; upload
    /// paths are [`remote_path`]`(root, name, date)`.
    fn root(&self) -> &str;

    /// OAuth destinations: the user has to grant access first.
    fn authorization(&self) -> Option<&dyn Authorization> {
        None
    }

    /// Once at start-up: checks the destination can be used, and logs what a user should fix.
    async fn prepare(&self) -> Result<(), TransferError> {
        Ok(())
    }

    /// Waits until `bytes` more may be sent (a throttle); the copy loop calls it before each
    /// chunk, where a stop can interrupt it without losing anything.
    async fn pace(&self, _bytes: u64) {}

    /// The files directly under `root` (not unfinished uploads).
    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError>;

    /// The committed file at `remote`, if there is one.
    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError>;

    /// Reads a committed file from byte `offset` on (verify, restore, and the check of a file
    /// committed before its job heard back).
    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError>;

    /// Removes a committed file; one already gone is fine.
    async fn delete(&self, remote: &str) -> Result<(), TransferError>;

    /// Opens an upload of `size` bytes, to be sent in `chunk`-byte pieces (see
    /// [`ChunkRules::chunk_for`]).
    async fn begin(&self, remote: &str, size: u64, chunk: u64) -> Result<Session, TransferError>;

    /// Before a checkpointed session is resumed: where the destination says it is, given that
    /// the checkpoint has `ours` bytes acknowledged. `ours`, or more when the server took a chunk
    /// whose answer never came (the session is updated to match); `SessionGone` when it is gone.
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError>;

    /// Sends bytes `[offset, offset + chunk.len())`, not the last chunk. `IncorrectOffset(at)`
    /// when the server is elsewhere.
    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError>;

    /// The server holds bytes `[offset, offset + bytes.len())` that were never acknowledged
    /// (it answered further along): fold them into the session's integrity state.
    fn caught_up(
        &self,
        _session: &mut Session,
        _offset: u64,
        _bytes: &[u8],
    ) -> Result<(), TransferError> {
        Ok(())
    }

    /// Sends the last chunk (perhaps empty) and commits the file at `remote`, after checking
    /// its own integrity state and what `sent` vouches for. On a mismatch nothing that looks
    /// like a good backup is left, and the error is permanent (or `SessionGone` where sending
    /// it again is the cure: a folder whose disk returned other bytes than were written).
    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError>;

    /// Throws away an unfinished upload (a cancelled or discarded job's).
    async fn abandon(&self, session: &Session) -> Result<(), TransferError>;

    /// Unfinished uploads this destination holds on its own under `root`.
    async fn partials(&self) -> Result<Vec<Partial>, TransferError> {
        Ok(Vec::new())
    }

    /// What identifies the upload a session belongs to (a temporary file, an upload id), so
    /// that a checkpointed session, which carries more state, is recognised as the same upload
    /// as one [`partials`](Destination::partials) lists.
    fn upload_id(&self, session: &Session) -> String {
        session.0.to_string()
    }

    /// Whether the destination keeps the previous version of a file that is overwritten (S3
    /// bucket versioning); None when it cannot tell.
    async fn keeps_versions(&self) -> Option<bool> {
        None
    }

    /// Copies the committed file at `from` to `to` on the server, without its bytes passing
    /// through offsite (a mirror's rename, move, soft delete or duplicate), and checks the copy
    /// against `sent` (its size, and the destination's own hash where it keeps one) before it
    /// returns; a copy that does not match is removed. `Unsupported` when this destination (or
    /// this file, S3 above 5 GiB) cannot be copied so: the caller sends the bytes instead.
    async fn copy_within(
        &self,
        _from: &str,
        _to: &str,
        _sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        Err(CopyError::Unsupported)
    }

    /// Whether `stored` holds exactly `source` (`size` bytes): a file committed before its job
    /// heard back. This reads the file back and compares SHA-256; a destination that keeps a
    /// hash of its own computes that from `source` instead.
    async fn same_content(
        &self,
        stored: &RemoteFile,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        if stored.size != size {
            return Ok(false);
        }
        let theirs = self.open_at(&stored.path, 0).await?;
        let (a, b) = tokio::try_join!(
            crate::transfer::sha256_of(source),
            crate::transfer::sha256_of(theirs)
        )?;
        Ok(a.0 == size && b.0 == size && a.1 == b.1)
    }
}

/// Why [`Destination::copy_within`] did not copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CopyError {
    #[error("this destination cannot copy files on its own side")]
    Unsupported,
    #[error(transparent)]
    Failed(#[from] TransferError),
}

/// Shared by the jobs, the operator actions and the sweeps.
pub type SharedDestination = std::sync::Arc<dyn Destination>;

/// `{folder}/{name}_{date}.tar` with the name made safe for any file system.
pub fn remote_path(folder: &str, name: &str, date: &chrono::DateTime<chrono::Utc>) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_matches('_');
    let safe = if safe.is_empty() { "backup" } else { safe };
    format!(
        "{}/{}_{}.tar",
        folder.trim_end_matches('/'),
        safe,
        date.format("%Y-%m-%dT%H-%M-%SZ")
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn remote_paths_are_safe() {
        let date = chrono::Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 5).unwrap();
        assert_eq!(
            remote_path("/HomeAssistant/Backups/", "Full Backup 2026/11: ✓", &date),
            "/HomeAssistant/Backups/Full_Backup_2026_11_2026-11-22T03-00-05Z.tar"
        );
        assert_eq!(
            remote_path("", "../..", &date),
            "/.._.._2026-11-22T03-00-05Z.tar"
        );
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn chunk_sizes_follow_each_destinations_rules() {
        let dropbox = ChunkRules {
            multiple: 4 * MIB,
            min: 4 * MIB,
            max: 148 * MIB,
            max_chunks: None,
        };
        assert_eq!(
            dropbox.chunk_for(8 * MIB, 10 * 1024 * MIB).unwrap(),
            8 * MIB
        );
        assert_eq!(dropbox.chunk_for(5 * MIB, 1).unwrap(), 8 * MIB);
        assert_eq!(dropbox.chunk_for(500 * MIB, 1).unwrap(), 148 * MIB);
        let graph = ChunkRules {
            multiple: 320 * 1024,
            min: 320 * 1024,
            max: 60 * MIB - 1,
            max_chunks: None,
        };
        let c = graph.chunk_for(8 * MIB, 1).unwrap();
        assert!(graph.allows(c) && c >= 8 * MIB, "{c}");
        assert_eq!(graph.chunk_for(100 * MIB, 1).unwrap(), 191 * 320 * 1024);
        // S3-compatible with 1,000 parts: 20 GiB needs parts larger than the preferred 8 MiB.
        let s3 = ChunkRules {
            multiple: 1,
            min: 5 * MIB,
            max: 5 * 1024 * MIB,
            max_chunks: Some(1000),
        };
        let total = 20 * 1024 * MIB;
        let c = s3.chunk_for(8 * MIB, total).unwrap();
        assert!(total.div_ceil(c) <= 1000 && c < 21 * MIB, "{c}");
        assert_eq!(s3.chunk_for(1, 10).unwrap(), 5 * MIB);
        assert!(s3.chunk_for(8 * MIB, 6 * 1024 * 1024 * MIB).is_err());
        assert_eq!(ChunkRules::ANY.chunk_for(3, 100).unwrap(), 3);
    }
}
