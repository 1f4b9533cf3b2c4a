//! Reading a partial file back while the upload goes on.
//!
//! The folder destination proves what it stored by reading the file back and comparing its
//! SHA-256 with the source's. Done after the last chunk, that read is a second pass over the
//! whole file on the critical path; here it runs beside the upload instead: a thread reads each
//! chunk back once it is written and synced, so at the end only the last chunk is left to read.
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

struct State {
    /// Bytes written, synced and free to read back.
    ready: u64,
    /// Bytes read back and hashed.
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
/// stops its thread.
pub(crate) struct ReadBack {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl ReadBack {
    /// Starts reading `path` back; `ready` bytes (a resumed upload's prefix) may be read now.
    pub(crate) fn start(path: PathBuf, ready: u64, stamp: Stamp) -> ReadBack {
        let shared = Arc::new((
            Mutex::new(State {
                ready,
                hashed: 0,
                sha: Sha256State::new(),
                stamp,
                spoiled: None,
                closed: false,
            }),
            Condvar::new(),
        ));
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("folder-read-back".into())
            .spawn(move || run(&worker, &path));
        let back = ReadBack { shared };
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

    /// After a write and its sync: `ready` bytes may be read back; `stamp` is the file as we
    /// left it.
    pub(crate) fn written(&self, ready: u64, stamp: Stamp) {
        let mut st = self.lock();
        st.ready = ready;
        st.stamp = stamp;
        self.shared.1.notify_all();
    }

    /// Waits until `len` bytes are read back, then proves the file is still as our last write
    /// left it. The SHA-256 of the file, or `None` when the early read-back proves nothing and
    /// the whole file must be read again.
    pub(crate) fn result(&self, path: &Path, len: u64) -> Option<String> {
        let (sha, stamp) = {
            let mut st = self.lock();
            while st.hashed < len && st.spoiled.is_none() && st.ready >= len {
                st = self.shared.1.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.spoiled.is_some() || st.hashed != len {
                return None;
            }
            (st.sha.clone(), st.stamp)
        };
        let now = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        (now == Some(stamp)).then(|| sha.hex())
    }
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

    fn write(path: &Path, at: u64, bytes: &[u8]) -> Stamp {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_at(bytes, at).unwrap();
        f.sync_data().unwrap();
        Stamp::of(&f.metadata().unwrap())
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
        let mut all = Vec::new();
        for i in 0..5u8 {
            let chunk = vec![i; 300_000];
            back.check(stamp(&path));
            let s = write(&path, all.len() as u64, &chunk);
            all.extend_from_slice(&chunk);
            back.written(all.len() as u64, s);
        }
        assert_eq!(
            back.result(&path, all.len() as u64),
            Some(crate::transfer::sha256_hex(&all))
        );
    }

    #[test]
    fn a_change_between_our_writes_spoils_it() {
        let (_dir, path, back) = empty_part();
        let s = write(&path, 0, &[1u8; 4096]);
        back.written(4096, s);
        // Someone else rewrites a byte that may already have been read back.
        write(&path, 10, b"\x02");
        back.check(stamp(&path));
        let s = write(&path, 4096, &[1u8; 4096]);
        back.written(8192, s);
        assert_eq!(back.result(&path, 8192), None);
    }

    #[test]
    fn a_change_after_our_last_write_spoils_it() {
        let (_dir, path, back) = empty_part();
        let s = write(&path, 0, &[1u8; 4096]);
        back.written(4096, s);
        // Same length, other bytes: only the timestamps can tell.
        write(&path, 0, b"\x09");
        assert_eq!(back.result(&path, 4096), None);
    }

    #[test]
    fn a_resumed_prefix_is_read_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        std::fs::write(&path, vec![5u8; 100_000]).unwrap();
        let back = ReadBack::start(path.clone(), 100_000, stamp(&path));
        back.check(stamp(&path));
        let s = write(&path, 100_000, &[6u8; 50]);
        back.written(100_050, s);
        let mut all = vec![5u8; 100_000];
        all.extend_from_slice(&[6u8; 50]);
        assert_eq!(
            back.result(&path, 100_050),
            Some(crate::transfer::sha256_hex(&all))
        );
    }
}
