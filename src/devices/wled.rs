//! WLED: `GET /cfg.json` and `GET /presets.json` (the UI's backup links; no PIN needed),
//! combined into one JSON artifact `{"cfg": …, "presets": …}`. WLED never serves
//! `wsec.json`, so the Wi-Fi (and other) passwords are not in the backup: a restore needs
//! them typed again. The firmware version comes from `/json/info` (`ver`).

use async_trait::async_trait;

use super::{
    Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format, json,
};

pub struct Wled;

#[async_trait]
impl DeviceBackupHandler for Wled {
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
        let cfg = client.get(&format!("{base}/cfg.json"), Auth::None).await?;
        let cfg = json(client, "/cfg.json", &client.ok("/cfg.json", cfg)?.body)?;
        let presets = client
            .get(&format!("{base}/presets.json"), Auth::None)
            .await?;
        let presets = json(
            client,
            "/presets.json",
            &client.ok("/presets.json", presets)?.body,
        )?;
        if !cfg.is_object() {
            return Err(client.error("/cfg.json is not a WLED configuration", false));
        }
        let firmware = version(client, &base).await;
        let bytes = serde_json::to_vec_pretty(&serde_json::json!({"cfg": cfg, "presets": presets}))
            .map_err(|e| client.error(e, false))?;
        Ok(Artifact { bytes, firmware })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let base = device.base().unwrap_or_default();
        let r = client.get(&format!("{base}/json/info"), Auth::None).await?;
        let info = json(client, "/json/info", &client.ok("/json/info", r)?.body)?;
        Ok(format!(
            "WLED {}",
            info.get("ver")
                .and_then(|v| v.as_str())
                .unwrap_or("(version unknown)")
        ))
    }
}

async fn version(client: &DeviceClient, base: &str) -> Option<String> {
    let r = client
        .get(&format!("{base}/json/info"), Auth::None)
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v.get("ver")?.as_str().map(str::to_string)
}
