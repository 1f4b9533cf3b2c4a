//! Devices (`[devices.<name>]`): what the API, the panel and Home Assistant show of each one,
//! its stored versions (only files the index lists), the masked diff of two versions, fetch now
//! and test connection.

use std::path::Path;

use serde::Serialize;

use super::OpsError;
use crate::{
    config::Config,
    devices::store::{self, Index},
    queue::{FieldError, Registry, Store, store::Enqueued},
};

/// A device as people see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub enabled: bool,
    pub keep: usize,
    #[serde(flatten)]
    pub index: Index,
}

/// What a device's last fetch says, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Ok,
    Failed,
    /// Never fetched yet.
    Waiting,
    /// The device asks for a confirmation on it (the FRITZ!Box's second factor).
    WaitingForConfirmation,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Ok => "ok",
            DeviceState::Failed => "failed",
            DeviceState::Waiting => "waiting",
            DeviceState::WaitingForConfirmation => "waiting_for_confirmation",
        }
    }
}

impl DeviceInfo {
    pub fn state(&self) -> DeviceState {
        match &self.index.last_fetch {
            None => DeviceState::Waiting,
            Some(l) if l.ok => DeviceState::Ok,
            Some(l) if l.state == store::FetchState::WaitingForConfirmation => {
                DeviceState::WaitingForConfirmation
            }
            Some(_) => DeviceState::Failed,
        }
    }

    /// The newest version's firmware, where the device reports it.
    pub fn firmware(&self) -> Option<&str> {
        self.index
            .versions
            .iter()
            .rev()
            .find_map(|v| v.firmware.as_deref())
    }
}

pub fn configured(config: &Config, name: &str) -> Result<(), OpsError> {
    if config.devices.contains_key(name) {
        Ok(())
    } else {
        Err(OpsError::NotFound(format!(
            "device {name:?} is not configured under [devices]"
        )))
    }
}

/// Every configured device, by name, with its index.
pub async fn list(config: &Config) -> Vec<DeviceInfo> {
    list_of(&config.data_dir, config.devices.iter()).await
}

/// The same from the jobs' services (Home Assistant's view).
pub async fn list_services(services: &crate::jobs::services::Services) -> Vec<DeviceInfo> {
    let devices = services
        .device_names()
        .filter_map(|n| Some((n, services.device(n)?)));
    list_of(services.data_dir(), devices).await
}

async fn list_of<'a>(
    data_dir: &Path,
    devices: impl Iterator<Item = (&'a String, &'a crate::devices::DeviceConfig)>,
) -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    for (name, d) in devices {
        let index = store::read_index(&store::device_dir(data_dir, name)).await;
        out.push(DeviceInfo {
            name: name.clone(),
            kind: d.kind.clone(),
            enabled: d.enabled,
            keep: d.keep,
            index,
        });
    }
    out
}

/// Enqueues the device's schedule job now (the caller wakes its workers).
pub async fn fetch_now(
    config: &Config,
    store: &Store,
    registry: &Registry,
    name: &str,
) -> Result<Enqueued, OpsError> {
    configured(config, name)?;
    let schedule = format!("{}{name}", crate::jobs::device_fetch::SCHEDULE_PREFIX);
    super::run_schedule(store, registry, &schedule).await
}

/// Contacts the device and checks its credentials: what it said about itself, or why not
/// (redacted, naming the device).
pub async fn test_connection(
    config: &Config,
    services: &crate::jobs::services::Services,
    name: &str,
) -> Result<String, OpsError> {
    configured(config, name)?;
    crate::jobs::device_fetch::test_connection(services, name)
        .await
        .map_err(|e| OpsError::BadGateway(crate::redact::redact(&e.to_string()).into_owned()))
}

/// A stored version's bytes: only a file the index lists (no path from a request reaches the
/// file system otherwise).
pub async fn version_bytes(data_dir: &Path, name: &str, file: &str) -> Result<Vec<u8>, OpsError> {
    let dir = store::device_dir(data_dir, name);
    let index = store::read_index(&dir).await;
    if !index.versions.iter().any(|v| v.file == file) {
        return Err(OpsError::NotFound(format!(
            "device {name} has no stored version {file:?}"
        )));
    }
    tokio::fs::read(dir.join(file))
        .await
        .map_err(|e| OpsError::Internal(format!("cannot read {file}: {e}")))
}

/// The line diff of two versions (`-`/`+`/two spaces), normalised, secrets masked; a
/// validation error naming `from` for binary formats.
pub async fn diff(config: &Config, name: &str, from: &str, to: &str) -> Result<String, OpsError> {
    configured(config, name)?;
    let kind = &config.devices[name].kind;
    let handler = crate::devices::handler(kind)
        .ok_or_else(|| OpsError::Internal(format!("unknown device type {kind}")))?;
    let a = version_bytes(&config.data_dir, name, from).await?;
    let b = version_bytes(&config.data_dir, name, to).await?;
    crate::devices::diff(handler, &a, &b).ok_or_else(|| {
        OpsError::Validation(vec![FieldError::new(
            "from",
            format!("{kind} backups are binary; no text diff"),
        )])
    })
}

/// Whether the device's backups can be diffed as text.
pub fn diffable(config: &Config, name: &str) -> bool {
    config
        .devices
        .get(name)
        .and_then(|d| crate::devices::handler(&d.kind))
        .is_some_and(|h| h.format() != crate::devices::Format::Binary)
}
