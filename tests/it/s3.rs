//! The S3 destination through the destination trait, against a real S3 server (moto) and a
//! fault-injecting proxy in front of it: multipart and single-PUT uploads read back byte for
//! byte, resuming from a lagging checkpoint, sessions that are gone, the part limit, aborting,
//! listing by prefix, deleting, versioning, error classification and the checksum check at
//! finish.

use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use offsite::destinations::s3::{MIN_PART, S3Config, S3Destination};
use offsite::destinations::{Destination, Sent, Session};
use offsite::transfer::TransferError;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::support::fault::hex;
use crate::support::s3::{Fault, FaultProxy, Moto};

const PART: u64 = MIN_PART;

fn data(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn config(endpoint: &str, bucket: &str, prefix: &str, extra: &str) -> S3Config {
    toml::from_str(&format!(
        "endpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{bucket}\"\n\
         prefix = \"{prefix}\"\naddressing = \"path\"\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing-secret\"\n{extra}"
    ))
    .unwrap()
}

fn destination(endpoint: &str, bucket: &str, prefix: &str) -> S3Destination {
    S3Destination::new(
        &config(endpoint, bucket, prefix, ""),
        reqwest::Client::new(),
    )
    .unwrap()
}

async fn read_all(d: &S3Destination, remote: &str, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    d.open_at(remote, offset)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

/// Uploads `bytes` in PART-sized chunks through the trait.
async fn upload(d: &S3Destination, remote: &str, bytes: &Bytes) -> Session {
    let size = bytes.len() as u64;
    let chunk = d.chunk_rules().chunk_for(PART, size).unwrap();
    let mut session = d.begin(remote, size, chunk).await.unwrap();
    let mut offset = 0;
    while size - offset > chunk {
        let piece = bytes.slice(offset as usize..(offset + chunk) as usize);
        d.append(&mut session, offset, piece).await.unwrap();
        offset += chunk;
    }
    let sha = sha256_hex(bytes);
    let sent = Sent { size, sha256: &sha };
    let last = bytes.slice(offset as usize..);
    d.finish(&mut session, offset, last, remote, &sent)
        .await
        .unwrap();
    session
}

#[tokio::test]
async fn multipart_upload_reads_back_byte_identical() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "backups");
    let bytes = data(2 * PART as usize + 12_345, 1);
    let remote = "backups/full_2026-12-01T03-00-00Z.tar";
    let session = upload(&d, remote, &bytes).await;
    assert!(session.0["upload_id"].is_string(), "multipart: {session:?}");
    assert_eq!(session.0["parts"].as_array().unwrap().len(), 3);

    assert_eq!(read_all(&d, remote, 0).await, bytes.as_ref());
    let at = PART as usize + 7;
    assert_eq!(read_all(&d, remote, at as u64).await, &bytes[at..]);
    assert!(read_all(&d, remote, bytes.len() as u64).await.is_empty());

    let stat = d.stat(remote).await.unwrap().expect("committed");
    assert_eq!(stat.size, bytes.len() as u64);
    // AWS writes the composite checksum with "-3"; moto without.
    assert!(
        stat.content_hash
            .as_deref()
            .is_some_and(|h| !h.starts_with("etag:")),
        "composite checksum: {stat:?}"
    );
    let listed = d.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "backups/full_2026-12-01T03-00-00Z.tar");

    let same = d
        .same_content(
            &stat,
            Box::pin(std::io::Cursor::new(bytes.to_vec())),
            bytes.len() as u64,
        )
        .await
        .unwrap();
    assert!(same, "the stored object holds the source");
    let mut other = bytes.to_vec();
    other[PART as usize + 1] ^= 1;
    let same = d
        .same_content(
            &listed[0],
            Box::pin(std::io::Cursor::new(other)),
            bytes.len() as u64,
        )
        .await
        .unwrap();
    assert!(!same, "one flipped bit is another content");
    assert!(d.partials().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_small_object_is_one_put() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "");
    let bytes = data(1000, 2);
    let remote = "/small.tar";
    let session = upload(&d, remote, &bytes).await;
    assert!(
        session.0["upload_id"].is_null(),
        "no multipart: {session:?}"
    );
    assert!(d.partials().await.unwrap().is_empty());
    let (_, uploads) = moto.get("?uploads").await;
    assert!(!uploads.contains("<Upload>"), "{uploads}");
    assert_eq!(read_all(&d, remote, 0).await, bytes.as_ref());
    let stat = d.stat(remote).await.unwrap().unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
    assert_eq!(stat.content_hash.as_deref(), Some(b64.as_str()));
    assert_eq!(stat.path, "/small.tar");
    assert_eq!(d.list().await.unwrap()[0].path, "/small.tar");
    let same = d
        .same_content(&stat, Box::pin(std::io::Cursor::new(bytes.to_vec())), 1000)
        .await
        .unwrap();
    assert!(same);
}

#[tokio::test]
async fn resume_adopts_a_part_the_checkpoint_missed() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "b");
    let bytes = data(2 * PART as usize + 99, 3);
    let size = bytes.len() as u64;
    let remote = "b/resumed.tar";
    let mut session = d.begin(remote, size, PART).await.unwrap();
    d.append(&mut session, 0, bytes.slice(..PART as usize))
        .await
        .unwrap();
    let checkpoint = session.clone();
    // The second part reaches the server, but the job dies before it checkpoints.
    d.append(
        &mut session,
        PART,
        bytes.slice(PART as usize..2 * PART as usize),
    )
    .await
    .unwrap();

    let mut resumed: Session =
        serde_json::from_str(&serde_json::to_string(&checkpoint).unwrap()).unwrap();
    let at = d.position(&mut resumed, PART).await.unwrap();
    assert_eq!(at, 2 * PART, "ListParts shows the second part");
    assert_eq!(resumed.0["parts"][1]["etag"], session.0["parts"][1]["etag"]);
    // The source disagrees with the adopted part: the session cannot go on.
    assert!(matches!(
        d.caught_up(&mut resumed.clone(), PART, &data(PART as usize, 9)),
        Err(TransferError::SessionGone(_))
    ));
    d.caught_up(&mut resumed, PART, &bytes[PART as usize..2 * PART as usize])
        .unwrap();
    assert_eq!(
        resumed, session,
        "the adopted part is recorded as if acknowledged"
    );
    let sha = sha256_hex(&bytes);
    d.finish(
        &mut resumed,
        at,
        bytes.slice(at as usize..),
        remote,
        &Sent { size, sha256: &sha },
    )
    .await
    .unwrap();
    assert_eq!(read_all(&d, remote, 0).await, bytes.as_ref());
}

#[tokio::test]
async fn an_adopted_part_never_caught_up_is_checked_at_finish() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "");
    let bytes = data(2 * PART as usize + 5, 8);
    let size = bytes.len() as u64;
    let remote = "/adopted.tar";
    let mut session = d.begin(remote, size, PART).await.unwrap();
    let checkpoint = session.clone();
    d.append(&mut session, 0, bytes.slice(..PART as usize))
        .await
        .unwrap();
    let mut resumed = checkpoint;
    assert_eq!(d.position(&mut resumed, 0).await.unwrap(), PART);
    // moto lists no part checksums: without caught_up, finish takes part 1's checksum from the
    // committed object and still checks the rest against what it sent.
    d.append(
        &mut resumed,
        PART,
        bytes.slice(PART as usize..2 * PART as usize),
    )
    .await
    .unwrap();
    let sha = sha256_hex(&bytes);
    let file = d
        .finish(
            &mut resumed,
            2 * PART,
            bytes.slice(2 * PART as usize..),
            remote,
            &Sent { size, sha256: &sha },
        )
        .await
        .unwrap();
    assert_eq!(file.size, size);
    assert_eq!(
        resumed.0["parts"][0]["sha256"], session.0["parts"][0]["sha256"],
        "part 1's checksum, read back, is the one it was sent with"
    );
    assert_eq!(read_all(&d, remote, 0).await, bytes.as_ref());
}

#[tokio::test]
async fn an_aborted_upload_is_gone() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "p");
    let bytes = data(PART as usize, 4);
    let mut session = d.begin("p/aborted.tar", 3 * PART, PART).await.unwrap();
    d.append(&mut session, 0, bytes).await.unwrap();
    let partials = d.partials().await.unwrap();
    assert_eq!(partials.len(), 1);
    assert!(
        partials[0].label.contains("p/aborted.tar"),
        "{}",
        partials[0].label
    );
    // S3 says when an upload began, not when it was last written: never an orphan by age.
    assert_eq!(partials[0].idle, None);

    // The sweep's session (from ListMultipartUploads) is enough to abort it.
    d.abandon(&partials[0].session).await.unwrap();
    assert!(d.partials().await.unwrap().is_empty());
    let (_, uploads) = moto.get("?uploads").await;
    assert!(!uploads.contains("<Upload>"), "{uploads}");
    // Again: already gone is fine.
    d.abandon(&session).await.unwrap();

    let gone = d.position(&mut session, PART).await;
    assert!(
        matches!(gone, Err(TransferError::SessionGone(_))),
        "{gone:?}"
    );
    // (UploadPart to an aborted upload: AWS answers NoSuchUpload, moto 5.1.22 a bare 500.)
}

#[tokio::test]
async fn the_part_size_fits_the_part_limit() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let c = config(&moto.endpoint(), &moto.bucket, "", "max_parts = 1000");
    let d = S3Destination::new(&c, reqwest::Client::new()).unwrap();
    let size = 20u64 << 30;
    let chunk = d.chunk_rules().chunk_for(PART, size).unwrap();
    assert!(size.div_ceil(chunk) <= 1000, "{chunk}");
    assert!(
        chunk < 2 * (size / 1000),
        "no bigger than it must be: {chunk}"
    );
    let session = d.begin("/big.tar", size, chunk).await.unwrap();
    d.abandon(&session).await.unwrap();
    let too_many = d.begin("/big.tar", size, PART).await;
    assert!(
        matches!(too_many, Err(TransferError::Permanent(_))),
        "{too_many:?}"
    );
    assert!(d.partials().await.unwrap().is_empty());
}

#[tokio::test]
async fn list_by_prefix_and_delete() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.put("a/one.tar", b"1").await;
    moto.put("a/two.tar", b"22").await;
    moto.put("a/deeper/three.tar", b"333").await;
    moto.put("ab/four.tar", b"4444").await;
    moto.put("b/five.tar", b"55555").await;
    let a = destination(&moto.endpoint(), &moto.bucket, "/a/");
    assert_eq!(a.root(), "a");
    assert_eq!(a.info().location, format!("s3://{}/a", moto.bucket));
    let mut listed: Vec<(String, u64)> = a
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [("a/one.tar".to_string(), 1), ("a/two.tar".to_string(), 2)]
    );
    a.delete("a/one.tar").await.unwrap();
    a.delete("a/one.tar").await.unwrap();
    a.delete("a/never-was.tar").await.unwrap();
    assert!(a.stat("a/one.tar").await.unwrap().is_none());
    assert_eq!(a.list().await.unwrap().len(), 1);
    let top = destination(&moto.endpoint(), &moto.bucket, "");
    assert!(
        top.list().await.unwrap().is_empty(),
        "no objects at the top level"
    );
    let missing = a.open_at("a/one.tar", 0).await;
    assert!(matches!(missing, Err(TransferError::NotFound(_))));
}

#[tokio::test]
async fn lists_page() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.put("paged/one.tar", b"1").await;
    moto.put("paged/two.tar", b"22").await;
    moto.put("paged/three.tar", b"333").await;
    let d = destination(&moto.endpoint(), &moto.bucket, "paged").with_page_size(1);
    let mut names: Vec<String> = d
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    names.sort();
    assert_eq!(names, ["paged/one.tar", "paged/three.tar", "paged/two.tar"]);

    let mut sessions = Vec::new();
    for name in ["paged/a.tar", "paged/b.tar", "paged/c.tar"] {
        sessions.push(d.begin(name, 3 * PART, PART).await.unwrap());
    }
    // (moto ignores max-uploads, so this page is whole; AWS would page it.)
    let mut labels: Vec<String> = d
        .partials()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.label)
        .collect();
    labels.sort();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert!(labels[2].contains("paged/c.tar"), "{labels:?}");

    // ListParts one part a page: both parts are found.
    let bytes = data(2 * PART as usize, 10);
    let mut session = sessions.pop().unwrap();
    let fresh = session.clone();
    d.append(&mut session, 0, bytes.slice(..PART as usize))
        .await
        .unwrap();
    d.append(&mut session, PART, bytes.slice(PART as usize..))
        .await
        .unwrap();
    let mut resumed = fresh;
    assert_eq!(d.position(&mut resumed, 0).await.unwrap(), 2 * PART);
    for s in sessions.iter().chain([&session]) {
        d.abandon(s).await.unwrap();
    }
    assert!(d.partials().await.unwrap().is_empty());
}

#[tokio::test]
async fn prepare_reports_versioning_and_a_missing_bucket() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "");
    assert_eq!(d.versioning().await.unwrap(), Some(false));
    d.prepare().await.unwrap();
    moto.set_versioning(true).await;
    assert_eq!(d.versioning().await.unwrap(), Some(true));
    d.prepare().await.unwrap();
    moto.set_versioning(false).await;
    assert_eq!(
        d.versioning().await.unwrap(),
        Some(false),
        "suspended is not enabled"
    );

    let missing = destination(&moto.endpoint(), "no-such-bucket-here", "");
    match missing.prepare().await {
        Err(TransferError::Permanent(m)) => {
            assert!(
                m.contains("NoSuchBucket") && m.contains("no-such-bucket-here"),
                "{m}"
            );
            assert!(
                !m.contains("X-Amz-Signature"),
                "no presigned URL in messages: {m}"
            );
        }
        other => panic!("a missing bucket is permanent: {other:?}"),
    }
}

#[tokio::test]
async fn refused_credentials_are_permanent_and_name_the_bucket() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let d = destination(&proxy.endpoint(), &moto.bucket, "");
    // A policy without s3:GetBucketVersioning: prepare cannot tell, but the bucket works.
    let denied = Fault::Error {
        status: 403,
        code: "AccessDenied",
    };
    proxy.fail(Method::GET, "versioning", 1, denied.clone());
    assert_eq!(d.versioning().await.unwrap(), None);
    proxy.fail(Method::GET, "versioning", 1, denied.clone());
    d.prepare().await.unwrap();
    // ... and when listing is refused too, prepare fails and says why.
    proxy.fail(Method::GET, "versioning", 1, denied.clone());
    proxy.fail(Method::GET, "list-type", 1, denied);
    match d.prepare().await {
        Err(TransferError::Permanent(m)) => {
            assert!(
                m.contains("AccessDenied") && m.contains(&moto.bucket),
                "{m}"
            );
            assert!(m.contains("credentials"), "{m}");
        }
        other => panic!("refused credentials are permanent: {other:?}"),
    }
    proxy.fail(
        Method::GET,
        "list-type",
        1,
        Fault::Error {
            status: 403,
            code: "InvalidAccessKeyId",
        },
    );
    let e = d.list().await;
    assert!(matches!(e, Err(TransferError::Permanent(_))), "{e:?}");
    assert_eq!(proxy.pending(), 0);
}

#[tokio::test]
async fn errors_are_classified_for_the_retry_decision() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let d = destination(&proxy.endpoint(), &moto.bucket, "")
        .with_stall_timeout(Duration::from_secs(30));
    let remote = "/faults.tar";
    let bytes = data(2 * PART as usize + 1, 6);
    let mut session = d.begin(remote, bytes.len() as u64, PART).await.unwrap();
    let part1 = bytes.slice(..PART as usize);

    proxy.fail(
        Method::PUT,
        "partNumber",
        1,
        Fault::SlowDown {
            retry_after_secs: 7,
        },
    );
    match d.append(&mut session, 0, part1.clone()).await {
        Err(TransferError::RetryAfter { wait, message }) => {
            assert_eq!(wait, Duration::from_secs(7));
            assert!(message.contains("SlowDown"), "{message}");
        }
        other => panic!("503 with Retry-After: {other:?}"),
    }
    proxy.fail(Method::PUT, "partNumber", 1, Fault::InternalError);
    let e = d.append(&mut session, 0, part1.clone()).await;
    assert!(
        matches!(e, Err(TransferError::Temporary(ref m)) if m.contains("InternalError")),
        "{e:?}"
    );
    proxy.fail(Method::PUT, "partNumber", 1, Fault::Cut);
    let e = d.append(&mut session, 0, part1.clone()).await;
    assert!(
        matches!(e, Err(TransferError::Temporary(_))),
        "a dropped connection: {e:?}"
    );
    if let Err(TransferError::Temporary(m)) = &e {
        assert!(
            !m.contains("X-Amz-Signature"),
            "no presigned URL in messages: {m}"
        );
    }
    proxy.fail(
        Method::PUT,
        "partNumber",
        1,
        Fault::Error {
            status: 503,
            code: "SlowDown",
        },
    );
    let e = d.append(&mut session, 0, part1.clone()).await;
    assert!(
        matches!(e, Err(TransferError::Temporary(ref m)) if m.contains("SlowDown")),
        "503 without Retry-After backs off: {e:?}"
    );
    let impatient = destination(&proxy.endpoint(), &moto.bucket, "")
        .with_stall_timeout(Duration::from_millis(500));
    proxy.fail(Method::PUT, "partNumber", 1, Fault::Hang);
    let e = impatient.append(&mut session, 0, part1.clone()).await;
    assert!(
        matches!(e, Err(TransferError::Temporary(ref m)) if m.contains("no progress")),
        "stalled: {e:?}"
    );
    d.append(&mut session, 0, part1).await.unwrap();

    proxy.fail(Method::GET, "uploadId", 1, Fault::InternalError);
    let e = d.position(&mut session.clone(), PART).await;
    assert!(
        matches!(e, Err(TransferError::Temporary(_))),
        "ListParts 500: {e:?}"
    );

    // CompleteMultipartUpload answering 200 with an <Error> body is an error, not a backup.
    d.append(
        &mut session,
        PART,
        bytes.slice(PART as usize..2 * PART as usize),
    )
    .await
    .unwrap();
    proxy.fail(Method::POST, "uploadId", 1, Fault::OkWithError);
    let sha = sha256_hex(&bytes);
    let sent = Sent {
        size: bytes.len() as u64,
        sha256: &sha,
    };
    let last = bytes.slice(2 * PART as usize..);
    let e = d
        .finish(&mut session, 2 * PART, last.clone(), remote, &sent)
        .await;
    assert!(
        matches!(e, Err(TransferError::Temporary(ref m)) if m.contains("InternalError")),
        "{e:?}"
    );
    // moto did complete it: the finish tried again finds the object and checks it.
    let file = d
        .finish(&mut session, 2 * PART, last, remote, &sent)
        .await
        .unwrap();
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(read_all(&d, remote, 0).await, bytes.as_ref());
    assert_eq!(proxy.pending(), 0);
}

#[tokio::test]
async fn a_checksum_mismatch_at_finish_leaves_no_object() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let d = destination(&moto.endpoint(), &moto.bucket, "");
    let remote = "/corrupt.tar";
    let bytes = data(PART as usize + 10, 7);
    let mut session = d.begin(remote, bytes.len() as u64, PART).await.unwrap();
    d.append(&mut session, 0, bytes.slice(..PART as usize))
        .await
        .unwrap();
    // What the session recorded for part 1 is not what the server holds.
    use base64::Engine;
    session.0["parts"][0]["sha256"] = base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(b"other"))
        .into();
    let sha = sha256_hex(&bytes);
    let e = d
        .finish(
            &mut session,
            PART,
            bytes.slice(PART as usize..),
            remote,
            &Sent {
                size: bytes.len() as u64,
                sha256: &sha,
            },
        )
        .await;
    assert!(matches!(e, Err(TransferError::Permanent(_))), "{e:?}");
    assert!(
        d.stat(remote).await.unwrap().is_none(),
        "nothing that looks like a backup"
    );

    // A single PUT whose bytes do not have the source's SHA-256 is refused before it is sent.
    let small = d.begin("/small.tar", 3, PART).await.unwrap();
    let e = d
        .finish(
            &mut small.clone(),
            0,
            Bytes::from_static(b"abc"),
            "/small.tar",
            &Sent {
                size: 3,
                sha256: &sha256_hex(b"abd"),
            },
        )
        .await;
    assert!(matches!(e, Err(TransferError::Permanent(_))), "{e:?}");
    assert!(d.stat("/small.tar").await.unwrap().is_none());
}
