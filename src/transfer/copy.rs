//! The one resumable copy loop: a source's bytes into a destination's upload session, in the
//! destination's chunks, with the checkpoint saved after every acknowledged chunk. Every job
//! kind that moves bytes calls [`copy`]; what differs between destinations lives behind
//! [`Destination`], what differs between producers behind [`ByteSource`].
//!
//! - One chunk in flight while the next is read, the sent one hashed and the previous one's
//!   checkpoint committed: neither the read nor the checkpoint's fsync waits for the send.
//! - A destination further along than the checkpoint (it took a chunk whose answer never came,
//!   or the process died while that chunk's checkpoint was being saved) is caught up to, not
//!   restarted; a session that is gone starts over, once per attempt,
//!   after checking whether the destination already has the file.
//! - The SHA-256 of every byte read from the source is carried in the checkpoint, so the
//!   transfer ends with the hash of the whole file even across restarts, and the destination is
//!   asked to check what it stored against it.

use std::{collections::VecDeque, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::{
    ByteSource, ByteStream, Md5State, Sha256State, TransferError, checkpoint::CopyCheckpoint,
};
use crate::{
    destinations::{Destination, RemoteFile, Sent, Session},
    queue::{JobContext, JobError, Progress},
};

/// How long a job waits for a destination to be authorized again before looking once more;
/// authorizing wakes it at once.
pub const AUTH_WAIT: Duration = Duration::from_secs(3600);

impl From<TransferError> for JobError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Temporary(m) => JobError::Retryable(m),
            TransferError::Permanent(m) => JobError::Permanent(m),
            TransferError::RetryAfter { wait, message } => JobError::Snooze {
                wait,
                reason: message,
            },
            TransferError::Unauthorized(m) => JobError::Snooze {
                wait: AUTH_WAIT,
                reason: m,
            },
            TransferError::NotFound(m) => JobError::Cancelled(m),
            e @ (TransferError::SessionGone(_) | TransferError::IncorrectOffset(_)) => {
                JobError::Retryable(e.to_string())
            }
        }
    }
}

/// How often one attempt may start an upload over after losing its session. Past that the
/// attempt fails and backs off: a destination that keeps losing what it was given must not be
/// fed the same bytes in a tight loop.
const RESTARTS_PER_ATTEMPT: u32 = 1;

/// One transfer to make.
pub struct Copy<'a> {
    pub source: &'a dyn ByteSource,
    pub dest: &'a dyn Destination,
    /// Where the file goes, in the destination's path syntax.
    pub remote: String,
    /// The chunk size asked for; fitted to the destination's rules and the file's size.
    pub chunk: u64,
    /// Shown with the progress: what goes where.
    pub label: String,
    /// The MD5 the source says its bytes have (hex), checked before the destination commits
    /// the file.
    pub md5: Option<String>,
}

/// A transfer that ended with the file committed and checked.
#[derive(Debug, Clone)]
pub struct Copied {
    pub stored: RemoteFile,
    pub size: u64,
    /// Hex SHA-256 of the bytes read from the source.
    pub sha256: String,
}

/// Runs the transfer, resuming from the job's checkpoint.
pub async fn copy(ctx: &JobContext, job: Copy<'_>) -> Result<Copied, JobError> {
    let dest = job.dest;
    let mut cp: CopyCheckpoint = ctx
        .checkpoint()
        .filter(|c: &CopyCheckpoint| c.usable_for(&job.remote))
        // A checkpoint without the MD5 the source is to be checked against cannot finish.
        .filter(|c| c.session.is_none() || c.md5.is_some() == job.md5.is_some())
        .unwrap_or_else(|| CopyCheckpoint::fresh(&job.remote));
    let mut restarts = 0;

    'session: loop {
        // A later attempt of an upload that had begun: if the last one died after the
        // destination committed the file but before the answer came, the file is there.
        if cp.session.is_some()
            && ctx.attempt() > 1
            && restarts == 0
            && let Some(done) = committed(ctx, &job).await?
        {
            return Ok(done);
        }
        let (mut session, mut reader, total) = match cp.session.clone() {
            Some(mut session) => {
                let at = match dest.position(&mut session, cp.dst_offset).await {
                    Ok(at) => at,
                    Err(TransferError::SessionGone(why)) => {
                        warn!(%why, "upload session is gone");
                        cp = start_over(ctx, dest, &mut restarts, &job.remote, Some(&session))
                            .await?;
                        continue 'session;
                    }
                    Err(e) => return Err(at_destination(e).into()),
                };
                let (stream, total) = job.source.open_at(cp.src_offset).await?;
                if total != cp.total {
                    // Another file under the same name: its bytes must not be joined to the
                    // old one's.
                    warn!(
                        was = cp.total,
                        now = total,
                        "the source changed since the upload began"
                    );
                    cp = start_over(ctx, dest, &mut restarts, &job.remote, Some(&session)).await?;
                    continue 'session;
                }
                info!(
                    offset = cp.dst_offset,
                    "resuming upload from its checkpoint"
                );
                let mut reader = ChunkReader::new(stream);
                if at > cp.dst_offset
                    && (at > total
                        || !catch_up(ctx, dest, &mut reader, &mut session, &mut cp, at).await?)
                {
                    warn!(
                        theirs = at,
                        total, "the destination holds bytes that are not the source's"
                    );
                    cp = start_over(ctx, dest, &mut restarts, &job.remote, Some(&session)).await?;
                    continue 'session;
                }
                (session, reader, total)
            }
            None => {
                if let Some(done) = committed(ctx, &job).await? {
                    return Ok(done);
                }
                // The source first: a backup that vanished opens no destination session.
                let (stream, total) = job.source.open_at(0).await?;
                let chunk = dest.chunk_rules().chunk_for(job.chunk, total)?;
                let session = dest
                    .begin(&job.remote, total, chunk)
                    .await
                    .map_err(at_destination)?;
                cp = CopyCheckpoint {
                    chunk,
                    total,
                    session: Some(session.clone()),
                    md5: job.md5.as_ref().map(|_| Md5State::new()),
                    ..CopyCheckpoint::fresh(&job.remote)
                };
                ctx.save_checkpoint(&cp).await?;
                (session, ChunkReader::new(stream), total)
            }
        };
        let chunk = cp.chunk as usize;
        let mut current = reader.read(chunk).await?;
        // The checkpoint of the chunk just acknowledged, committed while the next one is sent:
        // its fsync no longer waits for the destination's, nor the destination's for it. A
        // crash then leaves the destination further along than the checkpoint says (by the
        // chunk whose checkpoint was being saved, and what it took of the one in flight);
        // the resume asks it where it is and catches up, sending nothing twice but the
        // unfinished chunk.
        let mut saving: Option<CopyCheckpoint> = None;
        loop {
            let offset = cp.dst_offset;
            let end = offset + current.len() as u64;
            if end > total || (end < total && current.len() < chunk) {
                return Err(JobError::retryable(format!(
                    "the source changed size while reading: {end} of {total} bytes"
                )));
            }
            // Paced before it is sent: a stop during the wait loses nothing.
            tokio::select! {
                _ = dest.pace(current.len() as u64) => {}
                _ = ctx.stopping() => {
                    save(ctx, saving.take()).await?;
                    return Err(JobError::Interrupted);
                }
            }
            let before = (cp.sha256.clone(), cp.md5.clone());
            let hashing = {
                let (mut sha, bytes) = (before.clone(), current.clone());
                tokio::task::spawn_blocking(move || {
                    sha.0.update(&bytes);
                    if let Some(md5) = &mut sha.1 {
                        md5.update(&bytes);
                    }
                    sha
                })
            };
            // A slow chunk is progress too: the client watches the request itself.
            let keepalive = ctx.keep_alive();
            // The next chunk, read while this one is sent; a read error there counts only once
            // this chunk's acknowledgement is checkpointed.
            let (sent, next) = if end == total {
                let (sha, md5) = joined(hashing).await?;
                if let Some(expected) = &job.md5 {
                    let ours = md5.map(|m| m.hex());
                    if !ours
                        .as_deref()
                        .is_some_and(|o| o.eq_ignore_ascii_case(expected))
                    {
                        // The bytes the source gave are not the ones it vouches for: nothing
                        // is committed, and the next attempt reads them all again.
                        save(ctx, saving.take()).await?;
                        if let Err(e) = dest.abandon(&session).await {
                            warn!(error = %e, "could not remove what the upload left");
                        }
                        ctx.save_checkpoint(&CopyCheckpoint::fresh(&job.remote))
                            .await?;
                        return Err(JobError::retryable(format!(
                            "the source's bytes have MD5 {}, but it says they have {expected}; \
                             nothing was stored",
                            ours.as_deref().unwrap_or("(not computed)")
                        )));
                    }
                }
                let hex = sha.hex();
                let sent = Sent {
                    size: total,
                    sha256: &hex,
                };
                let (stored, saved) = tokio::join!(
                    dest.finish(&mut session, offset, current.clone(), &job.remote, &sent),
                    save(ctx, saving.take())
                );
                drop(keepalive);
                match stored {
                    // The file is committed and checked: a checkpoint that did not save no
                    // longer matters.
                    Ok(stored) => {
                        if let Err(e) = saved {
                            warn!(error = %e, "the last checkpoint was not saved");
                        }
                        return Ok(Copied {
                            stored,
                            size: total,
                            sha256: hex,
                        });
                    }
                    Err(e) => {
                        saved?;
                        (Err(e), Ok(Bytes::new()))
                    }
                }
            } else {
                let (sent, next, sha, saved) = tokio::join!(
                    dest.append(&mut session, offset, current.clone()),
                    reader.read(chunk),
                    joined(hashing),
                    save(ctx, saving.take())
                );
                drop(keepalive);
                saved?;
                match sent {
                    Ok(()) => {
                        (cp.sha256, cp.md5) = sha?;
                        (Ok(()), next)
                    }
                    Err(e) => (Err(e), next),
                }
            };
            match sent {
                Ok(()) => {
                    cp.dst_offset = end;
                    cp.src_offset = end;
                    cp.session = Some(session.clone());
                    saving = Some(cp.clone());
                    ctx.progress(Progress {
                        done: end,
                        total: Some(total),
                        unit: "bytes",
                        message: Some(job.label.clone()),
                    })
                    .await?;
                    reader.recycle(std::mem::replace(&mut current, next?));
                }
                // The destination got more than our checkpoint knows (it took a chunk we never
                // heard back about): count the bytes it has and go on from there.
                Err(TransferError::IncorrectOffset(at)) if at > offset && at <= total => {
                    warn!(
                        ours = offset,
                        theirs = at,
                        "destination is further along; continuing from its offset"
                    );
                    (cp.sha256, cp.md5) = before;
                    reader.unread(next?);
                    reader.unread(std::mem::take(&mut current));
                    if !catch_up(ctx, dest, &mut reader, &mut session, &mut cp, at).await? {
                        cp = start_over(ctx, dest, &mut restarts, &job.remote, Some(&session))
                            .await?;
                        continue 'session;
                    }
                    current = reader.read(chunk).await?;
                }
                Err(e @ (TransferError::IncorrectOffset(_) | TransferError::SessionGone(_))) => {
                    warn!(error = %e, "upload session lost or inconsistent");
                    cp = start_over(ctx, dest, &mut restarts, &job.remote, Some(&session)).await?;
                    continue 'session;
                }
                Err(e) => return Err(at_destination(e).into()),
            }
        }
    }
}

/// A destination's "not found" (a 404 from a proxy on a part upload, say) is not a vanished
/// backup: it must not cancel the upload, as the source's "not found" does.
fn at_destination(e: TransferError) -> TransferError {
    match e {
        TransferError::NotFound(m) => {
            TransferError::Temporary(format!("the destination answered \"not found\": {m}"))
        }
        e => e,
    }
}

/// Reads, hashes and hands to the destination's integrity state the bytes up to `at`, which
/// the destination has already; checkpoints the new position. False when the destination
/// finds that what it holds is not the source's bytes: the upload has to start over.
async fn catch_up(
    ctx: &JobContext,
    dest: &dyn Destination,
    reader: &mut ChunkReader,
    session: &mut Session,
    cp: &mut CopyCheckpoint,
    at: u64,
) -> Result<bool, JobError> {
    while cp.dst_offset < at {
        let want = (at - cp.dst_offset).min(cp.chunk.max(1)) as usize;
        let piece = reader.read(want).await?;
        if piece.is_empty() {
            return Err(JobError::retryable(
                "the source ended before the destination's offset",
            ));
        }
        match dest.caught_up(session, cp.dst_offset, &piece) {
            Ok(()) => {}
            Err(TransferError::SessionGone(why)) => {
                warn!(%why, "the destination's bytes are not the source's");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        let ((sha, md5), piece) = {
            let (mut sha, mut md5) = (cp.sha256.clone(), cp.md5.clone());
            tokio::task::spawn_blocking(move || {
                sha.update(&piece);
                if let Some(m) = &mut md5 {
                    m.update(&piece);
                }
                ((sha, md5), piece)
            })
            .await
            .map_err(|e| JobError::retryable(format!("hashing failed: {e}")))?
        };
        (cp.sha256, cp.md5) = (sha, md5);
        cp.dst_offset += piece.len() as u64;
        cp.src_offset = cp.dst_offset;
        ctx.touch();
    }
    cp.session = Some(session.clone());
    ctx.save_checkpoint(cp).await?;
    Ok(true)
}

/// Begins the upload again from byte 0, at most `RESTARTS_PER_ATTEMPT` times an attempt,
/// throwing away what is left of the old session (an S3 multipart upload costs storage).
async fn start_over(
    ctx: &JobContext,
    dest: &dyn Destination,
    restarts: &mut u32,
    remote: &str,
    old: Option<&Session>,
) -> Result<CopyCheckpoint, JobError> {
    if let Some(old) = old
        && let Err(e) = dest.abandon(old).await
    {
        warn!(error = %e, "could not remove what the old upload left");
    }
    *restarts += 1;
    if *restarts > RESTARTS_PER_ATTEMPT {
        return Err(JobError::retryable(
            "the destination lost the upload session again; trying later",
        ));
    }
    warn!("starting the upload again from the beginning");
    let cp = CopyCheckpoint::fresh(remote);
    ctx.save_checkpoint(&cp).await?;
    Ok(cp)
}

/// A crash after the destination committed the file but before we heard back leaves it there
/// unrecorded: take it if it is the source's bytes exactly (the destination compares, reading
/// costs far less than sending), instead of sending it all again.
async fn committed(ctx: &JobContext, job: &Copy<'_>) -> Result<Option<Copied>, JobError> {
    let Some(found) = job.dest.stat(&job.remote).await.map_err(at_destination)? else {
        return Ok(None);
    };
    if job.source.size().is_some_and(|s| s != found.size) {
        return Ok(None);
    }
    let (stream, total) = job.source.open_at(0).await?;
    if found.size != total {
        warn!(
            remote = %job.remote,
            theirs = found.size,
            ours = total,
            "a file of another size is already at the upload's path"
        );
        return Ok(None);
    }
    // Reading a large file back (a folder on a slow NAS) is progress too.
    let _keepalive = ctx.keep_alive();
    let (stream, seen) = HashingReader::wrap(stream, job.md5.is_some());
    let same = match job.dest.same_content(&found, stream, total).await {
        // Gone between the look and the read: not there.
        Err(TransferError::NotFound(_)) => false,
        other => other?,
    };
    if !same {
        warn!(remote = %job.remote, "a file with other content is already at the upload's path");
        return Ok(None);
    }
    let (len, sha, md5) = match seen.take() {
        whole @ (len, _, _) if len == total => whole,
        // The destination compared without reading all of the source: read it once more.
        _ => {
            let (stream, _) = job.source.open_at(0).await?;
            let (mut stream, again) = HashingReader::wrap(stream, job.md5.is_some());
            tokio::io::copy(&mut stream, &mut tokio::io::sink())
                .await
                .map_err(|e| TransferError::Temporary(format!("reading failed: {e}")))?;
            again.take()
        }
    };
    if len != total {
        return Err(JobError::retryable(format!(
            "the source gave {len} of its {total} bytes"
        )));
    }
    let sha256 = sha.hex();
    if let Some(expected) = &job.md5
        && !md5.is_some_and(|m| m.hex().eq_ignore_ascii_case(expected))
    {
        // The stored bytes are the source's, but not the ones it vouches for.
        warn!(remote = %job.remote, "the file at the upload's path is not the one the source vouches for");
        return Ok(None);
    }
    info!(remote = %found.path, "the destination already has this file, complete and intact");
    Ok(Some(Copied {
        stored: found,
        size: total,
        sha256,
    }))
}

/// Commits a checkpoint held back to overlap with the next chunk, if there is one.
async fn save(ctx: &JobContext, cp: Option<CopyCheckpoint>) -> Result<(), JobError> {
    match cp {
        Some(cp) => ctx.save_checkpoint(&cp).await,
        None => Ok(()),
    }
}

async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T, JobError> {
    task.await
        .map_err(|e| JobError::retryable(format!("hashing failed: {e}")))
}

/// Reads a stream in chunks into reused buffers; bytes read but not used go back in front.
struct ChunkReader {
    stream: ByteStream,
    unread: VecDeque<Bytes>,
    /// A sent chunk's buffer, taken back: allocating a fresh chunk for every request
    /// fragments the heap and lets memory creep up over a long upload.
    spare: Option<BytesMut>,
}

impl ChunkReader {
    fn new(stream: ByteStream) -> Self {
        ChunkReader {
            stream,
            unread: VecDeque::new(),
            spare: None,
        }
    }

    /// Up to `size` bytes (fewer only at the end of the stream).
    async fn read(&mut self, size: usize) -> Result<Bytes, TransferError> {
        if let Some(front) = self.unread.front_mut()
            && front.len() >= size
        {
            let out = front.split_to(size);
            if front.is_empty() {
                self.unread.pop_front();
            }
            return Ok(out);
        }
        let mut buf = match self.spare.take() {
            Some(mut b) => {
                b.clear();
                b.reserve(size);
                b
            }
            None => BytesMut::with_capacity(size),
        };
        while buf.len() < size {
            let room = size - buf.len();
            if let Some(mut front) = self.unread.pop_front() {
                let take = room.min(front.len());
                buf.extend_from_slice(&front.split_to(take));
                if !front.is_empty() {
                    self.unread.push_front(front);
                }
                continue;
            }
            // A reused buffer may have room for more than one chunk: never read past `size`.
            let n = self
                .stream
                .read_buf(&mut (&mut buf).limit(room))
                .await
                .map_err(|e| TransferError::Temporary(format!("reading the source failed: {e}")))?;
            if n == 0 {
                break;
            }
        }
        Ok(buf.freeze())
    }

    /// Puts `bytes` back in front of what comes next.
    fn unread(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.unread.push_front(bytes);
        }
    }

    /// Takes a sent chunk's buffer back once nobody else holds it.
    fn recycle(&mut self, chunk: Bytes) {
        if let Ok(b) = chunk.try_into_mut() {
            self.spare = Some(b);
        }
    }
}

/// Hashes what passes through: the SHA-256 of the source (and its MD5 when the source vouches
/// for one), computed while a destination reads it for its own comparison.
struct HashingReader {
    inner: ByteStream,
    seen: std::sync::Arc<std::sync::Mutex<Hashes>>,
}

/// Bytes seen, their SHA-256 and, if asked for, their MD5.
type Hashes = (u64, Sha256State, Option<Md5State>);

struct Seen(std::sync::Arc<std::sync::Mutex<Hashes>>);

impl Seen {
    fn take(&self) -> Hashes {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl HashingReader {
    fn wrap(inner: ByteStream, md5: bool) -> (ByteStream, Seen) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new((
            0,
            Sha256State::new(),
            md5.then(Md5State::new),
        )));
        (
            Box::pin(HashingReader {
                inner,
                seen: seen.clone(),
            }),
            Seen(seen),
        )
    }
}

impl tokio::io::AsyncRead for HashingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let new = &buf.filled()[before..];
            if let Ok(mut seen) = self.seen.lock() {
                seen.0 += new.len() as u64;
                seen.1.update(new);
                if let Some(md5) = &mut seen.2 {
                    md5.update(new);
                }
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chunk_reader_gives_back_what_was_put_back_first() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut r = ChunkReader::new(Box::pin(std::io::Cursor::new(data.clone())));
        let a = r.read(30).await.unwrap();
        let b = r.read(30).await.unwrap();
        r.unread(b);
        r.unread(a.slice(10..));
        let again = r.read(25).await.unwrap();
        assert_eq!(&again[..], &data[10..35]);
        let rest = r.read(1000).await.unwrap();
        assert_eq!(&rest[..], &data[35..]);
        assert!(r.read(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_hashing_reader_sees_every_byte() {
        let data = vec![7u8; 3 * 1024 * 1024 + 5];
        let (stream, seen) =
            HashingReader::wrap(Box::pin(std::io::Cursor::new(data.clone())), false);
        let (len, hex) = super::super::sha256_of(stream).await.unwrap();
        let (n, sha, _) = seen.take();
        assert_eq!((n, sha.hex()), (len, hex.clone()));
        assert_eq!(hex, super::super::sha256_hex(&data));
    }
}
