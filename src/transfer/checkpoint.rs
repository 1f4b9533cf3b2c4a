//! What a transfer saves after every acknowledged chunk: enough to resume after `kill -9`
//! without re-sending what the destination has, and to finish with the hash of every byte.

use serde::{Deserialize, Serialize};

use super::{Md5State, Sha256State};
use crate::destinations::Session;

/// Checkpoints without this version (or another one) are not resumed: the upload starts over,
/// after checking whether the destination already has the file.
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyCheckpoint {
    pub version: u32,
    pub remote_path: String,
    /// Bytes per chunk, fixed when the session began (S3 numbers its parts by it).
    pub chunk: u64,
    /// The source's size when the session began: a resume of a source that has since changed
    /// size starts over instead of joining two files' bytes.
    #[serde(default)]
    pub total: u64,
    /// The destination's session, with its own integrity state.
    pub session: Option<Session>,
    /// Bytes the destination has acknowledged (stored as `offset`, the name operators and
    /// tools have read since the first version).
    #[serde(rename = "offset")]
    pub dst_offset: u64,
    /// Bytes read from the source and counted in `sha256`. The same as `dst_offset` while no
    /// layer changes the bytes on their way (an encrypting one will).
    pub src_offset: u64,
    /// SHA-256 of the source's bytes before `src_offset`.
    pub sha256: Sha256State,
    /// MD5 of the same bytes, kept only for a source that publishes an MD5 to check against
    /// (Google Drive's `md5Checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Md5State>,
}

impl CopyCheckpoint {
    pub fn fresh(remote_path: &str) -> CopyCheckpoint {
        CopyCheckpoint {
            version: VERSION,
            remote_path: remote_path.to_string(),
            chunk: 0,
            total: 0,
            session: None,
            dst_offset: 0,
            src_offset: 0,
            sha256: Sha256State::new(),
            md5: None,
        }
    }

    /// A checkpoint this code can resume for `remote_path`.
    pub fn usable_for(&self, remote_path: &str) -> bool {
        self.version == VERSION
            && self.remote_path == remote_path
            && self.src_offset == self.dst_offset
            && (self.session.is_none() || self.chunk > 0)
    }
}
