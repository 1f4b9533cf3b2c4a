//! Backups as `.tar` files in a local folder (the add-on's `/backup`, or any
//! directory on a plain install).
//!
//! Home Assistant names backup files after the backup since 2025.1
//! (`Automatic_backup_2026.4.1_2026-04-02_03.00_00000000.tar`), so the slug
//! has to come from the archive's own `./backup.json`. Reading it needs only
//! the outer tar's headers: the walk seeks over member data and never reads
//! the gigabytes of the inner archives.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncSeekExt, BufReader};

/// Largest single read from the file (the biggest chunk a destination asks for).
const MAX_READ: usize = 16 * 1024 * 1024;
use tracing::{debug, warn};

use super::{BackupInfo, BackupStream, listing_order, parse_ha_date};
use crate::transfer::TransferError;

/// Tar block size: headers and the padding of member data.
const BLOCK: u64 = 512;
/// Headers read per archive at most (1 MiB of headers). An HA backup has a
/// few dozen members; a big foreign tar must not be walked to its end on
/// every listing.
const MAX_HEADERS: usize = 2048;
/// Largest pax header, GNU long name or backup.json read into memory. Real
/// ones are a few KiB; anything bigger is not what we are looking for.
const MAX_META_BYTES: u64 = 1 << 20;
/// Read buffer for `open`: tokio's `File` sends every read to the blocking
/// pool, so fewer, bigger reads matter on a Raspberry Pi.
const READ_BUFFER: usize = 256 * 1024;
/// An archive still incomplete after this long is probably broken rather
/// than being written, which deserves a warning instead of a debug line.
const STALE_INCOMPLETE: Duration = Duration::from_secs(10 * 60);

/// A directory of backup archives.
#[derive(Clone)]
pub struct FolderSource {
    dir: PathBuf,
    /// Scans by path, valid while the file's size and mtime are unchanged,
    /// so a listing re-reads only new or changed archives.
    cache: Arc<Mutex<HashMap<PathBuf, (Stamp, Scan)>>>,
}

impl std::fmt::Debug for FolderSource {
    // The cache holds every archive's backup.json: noise in a Debug line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderSource")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What identifies one version of a file for the scan cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// One listed archive and where it is.
struct Entry {
    info: BackupInfo,
    path: PathBuf,
}

impl FolderSource {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every complete `*.tar` directly in the folder, oldest first.
    ///
    /// Dotfiles and anything not ending in `.tar` (so `.partial`, `.tmp`)
    /// are ignored, and so are archives that end before the tar
    /// end-of-archive marker: the Supervisor writes a backup in place and
    /// adds `backup.json` last, so such a file is still being written.
    pub async fn list(&self) -> Result<Vec<BackupInfo>, TransferError> {
        let entries = self.entries().await?;
        Ok(entries.into_iter().map(|e| e.info).collect())
    }

    /// Open backup `slug` at byte `offset`; returns the stream and the
    /// file's length.
    pub async fn open(
        &self,
        slug: &str,
        offset: u64,
    ) -> Result<(BackupStream, u64), TransferError> {
        // List again rather than trust an old slug → file mapping: files get
        // renamed and deleted by HA's own retention.
        let entries = self.entries().await?;
        let gone = || {
            TransferError::NotFound(format!("backup {slug} is gone from {}", self.dir.display()))
        };
        let path = entries
            .into_iter()
            .find(|e| e.info.slug == slug)
            .map(|e| e.path)
            .ok_or_else(gone)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
            Err(e) => return Err(io_failure("cannot open", &path, &e)),
        };
        // The length of the open file, not of the listing: this is what the
        // stream will deliver even if the file is replaced meanwhile.
        let len = file
            .metadata()
            .await
            .map_err(|e| io_failure("cannot stat", &path, &e))?
            .len();
        if offset > len {
            return Err(TransferError::Permanent(format!(
                "cannot resume backup {slug} at byte {offset}: {} has only {len} bytes \
                 (the file changed since the transfer started)",
                path.display()
            )));
        }
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| io_failure("cannot seek in", &path, &e))?;
        }
        // One blocking read per chunk instead of tokio's default 2 MiB steps.
        file.set_max_buf_size(MAX_READ);
        Ok((Box::pin(BufReader::with_capacity(READ_BUFFER, file)), len))
    }

    async fn entries(&self) -> Result<Vec<Entry>, TransferError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.entries_blocking())
            .await
            .map_err(|e| TransferError::Temporary(format!("listing {}: {e}", self.dir.display())))?
    }

    fn entries_blocking(&self) -> Result<Vec<Entry>, TransferError> {
        let unreadable = |e: io::Error| {
            TransferError::Temporary(format!(
                "cannot read backup folder {}: {e}",
                self.dir.display()
            ))
        };
        let mut candidates = Vec::new();
        for dirent in std::fs::read_dir(&self.dir).map_err(unreadable)? {
            let dirent = dirent.map_err(unreadable)?;
            let file_name = dirent.file_name();
            let Some(name) = file_name.to_str() else {
                debug!(file = ?file_name, "skipping file whose name is not UTF-8");
                continue;
            };
            if is_candidate(name) {
                candidates.push((name.to_owned(), dirent.path()));
            }
        }
        // Sorted by file name so that, of two files claiming the same slug
        // (a copy of a backup), every listing picks the same one.
        candidates.sort();

        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for (name, path) in &candidates {
            let Some(info) = self.describe(name, path) else {
                continue;
            };
            if !seen.insert(info.slug.clone()) {
                warn!(
                    file = %path.display(),
                    slug = %info.slug,
                    "ignoring a second archive with the same backup slug"
                );
                continue;
            }
            entries.push(Entry {
                info,
                path: path.clone(),
            });
        }
        self.prune_cache(&candidates);
        entries.sort_by(|a, b| listing_order(&a.info, &b.info));
        Ok(entries)
    }

    /// The listing entry for one file, or None to leave it out.
    fn describe(&self, name: &str, path: &Path) -> Option<BackupInfo> {
        // metadata() follows symlinks: a link to an archive is listed.
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            // Deleted between read_dir and now (HA's retention): not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "skipping unreadable file");
                return None;
            }
        };
        if !meta.is_file() {
            return None;
        }
        let stamp = Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        let scan = match self.scan_cached(path, stamp) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "skipping unreadable file");
                return None;
            }
        };
        let stem = name[..name.len() - ".tar".len()].to_owned();
        let mtime: DateTime<Utc> = stamp.modified.unwrap_or(SystemTime::UNIX_EPOCH).into();
        let mut info = BackupInfo {
            slug: stem.clone(),
            name: stem,
            date: mtime,
            size: Some(stamp.len),
        };
        match scan {
            Scan::Incomplete { .. } => {
                let age = stamp
                    .modified
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .unwrap_or_default();
                if age >= STALE_INCOMPLETE {
                    warn!(
                        file = %path.display(),
                        "skipping archive that ends early or has a damaged header"
                    );
                } else {
                    debug!(file = %path.display(), "skipping archive still being written");
                }
                return None;
            }
            Scan::NotTar => {
                debug!(file = %path.display(), "not a tar archive; listed as an opaque file");
            }
            Scan::Complete { meta: None } => {}
            Scan::Complete { meta: Some(raw) } => match backup_identity(&raw) {
                Some((slug, name, date)) => {
                    info.slug = slug;
                    if let Some(name) = name {
                        info.name = name;
                    }
                    if let Some(date) = date {
                        info.date = date;
                    }
                }
                None => warn!(
                    file = %path.display(),
                    "backup.json has no usable slug; listing the archive under its file name"
                ),
            },
        }
        Some(info)
    }

    fn scan_cached(&self, path: &Path, stamp: Stamp) -> io::Result<Scan> {
        if let Some((cached, scan)) = self.lock_cache().get(path)
            && *cached == stamp
        {
            return Ok(scan.clone());
        }
        let scan = scan_tar(&mut File::open(path)?)?;
        self.lock_cache()
            .insert(path.to_owned(), (stamp, scan.clone()));
        Ok(scan)
    }

    /// Forget files that are gone, so the cache stays as small as the folder.
    fn prune_cache(&self, candidates: &[(String, PathBuf)]) {
        let present: HashSet<&PathBuf> = candidates.iter().map(|(_, p)| p).collect();
        self.lock_cache().retain(|p, _| present.contains(p));
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, Scan)>> {
        // The cache only saves work; a panic elsewhere cannot make it wrong.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `*.tar`, not hidden. The `.tar` rule also keeps out `x.tar.partial` and
/// `x.tar.tmp`, which copy tools write before renaming.
fn is_candidate(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && lower.ends_with(".tar") && name.len() > ".tar".len()
}

fn io_failure(what: &str, path: &Path, e: &io::Error) -> TransferError {
    let msg = format!("{what} {}: {e}", path.display());
    if e.kind() == io::ErrorKind::NotFound {
        TransferError::NotFound(msg)
    } else {
        TransferError::Temporary(msg)
    }
}

/// `(slug, name, date)` from a backup.json, None without a string slug.
fn backup_identity(raw: &[u8]) -> Option<(String, Option<String>, Option<DateTime<Utc>>)> {
    let json: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let slug = json.get("slug")?.as_str()?.trim();
    if slug.is_empty() {
        return None;
    }
    let name = json.get("name").and_then(|v| v.as_str()).map(str::to_owned);
    let date = json
        .get("date")
        .and_then(|v| v.as_str())
        .and_then(parse_ha_date);
    Some((slug.to_owned(), name, date))
}

/// The parsed `backup.json` (or the `snapshot.json` of old backups) of the
/// archive at `path`; None if it has none or is not a tar archive.
///
/// Invalid JSON is an `InvalidData` error. The metadata is returned even
/// from an archive that is not complete yet.
pub fn read_backup_json(path: impl AsRef<Path>) -> io::Result<Option<serde_json::Value>> {
    let meta = match scan_tar(&mut File::open(path)?)? {
        Scan::Complete { meta } | Scan::Incomplete { meta } => meta,
        Scan::NotTar => None,
    };
    meta.map(|raw| {
        serde_json::from_slice(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    })
    .transpose()
}

// ---------------------------------------------------------------------------
// Outer tar walk
// ---------------------------------------------------------------------------

/// What the header walk found out about an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scan {
    /// Reached the end-of-archive marker (or the header budget); `meta` is
    /// the raw backup.json if there was one.
    Complete { meta: Option<Vec<u8>> },
    /// Ended before the end-of-archive marker, or a later header is damaged.
    /// Both are what a backup being written looks like: the Supervisor
    /// writes each inner archive's header before its size is known and
    /// patches it afterwards.
    Incomplete { meta: Option<Vec<u8>> },
    /// The first block is not a tar header.
    NotTar,
}

/// Walk the headers of a tar (ustar, GNU or pax), seeking over member data.
fn scan_tar<R: Read + Seek>(r: &mut R) -> io::Result<Scan> {
    let mut meta = None;
    // From a preceding pax `x` header or GNU `L` long name; they apply to
    // the next real member only.
    let mut next_path: Option<String> = None;
    let mut next_size: Option<u64> = None;
    let mut header = [0u8; BLOCK as usize];
    for index in 0..MAX_HEADERS {
        if !read_block(r, &mut header)? {
            // An empty file is one that has just been created.
            return Ok(Scan::Incomplete { meta });
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(Scan::Complete { meta });
        }
        let header_size = parse_number(&header[124..136]);
        let (true, Some(header_size)) = (checksum_ok(&header), header_size) else {
            return Ok(if index == 0 {
                Scan::NotTar
            } else {
                Scan::Incomplete { meta }
            });
        };
        let size = match header[156] {
            b'x' | b'g' | b'L' | b'K' => header_size,
            _ => next_size.take().unwrap_or(header_size),
        };
        match header[156] {
            // Per-member pax records: honour `path` and `size` (Python's
            // tarfile puts sizes of 8 GiB and more only there).
            b'x' => {
                let Some(data) = read_member(r, size)? else {
                    return Ok(Scan::Incomplete { meta });
                };
                for (key, value) in pax_records(&data) {
                    match key {
                        "path" => next_path = Some(value.to_owned()),
                        "size" => next_size = value.parse().ok(),
                        _ => {}
                    }
                }
            }
            b'L' => {
                let Some(data) = read_member(r, size)? else {
                    return Ok(Scan::Incomplete { meta });
                };
                next_path = Some(c_string(&data));
            }
            // Global pax headers and GNU long link names say nothing about
            // the member names we look for.
            b'g' | b'K' => skip_member(r, size)?,
            typeflag => {
                let path = next_path.take().unwrap_or_else(|| header_path(&header));
                let regular = typeflag == b'0' || typeflag == 0;
                if regular && is_backup_json(&path) && size <= MAX_META_BYTES {
                    let Some(data) = read_member(r, size)? else {
                        return Ok(Scan::Incomplete { meta });
                    };
                    meta = Some(data);
                } else {
                    skip_member(r, size)?;
                }
            }
        }
    }
    // Header budget spent: a large archive that is not an HA backup (those
    // have a few dozen members). Listed as it is.
    Ok(Scan::Complete { meta })
}

/// Fill `buf`; false if the input ends first (a partial block included).
fn read_block<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Read a member's data (at most [`MAX_META_BYTES`]) and its padding; None
/// if the input ends first.
fn read_member<R: Read + Seek>(r: &mut R, size: u64) -> io::Result<Option<Vec<u8>>> {
    if size > MAX_META_BYTES {
        skip_member(r, size)?;
        return Ok(Some(Vec::new()));
    }
    let mut data = vec![0u8; padded(size) as usize];
    if !read_block(r, &mut data)? {
        return Ok(None);
    }
    data.truncate(size as usize);
    Ok(Some(data))
}

/// Seek over a member's data. Seeking past the end is allowed; the next
/// header read then finds the end of the file.
fn skip_member<R: Seek>(r: &mut R, size: u64) -> io::Result<()> {
    let Ok(step) = i64::try_from(padded(size)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "tar member size out of range",
        ));
    };
    r.seek(SeekFrom::Current(step))?;
    Ok(())
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// The header checksum: the sum of all header bytes with the checksum field
/// read as spaces. Some old tars summed signed bytes; accept both.
fn checksum_ok(header: &[u8; BLOCK as usize]) -> bool {
    let Some(stored) = parse_number(&header[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// A numeric header field: octal digits padded with spaces or NULs, or
/// GNU's base-256 (high bit of the first byte set) for values that do not
/// fit, such as sizes of 8 GiB and more.
fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // 0xff marks a negative number, which no size or checksum is.
        if first == 0xff {
            return None;
        }
        let mut value = u64::from(first & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| (b'0'..=b'7').contains(&b));
    let mut value: Option<u64> = None;
    for &d in digits {
        value = Some(
            value
                .unwrap_or(0)
                .checked_mul(8)?
                .checked_add(u64::from(d - b'0'))?,
        );
    }
    // An all-blank field is malformed, not zero.
    value
}

/// `prefix/name` for POSIX ustar; just `name` otherwise (GNU tar uses the
/// prefix bytes for other fields).
fn header_path(header: &[u8; BLOCK as usize]) -> String {
    let name = c_string(&header[0..100]);
    let posix = &header[257..263] == b"ustar\0";
    let prefix = if posix {
        c_string(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// Up to the first NUL, lossy UTF-8.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `./backup.json`, `backup.json`, or the `snapshot.json` of backups made
/// before Supervisor 2021.
fn is_backup_json(path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    path == "backup.json" || path == "snapshot.json"
}

/// pax extended header records: `"<len> <key>=<value>\n"`, where `len`
/// counts the whole record. Stops at the first malformed record.
fn pax_records(data: &[u8]) -> Vec<(&str, &str)> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            break;
        }
        let Ok(record) = std::str::from_utf8(&rest[space + 1..len - 1]) else {
            break;
        };
        if let Some((key, value)) = record.split_once('=') {
            records.push((key, value));
        }
        rest = &rest[len..];
    }
    records
}

#[async_trait::async_trait]
impl super::BackupSource for FolderSource {
    async fn list(&self) -> Result<Vec<BackupInfo>, TransferError> {
        FolderSource::list(self).await
    }

    async fn open(&self, slug: &str, offset: u64) -> Result<(BackupStream, u64), TransferError> {
        FolderSource::open(self, slug, offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A ustar header with a valid checksum.
    fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8], typeflag: u8) {
        out.extend_from_slice(&header(name, data.len() as u64, typeflag));
        out.extend_from_slice(data);
        out.resize(padded(out.len() as u64) as usize, 0);
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            // The length counts its own digits.
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    }

    fn scan(bytes: &[u8]) -> Scan {
        scan_tar(&mut Cursor::new(bytes)).unwrap()
    }

    #[test]
    fn finds_backup_json_after_large_members_and_stops_at_the_end_marker() {
        let mut tar = Vec::new();
        member(&mut tar, "./homeassistant.tar.gz", &[7u8; 5000], b'0');
        member(&mut tar, "./backup.json", br#"{"slug":"abc"}"#, b'0');
        tar.extend_from_slice(&[0u8; 1024]);
        assert_eq!(
            scan(&tar),
            Scan::Complete {
                meta: Some(br#"{"slug":"abc"}"#.to_vec())
            }
        );
        // Without the end marker the archive may still be growing.
        let cut = tar.len() - 1024;
        assert!(matches!(
            scan(&tar[..cut]),
            Scan::Incomplete { meta: Some(_) }
        ));
        // Cut inside member data or inside a header.
        assert!(matches!(
            scan(&tar[..3000]),
            Scan::Incomplete { meta: None }
        ));
        assert!(matches!(
            scan(&tar[..5700]),
            Scan::Incomplete { meta: None }
        ));
        assert_eq!(scan(&[]), Scan::Incomplete { meta: None });
    }

    #[test]
    fn pax_path_and_size_override_the_header() {
        let mut tar = Vec::new();
        // A long member whose real size is only in the pax record, as
        // Python writes members of 8 GiB and more (here a small one).
        member(&mut tar, "PaxHeaders/x", &pax(&[("size", "1024")]), b'x');
        tar.extend_from_slice(&header("./big.tar.gz", 0, b'0'));
        tar.extend_from_slice(&[1u8; 1024]);
        member(
            &mut tar,
            "PaxHeaders/y",
            &pax(&[("mtime", "1.5"), ("path", "./backup.json")]),
            b'x',
        );
        member(&mut tar, "./truncated-name", b"{\"slug\":\"p\"}", b'0');
        tar.extend_from_slice(&[0u8; 1024]);
        assert_eq!(
            scan(&tar),
            Scan::Complete {
                meta: Some(b"{\"slug\":\"p\"}".to_vec())
            }
        );
    }

    #[test]
    fn gnu_long_names_and_damaged_headers() {
        let mut tar = Vec::new();
        member(&mut tar, "././@LongLink", b"./backup.json\0", b'L');
        member(&mut tar, "./backup.js", b"{}", b'0');
        tar.extend_from_slice(&[0u8; 1024]);
        assert_eq!(
            scan(&tar),
            Scan::Complete {
                meta: Some(b"{}".to_vec())
            }
        );

        let mut broken = tar.clone();
        broken[512 + 512 + 10] ^= 0x55; // second header's name
        assert!(matches!(scan(&broken), Scan::Incomplete { .. }));
        assert_eq!(scan(&[b'x'; 2048]), Scan::NotTar);
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_number(b"00000001750\0"), Some(1000));
        assert_eq!(parse_number(b"     1750 \0"), Some(1000));
        assert_eq!(parse_number(b"\0\0\0\0"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7..].copy_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x00]); // 8 GiB
        assert_eq!(parse_number(&big), Some(8 << 30));
        assert_eq!(parse_number(&[0xff; 12]), None);
    }

    #[test]
    fn pax_record_parsing_stops_at_garbage() {
        let mut data = pax(&[("path", "a b=c"), ("size", "12")]);
        assert_eq!(pax_records(&data), vec![("path", "a b=c"), ("size", "12")]);
        data.extend_from_slice(b"99 broken");
        assert_eq!(pax_records(&data).len(), 2);
    }
}
