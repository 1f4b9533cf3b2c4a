//! Shelly Gen1: `GET /settings`, with Basic auth when login is restricted. The answer holds
//! Wi-Fi and MQTT secrets in clear (stored owner-only). Its clock (`time`, `unixtime`) changes
//! on every read and is not part of the configuration; the firmware is `fw`.

use async_trait::async_trait;

use super::{
    Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format,
    canonical_json, json,
};

pub struct ShellyGen1;

fn auth(device: &DeviceConfig) -> Auth<'_> {
    match &device.password {
        Some(p) => Auth::Basic(device.username.as_deref().unwrap_or("admin"), p),
        None => Auth::None,
    }
}

#[async_trait]
impl DeviceBackupHandler for ShellyGen1 {
    fn extension(&self) -> &'static str {
        "json"
    }
    fn format(&self) -> Format {
        Format::Json
    }

    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError> {
        let base = device.base().unwrap_or_default();
        let r = client
            .get(&format!("{base}/settings"), auth(device))
            .await?;
        let r = client.ok("/settings", r)?;
        let v = json(client, "/settings", &r.body)?;
        if v.get("device").is_none() {
            return Err(client.error("/settings is not a Shelly Gen1 settings answer", false));
        }
        let firmware = v.get("fw").and_then(|f| f.as_str()).map(str::to_string);
        Ok(Artifact {
            bytes: r.body,
            firmware,
        })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let a = self.fetch_backup(client, device).await?;
        Ok(format!(
            "Shelly Gen1 {}",
            a.firmware.as_deref().unwrap_or("(firmware unknown)")
        ))
    }

    fn normalise(&self, bytes: &[u8]) -> Vec<u8> {
        canonical_json(bytes, |v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("time");
                o.remove("unixtime");
            }
        })
    }
}
