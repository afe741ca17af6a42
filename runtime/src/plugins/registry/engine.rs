//! What the registry needs from the wasm host and the runner ([`PluginEngine`],
//! [`PluginRunner`]), and the production engine over both ([`WasmEngine`]). Tests substitute
//! their own engine.

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::config::PluginsConfig;
use crate::log::Log;
use crate::plugins::host::{CompiledModule, Host, HostConfig, PluginError};
use crate::plugins::manifest::Manifest;
use crate::plugins::runner::{RunState, RunnerConfig, RunnerHandle};
use crate::state::StateStore;

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
    /// Where the runner is in its life.
    pub state: RunState,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Everything else the runner reports (counters, lag, timings).
    pub detail: Value,
}

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
            max_output_records_per_input: config.max_output_records_per_input,
            max_output_bytes_per_input: config.max_output_bytes_per_input,
            default_state_bytes: config.default_state_mib.saturating_mul(1 << 20),
            max_state_bytes: config.max_state_mib.saturating_mul(1 << 20),
            default_state_keys: config.default_state_keys,
            max_state_keys: config.max_state_keys,
            cache_dir,
            ..defaults
        })?;
        let runner = RunnerConfig {
            max_consecutive_failures: config.max_consecutive_failures,
            quarantine_backoff_ms: config.quarantine_backoff_ms,
            max_quarantine_backoff_ms: config.max_quarantine_backoff_ms,
            default_output_records_per_sec: config.default_output_records_per_sec,
            max_output_records_per_sec: config.max_output_records_per_sec,
            default_output_bytes_per_sec: config.default_output_bytes_per_sec,
            max_output_bytes_per_sec: config.max_output_bytes_per_sec,
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
            state: status.state,
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
