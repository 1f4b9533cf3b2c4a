//! What every command shares: the validated config, the job kinds, the schedules, the
//! destinations; and opening the database.

use std::sync::Arc;

use crate::{
    config::{Config, ConfigError},
    jobs::{self, SNAPSHOTS, services::Services},
    queue::{
        Registry, Store, scheduler,
        store::{ScheduleDef, StoreError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// 2 for a configuration problem, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// What every command shares: validated config, the job kinds, the schedules.
pub struct Setup {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub schedules: Vec<ScheduleDef>,
    pub services: Arc<Services>,
}

impl Setup {
    /// Validates everything that can be validated without touching the database.
    pub fn new(config: Config) -> Result<Setup, ConfigError> {
        let services = Arc::new(Services::new(&config)?);
        let registry = jobs::registry_with(&config, services.clone())?;
        Self::with(config, registry, services)
    }

    /// With a registry of one's own (tests add kinds); schedules are loaded and checked.
    pub fn with(
        config: Config,
        registry: Registry,
        services: Arc<Services>,
    ) -> Result<Setup, ConfigError> {
        let mut schedules = scheduler::load_dir(&config.jobs_dir, &registry, &config.timezone())?;
        if let Some(snapshots) = config.snapshots.as_ref().filter(|s| s.enabled) {
            if schedules.iter().any(|s| s.name == SNAPSHOTS) {
                return Err(config.error(
                    "snapshots",
                    format!("a schedule file already defines {SNAPSHOTS:?}"),
                ));
            }
            schedules.push(jobs::snapshots_schedule(snapshots, &registry, &config)?);
        }
        for (name, db) in &config.databases {
            let def = jobs::db_dump::schedule(name, db, &registry, &config)?;
            if schedules.iter().any(|s| s.name == def.name) {
                return Err(config.error(
                    &format!("databases.{name}"),
                    format!("a schedule file already defines {:?}", def.name),
                ));
            }
            schedules.push(def);
        }
        for (name, d) in &config.devices {
            let def = jobs::device_fetch::schedule(name, d, &registry, &config)?;
            if schedules.iter().any(|s| s.name == def.name) {
                return Err(config.error(
                    &format!("devices.{name}"),
                    format!("a schedule file already defines {:?}", def.name),
                ));
            }
            schedules.push(def);
        }
        for (name, g) in &config.google_drive {
            let def = jobs::google_delta::schedule(name, g, &registry, &config)?;
            if schedules.iter().any(|s| s.name == def.name) {
                return Err(config.error(
                    &format!("google_drive.{name}"),
                    format!("a schedule file already defines {:?}", def.name),
                ));
            }
            schedules.push(def);
        }
        Ok(Setup {
            config: Arc::new(config),
            registry: Arc::new(registry),
            schedules,
            services,
        })
    }

    pub fn create_data_dir(&self) -> Result<(), StartError> {
        std::fs::create_dir_all(&self.config.data_dir).map_err(|e| {
            StartError::Other(format!(
                "cannot create data directory {}: {e}",
                self.config.data_dir.display()
            ))
        })
    }

    /// Where `db-snapshot` writes the consistent copy.
    pub fn snapshot_path(&self) -> std::path::PathBuf {
        self.config.database_path().with_extension("db.snapshot")
    }

    /// Opens the database (creating it on first use). After a restore of the add-on's data
    /// (which holds only the snapshot, not the live files) the snapshot becomes the database.
    pub async fn open_store(&self) -> Result<Store, StartError> {
        self.create_data_dir()?;
        let db = self.config.database_path();
        let snapshot = self.snapshot_path();
        if !db.exists() && snapshot.is_file() {
            std::fs::copy(&snapshot, &db).map_err(|e| {
                StartError::Other(format!(
                    "cannot restore {} from {}: {e}",
                    db.display(),
                    snapshot.display()
                ))
            })?;
            tracing::warn!(database = %db.display(), "restored the database from its backup snapshot");
        }
        Ok(Store::open(&self.config.database_path()).await?)
    }
}
