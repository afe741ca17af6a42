//! Installed plugins on disk and their lifecycle: install, upgrade, remove, list and logs, all
//! at runtime without a restart; the bundled plugins installed on first run; the `[plugins]`
//! config section.
//!
//! # On disk (`<data dir>/plugins/`)
//! ```text
//! installed/<name>/bundle.opb   the bundle as installed (signature kept, re-checked on start)
//! installed/<name>/plugin.toml  a copy of its manifest, for operators to read
//! installed/<name>/meta.json    {"name","version","source","signer","sha256","installed_at_ms","updated_at_ms"}
//! installed/.staging-<name>/    a new version being written (deleted on open)
//! installed/.retired-<name>/    the old version during an upgrade's swap (restored on open
//!                               when `<name>/` is missing, else deleted)
//! installed/.removed-<name>/    a plugin being deleted (deleted on open)
//! registry.json                 {"format":1,"removed_bundled":[…]}: bundled plugins the operator
//!                               removed, so they are not installed again
//! cache/                        compiled modules (the host's cache)
//! ```
//! Every file is written to a temporary name, fsynced and renamed; a plugin directory is
//! complete before it is renamed into place, and the parent directory is fsynced after each
//! rename, so a crash leaves either the old or the new version, never a mix.
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
//! # Trust
//! Operator bundles must pass [`TrustPolicy::check`] (a key in `plugins.trusted_keys`, or
//! unsigned with `plugins.allow_unsigned`). Bundled plugins are trusted because they are
//! embedded in the binary: a plugin recorded as bundled is trusted only while its digest
//! equals the embedded one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bundle::{self, Bundle, BundleError, Signer, TrustPolicy};
use super::host::{CompiledModule, Host, HostConfig, PluginError};
use super::manifest::{name_problem, Manifest};
use super::runner::{RunnerConfig, RunnerHandle};
use crate::log::Log;
use crate::state::StateStore;

// ---------------------------------------------------------------------------------------------
// Config

/// The `[plugins]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Run plugins at all. When false no plugin starts and the `/plugins` endpoints answer 503.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Install the plugins embedded in the binary on first run (a removed one stays removed).
    #[serde(default = "default_true")]
    pub bundled: bool,
    /// Development only: accept unsigned bundles. Bundles with a bad or unknown signature are
    /// refused regardless.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Public keys (`ed25519:<base64>`, as `outpost plugin keygen` writes them) whose
    /// signatures this box accepts.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Linear memory of a plugin whose manifest does not ask for an amount, in MiB.
    #[serde(default = "default_memory_mib")]
    pub default_memory_mib: u64,
    /// Most linear memory any plugin gets, in MiB; larger manifest requests are capped.
    #[serde(default = "default_memory_mib")]
    pub max_memory_mib: u64,
    /// CPU deadline of one call into a plugin whose manifest does not ask for one, in ms.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Longest CPU deadline of one call (`outpost_init` or one record), in ms; larger manifest
    /// requests are capped. A call past it is stopped and counts as a failure.
    #[serde(default = "default_deadline_ms")]
    pub max_deadline_ms: u64,
    /// Failures in a row (trap, deadline, out of memory, error return) after which a plugin is
    /// quarantined: stopped until it is upgraded or the box restarts.
    #[serde(default = "default_max_consecutive_failures")]
    pub max_consecutive_failures: u32,
    /// Largest bundle accepted by `POST /plugins` and `PUT /plugins/{name}`, in bytes.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: usize,
    /// Largest wasm module, in bytes.
    #[serde(default = "default_max_module_bytes")]
    pub max_module_bytes: usize,
}

fn default_true() -> bool {
    true
}
fn default_memory_mib() -> u64 {
    64
}
fn default_deadline_ms() -> u64 {
    100
}
fn default_max_consecutive_failures() -> u32 {
    5
}
fn default_max_bundle_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_module_bytes() -> usize {
    12 * 1024 * 1024
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: true,
            bundled: true,
            allow_unsigned: false,
            trusted_keys: Vec::new(),
            default_memory_mib: default_memory_mib(),
            max_memory_mib: default_memory_mib(),
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: default_deadline_ms(),
            max_consecutive_failures: default_max_consecutive_failures(),
            max_bundle_bytes: default_max_bundle_bytes(),
            max_module_bytes: default_max_module_bytes(),
        }
    }
}

impl PluginsConfig {
    /// Checks the section; the error is `(dotted key, problem and fix)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err((
                    format!("plugins.{key}"),
                    format!("{value} is out of range; set it between {min} and {max}"),
                ))
            } else {
                Ok(())
            }
        };
        range("max_memory_mib", self.max_memory_mib, 1, 4096)?;
        range(
            "default_memory_mib",
            self.default_memory_mib,
            1,
            self.max_memory_mib,
        )?;
        range("max_deadline_ms", self.max_deadline_ms, 1, 60_000)?;
        range(
            "default_deadline_ms",
            self.default_deadline_ms,
            1,
            self.max_deadline_ms,
        )?;
        range(
            "max_consecutive_failures",
            u64::from(self.max_consecutive_failures),
            1,
            1_000_000,
        )?;
        range(
            "max_module_bytes",
            self.max_module_bytes as u64,
            1024,
            1 << 30,
        )?;
        range(
            "max_bundle_bytes",
            self.max_bundle_bytes as u64,
            self.max_module_bytes as u64,
            (1 << 30) + (2 << 20),
        )
        .map_err(|(key, problem)| {
            (
                key,
                format!(
                    "{problem} (a bundle holds the module, so at least `plugins.max_module_bytes`)"
                ),
            )
        })?;
        self.trust_policy().map_err(|e| match e {
            BundleError::BadKey { origin, problem } => (origin, problem),
            other => ("plugins.trusted_keys".to_string(), other.to_string()),
        })?;
        Ok(())
    }

    /// The trust policy of `trusted_keys` and `allow_unsigned`.
    pub fn trust_policy(&self) -> Result<TrustPolicy, BundleError> {
        TrustPolicy::from_config(&self.trusted_keys, self.allow_unsigned)
    }
}

// ---------------------------------------------------------------------------------------------
// What the registry needs from the host and runner

/// An error of the engine (compile, init, start, state reset), boxed.
pub type EngineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the registry needs from the wasm host and the runner. The production implementation
/// wraps `Host` and `RunnerHandle`; tests can substitute their own.
pub trait PluginEngine: Send + Sync + 'static {
    /// A compiled module; cheap to clone.
    type Module: Clone + Send + Sync + 'static;
    /// A running plugin.
    type Runner: PluginRunner;

    /// Validates and compiles a module. Blocking; may take a while.
    fn compile(&self, manifest: &Manifest, wasm: &[u8]) -> Result<Self::Module, EngineError>;
    /// Instantiates the module on a throwaway instance and runs its `outpost_init`, without
    /// touching the plugin's state or offsets. Blocking.
    fn check_init(&self, manifest: &Manifest, module: &Self::Module) -> Result<(), EngineError>;
    /// Starts the durable consumer from the plugin's committed offsets. Blocking.
    fn start(&self, manifest: &Manifest, module: Self::Module)
        -> Result<Self::Runner, EngineError>;
    /// Deletes the plugin's state and committed offsets (durably). Blocking.
    fn reset_state(&self, name: &str) -> Result<(), EngineError>;
}

/// What the registry reads from a running plugin.
pub trait PluginRunner: Send + Sync + 'static {
    /// The runner's status.
    fn status(&self) -> RunnerReport;
    /// Up to `max_lines` recent log lines of the plugin (its stdout/stderr and `log` calls),
    /// oldest first.
    fn logs(&self, max_lines: usize) -> Vec<Value>;
    /// Finishes the current record, commits and stops.
    fn stop(&self) -> impl Future<Output = ()> + Send;
}

/// A runner's status as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerReport {
    /// `running`, `quarantined`, `stopped` or `failed`.
    pub state: String,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Everything else the runner reports (counters, lag, timings).
    pub detail: Value,
}

// ---------------------------------------------------------------------------------------------
// The production engine: the wasm host and the runner

/// The registry of a box.
pub type PluginRegistry = Registry<WasmEngine>;

/// [`PluginEngine`] over the wasm [`Host`] and [`RunnerHandle`], with the box's log and state.
#[derive(Debug, Clone)]
pub struct WasmEngine {
    host: Host,
    log: Log,
    state: StateStore,
    runner: RunnerConfig,
}

impl WasmEngine {
    /// The engine for `[plugins]` `config`: the host's limits come from it, emitted records are
    /// capped at the log's `max_record_bytes`, compiled modules are cached in `cache_dir`.
    pub fn new(
        config: &PluginsConfig,
        max_record_bytes: usize,
        cache_dir: Option<PathBuf>,
        log: Log,
        state: StateStore,
    ) -> Result<WasmEngine, PluginError> {
        let defaults = HostConfig::default();
        let host = Host::new(HostConfig {
            max_memory_mib: config.max_memory_mib,
            default_memory_mib: config.default_memory_mib,
            max_deadline_ms: config.max_deadline_ms,
            default_deadline_ms: config.default_deadline_ms,
            max_module_bytes: config.max_module_bytes,
            max_record_bytes,
            cache_dir,
            ..defaults
        })?;
        let runner = RunnerConfig {
            max_consecutive_failures: config.max_consecutive_failures,
            ..RunnerConfig::default()
        };
        Ok(WasmEngine {
            host,
            log,
            state,
            runner,
        })
    }

    /// The wasm host.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

impl PluginEngine for WasmEngine {
    type Module = CompiledModule;
    type Runner = RunnerHandle;

    fn compile(&self, manifest: &Manifest, wasm: &[u8]) -> Result<CompiledModule, EngineError> {
        Ok(self.host.compile_named(&manifest.name, wasm)?)
    }

    fn check_init(&self, manifest: &Manifest, module: &CompiledModule) -> Result<(), EngineError> {
        self.host.instantiate(manifest, module)?;
        Ok(())
    }

    fn start(
        &self,
        manifest: &Manifest,
        module: CompiledModule,
    ) -> Result<RunnerHandle, EngineError> {
        Ok(RunnerHandle::start(
            &self.host,
            manifest.clone(),
            module,
            self.log.clone(),
            self.state.clone(),
            self.runner.clone(),
        )?)
    }

    fn reset_state(&self, name: &str) -> Result<(), EngineError> {
        Ok(self.state.reset(name, &format!("plugin:{name}"))?)
    }
}

impl PluginRunner for RunnerHandle {
    fn status(&self) -> RunnerReport {
        let status = RunnerHandle::status(self);
        RunnerReport {
            state: status.state.as_str().to_string(),
            last_error: status.last_error.clone(),
            detail: serde_json::to_value(&status).unwrap_or(Value::Null),
        }
    }

    fn logs(&self, max_lines: usize) -> Vec<Value> {
        RunnerHandle::logs(self, max_lines)
            .iter()
            .filter_map(|line| serde_json::to_value(line).ok())
            .collect()
    }

    fn stop(&self) -> impl Future<Output = ()> + Send {
        RunnerHandle::stop(self)
    }
}

/// Opens the box's registry in `<data_dir>/plugins` (compiled modules cached in
/// `<data_dir>/plugins/cache`) with the embedded bundled plugins; `None` when
/// `plugins.enabled = false`. Blocking; starts nothing ([`Registry::start_all`] does).
pub fn open_for_box(
    config: &crate::config::Config,
    log: Log,
    state: StateStore,
) -> Result<Option<PluginRegistry>, RegistryError> {
    if !config.plugins.enabled {
        tracing::info!("Plugins are disabled (`plugins.enabled = false`).");
        return Ok(None);
    }
    let dir = config.edge.data_dir.join("plugins");
    let engine = WasmEngine::new(
        &config.plugins,
        config.log.max_record_bytes,
        Some(dir.join("cache")),
        log,
        state,
    )?;
    Registry::open(&dir, config.plugins.clone(), engine, embedded()).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Bundled plugins

/// A plugin embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct BundledPlugin {
    /// Its name (must equal the manifest's).
    pub name: &'static str,
    /// Its `plugin.toml`.
    pub manifest: &'static str,
    /// Its wasm module.
    pub wasm: &'static [u8],
}

/// The plugins embedded in this binary (`runtime/bundled/<name>/`, see its README).
pub fn embedded() -> &'static [BundledPlugin] {
    EMBEDDED
}

/// Names of the plugins that ship with Outpost; `runtime/bundled/<name>/` holds each.
pub const BUNDLED_NAMES: [&str; 3] = ["fraud-score", "recommend", "sensor-watch"];

macro_rules! bundled {
    ($name:literal) => {
        BundledPlugin {
            name: $name,
            manifest: include_str!(concat!("../../bundled/", $name, "/plugin.toml")),
            wasm: include_bytes!(concat!("../../bundled/", $name, "/plugin.wasm")),
        }
    };
}

const EMBEDDED: &[BundledPlugin] = &[
    bundled!("fraud-score"),
    bundled!("recommend"),
    bundled!("sensor-watch"),
];

// ---------------------------------------------------------------------------------------------
// Errors and views

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
    /// A blocking task panicked.
    #[error("a plugin task did not finish: {0}")]
    Task(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let context = context.into();
    move |source| RegistryError::Io { context, source }
}

/// Where an installed plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Embedded in the binary.
    Bundled,
    /// Installed by an operator.
    Operator,
}

/// `meta.json` of an installed plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledMeta {
    /// Plugin name.
    pub name: String,
    /// Version of the manifest.
    pub version: String,
    /// Where it came from.
    pub source: Source,
    /// Key id of the signer, `unsigned` or `bundled`.
    pub signer: String,
    /// Hex SHA-256 digest of the bundle content (see `bundle`).
    pub sha256: String,
    /// When the plugin was first installed (epoch ms); kept across upgrades.
    pub installed_at_ms: u64,
    /// When the current version was installed (epoch ms).
    pub updated_at_ms: u64,
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
    /// `running`, `quarantined`, `stopped` or `failed`.
    pub state: String,
    /// Why it is not running, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The runner's own status (counters, lag, timings), when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// The registry

const INSTALLED_DIR: &str = "installed";
const BUNDLE_FILE: &str = "bundle.opb";
const MANIFEST_FILE: &str = "plugin.toml";
const META_FILE: &str = "meta.json";
const REGISTRY_FILE: &str = "registry.json";
const STAGING: &str = ".staging-";
const RETIRED: &str = ".retired-";
const REMOVED: &str = ".removed-";

/// `registry.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    format: u32,
    removed_bundled: BTreeSet<String>,
}

struct Slot<E: PluginEngine> {
    meta: InstalledMeta,
    manifest: Option<Manifest>,
    module: Option<E::Module>,
    runner: Option<Arc<E::Runner>>,
    /// The state shown while there is no runner: `starting`, `stopped` or `failed`.
    idle_state: &'static str,
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
        self.idle_state = "failed";
        self.error = Some(error);
    }
}

struct Inner<E: PluginEngine> {
    dir: PathBuf,
    config: PluginsConfig,
    policy: TrustPolicy,
    engine: Arc<E>,
    bundled: Vec<(BundledPlugin, Bundle)>,
    slots: RwLock<BTreeMap<String, Slot<E>>>,
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
                &read(&self.inner.slots).keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let installed = dir.join(INSTALLED_DIR);
        std::fs::create_dir_all(&installed)
            .map_err(io_err(format!("cannot create {}", installed.display())))?;
        recover(&installed)?;
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
        for name in installed_names(&installed)? {
            let meta = read_meta(&installed.join(&name)).unwrap_or_else(|e| {
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
                    idle_state: "starting",
                    error: None,
                },
            );
        }
        Ok(Registry {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                config,
                policy,
                engine: Arc::new(engine),
                bundled: embedded,
                slots: RwLock::new(slots),
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

    fn installed_dir(&self) -> PathBuf {
        self.inner.dir.join(INSTALLED_DIR)
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
        let names: Vec<String> = read(&self.inner.slots).keys().cloned().collect();
        for name in names {
            if let Err(e) = self.start_installed(&name).await {
                tracing::error!(plugin = %name, error = %e, "An installed plugin did not start; the others run.");
                if let Some(slot) = write(&self.inner.slots).get_mut(&name) {
                    slot.set_failed(e.to_string());
                }
            }
        }
        Ok(())
    }

    async fn install_bundled(&self) -> Result<(), RegistryError> {
        let removed = self.read_registry_file()?.removed_bundled;
        for (plugin, bundle) in &self.inner.bundled {
            let existing = read(&self.inner.slots)
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
        let path = self.installed_dir().join(name).join(BUNDLE_FILE);
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
        let recorded_bundled = read(&self.inner.slots)
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
        let module = self.compile(&bundle).await?;
        let runner = self.start_runner(&manifest, module.clone()).await?;
        tracing::info!(plugin = name, version = %manifest.version, signer = %signer, "Started a plugin.");
        if let Some(slot) = write(&self.inner.slots).get_mut(name) {
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
        let runners: Vec<(String, Arc<E::Runner>)> = write(&self.inner.slots)
            .iter_mut()
            .filter_map(|(name, slot)| slot.runner.take().map(|r| (name.clone(), r)))
            .collect();
        for (name, runner) in runners {
            runner.stop().await;
            tracing::debug!(plugin = %name, "Stopped a plugin.");
            if let Some(slot) = write(&self.inner.slots).get_mut(&name) {
                slot.idle_state = "stopped";
            }
        }
    }

    /// Verifies, compiles and initialises on a throwaway instance.
    async fn prepare(&self, bundle: Bundle) -> Result<(Bundle, Signer, E::Module), RegistryError> {
        let signer = self.inner.policy.check(&bundle)?;
        let module = self.compile(&bundle).await?;
        let engine = self.inner.engine.clone();
        let manifest = bundle.manifest().clone();
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
        let m = manifest.clone();
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
        write(&self.inner.slots).insert(
            meta.name.clone(),
            Slot {
                meta,
                manifest,
                module,
                runner: runner.map(Arc::new),
                idle_state: "starting",
                error: None,
            },
        );
    }

    /// Installs a new plugin from bundle bytes and starts it.
    pub async fn install(&self, bytes: &[u8]) -> Result<PluginInfo, RegistryError> {
        let _op = self.inner.ops.lock().await;
        let bundle = Bundle::decode(bytes, self.inner.config.max_module_bytes)?;
        if read(&self.inner.slots).contains_key(&bundle.manifest().name) {
            return Err(RegistryError::AlreadyInstalled(
                bundle.manifest().name.clone(),
            ));
        }
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
        self.forget_removal(&name)?;
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
            let slots = read(&self.inner.slots);
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
        let installed = self.installed_dir();
        let swap = {
            let staging = staging.clone();
            let name = name.to_string();
            blocking(move || swap_into_place(&installed, &staging, &name)).await
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
        if let Some(slot) = write(&self.inner.slots).get_mut(name) {
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
            let slots = read(&self.inner.slots);
            let slot = slots
                .get(name)
                .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
            slot.runner.clone()
        };
        if self.inner.bundled.iter().any(|(p, _)| p.name == name) {
            let mut file = self.read_registry_file()?;
            if file.removed_bundled.insert(name.to_string()) {
                self.write_registry_file(&file)?;
            }
        }
        if let Some(runner) = runner {
            runner.stop().await;
        }
        write(&self.inner.slots).remove(name);
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
        let names: Vec<String> = read(&self.inner.slots).keys().cloned().collect();
        names.iter().filter_map(|n| self.info(n)).collect()
    }

    /// One plugin with its status.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        let slots = read(&self.inner.slots);
        let slot = slots.get(name)?;
        let report = slot.runner.as_ref().map(|r| r.status());
        let (state, error) = match &report {
            Some(r) => (r.state.clone(), r.last_error.clone()),
            None => (slot.idle_state.to_string(), slot.error.clone()),
        };
        let (description, inputs, outputs) = match &slot.manifest {
            Some(m) => (m.description.clone(), m.inputs.clone(), m.outputs.clone()),
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
            state,
            error,
            runner: report.map(|r| r.detail),
        })
    }

    /// Up to `lines` recent log lines of a plugin, oldest first.
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<Value>, RegistryError> {
        let slots = read(&self.inner.slots);
        let slot = slots
            .get(name)
            .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
        Ok(slot
            .runner
            .as_ref()
            .map(|r| r.logs(lines))
            .unwrap_or_default())
    }

    // --- files -------------------------------------------------------------------------------

    /// Writes a complete plugin directory under a staging name; returns its path.
    async fn stage(&self, bundle: &Bundle, meta: &InstalledMeta) -> Result<PathBuf, RegistryError> {
        let staging = self.installed_dir().join(format!("{STAGING}{}", meta.name));
        let encoded = bundle.encode();
        let manifest = bundle.manifest_text().to_string();
        let meta_json = serde_json::to_vec_pretty(meta)
            .map_err(|e| RegistryError::Task(format!("encoding meta.json: {e}")))?;
        let dir = staging.clone();
        blocking(move || -> Result<(), RegistryError> {
            let ctx = |what: &str| format!("cannot write {what} in {}", dir.display());
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_err(ctx("(clearing)")))?;
            }
            std::fs::create_dir_all(&dir).map_err(io_err(ctx("(creating)")))?;
            bundle::write_atomic(&dir.join(BUNDLE_FILE), &encoded)
                .map_err(io_err(ctx(BUNDLE_FILE)))?;
            bundle::write_atomic(&dir.join(MANIFEST_FILE), manifest.as_bytes())
                .map_err(io_err(ctx(MANIFEST_FILE)))?;
            bundle::write_atomic(&dir.join(META_FILE), &meta_json)
                .map_err(io_err(ctx(META_FILE)))?;
            Ok(())
        })
        .await??;
        Ok(staging)
    }

    /// Writes a plugin's directory (new or replacing the old one) atomically.
    async fn write_plugin(
        &self,
        bundle: &Bundle,
        meta: &InstalledMeta,
    ) -> Result<(), RegistryError> {
        let staging = self.stage(bundle, meta).await?;
        let installed = self.installed_dir();
        let name = meta.name.clone();
        blocking(move || swap_into_place(&installed, &staging, &name)).await?
    }

    async fn delete_plugin_files(&self, name: &str) -> Result<(), RegistryError> {
        let installed = self.installed_dir();
        let name = name.to_string();
        blocking(move || -> Result<(), RegistryError> {
            let dir = installed.join(&name);
            if !dir.exists() {
                return Ok(());
            }
            let doomed = installed.join(format!("{REMOVED}{name}"));
            std::fs::rename(&dir, &doomed)
                .map_err(io_err(format!("cannot remove {}", dir.display())))?;
            bundle::fsync_dir(&installed)
                .map_err(io_err(format!("cannot sync {}", installed.display())))?;
            std::fs::remove_dir_all(&doomed)
                .map_err(io_err(format!("cannot delete {}", doomed.display())))
        })
        .await?
    }

    fn read_registry_file(&self) -> Result<RegistryFile, RegistryError> {
        let path = self.inner.dir.join(REGISTRY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                path,
                problem: format!("not a registry file ({e})"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile {
                format: 1,
                removed_bundled: BTreeSet::new(),
            }),
            Err(e) => Err(RegistryError::Io {
                context: format!("cannot read {}", path.display()),
                source: e,
            }),
        }
    }

    fn write_registry_file(&self, file: &RegistryFile) -> Result<(), RegistryError> {
        let path = self.inner.dir.join(REGISTRY_FILE);
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| RegistryError::Task(format!("encoding registry.json: {e}")))?;
        bundle::write_atomic(&path, &bytes)
            .map_err(io_err(format!("cannot write {}", path.display())))
    }

    fn forget_removal(&self, name: &str) -> Result<(), RegistryError> {
        let mut file = self.read_registry_file()?;
        if file.removed_bundled.remove(name) {
            self.write_registry_file(&file)?;
        }
        Ok(())
    }
}

/// Moves a staged plugin directory to `<name>`, keeping the old one as `.retired-<name>` until
/// the new one is in place.
fn swap_into_place(installed: &Path, staging: &Path, name: &str) -> Result<(), RegistryError> {
    let target = installed.join(name);
    let retired = installed.join(format!("{RETIRED}{name}"));
    let sync = || {
        bundle::fsync_dir(installed).map_err(io_err(format!("cannot sync {}", installed.display())))
    };
    if target.exists() {
        if retired.exists() {
            std::fs::remove_dir_all(&retired)
                .map_err(io_err(format!("cannot delete {}", retired.display())))?;
        }
        std::fs::rename(&target, &retired)
            .map_err(io_err(format!("cannot move {} aside", target.display())))?;
        sync()?;
    }
    std::fs::rename(staging, &target).map_err(io_err(format!(
        "cannot move the new version to {}",
        target.display()
    )))?;
    sync()?;
    if retired.exists() {
        std::fs::remove_dir_all(&retired)
            .map_err(io_err(format!("cannot delete {}", retired.display())))?;
    }
    Ok(())
}

/// Finishes or rolls back what a crash interrupted (see the module doc).
fn recover(installed: &Path) -> Result<(), RegistryError> {
    let entries = std::fs::read_dir(installed)
        .map_err(io_err(format!("cannot list {}", installed.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("cannot list {}", installed.display())))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if file_name.starts_with(STAGING) || file_name.starts_with(REMOVED) {
            tracing::info!(path = %path.display(), "Deleting what an interrupted plugin operation left.");
            std::fs::remove_dir_all(&path)
                .map_err(io_err(format!("cannot delete {}", path.display())))?;
        } else if let Some(name) = file_name.strip_prefix(RETIRED) {
            let target = installed.join(name);
            if target.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(io_err(format!("cannot delete {}", path.display())))?;
            } else {
                tracing::warn!(
                    plugin = name,
                    "An upgrade was interrupted; restoring the previous version."
                );
                std::fs::rename(&path, &target)
                    .map_err(io_err(format!("cannot restore {}", path.display())))?;
            }
        }
    }
    bundle::fsync_dir(installed).map_err(io_err(format!("cannot sync {}", installed.display())))
}

/// The names of the installed plugin directories, sorted.
fn installed_names(installed: &Path) -> Result<Vec<String>, RegistryError> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(installed)
        .map_err(io_err(format!("cannot list {}", installed.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("cannot list {}", installed.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && name_problem(&name).is_none() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn read_meta(dir: &Path) -> Result<InstalledMeta, RegistryError> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
        path,
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::plugins::bundle::SecretKey;

    /// Records what the registry asked of it; a module fails to compile, init or start when
    /// its bytes contain `compile-error`, `init-error` or `start-error`.
    #[derive(Default)]
    struct FakeEngine {
        events: Arc<Mutex<Vec<String>>>,
    }

    struct FakeRunner {
        name: String,
        version: String,
        stopped: AtomicBool,
        events: Arc<Mutex<Vec<String>>>,
    }

    impl FakeEngine {
        fn event(&self, e: String) {
            self.events.lock().unwrap().push(e);
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    impl PluginEngine for FakeEngine {
        type Module = Arc<Vec<u8>>;
        type Runner = FakeRunner;

        fn compile(&self, m: &Manifest, wasm: &[u8]) -> Result<Self::Module, EngineError> {
            self.event(format!("compile {} {}", m.name, m.version));
            if contains(wasm, "compile-error") {
                return Err("the module is not valid WebAssembly".into());
            }
            Ok(Arc::new(wasm.to_vec()))
        }

        fn check_init(&self, m: &Manifest, module: &Self::Module) -> Result<(), EngineError> {
            self.event(format!("init {} {}", m.name, m.version));
            if contains(module, "init-error") {
                return Err("outpost_init returned 1".into());
            }
            Ok(())
        }

        fn start(&self, m: &Manifest, module: Self::Module) -> Result<FakeRunner, EngineError> {
            self.event(format!("start {} {}", m.name, m.version));
            if contains(&module, "start-error") {
                return Err("the runner did not start".into());
            }
            Ok(FakeRunner {
                name: m.name.clone(),
                version: m.version.clone(),
                stopped: AtomicBool::new(false),
                events: self.events.clone(),
            })
        }

        fn reset_state(&self, name: &str) -> Result<(), EngineError> {
            self.event(format!("reset {name}"));
            Ok(())
        }
    }

    impl PluginRunner for FakeRunner {
        fn status(&self) -> RunnerReport {
            RunnerReport {
                state: if self.stopped.load(Ordering::SeqCst) {
                    "stopped"
                } else {
                    "running"
                }
                .into(),
                last_error: None,
                detail: serde_json::json!({"processed": 0}),
            }
        }

        fn logs(&self, max_lines: usize) -> Vec<Value> {
            (0..max_lines.min(2))
                .map(|i| serde_json::json!({"message": format!("{} line {i}", self.name)}))
                .collect()
        }

        async fn stop(&self) {
            self.stopped.store(true, Ordering::SeqCst);
            self.events
                .lock()
                .unwrap()
                .push(format!("stop {} {}", self.name, self.version));
        }
    }

    fn manifest(name: &str, version: &str) -> String {
        format!(
            "name = \"{name}\"\nversion = \"{version}\"\ninputs = [\"in\"]\noutputs = [\"out\"]\n"
        )
    }

    fn wasm(tag: &str) -> Vec<u8> {
        let mut w = b"\0asm\x01\0\0\0".to_vec();
        w.extend_from_slice(tag.as_bytes());
        w
    }

    fn bundle(name: &str, version: &str, tag: &str, key: Option<&SecretKey>) -> Vec<u8> {
        let mut b = Bundle::new(&manifest(name, version), wasm(tag), 1 << 20).unwrap();
        if let Some(key) = key {
            b.sign(key);
        }
        b.encode()
    }

    const BUNDLED_MANIFEST: &str =
        "name = \"sensor\"\nversion = \"1.0.0\"\ninputs = [\"sensors.*\"]\noutputs = [\"sensor.1m\"]\n";
    const BUNDLED_MANIFEST_V2: &str =
        "name = \"sensor\"\nversion = \"2.0.0\"\ninputs = [\"sensors.*\"]\noutputs = [\"sensor.1m\"]\n";
    const BUNDLED: &[BundledPlugin] = &[BundledPlugin {
        name: "sensor",
        manifest: BUNDLED_MANIFEST,
        wasm: b"\0asm\x01\0\0\0bundled",
    }];
    const BUNDLED_V2: &[BundledPlugin] = &[BundledPlugin {
        name: "sensor",
        manifest: BUNDLED_MANIFEST_V2,
        wasm: b"\0asm\x01\0\0\0bundled v2",
    }];

    struct Box_ {
        dir: tempfile::TempDir,
        key: SecretKey,
    }

    impl Box_ {
        fn new() -> Box_ {
            Box_ {
                dir: tempfile::tempdir().unwrap(),
                key: SecretKey::generate().unwrap(),
            }
        }

        fn config(&self) -> PluginsConfig {
            PluginsConfig {
                trusted_keys: vec![self.key.public().to_text()],
                ..PluginsConfig::default()
            }
        }

        fn open_with(
            &self,
            config: PluginsConfig,
            bundled: &[BundledPlugin],
        ) -> (Registry<FakeEngine>, Arc<Mutex<Vec<String>>>) {
            let engine = FakeEngine::default();
            let events = engine.events.clone();
            let registry =
                Registry::open(&self.dir.path().join("plugins"), config, engine, bundled).unwrap();
            (registry, events)
        }

        fn open(&self) -> (Registry<FakeEngine>, Arc<Mutex<Vec<String>>>) {
            self.open_with(self.config(), &[])
        }

        fn signed(&self, name: &str, version: &str, tag: &str) -> Vec<u8> {
            bundle(name, version, tag, Some(&self.key))
        }

        fn installed(&self) -> Vec<String> {
            let mut names: Vec<String> =
                std::fs::read_dir(self.dir.path().join("plugins/installed"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
            names.sort();
            names
        }
    }

    fn take(events: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *events.lock().unwrap())
    }

    #[tokio::test]
    async fn install_verifies_compiles_initialises_writes_and_starts() {
        let b = Box_::new();
        let (reg, events) = b.open();
        reg.start_all().await.unwrap();
        let info = reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        assert_eq!(info.state, "running");
        assert_eq!(info.signer, b.key.public().key_id().to_string());
        assert_eq!(info.source, Source::Operator);
        assert_eq!(
            take(&events),
            ["compile echo 1.0.0", "init echo 1.0.0", "start echo 1.0.0"]
        );
        assert_eq!(b.installed(), ["echo"]);
        let dir = b.dir.path().join("plugins/installed/echo");
        for file in [BUNDLE_FILE, MANIFEST_FILE, META_FILE] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        let meta = read_meta(&dir).unwrap();
        assert_eq!(meta.sha256, info.sha256);
        assert_eq!(reg.logs("echo", 5).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn installing_a_name_twice_is_refused_with_a_pointer_to_upgrade() {
        let b = Box_::new();
        let (reg, _) = b.open();
        reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        let err = reg
            .install(&b.signed("echo", "1.1.0", "ok"))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::AlreadyInstalled(_)), "{err}");
        assert!(err.to_string().contains("upgrade"), "{err}");
        assert_eq!(reg.info("echo").unwrap().version, "1.0.0");
    }

    #[tokio::test]
    async fn an_install_that_fails_to_init_writes_nothing_and_starts_nothing() {
        let b = Box_::new();
        let (reg, events) = b.open();
        let err = reg
            .install(&b.signed("echo", "1.0.0", "init-error"))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Init { .. }), "{err}");
        assert!(!take(&events).iter().any(|e| e.starts_with("start")));
        assert!(b.installed().is_empty());
        assert!(reg.list().is_empty());
    }

    #[tokio::test]
    async fn unsigned_and_foreign_bundles_are_refused_before_compiling() {
        let b = Box_::new();
        let (reg, events) = b.open();
        let err = reg
            .install(&bundle("echo", "1.0.0", "ok", None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Bundle(BundleError::Unsigned)),
            "{err}"
        );
        let stranger = SecretKey::generate().unwrap();
        let err = reg
            .install(&bundle("echo", "1.0.0", "ok", Some(&stranger)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Bundle(BundleError::UnknownKey { .. })),
            "{err}"
        );
        assert!(take(&events).is_empty());

        // The development flag lets unsigned bundles in, and says so in the listing.
        let dev = Box_::new();
        let config = PluginsConfig {
            allow_unsigned: true,
            ..PluginsConfig::default()
        };
        let (reg, _) = dev.open_with(config, &[]);
        let info = reg
            .install(&bundle("echo", "1.0.0", "ok", None))
            .await
            .unwrap();
        assert_eq!(info.signer, "unsigned");
    }

    #[tokio::test]
    async fn upgrade_starts_the_new_version_only_after_it_initialised_and_keeps_state() {
        let b = Box_::new();
        let (reg, events) = b.open();
        let first = reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        take(&events);
        let info = reg
            .upgrade("echo", &b.signed("echo", "2.0.0", "ok"), false)
            .await
            .unwrap();
        assert_eq!(
            take(&events),
            [
                "compile echo 2.0.0",
                "init echo 2.0.0",
                "stop echo 1.0.0",
                "start echo 2.0.0"
            ]
        );
        assert_eq!(info.version, "2.0.0");
        assert_eq!(info.installed_at_ms, first.installed_at_ms);
        assert_ne!(info.sha256, first.sha256);
        assert_eq!(b.installed(), ["echo"]);
        assert_eq!(
            read_meta(&b.dir.path().join("plugins/installed/echo"))
                .unwrap()
                .version,
            "2.0.0"
        );
    }

    #[tokio::test]
    async fn upgrade_with_reset_clears_state_between_stopping_the_old_and_starting_the_new() {
        let b = Box_::new();
        let (reg, events) = b.open();
        reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        take(&events);
        reg.upgrade("echo", &b.signed("echo", "2.0.0", "ok"), true)
            .await
            .unwrap();
        assert_eq!(
            take(&events),
            [
                "compile echo 2.0.0",
                "init echo 2.0.0",
                "stop echo 1.0.0",
                "reset echo",
                "start echo 2.0.0"
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_upgrade_leaves_the_old_version_running() {
        let b = Box_::new();
        let (reg, events) = b.open();
        reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        take(&events);
        for (tag, reset) in [("init-error", false), ("compile-error", true)] {
            let err = reg
                .upgrade("echo", &b.signed("echo", "2.0.0", tag), reset)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::Init { .. } | RegistryError::Compile { .. }
                ),
                "{err}"
            );
            let events = take(&events);
            assert!(
                !events
                    .iter()
                    .any(|e| e.starts_with("stop") || e.starts_with("reset")),
                "{events:?}"
            );
            let info = reg.info("echo").unwrap();
            assert_eq!(
                (info.version.as_str(), info.state.as_str()),
                ("1.0.0", "running")
            );
        }
        // A runner that fails to start after the switch: the old version is started again.
        let err = reg
            .upgrade("echo", &b.signed("echo", "2.0.0", "start-error"), false)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Start { .. }), "{err}");
        assert_eq!(
            take(&events),
            [
                "compile echo 2.0.0",
                "init echo 2.0.0",
                "stop echo 1.0.0",
                "start echo 2.0.0",
                "start echo 1.0.0"
            ]
        );
        let info = reg.info("echo").unwrap();
        assert_eq!(
            (info.version.as_str(), info.state.as_str()),
            ("1.0.0", "running")
        );
        assert_eq!(
            b.installed(),
            ["echo"],
            "no staging directory is left behind"
        );
        assert_eq!(
            read_meta(&b.dir.path().join("plugins/installed/echo"))
                .unwrap()
                .version,
            "1.0.0"
        );
        // A bundle of another plugin is not an upgrade.
        let err = reg
            .upgrade("echo", &b.signed("other", "1.0.0", "ok"), false)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::NameMismatch { .. }), "{err}");
        let err = reg
            .upgrade("missing", &b.signed("missing", "1.0.0", "ok"), false)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::NotInstalled(_)), "{err}");
    }

    #[tokio::test]
    async fn remove_stops_deletes_and_drops_state_only_when_asked() {
        let b = Box_::new();
        let (reg, events) = b.open();
        reg.install(&b.signed("a", "1", "ok")).await.unwrap();
        reg.install(&b.signed("b", "1", "ok")).await.unwrap();
        take(&events);
        reg.remove("a", false).await.unwrap();
        assert_eq!(take(&events), ["stop a 1"]);
        reg.remove("b", true).await.unwrap();
        assert_eq!(take(&events), ["stop b 1", "reset b"]);
        assert!(b.installed().is_empty());
        assert!(reg.list().is_empty());
        assert!(matches!(
            reg.remove("a", false).await,
            Err(RegistryError::NotInstalled(_))
        ));
        // A removed operator plugin can be installed again.
        reg.install(&b.signed("a", "1", "ok")).await.unwrap();
    }

    #[tokio::test]
    async fn installed_plugins_start_again_after_a_restart() {
        let b = Box_::new();
        {
            let (reg, _) = b.open();
            reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
            reg.stop_all().await;
            assert_eq!(reg.info("echo").unwrap().state, "stopped");
        }
        let (reg, events) = b.open();
        assert_eq!(reg.info("echo").unwrap().state, "starting");
        reg.start_all().await.unwrap();
        assert_eq!(take(&events), ["compile echo 1.0.0", "start echo 1.0.0"]);
        let info = reg.info("echo").unwrap();
        assert_eq!(
            (info.version.as_str(), info.state.as_str()),
            ("1.0.0", "running")
        );
    }

    #[tokio::test]
    async fn a_plugin_whose_key_is_no_longer_trusted_does_not_start_after_a_restart() {
        let b = Box_::new();
        {
            let (reg, _) = b.open();
            reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
            reg.install(&b.signed("keep", "1.0.0", "ok")).await.unwrap();
            reg.stop_all().await;
        }
        let mut config = b.config();
        config.trusted_keys.clear();
        let (reg, events) = b.open_with(config, &[]);
        reg.start_all().await.unwrap();
        assert!(take(&events).is_empty());
        let info = reg.info("echo").unwrap();
        assert_eq!(info.state, "failed");
        assert!(info.error.unwrap().contains("trusted_keys"));
    }

    #[tokio::test]
    async fn bundled_plugins_are_installed_on_first_run_only_and_not_after_removal() {
        let b = Box_::new();
        {
            let (reg, events) = b.open_with(b.config(), BUNDLED);
            reg.start_all().await.unwrap();
            assert_eq!(
                take(&events),
                ["compile sensor 1.0.0", "start sensor 1.0.0"]
            );
            let info = reg.info("sensor").unwrap();
            assert_eq!(
                (info.source, info.signer.as_str()),
                (Source::Bundled, "bundled")
            );
            reg.stop_all().await;
        }
        {
            // Second run: already installed, started as is (trusted although unsigned).
            let (reg, events) = b.open_with(b.config(), BUNDLED);
            reg.start_all().await.unwrap();
            assert_eq!(
                take(&events),
                ["compile sensor 1.0.0", "start sensor 1.0.0"]
            );
            reg.remove("sensor", false).await.unwrap();
        }
        {
            // After removal it stays removed.
            let (reg, events) = b.open_with(b.config(), BUNDLED);
            reg.start_all().await.unwrap();
            assert!(take(&events).is_empty());
            assert!(reg.list().is_empty());
            assert!(b.installed().is_empty());
            // Installing it explicitly brings it back, and the removal is forgotten.
            let mut bundle =
                Bundle::new(BUNDLED_MANIFEST, BUNDLED[0].wasm.to_vec(), 1 << 20).unwrap();
            bundle.sign(&b.key);
            reg.install(&bundle.encode()).await.unwrap();
            reg.remove("sensor", false).await.unwrap();
        }
        // With `bundled = false` nothing is installed on a fresh box.
        let fresh = Box_::new();
        let config = PluginsConfig {
            bundled: false,
            ..fresh.config()
        };
        let (reg, _) = fresh.open_with(config, BUNDLED);
        reg.start_all().await.unwrap();
        assert!(reg.list().is_empty());
    }

    #[tokio::test]
    async fn a_bundled_plugin_follows_the_binary_to_a_new_version_and_an_operator_upgrade_sticks() {
        let b = Box_::new();
        {
            let (reg, _) = b.open_with(b.config(), BUNDLED);
            reg.start_all().await.unwrap();
            reg.stop_all().await;
        }
        {
            let (reg, events) = b.open_with(b.config(), BUNDLED_V2);
            reg.start_all().await.unwrap();
            assert_eq!(
                take(&events),
                ["compile sensor 2.0.0", "start sensor 2.0.0"]
            );
            assert_eq!(reg.info("sensor").unwrap().version, "2.0.0");
            // The operator installs their own version 3 over it.
            let mut v3 = Bundle::new(
                &BUNDLED_MANIFEST.replace("1.0.0", "3.0.0"),
                wasm("operator"),
                1 << 20,
            )
            .unwrap();
            v3.sign(&b.key);
            reg.upgrade("sensor", &v3.encode(), false).await.unwrap();
            reg.stop_all().await;
        }
        let (reg, _) = b.open_with(b.config(), BUNDLED_V2);
        reg.start_all().await.unwrap();
        let info = reg.info("sensor").unwrap();
        assert_eq!(
            (info.version.as_str(), info.source),
            ("3.0.0", Source::Operator)
        );
    }

    #[test]
    fn an_interrupted_swap_is_rolled_back_or_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let installed = dir.path().join(INSTALLED_DIR);
        for d in [".staging-a", ".retired-b", ".retired-c", "c", ".removed-d"] {
            std::fs::create_dir_all(installed.join(d)).unwrap();
            std::fs::write(installed.join(d).join("marker"), d).unwrap();
        }
        recover(&installed).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&installed)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(
            std::fs::read_to_string(installed.join("b/marker")).unwrap(),
            ".retired-b"
        );
        assert_eq!(
            std::fs::read_to_string(installed.join("c/marker")).unwrap(),
            "c"
        );
    }

    #[test]
    fn config_validation_names_the_key() {
        PluginsConfig::default().validate().unwrap();
        type Case = (fn(&mut PluginsConfig), &'static str);
        let cases: [Case; 5] = [
            (|c| c.max_memory_mib = 0, "plugins.max_memory_mib"),
            (|c| c.default_memory_mib = 65, "plugins.default_memory_mib"),
            (
                |c| c.default_deadline_ms = 101,
                "plugins.default_deadline_ms",
            ),
            (|c| c.max_bundle_bytes = 1000, "plugins.max_bundle_bytes"),
            (
                |c| c.trusted_keys = vec!["ed25519:nope".into()],
                "plugins.trusted_keys[0]",
            ),
        ];
        for (change, key) in cases {
            let mut c = PluginsConfig::default();
            change(&mut c);
            let (got, problem) = c.validate().unwrap_err();
            assert_eq!(got, key, "{problem}");
        }
    }
}
