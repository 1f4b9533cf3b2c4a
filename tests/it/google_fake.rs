//! Self-tests of the Google Drive / Google OAuth fake (`support::google_drive`): that it answers
//! the way Google documents, so the Drive source's tests stand on something trustworthy.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::google_drive::{
    CLIENT_ID, CLIENT_SECRET, DOCUMENT, DOCX, EXPORT_LIMIT, FORM, FakeDrive, Fault,
};

const SCOPE: &str = "https://www.googleapis.com/auth/drive.readonly";

fn query_of(url: &str) -> HashMap<String, String> {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs().into_owned().collect()
}

async fn get(fake: &FakeDrive, token: &str, path_and_query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path_and_query}", fake.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn get_json(fake: &FakeDrive, token: &str, path_and_query: &str) -> (u16, Value) {
    let r = get(fake, token, path_and_query).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn post_token(fake: &FakeDrive, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(fake.token_url())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn oauth_code_pkce_exchange_refresh_and_revoke() {
    let fake = FakeDrive::start().await;
    let verifier = "v".repeat(43) + "-._~abc";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let redirect = "http://127.0.0.1:53682/callback";
    let mut auth = url::Url::parse(&fake.auth_url()).unwrap();
    auth.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", redirect)
        .append_pair("response_type", "code")
        .append_pair("scope", SCOPE)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("access_type", "offline")
        .append_pair("prompt", "consent")
        .append_pair("state", "xyz");
    let back = fake.consent(auth.as_str());
    assert!(back.starts_with(redirect), "{back}");
    let q = query_of(&back);
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["scope"], SCOPE);
    let code = q["code"].clone();

    // A non-loopback redirect is refused by the real endpoint, over HTTP.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bad = auth
        .as_str()
        .replace("127.0.0.1%3A53682", "evil.example%3A80");
    let r = no_redirects.get(bad).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("redirect_uri_mismatch"));
    let r = no_redirects.get(auth.as_str()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);

    let exchange = |code: String, verifier: String| {
        let fake = &fake;
        async move {
            post_token(
                fake,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                    ("redirect_uri", redirect),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    // Wrong verifier: invalid_grant, and the code is spent.
    let (status, body) = exchange(code.clone(), "w".repeat(50)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(body["error_description"], "Bad Request");
    let (status, _) = exchange(code, verifier.clone()).await;
    assert_eq!(status, 400);

    let code = query_of(&fake.consent(auth.as_str()))["code"].clone();
    let (status, body) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], SCOPE);
    let access = body["access_token"].as_str().unwrap().to_string();
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("ya29.") && refresh.starts_with("1//0"));
    // Single use.
    let (status, body) = exchange(code, verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (status, _) = get_json(&fake, &access, "/drive/v3/files/root").await;
    assert_eq!(status, 200);

    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    let (status, body) = post_token(&fake, &refresh_form).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let access2 = body["access_token"].as_str().unwrap().to_string();

    let (status, body) = post_token(
        &fake,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "999-other.apps.googleusercontent.com"),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_description"], "The OAuth client was not found.");

    let r = reqwest::Client::new()
        .post(format!("{}?token={refresh}", fake.revoke_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, body) = post_token(&fake, &refresh_form).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "Token has been expired or revoked."
    );
    // Its access tokens went with it.
    let (status, _) = get_json(&fake, &access2, "/drive/v3/files/root").await;
    assert_eq!(status, 401);
    assert_eq!(fake.token_requests(), 7);
}

#[tokio::test]
async fn expired_access_token_is_401_with_googles_body() {
    let fake = FakeDrive::start().await;
    let (refresh, access) = fake.issue_tokens(SCOPE);
    fake.expire_access_tokens();
    let r = get(&fake, &access, "/drive/v3/files?q=trashed%20%3D%20false").await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(body["error"]["errors"][0]["reason"], "authError");
    let (status, body) = post_token(
        &fake,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let access = body["access_token"].as_str().unwrap();
    let (status, body) = get_json(&fake, access, "/drive/v3/files").await;
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "drive#fileList");
}

#[tokio::test]
async fn changes_page_with_new_start_token_only_on_the_last_page() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    let (_, body) = get_json(&fake, &token, "/drive/v3/changes/startPageToken").await;
    assert_eq!(body["kind"], "drive#startPageToken");
    let start = body["startPageToken"].as_str().unwrap().to_string();

    let folder = fake.add_folder("Photos", "root");
    let a = fake.add_file("a.txt", &folder, b"alpha");
    let b = fake.add_file_sized("b.bin", &folder, 3000, 7);
    let c = fake.add_file("c.txt", "root", b"gamma");
    let d = fake.add_file("d.txt", "root", b"delta");
    fake.modify(&a, b"alpha, edited");
    fake.rename(&a, "a2.txt");
    fake.trash(&c);
    fake.delete_forever(&d);
    let drive = fake.add_shared_drive("Team");
    let shared = fake.add_file("team.txt", &drive, b"team");

    let mut seen: Vec<Value> = Vec::new();
    let mut page = start.clone();
    let mut pages = 0;
    let new_start = loop {
        let (status, body) = get_json(
            &fake,
            &token,
            &format!("/drive/v3/changes?pageToken={page}&pageSize=2&includeRemoved=true"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["kind"], "drive#changeList");
        pages += 1;
        seen.extend(body["changes"].as_array().unwrap().iter().cloned());
        match (body.get("nextPageToken"), body.get("newStartPageToken")) {
            (Some(next), None) => page = next.as_str().unwrap().to_string(),
            (None, Some(new)) => break new.as_str().unwrap().to_string(),
            other => panic!("a page must carry exactly one of the tokens: {other:?}"),
        }
    };
    assert_eq!(pages, 3);
    // One change per file (its latest), shared-drive items left out without the flags.
    let ids: Vec<&str> = seen.iter().map(|c| c["fileId"].as_str().unwrap()).collect();
    assert_eq!(ids, [&folder, &b, &a, &c, &d]);
    let by_id = |id: &str| seen.iter().find(|c| c["fileId"] == id).unwrap().clone();
    assert_eq!(by_id(&a)["file"]["name"], "a2.txt");
    assert_eq!(by_id(&a)["file"]["version"], "3");
    assert_eq!(by_id(&a)["file"]["size"], "13");
    assert_eq!(by_id(&c)["file"]["trashed"], true);
    assert_eq!(by_id(&d)["removed"], true);
    assert!(by_id(&d).get("file").is_none());
    assert_eq!(by_id(&b)["file"]["md5Checksum"], fake.md5(&b));

    // With the shared-drive flags the drive and its item show up too.
    let (_, body) = get_json(
        &fake,
        &token,
        &format!(
            "/drive/v3/changes?pageToken={start}&includeItemsFromAllDrives=true&supportsAllDrives=true"
        ),
    )
    .await;
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 7);
    assert!(
        changes
            .iter()
            .any(|c| c["changeType"] == "drive" && c["driveId"] == drive)
    );
    let team = changes.iter().find(|c| c["fileId"] == shared).unwrap();
    assert_eq!(team["file"]["driveId"], drive);
    assert_eq!(team["file"]["parents"][0], drive);

    // Nothing new since: an empty last page; a bogus token is 400 invalid.
    let (_, body) = get_json(
        &fake,
        &token,
        &format!("/drive/v3/changes?pageToken={new_start}"),
    )
    .await;
    assert_eq!(body["changes"].as_array().unwrap().len(), 0);
    assert_eq!(body["newStartPageToken"], new_start.as_str());
    let (status, body) = get_json(&fake, &token, "/drive/v3/changes?pageToken=99999").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["errors"][0]["location"], "pageToken");
}

#[tokio::test]
async fn files_list_pages_and_filters() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    for i in 0..5 {
        fake.add_file(&format!("f{i}.txt"), "root", b"x");
    }
    let gone = fake.add_file("gone.txt", "root", b"x");
    fake.trash(&gone);
    let drive = fake.add_shared_drive("Team");
    fake.add_file("team.txt", &drive, b"x");

    let (_, body) = get_json(
        &fake,
        &token,
        "/drive/v3/files?q=trashed%20%3D%20false&pageSize=3",
    )
    .await;
    assert_eq!(body["files"].as_array().unwrap().len(), 3);
    assert_eq!(body["incompleteSearch"], false);
    let next = body["nextPageToken"].as_str().unwrap();
    let (_, body) = get_json(
        &fake,
        &token,
        &format!("/drive/v3/files?q=trashed%20%3D%20false&pageSize=3&pageToken={next}"),
    )
    .await;
    assert_eq!(body["files"].as_array().unwrap().len(), 2);
    assert!(body.get("nextPageToken").is_none());

    let (_, body) = get_json(&fake, &token, "/drive/v3/files").await;
    assert_eq!(body["files"].as_array().unwrap().len(), 6);
    let (_, body) = get_json(
        &fake,
        &token,
        "/drive/v3/files?corpora=allDrives&includeItemsFromAllDrives=true&supportsAllDrives=true&q=trashed%3Dfalse",
    )
    .await;
    assert_eq!(body["files"].as_array().unwrap().len(), 6);
    let (_, body) = get_json(&fake, &token, "/drive/v3/drives").await;
    assert_eq!(body["drives"][0]["id"], drive.as_str());
    assert_eq!(body["drives"][0]["kind"], "drive#drive");

    let (status, body) = get_json(&fake, &token, "/drive/v3/files/1nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "File not found: 1nope.");
    let (_, root) = get_json(&fake, &token, "/drive/v3/files/root").await;
    assert_eq!(root["id"], fake.root_id().as_str());
}

#[tokio::test]
async fn media_download_honours_range() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    let id = fake.add_file_sized("big.bin", "root", 300_000, 42);
    assert_eq!(id.len(), 33);
    let content = fake.content(&id);
    assert_eq!(content.len(), 300_000);

    let r = get(&fake, &token, &format!("/drive/v3/files/{id}?alt=media")).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), content);

    let client = reqwest::Client::new();
    let url = format!("{}/drive/v3/files/{id}?alt=media", fake.base_url());
    let r = client
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100000-299999/300000");
    assert_eq!(r.bytes().await.unwrap(), content[100_000..]);
    let r = client
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap(), content[10..20]);
    let r = client
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);

    // A paused download, then released.
    let gate = fake.pause_download_at(&id, 200_000);
    let task = tokio::spawn({
        let url = url.clone();
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    });
    tokio::time::timeout(Duration::from_secs(10), gate.wait_paused())
        .await
        .unwrap();
    assert!(!task.is_finished());
    gate.release();
    assert_eq!(task.await.unwrap(), content);

    // A cut connection: the body is short.
    fake.cut_download_after(1000);
    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert!(r.bytes().await.is_err());
    assert_eq!(fake.media_downloads(&id), 6);

    // Docs Editors files have no binary content.
    let doc = fake.add_workspace("Notes", "root", DOCUMENT, 100);
    let (status, body) = get_json(&fake, &token, &format!("/drive/v3/files/{doc}?alt=media")).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["errors"][0]["reason"], "fileNotDownloadable");
}

#[tokio::test]
async fn export_has_a_size_limit_that_export_links_do_not() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    let small = fake.add_workspace("Small", "root", DOCUMENT, 5000);
    let r = get(
        &fake,
        &token,
        &format!("/drive/v3/files/{small}/export?mimeType={}", urlenc(DOCX)),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], DOCX);
    assert_eq!(r.bytes().await.unwrap(), fake.export_bytes(&small, DOCX));

    let big = fake.add_workspace("Big", "root", DOCUMENT, EXPORT_LIMIT + 1);
    let (status, body) = get_json(
        &fake,
        &token,
        &format!("/drive/v3/files/{big}/export?mimeType={}", urlenc(DOCX)),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "exportSizeLimitExceeded"
    );
    let meta = fake.metadata(&big).unwrap();
    let link = meta["exportLinks"][DOCX].as_str().unwrap();
    assert!(link.contains("/feeds/download/documents/export/Export?id="));
    let r = reqwest::Client::new()
        .get(link)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, EXPORT_LIMIT + 1);
    assert_eq!(bytes, fake.export_bytes(&big, DOCX));

    let form = fake.add_workspace("Survey", "root", FORM, 0);
    let (status, body) = get_json(
        &fake,
        &token,
        &format!("/drive/v3/files/{form}/export?mimeType=application%2Fpdf"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["errors"][0]["reason"], "fileNotExportable");
}

#[tokio::test]
async fn scheduled_faults_answer_with_drive_error_bodies() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    fake.fail_next_api(1, Fault::RateLimit403User);
    fake.fail_api_at(2, Fault::TooMany429);
    let (status, body) = get_json(&fake, &token, "/drive/v3/files").await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "userRateLimitExceeded"
    );
    assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
    let (status, _) = get_json(&fake, &token, "/drive/v3/files").await;
    assert_eq!(status, 429);
    let (status, _) = get_json(&fake, &token, "/drive/v3/files").await;
    assert_eq!(status, 200);
    assert_eq!(fake.counters().list, 1);
    assert_eq!(fake.api_requests(), 3);
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The kill -9 case: a client that goes away while its download is held frees the fake's side.
#[tokio::test]
async fn a_held_download_ends_when_the_client_goes_away() {
    let fake = FakeDrive::start().await;
    let (_, token) = fake.issue_tokens(SCOPE);
    let id = fake.add_file_sized("big.bin", "root", 2 << 20, 1);
    let gate = fake.pause_download_at(&id, 1 << 20);
    let url = format!("{}/drive/v3/files/{id}?alt=media", fake.base_url());
    let task = tokio::spawn(async move {
        let mut r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let mut n = 0u64;
        while n < 1 << 20 {
            n += r.chunk().await.unwrap().unwrap().len() as u64;
        }
        n
    });
    tokio::time::timeout(Duration::from_secs(10), gate.wait_paused())
        .await
        .unwrap();
    assert!(gate.holding());
    assert_eq!(task.await.unwrap(), 1 << 20);
    let mut left = 50;
    while gate.holding() && left > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left -= 1;
    }
    assert!(!gate.holding(), "the fake kept a dead client's download");
    assert_eq!(fake.bytes_served(), 1 << 20);
}
