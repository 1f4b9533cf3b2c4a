//! A producer that cannot seek (pg_dump's stdout, a device's HTTP export) is written to a file
//! first, so a transfer that resumes after a crash reads the same bytes again from any offset.
//! The spool is complete only once it is fully written and synced: it is written under a
//! hidden partial name and renamed, so a crash mid-way never leaves something that looks whole.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteSource, ByteStream, TransferError, io_error};

pub struct Spool {
    path: PathBuf,
}

impl Spool {
    pub fn at(path: impl Into<PathBuf>) -> Spool {
        Spool { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn partial(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.partial"))
    }

    /// Whether an earlier run finished writing it.
    pub async fn is_complete(&self) -> bool {
        tokio::fs::metadata(&self.path)
            .await
            .is_ok_and(|m| m.is_file())
    }

    /// Writes everything `producer` gives, syncs it, and only then makes it the spool. Returns
    /// its length. A producer that fails leaves no spool.
    pub async fn fill(
        &self,
        mut producer: impl AsyncRead + Unpin + Send,
    ) -> Result<u64, TransferError> {
        let partial = self.partial();
        if let Some(dir) = partial.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error(format!("cannot create {}", dir.display()), &e))?;
        }
        let result = async {
            let mut out = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| io_error(format!("cannot create {}", partial.display()), &e))?;
            let mut buf = vec![0u8; 1024 * 1024];
            let mut len = 0u64;
            loop {
                let n = producer
                    .read(&mut buf)
                    .await
                    .map_err(|e| TransferError::Temporary(format!("the producer failed: {e}")))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .await
                    .map_err(|e| io_error(format!("cannot write {}", partial.display()), &e))?;
                len += n as u64;
            }
            // flush + sync_all surface a deferred write error (a full disk) here, not never.
            out.flush()
                .await
                .and(out.sync_all().await)
                .map_err(|e| io_error(format!("cannot write {}", partial.display()), &e))?;
            tokio::fs::rename(&partial, &self.path)
                .await
                .map_err(|e| io_error(format!("cannot rename {}", partial.display()), &e))?;
            Ok(len)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Removes the spool (after the transfer recorded it) and any partial one.
    pub async fn remove(&self) {
        let _ = tokio::fs::remove_file(&self.path).await;
        let _ = tokio::fs::remove_file(self.partial()).await;
    }
}

#[async_trait::async_trait]
impl ByteSource for Spool {
    async fn open_at(&self, offset: u64) -> Result<(ByteStream, u64), TransferError> {
        let mut file = tokio::fs::File::open(&self.path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TransferError::NotFound(format!("the spool {} is gone", self.path.display()))
            } else {
                io_error(format!("cannot open {}", self.path.display()), &e)
            }
        })?;
        let total = file
            .metadata()
            .await
            .map_err(|e| io_error(format!("cannot stat {}", self.path.display()), &e))?
            .len();
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| io_error(format!("cannot seek in {}", self.path.display()), &e))?;
        Ok((Box::pin(tokio::io::BufReader::new(file)), total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer that gives `data` through a pipe: it cannot seek.
    fn producer(data: Vec<u8>) -> tokio::io::DuplexStream {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move { tx.write_all(&data).await.unwrap() });
        rx
    }

    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("pg_dump exited with 1")))
        }
    }

    #[tokio::test]
    async fn a_spooled_stream_reopens_at_any_offset_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("dump.sql"));
        assert!(!spool.is_complete().await);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(spool.fill(producer(data.clone())).await.unwrap(), 300_000);
        assert!(spool.is_complete().await);
        let (mut s, total) = spool.open_at(123_457).await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!((total, &rest[..]), (300_000, &data[123_457..]));

        let failed = Spool::at(dir.path().join("other.sql"));
        let err = failed.fill(Failing).await.unwrap_err();
        assert!(err.to_string().contains("pg_dump exited with 1"), "{err}");
        assert!(!failed.is_complete().await);
        assert!(!failed.partial().exists());
        spool.remove().await;
        assert!(!spool.is_complete().await);
    }
}
