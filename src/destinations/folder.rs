//! A local folder (a mounted NAS, a USB disk): the backup is written to a hidden temporary name,
//! fsynced after every chunk (that is what "acknowledged" means here), checked on disk (length
//! and SHA-256 of the file read back, against what was read from the source) and only then
//! renamed into place. The read-back runs beside the upload where the file system can prove
//! nobody else wrote the file meanwhile ([`readback`]); otherwise the whole file is read back
//! after the last chunk. A resumed upload cuts the temporary file back to the checkpointed
//! offset.
//!
//! Writes go through `std::fs` on a blocking thread, not `tokio::fs::File`: tokio's file
//! buffers a write and reports its error on the *next* call, so an ENOSPC from the last write
//! before `sync_data` was silently dropped, and a truncated file was renamed into place as a
//! good backup.

mod readback;

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    ChunkRules, CopyError, Destination, DestinationInfo, Partial, RemoteFile, Sent, Session,
};
use crate::transfer::{ByteStream, Sha256State, TransferError, io_error};

/// Whether chunks are read back as they are written ([`readback`]) instead of the whole file
/// at `finish`. Off: the proof that nobody wrote a chunk after it was read back rests on the
/// file's ctime/mtime, which Linux updates from a coarse clock (a tick of milliseconds), so a
/// write inside the same tick as ours went unseen. `conformance::folder::checksum_mismatch`
/// caught it (a tampered partial recorded as backed up, about 1 run in 5). Until the proof
/// holds, `finish` reads the whole file back.
const EARLY_READ_BACK: bool = false;

/// Files whose name ends so are offsite's unfinished uploads.
pub const PARTIAL_SUFFIX: &str = ".offsite-partial";

use readback::{ReadBack, Stamp, Verified};

#[derive(Clone)]
pub struct LocalFolder {
    pub root: PathBuf,
    /// The read-backs of the partial files being written, by temporary path.
    reading: Arc<Mutex<HashMap<PathBuf, Arc<ReadBack>>>>,
}

impl std::fmt::Debug for LocalFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFolder")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> TransferError {
    io_error(format!("{what} {}", path.display()), &e)
}

/// What a chunk is written to: a file, or in tests a writer that fails on the n-th call.
pub(crate) trait SyncWrite: Write {
    fn sync_data(&mut self) -> std::io::Result<()>;
}

impl SyncWrite for File {
    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

/// Writes all of `chunk` and makes it durable; a short write, ENOSPC or EIO from write, flush or
/// sync is an error, never a silent loss. `written` runs between the write and the sync (the
/// folder takes the file's timestamps there, as close to its own write as it can).
pub(crate) fn write_durably<W: SyncWrite, T>(
    out: &mut W,
    chunk: &[u8],
    written: impl FnOnce(&mut W) -> std::io::Result<T>,
) -> std::io::Result<T> {
    out.write_all(chunk)?;
    out.flush()?;
    let t = written(out)?;
    out.sync_data()?;
    Ok(t)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransferError::Temporary(format!("file task failed: {e}")))?
}

/// Renames a checked temporary file to its name and syncs the folder, so the rename itself
/// survives a power cut.
fn rename_into_place(temp: &Path, target: &Path) -> Result<(), TransferError> {
    std::fs::rename(temp, target).map_err(|e| io_err("cannot rename into", target, e))?;
    if let Some(dir) = target.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot sync folder", dir, e))?;
    }
    Ok(())
}

/// Length and SHA-256 of what is on disk at `path`, read back from the file.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256State::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.hex()))
}

fn append_blocking(
    temp: &Path,
    offset: u64,
    chunk: &[u8],
    reading: Option<&ReadBack>,
) -> Result<(), TransferError> {
    // Readable too: the read-back compares what it wrote through the same descriptor.
    let mut file = match OpenOptions::new().read(true).write(true).open(temp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TransferError::SessionGone(format!(
                "{} vanished",
                temp.display()
            )));
        }
        Err(e) => return Err(io_err("cannot open", temp, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_err("cannot stat", temp, e))?;
    if let Some(r) = reading {
        r.check(Stamp::of(&meta));
    }
    let len = meta.len();
    if len != offset {
        // Resume counted every byte in the file: anything else means another writer. Never
        // trust those bytes; start over.
        return Err(TransferError::SessionGone(format!(
            "{} has {len} bytes where {offset} were acknowledged",
            temp.display()
        )));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_err("cannot seek in", temp, e))?;
    match write_durably(&mut file, chunk, |f| f.metadata()) {
        Ok(meta) => {
            if let Some(r) = reading {
                r.written(&file, offset, chunk, Stamp::of(&meta));
            }
            Ok(())
        }
        Err(e) => {
            // Give back what the failed chunk took (a full disk needs it) and leave the file
            // at the acknowledged offset, so the next attempt resumes instead of starting over.
            let _ = file.set_len(offset).and_then(|()| file.sync_data());
            Err(io_err("cannot write", temp, e))
        }
    }
}

/// The folder's upload session: the hidden file being written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "folder")]
struct FolderSession {
    temp: PathBuf,
}

/// `type = "folder"` in `[destinations.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// The directory backups go to (a mounted NAS, a USB disk).
    pub path: PathBuf,
}

impl FolderConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path", "name the folder backups go to".into()));
        }
        Ok(())
    }
}

impl LocalFolder {
    pub fn new(root: PathBuf) -> Self {
        LocalFolder {
            root,
            reading: Arc::default(),
        }
    }

    fn reading(&self, temp: &Path) -> Option<Arc<ReadBack>> {
        let map = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        map.get(temp).cloned()
    }

    /// Starts (or restarts) the read-back of `temp`, `ready` bytes of which are written, when
    /// the file system can prove what it reads stays so; without one, `finish` reads the whole
    /// file.
    fn start_reading(&self, temp: &Path, file: &File, ready: u64) -> std::io::Result<()> {
        let mut map = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(temp);
        if !EARLY_READ_BACK || !readback::fine_grained_times(file)? {
            return Ok(());
        }
        let stamp = Stamp::of(&file.metadata()?);
        map.insert(
            temp.to_path_buf(),
            Arc::new(ReadBack::start(temp.to_path_buf(), ready, stamp)),
        );
        Ok(())
    }

    fn stop_reading(&self, temp: &Path) {
        let mut map = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(temp);
    }

    pub(crate) fn target(&self, remote: &str) -> PathBuf {
        self.root.join(remote.trim_start_matches('/'))
    }

    /// The hidden file a backup is written to until it is complete.
    pub fn temp_path(&self, remote: &str) -> PathBuf {
        let target = self.target(remote);
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup");
        target.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"))
    }

    async fn entries(
        &self,
        folder: &str,
    ) -> Result<Vec<(String, std::fs::Metadata)>, TransferError> {
        let dir = self.target(folder);
        blocking(move || {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(io_err("cannot list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
                if let Ok(meta) = entry.metadata()
                    && meta.is_file()
                {
                    out.push((entry.file_name().to_string_lossy().into_owned(), meta));
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Destination for LocalFolder {
    fn info(&self) -> DestinationInfo {
        DestinationInfo {
            kind: "folder",
            location: self.root.display().to_string(),
        }
    }

    fn chunk_rules(&self) -> ChunkRules {
        ChunkRules::ANY
    }

    fn root(&self) -> &str {
        ""
    }

    async fn prepare(&self) -> Result<(), TransferError> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| {
                TransferError::Permanent(format!("cannot create folder {}: {e}", root.display()))
            })
        })
        .await
    }

    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        Ok(self
            .entries("")
            .await?
            .into_iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .map(|(name, meta)| RemoteFile {
                path: format!("/{name}"),
                size: meta.len(),
                content_hash: None,
            })
            .collect())
    }

    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        let path = self.target(remote);
        let remote = remote.to_string();
        blocking(move || match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(RemoteFile {
                path: remote,
                size: m.len(),
                content_hash: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot stat", &path, e)),
        })
        .await
    }

    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        let path = self.target(remote);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TransferError::NotFound(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        use tokio::io::AsyncSeekExt;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io_err("cannot seek in", &path, e))?;
        Ok(Box::pin(tokio::io::BufReader::with_capacity(
            1024 * 1024,
            file,
        )))
    }

    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        remove(self.target(remote)).await
    }

    /// A file copy to the hidden temporary name, synced, read back and compared with `sent`,
    /// then renamed into place: the same proof as an upload's.
    async fn copy_within(
        &self,
        from: &str,
        to: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        let source = self.target(from);
        let target = self.target(to);
        let temp = self.temp_path(to);
        let (size, sha256, remote) = (sent.size, sent.sha256.to_string(), to.to_string());
        Ok(blocking(move || {
            if let Some(dir) = temp.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create folder", dir, e))?;
            }
            std::fs::copy(&source, &temp).map_err(|e| io_err("cannot copy", &source, e))?;
            File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err("cannot sync", &temp, e))?;
            let (len, hash) = hash_file(&temp).map_err(|e| io_err("cannot read back", &temp, e))?;
            if len != size || hash != sha256 {
                let _ = std::fs::remove_file(&temp);
                return Err(TransferError::Permanent(format!(
                    "the copy of {} read back as {len} bytes with SHA-256 {hash}, expected \
                     {size} bytes hashing to {sha256}; removed it",
                    source.display()
                )));
            }
            rename_into_place(&temp, &target)?;
            Ok(RemoteFile {
                path: remote,
                size: len,
                content_hash: Some(hash),
            })
        })
        .await?)
    }

    async fn begin(&self, remote: &str, _size: u64, _chunk: u64) -> Result<Session, TransferError> {
        let temp = self.temp_path(remote);
        let path = temp.clone();
        let this = self.clone();
        blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create folder", dir, e))?;
            }
            let file = File::create(&path).map_err(|e| io_err("cannot create", &path, e))?;
            this.start_reading(&path, &file, 0)
                .map_err(|e| io_err("cannot stat", &path, e))
        })
        .await?;
        Ok(Session::new(&FolderSession { temp }))
    }

    /// The temporary file's length: every byte in it is one we wrote, in order, from the
    /// source (the copy loop saves a chunk's checkpoint while the next is written, so a crash
    /// can leave up to two chunks past `ours`). The copy loop reads the source over them
    /// instead of writing them again, and the read-back, started again from byte 0, proves
    /// them with the rest before the file is renamed into place (a torn tail after a power
    /// loss fails that check and the upload starts over). A file shorter than `ours` is gone
    /// for our purpose.
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        let FolderSession { temp } = session.get()?;
        let this = self.clone();
        blocking(move || {
            let file = match OpenOptions::new().write(true).open(&temp) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(TransferError::SessionGone(format!(
                        "{} vanished",
                        temp.display()
                    )));
                }
                Err(e) => return Err(io_err("cannot open", &temp, e)),
            };
            let len = file
                .metadata()
                .map_err(|e| io_err("cannot stat", &temp, e))?
                .len();
            if len < ours {
                return Err(TransferError::SessionGone(format!(
                    "{} has {len} bytes, fewer than the {ours} acknowledged",
                    temp.display()
                )));
            }
            // What the last process read back is gone with it: the file is read again,
            // beside the rest of the upload.
            this.start_reading(&temp, &file, len)
                .map_err(|e| io_err("cannot stat", &temp, e))?;
            Ok(len)
        })
        .await
    }

    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        let FolderSession { temp } = session.get()?;
        let reading = self.reading(&temp);
        let path = temp.clone();
        let appended =
            blocking(move || append_blocking(&path, offset, &chunk, reading.as_deref())).await;
        if matches!(appended, Err(TransferError::SessionGone(_))) {
            self.stop_reading(&temp);
        }
        appended
    }

    /// Appends the last chunk, reads the file back (the rest of it, where the read-back ran
    /// beside the upload; all of it otherwise) and compares its length and SHA-256 with what
    /// was read from the source; only a file that matches is renamed into place. A mismatch
    /// removes the file and starts the upload over (`SessionGone`).
    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError> {
        let expected_len = offset + chunk.len() as u64;
        let FolderSession { temp } = session.get()?;
        let target = self.target(remote);
        let expected_hash = sent.sha256.to_string();
        let sent_size = sent.size;
        let remote = remote.to_string();
        let reading = self.reading(&temp);
        let this = self.clone();
        blocking(move || {
            let read_back = append_blocking(&temp, offset, &chunk, reading.as_deref()).map(|()| {
                reading
                    .and_then(|r| r.result(&temp, expected_len))
                    .map(|hash| (expected_len, hash))
            });
            this.stop_reading(&temp);
            let (len, hash) = match read_back? {
                // Every byte compared equal to the source's, which hash to `expected_hash`.
                Some((len, Verified::AsWritten)) => (len, expected_hash.clone()),
                Some((len, Verified::Sha256(hash))) => (len, hash),
                None => hash_file(&temp).map_err(|e| io_err("cannot read back", &temp, e))?,
            };
            if len != expected_len || len != sent_size || hash != expected_hash {
                let _ = std::fs::remove_file(&temp);
                return Err(TransferError::SessionGone(format!(
                    "{} read back as {len} bytes with SHA-256 {hash}, but {sent_size} bytes \
                     hashing to {expected_hash} were written; removed it",
                    temp.display()
                )));
            }
            rename_into_place(&temp, &target)?;
            Ok(RemoteFile {
                path: remote,
                size: len,
                content_hash: Some(hash),
            })
        })
        .await
    }

    async fn abandon(&self, session: &Session) -> Result<(), TransferError> {
        let FolderSession { temp } = session.get()?;
        self.stop_reading(&temp);
        remove(temp).await
    }

    /// The hidden partial files directly in the folder.
    async fn partials(&self) -> Result<Vec<Partial>, TransferError> {
        Ok(self
            .entries("")
            .await?
            .into_iter()
            .filter(|(name, _)| name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX))
            .map(|(name, meta)| {
                let temp = self.root.join(&name);
                Partial {
                    label: temp.display().to_string(),
                    session: Session::new(&FolderSession { temp }),
                    idle: Some(
                        meta.modified()
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .unwrap_or_default(),
                    ),
                }
            })
            .collect())
    }
}

/// Removes a file; already missing is success.
pub async fn remove(path: PathBuf) -> Result<(), TransferError> {
    blocking(move || match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot delete", &path, e)),
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    enum Fault {
        Error(ErrorKind),
        /// Half the buffer is written, then the device takes nothing more.
        ShortWrite,
    }

    /// Fails its `fail_at`-th call (write, flush and sync counted together).
    struct FailingWriter {
        calls: usize,
        fail_at: usize,
        fault: Fault,
        full: bool,
        written: Vec<u8>,
    }

    impl FailingWriter {
        fn new(fail_at: usize, fault: Fault) -> Self {
            FailingWriter {
                calls: 0,
                fail_at,
                fault,
                full: false,
                written: Vec::new(),
            }
        }
        /// The error this call fails with, if it is the one that fails.
        fn fails_now(&mut self) -> Option<Error> {
            self.calls += 1;
            match self.fault {
                Fault::Error(kind) if self.calls == self.fail_at => Some(Error::from(kind)),
                _ => None,
            }
        }
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.full {
                return Ok(0);
            }
            if let Some(e) = self.fails_now() {
                return Err(e);
            }
            let n = if self.calls == self.fail_at {
                self.full = true;
                buf.len() / 2
            } else {
                buf.len()
            };
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.fails_now().map_or(Ok(()), Err)
        }
    }

    impl SyncWrite for FailingWriter {
        fn sync_data(&mut self) -> std::io::Result<()> {
            self.fails_now().map_or(Ok(()), Err)
        }
    }

    #[test]
    fn every_write_error_surfaces() {
        let chunk = vec![7u8; 1000];
        // Call 1 is the write, 2 the flush, 3 the sync.
        for (fail_at, kind) in [
            (1, ErrorKind::StorageFull),
            (1, ErrorKind::Other),
            (2, ErrorKind::StorageFull),
            (3, ErrorKind::StorageFull),
            (3, ErrorKind::Other),
        ] {
            let mut w = FailingWriter::new(fail_at, Fault::Error(kind));
            let err =
                write_durably(&mut w, &chunk, |_| Ok(())).expect_err("the failure must surface");
            assert_eq!(err.kind(), kind, "call {fail_at}");
        }
        let mut short = FailingWriter::new(1, Fault::ShortWrite);
        let err =
            write_durably(&mut short, &chunk, |_| Ok(())).expect_err("a short write must surface");
        assert_eq!(err.kind(), ErrorKind::WriteZero);
        assert_eq!(short.written.len(), 500);
        let mut fine = FailingWriter::new(usize::MAX, Fault::ShortWrite);
        write_durably(&mut fine, &chunk, |_| Ok(())).unwrap();
        assert_eq!(fine.written, chunk);
    }

    #[test]
    fn no_space_is_said_plainly_and_retried() {
        let e = io_err(
            "cannot write",
            Path::new("/backups/x"),
            Error::from(ErrorKind::StorageFull),
        );
        assert!(matches!(e, TransferError::Temporary(_)), "{e:?}");
        assert!(e.to_string().contains("no space left"), "{e}");
        let e = io_err(
            "cannot create",
            Path::new("/backups/x"),
            Error::from(ErrorKind::PermissionDenied),
        );
        assert!(matches!(e, TransferError::Temporary(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_file_that_reads_back_wrong_is_not_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let folder = LocalFolder::new(dir.path().into());
        let mut session = folder.begin("/x.tar", 8192, 4096).await.unwrap();
        let FolderSession { temp } = session.get().unwrap();
        let chunk = Bytes::from(vec![1u8; 4096]);
        let good = crate::transfer::sha256_hex(&[1u8; 8192]);
        let sent = Sent {
            size: 8192,
            sha256: &good,
        };
        folder.append(&mut session, 0, chunk.clone()).await.unwrap();
        // Something else changes the acknowledged bytes behind our back.
        std::fs::write(&temp, vec![2u8; 4096]).unwrap();
        let err = folder
            .finish(&mut session, 4096, chunk.clone(), "/x.tar", &sent)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::SessionGone(_)), "{err:?}");
        assert!(!folder.target("/x.tar").exists());
        assert!(!temp.exists());
        // The same bytes as sent pass.
        let mut session = folder.begin("/x.tar", 8192, 4096).await.unwrap();
        folder.append(&mut session, 0, chunk.clone()).await.unwrap();
        let stored = folder
            .finish(&mut session, 4096, chunk, "/x.tar", &sent)
            .await
            .unwrap();
        assert_eq!(stored.size, 8192);
        assert_eq!(stored.content_hash.as_deref(), Some(good.as_str()));
        let found = folder.stat("/x.tar").await.unwrap().unwrap();
        assert_eq!((found.path, found.size), (stored.path, 8192));
        assert_eq!(folder.list().await.unwrap().len(), 1);
        assert_eq!(folder.stat("/y.tar").await.unwrap(), None);
        let same = |bytes: Vec<u8>| {
            let stream: ByteStream = Box::pin(std::io::Cursor::new(bytes));
            stream
        };
        let found = folder.stat("/x.tar").await.unwrap().unwrap();
        assert!(
            folder
                .same_content(&found, same(vec![1u8; 8192]), 8192)
                .await
                .unwrap()
        );
        assert!(
            !folder
                .same_content(&found, same(vec![3u8; 8192]), 8192)
                .await
                .unwrap()
        );
    }
}
