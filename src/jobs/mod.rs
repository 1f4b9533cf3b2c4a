//! The job kinds offsite knows. A kind plugs in as one file (its args, worker, description,
//! tags and config checks: [`JobArgs`] and [`Kind`]) plus one [`add`] line in [`registry_with`].

pub mod db_dump;
pub mod device_fetch;
pub mod google_delta;
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

/// A job kind as offsite wires it, implemented in the kind's own file beside its args: the
/// worker that runs it and the checks of its args against this installation. With it, a kind
/// is one [`add`] line in [`registry_with`]; its description for people and its tags are its
/// [`JobArgs`] methods.
pub trait Kind: JobArgs {
    type Worker: Worker<Self>;
    fn worker(services: &Arc<Services>) -> Self::Worker;
    /// The worker, knowing the kind's settings after the configuration's overrides (its
    /// timeout and stall limit); by default [`Kind::worker`].
    fn worker_with(services: &Arc<Services>, _settings: &KindSettings) -> Self::Worker {
        Self::worker(services)
    }
    /// Checks of the args against this installation (e.g. that a named destination is
    /// configured), at enqueue time; errors name the field without the `args.` prefix.
    fn check(&self, _services: &Services) -> Result<(), FieldError> {
        Ok(())
    }
    /// The attempts a job with these args gets unless its submission says otherwise (`None`:
    /// the kind's setting), so that the API, the CLI and a schedule agree (a database's
    /// `retries`).
    fn max_attempts(&self, _services: &Services) -> Option<i64> {
        None
    }
}

/// Registers kind `K` with the config's overrides of its settings.
pub fn add<K: Kind>(registry: &mut Registry, config: &Config, services: &Arc<Services>) {
    let s = services.clone();
    let m = services.clone();
    let mut settings = K::settings();
    apply(config, K::KIND, &mut settings);
    registry.register_with::<K, _>(
        K::worker_with(services, &settings),
        |k| apply(config, K::KIND, k),
        move |a| a.check(&s),
        move |a| a.max_attempts(&m),
    );
}

/// For [`Kind::check`]: that the source named in `field` is configured.
pub(crate) fn source_configured(
    services: &Services,
    field: &str,
    name: &str,
) -> Result<(), FieldError> {
    known(services.has_source(name), field, "source", name)
}

/// For [`Kind::check`]: that the destination named in `field` is configured.
pub(crate) fn destination_configured(
    services: &Services,
    field: &str,
    name: &str,
) -> Result<(), FieldError> {
    known(services.has_destination(name), field, "destination", name)
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
    add::<noop::NoopArgs>(&mut registry, config, &services);
    add::<snapshot::SnapshotScanArgs>(&mut registry, config, &services);
    add::<snapshot::SnapshotUploadArgs>(&mut registry, config, &services);
    add::<retention::RetentionPruneArgs>(&mut registry, config, &services);
    add::<db_dump::DbDumpArgs>(&mut registry, config, &services);
    add::<device_fetch::DeviceFetchArgs>(&mut registry, config, &services);
    add::<google_delta::GoogleDeltaArgs>(&mut registry, config, &services);
    add::<google_delta::GoogleFileArgs>(&mut registry, config, &services);

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

/// `every = "<interval>"`, as a schedule form.
pub(crate) fn every(interval: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("every".into(), toml::Value::String(interval.into()));
    toml::Value::Table(t)
}

/// The schedule a configuration section `[<section>.<name>]` makes: `form` (any engine form)
/// running `args` of kind `K`, named `<kind>.<name>`. An error names the section's own key,
/// as `key` renames the schedule's (`schedule.at` is a database's `time`).
pub(crate) fn section_schedule<K: JobArgs>(
    section: &str,
    name: &str,
    form: toml::Value,
    args: serde_json::Value,
    key: impl Fn(Option<&str>) -> String,
    registry: &Registry,
    config: &Config,
) -> Result<crate::queue::store::ScheduleDef, ConfigError> {
    let job = crate::queue::EnqueueRequest {
        kind: K::KIND.into(),
        args,
        ..Default::default()
    };
    crate::queue::scheduler::config_schedule(
        &format!("{}.{name}", K::KIND),
        &format!("configuration [{section}.{name}]"),
        form,
        &job,
        registry,
        &config.timezone(),
    )
    .map_err(|e| {
        config.error(
            &format!("{section}.{name}.{}", key(e.key.as_deref())),
            e.message,
        )
    })
}

/// The tag of jobs that use a destination: they wait (snoozed, no attempt used) while it needs
/// authorization, and `Store::wake_tag` with it wakes them once it is authorized.
pub fn destination_tag(destination: &str) -> String {
    format!("destination:{destination}")
}

#[cfg(test)]
mod tests {
    use figment::providers::Env;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;
    use crate::queue::{EnqueueRequest, JobContext, JobError};

    /// A kind in a few lines: its description and its config check are its own.
    #[derive(Serialize, Deserialize)]
    struct PingArgs {
        destination: String,
    }

    impl JobArgs for PingArgs {
        const KIND: &'static str = "test_ping";
        fn settings() -> KindSettings {
            KindSettings {
                queue: "default".into(),
                max_attempts: 1,
                priority: 2,
                timeout: None,
                stall_timeout: None,
            }
        }
        fn describe(&self) -> String {
            format!("ping of {}", self.destination)
        }
    }

    struct PingWorker;

    impl Worker<PingArgs> for PingWorker {
        async fn work(&self, _: JobContext, _: PingArgs) -> Result<(), JobError> {
            Ok(())
        }
    }

    impl Kind for PingArgs {
        type Worker = PingWorker;
        fn worker(_: &Arc<Services>) -> PingWorker {
            PingWorker
        }
        fn check(&self, services: &Services) -> Result<(), FieldError> {
            destination_configured(services, "destination", &self.destination)
        }
    }

    fn setup() -> (Config, Arc<Services>, Registry) {
        // The built-in configuration: source "inbox", destination "outbox".
        let config = Config::load_with(None, Env::prefixed("OFFSITE_NOT_SET_IN_UNIT_TESTS_"))
            .expect("built-in config");
        let services = Arc::new(Services::new(&config).expect("services"));
        let registry = registry_with(&config, services.clone()).expect("registry");
        (config, services, registry)
    }

    fn ping(destination: &str) -> EnqueueRequest {
        EnqueueRequest {
            kind: PingArgs::KIND.into(),
            args: json!({ "destination": destination }),
            ..Default::default()
        }
    }

    #[test]
    fn a_kind_registered_in_one_line_brings_its_description_and_its_check() {
        let (config, services, mut registry) = setup();
        add::<PingArgs>(&mut registry, &config, &services);

        let job = registry
            .prepare(&ping("outbox"))
            .expect("outbox is configured");
        assert_eq!(job.kind, "test_ping");
        let errors = registry.prepare(&ping("nowhere")).unwrap_err();
        assert_eq!(
            errors,
            [FieldError::new(
                "args.destination",
                "destination \"nowhere\" is not configured"
            )]
        );

        assert_eq!(
            registry
                .describe("test_ping", &json!({ "destination": "outbox" }))
                .as_deref(),
            Some("ping of outbox")
        );
        // Args it cannot read, and kinds not registered: no description of their own.
        assert_eq!(registry.describe("test_ping", &json!({})), None);
        assert_eq!(registry.describe("gone_kind", &json!({})), None);
    }

    #[test]
    fn the_kinds_describe_themselves() {
        let (_, _, registry) = setup();
        let d = |kind: &str, args| registry.describe(kind, &args);
        assert_eq!(
            d(
                "snapshot_upload",
                json!({"source": "inbox", "destination": "outbox", "backup": "abc",
                       "name": "Weekly", "date": "2024-01-01T00:00:00Z"})
            )
            .as_deref(),
            Some("upload of \"Weekly\" to outbox")
        );
        assert_eq!(
            d("retention_prune", json!({"destination": "outbox"})).as_deref(),
            Some("clean-up of old backups on outbox")
        );
        assert_eq!(
            d(
                "snapshot_scan",
                json!({"source": "inbox", "destinations": ["outbox"]})
            )
            .as_deref(),
            Some("scan for new backups")
        );
        // The default: the kind's name in words.
        assert_eq!(d("noop", json!({})).as_deref(), Some("noop"));
    }
}
