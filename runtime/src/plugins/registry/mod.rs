//! The plugin registry: installed plugins and their lifecycle — install, upgrade, remove, list
//! and logs, all at runtime without a restart.
//!
//! - [`config`]: the `[plugins]` section.
//! - [`bundled`]: the plugins embedded in the binary, installed on first run.
//! - [`store`](self::store): installed plugins on disk (layout, atomic writes, crash recovery).
//! - [`engine`]: what the registry needs from the wasm host and the runner.
//! - this file: the [`Registry`] itself, its errors and the [`PluginInfo`] it shows.
//!
//! # Lifecycle
//! - **Start** ([`Registry::start_all`]): on first run (and whenever one is missing and was not
//!   removed by the operator) the bundled plugins are installed; a bundled plugin still at an
//!   older bundled version follows the binary's version (state kept). Then every installed
//!   plugin is checked against the trust policy again (a key removed from `trusted_keys`
//!   stops its plugins), compiled and started. A plugin that cannot start is listed with its
//!   error; it does not stop the box.
//! - **Install**: refused if the name exists (use upgrade). The bundle is verified, compiled
//!   and initialised once on a throwaway instance *before* anything is written; then written,
//!   then started.
//! - **Upgrade**: the new version is verified, compiled and initialised on a fresh instance
//!   while the old one keeps running; only if that succeeds is the old runner stopped, the
//!   state reset (with `reset`) and the new runner started on the kept (or reset) state and
//!   offsets. Any failure before the switch leaves the old version running and returns the
//!   error; if the new runner fails to start after all, the old one is started again.
//! - **Remove**: stops the runner, deletes the files, drops the state and offsets only when
//!   asked. Removing a bundled plugin is remembered.
//!
//! # The plugin graph
//! Before a plugin is installed, upgraded or started, [`graph`] checks it against every other
//! loaded plugin: an install that would close a cycle (plugin outputs feeding back into its
//! inputs, wildcards included) is refused, and so is an output another plugin or a source
//! already writes, unless `plugins.output_grants` grants it. Sources are what
//! [`Registry::set_source_topics`] was given (the box's device topics and configured sources).
//!
//! # Trust
//! Operator bundles must pass [`TrustPolicy::check`] (a key in `plugins.trusted_keys`, or
//! unsigned with `plugins.allow_unsigned`). Bundled plugins are trusted because they are
//! embedded in the binary: a plugin recorded as bundled is trusted only while its digest
//! equals the embedded one.

pub mod bundled;
mod config;
mod engine;
mod graph;
mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;

use super::bundle::{Bundle, BundleError, Signer, TrustPolicy};
use super::host::PluginError;
use super::manifest::{name_problem, Manifest};
use super::runner::RunState;
use crate::kernel::{now_ms, read_lock, write_lock, Context};
use store::{io_err, PluginFiles, Store};

pub use bundled::{embedded, BundledPlugin, BUNDLED_NAMES};
pub use config::PluginsConfig;
pub use engine::{EngineError, PluginEngine, PluginRunner, RunnerReport, WasmEngine};
pub use store::{InstalledMeta, Source};

/// The registry of a box.
pub type PluginRegistry = Registry<WasmEngine>;

/// Opens the box's registry in `<data_dir>/plugins` (compiled modules cached in
/// `<data_dir>/plugins/cache`) with the embedded bundled plugins; `None` when
/// `plugins.enabled = false`. Blocking; starts nothing ([`Registry::start_all`] does).
pub fn open_for_box(
    ctx: &Context,
    config: &PluginsConfig,
) -> Result<Option<PluginRegistry>, RegistryError> {
    if !config.enabled {
        tracing::info!("Plugins are disabled (`plugins.enabled = false`).");
        return Ok(None);
    }
    let dir = ctx.component_dir("plugins");
    let engine = WasmEngine::new(
        config,
        ctx.log.max_record_bytes(),
        Some(dir.join("cache")),
        ctx.log.clone(),
        ctx.state.clone(),
    )?;
    Registry::open(&dir, config.clone(), engine, embedded()).map(Some)
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bundle is malformed or its signature is refused.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// Install of a name that exists.
    #[error("plugin {0:?} is already installed; use `outpost plugin upgrade` (PUT /plugins/{0}) to replace it")]
    AlreadyInstalled(String),
    /// No such plugin.
    #[error("no plugin {0:?} is installed")]
    NotInstalled(String),
    /// Upgrade with a bundle whose manifest names another plugin.
    #[error("the bundle is plugin {found:?}, not {expected:?}")]
    NameMismatch { expected: String, found: String },
    /// A name that cannot be a plugin.
    #[error("{0:?} is not a plugin name: {1}")]
    InvalidName(String, &'static str),
    /// The module does not compile or does not implement the ABI.
    #[error("plugin {name:?} was refused: {source}")]
    Compile {
        name: String,
        #[source]
        source: EngineError,
    },
    /// `outpost_init` failed on the new version.
    #[error("plugin {name:?} failed to initialise: {source}")]
    Init {
        name: String,
        #[source]
        source: EngineError,
    },
    /// The runner did not start.
    #[error("plugin {name:?} did not start: {source}")]
    Start {
        name: String,
        #[source]
        source: EngineError,
    },
    /// Resetting the plugin's state failed.
    #[error("resetting the state of plugin {name:?} failed: {source}")]
    Reset {
        name: String,
        #[source]
        source: EngineError,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A file of the registry is unreadable.
    #[error("{path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    /// The wasm host could not be set up.
    #[error("the plugin host: {0}")]
    Host(#[from] PluginError),
    /// A file of the registry could not be encoded.
    #[error("cannot encode {file}: {source}")]
    Encode {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A blocking task panicked.
    #[error("a plugin task did not finish: {0}")]
    Task(String),
    /// The plugin would take the box past its plugin budget.
    #[error("plugin {name:?} does not fit the box's plugin budget: {problem}")]
    OverBudget { name: String, problem: String },
    /// The plugin's outputs would feed back into its own inputs through other plugins.
    #[error("plugin {name:?} would close a cycle in the plugin graph, so one record would never stop multiplying: {cycle}; change an input or an output")]
    Cycle { name: String, cycle: String },
    /// An output of the plugin is already written by another plugin or fed by a source.
    #[error("plugin {name:?} may not write {topic:?}: {writer} already writes it; grant it in the box config (`plugins.output_grants.{name} = [{topic:?}]`) if that is intended")]
    OutputTaken {
        name: String,
        topic: String,
        writer: String,
    },
}

/// One plugin as `list` and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// The manifest's description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Where it came from.
    pub source: Source,
    /// Key id of the signer, `unsigned` or `bundled`.
    pub signer: String,
    /// Hex SHA-256 digest of the bundle content.
    pub sha256: String,
    /// First install time, epoch ms.
    pub installed_at_ms: u64,
    /// Time the current version was installed, epoch ms.
    pub updated_at_ms: u64,
    /// Input topics and patterns.
    pub inputs: Vec<String>,
    /// Output topics.
    pub outputs: Vec<String>,
    /// The settings it runs on: the manifest's `[config]` with the box's
    /// `[plugins.<name>.config]` over it, as `outpost_init` gets them.
    pub config: Value,
    /// `starting`, `running`, `quarantined`, `stopped` or `failed`.
    pub state: PluginState,
    /// Why it is not running, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The runner's own status (counters, lag, timings), when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<Value>,
}

/// Where an installed plugin is in its life, as `list` and the API show it: the runner's
/// [`RunState`] while it has one, else `starting`, `stopped` or `failed`. Serialized in lower
/// case (`"running"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Installed, not started yet.
    Starting,
    /// Consuming its inputs.
    Running,
    /// Stopped after too many consecutive failures (see `error`).
    Quarantined,
    /// Stopped on request.
    Stopped,
    /// Did not start, or stopped by an error (see `error`).
    Failed,
}

impl PluginState {
    /// The lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Quarantined => "quarantined",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RunState> for PluginState {
    fn from(state: RunState) -> PluginState {
        match state {
            RunState::Running => PluginState::Running,
            RunState::Quarantined => PluginState::Quarantined,
            RunState::Stopped => PluginState::Stopped,
            RunState::Failed => PluginState::Failed,
        }
    }
}

struct Slot<E: PluginEngine> {
    meta: InstalledMeta,
    manifest: Option<Manifest>,
    module: Option<E::Module>,
    runner: Option<Arc<E::Runner>>,
    /// The state shown while there is no runner: starting, stopped or failed.
    idle_state: PluginState,
    /// Why there is no runner.
    error: Option<String>,
}

impl<E: PluginEngine> Slot<E> {
    fn set_runner(&mut self, runner: E::Runner) {
        self.runner = Some(Arc::new(runner));
        self.error = None;
    }

    fn set_failed(&mut self, error: String) {
        self.runner = None;
        self.idle_state = PluginState::Failed;
        self.error = Some(error);
    }
}

struct Inner<E: PluginEngine> {
    dir: PathBuf,
    store: Store,
    config: PluginsConfig,
    policy: TrustPolicy,
    engine: Arc<E>,
    bundled: Vec<(BundledPlugin, Bundle)>,
    slots: RwLock<BTreeMap<String, Slot<E>>>,
    /// Topics (names or `prefix*` patterns) sources feed: no plugin writes them without a grant.
    source_topics: RwLock<Vec<String>>,
    /// The box's settings per plugin (`[plugins.<name>.config]`), laid over each manifest's
    /// `[config]` when the plugin is initialised.
    settings: RwLock<BTreeMap<String, toml::Table>>,
    /// Serialises install, upgrade, remove, start and stop.
    ops: tokio::sync::Mutex<()>,
}

/// The plugin registry. Cheap to clone.
pub struct Registry<E: PluginEngine> {
    inner: Arc<Inner<E>>,
}

impl<E: PluginEngine> Clone for Registry<E> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<E: PluginEngine> std::fmt::Debug for Registry<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.inner.dir)
            .field(
                "plugins",
                &read_lock(&self.inner.slots).keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    match name_problem(name) {
        Some(problem) => Err(RegistryError::InvalidName(name.to_string(), problem)),
        None => Ok(()),
    }
}

impl<E: PluginEngine> Registry<E> {
    /// Opens the registry in `dir` (`<data dir>/plugins`): creates it, finishes or rolls back
    /// swaps a crash interrupted, and reads what is installed. Starts nothing.
    pub fn open(
        dir: &Path,
        config: PluginsConfig,
        engine: E,
        bundled: &[BundledPlugin],
    ) -> Result<Registry<E>, RegistryError> {
        let policy = config.trust_policy()?;
        let settings = config.settings();
        let store = Store::open(dir)?;
        let mut embedded = Vec::new();
        for plugin in bundled {
            match Bundle::new(plugin.manifest, plugin.wasm.to_vec(), usize::MAX) {
                Ok(b) if b.manifest().name == plugin.name => embedded.push((*plugin, b)),
                Ok(b) => tracing::error!(
                    plugin = plugin.name,
                    manifest_name = %b.manifest().name,
                    "A bundled plugin's manifest names another plugin; it is skipped."
                ),
                Err(e) => tracing::error!(
                    plugin = plugin.name,
                    error = %e,
                    "A bundled plugin is invalid; it is skipped."
                ),
            }
        }
        let mut slots = BTreeMap::new();
        for name in store.installed_names()? {
            let meta = store.read_meta(&name).unwrap_or_else(|e| {
                tracing::warn!(plugin = %name, error = %e, "A plugin's meta.json is unreadable; the bundle will tell.");
                InstalledMeta {
                    name: name.clone(),
                    version: "?".into(),
                    source: Source::Operator,
                    signer: "?".into(),
                    sha256: String::new(),
                    installed_at_ms: 0,
                    updated_at_ms: 0,
                }
            });
            slots.insert(
                name,
                Slot {
                    meta,
                    manifest: None,
                    module: None,
                    runner: None,
                    idle_state: PluginState::Starting,
                    error: None,
                },
            );
        }
        Ok(Registry {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                store,
                config,
                policy,
                engine: Arc::new(engine),
                bundled: embedded,
                slots: RwLock::new(slots),
                source_topics: RwLock::new(Vec::new()),
                settings: RwLock::new(settings),
                ops: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The registry directory (`<data dir>/plugins`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The `[plugins]` config it runs on.
    pub fn config(&self) -> &PluginsConfig {
        &self.inner.config
    }

    /// Tells the registry which topics sources feed (names or `prefix*` patterns): from then on
    /// no plugin may declare one as an output unless `plugins.output_grants` grants it.
    pub fn set_source_topics(&self, topics: Vec<String>) {
        *write_lock(&self.inner.source_topics) = topics;
    }

    /// `manifest` as the plugin runs it: with the box's settings for it over its `[config]`.
    fn effective(&self, manifest: &Manifest) -> Manifest {
        match read_lock(&self.inner.settings).get(&manifest.name) {
            Some(settings) => manifest.with_settings(settings),
            None => manifest.clone(),
        }
    }

    /// Takes new settings per plugin (`[plugins.<name>.config]`, e.g. re-read from the config
    /// file on SIGHUP) and re-initialises every running plugin whose settings changed: the new
    /// settings are tried on a throwaway instance first, and a plugin that refuses them keeps
    /// running on its old ones (its entry in the answer holds the error, which names the plugin
    /// and, from the plugin's own message, the key). A plugin that is not running takes its new
    /// settings when it next starts. Returns one entry per plugin whose settings changed.
    pub async fn apply_settings(
        &self,
        new: BTreeMap<String, toml::Table>,
    ) -> Vec<(String, Result<(), RegistryError>)> {
        let _op = self.inner.ops.lock().await;
        let old = read_lock(&self.inner.settings).clone();
        let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
        names.sort();
        names.dedup();
        let mut outcomes = Vec::new();
        for name in names {
            if old.get(name) == new.get(name) {
                continue;
            }
            let outcome = self.reinitialise(name, new.get(name)).await;
            outcomes.push((name.clone(), outcome));
        }
        outcomes
    }

    /// Sets one plugin's settings and restarts it on them if it runs (see `apply_settings`).
    async fn reinitialise(
        &self,
        name: &str,
        settings: Option<&toml::Table>,
    ) -> Result<(), RegistryError> {
        let set = |settings: Option<&toml::Table>| {
            let mut all = write_lock(&self.inner.settings);
            match settings {
                Some(t) => all.insert(name.to_string(), t.clone()),
                None => all.remove(name),
            }
        };
        let running = {
            let slots = read_lock(&self.inner.slots);
            slots.get(name).and_then(|slot| {
                let runner = slot.runner.clone()?;
                Some((slot.manifest.clone()?, slot.module.clone()?, runner))
            })
        };
        let Some((manifest, module, runner)) = running else {
            set(settings);
            return Ok(());
        };
        let previous = set(settings);
        let engine = self.inner.engine.clone();
        let (trial, checked) = (self.effective(&manifest), module.clone());
        let tried = blocking(move || engine.check_init(&trial, &checked)).await?;
        if let Err(source) = tried {
            set(previous.as_ref());
            return Err(RegistryError::Init {
                name: name.to_string(),
                source,
            });
        }
        runner.stop().await;
        match self.start_runner(&manifest, module).await {
            Ok(runner) => {
                if let Some(slot) = write_lock(&self.inner.slots).get_mut(name) {
                    slot.set_runner(runner);
                }
                tracing::info!(
                    plugin = name,
                    "Re-initialised a plugin on its new settings."
                );
                Ok(())
            }
            Err(e) => {
                if let Some(slot) = write_lock(&self.inner.slots).get_mut(name) {
                    slot.set_failed(e.to_string());
                }
                Err(e)
            }
        }
    }

    fn embedded(&self, name: &str) -> Option<&Bundle> {
        self.inner
            .bundled
            .iter()
            .find(|(p, _)| p.name == name)
            .map(|(_, b)| b)
    }

    /// Installs missing bundled plugins (first run), then starts every installed plugin.
    /// A plugin that cannot start is listed with its error; only I/O errors of the registry
    /// itself are returned.
    pub async fn start_all(&self) -> Result<(), RegistryError> {
        let _op = self.inner.ops.lock().await;
        if self.inner.config.bundled {
            self.install_bundled().await?;
        }
        let names: Vec<String> = read_lock(&self.inner.slots).keys().cloned().collect();
        for name in names {
            if let Err(e) = self.start_installed(&name).await {
                tracing::error!(plugin = %name, error = %e, "An installed plugin did not start; the others run.");
                if let Some(slot) = write_lock(&self.inner.slots).get_mut(&name) {
                    slot.set_failed(e.to_string());
                }
            }
        }
        Ok(())
    }

    async fn install_bundled(&self) -> Result<(), RegistryError> {
        let removed = self.inner.store.removed_bundled()?;
        for (plugin, bundle) in &self.inner.bundled {
            let existing = read_lock(&self.inner.slots)
                .get(plugin.name)
                .map(|s| s.meta.clone());
            match existing {
                None if removed.contains(plugin.name) => {
                    tracing::debug!(
                        plugin = plugin.name,
                        "The operator removed this bundled plugin; not installing it."
                    );
                }
                None => {
                    let meta = self.new_meta(bundle, Source::Bundled, &Signer::Bundled, None);
                    self.write_plugin(bundle, &meta).await?;
                    tracing::info!(plugin = plugin.name, version = %meta.version, "Installed a bundled plugin.");
                    self.insert_slot(meta, None, None, None);
                }
                Some(meta)
                    if meta.source == Source::Bundled && meta.sha256 != bundle.digest_hex() =>
                {
                    let new = self.new_meta(bundle, Source::Bundled, &Signer::Bundled, Some(&meta));
                    self.write_plugin(bundle, &new).await?;
                    tracing::info!(
                        plugin = plugin.name,
                        from = %meta.version,
                        to = %new.version,
                        "A bundled plugin follows this binary's version; its state is kept."
                    );
                    self.insert_slot(new, None, None, None);
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Loads, checks, compiles and starts one installed plugin (the slot exists).
    async fn start_installed(&self, name: &str) -> Result<(), RegistryError> {
        let path = self.inner.store.bundle_path(name);
        let limit = self.inner.config.max_module_bytes;
        let bytes = blocking({
            let path = path.clone();
            move || std::fs::read(path)
        })
        .await?
        .map_err(io_err(format!("cannot read {}", path.display())))?;
        let bundle = Bundle::decode(&bytes, limit)?;
        if bundle.manifest().name != name {
            return Err(RegistryError::Corrupt {
                path,
                problem: format!("holds plugin {:?}", bundle.manifest().name),
            });
        }
        let recorded_bundled = read_lock(&self.inner.slots)
            .get(name)
            .is_some_and(|s| s.meta.source == Source::Bundled);
        let is_embedded = self
            .embedded(name)
            .is_some_and(|b| b.digest() == bundle.digest());
        let signer = if recorded_bundled && is_embedded {
            Signer::Bundled
        } else {
            self.inner.policy.check(&bundle)?
        };
        let manifest = bundle.manifest().clone();
        self.check_fits(&manifest, None)?;
        let module = self.compile(&bundle).await?;
        let runner = self.start_runner(&manifest, module.clone()).await?;
        tracing::info!(plugin = name, version = %manifest.version, signer = %signer, "Started a plugin.");
        if let Some(slot) = write_lock(&self.inner.slots).get_mut(name) {
            if slot.meta.version == "?" {
                slot.meta = self.new_meta(&bundle, Source::Operator, &signer, None);
            }
            slot.manifest = Some(manifest);
            slot.module = Some(module);
            slot.set_runner(runner);
        }
        Ok(())
    }

    /// Stops every runner (at shutdown).
    pub async fn stop_all(&self) {
        let _op = self.inner.ops.lock().await;
        let runners: Vec<(String, Arc<E::Runner>)> = write_lock(&self.inner.slots)
            .iter_mut()
            .filter_map(|(name, slot)| slot.runner.take().map(|r| (name.clone(), r)))
            .collect();
        for (name, runner) in runners {
            runner.stop().await;
            tracing::debug!(plugin = %name, "Stopped a plugin.");
            if let Some(slot) = write_lock(&self.inner.slots).get_mut(&name) {
                slot.idle_state = PluginState::Stopped;
            }
        }
    }

    /// Refuses `manifest` when it does not fit next to every other loaded plugin (all but
    /// `replacing`): the box's plugin budget, then the plugin graph.
    fn check_fits(
        &self,
        manifest: &Manifest,
        replacing: Option<&str>,
    ) -> Result<(), RegistryError> {
        let slots = read_lock(&self.inner.slots);
        let others: Vec<&Manifest> = slots
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != replacing && **name != manifest.name)
            .filter_map(|(_, slot)| slot.manifest.as_ref())
            .collect();
        self.check_budget(manifest, &others)?;
        self.check_graph(manifest, &others)
    }

    /// Refuses `manifest` when, next to `others`, it would go above
    /// `plugins.max_total_memory_mib` or `plugins.max_plugins`.
    fn check_budget(&self, manifest: &Manifest, others: &[&Manifest]) -> Result<(), RegistryError> {
        let config = &self.inner.config;
        let count = others.len();
        let used: u64 = others.iter().map(|m| config.memory_of(m)).sum();
        let wants = config.memory_of(manifest);
        let over = |problem: String| RegistryError::OverBudget {
            name: manifest.name.clone(),
            problem,
        };
        if count + 1 > config.max_plugins {
            return Err(over(format!(
                "{count} plugins are loaded and `plugins.max_plugins` is {}",
                config.max_plugins
            )));
        }
        if used + wants > config.max_total_memory_mib {
            return Err(over(format!(
                "it gets {wants} MiB of memory, the {count} loaded plugins already get {used} MiB, and `plugins.max_total_memory_mib` is {} MiB",
                config.max_total_memory_mib
            )));
        }
        Ok(())
    }

    /// Refuses `manifest` when, next to `others`, it would close a cycle or write a topic
    /// another plugin or a source writes (see [`graph`]).
    fn check_graph(&self, manifest: &Manifest, others: &[&Manifest]) -> Result<(), RegistryError> {
        if let Some(cycle) = graph::cycle_through(manifest, others) {
            return Err(RegistryError::Cycle {
                name: manifest.name.clone(),
                cycle,
            });
        }
        let sources = read_lock(&self.inner.source_topics);
        let config = &self.inner.config;
        if let Some((topic, writer)) = graph::taken_output(manifest, others, &sources, |t| {
            config.grants_output(&manifest.name, t)
        }) {
            let writer = match writer {
                graph::Writer::Plugin(p) => format!("plugin {p:?}"),
                graph::Writer::Source(s) => format!("a source (topics {s:?})"),
            };
            return Err(RegistryError::OutputTaken {
                name: manifest.name.clone(),
                topic,
                writer,
            });
        }
        Ok(())
    }

    /// Verifies, compiles and initialises on a throwaway instance.
    async fn prepare(&self, bundle: Bundle) -> Result<(Bundle, Signer, E::Module), RegistryError> {
        let signer = self.inner.policy.check(&bundle)?;
        let module = self.compile(&bundle).await?;
        let engine = self.inner.engine.clone();
        let manifest = self.effective(bundle.manifest());
        let checked = module.clone();
        blocking(move || engine.check_init(&manifest, &checked))
            .await?
            .map_err(|source| RegistryError::Init {
                name: bundle.manifest().name.clone(),
                source,
            })?;
        Ok((bundle, signer, module))
    }

    async fn compile(&self, bundle: &Bundle) -> Result<E::Module, RegistryError> {
        let engine = self.inner.engine.clone();
        let manifest = bundle.manifest().clone();
        let wasm = bundle.wasm().to_vec();
        blocking(move || engine.compile(&manifest, &wasm))
            .await?
            .map_err(|source| RegistryError::Compile {
                name: bundle.manifest().name.clone(),
                source,
            })
    }

    async fn start_runner(
        &self,
        manifest: &Manifest,
        module: E::Module,
    ) -> Result<E::Runner, RegistryError> {
        let engine = self.inner.engine.clone();
        let m = self.effective(manifest);
        blocking(move || engine.start(&m, module))
            .await?
            .map_err(|source| RegistryError::Start {
                name: manifest.name.clone(),
                source,
            })
    }

    fn new_meta(
        &self,
        bundle: &Bundle,
        source: Source,
        signer: &Signer,
        previous: Option<&InstalledMeta>,
    ) -> InstalledMeta {
        let now = now_ms();
        InstalledMeta {
            name: bundle.manifest().name.clone(),
            version: bundle.manifest().version.clone(),
            source,
            signer: signer.to_string(),
            sha256: bundle.digest_hex(),
            installed_at_ms: previous.map_or(now, |p| p.installed_at_ms),
            updated_at_ms: now,
        }
    }

    fn insert_slot(
        &self,
        meta: InstalledMeta,
        manifest: Option<Manifest>,
        module: Option<E::Module>,
        runner: Option<E::Runner>,
    ) {
        write_lock(&self.inner.slots).insert(
            meta.name.clone(),
            Slot {
                meta,
                manifest,
                module,
                runner: runner.map(Arc::new),
                idle_state: PluginState::Starting,
                error: None,
            },
        );
    }

    /// Installs a new plugin from bundle bytes and starts it.
    pub async fn install(&self, bytes: &[u8]) -> Result<PluginInfo, RegistryError> {
        let _op = self.inner.ops.lock().await;
        let bundle = Bundle::decode(bytes, self.inner.config.max_module_bytes)?;
        if read_lock(&self.inner.slots).contains_key(&bundle.manifest().name) {
            return Err(RegistryError::AlreadyInstalled(
                bundle.manifest().name.clone(),
            ));
        }
        self.check_fits(bundle.manifest(), None)?;
        let (bundle, signer, module) = self.prepare(bundle).await?;
        let name = bundle.manifest().name.clone();
        let meta = self.new_meta(&bundle, Source::Operator, &signer, None);
        self.write_plugin(&bundle, &meta).await?;
        let manifest = bundle.manifest().clone();
        let runner = match self.start_runner(&manifest, module.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.delete_plugin_files(&name).await;
                return Err(e);
            }
        };
        self.inner.store.forget_removal(&name)?;
        self.insert_slot(meta, Some(manifest), Some(module), Some(runner));
        tracing::info!(plugin = %name, version = %bundle.manifest().version, signer = %signer, "Installed and started a plugin.");
        self.info(&name).ok_or(RegistryError::NotInstalled(name))
    }

    /// Replaces an installed plugin with a new version; state and offsets are kept unless
    /// `reset`. On any failure before the switch the old version keeps running.
    pub async fn upgrade(
        &self,
        name: &str,
        bytes: &[u8],
        reset: bool,
    ) -> Result<PluginInfo, RegistryError> {
        check_name(name)?;
        let _op = self.inner.ops.lock().await;
        let (old_meta, old_manifest, old_module, old_runner) = {
            let slots = read_lock(&self.inner.slots);
            let slot = slots
                .get(name)
                .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
            (
                slot.meta.clone(),
                slot.manifest.clone(),
                slot.module.clone(),
                slot.runner.clone(),
            )
        };
        let bundle = Bundle::decode(bytes, self.inner.config.max_module_bytes)?;
        if bundle.manifest().name != name {
            return Err(RegistryError::NameMismatch {
                expected: name.to_string(),
                found: bundle.manifest().name.clone(),
            });
        }
        self.check_fits(bundle.manifest(), Some(name))?;
        let (bundle, signer, module) = self.prepare(bundle).await?;
        let manifest = bundle.manifest().clone();
        let meta = self.new_meta(&bundle, Source::Operator, &signer, Some(&old_meta));
        let staging = self.stage(&bundle, &meta).await?;

        // The new version compiled and initialised: switch.
        if let Some(runner) = &old_runner {
            runner.stop().await;
        }
        if reset {
            let engine = self.inner.engine.clone();
            let n = name.to_string();
            let done = blocking(move || engine.reset_state(&n))
                .await
                .and_then(|r| {
                    r.map_err(|source| RegistryError::Reset {
                        name: name.to_string(),
                        source,
                    })
                });
            if let Err(e) = done {
                let _ = std::fs::remove_dir_all(&staging);
                self.restore(name, &old_manifest, &old_module, e.to_string())
                    .await;
                return Err(e);
            }
        }
        let runner = match self.start_runner(&manifest, module.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                self.restore(name, &old_manifest, &old_module, e.to_string())
                    .await;
                return Err(e);
            }
        };
        let swap = {
            let store = self.inner.store.clone();
            let staging = staging.clone();
            let name = name.to_string();
            blocking(move || store.swap_into_place(&staging, &name)).await
        };
        if let Err(e) = swap.and_then(|r| r) {
            runner.stop().await;
            let _ = std::fs::remove_dir_all(&staging);
            self.restore(name, &old_manifest, &old_module, e.to_string())
                .await;
            return Err(e);
        }
        self.insert_slot(meta, Some(manifest), Some(module), Some(runner));
        tracing::info!(
            plugin = name,
            from = %old_meta.version,
            to = %bundle.manifest().version,
            reset,
            signer = %signer,
            "Upgraded a plugin."
        );
        self.info(name)
            .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))
    }

    /// Starts the previous version again after a failed switch.
    async fn restore(
        &self,
        name: &str,
        manifest: &Option<Manifest>,
        module: &Option<E::Module>,
        reason: String,
    ) {
        let restarted = match (manifest, module) {
            (Some(m), Some(module)) => self.start_runner(m, module.clone()).await,
            _ => Err(RegistryError::NotInstalled(name.to_string())),
        };
        if let Some(slot) = write_lock(&self.inner.slots).get_mut(name) {
            match restarted {
                Ok(runner) => {
                    tracing::warn!(plugin = name, error = %reason, "The upgrade failed at the switch; the previous version runs again.");
                    slot.set_runner(runner);
                }
                Err(e) => {
                    tracing::error!(plugin = name, error = %reason, restart_error = %e, "The upgrade failed at the switch and the previous version did not restart.");
                    slot.set_failed(format!(
                        "{reason}; restarting the previous version failed: {e}"
                    ));
                }
            }
        }
    }

    /// Stops and deletes a plugin; drops its state and offsets when `drop_state`.
    pub async fn remove(&self, name: &str, drop_state: bool) -> Result<(), RegistryError> {
        check_name(name)?;
        let _op = self.inner.ops.lock().await;
        let runner = {
            let slots = read_lock(&self.inner.slots);
            let slot = slots
                .get(name)
                .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
            slot.runner.clone()
        };
        if self.inner.bundled.iter().any(|(p, _)| p.name == name) {
            self.inner.store.remember_removal(name)?;
        }
        if let Some(runner) = runner {
            runner.stop().await;
        }
        write_lock(&self.inner.slots).remove(name);
        self.delete_plugin_files(name).await?;
        if drop_state {
            let engine = self.inner.engine.clone();
            let n = name.to_string();
            blocking(move || engine.reset_state(&n))
                .await?
                .map_err(|source| RegistryError::Reset {
                    name: name.to_string(),
                    source,
                })?;
        }
        tracing::info!(plugin = name, drop_state, "Removed a plugin.");
        Ok(())
    }

    /// Every installed plugin with its status, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let names: Vec<String> = read_lock(&self.inner.slots).keys().cloned().collect();
        names.iter().filter_map(|n| self.info(n)).collect()
    }

    /// One plugin with its status.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        let slots = read_lock(&self.inner.slots);
        let slot = slots.get(name)?;
        let report = slot.runner.as_ref().map(|r| r.status());
        let (state, error) = match &report {
            Some(r) => (PluginState::from(r.state), r.last_error.clone()),
            None => (slot.idle_state, slot.error.clone()),
        };
        let (description, inputs, outputs, config) = match &slot.manifest {
            Some(m) => (
                m.description.clone(),
                m.inputs.clone(),
                m.outputs.clone(),
                serde_json::from_slice(&self.effective(m).config_json()).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        Some(PluginInfo {
            name: name.to_string(),
            version: slot.meta.version.clone(),
            description,
            source: slot.meta.source,
            signer: slot.meta.signer.clone(),
            sha256: slot.meta.sha256.clone(),
            installed_at_ms: slot.meta.installed_at_ms,
            updated_at_ms: slot.meta.updated_at_ms,
            inputs,
            outputs,
            config,
            state,
            error,
            runner: report.map(|r| r.detail),
        })
    }

    /// Up to `lines` recent log lines of a plugin, oldest first.
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<Value>, RegistryError> {
        let slots = read_lock(&self.inner.slots);
        let slot = slots
            .get(name)
            .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
        Ok(slot
            .runner
            .as_ref()
            .map(|r| r.logs(lines))
            .unwrap_or_default())
    }

    // --- files (the store, off the async threads) ---------------------------------------------

    /// Writes a complete plugin directory under a staging name; returns its path.
    async fn stage(&self, bundle: &Bundle, meta: &InstalledMeta) -> Result<PathBuf, RegistryError> {
        let files = PluginFiles::new(bundle, meta)?;
        let store = self.inner.store.clone();
        blocking(move || store.stage(&files)).await?
    }

    /// Writes a plugin's directory (new or replacing the old one) atomically.
    async fn write_plugin(
        &self,
        bundle: &Bundle,
        meta: &InstalledMeta,
    ) -> Result<(), RegistryError> {
        let files = PluginFiles::new(bundle, meta)?;
        let store = self.inner.store.clone();
        blocking(move || store.write_plugin(&files)).await?
    }

    async fn delete_plugin_files(&self, name: &str) -> Result<(), RegistryError> {
        let store = self.inner.store.clone();
        let name = name.to_string();
        blocking(move || store.delete_plugin(&name)).await?
    }
}
