//! Home Assistant integration through the Core API (reached via the Supervisor's proxy):
//! persistent notifications when a destination needs re-authorization or a job was discarded
//! (dismissed once that recovers), and sensors for dashboards and automations.
//!
//! One task compares what Home Assistant should show with what it was last told and sends only
//! the difference. Raised notifications are remembered in the database, so a restart neither
//! repeats one the user already dismissed nor forgets to dismiss one that recovered.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, ConfigError, HomeAssistantConfig, Secret},
    jobs::SNAPSHOTS,
    jobs::services::Services,
    queue::{JobState, Registry, Store, state::to_datetime, store::JobFilter},
};

/// Notification ids start with this, so ours are easy to tell apart.
const NOTIFICATION_PREFIX: &str = "offsite_";
/// Discarded jobs named one by one in the notification; the rest are counted.
const LISTED_FAILURES: usize = 10;

/// A notification Home Assistant should show.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: String,
    pub title: String,
    pub message: String,
    /// Changes when the notification should be shown again (a new failure, say).
    pub fingerprint: String,
}

/// A sensor state to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensor {
    pub entity_id: String,
    pub state: String,
    pub attributes: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("Home Assistant is not reachable: {0}")]
    Unreachable(String),
    #[error("Home Assistant refused the token (is homeassistant_api enabled?): HTTP {0}")]
    Refused(u16),
    #[error("Home Assistant answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("database: {0}")]
    Store(#[from] crate::queue::store::StoreError),
}

/// The Core API client and the sync loop's memory.
pub struct HomeAssistant {
    http: reqwest::Client,
    url: String,
    token: Secret,
    prefix: String,
    interval: Duration,
    refresh: Duration,
    store: Store,
    services: Arc<Services>,
    registry: Arc<Registry>,
    config: Arc<Config>,
    /// What each sensor was last set to, and when everything was last written.
    written: BTreeMap<String, (String, Value)>,
    last_refresh: Option<Instant>,
    /// Sensors Home Assistant refused, so each is warned about once.
    refused: std::collections::BTreeSet<String>,
    healthy: bool,
}

impl HomeAssistant {
    /// `None` when the integration is off.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        services: Arc<Services>,
        registry: Arc<Registry>,
    ) -> Result<Option<HomeAssistant>, ConfigError> {
        let Some(ha) = config.homeassistant.clone().filter(|h| h.enabled) else {
            return Ok(None);
        };
        let HomeAssistantConfig {
            url,
            token,
            sensor_prefix,
            interval,
            refresh,
            ..
        } = ha;
        let token = token
            .or_else(|| std::env::var("SUPERVISOR_TOKEN").ok().map(Secret::new))
            .ok_or_else(|| {
                config.error(
                    "homeassistant.token",
                    "not set, and SUPERVISOR_TOKEN is not in the environment (is this running as a Home Assistant add-on?)",
                )
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ConfigError::new(format!("cannot set up HTTP: {e}")))?;
        Ok(Some(HomeAssistant {
            http,
            url: url.trim_end_matches('/').to_string(),
            token,
            prefix: sensor_prefix,
            interval,
            refresh,
            store,
            services,
            registry,
            config,
            written: BTreeMap::new(),
            last_refresh: None,
            refused: Default::default(),
            healthy: true,
        }))
    }

    /// Runs until `stop`: a sync now, then one per interval.
    pub fn start(mut self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            info!(url = %self.url, "Home Assistant notifications and sensors are on");
            loop {
                match self.sync().await {
                    Ok(()) => {
                        if !self.healthy {
                            info!("Home Assistant is reachable again");
                        }
                        self.healthy = true;
                    }
                    Err(e) => {
                        // Logged once per outage, not on every tick.
                        if self.healthy {
                            warn!(error = %e, "cannot update Home Assistant; will keep trying");
                        } else {
                            debug!(error = %e, "Home Assistant still unavailable");
                        }
                        self.healthy = false;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
        })
    }

    /// Brings Home Assistant up to date once.
    /// Notifications and sensors are brought up to date independently: a problem with one
    /// does not hold back the other. The first error is returned.
    pub async fn sync(&mut self) -> Result<(), CoreError> {
        let notifications = self.sync_notifications().await;
        let sensors = self.sync_sensors().await;
        notifications.and(sensors)
    }

    async fn sync_notifications(&mut self) -> Result<(), CoreError> {
        let wanted = wanted_notifications(&self.store, &self.services, &self.registry).await?;
        let raised = self.store.ha_notifications().await?;
        for n in &wanted {
            match raised.get(&n.id) {
                Some(fp) if fp == &n.fingerprint => continue,
                // Only something new is worth showing again (the user may have dismissed it);
                // fewer failures than before is not news.
                Some(fp) if !news(fp, &n.fingerprint) => {
                    self.store
                        .set_ha_notification(&n.id, Some(&n.fingerprint))
                        .await?;
                    continue;
                }
                _ => {}
            }
            self.call(
                "services/persistent_notification/create",
                &json!({"notification_id": n.id, "title": n.title, "message": n.message}),
            )
            .await?;
            self.store
                .set_ha_notification(&n.id, Some(&n.fingerprint))
                .await?;
            info!(notification = %n.id, "raised a notification in Home Assistant");
        }
        for id in raised.keys() {
            if !wanted.iter().any(|n| &n.id == id) {
                self.call(
                    "services/persistent_notification/dismiss",
                    &json!({"notification_id": id}),
                )
                .await?;
                self.store.set_ha_notification(id, None).await?;
                info!(notification = %id, "dismissed a notification in Home Assistant (recovered)");
            }
        }
        Ok(())
    }

    /// Writes the sensors that changed; one refused sensor does not hold up the others.
    async fn sync_sensors(&mut self) -> Result<(), CoreError> {
        let sensors = wanted_sensors(
            &self.store,
            &self.services,
            &self.registry,
            &self.config,
            &self.prefix,
        )
        .await?;
        let refresh = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= self.refresh);
        let mut first_error = None;
        for s in sensors {
            let current = (s.state.clone(), s.attributes.clone());
            if !refresh && self.written.get(&s.entity_id) == Some(&current) {
                continue;
            }
            match self
                .call(
                    &format!("states/{}", s.entity_id),
                    &json!({"state": s.state, "attributes": s.attributes}),
                )
                .await
            {
                Ok(()) => {
                    self.refused.remove(&s.entity_id);
                    self.written.insert(s.entity_id, current);
                }
                Err(e @ CoreError::Status(..)) => {
                    // Logged once per sensor; it is tried again every interval.
                    if self.refused.insert(s.entity_id.clone()) {
                        warn!(entity = %s.entity_id, error = %e, "Home Assistant refused a sensor");
                    }
                    first_error.get_or_insert(e);
                }
                // Unreachable or refused token: the rest would fail the same way.
                Err(e) => return Err(e),
            }
        }
        // A refused sensor is not in `written`, so it is retried anyway; the others need not
        // be rewritten every interval because of it.
        if refresh {
            self.last_refresh = Some(Instant::now());
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn call(&self, path: &str, body: &Value) -> Result<(), CoreError> {
        let resp = self
            .http
            .post(format!("{}/{path}", self.url))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            // Without the URL: reqwest's message would repeat it, and that is all it adds.
            .map_err(|e| CoreError::Unreachable(chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(()),
            401 | 403 => Err(CoreError::Refused(status)),
            502..=504 => Err(CoreError::Unreachable(format!("HTTP {status}"))),
            _ => {
                let text = resp.text().await.unwrap_or_default();
                Err(CoreError::Status(
                    status,
                    text.chars().take(200).collect::<String>(),
                ))
            }
        }
    }
}

/// An error with its causes: reqwest's own message ("error sending request") says little.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Whether a notification's new fingerprint (comma-separated ids) names anything the old one
/// did not.
fn news(old: &str, new: &str) -> bool {
    let old: std::collections::BTreeSet<&str> = old.split(',').collect();
    new.split(',').any(|id| !old.contains(id))
}

/// The notifications Home Assistant should show now.
pub async fn wanted_notifications(
    store: &Store,
    services: &Services,
    registry: &Registry,
) -> Result<Vec<Notification>, crate::queue::store::StoreError> {
    let mut out = Vec::new();
    for name in services.destination_names() {
        if crate::ops::authorization::needs_authorization(services, name) {
            out.push(Notification {
                id: format!("{NOTIFICATION_PREFIX}reauthorize_{name}"),
                title: format!("offsite: Dropbox destination \"{name}\" needs authorization"),
                message: format!(
                    "Backups to **{name}** are waiting: offsite has no valid Dropbox \
                     authorization for it (never given, or revoked). Open **offsite** in the \
                     sidebar and press **Authorize**; the waiting uploads continue right after."
                ),
                fingerprint: "unauthorized".into(),
            });
        }
    }
    for name in services.google_drive_names() {
        if crate::ops::authorization::needs_authorization(services, name) {
            out.push(Notification {
                id: format!("{NOTIFICATION_PREFIX}reauthorize_{name}"),
                title: format!("offsite: Google Drive \"{name}\" needs authorization"),
                message: format!(
                    "The Google Drive mirror **{name}** is waiting: offsite has no valid Google \
                     authorization for it (never given, revoked, or expired — an OAuth app left \
                     in \"Testing\" gets tokens that expire after 7 days). Open **offsite** in \
                     the sidebar and press **Authorize**; the mirror continues right after."
                ),
                fingerprint: "unauthorized".into(),
            });
        }
    }
    let in_state = |state: JobState| async move {
        let filter = JobFilter {
            states: vec![state],
            ..Default::default()
        };
        store.list_jobs(&filter, 200, None).await
    };
    let discarded = store.count_in_state(JobState::Discarded).await?;
    let failed = in_state(JobState::Discarded).await?;
    if !failed.is_empty() {
        let mut lines: Vec<String> = failed
            .iter()
            .take(LISTED_FAILURES)
            .map(|j| {
                let error = j.last_error.as_deref().unwrap_or("no error recorded");
                let error: String = error.chars().take(200).collect();
                format!("- job {}: {} — {error}", j.id, registry.describe_job(j))
            })
            .collect();
        let total = (discarded as usize).max(failed.len());
        if total > LISTED_FAILURES {
            lines.push(format!("- and {} more", total - LISTED_FAILURES));
        }
        let ids: Vec<String> = failed.iter().map(|j| j.id.to_string()).collect();
        out.push(Notification {
            id: format!("{NOTIFICATION_PREFIX}failed_jobs"),
            title: if total == 1 {
                "offsite: a job failed".into()
            } else {
                format!("offsite: {total} jobs failed")
            },
            message: format!(
                "These jobs gave up and will not run again by themselves:\n\n{}\n\n\
                 Open **offsite** in the sidebar to retry them.",
                lines.join("\n")
            ),
            fingerprint: ids.join(","),
        });
    }
    // Jobs still being retried but failing again and again: most often the environment (a
    // full or unplugged disk, a permission), which the user must fix; they continue by
    // themselves once it is. Shown from the second failure in a row.
    let retrying = in_state(JobState::Retryable).await?;
    let struggling: Vec<_> = retrying
        .iter()
        .filter(|j| j.attempt >= STRUGGLING_AFTER)
        .collect();
    if !struggling.is_empty() {
        let mut lines: Vec<String> = struggling
            .iter()
            .take(LISTED_FAILURES)
            .map(|j| {
                let error = j.last_error.as_deref().unwrap_or("no error recorded");
                let error: String = error.chars().take(200).collect();
                format!(
                    "- job {}: {} — failed {} times: {error}",
                    j.id,
                    registry.describe_job(j),
                    j.attempt
                )
            })
            .collect();
        if struggling.len() > LISTED_FAILURES {
            lines.push(format!("- and {} more", struggling.len() - LISTED_FAILURES));
        }
        let ids: Vec<String> = struggling.iter().map(|j| j.id.to_string()).collect();
        out.push(Notification {
            id: format!("{NOTIFICATION_PREFIX}retrying_jobs"),
            title: "offsite: backups keep failing".into(),
            message: format!(
                "These jobs failed again and are retried with growing waits:\n\n{}\n\n\
                 The backups are still at their source. Fix the cause (for example free space \
                 on the destination) and they continue by themselves.",
                lines.join("\n")
            ),
            fingerprint: ids.join(","),
        });
    }
    out.extend(device_notifications(store, services).await?);
    Ok(out)
}

/// A device whose fetch job gave up (discarded after its retries) and that has not fetched
/// successfully since: one notification per device, dismissed when a fetch succeeds.
async fn device_notifications(
    store: &Store,
    services: &Services,
) -> Result<Vec<Notification>, crate::queue::store::StoreError> {
    use crate::ops::devices::DeviceState;
    let devices = crate::ops::devices::list_services(services).await;
    let mut out = Vec::new();
    // A device that asks for a confirmation on it (the FRITZ!Box's second factor): one
    // notification per run of waiting answers, gone once a fetch gets through.
    for d in devices
        .iter()
        .filter(|d| d.state() == DeviceState::WaitingForConfirmation)
    {
        let since = d
            .index
            .last_fetch
            .as_ref()
            .and_then(|l| l.waiting_since)
            .unwrap_or_else(chrono::Utc::now);
        out.push(Notification {
            id: format!(
                "{NOTIFICATION_PREFIX}device_confirm_{}",
                crate::naming::entity_part(&d.name)
            ),
            title: format!("offsite: device \"{}\" waits for your confirmation", d.name),
            message: format!(
                "**{}** ({}) asks for a confirmation on the device before it hands out its \
                 configuration (waiting since {}). Confirm it on the device (a FRITZ!Box: press \
                 a button on the box or confirm in the FRITZ!App Fon); offsite asks again \
                 every 2 minutes for half an hour, then at the next scheduled fetch.",
                d.name,
                d.kind,
                iso(since)
            ),
            fingerprint: iso(since),
        });
    }
    if !devices.iter().any(|d| d.state() == DeviceState::Failed) {
        return Ok(out);
    }
    let filter = JobFilter {
        states: vec![JobState::Discarded],
        kind: Some(
            <crate::jobs::device_fetch::DeviceFetchArgs as crate::queue::JobArgs>::KIND.into(),
        ),
        ..Default::default()
    };
    let discarded = store.list_jobs(&filter, 200, None).await?;
    for d in devices.iter().filter(|d| d.state() == DeviceState::Failed) {
        let since = d.index.failing_since;
        let Some(job) = discarded
            .iter()
            .filter(|j| j.args.get("device").and_then(Value::as_str) == Some(d.name.as_str()))
            .filter(|j| {
                // The job's times are whole milliseconds; `failing_since` is finer: a job
                // discarded in the millisecond its failure was recorded ends "before" it.
                since.is_none_or(|s| j.finalized_at.is_some_and(|e| e >= s.timestamp_millis()))
            })
            .max_by_key(|j| j.id)
        else {
            continue;
        };
        let error = d
            .index
            .last_fetch
            .as_ref()
            .and_then(|l| l.error.as_deref())
            .unwrap_or("no error recorded");
        let error: String = crate::redact::redact(error).chars().take(300).collect();
        let since = since.map_or_else(String::new, |t| format!(" since {}", iso(t)));
        let last_ok = d.index.last_ok.map_or_else(|| "never".to_string(), iso);
        out.push(Notification {
            id: format!(
                "{NOTIFICATION_PREFIX}device_failing_{}",
                crate::naming::entity_part(&d.name)
            ),
            title: format!("offsite: device \"{}\" keeps failing", d.name),
            message: format!(
                "Configuration backups of **{}** ({}) fail{since} and offsite gave up \
                 retrying (job {}): {error}\n\nLast successful fetch: {last_ok}. Its next \
                 scheduled fetch tries again; open **offsite** in the sidebar to test the \
                 connection or fetch now.",
                d.name, d.kind, job.id
            ),
            fingerprint: job.id.to_string(),
        });
    }
    Ok(out)
}

/// A job retrying after this many failed attempts in a row is reported to Home Assistant.
const STRUGGLING_AFTER: i64 = 2;

/// The sensors, as Home Assistant should show them now.
pub async fn wanted_sensors(
    store: &Store,
    services: &Services,
    registry: &Registry,
    config: &Config,
    prefix: &str,
) -> Result<Vec<Sensor>, crate::queue::store::StoreError> {
    let all = store.uploads(None, true).await?;
    let last = all.iter().max_by_key(|u| u.uploaded_at);
    let mut out = vec![Sensor {
        entity_id: format!("sensor.{prefix}_last_backup"),
        state: last.map_or("unknown".into(), |u| iso(u.uploaded_at)),
        attributes: json!({
            "friendly_name": "offsite last backup",
            "device_class": "timestamp",
            "icon": "mdi:cloud-check",
            "backup_name": last.map(|u| u.backup_name.clone()),
            "destination": last.map(|u| u.destination.clone()),
            "remote_path": last.map(|u| u.remote_path.clone()),
        }),
    }];

    let finished = store.last_finished("snapshot_upload").await?;
    let (result, job_id, error, at) = match &finished {
        Some(j) => (
            match j.state {
                JobState::Completed => "success",
                JobState::Discarded => "failed",
                _ => "cancelled",
            },
            Some(j.id),
            j.last_error
                .clone()
                .filter(|_| j.state != JobState::Completed),
            j.finalized_at.map(|t| iso(to_datetime(t))),
        ),
        None if last.is_some() => ("success", None, None, None),
        None => ("unknown", None, None, None),
    };
    out.push(Sensor {
        entity_id: format!("sensor.{prefix}_last_result"),
        state: result.into(),
        attributes: json!({
            "friendly_name": "offsite last result",
            "icon": if result == "failed" { "mdi:cloud-alert" } else { "mdi:cloud-check" },
            "job_id": job_id,
            "job": finished.as_ref().map(|j| registry.describe_job(j)),
            "error": error,
            "finished_at": at,
        }),
    });

    for name in services.destination_names() {
        let stored: Vec<_> = all
            .iter()
            .filter(|u| &u.destination == name && u.deleted_at.is_none())
            .collect();
        out.push(Sensor {
            entity_id: format!(
                "sensor.{prefix}_backups_{}",
                crate::naming::entity_part(name)
            ),
            state: stored.len().to_string(),
            attributes: json!({
                "friendly_name": format!("offsite backups on {name}"),
                "unit_of_measurement": "backups",
                "state_class": "measurement",
                "icon": "mdi:archive",
                "destination": name,
                "authorized": !crate::ops::authorization::needs_authorization(services, name),
                "newest": stored.iter().map(|u| u.backup_date).max().map(iso),
                "bytes": stored.iter().map(|u| u.size).sum::<i64>(),
            }),
        });
    }

    if !config.databases.is_empty() {
        out.push(last_dump_sensor(store, registry, prefix).await?);
    }
    out.extend(device_sensors(config, prefix).await);
    out.extend(google_sensors(store, services, prefix).await);

    let next = if config.snapshots.as_ref().is_some_and(|s| s.enabled) {
        store
            .schedules()
            .await?
            .into_iter()
            .find(|s| s.def.name == SNAPSHOTS && s.def.enabled)
            .and_then(|s| s.next_run_at)
            .map(to_datetime)
    } else {
        None
    };
    out.push(Sensor {
        entity_id: format!("sensor.{prefix}_next_backup"),
        state: next.map_or("unknown".into(), iso),
        attributes: json!({
            "friendly_name": "offsite next backup",
            "device_class": "timestamp",
            "icon": "mdi:calendar-clock",
        }),
    });
    Ok(out)
}

/// `sensor.<prefix>_device_<name>` per device: ok / failed / waiting, with the last backup
/// (successful fetch), the last change, the versions kept, the firmware and a failing
/// device's redacted error and since when.
async fn device_sensors(config: &Config, prefix: &str) -> Vec<Sensor> {
    use crate::ops::devices::DeviceState;
    crate::ops::devices::list(config)
        .await
        .into_iter()
        .map(|d| {
            let state = d.state();
            let failed = state == DeviceState::Failed;
            Sensor {
                entity_id: format!(
                    "sensor.{prefix}_device_{}",
                    crate::naming::entity_part(&d.name)
                ),
                state: state.as_str().into(),
                attributes: json!({
                    "friendly_name": format!("offsite device {}", d.name),
                    "icon": if failed { "mdi:router-wireless-off" } else { "mdi:router-wireless" },
                    "device": d.name,
                    "type": d.kind,
                    "last_backup": d.index.last_ok.map(iso),
                    "last_fetch": d.index.last_fetch.as_ref().map(|l| iso(l.at)),
                    "last_change": d.index.last_change.map(iso),
                    "versions": d.index.versions.len(),
                    "firmware": d.firmware(),
                    "error": d.index.last_fetch.as_ref().and_then(|l| l.error.clone()).filter(|_| failed),
                    "failing_since": d.index.failing_since.map(iso),
                }),
            }
        })
        .collect()
}

/// `sensor.<prefix>_google_drive_<name>` per Google Drive source: `unauthorized`, `failing`,
/// `ok` or `never`, with the last sync, the error, and per destination what is current and
/// behind.
async fn google_sensors(store: &Store, services: &Services, prefix: &str) -> Vec<Sensor> {
    let all = match crate::ops::google::list(services, store).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!("cannot read the Google Drive sync state for Home Assistant: {e}");
            return Vec::new();
        }
    };
    all.into_iter()
        .map(|g| {
            let state = match (g.authorized, &g.last_error, &g.last_sync_at) {
                (false, _, _) => "unauthorized",
                (true, Some(_), _) => "failing",
                (true, None, Some(_)) => "ok",
                (true, None, None) => "never",
            };
            let behind: i64 = g.destinations.iter().map(|d| d.behind).sum();
            Sensor {
                entity_id: format!(
                    "sensor.{prefix}_google_drive_{}",
                    crate::naming::entity_part(&g.name)
                ),
                state: state.into(),
                attributes: json!({
                    "friendly_name": format!("offsite Google Drive {}", g.name),
                    "icon": if state == "ok" { "mdi:google-drive" } else { "mdi:cloud-alert" },
                    "source": g.name,
                    "last_sync": g.last_sync_at,
                    "error": g.last_error,
                    "files": g.files,
                    "skipped": g.skipped,
                    "behind": behind,
                    "destinations": g.destinations,
                }),
            }
        })
        .collect()
}

/// `sensor.<prefix>_last_database_dump`: how the last PostgreSQL dump ended, its file and
/// size, and when the next one is due.
async fn last_dump_sensor(
    store: &Store,
    registry: &Registry,
    prefix: &str,
) -> Result<Sensor, crate::queue::store::StoreError> {
    use crate::jobs::db_dump;
    let finished = store
        .last_finished(<db_dump::DbDumpArgs as crate::queue::JobArgs>::KIND)
        .await?;
    let result = match finished.as_ref().map(|j| j.state) {
        Some(JobState::Completed) => "success",
        Some(JobState::Discarded) => "failed",
        Some(_) => "cancelled",
        None => "unknown",
    };
    let next = store
        .schedules()
        .await?
        .into_iter()
        .filter(|s| s.def.enabled && s.def.name.starts_with(db_dump::SCHEDULE_PREFIX))
        .filter_map(|s| s.next_run_at)
        .min()
        .map(|t| iso(to_datetime(t)));
    Ok(Sensor {
        entity_id: format!("sensor.{prefix}_last_database_dump"),
        state: result.into(),
        attributes: json!({
            "friendly_name": "offsite last database dump",
            "icon": if result == "failed" { "mdi:database-alert" } else { "mdi:database-check" },
            "job_id": finished.as_ref().map(|j| j.id),
            "job": finished.as_ref().map(|j| registry.describe_job(j)),
            "file": finished.as_ref().and_then(|j| db_dump::dump_file_of(j.checkpoint.clone())),
            "bytes": finished.as_ref().and_then(|j| j.progress.as_ref()?.get("total")?.as_u64()),
            "error": finished.as_ref().and_then(|j| j.last_error.clone().filter(|_| j.state != JobState::Completed)),
            "finished_at": finished.as_ref().and_then(|j| j.finalized_at).map(|t| iso(to_datetime(t))),
            "next_run": next,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_failures_are_news() {
        assert!(news("1,2", "1,2,3"));
        assert!(!news("1,2,3", "1,3"));
        assert!(news("1,2", "3"));
    }
}
