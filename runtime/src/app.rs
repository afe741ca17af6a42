//! Wiring of `outpost run`: opens the log and state, starts every component, and shuts them
//! down in order on SIGTERM/SIGINT.
//!
//! Start-up order: bind the HTTP listener (a busy port fails before any data is touched),
//! create the data directory, open the state store (`<data_dir>/state`) and resolve the edge
//! id from its two copies (`state::open_box`: a damaged store is refused unless
//! `--rebuild-state`), open the log (`<data_dir>/log`, recovering every topic's tail),
//! register the state store as a retention guard, then start the components. Every long-running part is a
//! *component*: a task spawned in [`App::start`] that runs until the shutdown flag turns true.
//! Later components (MQTT ingest, plugins, forwarder) are added there, in one place.
//!
//! Shutdown: the flag turns true, components get [`SHUTDOWN_GRACE`] to finish (the HTTP server
//! stops accepting, ends long polls and finishes in-flight requests), then the log is closed
//! (fsyncs everything) and the state store synced. A component that stops on its own before
//! shutdown is requested stops the whole process with an error.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::kernel::{Context, Identity, Shutdown, ShutdownTrigger};
use tokio::task::JoinSet;

use crate::api::{self, ApiState};
use crate::config::{Config, ConfigError};
use crate::contracts::Contracts;
use crate::log::{Log, LogError};
use crate::simulate::SimulateError;
use crate::state::{open_box, BoxOptions, StateError, StateStore, StoredIdentity};

/// The default log filter of a box at `level`: everything at `level` but the noisy modules of
/// the embedded broker and the OPC-UA client (see `cli::init_logging`). Also what the
/// benchmarks give the boxes they start as child processes.
pub fn default_log_filter(level: &str) -> String {
    const QUIET: &str =
        "rumqttd=off,opcua_client::session::client=off,opcua_core::comms::secure_channel=off";
    format!("{level},{QUIET}")
}

/// How long components may take to stop once shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop `outpost run`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr} (`http.listen`): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The log failed to open or close.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// The state store failed to open or sync.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signal(#[source] std::io::Error),
    /// A component failed to start or failed while running.
    #[error("component `{name}` failed: {source}")]
    Component {
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A component stopped before shutdown was requested (it must run until then).
    #[error("component `{name}` stopped on its own before shutdown was requested")]
    StoppedEarly { name: &'static str },
    /// A blocking start-up or shutdown step panicked or was cancelled.
    #[error("{step} did not finish: {source}")]
    Task {
        step: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

type ComponentResult = (&'static str, Result<(), AppError>);

impl AppError {
    /// `name` failed with `source`.
    pub fn component(
        name: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> AppError {
        AppError::Component {
            name,
            source: source.into(),
        }
    }
}

/// A running Outpost: storage open, components started.
#[derive(Debug)]
pub struct App {
    local_addr: SocketAddr,
    data_dir: PathBuf,
    log: Log,
    state: StateStore,
    edge_id: String,
    shutdown: ShutdownTrigger,
    components: JoinSet<ComponentResult>,
    /// The plugin registry, when plugins are enabled (settings are reloaded into it).
    plugins: Option<crate::plugins::registry::PluginRegistry>,
}

/// Reads the config again as `outpost run` first did (file, overrides, validation), for a
/// reload on SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Runs Outpost until SIGTERM or SIGINT, then shuts down cleanly. With `reload`, SIGHUP
/// re-reads the config and applies what can change while running (see
/// [`App::reload_on_sighup`]).
pub async fn run(config: Config, reload: Option<Reloader>) -> Result<(), AppError> {
    let signal = shutdown_signal()?;
    let mut app = App::start(config).await?;
    if let Some(reload) = reload {
        app.reload_on_sighup(reload)?;
    }
    app.run_until(signal).await
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C); the handlers are installed immediately.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "Shutdown requested."),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "Shutdown requested."),
        }
    })
}

async fn blocking<T: Send + 'static>(
    step: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| AppError::Task { step, source })
}

/// Opens the state store (refusing a damaged one unless told to rebuild, see
/// [`crate::state::open_box`]; on a full disk after releasing the ballast, see
/// [`crate::state::ballast`]), resolves the identity, then opens the log and makes sure the
/// ballast is in place.
fn open_storage(
    data_dir: &Path,
    config: &Config,
) -> Result<(Log, StateStore, StoredIdentity), AppError> {
    std::fs::create_dir_all(data_dir).map_err(|source| AppError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let options = BoxOptions {
        explicit_edge_id: config.edge.edge_id.clone(),
        store_id: config.edge.store_id.clone(),
        rebuild: config.edge.rebuild_state,
    };
    let no_space = |e: &StateError| {
        matches!(e, StateError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    };
    let mut log_config = config.log.clone();
    let opened = match open_box(data_dir, &options) {
        Err(e) if no_space(&e) && crate::state::ballast::release(data_dir) => {
            tracing::warn!(data_dir = %data_dir.display(), error = %e, "The disk is full: released the ballast so the state store can open. The box serves what it holds; appends are refused until space is freed.");
            // The released space is the state store's: the log leaves it free.
            log_config.min_free_bytes = log_config
                .min_free_bytes
                .max(crate::state::ballast::BALLAST_BYTES);
            open_box(data_dir, &options)?
        }
        other => other?,
    };
    let log = Log::open(&data_dir.join("log"), log_config)?;
    crate::state::ballast::ensure(data_dir);
    Ok((log, opened.store, opened.identity))
}

/// How often a running box syncs its state store, which also rewrites the consumer positions
/// checkpoint a rebuild restores from (`crate::state::open_box`).
pub const STATE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// Syncs the state store every [`STATE_CHECKPOINT_INTERVAL`] until shutdown. A failed sync is
/// logged by the store and retried at the next tick.
async fn checkpoint_state(state: StateStore, shutdown: Shutdown) -> ComponentResult {
    let mut tick = tokio::time::interval(STATE_CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.requested() => return ("state-checkpoint", Ok(())),
            _ = tick.tick() => {
                let state = state.clone();
                let _ = tokio::task::spawn_blocking(move || state.sync()).await;
            }
        }
    }
}

impl App {
    /// Opens storage and starts every component; returns once the API is accepting requests.
    pub async fn start(mut config: Config) -> Result<App, AppError> {
        // Every device, API client and segment is a file descriptor: take what the system
        // allows before anything is opened (components budget their connections against it).
        match crate::kernel::limits::raise_open_files() {
            Ok((before, after)) if before != after => {
                tracing::info!(
                    before,
                    after,
                    "Raised the open-file limit to the hard limit."
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, limit = crate::kernel::limits::open_files(), "Could not raise the open-file limit; connection budgets follow the current one.")
            }
        }
        let addr = config.http.listen_addr()?;
        if config.simulate.enabled {
            add_simulated_fridge(&mut config).await?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;

        let config = Arc::new(config);
        let data_dir = config.edge.data_dir.clone();
        let (log, state, identity) = {
            let config = config.clone();
            let dir = data_dir.clone();
            blocking("opening the log and state store", move || {
                open_storage(&dir, &config)
            })
            .await??
        };
        log.add_retention_guard(Arc::new(state.clone()));
        let edge_id = identity.edge_id;

        let (shutdown, shutdown_rx) = Shutdown::new();
        let ctx = Context::new(
            &data_dir,
            log.clone(),
            state.clone(),
            Identity::new(&edge_id, &identity.store_id),
            shutdown_rx,
        );
        // Plugins: the registry serves the /plugins endpoints; its runners start below.
        let plugins = {
            let (ctx, plugins_config) = (ctx.clone(), config.plugins.clone());
            blocking("opening the plugin registry", move || {
                crate::plugins::registry::open_for_box(&ctx, &plugins_config)
            })
            .await?
        };
        let plugins = match plugins {
            Ok(plugins) => plugins,
            Err(e) => {
                let _ = log.close();
                return Err(AppError::component("plugins", e));
            }
        };
        let mut components = JoinSet::new();
        // Every ingest path refuses values that break their topic's store-event contract.
        let contracts = Contracts::from_config(&config.ingest);

        // MQTT: the embedded broker behind Outpost's device listener, subscriptions to external
        // brokers, and the sinks back to devices. A busy MQTT port does not stop the box: the
        // listener reports it in status and keeps trying to bind.
        let (mqtt_started, mqtt_tasks) = match crate::ingest::mqtt::start(
            &ctx,
            &config.mqtt.broker,
            &config.mqtt.sources,
            contracts,
        )
        .await
        {
            Ok(started) => started,
            Err(e) => {
                let _ = log.close();
                return Err(AppError::component("mqtt", e));
            }
        };
        for (name, task) in mqtt_tasks {
            spawn_component(&mut components, name, task);
        }
        for sink in config.mqtt.sinks.clone() {
            let embedded = mqtt_started.embedded.zip(mqtt_started.login.clone());
            let task = crate::sink::mqtt::run_sink(ctx.clone(), sink, embedded);
            spawn_component(&mut components, "mqtt-sink", task);
        }

        // The Kafka listener: local Kafka clients produce to and consume from the log. A busy
        // port does not stop the box: it retries, and the box is not ready until it binds.
        if config.kafka.enabled {
            let bound = crate::kafka::bind(&config.kafka, &ctx.ready).await;
            let task = crate::kafka::run(ctx.clone(), config.kafka.clone(), bound, contracts);
            spawn_component(&mut components, "kafka", task);
        }

        // Store-and-forward: only with a cloud configured; it guards retention so a forwarded
        // topic keeps its segments until they are forwarded.
        let forwarder = config
            .forward
            .enabled()
            .then(|| crate::forward::Forwarder::new(&ctx, config.forward.clone()));
        if let Some(f) = &forwarder {
            log.add_retention_guard(Arc::new(f.clone()));
        }
        // Under the disk budget, segments are evicted by forwarding class (bulk first, never
        // critical), with a gap marker in `outpost.gaps` for each; with or without a cloud.
        crate::forward::evict::install(&log, &config.forward);

        // Modbus devices and OPC-UA servers register their sources when `run` is called, so
        // they are started before the HTTP API: its status lists them from its first answer.
        if !config.modbus.devices.is_empty() {
            let fut = crate::ingest::modbus::run(&ctx, config.modbus.clone());
            spawn_component(&mut components, "modbus", fut);
        }
        if !config.opcua.servers.is_empty() {
            let fut = crate::ingest::opcua::run(&ctx, config.opcua.clone());
            spawn_component(&mut components, "opcua", fut);
        }
        // HTTP API.
        let api_state = ApiState::new(ctx.clone(), config.http.clone()).with_contracts(contracts);
        components.spawn(serve_http(
            listener,
            api::forward::with_forwarder(
                api::plugins::with_plugins(api::router(api_state), plugins.clone()),
                forwarder.clone(),
            ),
            config.http.clone(),
            ctx.shutdown.clone(),
        ));

        components.spawn(checkpoint_state(state.clone(), ctx.shutdown.clone()));
        // Retention runs on the log's own background thread (every `log.retention_check_ms`).
        if let Some(f) = forwarder {
            spawn_component(&mut components, "forward", f.run(ctx.shutdown.clone()));
        }
        if config.forward.enabled() && !config.mirror.topics.is_empty() {
            let fut = crate::mirror::run(
                ctx.clone(),
                config.forward.kafka.clone(),
                config.mirror.clone(),
            );
            spawn_component(&mut components, "mirror", fut);
        }
        if let Some(registry) = plugins.clone() {
            registry.set_source_topics(source_topics(&config));
            ctx.ready.wait_for(PLUGINS_STARTED);
            components.spawn(run_plugins(
                registry,
                ctx.ready.clone(),
                ctx.shutdown.clone(),
            ));
        }
        // Demo traffic (`run --simulate`): POS events over the box's own MQTT listener.
        if config.simulate.enabled {
            let fut = crate::simulate::run_in_box(
                ctx.clone(),
                config.simulate.clone(),
                mqtt_started.listen,
            );
            spawn_component(&mut components, "simulate", fut);
        }

        tracing::info!(
            data_dir = %data_dir.display(),
            listen = %local_addr,
            mqtt = ?mqtt_started.listen,
            edge_id = %edge_id,
            store_id = %config.edge.store_id,
            topics = log.topics().len(),
            version = env!("CARGO_PKG_VERSION"),
            "Outpost is running."
        );
        ctx.ready.done(crate::kernel::ready::START_UP);
        Ok(App {
            local_addr,
            data_dir,
            log,
            state,
            edge_id,
            shutdown,
            components,
            plugins,
        })
    }

    /// The address the HTTP API listens on (the real port when `http.listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This box's edge id.
    pub fn edge_id(&self) -> &str {
        &self.edge_id
    }

    /// The open log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// On every SIGHUP from now on, reads the config with `reload` and applies the plugins'
    /// settings (`[plugins.<name>.config]`): each plugin whose settings changed is
    /// re-initialised on them, or keeps its old ones if it refuses the new (logged with the
    /// plugin's error). Other changes take effect at the next start (logged). A config that
    /// does not load is logged and changes nothing.
    pub fn reload_on_sighup(&mut self, reload: Reloader) -> Result<(), AppError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
        let shutdown = self.shutdown.subscribe();
        let plugins = self.plugins.clone();
        self.components.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.requested() => return ("reload", Ok(())),
                    _ = hup.recv() => {}
                }
                let config = match reload() {
                    Ok(config) => config,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the config does not load; nothing changed.");
                        continue;
                    }
                };
                let Some(registry) = &plugins else {
                    tracing::info!("SIGHUP: plugins are disabled; only a restart applies config changes.");
                    continue;
                };
                let outcomes = registry.apply_settings(config.plugins.settings()).await;
                for (plugin, outcome) in &outcomes {
                    if let Err(e) = outcome {
                        tracing::error!(plugin = %plugin, error = %e, "SIGHUP: the plugin refused its new settings and runs on its old ones.");
                    }
                }
                tracing::info!(
                    changed = outcomes.len(),
                    "SIGHUP: plugin settings reloaded; other config changes take effect at the next start."
                );
            }
        });
        Ok(())
    }

    /// Runs until `signal` resolves or a component stops, then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), AppError> {
        let early = tokio::select! {
            _ = signal => None,
            Some(joined) = self.components.join_next() => Some(component_outcome(joined)),
        };
        let failure = early.map(|(name, outcome)| {
            let error = outcome.err().unwrap_or(AppError::StoppedEarly { name });
            tracing::error!(component = name, error = %error, "A component stopped; shutting down.");
            error
        });
        let shut = self.shutdown().await;
        match failure {
            Some(error) => Err(error),
            None => shut,
        }
    }

    /// Stops every component, closes the log and syncs the state store.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        self.shutdown.request();
        let mut first_error = None;
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.components.join_next() => match joined {
                    None => break,
                    Some(joined) => {
                        let (name, outcome) = component_outcome(joined);
                        if let Err(error) = outcome {
                            tracing::error!(component = name, error = %error, "A component failed while stopping.");
                            first_error.get_or_insert(error);
                        }
                    }
                },
                _ = &mut deadline => {
                    tracing::warn!(
                        remaining = self.components.len(),
                        grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                        "Components did not stop in time; aborting them."
                    );
                    self.components.abort_all();
                    while self.components.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let log = self.log.clone();
        let state = self.state.clone();
        let closed = blocking("closing the log", move || -> Result<(), AppError> {
            let log_result = log.close();
            let state_result = state.sync();
            log_result?;
            state_result?;
            Ok(())
        })
        .await
        .and_then(|r| r);
        match &closed {
            Ok(()) => {
                tracing::info!(data_dir = %self.data_dir.display(), "Outpost stopped cleanly; the log is closed.")
            }
            Err(e) => tracing::error!(error = %e, "Closing the log or state store failed."),
        }
        match first_error {
            Some(error) => Err(error),
            None => closed,
        }
    }
}

fn component_outcome(joined: Result<ComponentResult, tokio::task::JoinError>) -> ComponentResult {
    match joined {
        Ok(result) => result,
        Err(e) => ("unknown", Err(AppError::component("unknown", e))),
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    http: crate::config::HttpConfig,
    shutdown: Shutdown,
) -> ComponentResult {
    let served = api::serve::serve(listener, router, &http, shutdown).await;
    let result = served.map_err(|e| AppError::component("http", e));
    ("http", result)
}

/// Runs `fut` as the component `name` of a running box: an error it ends with becomes
/// [`AppError::Component`] naming it.
fn spawn_component<E: std::error::Error + Send + Sync + 'static>(
    components: &mut JoinSet<ComponentResult>,
    name: &'static str,
    fut: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    components.spawn(async move {
        let result = fut.await.map_err(|e| AppError::component(name, e));
        (name, result)
    });
}

/// `run --simulate`: the simulated fridge is a real Modbus TCP server on loopback, polled like
/// hardware; it joins the Modbus devices as `fridge` (or `fridge-sim` if the config already has
/// a `fridge`).
async fn add_simulated_fridge(config: &mut Config) -> Result<(), AppError> {
    let addr = crate::simulate::fridge::start()
        .await
        .map_err(|e| AppError::component("simulate", SimulateError::FridgeBind(e)))?;
    let taken = |name: &str| config.modbus.devices.iter().any(|d| d.name == name);
    let name = if taken("fridge") {
        "fridge-sim"
    } else {
        "fridge"
    };
    let device = crate::simulate::fridge::device(name, addr);
    tracing::info!(device = name, topic = %device.topic_name(), modbus = %addr,
        "The simulated fridge joins the Modbus devices.");
    config.modbus.devices.push(device);
    Ok(())
}

/// The store's device topics of `shared/CONTRACTS.md`: what tills, scanners, carts, stock
/// systems and sensors publish. No plugin writes them without a grant.
pub const DEVICE_TOPICS: &[&str] = &[
    "pos.payments",
    "pos.baskets",
    "loyalty.scans",
    "cart.events",
    "inventory.updates",
    "ref.blocklist",
    "sensors.*",
];

/// The topics sources feed on this box (names or `prefix*` patterns): the device topics and
/// every configured Modbus device's, OPC-UA server's and mirrored topic.
fn source_topics(config: &Config) -> Vec<String> {
    DEVICE_TOPICS
        .iter()
        .map(|t| t.to_string())
        .chain(config.modbus.devices.iter().map(|d| d.topic_name()))
        .chain(config.opcua.servers.iter().map(|s| s.topic_name()))
        .chain(config.mirror.topics.iter().map(|t| t.local.clone()))
        .collect()
}

/// What readiness waits for until every enabled plugin is running or has failed visibly.
const PLUGINS_STARTED: &str = "plugins";

/// Installs the bundled plugins on first run and starts every installed plugin, then tells
/// `ready` (each one is running or shows why not); stops them all at shutdown (each finishes
/// and commits its current batch before the log closes).
async fn run_plugins(
    registry: crate::plugins::registry::PluginRegistry,
    ready: crate::kernel::Readiness,
    shutdown: Shutdown,
) -> ComponentResult {
    // A registry error (e.g. the bundled plugins could not be written) must not take ingestion
    // down: it is logged and the plugins that did start keep running.
    if let Err(e) = registry.start_all().await {
        tracing::error!(error = %e, "Starting the plugins failed; the box runs without the ones that did not start.");
    }
    let plugins = registry.list();
    tracing::info!(
        installed = plugins.len(),
        running = plugins
            .iter()
            .filter(|p| p.state == crate::plugins::registry::PluginState::Running)
            .count(),
        "Plugins started."
    );
    ready.done(PLUGINS_STARTED);
    shutdown.requested().await;
    registry.stop_all().await;
    ("plugins", Ok(()))
}
