//! Moving bytes from a source to a destination: the errors, classified for the retry decision;
//! the byte stream and the source trait every producer implements; the resumable SHA-256; the
//! spool for producers that cannot seek; and (`copy`, `checkpoint`) the one resumable copy
//! loop every job kind uses.
//!
//! Layering inside: `copy` and `checkpoint` sit above `destinations`; everything else here sits
//! below it (destinations and sources use the errors, streams and hashes).

pub mod checkpoint;
pub mod copy;
mod hash;
pub mod http;
pub mod spool;

use std::time::Duration;

pub use hash::{Md5State, Sha256State, hex, sha256_hex, sha256_of, unhex};

/// Bytes read sequentially; a failure in the middle (a dropped connection, an unreadable file,
/// a body shorter than announced) is an `io::Error` from the reader.
pub type ByteStream = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// What a transfer reads from: opened at an offset, it gives the stream from there and the
/// total size (not the remaining length), so a resume can check its checkpoint against it.
#[async_trait::async_trait]
pub trait ByteSource: Send + Sync {
    async fn open_at(&self, offset: u64) -> Result<(ByteStream, u64), TransferError>;

    /// The total size, where the source knows it without opening (a remote file's listing),
    /// so a size check costs no request.
    fn size(&self) -> Option<u64> {
        None
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransferError {
    /// Network trouble, 5xx, timeouts: retry with backoff.
    #[error("{0}")]
    Temporary(String),
    /// Will not succeed by retrying (bad path, quota, 4xx that is not about auth).
    #[error("{0}")]
    Permanent(String),
    /// The remote named a wait (429/503 Retry-After).
    #[error("{message}")]
    RetryAfter { wait: Duration, message: String },
    /// No usable credentials (none stored, or the refresh token was revoked: invalid_grant).
    /// The destination must be authorized again by the user.
    #[error("{0}")]
    Unauthorized(String),
    /// The upload session no longer exists (not_found / closed / expired): start again from 0.
    #[error("upload session no longer exists: {0}")]
    SessionGone(String),
    /// The server has a different offset for this session: continue from `0`.
    #[error("server expects offset {0}")]
    IncorrectOffset(u64),
    /// The thing asked for does not exist (a source backup that vanished).
    #[error("{0}")]
    NotFound(String),
}

/// A file-system error as the retry decision needs it. Everything a file system says is about
/// the environment (a full disk, a read-only or unplugged drive, permissions someone will fix),
/// so it is retried with backoff, and the message says plainly what is wrong.
pub fn io_error(context: String, e: &std::io::Error) -> TransferError {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "no space left on the device: ",
        ErrorKind::PermissionDenied => "permission denied: ",
        ErrorKind::ReadOnlyFilesystem => "the file system is read-only: ",
        _ => "",
    };
    TransferError::Temporary(format!("{hint}{context}: {e}"))
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        TransferError::Temporary(e.to_string())
    }
}
