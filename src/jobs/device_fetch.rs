//! `device_fetch`: one network device's configuration fetched ([`crate::devices`]) and kept
//! under `<data_dir>/devices/<device>/` when it changed ([`crate::devices::store`]).
//!
//! Each `[devices.<name>]` becomes the schedule `device_fetch.<name>` ([`schedule`]), by
//! default every 24 hours. A device that does not answer (offline, timeout, 5xx) is retried
//! by the engine's policy (`retries`); wrong credentials or a wrong answer are not.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Kind, services::Services};
use crate::{
    config::ConfigError,
    devices::{DeviceError, handler, store},
    queue::{FieldError, JobArgs, JobContext, JobError, KindSettings, Worker},
};

/// Schedules made from `[devices.<name>]` are called this plus the name.
pub const SCHEDULE_PREFIX: &str = "device_fetch.";

/// The schedule of `[devices.<name>]`: its `schedule` (any engine form), else every 24 h.
pub fn schedule(
    name: &str,
    device: &crate::devices::DeviceConfig,
    registry: &crate::queue::Registry,
    config: &crate::config::Config,
) -> Result<crate::queue::store::ScheduleDef, ConfigError> {
    let form = device
        .schedule
        .clone()
        .unwrap_or_else(|| super::every("24h"));
    let mut def = super::section_schedule::<DeviceFetchArgs>(
        "devices",
        name,
        form,
        json!({ "device": name }),
        |k| k.unwrap_or("schedule").to_string(),
        registry,
        config,
    )?;
    def.max_attempts = Some(i64::from(device.retries) + 1);
    def.enabled = device.enabled;
    Ok(def)
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceFetchArgs {
    /// A name under `[devices]`.
    pub device: String,
}

impl JobArgs for DeviceFetchArgs {
    const KIND: &'static str = "device_fetch";
    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: i64::from(crate::devices::DEFAULT_RETRIES) + 1,
            priority: 1,
            timeout: None,
            stall_timeout: None,
        }
    }
    fn tags(&self) -> Vec<String> {
        vec![format!("device:{}", self.device)]
    }
    fn describe(&self) -> String {
        format!("configuration backup of device {}", self.device)
    }
}

impl Kind for DeviceFetchArgs {
    type Worker = DeviceFetchWorker;
    fn worker(services: &Arc<Services>) -> DeviceFetchWorker {
        DeviceFetchWorker {
            services: services.clone(),
        }
    }
    fn check(&self, services: &Services) -> Result<(), FieldError> {
        match services.device(&self.device) {
            Some(_) => Ok(()),
            None => Err(FieldError::new(
                "device",
                format!("device {:?} is not configured under [devices]", self.device),
            )),
        }
    }
    fn max_attempts(&self, services: &Services) -> Option<i64> {
        services
            .device(&self.device)
            .map(|d| i64::from(d.retries) + 1)
    }
}

pub struct DeviceFetchWorker {
    services: Arc<Services>,
}

/// While a device waits for the user's confirmation (the FRITZ!Box's second factor), the job
/// asks again this often, without using an attempt ...
pub const WAITING_RETRY: std::time::Duration = std::time::Duration::from_secs(120);
/// ... for this long; then it ends, the index still saying "waiting for your confirmation",
/// and the device's next scheduled fetch asks again.
pub const WAITING_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(30);

/// Fetches device `name` and stores its configuration if it changed.
pub async fn fetch(services: &Services, name: &str) -> Result<store::Stored, DeviceError> {
    let not_configured = || DeviceError {
        message: format!("device {name}: not configured under [devices]"),
        retry: false,
        waiting: false,
    };
    let device = services.device(name).ok_or_else(not_configured)?;
    let h = handler(&device.kind).ok_or_else(not_configured)?;
    let client = services.device_client(name, device);
    let result = async {
        let artifact = h.fetch_backup(&client, device).await?;
        store::store(services.data_dir(), name, h, &artifact, device.keep)
            .await
            .map_err(|e| client.error(format!("cannot store the backup: {e}"), true))
    }
    .await;
    if let Err(e) = &result
        && !e.waiting
        && let Err(io) = store::record_failure(services.data_dir(), name, &e.to_string()).await
    {
        tracing::warn!(device = name, "cannot record the failed fetch: {io}");
    }
    result
}

/// Tests device `name`'s connection and credentials.
pub async fn test_connection(services: &Services, name: &str) -> Result<String, DeviceError> {
    let device = services.device(name).ok_or_else(|| DeviceError {
        message: format!("device {name}: not configured under [devices]"),
        retry: false,
        waiting: false,
    })?;
    let h = handler(&device.kind).ok_or_else(|| DeviceError {
        message: format!("device {name}: unknown type"),
        retry: false,
        waiting: false,
    })?;
    h.test_connection(&services.device_client(name, device), device)
        .await
}

impl Worker<DeviceFetchArgs> for DeviceFetchWorker {
    async fn work(&self, ctx: JobContext, args: DeviceFetchArgs) -> Result<(), JobError> {
        let name = args.device.as_str();
        match fetch(&self.services, name).await {
            Ok(store::Stored::New(v)) => {
                tracing::info!(device = name, file = %v.file, size = v.size,
                    sha256 = %v.sha256, firmware = v.firmware.as_deref().unwrap_or(""),
                    "device configuration changed; new backup stored");
                Ok(())
            }
            Ok(store::Stored::Unchanged(v)) => {
                tracing::info!(device = name, file = %v.file,
                    "device configuration unchanged; no new backup");
                Ok(())
            }
            Err(e) if e.waiting => {
                let since =
                    match store::record_waiting(self.services.data_dir(), name, &e.to_string())
                        .await
                    {
                        Ok(s) => s,
                        Err(io) => {
                            tracing::warn!(device = name, "cannot record the waiting fetch: {io}");
                            chrono::Utc::now()
                        }
                    };
                if chrono::Utc::now() - since < WAITING_WINDOW {
                    tracing::warn!(device = name, "device fetch waits for confirmation: {e}");
                    Err(JobError::Snooze {
                        wait: WAITING_RETRY,
                        reason: e.to_string(),
                    })
                } else {
                    tracing::warn!(device = name, since = %since,
                        "device fetch still waits for confirmation; asking again at the next scheduled fetch: {e}");
                    Ok(())
                }
            }
            Err(e) => {
                let left = ctx.attempt() < ctx.max_attempts();
                tracing::warn!(
                    device = name,
                    retry = e.retry && left,
                    "device fetch failed: {e}"
                );
                if e.retry {
                    Err(JobError::Retryable(e.to_string()))
                } else {
                    Err(JobError::Permanent(e.to_string()))
                }
            }
        }
    }
}
