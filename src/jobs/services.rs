//! The sources and destinations named in the configuration, built once and shared by the
//! jobs that move backups.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use crate::{
    config::{Config, ConfigError, DestinationConfig, DestinationKind, Secret, SourceConfig},
    destinations::{
        Destination,
        dropbox::{DropboxClient, DropboxSettings},
        local::LocalFolder,
    },
    jobs::retention::RetentionPolicy,
    sources::{Source, folder::FolderSource, supervisor::SupervisorSource},
    transfer::TransferError,
};

pub struct Services {
    sources: BTreeMap<String, Source>,
    destinations: BTreeMap<String, (Destination, DestinationConfig)>,
}

fn http_client() -> Result<reqwest::Client, ConfigError> {
    // No client-wide read timeout: an upload request may rightly take minutes; the Dropbox
    // client and the sources watch for stalls themselves.
    crate::destinations::dropbox::http_client()
        .map_err(|e| ConfigError::new(format!("cannot set up HTTPS: {e}")))
}

/// Where a destination's credentials are kept (owner-only permissions).
pub fn token_file(data_dir: &Path, destination: &str) -> std::path::PathBuf {
    data_dir
        .join("credentials")
        .join(format!("dropbox-{destination}.json"))
}

impl Services {
    pub fn new(config: &Config) -> Result<Services, ConfigError> {
        let http = http_client()?;
        let mut sources = BTreeMap::new();
        for (name, s) in &config.sources {
            let source = match s {
                SourceConfig::Folder { path } => Source::Folder(FolderSource::new(path.clone())),
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
                    Source::Supervisor(SupervisorSource::new(url.clone(), token, http.clone()))
                }
            };
            sources.insert(name.clone(), source);
        }
        let mut destinations = BTreeMap::new();
        for (name, d) in &config.destinations {
            let chunk_size = (d.chunk_mib * 1024 * 1024) as usize;
            let destination = match d.kind {
                DestinationKind::Folder => Destination::Folder {
                    folder: LocalFolder::new(d.path.clone().into()),
                    path: String::new(),
                    chunk_size,
                },
                DestinationKind::Dropbox => Destination::Dropbox {
                    client: DropboxClient::new(
                        DropboxSettings {
                            app_key: d.app_key.clone().unwrap_or_default(),
                            app_secret: d.app_secret.clone(),
                            api_url: d.api_url.trim_end_matches('/').to_string(),
                            content_url: d.content_url.trim_end_matches('/').to_string(),
                            authorize_url: d.authorize_url.clone(),
                        },
                        token_file(&config.data_dir, name),
                        http.clone(),
                    ),
                    path: d.path.trim_end_matches('/').to_string(),
                    chunk_size,
                },
            };
            destinations.insert(name.clone(), (destination, d.clone()));
        }
        Ok(Services {
            sources,
            destinations,
        })
    }

    pub fn source(&self, name: &str) -> Result<&Source, TransferError> {
        self.sources
            .get(name)
            .ok_or_else(|| TransferError::Permanent(format!("source {name:?} is not configured")))
    }

    pub fn destination(&self, name: &str) -> Result<&Destination, TransferError> {
        self.destinations.get(name).map(|(d, _)| d).ok_or_else(|| {
            TransferError::Permanent(format!("destination {name:?} is not configured"))
        })
    }

    pub fn destination_names(&self) -> impl Iterator<Item = &String> {
        self.destinations.keys()
    }

    pub fn has_source(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    pub fn has_destination(&self, name: &str) -> bool {
        self.destinations.contains_key(name)
    }

    pub fn throttle(&self, name: &str) -> u64 {
        self.destinations
            .get(name)
            .map_or(0, |(_, c)| c.throttle_bytes_per_sec)
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

    pub fn redirect_uri(&self, name: &str) -> Option<String> {
        self.destinations
            .get(name)
            .and_then(|(_, c)| c.redirect_uri.clone())
    }
}

/// Shared by the workers and the API.
pub type SharedServices = Arc<Services>;
