//! Any HTTP device: `url`, `method` (default GET), `headers`, and Basic, Digest (MD5 or
//! SHA-256, as the device challenges; [`super::digest`]) or bearer auth. The
//! answer is stored as it comes (no normalisation).

use async_trait::async_trait;

use super::{Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format};

pub struct Generic;

async fn fetch(client: &DeviceClient, device: &DeviceConfig) -> Result<Vec<u8>, DeviceError> {
    let url = device.url.as_deref().unwrap_or_default();
    let method = device
        .method
        .as_deref()
        .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(reqwest::Method::GET);
    let auth = match (device.auth.as_deref(), &device.password, &device.token) {
        (Some("none"), _, _) => Auth::None,
        (Some("bearer"), _, Some(t)) => Auth::Bearer(t),
        (_, Some(p), _) => Auth::Basic(device.username.as_deref().unwrap_or(""), p),
        _ => Auth::None,
    };
    let headers: Vec<(&str, &str)> = device
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    let r = if device.auth.as_deref() == Some("digest") {
        let password = device.password.as_ref().map(|p| p.expose()).unwrap_or("");
        let user = device.username.as_deref().unwrap_or("");
        super::digest::send(client, method, url, &headers, user, password, None).await?
    } else {
        client.send(method, url, &headers, auth).await?
    };
    let what = url::Url::parse(url)
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    let r = client.ok(&what, r)?;
    if r.body.is_empty() {
        return Err(client.error(format!("{what}: the answer is empty"), false));
    }
    Ok(r.body)
}

#[async_trait]
impl DeviceBackupHandler for Generic {
    fn extension(&self) -> &'static str {
        "bin"
    }
    fn format(&self) -> Format {
        Format::Binary
    }

    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError> {
        Ok(Artifact {
            bytes: fetch(client, device).await?,
            firmware: None,
        })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let n = fetch(client, device).await?.len();
        Ok(format!("{n} bytes"))
    }
}
