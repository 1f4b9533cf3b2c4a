//! HTTP Digest (RFC 7616 / 2617) for one request through a [`DeviceClient`]: sent first
//! without credentials; a 401 with a `Digest` challenge is answered once (MD5 or SHA-256, as
//! the challenge says, through the `digest_auth` crate). A 401 to the answer is the
//! credentials' fault. A request that needs no credentials is sent once.

use super::{Auth, DeviceClient, DeviceError, Response};

/// One request with Digest credentials `user` / `password`.
pub async fn send(
    client: &DeviceClient,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    user: &str,
    password: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, DeviceError> {
    let r = client
        .send_body(method.clone(), url, headers, Auth::None, body.clone())
        .await?;
    if r.status != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(r);
    }
    let parsed = url::Url::parse(url).map_err(|e| client.error(e, false))?;
    let what = parsed.path().to_string();
    let header = r
        .headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.trim_start().to_ascii_lowercase().starts_with("digest"))
        .ok_or_else(|| {
            client.error(
                format!("{what}: the device asks for credentials but offers no Digest challenge (HTTP 401)"),
                false,
            )
        })?
        .to_string();
    let mut prompt = digest_auth::parse(&header)
        .map_err(|e| client.error(format!("{what}: unreadable Digest challenge ({e})"), false))?;
    let uri = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let http_method = digest_auth::HttpMethod::from(method.as_str().to_string());
    let ctx = digest_auth::AuthContext::new_with_method(
        user,
        password,
        &uri,
        body.as_deref(),
        http_method,
    );
    let answer = prompt
        .respond(&ctx)
        .map_err(|e| {
            client.error(
                format!("{what}: cannot answer the Digest challenge: {e}"),
                false,
            )
        })?
        .to_header_string();
    let mut with_auth: Vec<(&str, &str)> = headers.to_vec();
    with_auth.push(("authorization", answer.as_str()));
    client
        .send_body(method, url, &with_auth, Auth::None, body)
        .await
}
