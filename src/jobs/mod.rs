//! The job kinds offsite knows. A kind plugs in as one file plus one `register` line here.

pub mod noop;
pub mod retention;
pub mod services;
pub mod snapshot;

use std::sync::Arc;

use crate::{
    config::{Config, ConfigError},
    queue::{FieldError, JobArgs, KindSettings, Registry, Worker},
};
use services::Services;

fn apply(config: &Config, kind: &str, s: &mut KindSettings) {
    if let Some(k) = config.kinds.get(kind) {
        if let Some(q) = &k.queue {
            s.queue = q.clone();
        }
        if let Some(m) = k.max_attempts {
            s.max_attempts = m;
        }
        if let Some(p) = k.priority {
            s.priority = p;
        }
        if k.timeout.is_some() {
            s.timeout = k.timeout;
        }
        if k.stall_timeout.is_some() {
            s.stall_timeout = k.stall_timeout;
        }
    }
}

fn add<A: JobArgs, W: Worker<A>>(registry: &mut Registry, config: &Config, worker: W) {
    registry.register::<A, W>(worker, |s| apply(config, A::KIND, s));
}

fn known(exists: bool, field: &str, what: &str, name: &str) -> Result<(), FieldError> {
    if exists {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{what} {name:?} is not configured"),
        ))
    }
}

/// Every kind, with the config's overrides applied.
pub fn registry(config: &Config) -> Result<Registry, ConfigError> {
    registry_with(config, Arc::new(Services::new(config)?))
}

pub fn registry_with(config: &Config, services: Arc<Services>) -> Result<Registry, ConfigError> {
    let mut registry = Registry::new(config.queue_names());
    add::<noop::NoopArgs, _>(&mut registry, config, noop::NoopWorker);
    let s = services.clone();
    registry.register_checked::<snapshot::SnapshotScanArgs, _>(
        snapshot::SnapshotScanWorker(services.clone()),
        |k| apply(config, snapshot::SnapshotScanArgs::KIND, k),
        move |a| {
            known(s.has_source(&a.source), "source", "source", &a.source)?;
            a.destinations
                .iter()
                .try_for_each(|d| known(s.has_destination(d), "destinations", "destination", d))
        },
    );
    let s = services.clone();
    registry.register_checked::<snapshot::SnapshotUploadArgs, _>(
        snapshot::SnapshotUploadWorker(services.clone()),
        |k| apply(config, snapshot::SnapshotUploadArgs::KIND, k),
        move |a| {
            known(s.has_source(&a.source), "source", "source", &a.source)?;
            known(
                s.has_destination(&a.destination),
                "destination",
                "destination",
                &a.destination,
            )
        },
    );
    let s = services.clone();
    registry.register_checked::<retention::RetentionPruneArgs, _>(
        retention::RetentionPruneWorker(services.clone()),
        |k| apply(config, retention::RetentionPruneArgs::KIND, k),
        move |a| {
            known(
                s.has_destination(&a.destination),
                "destination",
                "destination",
                &a.destination,
            )
        },
    );

    for kind in config.kinds.keys() {
        if registry.get(kind).is_none() {
            let known: Vec<&str> = registry.kinds().map(|(k, _)| k).collect();
            return Err(config.error(
                &format!("kinds.{kind}"),
                format!("unknown job kind (known kinds: {})", known.join(", ")),
            ));
        }
    }
    for (kind, entry) in registry.kinds() {
        if !config.queues.contains_key(&entry.settings.queue) {
            return Err(config.error(
                &format!("kinds.{kind}.queue"),
                format!(
                    "kind {kind} runs on queue {:?}, which is not configured under [queues]",
                    entry.settings.queue
                ),
            ));
        }
    }
    Ok(registry)
}

/// The name of the schedule made from `[snapshots]`.
pub const SNAPSHOTS: &str = "snapshots";

/// The schedule made from the config's `[snapshots]` section.
pub fn snapshots_schedule(
    s: &crate::config::SnapshotsConfig,
    registry: &Registry,
    config: &Config,
) -> Result<crate::queue::store::ScheduleDef, ConfigError> {
    let in_config = |e: ConfigError| {
        let e = ConfigError {
            key: e.key.map(|k| format!("snapshots.{k}")),
            ..e
        };
        match &config.source {
            Some(f) => e.in_file(f),
            None => e,
        }
    };
    let job = crate::queue::EnqueueRequest {
        kind: snapshot::SnapshotScanArgs::KIND.into(),
        args: serde_json::json!({"source": s.source, "destinations": s.destinations}),
        ..Default::default()
    };
    crate::queue::scheduler::config_schedule(
        SNAPSHOTS,
        "configuration [snapshots]",
        s.schedule.clone(),
        &job,
        registry,
        &config.timezone(),
    )
    .map_err(in_config)
}

/// The tag of jobs that use a destination: they wait (snoozed, no attempt used) while it needs
/// authorization, and `Store::wake_tag` with it wakes them once it is authorized.
pub fn destination_tag(destination: &str) -> String {
    format!("destination:{destination}")
}

/// What a job was about, in words: `backup "Weekly" → dropbox`.
pub fn describe(job: &crate::queue::store::JobRecord) -> String {
    let arg = |k: &str| job.args.get(k).and_then(serde_json::Value::as_str);
    match (
        job.kind.as_str(),
        arg("name").or(arg("backup")),
        arg("destination"),
    ) {
        ("snapshot_upload", Some(name), Some(dest)) => format!("upload of {name:?} to {dest}"),
        ("retention_prune", _, Some(dest)) => format!("clean-up of old backups on {dest}"),
        ("snapshot_scan", _, _) => "scan for new backups".into(),
        (kind, _, _) => kind.replace('_', " "),
    }
}
