//! Tasmota: `GET /dl` answers `Config_<host>_<version>.dmp`, the raw settings dump (binary,
//! firmware-specific, holds the Wi-Fi and MQTT passwords; stored owner-only). Auth: user
//! `admin` with the WebPassword, as HTTP Basic. In user mode (`WebServer 1`) the firmware
//! answers `/dl` with 200 and its main HTML page: that is refused here, not stored.

use async_trait::async_trait;

use super::{Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format};

pub struct Tasmota;

fn auth(device: &DeviceConfig) -> Auth<'_> {
    match &device.password {
        Some(p) => Auth::Basic(device.username.as_deref().unwrap_or("admin"), p),
        None => Auth::None,
    }
}

/// The version in `attachment; filename="Config_<host>_<version>.dmp"`.
fn version_of(disposition: &str) -> Option<String> {
    let name = disposition.split("filename=").nth(1)?.trim_matches('"');
    let stem = name.strip_suffix(".dmp")?;
    stem.rsplit('_').next().map(str::to_string)
}

#[async_trait]
impl DeviceBackupHandler for Tasmota {
    fn extension(&self) -> &'static str {
        "dmp"
    }
    fn format(&self) -> Format {
        Format::Binary
    }

    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError> {
        let base = device.base().unwrap_or_default();
        let r = client.get(&format!("{base}/dl"), auth(device)).await?;
        let r = client.ok("/dl", r)?;
        let disposition = r
            .headers
            .get(reqwest::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let html = r
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/html"));
        if html || !disposition.contains(".dmp") || r.body.is_empty() {
            return Err(client.error(
                "/dl did not return a settings dump (is the web server in user mode, WebServer 1?)",
                false,
            ));
        }
        Ok(Artifact {
            firmware: version_of(&disposition),
            bytes: r.body,
        })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let a = self.fetch_backup(client, device).await?;
        Ok(format!(
            "Tasmota {}",
            a.firmware.as_deref().unwrap_or("(version unknown)")
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_from_the_file_name() {
        assert_eq!(
            super::version_of("attachment; filename=\"Config_tasmota-1A2B_14.3.0.dmp\""),
            Some("14.3.0".into())
        );
    }
}
