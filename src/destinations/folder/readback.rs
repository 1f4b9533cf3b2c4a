//! Reading a partial file back while the upload goes on.
//!
//! The folder destination proves what it stored by reading the file back. Done after the last
//! chunk, that read is a second pass over the whole file on the critical path; here it happens
//! as the upload goes instead, in one of two ways:
//! - **A file this process writes from byte 0** ([`Mode::Compare`]): each chunk is read back
//!   right after it is written and synced and compared byte for byte with the bytes that were
//!   written (still in memory). No second SHA-256 pass: that pass was half of the folder's
//!   CPU time, and a comparison with the very bytes handed to `write` proves at least as much.
//! - **A file resumed after a restart** ([`Mode::Hash`]): the bytes an earlier process wrote are
//!   not in memory, so a thread reads the file back from byte 0 and hashes it; `finish`
//!   compares that SHA-256 with the source's.
//!
//! Reading a chunk back early is only as good as the proof that nobody changed it afterwards.
//! Each of our writes is bracketed by `fstat`s: the file must look exactly as we left it before
//! we write again (inode, length, mtime and ctime to the nanosecond), and once more after the
//! read-back ends. That proof needs a file system whose timestamps change on every write seen
//! after a `stat` (Linux's fine-grained "multigrain" timestamps, since 6.13; seen on ext4 and
//! tmpfs); [`fine_grained_times`] tests that on the file itself, and where it fails (expected
//! on NFS, SMB, older kernels) or anything differs, the whole file is read back after the last
//! chunk as before.

use std::{
    cell::RefCell,
    fs::File,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
};

use crate::transfer::Sha256State;

/// What the file looked like right after one of our writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Whether a change right after a `stat` is seen in this file's timestamps: three times
/// (stat, truncate to its own length — Linux counts that as a change —, stat), each time the
/// ctime must move. Leaves the bytes as they were; `file` must be open for writing.
pub(crate) fn fine_grained_times(file: &File) -> std::io::Result<bool> {
    let mut moved = true;
    for _ in 0..3 {
        let before = file.metadata()?;
        file.set_len(before.len())?;
        let after = Stamp::of(&file.metadata()?);
        moved &= after.ctime != Stamp::of(&before).ctime;
    }
    Ok(moved)
}

/// How the bytes are proven: see the module's comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Compare,
    Hash,
}

/// What the read-back proved about the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Every byte read back equals the byte written for it, in this process.
    AsWritten,
    /// The SHA-256 (hex) of the bytes read back.
    Sha256(String),
}

struct State {
    mode: Mode,
    /// Bytes written, synced and free to read back.
    ready: u64,
    /// Bytes read back and hashed (`Hash`) or compared (`Compare`).
    hashed: u64,
    sha: Sha256State,
    /// The file after our last write.
    stamp: Stamp,
    /// Something other than us changed the file, or reading it failed: the early read-back
    /// proves nothing.
    spoiled: Option<String>,
    closed: bool,
}

/// The read-back of one partial file, owned by the folder while the upload lasts. Dropping it
/// stops its thread (`Hash` mode; `Compare` has none).
pub(crate) struct ReadBack {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl ReadBack {
    /// Starts reading `path` back; `ready` bytes (a resumed upload's prefix) may be read now.
    /// Starts the read-back of `path`, whose first `ready` bytes are written: compared chunk
    /// by chunk when there are none yet, hashed by a thread from byte 0 otherwise.
    pub(crate) fn start(path: PathBuf, ready: u64, stamp: Stamp) -> ReadBack {
        let mode = if ready == 0 {
            Mode::Compare
        } else {
            Mode::Hash
        };
        let shared = Arc::new((
            Mutex::new(State {
                mode,
                ready,
                hashed: 0,
                sha: Sha256State::new(),
                stamp,
                spoiled: None,
                closed: false,
            }),
            Condvar::new(),
        ));
        let back = ReadBack {
            shared: shared.clone(),
        };
        if mode == Mode::Compare {
            return back;
        }
        let worker = shared;
        let spawned = std::thread::Builder::new()
            .name("folder-read-back".into())
            .spawn(move || run(&worker, &path));
        if let Err(e) = spawned {
            back.spoil(format!("cannot start the read-back: {e}"));
        }
        back
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spoil(&self, why: String) {
        let mut st = self.lock();
        st.spoiled.get_or_insert(why);
        self.shared.1.notify_all();
    }

    /// Before our next write: the file must be as our last write left it.
    pub(crate) fn check(&self, now: Stamp) {
        let mut st = self.lock();
        if st.stamp != now && st.spoiled.is_none() {
            st.spoiled = Some("the partial file changed between our writes".into());
        }
    }

    /// Our write of `chunk` at `offset` into `file` (open for reading) is synced, and `stamp`
    /// is the file right after it. `Compare` reads the chunk back now and compares it with
    /// `chunk`; `Hash` hands it to the thread.
    pub(crate) fn written(&self, file: &File, offset: u64, chunk: &[u8], stamp: Stamp) {
        let end = offset + chunk.len() as u64;
        let mode = self.lock().mode;
        let compared = match mode {
            Mode::Hash => None,
            Mode::Compare => Some(compare_back(file, offset, chunk)),
        };
        let mut st = self.lock();
        match compared {
            Some(Ok(())) if st.hashed == offset => st.hashed = end,
            Some(Ok(())) => {
                let why = format!("a chunk at byte {offset} came after {} bytes", st.hashed);
                st.spoiled.get_or_insert(why);
            }
            Some(Err(why)) => {
                st.spoiled.get_or_insert(why);
            }
            None => {}
        }
        st.ready = end;
        st.stamp = stamp;
        self.shared.1.notify_all();
    }

    /// What the read-back proved of the first `len` bytes, once it has read them; `None` when
    /// it proves nothing (then the caller reads the whole file).
    pub(crate) fn result(&self, path: &Path, len: u64) -> Option<Verified> {
        let (verified, stamp) = {
            let mut st = self.lock();
            while st.hashed < len && st.spoiled.is_none() && st.ready >= len {
                if st.mode == Mode::Compare {
                    // Nothing else compares: a chunk never written proves nothing.
                    return None;
                }
                st = self.shared.1.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.spoiled.is_some() || st.hashed != len {
                return None;
            }
            let verified = match st.mode {
                Mode::Compare => Verified::AsWritten,
                Mode::Hash => Verified::Sha256(st.sha.hex()),
            };
            (verified, st.stamp)
        };
        let now = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        (now == Some(stamp)).then_some(verified)
    }
}

/// Reads `chunk.len()` bytes of `file` at `offset` back and compares them with `chunk`.
fn compare_back(file: &File, offset: u64, chunk: &[u8]) -> Result<(), String> {
    thread_local! {
        static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 1024 * 1024]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut done = 0usize;
        while done < chunk.len() {
            let want = (chunk.len() - done).min(buf.len());
            let at = offset + done as u64;
            match file.read_at(&mut buf[..want], at) {
                Ok(0) => return Err(format!("the file ended at {at} bytes while reading back")),
                Ok(n) => {
                    if buf[..n] != chunk[done..done + n] {
                        return Err(format!(
                            "the bytes read back at {at}..{} differ from those written",
                            at + n as u64
                        ));
                    }
                    done += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read back at byte {at}: {e}")),
            }
        }
        Ok(())
    })
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.1.notify_all();
    }
}

fn run(shared: &(Mutex<State>, Condvar), path: &Path) {
    let lock = || shared.0.lock().unwrap_or_else(|p| p.into_inner());
    let spoil = |why: String| {
        lock().spoiled.get_or_insert(why);
        shared.1.notify_all();
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return spoil(format!("cannot open {} to read back: {e}", path.display())),
    };
    let mut sha = Sha256State::new();
    let mut hashed = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let ready = {
            let mut st = lock();
            while st.ready <= hashed && !st.closed && st.spoiled.is_none() {
                st = shared.1.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.closed || st.spoiled.is_some() {
                return;
            }
            st.ready
        };
        while hashed < ready {
            let want = (ready - hashed).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..want], hashed) {
                Ok(0) => {
                    return spoil(format!(
                        "{} ended at {hashed} bytes while reading back",
                        path.display()
                    ));
                }
                Ok(n) => {
                    sha.update(&buf[..n]);
                    hashed += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return spoil(format!("cannot read back {}: {e}", path.display()));
                }
            }
        }
        let mut st = lock();
        st.hashed = hashed;
        st.sha = sha.clone();
        shared.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &Path) -> Stamp {
        Stamp::of(&std::fs::metadata(path).unwrap())
    }

    /// An empty partial file in a temp dir, with its read-back started.
    fn empty_part() -> (tempfile::TempDir, PathBuf, ReadBack) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        File::create(&path).unwrap();
        let back = ReadBack::start(path.clone(), 0, stamp(&path));
        (dir, path, back)
    }

    /// Writes `bytes` at `at` as the folder does (write, sync) and tells `back` about it, as
    /// the bytes `told` (normally the same ones).
    fn ours(path: &Path, back: &ReadBack, at: u64, bytes: &[u8], told: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        back.check(Stamp::of(&f.metadata().unwrap()));
        f.write_at(bytes, at).unwrap();
        f.sync_data().unwrap();
        back.written(&f, at, told, Stamp::of(&f.metadata().unwrap()));
    }

    /// Someone else's write.
    fn theirs(path: &Path, at: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_at(bytes, at).unwrap();
        f.sync_data().unwrap();
    }

    #[test]
    fn this_file_system_shows_every_write() {
        // The machine the tests run on (ext4/tmpfs on Linux ≥ 6.13) has fine-grained times;
        // if this fails, the fast path is never taken here and the tests below prove nothing.
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("probe")).unwrap();
        assert!(fine_grained_times(&f).unwrap());
        assert_eq!(
            f.metadata().unwrap().len(),
            0,
            "the probe leaves the file as it was"
        );
        std::fs::write(dir.path().join("probe"), b"kept").unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("probe"))
            .unwrap();
        assert!(fine_grained_times(&f).unwrap());
        assert_eq!(std::fs::read(dir.path().join("probe")).unwrap(), b"kept");
    }

    #[test]
    fn reads_back_what_was_written_as_it_is_written() {
        let (_dir, path, back) = empty_part();
        let mut len = 0u64;
        for i in 0..5u8 {
            let chunk = vec![i; 300_000];
            ours(&path, &back, len, &chunk, &chunk);
            len += chunk.len() as u64;
        }
        assert_eq!(back.result(&path, len), Some(Verified::AsWritten));
        assert_eq!(back.result(&path, len + 1), None, "a byte never written");
    }

    #[test]
    fn a_chunk_that_reads_back_other_bytes_spoils_it() {
        // What a disk (or a file system) that returns other bytes than it took looks like:
        // the file holds `stored`, the folder wrote `sent`.
        let (_dir, path, back) = empty_part();
        let sent = vec![7u8; 100_000];
        let mut stored = sent.clone();
        stored[99_999] = 8;
        ours(&path, &back, 0, &stored, &sent);
        assert_eq!(back.result(&path, 100_000), None);
    }

    #[test]
    fn a_change_between_our_writes_spoils_it() {
        let (_dir, path, back) = empty_part();
        ours(&path, &back, 0, &[1u8; 4096], &[1u8; 4096]);
        // Someone else rewrites a byte that was already read back.
        theirs(&path, 10, b"\x02");
        ours(&path, &back, 4096, &[1u8; 4096], &[1u8; 4096]);
        assert_eq!(back.result(&path, 8192), None);
    }

    #[test]
    fn a_change_after_our_last_write_spoils_it() {
        let (_dir, path, back) = empty_part();
        ours(&path, &back, 0, &[1u8; 4096], &[1u8; 4096]);
        // Same length, other bytes: only the timestamps can tell.
        theirs(&path, 0, b"\x09");
        assert_eq!(back.result(&path, 4096), None);
    }

    #[test]
    fn a_resumed_prefix_is_read_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        std::fs::write(&path, vec![5u8; 100_000]).unwrap();
        let back = ReadBack::start(path.clone(), 100_000, stamp(&path));
        ours(&path, &back, 100_000, &[6u8; 50], &[6u8; 50]);
        let mut all = vec![5u8; 100_000];
        all.extend_from_slice(&[6u8; 50]);
        assert_eq!(
            back.result(&path, 100_050),
            Some(Verified::Sha256(crate::transfer::sha256_hex(&all)))
        );
    }
}
