//! The sources and destinations named in the configuration, built once and shared by the
//! jobs that move backups. This is the one place that picks a destination's implementation
//! from its `type`, and wraps it in the layers its settings ask for.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use crate::{
    config::{Config, ConfigError, DestinationConfig, DestinationKind, Secret, SourceConfig},
    destinations::{
        SharedDestination, auth::credential_file, dropbox::DropboxDestination, folder::LocalFolder,
        layers::Throttle, s3::S3Destination, sharepoint::SharePointDestination,
    },
    jobs::retention::RetentionPolicy,
    sources::{
        Source, folder::FolderSource, google_drive::GoogleDrive, supervisor::SupervisorSource,
    },
    transfer::TransferError,
};

pub struct Services {
    sources: BTreeMap<String, Source>,
    /// `[databases]`, for the db_dump kind.
    databases: BTreeMap<String, crate::jobs::db_dump::DatabaseConfig>,
    /// `[devices]`, for the device_fetch kind.
    devices: BTreeMap<String, crate::devices::DeviceConfig>,
    /// Where device backups are kept (`<data_dir>/devices`).
    data_dir: std::path::PathBuf,
    /// The HTTP client of device fetches (each request has the device's own timeout).
    device_http: reqwest::Client,
    /// The configuration's time zone (else the system's).
    timezone: String,
    destinations: BTreeMap<String, (SharedDestination, DestinationConfig)>,
    /// `[google_drive]`, for the google_delta kind.
    google: BTreeMap<String, Arc<GoogleDrive>>,
}

fn http_client() -> Result<reqwest::Client, ConfigError> {
    // No client-wide read timeout: an upload request may rightly take minutes; the Dropbox
    // client and the sources watch for stalls themselves.
    crate::destinations::dropbox::http_client()
        .map_err(|e| ConfigError::new(format!("cannot set up HTTPS: {e}")))
}

/// Where a Dropbox destination's credentials are kept (owner-only permissions).
pub fn token_file(data_dir: &Path, destination: &str) -> std::path::PathBuf {
    credential_file(data_dir, "dropbox", destination)
}

impl Services {
    pub fn new(config: &Config) -> Result<Services, ConfigError> {
        let http = http_client()?;
        let mut sources = BTreeMap::new();
        for (name, s) in &config.sources {
            let source = match s {
                SourceConfig::Folder { path } => Source::from(FolderSource::new(path.clone())),
                SourceConfig::Supervisor { url, token } => {
                    let token = token
                        .clone()
                        .or_else(|| std::env::var("SUPERVISOR_TOKEN").ok().map(Secret::new))
                        .ok_or_else(|| {
                            config.error(
                                &format!("sources.{name}.token"),
                                "not set, and SUPERVISOR_TOKEN is not in the environment (is this running as a Home Assistant add-on?)",
                            )
                        })?;
                    Source::from(SupervisorSource::new(url.clone(), token, http.clone()))
                }
            };
            sources.insert(name.clone(), source);
        }
        let mut destinations = BTreeMap::new();
        for (name, d) in &config.destinations {
            let mut destination: SharedDestination = match &d.kind {
                DestinationKind::Folder(c) => Arc::new(LocalFolder::new(c.path.clone())),
                DestinationKind::Dropbox(c) => Arc::new(DropboxDestination::new(
                    c,
                    token_file(&config.data_dir, name),
                    http.clone(),
                )),
                DestinationKind::S3(c) => Arc::new(
                    S3Destination::new(c, http.clone())
                        .map_err(|e| config.error(&format!("destinations.{name}"), e))?,
                ),
                DestinationKind::SharePoint(c) => Arc::new(
                    SharePointDestination::new(c, http.clone())
                        .map_err(|e| config.error(&format!("destinations.{name}"), e))?,
                ),
            };
            if d.throttle_bytes_per_sec > 0 {
                destination = Arc::new(Throttle::new(destination, d.throttle_bytes_per_sec));
            }
            destinations.insert(name.clone(), (destination, d.clone()));
        }
        let mut google = BTreeMap::new();
        for (name, g) in &config.google_drive {
            let drive = GoogleDrive::new(
                name,
                g.clone(),
                credential_file(&config.data_dir, "google", name),
                http.clone(),
                &|v| std::env::var(v).ok(),
            )
            .map_err(|(field, message)| {
                config.error(&format!("google_drive.{name}.{field}"), message)
            })?;
            google.insert(name.clone(), Arc::new(drive));
        }
        Ok(Services {
            google,
            sources,
            databases: config.databases.clone(),
            devices: config.devices.clone(),
            data_dir: config.data_dir.clone(),
            device_http: http,
            timezone: config.timezone(),
            destinations,
        })
    }

    pub fn source(&self, name: &str) -> Result<&Source, TransferError> {
        self.sources
            .get(name)
            .ok_or_else(|| TransferError::Permanent(format!("source {name:?} is not configured")))
    }

    pub fn destination(&self, name: &str) -> Result<&SharedDestination, TransferError> {
        self.destinations.get(name).map(|(d, _)| d).ok_or_else(|| {
            TransferError::Permanent(format!("destination {name:?} is not configured"))
        })
    }

    pub fn destination_names(&self) -> impl Iterator<Item = &String> {
        self.destinations.keys()
    }

    /// A `[google_drive.<name>]` source.
    pub fn google_drive(&self, name: &str) -> Option<&Arc<GoogleDrive>> {
        self.google.get(name)
    }

    pub fn google_drive_names(&self) -> impl Iterator<Item = &String> {
        self.google.keys()
    }

    /// A `[devices.<name>]` section.
    pub fn device(&self, name: &str) -> Option<&crate::devices::DeviceConfig> {
        self.devices.get(name)
    }

    pub fn device_names(&self) -> impl Iterator<Item = &String> {
        self.devices.keys()
    }

    /// A client for requests to device `name`, within its timeout and size limit.
    pub fn device_client(
        &self,
        name: &str,
        device: &crate::devices::DeviceConfig,
    ) -> crate::devices::DeviceClient {
        crate::devices::DeviceClient::new(self.device_http.clone(), name, device)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A `[databases.<name>]` section.
    pub fn database(&self, name: &str) -> Option<&crate::jobs::db_dump::DatabaseConfig> {
        self.databases.get(name)
    }

    /// The time zone of schedules that name none.
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    pub fn has_source(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    pub fn has_destination(&self, name: &str) -> bool {
        self.destinations.contains_key(name)
    }

    /// The chunk size the destination's settings ask for, in bytes.
    pub fn chunk_size(&self, name: &str) -> u64 {
        self.destinations
            .get(name)
            .map_or(crate::config::default_chunk_mib(), |(_, c)| c.chunk_mib)
            * 1024
            * 1024
    }

    pub fn retention(&self, name: &str) -> RetentionPolicy {
        self.destinations
            .get(name)
            .map(|(_, c)| RetentionPolicy::from(c))
            .unwrap_or_default()
    }

    pub fn has_retention(&self, name: &str) -> bool {
        !self.retention(name).keeps_everything()
    }
}

/// Shared by the workers and the API.
pub type SharedServices = Arc<Services>;
