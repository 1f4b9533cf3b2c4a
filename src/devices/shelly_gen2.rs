//! Shelly Gen2+ (Plus, Pro, Gen3/4): JSON-RPC over `POST /rpc`, Digest auth with SHA-256
//! (RFC 7616; user always `admin`, realm the device id) through the `digest_auth` crate.
//! One challenge serves every call of a fetch, with `nc` counting up from 1 as the firmware
//! wants; a `stale=true` answer (expired nonce) takes the new challenge once.
//!
//! The artifact is one JSON document: `Shelly.GetDeviceInfo` (no auth; the firmware `ver`),
//! `Shelly.GetConfig`, every script with its full source read through chunked
//! `Script.GetCode` (offset/len until `left` is 0 — one call silently truncates long
//! scripts), `Schedule.List`, `Webhook.List` and every `KVS.GetMany` page. The normaliser
//! drops the `rev` counters of schedules and webhooks and the scripts' `running` state.

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{
    Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format,
    canonical_json,
};

pub struct ShellyGen2;

/// Bytes asked for per `Script.GetCode` call.
const CHUNK: u64 = 2048;

struct Session<'a> {
    client: &'a DeviceClient,
    device: &'a DeviceConfig,
    url: String,
    challenge: Mutex<Option<digest_auth::WwwAuthenticateHeader>>,
}

impl Session<'_> {
    fn authorization(
        &self,
        prompt: &mut digest_auth::WwwAuthenticateHeader,
        body: &[u8],
    ) -> Result<String, DeviceError> {
        let Some(password) = &self.device.password else {
            return Err(self
                .client
                .error("the device asks for a password; set password", false));
        };
        let ctx = digest_auth::AuthContext::new_with_method(
            "admin",
            password.expose(),
            "/rpc",
            Some(body),
            digest_auth::HttpMethod::POST,
        );
        prompt
            .respond(&ctx)
            .map(|a| a.to_header_string())
            .map_err(|e| {
                self.client
                    .error(format!("cannot answer the Digest challenge: {e}"), false)
            })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, DeviceError> {
        let body = serde_json::to_vec(&json!({"id": 1, "method": method, "params": params}))
            .map_err(|e| self.client.error(e, false))?;
        let mut fresh = 0;
        loop {
            let auth = {
                let mut c = self.challenge.lock().await;
                match c.as_mut() {
                    Some(p) => Some(self.authorization(p, &body)?),
                    None => None,
                }
            };
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            let r = self
                .client
                .send_body(
                    reqwest::Method::POST,
                    &self.url,
                    &headers,
                    Auth::None,
                    Some(body.clone()),
                )
                .await?;
            if r.status == reqwest::StatusCode::UNAUTHORIZED
                && fresh < 1 + usize::from(auth.is_none())
            {
                let header = r
                    .headers
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let stale = header.contains("stale=true");
                if auth.is_some() && !stale {
                    return Err(self.client.error(
                        format!("{method}: the device refused the credentials (HTTP 401)"),
                        false,
                    ));
                }
                let prompt = digest_auth::parse(&header).map_err(|e| {
                    self.client.error(
                        format!("{method}: unreadable Digest challenge ({e})"),
                        false,
                    )
                })?;
                *self.challenge.lock().await = Some(prompt);
                fresh += 1;
                continue;
            }
            let r = self.client.ok(method, r)?;
            let v = super::json(self.client, method, &r.body)?;
            if let Some(e) = v.get("error") {
                return Err(self.client.error(
                    format!(
                        "{method}: error {} {}",
                        e.get("code").unwrap_or(&Value::Null),
                        e.get("message").and_then(|m| m.as_str()).unwrap_or("")
                    ),
                    false,
                ));
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    async fn script_code(&self, id: &Value) -> Result<String, DeviceError> {
        let mut code = String::new();
        loop {
            let r = self
                .call(
                    "Script.GetCode",
                    json!({"id": id, "offset": code.len(), "len": CHUNK}),
                )
                .await?;
            let data = r.get("data").and_then(|d| d.as_str()).unwrap_or("");
            let left = r.get("left").and_then(|l| l.as_u64()).unwrap_or(0);
            code.push_str(data);
            if left == 0 {
                return Ok(code);
            }
            if data.is_empty() {
                return Err(self.client.error(
                    format!("Script.GetCode of script {id}: {left} bytes left but none sent"),
                    true,
                ));
            }
        }
    }

    async fn kvs(&self) -> Result<Vec<Value>, DeviceError> {
        let mut items = Vec::new();
        loop {
            let r = self
                .call("KVS.GetMany", json!({"offset": items.len()}))
                .await?;
            let page: Vec<Value> = match r.get("items") {
                Some(Value::Array(a)) => a.clone(),
                // Older firmware: an object keyed by the key.
                Some(Value::Object(o)) => o
                    .iter()
                    .map(|(k, v)| {
                        let mut v = v.clone();
                        v["key"] = Value::String(k.clone());
                        v
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let total = r.get("total").and_then(|t| t.as_u64()).unwrap_or(0) as usize;
            let empty = page.is_empty();
            items.extend(page);
            if empty || items.len() >= total {
                return Ok(items);
            }
        }
    }
}

async fn device_info(client: &DeviceClient, base: &str) -> Result<Value, DeviceError> {
    let r = client
        .get(&format!("{base}/rpc/Shelly.GetDeviceInfo"), Auth::None)
        .await?;
    super::json(
        client,
        "Shelly.GetDeviceInfo",
        &client.ok("Shelly.GetDeviceInfo", r)?.body,
    )
}

#[async_trait]
impl DeviceBackupHandler for ShellyGen2 {
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
        let info = device_info(client, &base).await?;
        let s = Session {
            client,
            device,
            url: format!("{base}/rpc"),
            challenge: Mutex::new(None),
        };
        let config = s.call("Shelly.GetConfig", json!({})).await?;
        let list = s.call("Script.List", json!({})).await?;
        let mut scripts = Vec::new();
        for sc in list
            .get("scripts")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let id = sc.get("id").cloned().unwrap_or(Value::Null);
            let mut sc = sc.clone();
            sc["code"] = Value::String(s.script_code(&id).await?);
            scripts.push(sc);
        }
        let schedules = s.call("Schedule.List", json!({})).await?;
        let webhooks = s.call("Webhook.List", json!({})).await?;
        let kvs = s.kvs().await?;
        let firmware = info.get("ver").and_then(|v| v.as_str()).map(str::to_string);
        let doc = json!({
            "device_info": info, "config": config, "scripts": scripts,
            "schedules": schedules, "webhooks": webhooks, "kvs": kvs,
        });
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| client.error(e, false))?;
        Ok(Artifact { bytes, firmware })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let base = device.base().unwrap_or_default();
        let info = device_info(client, &base).await?;
        let s = Session {
            client,
            device,
            url: format!("{base}/rpc"),
            challenge: Mutex::new(None),
        };
        s.call("Shelly.GetConfig", json!({})).await?;
        Ok(format!(
            "Shelly {} {}",
            info.get("model").and_then(|v| v.as_str()).unwrap_or("Gen2"),
            info.get("ver")
                .and_then(|v| v.as_str())
                .unwrap_or("(firmware unknown)")
        ))
    }

    fn normalise(&self, bytes: &[u8]) -> Vec<u8> {
        canonical_json(bytes, |v| {
            for k in ["schedules", "webhooks"] {
                if let Some(o) = v.get_mut(k).and_then(|x| x.as_object_mut()) {
                    o.remove("rev");
                }
            }
            if let Some(a) = v.get_mut("scripts").and_then(|x| x.as_array_mut()) {
                for sc in a {
                    if let Some(o) = sc.as_object_mut() {
                        o.remove("running");
                    }
                }
            }
        })
    }
}
