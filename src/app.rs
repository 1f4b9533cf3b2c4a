//! Wiring: opens everything a command needs, starts the worker (pools, scheduler, upkeep,
//! API) and stops it cleanly.

use std::{fs::File, net::SocketAddr, path::Path, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::ops::{Setup, StartError};
use crate::{
    api,
    cli::{self, Cli, Command, Failure},
    config::Config,
    http::{self, AppState},
    jobs, logging,
    metrics::Metrics,
    queue::{
        executor::{EngineSettings, Executor, ExecutorHandle, Observer, QueueSettings},
        maintenance::{self, MaintenanceSettings},
        scheduler::{self, Scheduler},
        store::PruneAges,
    },
};

use crate::jobs::SNAPSHOTS;

/// Runs the parsed command line: `run` starts the worker, every other command is the CLI's.
pub async fn execute(cli: Cli) -> Result<(), Failure> {
    let setup = cli::setup(&cli)?;
    match cli.command {
        Command::Run => {
            logging::init(&setup.config.log);
            run(setup).await?;
            Ok(())
        }
        Command::Openapi => {
            print!("{}", api::openapi_json());
            Ok(())
        }
        command => cli::command(setup, command).await,
    }
}

/// This worker's stable identity, and a lock that keeps a second worker off the same data dir.
struct Identity {
    id: String,
    /// The data directory's and the (database, instance id) lock.
    _locks: [File; 2],
}

fn identity(config: &Config) -> Result<Identity, StartError> {
    let dir = &config.data_dir;
    let Some(lock) = exclusive_lock(&dir.join("worker.lock"))? else {
        return Err(StartError::Other(format!(
            "another offsite worker is already running with data directory {}",
            dir.display()
        )));
    };
    let id = match &config.instance_id {
        Some(id) => id.clone(),
        None => stored_instance_id(&dir.join("instance-id"))?,
    };
    // Leases are owned by instance id: two live workers with one id on one database would take
    // each other's jobs back as their own orphans. One lock per (database, id) keeps the
    // second out, whatever data directories they have.
    let db = config.database_path();
    let id_lock_path = {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".worker-{}.lock", hex_id(&id)));
        db.with_file_name(name)
    };
    let Some(id_lock) = exclusive_lock(&id_lock_path)? else {
        return Err(StartError::Other(format!(
            "another offsite worker with instance id {id:?} is already running on database {}; \
             give each worker its own `instance_id` (or leave it unset)",
            db.display()
        )));
    };
    Ok(Identity {
        id,
        _locks: [lock, id_lock],
    })
}

/// Takes the lock on `path` (created if missing) for as long as the file is open; None when
/// another process holds it.
fn exclusive_lock(path: &Path) -> Result<Option<File>, StartError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StartError::Other(format!("cannot open {}: {e}", path.display())))?;
    Ok(file.try_lock().is_ok().then_some(file))
}

/// A file-name-safe form of an instance id.
fn hex_id(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn stored_instance_id(path: &Path) -> Result<String, StartError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    let id = format!(
        "{}-{:08x}",
        if host.is_empty() { "offsite" } else { host },
        rand::random::<u32>()
    );
    std::fs::write(path, format!("{id}\n"))
        .map_err(|e| StartError::Other(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

/// A started worker.
pub struct Running {
    pub state: AppState,
    pub addr: Option<SocketAddr>,
    stop: CancellationToken,
    executor_handle: ExecutorHandle,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    _identity: Identity,
}

impl Running {
    /// Stops the API and scheduler, lets running jobs finish within the grace period, hands
    /// back the rest, and closes the database.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.stop.cancel();
        if let Some(server) = self.server {
            let _ = server.await;
        }
        self.state.executor.shutdown(self.executor_handle).await;
        for task in self.tasks {
            let _ = task.await;
        }
        self.state.store.close().await;
        info!("stopped");
    }
}

pub fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        lease: config.engine.lease,
        poll_interval: config.engine.poll_interval,
        watch_interval: config.engine.watch_interval,
        shutdown_grace: config.engine.shutdown_grace,
        backoff_cap: config.engine.backoff_cap,
    }
}

fn age(d: std::time::Duration) -> Option<std::time::Duration> {
    (!d.is_zero()).then_some(d)
}

/// Starts the worker: pools, scheduler, upkeep and (if enabled) the API.
pub async fn start(setup: Setup) -> Result<Running, StartError> {
    let config = setup.config.clone();
    setup.create_data_dir()?;
    let identity = identity(&config)?;
    let store = setup.open_store().await?;

    let reclaimed = store.rescue(Some(&identity.id)).await?;
    if !reclaimed.is_empty() {
        warn!(jobs = ?reclaimed, "reclaimed jobs this instance was running when it stopped");
    }
    store.sync_schedules(&setup.schedules).await?;
    // Before any worker runs: what crashed or cancelled uploads left behind goes now.
    if let Err(e) = jobs::snapshot::sweep_partials(&setup.services, &store, true).await {
        warn!(error = %e, "could not look for unfinished uploads to remove");
    }
    jobs::db_dump::sweep_at_start(&config, &store).await;
    // Each destination checks it can be used (a folder is created, a bucket looked at); what
    // only the user can fix stops the start, a network that is down for now does not.
    for name in setup.services.destination_names() {
        let dest = setup
            .services
            .destination(name)
            .map_err(|e| StartError::Other(e.to_string()))?;
        match dest.prepare().await {
            Ok(()) => {}
            Err(crate::transfer::TransferError::Permanent(why)) => {
                return Err(StartError::Other(format!("destination {name}: {why}")));
            }
            Err(e) => warn!(destination = %name, error = %e, "could not check the destination now"),
        }
    }
    for s in config.sources.values() {
        // The built-in inbox is created so there is somewhere to drop backups.
        if let crate::config::SourceConfig::Folder { path } = s
            && path.starts_with(&config.data_dir)
        {
            let _ = std::fs::create_dir_all(path);
        }
    }
    if config
        .snapshots
        .as_ref()
        .is_some_and(|s| s.enabled && s.scan_on_start)
    {
        scheduler::run_now(&store, &setup.registry, SNAPSHOTS)
            .await
            .map_err(|e| StartError::Other(format!("cannot start the snapshot scan: {e}")))?;
    }

    let metrics = Metrics::new();
    let queues = config
        .queues
        .iter()
        .map(|(name, q)| QueueSettings {
            name: name.clone(),
            concurrency: q.concurrency,
        })
        .collect();
    let executor = Executor::new(
        store.clone(),
        setup.registry.clone(),
        identity.id.clone(),
        engine_settings(&config),
        queues,
        Observer::new(metrics.clone()),
    );
    let executor_handle = executor.start();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.push(maintenance::start(
        store.clone(),
        executor.clone(),
        MaintenanceSettings {
            rescue_every: (config.engine.lease / 2).max(std::time::Duration::from_secs(1)),
            promote_every: std::time::Duration::from_secs(1),
            prune_every: config.prune.interval,
            prune: PruneAges {
                completed: age(config.prune.completed_after),
                cancelled: age(config.prune.cancelled_after),
                discarded: age(config.prune.discarded_after),
            },
        },
        stop.clone(),
    ));
    let scheduler = Scheduler {
        store: store.clone(),
        registry: setup.registry.clone(),
        executor: executor.clone(),
    };
    tasks.push(tokio::spawn(scheduler.run(stop.clone())));
    if let Some(ha) = crate::homeassistant::HomeAssistant::new(
        config.clone(),
        store.clone(),
        setup.services.clone(),
        setup.registry.clone(),
    )? {
        tasks.push(ha.start(stop.clone()));
    }

    // The API and panel always have a token: the configured one, else one generated on first
    // start and kept owner-only in the data directory.
    let (api_config, token_source) = if config.api.enabled {
        let (token, source) = http::auth::load_or_create_token(&config).map_err(|e| {
            StartError::Other(format!(
                "cannot keep the API token in {}: {e}",
                config.data_dir.join(http::auth::TOKEN_FILE).display()
            ))
        })?;
        let mut c = (*config).clone();
        c.api.token = Some(token);
        (Arc::new(c), Some(source))
    } else {
        (config.clone(), None)
    };
    let state = AppState {
        store: store.clone(),
        registry: setup.registry.clone(),
        executor: executor.clone(),
        config: api_config.clone(),
        instance_id: identity.id.clone(),
        services: setup.services.clone(),
        auth: Default::default(),
        panel_key: Arc::new(
            http::PanelKey::load_or_create(&config.data_dir).map_err(|e| {
                StartError::Other(format!(
                    "cannot keep the panel key in {}: {e}",
                    config.data_dir.display()
                ))
            })?,
        ),
        sign_in: Arc::new(if config.api.enabled && config.api.allow_from.is_empty() {
            http::auth::SignInCode::generate()
        } else {
            http::auth::SignInCode::none()
        }),
    };

    let (server, addr) = if config.api.enabled {
        let listener = TcpListener::bind(config.api.listen).await.map_err(|e| {
            StartError::Other(format!(
                "cannot listen on {} (api.listen): {e}",
                config.api.listen
            ))
        })?;
        let addr = listener.local_addr().ok();
        let routes = api::router()
            .merge(crate::web::router(state.clone()))
            .merge(crate::metrics::router(
                metrics,
                store.clone(),
                setup.registry.queues().to_vec(),
            ));
        let app = http::serve(state.clone(), routes);
        let stop_server = stop.clone();
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop_server.cancelled().await })
                .await;
        });
        (Some(server), addr)
    } else {
        (None, None)
    };

    info!(
        instance = %identity.id,
        database = %store.path().display(),
        api = %addr.map(|a| format!("http://{a}/api/v1")).unwrap_or_else(|| "disabled".into()),
        queues = config.queues.len(),
        schedules = setup.schedules.len(),
        "offsite is running"
    );
    if let (Some(addr), Some(source)) = (addr, token_source) {
        let token_is = match source {
            http::auth::TokenSource::Configured => "api.token".to_string(),
            _ => format!(
                "in {}",
                config.data_dir.join(http::auth::TOKEN_FILE).display()
            ),
        };
        match state.sign_in.peek() {
            // Like Jupyter: one line a newcomer can open. It carries a one-time code, not the
            // token: the log never holds a credential that still works.
            Some(code) => info!(
                "sign in to the panel: {} (works once; then sign in with the API token, {token_is})",
                http::auth::sign_in_link(addr, &code),
            ),
            // Only api.allow_from may connect (the add-on: Home Assistant's ingress, which
            // signs users in itself): a link to this machine would open nothing.
            None => info!(
                "the API answers only {:?}; its token is {token_is}",
                config.api.allow_from
            ),
        }
    }
    Ok(Running {
        state,
        addr,
        stop,
        executor_handle,
        tasks,
        server,
        _identity: identity,
    })
}

/// Resolves when the process is asked to stop (SIGTERM from Home Assistant or Docker, Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `offsite run`.
pub async fn run(setup: Setup) -> Result<(), StartError> {
    let running = start(setup).await?;
    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
