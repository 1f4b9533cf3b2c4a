//! OPNsense: `GET /api/core/backup/download/this` with the API key as the Basic user name
//! and its secret as the password (`username` / `password`; the key's user needs the privilege
//! "Diagnostics: Configuration History"). That endpoint streams the **newest
//! configuration-history revision** (`/conf/backup/config-*.xml`), normally equal to the
//! running configuration (a change not yet saved to the history is not in it).
//! `host` without a scheme means `https://` (the web UI's default); a self-signed certificate
//! needs `accept_invalid_certs = true`.
//!
//! OPNsense answers an empty history or an unknown host with 200 and an empty body: the answer
//! must be a non-empty `<opnsense>` document. The normaliser drops what changes on every save:
//! the `<revision>` block (user, time, description of the last change) and
//! `<last_rule_upd_time>`, as oxidized does.

use async_trait::async_trait;

use super::{Artifact, Auth, DeviceBackupHandler, DeviceClient, DeviceConfig, DeviceError, Format};

pub struct OpnSense;

pub const DOWNLOAD: &str = "/api/core/backup/download/this";
pub const LIST: &str = "/api/core/backup/backups/this";

/// `host` as a base URL, `https://` unless it names a scheme.
pub fn base(device: &DeviceConfig) -> Option<String> {
    let h = device.host.as_deref()?.trim().trim_end_matches('/');
    if h.contains("://") {
        device.base()
    } else {
        let u = url::Url::parse(&format!("https://{h}")).ok()?;
        u.host_str()?;
        Some(format!("https://{h}"))
    }
}

fn credentials<'a>(
    client: &DeviceClient,
    device: &'a DeviceConfig,
) -> Result<Auth<'a>, DeviceError> {
    match (&device.username, &device.password) {
        (Some(key), Some(secret)) => Ok(Auth::Basic(key, secret)),
        _ => Err(client.error(
            "OPNsense needs an API key (username) and its secret (password)",
            false,
        )),
    }
}

async fn get(
    client: &DeviceClient,
    device: &DeviceConfig,
    path: &str,
) -> Result<Vec<u8>, DeviceError> {
    let base = base(device).ok_or_else(|| client.error("host is not a host or URL", false))?;
    let auth = credentials(client, device)?;
    let r = client.get(&format!("{base}{path}"), auth).await?;
    if r.status == reqwest::StatusCode::UNAUTHORIZED || r.status == reqwest::StatusCode::FORBIDDEN {
        return Err(client.error(
            format!(
                "{path}: OPNsense refused the API key (HTTP {}): a wrong key or secret, or the key's \
                 user lacks the privilege \"Diagnostics: Configuration History\"",
                r.status.as_u16()
            ),
            false,
        ));
    }
    Ok(client.ok(path, r)?.body)
}

/// `<tag>…</tag>` elements removed, with the indentation before them and the line end after.
fn strip_element(text: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(a) = rest.find(&open) {
        let Some(b) = rest[a..].find(&close).map(|b| a + b + close.len()) else {
            break;
        };
        let before = &rest[..a];
        let kept = before.trim_end_matches([' ', '\t']);
        let line_start = kept.is_empty() || kept.ends_with('\n');
        out.push_str(if line_start { kept } else { before });
        rest = &rest[b..];
        if line_start {
            rest = rest
                .strip_prefix("\r\n")
                .or_else(|| rest.strip_prefix('\n'))
                .unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl DeviceBackupHandler for OpnSense {
    fn extension(&self) -> &'static str {
        "xml"
    }
    fn format(&self) -> Format {
        Format::Text
    }

    async fn fetch_backup(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<Artifact, DeviceError> {
        let bytes = get(client, device, DOWNLOAD).await?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_string();
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(client.error(
                format!("{DOWNLOAD}: OPNsense answered with an empty body (an empty configuration history, or an unknown host name)"),
                false,
            ));
        }
        if !text.contains("<opnsense>") {
            return Err(client.error(
                format!(
                    "{DOWNLOAD}: the answer is not an OPNsense config.xml (no <opnsense> element)"
                ),
                false,
            ));
        }
        Ok(Artifact {
            bytes,
            firmware: None,
        })
    }

    async fn test_connection(
        &self,
        client: &DeviceClient,
        device: &DeviceConfig,
    ) -> Result<String, DeviceError> {
        let body = get(client, device, LIST).await?;
        let v = super::json(client, LIST, &body)?;
        let n = v
            .get("items")
            .and_then(|i| i.as_array().map(|a| a.len()))
            .or_else(|| v.get("total").and_then(|t| t.as_u64()).map(|t| t as usize))
            .unwrap_or(0);
        Ok(format!("OPNsense, {n} configuration-history revision(s)"))
    }

    fn normalise(&self, bytes: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(bytes) {
            Ok(t) => {
                strip_element(&strip_element(t, "revision"), "last_rule_upd_time").into_bytes()
            }
            Err(_) => bytes.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normaliser_drops_the_revision_block_and_rule_update_time() {
        let a = "<opnsense>\n  <revision>\n    <username>root@10.0.0.2</username>\n    <time>1701234567.12</time>\n    <description>saved</description>\n  </revision>\n  <filter>\n    <rule><last_rule_upd_time>1</last_rule_upd_time><descr>x</descr></rule>\n  </filter>\n</opnsense>\n";
        let b = a
            .replace("1701234567.12", "1701239999.99")
            .replace(">1<", ">2<");
        let n = OpnSense.normalise(a.as_bytes());
        assert_eq!(n, OpnSense.normalise(b.as_bytes()));
        assert_eq!(
            String::from_utf8(n).unwrap(),
            "<opnsense>\n  <filter>\n    <rule><descr>x</descr></rule>\n  </filter>\n</opnsense>\n"
        );
        let c = a.replace("<descr>x", "<descr>y");
        assert_ne!(
            OpnSense.normalise(a.as_bytes()),
            OpnSense.normalise(c.as_bytes())
        );
    }
}
