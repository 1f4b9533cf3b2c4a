//! Where backups go. Every destination speaks the same resumable upload: begin a session,
//! append chunks at known offsets, finish with the last chunk; the session state is serde so
//! the job can checkpoint it after every acknowledged chunk.

pub mod content_hash;
pub mod dropbox;
pub mod local;
pub mod s3;
pub mod trait_copy;

use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::transfer::TransferError;
use dropbox::DropboxClient;
use local::LocalFolder;

/// A stored file as the destination reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// Dropbox's content hash when the destination computes one.
    pub content_hash: Option<String>,
}

/// An open upload, checkpointed with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Session {
    Folder { temp: PathBuf },
    Dropbox { session_id: String },
}

#[derive(Clone)]
pub enum Destination {
    Folder {
        folder: LocalFolder,
        path: String,
        chunk_size: usize,
    },
    Dropbox {
        client: DropboxClient,
        path: String,
        chunk_size: usize,
    },
}

impl Destination {
    /// The folder backups go to, as the destination names it.
    pub fn folder(&self) -> &str {
        match self {
            Destination::Folder { path, .. } | Destination::Dropbox { path, .. } => path,
        }
    }

    pub fn chunk_size(&self) -> usize {
        match self {
            Destination::Folder { chunk_size, .. } | Destination::Dropbox { chunk_size, .. } => {
                *chunk_size
            }
        }
    }

    /// False when the user has to authorize it first.
    pub fn is_authorized(&self) -> bool {
        match self {
            Destination::Folder { .. } => true,
            Destination::Dropbox { client, .. } => client.is_authorized(),
        }
    }

    pub fn dropbox(&self) -> Option<&DropboxClient> {
        match self {
            Destination::Dropbox { client, .. } => Some(client),
            Destination::Folder { .. } => None,
        }
    }

    pub async fn begin(&self, remote: &str) -> Result<Session, TransferError> {
        match self {
            Destination::Folder { folder, .. } => Ok(Session::Folder {
                temp: folder.begin(remote).await?,
            }),
            Destination::Dropbox { client, .. } => Ok(Session::Dropbox {
                session_id: client.upload_start().await?,
            }),
        }
    }

    /// Prepares to continue a checkpointed session at `offset`.
    pub async fn resume(&self, session: &Session, offset: u64) -> Result<(), TransferError> {
        match (self, session) {
            (Destination::Folder { folder, .. }, Session::Folder { temp }) => {
                folder.resume(temp, offset).await
            }
            // Dropbox says where it is when we append (incorrect_offset).
            (Destination::Dropbox { .. }, Session::Dropbox { .. }) => Ok(()),
            _ => Err(TransferError::SessionGone(
                "the checkpoint belongs to another kind of destination".into(),
            )),
        }
    }

    pub async fn append(
        &self,
        session: &Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        match (self, session) {
            (Destination::Folder { folder, .. }, Session::Folder { temp }) => {
                folder.append(temp, offset, &chunk).await
            }
            (Destination::Dropbox { client, .. }, Session::Dropbox { session_id }) => {
                client.upload_append(session_id, offset, chunk).await
            }
            _ => Err(TransferError::SessionGone(
                "session of another destination kind".into(),
            )),
        }
    }

    /// Sends the last chunk and commits the file. `expected_hash` is the content hash of
    /// everything sent; a destination that can check it before the file becomes visible does.
    pub async fn finish(
        &self,
        session: &Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        expected_hash: &str,
    ) -> Result<RemoteFile, TransferError> {
        match (self, session) {
            (Destination::Folder { folder, .. }, Session::Folder { temp }) => {
                folder
                    .finish(temp, offset, &chunk, remote, expected_hash)
                    .await
            }
            (Destination::Dropbox { client, .. }, Session::Dropbox { session_id }) => {
                let meta = client
                    .upload_finish(session_id, offset, chunk, remote)
                    .await?;
                Ok(RemoteFile {
                    path: meta.path_display,
                    size: meta.size,
                    content_hash: meta.content_hash,
                })
            }
            _ => Err(TransferError::SessionGone(
                "session of another destination kind".into(),
            )),
        }
    }

    /// The committed file at `remote` with its size, if it exists, and its content hash where
    /// that is cheap (Dropbox keeps one) or its size is `hash_if_size` (a folder reads the file
    /// back for it).
    pub async fn stat(
        &self,
        remote: &str,
        hash_if_size: Option<u64>,
    ) -> Result<Option<RemoteFile>, TransferError> {
        match self {
            Destination::Folder { folder, .. } => folder.stat(remote, hash_if_size).await,
            Destination::Dropbox { client, .. } => {
                Ok(client.metadata(remote).await?.map(|m| RemoteFile {
                    path: m.path_display,
                    size: m.size,
                    content_hash: m.content_hash,
                }))
            }
        }
    }

    /// Throws away an unfinished upload (a cancelled or discarded job's). Dropbox forgets
    /// sessions by itself after a week and offers no call to close one early.
    pub async fn abandon(&self, session: &Session) -> Result<(), TransferError> {
        match session {
            Session::Folder { temp } => local::remove(temp.clone()).await,
            Session::Dropbox { .. } => Ok(()),
        }
    }

    /// Unfinished uploads this destination holds on its own (the folder's hidden partial
    /// files); Dropbox keeps its sessions out of sight and drops them by itself.
    pub async fn partials(&self) -> Result<Vec<Session>, TransferError> {
        match self {
            Destination::Folder { folder, path, .. } => Ok(folder
                .partials(path)
                .await?
                .into_iter()
                .map(|temp| Session::Folder { temp })
                .collect()),
            Destination::Dropbox { .. } => Ok(Vec::new()),
        }
    }

    /// Paths of the files directly in the backup folder.
    pub async fn list(&self) -> Result<Vec<String>, TransferError> {
        match self {
            Destination::Folder { folder, path, .. } => folder.list(path).await,
            Destination::Dropbox { client, path, .. } => Ok(client
                .list_folder(path)
                .await?
                .into_iter()
                .filter_map(|e| match e {
                    dropbox::Entry::File(f) => Some(f.path_display),
                    dropbox::Entry::Folder { .. } => None,
                })
                .collect()),
        }
    }

    pub async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        match self {
            Destination::Folder { folder, .. } => folder.delete(remote).await,
            Destination::Dropbox { client, .. } => client.delete(remote).await,
        }
    }
}

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
}
