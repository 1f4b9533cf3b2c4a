//! AVM FRITZ!Box over TR-064 (plain HTTP on port 49000 unless `host` names another port or
//! scheme): SOAP action `X_AVM-DE_GetConfigFile` of service
//! `urn:dslforum-org:service:DeviceConfig:1` at `/upnp/control/deviceconfig`, with the
//! mandatory export password (`NewX_AVM-DE_Password`, which encrypts the export's secrets),
//! behind HTTP Digest (MD5, as the box challenges). The answer's `NewX_AVM-DE_ConfigFileUrl`
//! is fetched at once (it works once, for ~30 s): without credentials, answering a Digest
//! challenge if the firmware asks for one; a `127.0.0.1` host in it is replaced with the
//! device's. The URL is a capability: it is registered with [`crate::redact`] before any
//! error or log line could carry it.
//!
//! Recent FRITZ!OS asks for a confirmation on the box (a button press or the phone) before it
//! exports: the SOAP fault (UPnP error 866, "second factor authentication required") becomes a
//! [`DeviceError`] with `waiting` set, recorded as "waiting for your confirmation", not a
//! failure to retry in a loop.
//!
//! The artifact is the `.export` text as the box sends it. The reference names no volatile
//! header lines, so there is no normaliser: the bytes are compared as they are.

use async_trait::async_trait;

use super::{
    Artifact, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format, digest,
};

pub struct FritzBox;

pub const DEFAULT_PORT: u16 = 49000;
pub const SERVICE: &str = "urn:dslforum-org:service:DeviceConfig:1";
pub const CONTROL_URL: &str = "/upnp/control/deviceconfig";
pub const ACTION: &str = "X_AVM-DE_GetConfigFile";
/// AVM's UPnP error code for "second factor authentication required".
pub const ERROR_SECOND_FACTOR: &str = "866";

/// `host` as a base URL, with port 49000 when it names none.
pub fn base(device: &DeviceConfig) -> Option<url::Url> {
    let b = device.base()?;
    let mut u = url::Url::parse(&b).ok()?;
    let explicit = device
        .host
        .as_deref()
        .map(|h| {
            let h = h.trim().trim_end_matches('/');
            let rest = h.split_once("://").map(|(_, r)| r).unwrap_or(h);
            rest.contains(':') && !rest.starts_with('[') || rest.contains("]:")
        })
        .unwrap_or(false);
    if !explicit && u.scheme() == "http" {
        u.set_port(Some(DEFAULT_PORT)).ok()?;
    }
    Some(u)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of the first `<tag>…</tag>` (any namespace prefix).
fn element(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("{tag}>"))?;
    let open_end = start + tag.len() + 1;
    // The opening tag must be `<tag>` or `<p:tag>`.
    let before = &xml[..start];
    if !before.ends_with('<') && !before.ends_with(':') {
        return None;
    }
    let rest = &xml[open_end..];
    let end = rest.find("</")?;
    Some(xml_unescape(rest[..end].trim()))
}

fn envelope(password: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<s:Envelope s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<s:Body><u:{ACTION} xmlns:u=\"{SERVICE}\"><NewX_AVM-DE_Password>{}</NewX_AVM-DE_Password></u:{ACTION}></s:Body></s:Envelope>",
        xml_escape(password)
    )
}

fn credentials<'a>(
    client: &DeviceClient,
    device: &'a DeviceConfig,
) -> Result<(&'a str, &'a str, &'a str), DeviceError> {
    let password = device
        .password
        .as_ref()
        .ok_or_else(|| client.error("the FRITZ!Box needs a password; set password", false))?;
    let export = device.export_password.as_ref().ok_or_else(|| {
        client.error(
            "the FRITZ!Box export needs an export password; set export_password",
            false,
        )
    })?;
    Ok((
        device.username.as_deref().unwrap_or(""),
        password.expose(),
        export.expose(),
    ))
}

/// The download URL of a fresh export.
async fn config_file_url(
    client: &DeviceClient,
    device: &DeviceConfig,
) -> Result<String, DeviceError> {
    let (user, password, export) = credentials(client, device)?;
    let mut control = base(device).ok_or_else(|| client.error("host is not a URL", false))?;
    control.set_path(CONTROL_URL);
    let soap_action = format!("\"{SERVICE}#{ACTION}\"");
    let r = digest::send(
        client,
        reqwest::Method::POST,
        control.as_str(),
        &[
            ("content-type", "text/xml; charset=\"utf-8\""),
            ("soapaction", soap_action.as_str()),
        ],
        user,
        password,
        Some(envelope(export).into_bytes()),
    )
    .await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    if !r.status.is_success() {
        if let Some(code) = element(&text, "errorCode") {
            let desc = element(&text, "errorDescription").unwrap_or_default();
            if code == ERROR_SECOND_FACTOR || desc.to_ascii_lowercase().contains("second factor") {
                return Err(DeviceError {
                    waiting: true,
                    ..client.error(
                        "waiting for your confirmation on the FRITZ!Box: press a button on the box \
                         (or confirm on the phone) when it asks, then fetch again \
                         (TR-064 answered UPnP error 866, second factor authentication required)",
                        true,
                    )
                });
            }
            return Err(client.error(
                format!("{ACTION}: the FRITZ!Box answered UPnP error {code} {desc}"),
                false,
            ));
        }
        return Err(client
            .ok(ACTION, r)
            .err()
            .unwrap_or_else(|| client.error(ACTION, false)));
    }
    let url = element(&text, "NewX_AVM-DE_ConfigFileUrl")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            client.error(
                format!("{ACTION}: the answer carries no NewX_AVM-DE_ConfigFileUrl"),
                false,
            )
        })?;
    // A capability: masked everywhere from here on.
    crate::redact::register(&url);
    let mut parsed = url::Url::parse(&url)
        .map_err(|_| client.error(format!("{ACTION}: the download URL is not a URL"), false))?;
    for (_, v) in parsed.query_pairs() {
        crate::redact::register(&v);
    }
    if parsed.host_str() == Some("127.0.0.1")
        && let Some(host) = base(device).and_then(|b| b.host_str().map(str::to_string))
    {
        parsed
            .set_host(Some(&host))
            .map_err(|_| client.error("cannot put the device's host in the download URL", false))?;
        crate::redact::register(parsed.as_str());
    }
    Ok(parsed.to_string())
}

async fn fetch(client: &DeviceClient, device: &DeviceConfig) -> Result<Vec<u8>, DeviceError> {
    let url = config_file_url(client, device).await?;
    let (user, password, _) = credentials(client, device)?;
    let r = digest::send(
        client,
        reqwest::Method::GET,
        &url,
        &[],
        user,
        password,
        None,
    )
    .await?;
    if r.status == reqwest::StatusCode::NOT_FOUND || r.status == reqwest::StatusCode::FORBIDDEN {
        // Used or expired: the URL works once, for ~30 s; another attempt asks for a new one.
        return Err(client.error(
            format!(
                "the FRITZ!Box refused its own download URL (HTTP {}): it works once and for ~30 s only",
                r.status.as_u16()
            ),
            true,
        ));
    }
    let r = client.ok("the export download", r)?;
    if r.body.is_empty() {
        return Err(client.error("the export download is empty", true));
    }
    if !r.body.starts_with(b"****") {
        return Err(client.error(
            "the export download is not a FRITZ!Box export (no \"**** FRITZ!Box\" header)",
            false,
        ));
    }
    Ok(r.body)
}

/// The firmware named in the export's header, e.g. `FirmwareVersion=164.07.57`.
fn firmware(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
        .lines()
        .take(40)
        .find_map(|l| {
            l.strip_prefix("FirmwareVersion=")
                .map(|v| v.trim().to_string())
        })
}

#[async_trait]
impl DeviceBackupHandler for FritzBox {
    fn extension(&self) -> &'static str {
        "export"
    }
    fn format(&self) -> Format {
        Format::Text
    }

    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError> {
        let bytes = fetch(client, device).await?;
        Ok(Artifact {
            firmware: firmware(&bytes),
            bytes,
        })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let bytes = fetch(client, device).await?;
        Ok(format!(
            "FRITZ!Box {}, export of {} bytes",
            firmware(&bytes).unwrap_or_else(|| "(firmware unknown)".into()),
            bytes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str) -> DeviceConfig {
        toml::from_str(&format!(
            "type = \"fritzbox\"\nhost = \"{host}\"\npassword = \"p\"\nexport_password = \"e\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_tr064_port_unless_host_names_one() {
        let b = |h: &str| base(&device(h)).unwrap().to_string();
        assert_eq!(b("fritz.box"), "http://fritz.box:49000/");
        assert_eq!(b("192.168.178.1"), "http://192.168.178.1:49000/");
        assert_eq!(b("http://192.168.178.1"), "http://192.168.178.1:49000/");
        assert_eq!(b("192.168.178.1:8080"), "http://192.168.178.1:8080/");
        assert_eq!(b("http://127.0.0.1:4711"), "http://127.0.0.1:4711/");
        assert_eq!(b("https://fritz.box:49443"), "https://fritz.box:49443/");
    }

    #[test]
    fn soap_answers_are_read_by_element() {
        let ok = "<s:Body><u:X_AVM-DE_GetConfigFileResponse xmlns:u=\"x\">\n<NewX_AVM-DE_ConfigFileUrl>https://192.168.178.1:49443/TR064/a.export?sid=1&amp;x=2</NewX_AVM-DE_ConfigFileUrl>";
        assert_eq!(
            element(ok, "NewX_AVM-DE_ConfigFileUrl").as_deref(),
            Some("https://192.168.178.1:49443/TR064/a.export?sid=1&x=2")
        );
        let fault = "<UPnPError xmlns=\"urn:dslforum-org:control-1-0\">\n<errorCode>866</errorCode>\n<errorDescription>second factor authentication required</errorDescription>";
        assert_eq!(element(fault, "errorCode").as_deref(), Some("866"));
        assert!(
            envelope("a<b&c").contains("<NewX_AVM-DE_Password>a&lt;b&amp;c</NewX_AVM-DE_Password>")
        );
    }
}
