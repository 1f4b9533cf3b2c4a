//! A local folder (a mounted NAS, a USB disk): the backup is written to a hidden temporary name,
//! fsynced after every chunk (that is what "acknowledged" means here), and renamed into place
//! when complete. A resumed upload cuts the temporary file back to the checkpointed offset.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::{fs, io::AsyncWriteExt};

use super::RemoteFile;
use crate::transfer::TransferError;

#[derive(Debug, Clone)]
pub struct LocalFolder {
    pub root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> TransferError {
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            TransferError::Permanent(msg)
        }
        _ => TransferError::Temporary(msg),
    }
}

impl LocalFolder {
    pub fn new(root: PathBuf) -> Self {
        LocalFolder { root }
    }

    fn target(&self, remote: &str) -> PathBuf {
        self.root.join(remote.trim_start_matches('/'))
    }

    /// The hidden file a backup is written to until it is complete.
    pub fn temp_path(&self, remote: &str) -> PathBuf {
        let target = self.target(remote);
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup");
        target.with_file_name(format!(".{name}.offsite-partial"))
    }

    pub async fn begin(&self, remote: &str) -> Result<PathBuf, TransferError> {
        let temp = self.temp_path(remote);
        if let Some(dir) = temp.parent() {
            fs::create_dir_all(dir)
                .await
                .map_err(|e| io_err("cannot create folder", dir, e))?;
        }
        fs::File::create(&temp)
            .await
            .map_err(|e| io_err("cannot create", &temp, e))?;
        Ok(temp)
    }

    /// Cuts the temporary file back to `offset`; a file shorter than that is gone for our purpose.
    pub async fn resume(&self, temp: &Path, offset: u64) -> Result<(), TransferError> {
        let file = match fs::OpenOptions::new().write(true).open(temp).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TransferError::SessionGone(format!(
                    "{} vanished",
                    temp.display()
                )));
            }
            Err(e) => return Err(io_err("cannot open", temp, e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", temp, e))?
            .len();
        if len < offset {
            return Err(TransferError::SessionGone(format!(
                "{} has {len} bytes, fewer than the {offset} acknowledged",
                temp.display()
            )));
        }
        file.set_len(offset)
            .await
            .map_err(|e| io_err("cannot truncate", temp, e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("cannot sync", temp, e))?;
        Ok(())
    }

    pub async fn append(
        &self,
        temp: &Path,
        offset: u64,
        chunk: &Bytes,
    ) -> Result<(), TransferError> {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(temp)
            .await
            .map_err(|e| io_err("cannot open", temp, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", temp, e))?
            .len();
        if len != offset {
            // Resume already cut the file back to our offset: anything else means another
            // writer or a torn write. Never trust those bytes; start over.
            return Err(TransferError::SessionGone(format!(
                "{} has {len} bytes where {offset} were acknowledged",
                temp.display()
            )));
        }
        file.write_all(chunk)
            .await
            .map_err(|e| io_err("cannot write", temp, e))?;
        file.sync_data()
            .await
            .map_err(|e| io_err("cannot sync", temp, e))?;
        Ok(())
    }

    pub async fn finish(
        &self,
        temp: &Path,
        offset: u64,
        chunk: &Bytes,
        remote: &str,
    ) -> Result<RemoteFile, TransferError> {
        self.append(temp, offset, chunk).await?;
        let target = self.target(remote);
        fs::rename(temp, &target)
            .await
            .map_err(|e| io_err("cannot rename into", &target, e))?;
        if let Some(dir) = target.parent()
            && let Ok(d) = fs::File::open(dir).await
        {
            // Make the rename itself durable.
            let _ = d.sync_all().await;
        }
        Ok(RemoteFile {
            path: remote.to_string(),
            size: offset + chunk.len() as u64,
            content_hash: None,
        })
    }

    /// Files directly in the folder (not the hidden partial ones).
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, TransferError> {
        let dir = self.target(folder);
        let mut out = Vec::new();
        let mut entries = match fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_err("cannot list", &dir, e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.file_type().await.is_ok_and(|t| t.is_file()) {
                out.push(format!("{}/{name}", folder.trim_end_matches('/')));
            }
        }
        Ok(out)
    }

    pub async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        let path = self.target(remote);
        match fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete", &path, e)),
        }
    }
}
