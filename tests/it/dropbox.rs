//! The Dropbox client against the fake Dropbox: OAuth2 + PKCE, refresh and revocation, upload
//! sessions with their failure modes, listing, deleting, and what goes over the wire.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use offsite::config::Secret;
use offsite::destinations::dropbox::{
    DropboxClient, DropboxSettings, Entry, FileMetadata, Pkce, http_client,
};
use offsite::transfer::TransferError;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::dropbox::{FakeDropbox, content_hash};

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 4 * MIB;
const FAKE_ACCOUNT_ID: &str = "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc";

struct Setup {
    fake: FakeDropbox,
    dir: tempfile::TempDir,
    client: DropboxClient,
}

impl Setup {
    /// A fake and an authorized client.
    async fn new() -> Self {
        let setup = Self::unauthorized().await;
        authorize(&setup.fake, &setup.client).await;
        setup
    }

    async fn unauthorized() -> Self {
        let fake = FakeDropbox::start().await;
        let dir = tempfile::tempdir().unwrap();
        let client = client_for(&fake, dir.path().join("dropbox-token.json"));
        Self { fake, dir, client }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("dropbox-token.json")
    }

    /// Another client on the same token file, as after a restart or from another process.
    fn second_client(&self) -> DropboxClient {
        client_for(&self.fake, self.token_file())
    }

    fn stored_refresh_token(&self) -> String {
        let stored: Value = serde_json::from_slice(&std::fs::read(self.token_file()).unwrap())
            .expect("token file is JSON");
        stored["refresh_token"].as_str().unwrap().to_owned()
    }
}

fn client_for(fake: &FakeDropbox, token_file: PathBuf) -> DropboxClient {
    DropboxClient::new(
        DropboxSettings::at(fake.client_id(), &fake.base_url()),
        token_file,
        http_client().unwrap(),
    )
}

/// The user approves in the browser and pastes the code back.
async fn authorize(fake: &FakeDropbox, client: &DropboxClient) {
    let pkce = Pkce::generate();
    let code = fake.issue_auth_code(&pkce.challenge);
    client
        .exchange_code(&format!(" {code}\n"), &pkce.verifier, None)
        .await
        .expect("code exchange");
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    // Cheap, deterministic and not block-periodic, so misplaced chunks change the hash.
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// What a caller does: a session, 4 MiB appends, the tail with finish.
async fn upload(client: &DropboxClient, bytes: &[u8], path: &str) -> FileMetadata {
    let session = client.upload_start().await.unwrap();
    let all = Bytes::copy_from_slice(bytes);
    let mut offset = 0;
    while all.len() - offset > CHUNK {
        client
            .upload_append(&session, offset as u64, all.slice(offset..offset + CHUNK))
            .await
            .unwrap();
        offset += CHUNK;
    }
    client
        .upload_finish(&session, offset as u64, all.slice(offset..), path)
        .await
        .unwrap()
}

fn assert_free_of(message: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !message.contains(secret),
            "secret leaked into message: {message}"
        );
    }
}

// -- OAuth ------------------------------------------------------------------------------------

#[tokio::test]
async fn authorize_url_carries_pkce_and_offline_access() {
    let s = Setup::unauthorized().await;
    let pkce = Pkce::generate();
    let url = url::Url::parse(&s.client.authorize_url(&pkce, None, None)).unwrap();
    assert_eq!(url.path(), "/oauth2/authorize");
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("response_type"), Some("code"));
    assert_eq!(get("client_id"), Some(s.fake.client_id().as_str()));
    assert_eq!(get("token_access_type"), Some("offline"));
    assert_eq!(get("code_challenge"), Some(pkce.challenge.as_str()));
    assert_eq!(get("code_challenge_method"), Some("S256"));
    assert_eq!(get("redirect_uri"), None);
    assert_eq!(get("state"), None);
    assert!(!url.as_str().contains(&pkce.verifier));

    let url = s
        .client
        .authorize_url(&pkce, Some("http://127.0.0.1:8080/cb?x=1"), Some("s&t"));
    let url = url::Url::parse(&url).unwrap();
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(q.contains(&("redirect_uri".into(), "http://127.0.0.1:8080/cb?x=1".into())));
    assert!(q.contains(&("state".into(), "s&t".into())));

    let real = DropboxClient::new(
        DropboxSettings::new("key"),
        s.token_file(),
        http_client().unwrap(),
    );
    assert!(
        real.authorize_url(&pkce, None, None).starts_with(
            "https://www.dropbox.com/oauth2/authorize?response_type=code&client_id=key&"
        )
    );
}

#[tokio::test]
async fn pkce_exchange_stores_the_refresh_token_durably() {
    let s = Setup::unauthorized().await;
    assert!(!s.client.is_authorized());
    authorize(&s.fake, &s.client).await;
    assert!(s.client.is_authorized());
    assert_eq!(s.fake.token_grants("authorization_code"), 1);

    let stored: Value = serde_json::from_slice(&std::fs::read(s.token_file()).unwrap()).unwrap();
    assert!(
        stored["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(stored["account_id"], FAKE_ACCOUNT_ID);
    assert!(
        chrono::DateTime::parse_from_rfc3339(stored["obtained_at"].as_str().unwrap()).is_ok(),
        "{stored}"
    );
    assert!(
        stored.get("access_token").is_none(),
        "access tokens stay in memory"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["dropbox-token.json"]);

    // The access token from the exchange is used as is: no refresh yet.
    assert_eq!(s.client.account_id().await.unwrap(), FAKE_ACCOUNT_ID);
    assert_eq!(s.fake.token_grants("refresh_token"), 0);

    // After a restart only the refresh token is there, and it works.
    let restarted = s.second_client();
    assert!(restarted.is_authorized());
    assert_eq!(restarted.account_id().await.unwrap(), FAKE_ACCOUNT_ID);
    assert_eq!(s.fake.token_grants("refresh_token"), 1);

    let debug = format!("{:?}", s.client);
    assert_free_of(&debug, &[&s.stored_refresh_token()]);
}

#[tokio::test]
async fn bad_codes_are_permanent_and_leave_no_token() {
    let s = Setup::unauthorized().await;
    let pkce = Pkce::generate();

    let err = s
        .client
        .exchange_code("no-such-code", &pkce.verifier, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.starts_with("the code was not accepted: ")),
        "{err:?}"
    );

    let code = s.fake.issue_auth_code(&pkce.challenge);
    let other = Pkce::generate();
    let err = s
        .client
        .exchange_code(&code, &other.verifier, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.starts_with("the code was not accepted: ")),
        "{err:?}"
    );
    assert!(!s.client.is_authorized());
    assert!(!s.token_file().exists());

    // Codes are single-use.
    s.client
        .exchange_code(&code, &pkce.verifier, None)
        .await
        .unwrap();
    let err = s
        .client
        .exchange_code(&code, &pkce.verifier, None)
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
    assert!(
        s.client.is_authorized(),
        "a failed exchange keeps the old token"
    );
}

#[tokio::test]
async fn without_a_token_nothing_is_sent() {
    let s = Setup::unauthorized().await;
    for err in [
        s.client.account_id().await.unwrap_err(),
        s.client.upload_start().await.unwrap_err(),
        s.client.list_folder("").await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, TransferError::Unauthorized(m) if m == "not authorized yet"),
            "{err:?}"
        );
    }
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn expired_access_token_is_refreshed_once_and_the_call_retried() {
    let s = Setup::new().await;
    s.fake.expire_access_tokens();
    assert_eq!(s.client.account_id().await.unwrap(), FAKE_ACCOUNT_ID);
    assert_eq!(s.fake.token_grants("refresh_token"), 1);
    assert_eq!(s.fake.request_count("/2/users/get_current_account"), 2);

    // The same for an upload chunk, whose bytes are simply sent again.
    let session = s.client.upload_start().await.unwrap();
    s.fake.expire_access_tokens();
    let bytes = data(CHUNK, 1);
    s.client
        .upload_append(&session, 0, Bytes::from(bytes.clone()))
        .await
        .unwrap();
    let meta = s
        .client
        .upload_finish(&session, CHUNK as u64, Bytes::new(), "/r.bin")
        .await
        .unwrap();
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
    assert_eq!(s.fake.token_grants("refresh_token"), 2);

    // An injected 401 answers expired_access_token too.
    s.fake.fail_request(1, 401);
    s.client.account_id().await.unwrap();
    assert_eq!(s.fake.token_grants("refresh_token"), 3);
}

#[tokio::test]
async fn access_tokens_are_renewed_before_they_expire() {
    let s = Setup::unauthorized().await;
    // 6 s tokens: renewed after half their life instead of 5 minutes before the end.
    s.fake.set_access_token_ttl(6);
    authorize(&s.fake, &s.client).await;
    s.client.account_id().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    s.client.account_id().await.unwrap();
    assert_eq!(s.fake.token_grants("refresh_token"), 1);
    // No call bounced off an expired token.
    assert_eq!(s.fake.request_count("/2/users/get_current_account"), 2);
}

#[tokio::test]
async fn concurrent_callers_refresh_once() {
    let s = Setup::new().await;
    // A fresh process: no access token in memory yet.
    let client = s.second_client();
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = client.clone();
        jobs.spawn(async move { c.account_id().await });
    }
    while let Some(r) = jobs.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(s.fake.token_grants("refresh_token"), 1);

    // All of them bounce off the same expired token; one refresh serves them all.
    s.fake.expire_access_tokens();
    for _ in 0..8 {
        let c = client.clone();
        jobs.spawn(async move { c.list_folder("").await.map(|_| String::new()) });
    }
    while let Some(r) = jobs.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(s.fake.token_grants("refresh_token"), 2);
}

#[tokio::test]
async fn revoked_refresh_token_needs_a_new_authorization() {
    let s = Setup::new().await;
    let refresh_token = s.stored_refresh_token();
    s.fake.revoke_refresh_tokens();
    s.fake.expire_access_tokens();

    let err = s.client.account_id().await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Unauthorized(m)
            if m == "Dropbox refused the stored refresh token (revoked?); authorize again"),
        "{err:?}"
    );
    assert!(!s.client.is_authorized());
    assert_free_of(&format!("{err} {err:?}"), &[&refresh_token]);

    // Known revoked: later calls do not hammer the token endpoint.
    let token_calls = s.fake.request_count("/oauth2/token");
    let err = s.client.upload_start().await.unwrap_err();
    assert!(matches!(err, TransferError::Unauthorized(_)), "{err:?}");
    assert_eq!(s.fake.request_count("/oauth2/token"), token_calls);

    // The user authorizes again (here through another process sharing the token file).
    let cli = s.second_client();
    // It cannot know the stored token is revoked before it tries it.
    assert!(cli.is_authorized());
    authorize(&s.fake, &cli).await;
    assert!(s.client.is_authorized());
    assert_eq!(s.client.account_id().await.unwrap(), FAKE_ACCOUNT_ID);

    // And in the same process.
    s.fake.revoke_refresh_tokens();
    s.fake.expire_access_tokens();
    assert!(matches!(
        s.client.account_id().await,
        Err(TransferError::Unauthorized(_))
    ));
    authorize(&s.fake, &s.client).await;
    assert!(s.client.is_authorized());
    s.client.account_id().await.unwrap();
}

#[tokio::test]
async fn forget_deletes_the_token() {
    let s = Setup::new().await;
    s.client.forget().await.unwrap();
    assert!(!s.token_file().exists());
    assert!(!s.client.is_authorized());
    let err = s.client.account_id().await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Unauthorized(m) if m == "not authorized yet"),
        "{err:?}"
    );
    s.client.forget().await.unwrap();
}

#[tokio::test]
async fn an_app_secret_is_sent_with_basic_auth() {
    let fake = FakeDropbox::start().await;
    fake.set_client_secret(Some("app-secret-0123456789"));
    let dir = tempfile::tempdir().unwrap();
    let mut settings = DropboxSettings::at(fake.client_id(), &fake.base_url());
    settings.app_secret = Some(Secret::new("app-secret-0123456789"));
    let client = DropboxClient::new(
        settings.clone(),
        dir.path().join("t.json"),
        http_client().unwrap(),
    );
    authorize(&fake, &client).await;
    fake.expire_access_tokens();
    client.account_id().await.unwrap();
    assert_eq!(fake.token_grants("refresh_token"), 1);
    assert!(!format!("{client:?}").contains("app-secret-0123456789"));

    settings.app_secret = Some(Secret::new("wrong-secret-9876543210"));
    let wrong = DropboxClient::new(settings, dir.path().join("t.json"), http_client().unwrap());
    let err = wrong.account_id().await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("invalid_client")),
        "{err:?}"
    );
    assert_free_of(&format!("{err:?}"), &["wrong-secret-9876543210"]);
}

// -- uploads ----------------------------------------------------------------------------------

#[tokio::test]
async fn multi_chunk_upload_matches_the_content_hash() {
    let s = Setup::new().await;
    let bytes = data(3 * CHUNK + 12_345, 2);
    let meta = upload(&s.client, &bytes, "/Backups/host/2024-01-01.tar").await;
    assert_eq!(meta.size, bytes.len() as u64);
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
    assert_eq!(meta.path_display, "/Backups/host/2024-01-01.tar");
    assert_eq!(meta.path_lower, "/backups/host/2024-01-01.tar");
    assert_eq!(meta.name, "2024-01-01.tar");
    assert!(meta.rev.is_some() && meta.server_modified.is_some());
    let stored = s.fake.file("/Backups/host/2024-01-01.tar").unwrap();
    assert_eq!(stored.bytes(), bytes);
    assert_eq!(s.fake.request_count("/2/files/upload_session/append_v2"), 3);
    assert_eq!(s.fake.open_sessions(), 0);

    // Empty files too: nothing appended, an empty finish.
    let meta = upload(&s.client, &[], "/Backups/empty").await;
    assert_eq!(meta.size, 0);
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&[]).as_str())
    );
}

#[tokio::test]
async fn a_lost_append_answer_reports_the_offset_to_continue_from() {
    let s = Setup::new().await;
    let bytes = Bytes::from(data(2 * CHUNK + 100, 3));
    let session = s.client.upload_start().await.unwrap();
    s.client
        .upload_append(&session, 0, bytes.slice(..CHUNK))
        .await
        .unwrap();

    // Stored, but answered 500.
    s.fake.accept_then_fail(1);
    let err = s
        .client
        .upload_append(&session, CHUNK as u64, bytes.slice(CHUNK..2 * CHUNK))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");

    // The retry learns the server is ahead.
    let err = s
        .client
        .upload_append(&session, CHUNK as u64, bytes.slice(CHUNK..2 * CHUNK))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::IncorrectOffset(n) if n == 2 * CHUNK as u64),
        "{err:?}"
    );

    // finish reports it nested under lookup_failed; the client unwraps it the same way.
    let err = s
        .client
        .upload_finish(&session, 0, Bytes::new(), "/x.bin")
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::IncorrectOffset(n) if n == 2 * CHUNK as u64),
        "{err:?}"
    );

    let meta = s
        .client
        .upload_finish(
            &session,
            2 * CHUNK as u64,
            bytes.slice(2 * CHUNK..),
            "/x.bin",
        )
        .await
        .unwrap();
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
}

#[tokio::test]
async fn a_cut_connection_is_temporary_and_the_chunk_can_be_resent() {
    let s = Setup::new().await;
    let bytes = Bytes::from(data(CHUNK + 7, 4));
    let session = s.client.upload_start().await.unwrap();
    s.fake.drop_connection_mid_body(1);
    let err = s
        .client
        .upload_append(&session, 0, bytes.slice(..CHUNK))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    s.client
        .upload_append(&session, 0, bytes.slice(..CHUNK))
        .await
        .unwrap();
    let meta = s
        .client
        .upload_finish(&session, CHUNK as u64, bytes.slice(CHUNK..), "/cut.bin")
        .await
        .unwrap();
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
}

#[tokio::test]
async fn expired_or_finished_sessions_are_gone() {
    let s = Setup::new().await;
    let session = s.client.upload_start().await.unwrap();
    s.client
        .upload_append(&session, 0, Bytes::from(data(1000, 5)))
        .await
        .unwrap();
    s.fake.expire_upload_sessions();
    let err = s
        .client
        .upload_append(&session, 1000, Bytes::from(data(1000, 6)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::SessionGone(_)), "{err:?}");
    let err = s
        .client
        .upload_finish(&session, 1000, Bytes::new(), "/gone.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::SessionGone(_)), "{err:?}");
    assert!(err.to_string().contains("lookup_failed/not_found"), "{err}");

    // A finish whose answer was lost: the retry finds the session closed. Uploading the same
    // bytes again is harmless: identical content at the path is not a conflict.
    let bytes = data(CHUNK + 1, 7);
    let session = s.client.upload_start().await.unwrap();
    s.fake.accept_then_fail(1);
    let err = s
        .client
        .upload_finish(&session, 0, Bytes::from(bytes.clone()), "/twice.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    let err = s
        .client
        .upload_finish(&session, 0, Bytes::from(bytes.clone()), "/twice.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::SessionGone(_)), "{err:?}");
    let meta = upload(&s.client, &bytes, "/twice.bin").await;
    assert_eq!(
        meta.content_hash.as_deref(),
        Some(content_hash(&bytes).as_str())
    );
}

#[tokio::test]
async fn a_different_file_in_the_way_is_a_permanent_conflict() {
    let s = Setup::new().await;
    upload(&s.client, b"one", "/Backups/a.tar").await;
    let session = s.client.upload_start().await.unwrap();
    let err = s
        .client
        .upload_finish(&session, 0, Bytes::from_static(b"two"), "/backups/A.tar")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("path/conflict/file")),
        "{err:?}"
    );
    assert_eq!(s.fake.file("/Backups/a.tar").unwrap().bytes(), b"one");

    let session = s.client.upload_start().await.unwrap();
    let err = s
        .client
        .upload_finish(&session, 0, Bytes::from_static(b"x"), "no-leading-slash")
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn non_ascii_paths_survive_the_header() {
    let s = Setup::new().await;
    let folder = "/Backups/Zürich 日本 😀";
    let path = format!("{folder}/tëst\u{7f}.bin");
    let meta = upload(&s.client, b"hello", &path).await;
    assert_eq!(meta.path_display, path);
    assert!(s.fake.file(&path).is_some());
    let listed = s.client.list_folder(folder).await.unwrap();
    assert_eq!(listed, vec![Entry::File(meta)]);
}

#[tokio::test]
async fn oversized_chunks_are_refused_locally() {
    let s = Setup::new().await;
    let session = s.client.upload_start().await.unwrap();
    let err = s
        .client
        .upload_append(&session, 0, Bytes::from(vec![0u8; 150 * MIB + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Permanent(_)), "{err:?}");
    assert_eq!(s.fake.request_count("/2/files/upload_session/append_v2"), 0);
}

// -- throttling and server trouble ------------------------------------------------------------

#[tokio::test]
async fn rate_limits_and_unavailability_name_a_wait() {
    let s = Setup::new().await;
    s.fake.rate_limit_next(1, 7);
    let err = s.client.account_id().await.unwrap_err();
    match &err {
        TransferError::RetryAfter { wait, message } => {
            assert_eq!(*wait, Duration::from_secs(7));
            assert!(message.contains("too_many_requests"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    s.client.account_id().await.unwrap();

    let session = s.client.upload_start().await.unwrap();
    s.fake.rate_limit_writes_next(1, 2);
    let err = s
        .client
        .upload_append(&session, 0, Bytes::from(data(CHUNK, 8)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::RetryAfter { wait, .. } if wait == Duration::from_secs(2)),
        "{err:?}"
    );

    s.fake.unavailable_next(1, 3);
    let err = s.client.list_folder("").await.unwrap_err();
    assert!(
        matches!(err, TransferError::RetryAfter { wait, .. } if wait == Duration::from_secs(3)),
        "{err:?}"
    );

    // Throttled while refreshing (request 1 bounces off the expired token, 2 is the refresh).
    s.fake.expire_access_tokens();
    s.fake.fail_request(2, 429);
    let err = s.client.account_id().await.unwrap_err();
    assert!(
        matches!(err, TransferError::RetryAfter { wait, .. } if wait == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(s.fake.request_count("/oauth2/token"), 2);
    s.client.account_id().await.unwrap();
}

#[tokio::test]
async fn server_errors_are_temporary_and_bad_requests_permanent() {
    let s = Setup::new().await;
    for status in [500, 502, 504] {
        s.fake.fail_request(1, status);
        let err = s.client.account_id().await.unwrap_err();
        assert!(
            matches!(&err, TransferError::Temporary(m) if m.contains(&status.to_string())),
            "{status}: {err:?}"
        );
    }
    s.fake.fail_request(1, 400);
    let err = s.client.list_folder("").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("injected bad request")),
        "{err:?}"
    );
    s.fake.fail_request(1, 409);
    let err = s.client.delete("/x").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("other")),
        "{err:?}"
    );
    // A token endpoint in trouble is temporary as well.
    s.fake.expire_access_tokens();
    s.fake.fail_request(2, 500);
    let err = s.client.account_id().await.unwrap_err();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
    s.client.account_id().await.unwrap();
    assert!(s.client.is_authorized());
}

#[tokio::test]
async fn an_unreachable_server_is_temporary() {
    let s = Setup::new().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut settings = DropboxSettings::at(s.fake.client_id(), &url);
    settings.api_url = s.fake.base_url();
    let client = DropboxClient::new(settings, s.token_file(), http_client().unwrap());
    let err = client.upload_start().await.unwrap_err();
    assert!(matches!(err, TransferError::Temporary(_)), "{err:?}");
}

// -- listing and deleting ---------------------------------------------------------------------

#[tokio::test]
async fn list_folder_follows_the_cursor_across_pages() {
    let s = Setup::new().await;
    let when = chrono::DateTime::parse_from_rfc3339("2024-03-01T12:00:00Z")
        .unwrap()
        .to_utc();
    for i in 0..11 {
        s.fake
            .put_file(&format!("/Backups/f{i:02}.tar"), &[i as u8; 3], when);
    }
    s.fake.put_file("/Backups/Sub/deep.tar", b"d", when);
    s.fake.put_file("/other.txt", b"o", when);
    s.fake.set_list_page_size(4);

    let entries = s.client.list_folder("/Backups").await.unwrap();
    assert_eq!(entries.len(), 12);
    assert!(s.fake.request_count("/2/files/list_folder/continue") >= 2);
    let files: Vec<&FileMetadata> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File(f) => Some(f),
            Entry::Folder { .. } => None,
        })
        .collect();
    assert_eq!(files.len(), 11);
    assert_eq!(files[0].path_display, "/Backups/f00.tar");
    assert_eq!(files[0].size, 3);
    assert_eq!(files[0].server_modified, Some(when));
    assert_eq!(
        files[0].content_hash.as_deref(),
        Some(content_hash(&[0; 3]).as_str())
    );
    assert!(entries.contains(&Entry::Folder {
        name: "Sub".into(),
        path_display: "/Backups/Sub".into()
    }));

    for root in ["", "/"] {
        let top = s.client.list_folder(root).await.unwrap();
        assert_eq!(top.len(), 2, "{root:?}: {top:?}");
    }
    assert_eq!(s.client.list_folder("/Nope").await.unwrap(), vec![]);
    let err = s.client.list_folder("/other.txt").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("path/not_folder")),
        "{err:?}"
    );
}

#[tokio::test]
async fn delete_removes_and_tolerates_missing_paths() {
    let s = Setup::new().await;
    let now = chrono::Utc::now();
    s.fake.put_file("/Backups/a.tar", b"a", now);
    s.fake.put_file("/Backups/old/b.tar", b"b", now);
    s.client.delete("/Backups/a.tar").await.unwrap();
    assert!(s.fake.file("/Backups/a.tar").is_none());
    s.client.delete("/Backups/a.tar").await.unwrap();
    s.client.delete("/Backups/old").await.unwrap();
    assert!(s.fake.file("/Backups/old/b.tar").is_none());
    assert!(!s.fake.folder_exists("/Backups/old"));
    let err = s.client.delete("relative").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Permanent(m) if m.contains("malformed_path")),
        "{err:?}"
    );
}

// -- on the wire ------------------------------------------------------------------------------

/// Read one request head (up to the blank line) byte by byte.
async fn read_head(socket: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    String::from_utf8(buf).expect("an ASCII request head")
}

/// An HTTP server answering `replies` (status, JSON body) in order, one request per
/// connection; hands back every request's head and body.
async fn scripted_host(
    replies: Vec<(u16, String)>,
) -> (String, tokio::task::JoinHandle<Vec<(String, Vec<u8>)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (status, reply) in replies {
            let (mut socket, _) = listener.accept().await.unwrap();
            let head = read_head(&mut socket).await;
            let len: usize = header(&head, "content-length")
                .expect("a Content-Length header")
                .parse()
                .unwrap();
            let mut body = vec![0u8; len];
            socket.read_exact(&mut body).await.unwrap();
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            seen.push((head, body));
        }
        seen
    });
    (url, task)
}

/// An HTTP server that takes one request head and then never reads the body.
async fn stalling_host() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_head(&mut socket).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    (url, task)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn client_with_content_host(s: &Setup, content_url: &str) -> DropboxClient {
    let mut settings = DropboxSettings::at(s.fake.client_id(), &s.fake.base_url());
    settings.content_url = content_url.to_owned();
    DropboxClient::new(settings, s.token_file(), http_client().unwrap())
}

#[tokio::test]
async fn content_calls_send_a_length_octets_and_an_ascii_argument() {
    let s = Setup::new().await;
    let (url, server) = scripted_host(vec![(
        200,
        r#"{"name":"😀.bin","path_lower":"/zürich/😀.bin","path_display":"/Zürich/😀.bin","id":"id:a","size":3145728,"rev":"01","content_hash":"00","server_modified":"2024-01-01T00:00:00Z","client_modified":"2024-01-01T00:00:00Z"}"#
            .to_owned(),
    )])
    .await;
    let client = client_with_content_host(&s, &url).await;
    let meta = client
        .upload_finish("sid", 7, Bytes::from(data(3 * MIB, 9)), "/Zürich/😀.bin")
        .await
        .unwrap();
    assert_eq!(meta.path_display, "/Zürich/😀.bin");
    let seen = server.await.unwrap();
    let (head, body) = &seen[0];
    assert_eq!(body.len(), 3 * MIB);
    assert!(
        head.starts_with("POST /2/files/upload_session/finish HTTP/1.1\r\n"),
        "{head}"
    );
    assert_eq!(header(head, "content-length"), Some("3145728"));
    assert_eq!(header(head, "transfer-encoding"), None);
    assert_eq!(
        header(head, "content-type"),
        Some("application/octet-stream")
    );
    assert!(header(head, "authorization").is_some_and(|v| v.starts_with("Bearer sl.")));
    let arg = header(head, "dropbox-api-arg").unwrap();
    assert!(arg.contains(r"/Z\u00fcrich/\ud83d\ude00.bin"), "{arg}");
    let arg: Value = serde_json::from_str(arg).unwrap();
    assert_eq!(arg["commit"]["path"], "/Zürich/😀.bin");
    assert_eq!(arg["commit"]["mode"], "add");
    assert_eq!(arg["commit"]["autorename"], false);
    assert_eq!(arg["commit"]["mute"], true);
    assert_eq!(arg["cursor"]["session_id"], "sid");
    assert_eq!(arg["cursor"]["offset"], 7);
}

#[tokio::test]
async fn a_stalled_upload_is_abandoned_as_temporary() {
    let s = Setup::new().await;
    let (url, _server) = stalling_host().await;
    let client = client_with_content_host(&s, &url)
        .await
        .with_stall_timeout(Duration::from_secs(1));
    let started = Instant::now();
    // Far more than loopback socket buffers absorb.
    let err = client
        .upload_append("sid", 0, Bytes::from(vec![0u8; 64 * MIB]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Temporary(m) if m.contains("no progress")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn list_folder_starts_over_when_the_cursor_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("t.json");
    std::fs::write(&token_file, r#"{"refresh_token":"stored-refresh-token"}"#).unwrap();
    let file = |name: &str| {
        format!(
            r#"{{".tag":"file","name":"{name}","id":"id:{name}","path_lower":"/b/{name}","path_display":"/b/{name}","size":1,"rev":"01","content_hash":"00","server_modified":"2024-01-01T00:00:00Z","client_modified":"2024-01-01T00:00:00Z"}}"#
        )
    };
    let (url, server) = scripted_host(vec![
        (
            200,
            r#"{"access_token":"sl.scripted","token_type":"bearer","expires_in":14400}"#.into(),
        ),
        (
            200,
            format!(
                r#"{{"entries":[{}],"cursor":"c1","has_more":true}}"#,
                file("old")
            ),
        ),
        (
            409,
            r#"{"error_summary":"reset/..","error":{".tag":"reset"}}"#.into(),
        ),
        (
            200,
            format!(
                r#"{{"entries":[{},{}],"cursor":"c2","has_more":false}}"#,
                file("a"),
                file("b")
            ),
        ),
    ])
    .await;
    let client = DropboxClient::new(
        DropboxSettings::at("key", &url),
        token_file,
        http_client().unwrap(),
    );
    let names: Vec<String> = client
        .list_folder("/b")
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::File(f) => f.name,
            Entry::Folder { name, .. } => name,
        })
        .collect();
    assert_eq!(names, ["a", "b"]);
    let seen = server.await.unwrap();
    let lines: Vec<&str> = seen
        .iter()
        .map(|(h, _)| h.lines().next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "POST /oauth2/token HTTP/1.1",
            "POST /2/files/list_folder HTTP/1.1",
            "POST /2/files/list_folder/continue HTTP/1.1",
            "POST /2/files/list_folder HTTP/1.1",
        ]
    );
    let form = String::from_utf8(seen[0].1.clone()).unwrap();
    assert!(form.contains("grant_type=refresh_token"), "{form}");
    assert!(
        form.contains("refresh_token=stored-refresh-token"),
        "{form}"
    );
    assert!(form.contains("client_id=key"), "{form}");
    let continued: Value = serde_json::from_slice(&seen[2].1).unwrap();
    assert_eq!(continued["cursor"], "c1");
    for (head, _) in &seen[1..] {
        assert_eq!(header(head, "content-type"), Some("application/json"));
        assert_eq!(header(head, "authorization"), Some("Bearer sl.scripted"));
    }
}
