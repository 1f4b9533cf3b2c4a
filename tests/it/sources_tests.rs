//! Backup sources: the Supervisor API against `FakeSupervisor`, and folders
//! of real tar archives.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite::config::Secret;
use offsite::sources::*;
use offsite::transfer::TransferError;
use tokio::io::AsyncReadExt;

use crate::common::data;
use crate::support::supervisor::{BackupContent, BackupSpec, FakeSupervisor};

const TOKEN: &str = "s3cr3t-supervisor-token-0123456789";

async fn read_all(mut stream: BackupStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(out)
}

/// Read until the stream fails or ends; returns what arrived and the error.
async fn read_until_error(mut stream: BackupStream) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn supervisor_source(sup: &FakeSupervisor, token: &str) -> SupervisorSource {
    SupervisorSource::new(sup.base_url(), Secret::new(token), http())
}

fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().into()
}

// ---------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------

#[tokio::test]
async fn supervisor_lists_backups_oldest_first_with_sizes() {
    let sup = FakeSupervisor::start(TOKEN).await;
    sup.add_backup(
        "bbbb2222",
        "Automatic backup 2026.4.1",
        "2026-04-02T03:00:00.123456+00:00",
        data(3000, 1),
    );
    sup.add_backup_with(
        BackupSpec::partial("aaaa1111", "Before upgrade", "2026-04-02T04:30:00+02:00"),
        BackupContent::Bytes(data(1234, 2)),
    );
    let source = supervisor_source(&sup, TOKEN);

    let list = source.list().await.unwrap();
    assert_eq!(
        list,
        vec![
            BackupInfo {
                slug: "aaaa1111".into(),
                name: "Before upgrade".into(),
                date: utc("2026-04-02T02:30:00Z"),
                size: Some(1234),
            },
            BackupInfo {
                slug: "bbbb2222".into(),
                name: "Automatic backup 2026.4.1".into(),
                date: utc("2026-04-02T03:00:00.123456Z"),
                size: Some(3000),
            },
        ]
    );
    assert_eq!(sup.requests(), vec![("GET".into(), "/backups".into())]);

    // The same through the enum the jobs use.
    let source = Source::from(source);
    assert_eq!(source.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn supervisor_downloads_a_whole_backup() {
    let sup = FakeSupervisor::start(TOKEN).await;
    let bytes = data(300_000, 3);
    sup.add_backup(
        "c0ffee00",
        "Full",
        "2026-04-02T03:00:00+00:00",
        bytes.clone(),
    );
    let source = supervisor_source(&sup, TOKEN);

    let (stream, total) = source.open("c0ffee00", 0).await.unwrap();
    assert_eq!(total, bytes.len() as u64);
    assert_eq!(read_all(stream).await.unwrap(), bytes);
    // No Range header for a download from the start.
    assert_eq!(sup.download_ranges(), vec![None]);
}

#[tokio::test]
async fn supervisor_resumes_with_a_range_request() {
    let sup = FakeSupervisor::start(TOKEN).await;
    let bytes = data(300_000, 4);
    sup.add_backup(
        "c0ffee01",
        "Full",
        "2026-04-02T03:00:00+00:00",
        bytes.clone(),
    );
    let source = supervisor_source(&sup, TOKEN);

    let offset = 123_457;
    let (stream, total) = source.open("c0ffee01", offset).await.unwrap();
    assert_eq!(total, bytes.len() as u64, "total is the whole backup");
    assert_eq!(read_all(stream).await.unwrap(), &bytes[offset as usize..]);
    assert_eq!(sup.download_ranges(), vec![Some("bytes=123457-".into())]);
    assert_eq!(sup.bytes_served(), bytes.len() as u64 - offset);
}

#[tokio::test]
async fn supervisor_ignoring_range_is_handled_by_skipping() {
    let sup = FakeSupervisor::start(TOKEN).await;
    // Several MiB so the skipped part spans many body chunks, and an offset
    // that is not chunk-aligned.
    let bytes = data(5 * 1024 * 1024 + 17, 5);
    sup.add_backup(
        "c0ffee02",
        "Full",
        "2026-04-02T03:00:00+00:00",
        bytes.clone(),
    );
    sup.ignore_range(true);
    let source = supervisor_source(&sup, TOKEN);

    let offset = 3 * 1024 * 1024 + 4321;
    let (stream, total) = source.open("c0ffee02", offset).await.unwrap();
    assert_eq!(total, bytes.len() as u64);
    let got = read_all(stream).await.unwrap();
    assert_eq!(got.len(), bytes.len() - offset as usize);
    assert!(got == bytes[offset as usize..], "skipped the wrong bytes");
    // The server sent everything; the source dropped the first part.
    assert_eq!(sup.bytes_served(), bytes.len() as u64);
}

#[tokio::test]
async fn supervisor_resume_at_the_very_end_and_beyond() {
    let sup = FakeSupervisor::start(TOKEN).await;
    sup.add_backup(
        "c0ffee03",
        "Full",
        "2026-04-02T03:00:00+00:00",
        data(1000, 6),
    );
    let source = supervisor_source(&sup, TOKEN);

    // aiohttp answers 416 for a range starting at the end: nothing left.
    let (stream, total) = source.open("c0ffee03", 1000).await.unwrap();
    assert_eq!(total, 1000);
    assert!(read_all(stream).await.unwrap().is_empty());

    // Beyond the end (the file changed under the checkpoint), with a server
    // that ignores Range. (Range beyond the end is covered with a plain
    // server below: the fake's range parser overflows on it.)
    sup.ignore_range(true);
    let err = source.open("c0ffee03", 1001).await.err().unwrap();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("1000 bytes"), "{err}");
    let (stream, total) = source.open("c0ffee03", 1000).await.unwrap();
    assert_eq!(total, 1000);
    assert!(read_all(stream).await.unwrap().is_empty());
}

/// Serve `router` on a loopback port for the cases the fake has no knob for.
async fn plain_server(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn supervisor_range_beyond_the_end_is_permanent() {
    use axum::http::{StatusCode, header};
    // aiohttp's answer to any range starting at or after the end.
    let router = axum::Router::new().fallback(|| async {
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, "bytes */1000")],
        )
    });
    let (base_url, server) = plain_server(router).await;
    let source = SupervisorSource::new(base_url, Secret::new(TOKEN), http());
    let err = source.open("c0ffee03", 1001).await.err().unwrap();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("1000 bytes"), "{err}");
    let (stream, total) = source.open("c0ffee03", 1000).await.unwrap();
    assert_eq!(total, 1000);
    assert!(read_all(stream).await.unwrap().is_empty());
    server.abort();
}

#[tokio::test]
async fn supervisor_missing_backups_are_not_found() {
    let sup = FakeSupervisor::start(TOKEN).await;
    sup.add_backup(
        "c0ffee04",
        "Full",
        "2026-04-02T03:00:00+00:00",
        data(1000, 7),
    );
    let source = supervisor_source(&sup, TOKEN);

    // Unknown slug: JSON 404 "Backup does not exist".
    let err = source.open("deadbeef", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::NotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "backup deadbeef no longer exists on the Supervisor"
    );

    // Still listed, but its file vanished: bare 404.
    sup.delete_backup_file("c0ffee04");
    let err = source.open("c0ffee04", 10).await.err().unwrap();
    assert!(matches!(err, TransferError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn supervisor_slugs_are_path_segments_not_paths() {
    let sup = FakeSupervisor::start(TOKEN).await;
    let source = supervisor_source(&sup, TOKEN);
    let err = source.open("../core/api", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::NotFound(_)), "{err:?}");
    assert_eq!(
        sup.requests(),
        vec![("GET".into(), "/backups/..%2Fcore%2Fapi/download".into())]
    );
}

#[tokio::test]
async fn supervisor_rejected_tokens_are_retried_and_never_echoed() {
    let sup = FakeSupervisor::start(TOKEN).await;
    sup.add_backup("c0ffee05", "Full", "2026-04-02T03:00:00+00:00", data(10, 8));

    // Wrong token: 403.
    let wrong = "wrong-token-abcdefghijklmnop";
    let source = supervisor_source(&sup, wrong);
    for err in [
        source.list().await.err().unwrap(),
        source.open("c0ffee05", 0).await.err().unwrap(),
    ] {
        // Retried with backoff: the backup is still at the source, and a token the
        // Supervisor rotates or a restarting Supervisor must not make offsite give it up.
        assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("the Supervisor rejected the add-on token (is hassio_api enabled?)"),
            "{msg}"
        );
        assert!(msg.contains("403"), "{msg}");
        assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong));
    }
    assert!(
        !format!("{source:?}").contains(wrong),
        "Debug shows the token"
    );

    // No token at all: 401.
    let err = supervisor_source(&sup, "").list().await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn supervisor_server_errors_are_temporary() {
    let sup = FakeSupervisor::start(TOKEN).await;
    let bytes = data(5000, 9);
    sup.add_backup(
        "c0ffee06",
        "Full",
        "2026-04-02T03:00:00+00:00",
        bytes.clone(),
    );
    let source = supervisor_source(&sup, TOKEN);

    sup.fail_request(1, 500);
    let err = source.list().await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Unknown error, see Supervisor logs"),
        "{err}"
    );
    assert_eq!(source.list().await.unwrap().len(), 1, "recovers");

    sup.fail_request(1, 502);
    let err = source.open("c0ffee06", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");

    // 503 without Retry-After: an ordinary temporary failure.
    sup.fail_request(1, 503);
    let err = source.open("c0ffee06", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");

    let (stream, _) = source.open("c0ffee06", 0).await.unwrap();
    assert_eq!(read_all(stream).await.unwrap(), bytes);
}

#[tokio::test]
async fn supervisor_unreachable_is_temporary() {
    let base_url = {
        let sup = FakeSupervisor::start(TOKEN).await;
        sup.base_url()
    }; // dropped: nothing listens there any more
    let source = SupervisorSource::new(base_url, Secret::new(TOKEN), http());
    let err = source.list().await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    let err = source.open("c0ffee07", 5).await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");

    let bad = SupervisorSource::new("supervisor".into(), Secret::new(TOKEN), http());
    let err = bad.list().await.err().unwrap();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn supervisor_dropped_connection_fails_the_reader_and_resume_completes() {
    let sup = FakeSupervisor::start(TOKEN).await;
    let bytes = data(1024 * 1024, 10);
    sup.add_backup(
        "c0ffee08",
        "Full",
        "2026-04-02T03:00:00+00:00",
        bytes.clone(),
    );
    let source = supervisor_source(&sup, TOKEN);

    sup.drop_connection_mid_body(1, 300_000);
    let (stream, total) = source.open("c0ffee08", 0).await.unwrap();
    assert_eq!(total, bytes.len() as u64);
    let (got, err) = read_until_error(stream).await;
    let err = err.expect("a cut connection must be an error, not a short EOF");
    assert!(err.to_string().contains("c0ffee08"), "{err}");
    assert_eq!(got.len(), 300_000);
    assert_eq!(got, bytes[..got.len()]);

    // Resume from what arrived, as the job does from its checkpoint.
    let (stream, _) = source.open("c0ffee08", got.len() as u64).await.unwrap();
    let rest = read_all(stream).await.unwrap();
    assert_eq!([got, rest].concat(), bytes);

    // Cut again while skipping for a server that ignores Range.
    sup.ignore_range(true);
    sup.drop_connection_mid_body(1, 100_000);
    let (stream, _) = source.open("c0ffee08", 200_000).await.unwrap();
    let (got, err) = read_until_error(stream).await;
    assert!(
        got.is_empty() && err.is_some(),
        "{} bytes, {err:?}",
        got.len()
    );
}

/// A server that only says "later": the fake has no Retry-After knob.
#[tokio::test]
async fn supervisor_retry_after_is_reported() {
    use axum::http::{StatusCode, header};
    let router = axum::Router::new().fallback(|| async {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "42")],
            "slow down",
        )
    });
    let (base_url, server) = plain_server(router).await;
    let source = SupervisorSource::new(base_url, Secret::new(TOKEN), http());
    for err in [
        source.list().await.err().unwrap(),
        source.open("c0ffee09", 7).await.err().unwrap(),
    ] {
        match err {
            TransferError::RetryAfter { wait, message } => {
                assert_eq!(wait, Duration::from_secs(42));
                assert!(message.contains("slow down"), "{message}");
            }
            other => panic!("expected RetryAfter, got {other:?}"),
        }
    }
    server.abort();
}

// ---------------------------------------------------------------------------
// Folder
// ---------------------------------------------------------------------------

/// A ustar archive written by hand, as Python's tarfile lays it out.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"15000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn file(mut self, name: &str, data: &[u8]) -> Self {
        self.0
            .extend_from_slice(&Self::header(name, data.len() as u64, b'0'));
        self.0.extend_from_slice(data);
        self.pad()
    }

    /// A pax `x` header carrying `path`, for names over 100 bytes.
    fn long_file(self, path: &str, data: &[u8]) -> Self {
        let body = format!(" path={path}\n");
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        let mut this = self;
        this.0.extend_from_slice(&Self::header(
            "./PaxHeaders/long",
            record.len() as u64,
            b'x',
        ));
        this.0.extend_from_slice(record.as_bytes());
        this = this.pad();
        this.file(&path[..100.min(path.len())], data)
    }

    fn pad(mut self) -> Self {
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    /// End-of-archive marker, padded to tarfile's 10 KiB records.
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0.resize(self.0.len().div_ceil(10240) * 10240, 0);
        self.0
    }
}

fn backup_json(slug: &str, name: &str, date: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "slug": slug, "version": 2, "name": name, "date": date, "type": "full",
        "supervisor_version": "2026.04.0", "extra": {}, "compressed": true,
        "protected": false, "crypto": null,
        "homeassistant": {"version": "2026.4.1", "exclude_database": false, "size": 0.1},
        "folders": ["share"], "addons": [], "repositories": [], "docker": {},
    }))
    .unwrap()
}

/// An HA backup as the Supervisor writes it: inner archives first,
/// backup.json last.
fn ha_backup(slug: &str, name: &str, date: &str) -> Vec<u8> {
    Tar::default()
        .file("./homeassistant.tar.gz", &data(70_000, 11))
        .file("./share.tar.gz", &data(3_000, 12))
        .file("./backup.json", &backup_json(slug, name, date))
        .finish()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn mtime(path: &Path) -> chrono::DateTime<chrono::Utc> {
    std::fs::metadata(path).unwrap().modified().unwrap().into()
}

#[tokio::test]
async fn folder_lists_ha_backups_by_backup_json_and_plain_tars_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let ha = ha_backup(
        "9f8e7d6c",
        "Automatic backup 2026.4.1",
        "2026-04-02T03:00:00.5+00:00",
    );
    write(
        dir.path(),
        "Automatic_backup_2026.4.1_2026-04-02_03.00_00000000.tar",
        &ha,
    );
    let plain = Tar::default().file("notes.txt", b"hello").finish();
    let plain_path = write(dir.path(), "my-archive.tar", &plain);
    // Long member name via pax, backup.json first (older Supervisors).
    let pax = Tar::default()
        .file(
            "./backup.json",
            &backup_json("0a1b2c3d", "Old style", "2025-01-01T00:00:00+00:00"),
        )
        .long_file(&format!("./{}.tar.gz", "x".repeat(150)), &data(2000, 13))
        .finish();
    write(dir.path(), "0a1b2c3d.tar", &pax);

    let source = FolderSource::new(dir.path().to_owned());
    let list = source.list().await.unwrap();
    let plain_info = BackupInfo {
        slug: "my-archive".into(),
        name: "my-archive".into(),
        date: mtime(&plain_path),
        size: Some(plain.len() as u64),
    };
    let mut want = vec![
        BackupInfo {
            slug: "0a1b2c3d".into(),
            name: "Old style".into(),
            date: utc("2025-01-01T00:00:00Z"),
            size: Some(pax.len() as u64),
        },
        BackupInfo {
            slug: "9f8e7d6c".into(),
            name: "Automatic backup 2026.4.1".into(),
            date: utc("2026-04-02T03:00:00.5Z"),
            size: Some(ha.len() as u64),
        },
        plain_info,
    ];
    want.sort_by_key(|b| b.date);
    assert_eq!(list, want);

    let json = read_backup_json(dir.path().join("0a1b2c3d.tar"))
        .unwrap()
        .unwrap();
    assert_eq!(json["name"], "Old style");
    assert_eq!(read_backup_json(&plain_path).unwrap(), None);
}

#[tokio::test]
async fn folder_reads_archives_made_by_gnu_tar() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("homeassistant.tar.gz"), data(40_000, 14)).unwrap();
    let long = format!("{}.tar.gz", "addon_".repeat(25));
    std::fs::write(src.path().join(&long), data(1_000, 15)).unwrap();
    std::fs::write(
        src.path().join("backup.json"),
        backup_json("feedf00d", "From GNU tar", "2026-03-01T12:00:00+00:00"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    // GNU's own format (long names as `L` entries) and POSIX pax.
    for format in ["gnu", "posix"] {
        let archive = out.path().join(format!("{format}.tar"));
        let status = match std::process::Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(src.path())
            .arg("-cf")
            .arg(&archive)
            .args([
                "./homeassistant.tar.gz",
                &format!("./{long}"),
                "./backup.json",
            ])
            .status()
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping: no tar command ({e})");
                return;
            }
        };
        assert!(status.success());
        let json = read_backup_json(&archive).unwrap().unwrap();
        assert_eq!(json["slug"], "feedf00d", "{format}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(out.path().join("posix.tar"), dir.path().join("b.tar")).unwrap();
    let list = FolderSource::new(dir.path().to_owned())
        .list()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].slug, "feedf00d");
    assert_eq!(list[0].name, "From GNU tar");
}

#[tokio::test]
async fn folder_skips_hidden_partial_nested_and_unfinished_files() {
    let dir = tempfile::tempdir().unwrap();
    let ha = ha_backup("11112222", "Complete", "2026-04-01T03:00:00+00:00");
    write(dir.path(), "complete.tar", &ha);
    write(dir.path(), ".hidden.tar", &ha);
    write(dir.path(), "copying.tar.partial", &ha);
    write(dir.path(), "copying.tar.tmp", &ha);
    write(dir.path(), "readme.txt", b"not a backup");
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    write(&dir.path().join("nested"), "deep.tar", &ha);
    std::fs::create_dir(dir.path().join("folder.tar")).unwrap();
    // Being written: the Supervisor adds backup.json and the end marker last.
    let growing = ha_backup("33334444", "Growing", "2026-04-01T04:00:00+00:00");
    write(dir.path(), "growing.tar", &growing[..60_000]);
    write(dir.path(), "empty.tar", b"");

    let source = FolderSource::new(dir.path().to_owned());
    let slugs: Vec<String> = source
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.slug)
        .collect();
    assert_eq!(slugs, vec!["11112222"]);

    // Once finished it shows up (the listing cache notices the change).
    write(dir.path(), "growing.tar", &growing);
    let slugs: Vec<String> = source
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.slug)
        .collect();
    assert_eq!(slugs, vec!["11112222", "33334444"]);
}

#[tokio::test]
async fn folder_lists_a_copied_backup_once() {
    let dir = tempfile::tempdir().unwrap();
    let ha = ha_backup("55556666", "Twice", "2026-04-01T03:00:00+00:00");
    write(dir.path(), "a.tar", &ha);
    write(dir.path(), "b.tar", &ha);
    let list = FolderSource::new(dir.path().to_owned())
        .list()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn folder_opens_at_an_offset_and_follows_renames() {
    let dir = tempfile::tempdir().unwrap();
    let ha = ha_backup("77778888", "Open me", "2026-04-01T03:00:00+00:00");
    write(dir.path(), "first-name.tar", &ha);
    let source = Source::from(FolderSource::new(dir.path().to_owned()));
    assert_eq!(source.list().await.unwrap()[0].slug, "77778888");

    let (stream, total) = source.open("77778888", 0).await.unwrap();
    assert_eq!(total, ha.len() as u64);
    assert_eq!(read_all(stream).await.unwrap(), ha);

    // Renamed after listing: found again by its slug.
    std::fs::rename(
        dir.path().join("first-name.tar"),
        dir.path().join("renamed.tar"),
    )
    .unwrap();
    let (stream, total) = source.open("77778888", 12_345).await.unwrap();
    assert_eq!(total, ha.len() as u64);
    assert_eq!(read_all(stream).await.unwrap(), &ha[12_345..]);

    let (stream, _) = source.open("77778888", ha.len() as u64).await.unwrap();
    assert!(read_all(stream).await.unwrap().is_empty());
    let err = source
        .open("77778888", ha.len() as u64 + 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");

    // Plain archives open by their file stem.
    write(
        dir.path(),
        "plain.tar",
        &Tar::default().file("a", b"b").finish(),
    );
    let (stream, total) = source.open("plain", 512).await.unwrap();
    assert_eq!(read_all(stream).await.unwrap().len() as u64, total - 512);
}

#[tokio::test]
async fn folder_missing_backups_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "x.tar",
        &ha_backup("9999aaaa", "Doomed", "2026-04-01T03:00:00+00:00"),
    );
    let source = FolderSource::new(dir.path().to_owned());
    assert_eq!(source.list().await.unwrap().len(), 1);
    std::fs::remove_file(path).unwrap();

    let err = source.open("9999aaaa", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::NotFound(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("backup 9999aaaa is gone from"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    let gone = dir.path().join("no-such-folder");
    let source = FolderSource::new(gone.clone());
    let err = source.list().await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    assert!(
        err.to_string().contains(&gone.display().to_string()),
        "{err}"
    );
    let err = source.open("9999aaaa", 0).await.err().unwrap();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
}
