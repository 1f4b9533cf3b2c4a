//! SharePoint (Microsoft Graph, app-only) beyond the conformance suite: Graph's 320 KiB
//! fragment rule, sign-in (expiry mid-upload, refused credentials that never leak the secret),
//! name conflicts, throttled fragments, lost sessions, the QuickXorHash check, and the upload
//! URL kept out of what the API shows.

use std::time::{Duration, Instant};

use bytes::Bytes;
use offsite::destinations::sharepoint::{SharePointConfig, SharePointDestination};
use offsite::destinations::{Destination, RemoteFile, Sent};
use offsite::queue::JobState;
use offsite::transfer::TransferError;

use crate::common::{data, wait_for};
use crate::conformance::{
    CHUNK, SharePointBackend, acknowledged, assert_never_a_false_backup, scan, start,
};
use crate::support::graph::{
    CLIENT_ID, CLIENT_SECRET, FRAGMENT, FakeGraph, TENANT_ID, TEST_CERT_KEY, TEST_CERT_THUMBPRINT,
    UploadFault,
};

/// `[destinations.<name>]` for the fake, without its header.
pub(crate) fn toml(fake: &FakeGraph, chunk_mib: u64) -> String {
    format!(
        "type = \"sharepoint\"\nchunk_mib = {chunk_mib}\n{}",
        own_keys(fake, "")
    )
}

fn own_keys(fake: &FakeGraph, extra: &str) -> String {
    let mut keys = format!(
        "tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
         site = \"{}\"\nlibrary = \"Documents\"\nfolder = \"Backups/HA\"\n\
         login_url = \"{}\"\ngraph_url = \"{}\"\n",
        fake.site(),
        fake.login_url(),
        fake.graph_url()
    );
    // Later keys replace earlier ones.
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split('=').next().unwrap().trim();
        keys = keys
            .lines()
            .filter(|l| l.split('=').next().unwrap().trim() != key)
            .map(|l| format!("{l}\n"))
            .collect();
        keys.push_str(line);
        keys.push('\n');
    }
    keys
}

fn destination(fake: &FakeGraph, extra: &str) -> SharePointDestination {
    let config: SharePointConfig = toml::from_str(&own_keys(fake, extra)).unwrap();
    SharePointDestination::new(&config, reqwest::Client::new()).unwrap()
}

/// begin / append / finish through the trait, in `chunk`-byte fragments.
async fn upload(
    dest: &dyn Destination,
    remote: &str,
    bytes: &[u8],
    chunk: u64,
) -> Result<RemoteFile, TransferError> {
    let total = bytes.len() as u64;
    let mut session = dest.begin(remote, total, chunk).await?;
    let mut offset = 0u64;
    while total - offset > chunk {
        let piece = Bytes::copy_from_slice(&bytes[offset as usize..(offset + chunk) as usize]);
        dest.append(&mut session, offset, piece).await?;
        offset += chunk;
    }
    let sha = offsite::transfer::sha256_hex(bytes);
    let sent = Sent {
        size: total,
        sha256: &sha,
    };
    let last = Bytes::copy_from_slice(&bytes[offset as usize..]);
    dest.finish(&mut session, offset, last, remote, &sent).await
}

fn permanent(r: Result<impl std::fmt::Debug, TransferError>) -> String {
    match r {
        Err(TransferError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn chunk_mib_becomes_320_kib_fragments_sent_without_a_token() {
    let backend = SharePointBackend::new().await;
    let fake = &backend.fake;
    let dest_config = toml::from_str(&toml(fake, 1)).unwrap();
    let (mut h, inbox) = crate::snapshots::harness_with(vec![("dst", dest_config)], |_| {}).await;
    // 1 MiB is rounded up to 4 × 320 KiB.
    let fragment = 4 * FRAGMENT;
    let bytes = data(3 * fragment as usize + 12_345, 70);
    std::fs::write(inbox.join("small.tar"), &bytes).unwrap();
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let fragments = fake.fragments();
    assert_eq!(
        fragments,
        vec![
            (0, fragment),
            (fragment, fragment),
            (2 * fragment, fragment),
            (3 * fragment, 12_345)
        ]
    );
    assert_eq!(fake.authorized_fragments(), 0, "no Authorization header");
    assert_eq!(fake.open_sessions(), 0);
    h.stop().await;

    // A chunk Graph would refuse is refused at start-up, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[api]\nenabled = false\n[destinations.sp]\n{}",
            dir.path().display(),
            toml(fake, 60)
        ),
    )
    .unwrap();
    let e = offsite::config::Config::load(Some(&cfg))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("destinations.sp.chunk_mib") && e.contains("60 MiB"),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_token_mid_upload_is_replaced_and_the_upload_continues() {
    let backend = SharePointBackend::new().await;
    let fake = &backend.fake;
    let (mut h, inbox) = start(&backend, Some(CHUNK)).await;
    let bytes = data(4 * CHUNK as usize + 7, 71);
    std::fs::write(inbox.join("token.tar"), &bytes).unwrap();
    let job = scan(&h).await;
    wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
    let signed_in = fake.token_requests();
    fake.expire_tokens();
    // The attempt ends; the next one asks Graph about the file with the expired token.
    fake.upload_fault(1, UploadFault::Status(500));
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert!(done.attempt >= 2);
    assert!(
        fake.token_requests() > signed_in,
        "a new token was fetched after the 401"
    );
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let restarts = fake.fragments().iter().filter(|f| f.0 == 0).count();
    assert_eq!(restarts, 1, "continued, not started over");
    assert_eq!(fake.bytes_received(), bytes.len() as u64);
    h.stop().await;
}

#[tokio::test]
async fn refused_credentials_stop_start_up_and_never_show_the_secret() {
    let fake = FakeGraph::start().await;
    let wrong = "Wr0ng~secret.value-for-the-log-test_42";

    // Through the binary: start-up is refused, and no log line holds the secret.
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[api]\nenabled = false\n[log]\nlevel = \"debug\"\n\
             [sources.inbox]\ntype = \"folder\"\npath = \"{}\"\n[destinations.sp]\n\
             type = \"sharepoint\"\n{}",
            dir.path().join("data").display(),
            inbox.display(),
            own_keys(&fake, &format!("client_secret = \"{wrong}\""))
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut worker = crate::snapshots::spawn(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not refuse to start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("AADSTS7000215") && text.contains("client_secret"),
        "the log says the secret was refused: {text}"
    );
    assert!(!text.contains(wrong), "the secret is in the log: {text}");

    // Through prepare: each wrong field is named.
    for (extra, says) in [
        (format!("client_secret = \"{wrong}\""), "AADSTS7000215"),
        (
            "client_id = \"00000000-0000-0000-0000-000000000000\"".to_string(),
            "AADSTS700016",
        ),
        (
            "tenant_id = \"fabrikam.onmicrosoft.com\"".to_string(),
            "AADSTS90002",
        ),
    ] {
        let e = permanent(destination(&fake, &extra).prepare().await);
        let field = extra.split(' ').next().unwrap();
        assert!(e.contains(says) && e.contains(field), "{extra}: {e}");
        assert!(!e.contains(wrong) && !e.contains(CLIENT_SECRET), "{e}");
    }
}

#[tokio::test]
async fn name_conflicts_fail_replace_or_rename() {
    let fake = FakeGraph::start().await;
    let rename = destination(&fake, "");
    rename.prepare().await.unwrap();
    fake.put_file("Backups/HA/nightly.tar", b"the old backup");
    let remote = "/Backups/HA/nightly.tar";
    let bytes = data(3 * FRAGMENT as usize + 5, 72);

    let fail = destination(&fake, "conflict = \"fail\"");
    let e = permanent(upload(&fail, remote, &bytes, FRAGMENT).await);
    assert!(
        e.contains("nightly.tar") && e.contains("\"fail\"") && e.contains("nameAlreadyExists"),
        "{e}"
    );

    let stored = upload(&rename, remote, &bytes, FRAGMENT).await.unwrap();
    assert_eq!(stored.path, "/Backups/HA/nightly 1.tar");
    assert_eq!(
        fake.names_in("Backups/HA"),
        ["nightly 1.tar", "nightly.tar"]
    );
    assert_eq!(
        fake.content("Backups/HA/nightly.tar").unwrap(),
        b"the old backup"
    );
    assert!(fake.content("Backups/HA/nightly 1.tar").unwrap() == bytes);

    let replace = destination(&fake, "conflict = \"replace\"");
    let stored = upload(&replace, remote, &bytes, FRAGMENT).await.unwrap();
    assert_eq!(stored.path, remote);
    assert!(fake.content("Backups/HA/nightly.tar").unwrap() == bytes);
    assert_eq!(fake.open_sessions(), 0);

    // Listing follows @odata.nextLink across pages.
    fake.set_page_size(1);
    let mut listed: Vec<String> = replace
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["/Backups/HA/nightly 1.tar", "/Backups/HA/nightly.tar"]
    );

    // Over quota: refused before a byte is sent, with a plain reason, and retried later.
    fake.set_quota(Some(1000));
    match replace.begin("/Backups/HA/big.tar", 5000, FRAGMENT).await {
        Err(TransferError::Temporary(m)) => {
            assert!(
                m.contains("no space left") && m.contains("5000 bytes"),
                "{m}"
            )
        }
        other => panic!("507 is a temporary, plain error: {other:?}"),
    }
}

#[tokio::test]
async fn throttled_fragments_wait_as_told_and_continue() {
    let backend = SharePointBackend::new().await;
    let fake = &backend.fake;
    let (mut h, inbox) = start(&backend, None).await;
    let bytes = data(2 * CHUNK as usize + 1, 73);
    std::fs::write(inbox.join("throttled.tar"), &bytes).unwrap();
    fake.upload_fault(
        2,
        UploadFault::Throttle {
            status: 429,
            secs: 2,
        },
    );
    let began = Instant::now();
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert!(began.elapsed() >= Duration::from_secs(2), "waited as told");
    assert_eq!(done.attempt, 1, "a 429 uses no attempt");
    assert_never_a_false_backup(&h, &done, &bytes).await;
    assert_eq!(
        fake.bytes_received(),
        bytes.len() as u64,
        "nothing sent twice"
    );
    fake.upload_fault(
        1,
        UploadFault::Throttle {
            status: 503,
            secs: 1,
        },
    );
    let more = data(CHUNK as usize + 3, 74);
    std::fs::write(inbox.join("throttled2.tar"), &more).unwrap();
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.attempt, 1, "a 503 with Retry-After uses no attempt");
    h.stop().await;
}

#[tokio::test]
async fn a_lost_session_is_replaced_by_a_new_one() {
    let backend = SharePointBackend::new().await;
    let fake = &backend.fake;
    let (mut h, inbox) = start(&backend, None).await;
    let bytes = data(3 * CHUNK as usize + 9, 75);
    std::fs::write(inbox.join("lost.tar"), &bytes).unwrap();
    fake.upload_fault(2, UploadFault::Gone);
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let starts = fake.fragments().iter().filter(|f| f.0 == 0).count();
    assert_eq!(starts, 2, "a second session from byte 0");
    assert_eq!(fake.open_sessions(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_quick_xor_hash_mismatch_removes_the_item_and_is_not_recorded() {
    let fake = FakeGraph::start().await;
    let dest = destination(&fake, "");
    dest.prepare().await.unwrap();
    let bytes = data(2 * FRAGMENT as usize + 77, 76);
    fake.corrupt_next_commit();
    let e = permanent(upload(&dest, "/Backups/HA/rot.tar", &bytes, FRAGMENT).await);
    assert!(
        e.contains("QuickXorHash") && e.contains("not recorded as backed up"),
        "{e}"
    );
    assert!(fake.names_in("Backups/HA").is_empty(), "removed");
    // The same bytes, stored intact, carry the hash offsite computed while sending.
    let stored = upload(&dest, "/Backups/HA/rot.tar", &bytes, FRAGMENT)
        .await
        .unwrap();
    assert_eq!(
        stored.content_hash.as_deref(),
        Some(offsite::destinations::sharepoint::quick_xor_hash(&bytes).as_str())
    );
    let source: offsite::transfer::ByteStream = Box::pin(std::io::Cursor::new(bytes.clone()));
    assert!(
        dest.same_content(&stored, source, bytes.len() as u64)
            .await
            .unwrap()
    );
    // An empty file goes in one PUT (upload sessions hold no empty file).
    let empty = upload(&dest, "/Backups/HA/empty.tar", b"", FRAGMENT)
        .await
        .unwrap();
    assert_eq!(empty.size, 0);
    assert_eq!(
        empty.content_hash.as_deref(),
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    );
}

#[tokio::test]
async fn the_upload_url_never_shows_in_the_api() {
    let backend = SharePointBackend::new().await;
    let (mut h, inbox) = start(&backend, Some(CHUNK)).await;
    std::fs::write(inbox.join("secret.tar"), data(4 * CHUNK as usize, 77)).unwrap();
    let job = scan(&h).await;
    let running = wait_for(h.store(), job.id, |j| acknowledged(j) >= CHUNK).await;
    let stored_url = running.checkpoint.as_ref().unwrap()["session"]["upload_url"]
        .as_str()
        .unwrap()
        .to_string();
    let tempauth = stored_url.split("tempauth=").nth(1).unwrap().to_string();
    assert!(tempauth.len() > 20);
    let shown = crate::common::json_of(reqwest::Client::new().get(format!(
        "{}/api/v1/jobs/{}",
        h.base_url(),
        job.id
    )))
    .await;
    let text = shown.to_string();
    assert!(!text.contains(&tempauth), "the capability is shown: {text}");
    // Masked whole where this process registered it; elsewhere (the CLI reading the database)
    // its `tempauth` capability is masked by pattern (unit-tested in `redact`).
    let url = shown["checkpoint"]["session"]["upload_url"]
        .as_str()
        .unwrap();
    assert!(url == "***" || url.ends_with("tempauth=***"), "{text}");
    // A cancelled upload's session is closed at SharePoint.
    h.store().cancel(job.id).await.unwrap();
    h.running().state.executor.wake();
    h.wait_state(job.id, JobState::Cancelled).await;
    let fake = &backend.fake;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.open_sessions() > 0 {
        assert!(Instant::now() < deadline, "the session was left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn prepare_finds_the_library_creates_the_folder_and_names_what_is_wrong() {
    let fake = FakeGraph::start().await;
    destination(&fake, "").prepare().await.unwrap();
    assert_eq!(fake.names_in("Backups"), ["HA"], "the folder was created");
    // The library by its name or by the name in its URL; the site as a user pastes it.
    for extra in [
        "library = \"Archive\"",
        "library = \"Shared Documents\"",
        "site = \"contoso.sharepoint.com/sites/Backups/Shared%20Documents/Forms/AllItems.aspx\"",
    ] {
        destination(&fake, extra).prepare().await.unwrap();
    }
    let e = permanent(destination(&fake, "library = \"Nope\"").prepare().await);
    assert!(
        e.contains("\"Nope\"") && e.contains("Documents, Archive"),
        "{e}"
    );
    let e = permanent(
        destination(&fake, "site = \"contoso.sharepoint.com/sites/Nope\"")
            .prepare()
            .await,
    );
    assert!(e.contains("/sites/Nope") && e.contains("site"), "{e}");
    fake.put_file("Backups/file", b"x");
    let e = permanent(
        destination(&fake, "folder = \"Backups/file/x\"")
            .prepare()
            .await,
    );
    assert!(e.contains("not a folder"), "{e}");
}

#[test]
fn the_fakes_quick_xor_hash_is_independent_and_agrees() {
    use crate::support::graph::quick_xor_hash as fakes;
    use base64::Engine;
    use offsite::destinations::sharepoint::quick_xor_hash as ours;
    for (input, hash) in [
        ("", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ("Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
        ("/aNzzCFPS/A=", "/RjFHJgRgicsAR4ACAAAAAAAAAA="),
    ] {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(input)
            .unwrap();
        assert_eq!(fakes(&bytes), hash);
    }
    let bytes = data(3 * FRAGMENT as usize + 1234, 79);
    assert_eq!(fakes(&bytes), ours(&bytes));
}

#[tokio::test]
async fn a_certificate_signs_in_instead_of_a_secret() {
    let fake = FakeGraph::start().await;
    fake.register_test_certificate();
    let with_certificate = |thumbprint: &str, key: &str| {
        let keys: String = own_keys(&fake, "")
            .lines()
            .filter(|l| !l.starts_with("client_secret"))
            .map(|l| format!("{l}\n"))
            .collect();
        let config: SharePointConfig = toml::from_str(&format!(
            "{keys}certificate_key = \"{key}\"\ncertificate_thumbprint = \"{thumbprint}\"\n"
        ))
        .unwrap();
        SharePointDestination::new(&config, reqwest::Client::new())
    };
    let dest = with_certificate(TEST_CERT_THUMBPRINT, TEST_CERT_KEY).unwrap();
    dest.prepare().await.unwrap();
    let bytes = data(FRAGMENT as usize + 5, 78);
    let stored = upload(&dest, "/Backups/HA/cert.tar", &bytes, FRAGMENT)
        .await
        .unwrap();
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(fake.assertion_sign_ins(), 1);

    let other = "0000000000000000000000000000000000000000";
    let e = permanent(
        with_certificate(other, TEST_CERT_KEY)
            .unwrap()
            .prepare()
            .await,
    );
    assert!(
        e.contains("AADSTS700027") && e.contains("certificate_thumbprint"),
        "{e}"
    );
    let e = with_certificate(TEST_CERT_THUMBPRINT, "/nonexistent/key.pem")
        .err()
        .unwrap();
    assert!(
        e.contains("certificate_key") && e.contains("/nonexistent/key.pem"),
        "{e}"
    );
    let not_a_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        not_a_key.path(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = with_certificate(TEST_CERT_THUMBPRINT, not_a_key.path().to_str().unwrap())
        .err()
        .unwrap();
    assert!(
        e.contains("certificate_key") && e.contains("no RSA private key"),
        "{e}"
    );
}

#[tokio::test]
async fn a_fragment_sent_again_is_answered_416_and_the_upload_catches_up() {
    let fake = FakeGraph::start().await;
    let dest = destination(&fake, "");
    let bytes = data(3 * FRAGMENT as usize + 10, 80);
    let piece = |i: u64| {
        let end = ((i + 1) * FRAGMENT).min(bytes.len() as u64);
        Bytes::copy_from_slice(&bytes[(i * FRAGMENT) as usize..end as usize])
    };
    let remote = "/Backups/HA/twice.tar";
    let mut session = dest
        .begin(remote, bytes.len() as u64, FRAGMENT)
        .await
        .unwrap();
    // The checkpoint as it was before the first fragment's answer came.
    let mut stale = session.clone();
    dest.append(&mut session, 0, piece(0)).await.unwrap();
    match dest.append(&mut stale.clone(), 0, piece(0)).await {
        Err(TransferError::IncorrectOffset(at)) => assert_eq!(at, FRAGMENT),
        other => panic!("a 416 asks the session where it is: {other:?}"),
    }
    // A resume from that checkpoint: the session is further along, the bytes are hashed from
    // the source instead of being sent again.
    assert_eq!(dest.position(&mut stale, 0).await.unwrap(), FRAGMENT);
    dest.caught_up(&mut stale, 0, &piece(0)).unwrap();
    dest.append(&mut stale, FRAGMENT, piece(1)).await.unwrap();
    dest.append(&mut stale, 2 * FRAGMENT, piece(2))
        .await
        .unwrap();
    let sha = offsite::transfer::sha256_hex(&bytes);
    let sent = Sent {
        size: bytes.len() as u64,
        sha256: &sha,
    };
    let stored = dest
        .finish(&mut stale, 3 * FRAGMENT, piece(3), remote, &sent)
        .await
        .unwrap();
    assert_eq!(stored.path, remote);
    assert!(fake.content("Backups/HA/twice.tar").unwrap() == bytes);
    assert_eq!(fake.bytes_received(), bytes.len() as u64);
}

#[tokio::test]
async fn a_fragment_refused_401_opens_a_new_session_instead_of_failing() {
    // The upload URL carries its own authorization (`tempauth`); when SharePoint stops taking
    // it, a new access token cannot help, a new session does.
    let backend = SharePointBackend::new().await;
    let fake = &backend.fake;
    let (mut h, inbox) = start(&backend, None).await;
    let bytes = data(3 * CHUNK as usize + 5, 81);
    std::fs::write(inbox.join("tempauth.tar"), &bytes).unwrap();
    fake.upload_fault(2, UploadFault::Status(401));
    let job = scan(&h).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_never_a_false_backup(&h, &done, &bytes).await;
    let starts = fake.fragments().iter().filter(|f| f.0 == 0).count();
    assert_eq!(starts, 2, "a second session from byte 0");
    h.stop().await;
}

#[tokio::test]
async fn a_stored_file_whose_blocks_are_swapped_is_not_taken_for_ours() {
    // QuickXorHash XORs bytes into bit position 11·i mod 160: 160-byte blocks in another order
    // hash alike. The committed-file check must not be fooled by that.
    let fake = FakeGraph::start().await;
    let dest = destination(&fake, "");
    dest.prepare().await.unwrap();
    let ours = data(4 * 160, 82);
    let mut swapped = ours.clone();
    swapped[..160].copy_from_slice(&ours[160..320]);
    swapped[160..320].copy_from_slice(&ours[..160]);
    assert_ne!(swapped, ours);
    assert_eq!(
        offsite::destinations::sharepoint::quick_xor_hash(&swapped),
        offsite::destinations::sharepoint::quick_xor_hash(&ours),
        "the premise: QuickXorHash cannot tell them apart"
    );
    fake.put_file("Backups/HA/swapped.tar", &swapped);
    let stored = dest.stat("/Backups/HA/swapped.tar").await.unwrap().unwrap();
    let source: offsite::transfer::ByteStream = Box::pin(std::io::Cursor::new(ours.clone()));
    assert!(
        !dest
            .same_content(&stored, source, ours.len() as u64)
            .await
            .unwrap()
    );
    let source: offsite::transfer::ByteStream = Box::pin(std::io::Cursor::new(swapped.clone()));
    assert!(
        dest.same_content(&stored, source, swapped.len() as u64)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_managed_identity_signs_in_on_an_azure_vm_and_says_what_is_missing_elsewhere() {
    let fake = FakeGraph::start().await;
    let with_identity = |extra: &str| {
        let mut keys: Vec<String> = own_keys(
            &fake,
            &format!(
                "managed_identity = true\nidentity_endpoint = \"{}\"",
                fake.identity_endpoint()
            ),
        )
        .lines()
        .filter(|l| !l.starts_with("client_secret") && !l.starts_with("client_id"))
        .map(str::to_string)
        .collect();
        // Later keys replace earlier ones.
        for line in extra.lines() {
            let key = line.split('=').next().unwrap().trim();
            keys.retain(|l| l.split('=').next().unwrap().trim() != key);
            keys.push(line.to_string());
        }
        let config: SharePointConfig = toml::from_str(&keys.join("\n")).unwrap();
        config.validate().map_err(|(f, m)| format!("{f}: {m}"))?;
        SharePointDestination::new(&config, reqwest::Client::new())
    };

    // A VM without an identity: told so, for good.
    let e = permanent(with_identity("").unwrap().prepare().await);
    assert!(
        e.contains("managed_identity")
            && e.contains("system-assigned")
            && e.contains("Identity not found"),
        "{e}"
    );

    // With one: signs in through IMDS, never at the login endpoint, and uploads.
    fake.assign_system_identity(TENANT_ID);
    let dest = with_identity("").unwrap();
    dest.prepare().await.unwrap();
    let bytes = data(FRAGMENT as usize + 9, 91);
    let stored = upload(&dest, "/Backups/HA/identity.tar", &bytes, FRAGMENT)
        .await
        .unwrap();
    assert_eq!(stored.size, bytes.len() as u64);
    assert!(fake.identity_requests() >= 1);
    assert_eq!(fake.token_requests(), 0, "no app sign-in");

    // A user-assigned identity by its client id: unknown, then assigned.
    let uai = "7d0e1c55-user-assigned-identity-0001";
    let e = permanent(
        with_identity(&format!("client_id = \"{uai}\""))
            .unwrap()
            .prepare()
            .await,
    );
    assert!(e.contains(uai) && e.contains("Identity not found"), "{e}");
    fake.assign_user_identity(uai, TENANT_ID);
    with_identity(&format!("client_id = \"{uai}\""))
        .unwrap()
        .prepare()
        .await
        .unwrap();

    // The identity must belong to the configured tenant: the files go to its SharePoint.
    let e = permanent(
        with_identity("tenant_id = \"00000000-0000-0000-0000-000000000bad\"")
            .unwrap()
            .prepare()
            .await,
    );
    assert!(e.contains("tenant_id") && e.contains(TENANT_ID), "{e}");

    // No Instance Metadata Service (not an Azure VM): a temporary failure that says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dest = with_identity(&format!(
        "identity_endpoint = \"http://127.0.0.1:{port}/metadata/identity/oauth2/token\""
    ))
    .unwrap();
    match dest.prepare().await {
        Err(TransferError::Temporary(m)) => {
            assert!(
                m.contains("Instance Metadata Service") && m.contains("Azure VM"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }

    // An app credential beside it is a mistake the configuration names.
    let e = with_identity(&format!("client_secret = \"{CLIENT_SECRET}\""))
        .err()
        .unwrap();
    assert!(
        e.starts_with("client_secret: ") && e.contains("managed_identity"),
        "{e}"
    );
}
