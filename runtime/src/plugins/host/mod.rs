//! The plugin sandbox: one shared wasmtime [`Engine`], a compiled-module cache on disk, and one
//! `Store` per plugin instance with its own memory cap and CPU deadline. Plugins reach the
//! outside world only through the ABI v1 imports (`outpost`, see `abi.rs` and `sdk/ABI.md`)
//! and a minimal WASI preview 1 that grants nothing (`wasi.rs`).
//!
//! # Limits
//! - **CPU:** epoch interruption. A ticker thread advances the engine's epoch every
//!   [`EPOCH_TICK_MS`] ms; each guest call gets a deadline of `ceil(deadline_ms / tick) + 1`
//!   ticks, so an endless loop is interrupted between `deadline_ms` and `deadline_ms + 2 ticks`
//!   after the call started. `_initialize`, `outpost_abi_version` and `outpost_init` get
//!   [`INIT_DEADLINE_FACTOR`] times the deadline.
//! - **Memory:** the manifest's `memory_mib` (or the box default), capped by the box maximum.
//!   A `memory.grow` past it returns -1 (as the spec says); a call that then fails is reported
//!   as out of memory. A module whose initial memory is already larger fails to instantiate.
//! - **State:** the manifest's `state_mib` and `state_keys` (or the box defaults), capped by
//!   the box maximums: a `state_put` that would take the plugin's state (key plus value bytes,
//!   keys; committed plus not yet committed) past either gets `QUOTA` and writes nothing
//!   (`store.rs` keeps the usage, the state store counts the committed part).
//! - **Stack:** [`MAX_WASM_STACK_BYTES`] of wasm stack; deeper recursion traps.
//! - **Store:** one instance, one memory, one table of at most 200 000 elements.
//! - **Module size:** `max_module_bytes`, checked before anything is parsed.
//! - **Module shape:** function count, function size and block nesting, checked before
//!   compiling (see `shape.rs`): compile time and memory stay bounded.
//!
//! # Load-time checks
//! [`Host::compile`] refuses, with an error naming the plugin: a module over the size limit,
//! bytes that are neither a wasm binary nor WAT text, an invalid module, a missing or mistyped
//! required export (`memory`, `outpost_abi_version`, `outpost_alloc`, `outpost_on_record`;
//! `outpost_init` and `_initialize` are optional but must be well-typed), an import of anything
//! but a function, and an import the host does not define (named) or defines with another type.
//! [`Host::instantiate`] then checks the ABI version the module reports and runs its init.
//!
//! # Failures of a call
//! A call fails when the guest traps (including `unreachable` from a Rust panic), runs past its
//! deadline, exhausts its stack, calls `proc_exit`, returns non-zero, or a host function hit an
//! internal error. Its emits and state writes are discarded. After any trap the instance may be
//! in a broken state: [`Instance::restart`] builds a fresh `Store` and runs init again, keeping
//! the batch's uncommitted state writes and the plugin's log.

pub mod abi;
mod cache;
pub mod guest_log;
mod instance;
mod shape;
mod store;
mod wasi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, FuncType, InstancePre, Linker, Module, Store, ValType};

use crate::log::LogError;
use crate::state::{StateError, StateStore};

pub use guest_log::{GuestLog, LogLevel, LogLine, LogSource};
pub use instance::Instance;
pub use store::Emitted;

use cache::ModuleCache;
use store::StoreData;

/// How often the epoch ticker advances the engine's epoch, in ms.
pub const EPOCH_TICK_MS: u64 = 10;
/// Wasm stack available to a guest call, in bytes.
pub const MAX_WASM_STACK_BYTES: usize = 512 * 1024;
/// Init-time calls get this many times the per-call deadline.
pub const INIT_DEADLINE_FACTOR: u64 = 10;

/// Header naming the plugin on every record it emits.
pub const HEADER_PLUGIN: &str = "outpost-plugin";
/// Header naming the input topic a record was derived from (outputs and dead letters).
pub const HEADER_SOURCE_TOPIC: &str = "outpost-source-topic";
/// Header with the input offset (decimal) a record was derived from.
pub const HEADER_SOURCE_OFFSET: &str = "outpost-source-offset";
/// Header with the failure of a dead-lettered record.
pub const HEADER_ERROR: &str = "outpost-error";

/// Errors of loading and instantiating plugins.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The host configuration is unusable.
    #[error("invalid plugin host configuration: {0}")]
    InvalidConfig(String),
    /// The manifest cannot be run as given.
    #[error("plugin {plugin}: invalid manifest: {detail}")]
    InvalidManifest { plugin: String, detail: String },
    /// The module is larger than `max_module_bytes`.
    #[error("plugin {plugin}: the module is {size} bytes, over the limit of {limit} bytes (`max_module_bytes`)")]
    ModuleTooLarge {
        plugin: String,
        size: usize,
        limit: usize,
    },
    /// The module is outside the shape the host compiles (see `shape.rs`).
    #[error("plugin {plugin}: the module is refused before compiling: {detail} (sdk/ABI.md, section 10)")]
    TooComplex { plugin: String, detail: String },
    /// Not WebAssembly, or invalid WebAssembly.
    #[error("plugin {plugin}: the module is not valid WebAssembly: {detail}")]
    Malformed { plugin: String, detail: String },
    /// A required export is missing or has the wrong type.
    #[error("plugin {plugin}: export `{export}` {detail}")]
    MissingExport {
        plugin: String,
        export: &'static str,
        detail: String,
    },
    /// The module reports an ABI version this host does not speak.
    #[error("plugin {plugin}: `outpost_abi_version` returned {found}, but this host speaks ABI version {supported}")]
    AbiVersion {
        plugin: String,
        found: i32,
        supported: i32,
    },
    /// The module imports a function the host does not provide.
    #[error("plugin {plugin}: imports function `{module}.{name}`, which the host does not provide (the host provides `outpost` ABI v1 and `wasi_snapshot_preview1`)")]
    UnknownImport {
        plugin: String,
        module: String,
        name: String,
    },
    /// The module imports a host function with another type than the host's.
    #[error("plugin {plugin}: imports `{module}.{name}` as {found}, but the host defines it as {expected}")]
    ImportType {
        plugin: String,
        module: String,
        name: String,
        found: String,
        expected: String,
    },
    /// The module imports a memory, table, global or tag.
    #[error("plugin {plugin}: imports {kind} `{module}.{name}`; plugins must define their own memory and tables and may import only functions")]
    ForbiddenImport {
        plugin: String,
        module: String,
        name: String,
        kind: &'static str,
    },
    /// Instantiation failed (e.g. the initial memory is over the limit).
    #[error("plugin {plugin}: instantiation failed: {detail}")]
    Instantiate { plugin: String, detail: String },
    /// `_initialize`, `outpost_abi_version` or `outpost_init` failed (trap, deadline, non-zero).
    #[error("plugin {plugin}: init failed: {detail}")]
    Init { plugin: String, detail: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Limits and places of the plugin host (from the box's `[plugins]` config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Largest linear memory any plugin may get, in MiB.
    pub max_memory_mib: u64,
    /// Linear memory of a plugin whose manifest does not say, in MiB.
    pub default_memory_mib: u64,
    /// Longest CPU deadline per call any plugin may get, in ms.
    pub max_deadline_ms: u64,
    /// CPU deadline per call of a plugin whose manifest does not say, in ms.
    pub default_deadline_ms: u64,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Largest record a plugin may emit, in bytes: key + value + headers, counted both as the
    /// ABI counts it (encoded header block) and as the log counts it (header names and values,
    /// including the provenance headers the host adds). Set it no higher than the log's
    /// `max_record_bytes`, or an emitted record may be refused by the log.
    pub max_record_bytes: usize,
    /// Longest state key, in bytes.
    pub max_state_key_bytes: usize,
    /// Largest state value, in bytes.
    pub max_state_value_bytes: usize,
    /// Most records one call may emit (the default, and the cap of a manifest's
    /// `output_records_per_input`); at most the ABI's 1024.
    pub max_output_records_per_input: usize,
    /// Most bytes one call may emit (default and cap of `output_bytes_per_input`); at most the
    /// ABI's 8 MiB.
    pub max_output_bytes_per_input: usize,
    /// State quota in bytes (keys + values) of a plugin whose manifest does not ask for one.
    pub default_state_bytes: u64,
    /// Largest state quota in bytes any plugin may get; larger manifest requests are capped.
    pub max_state_bytes: u64,
    /// State quota in keys of a plugin whose manifest does not ask for one.
    pub default_state_keys: u64,
    /// Largest state quota in keys any plugin may get; larger manifest requests are capped.
    pub max_state_keys: u64,
    /// Where compiled modules are cached; `None` = no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_memory_mib: 256,
            default_memory_mib: 64,
            max_deadline_ms: 5_000,
            default_deadline_ms: 100,
            max_module_bytes: 32 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            max_state_key_bytes: 1024,
            max_state_value_bytes: 1024 * 1024,
            max_output_records_per_input: outpost_sdk::abi::limits::MAX_EMITS_PER_CALL,
            max_output_bytes_per_input: outpost_sdk::abi::limits::MAX_EMIT_BYTES_PER_CALL,
            default_state_bytes: outpost_sdk::abi::limits::DEFAULT_STATE_QUOTA_BYTES,
            max_state_bytes: 1 << 30,
            default_state_keys: outpost_sdk::abi::limits::DEFAULT_STATE_QUOTA_KEYS,
            max_state_keys: 10_000_000,
            cache_dir: None,
        }
    }
}

impl HostConfig {
    /// Turns nonsense into an error naming the setting.
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad = |msg: String| Err(PluginError::InvalidConfig(msg));
        if self.max_memory_mib == 0 || self.max_memory_mib > 4096 {
            return bad(format!(
                "max_memory_mib must be between 1 and 4096 (wasm32's 4 GiB), not {}",
                self.max_memory_mib
            ));
        }
        if self.default_memory_mib == 0 || self.default_memory_mib > self.max_memory_mib {
            return bad(format!(
                "default_memory_mib must be between 1 and max_memory_mib ({}), not {}",
                self.max_memory_mib, self.default_memory_mib
            ));
        }
        if self.max_deadline_ms == 0 || self.max_deadline_ms > 3_600_000 {
            return bad(format!(
                "max_deadline_ms must be between 1 and 3600000, not {}",
                self.max_deadline_ms
            ));
        }
        if self.default_deadline_ms == 0 || self.default_deadline_ms > self.max_deadline_ms {
            return bad(format!(
                "default_deadline_ms must be between 1 and max_deadline_ms ({}), not {}",
                self.max_deadline_ms, self.default_deadline_ms
            ));
        }
        if self.max_module_bytes == 0 {
            return bad("max_module_bytes must be at least 1".into());
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > i32::MAX as usize {
            return bad(format!(
                "max_record_bytes must be between 1 and {}, not {}",
                i32::MAX,
                self.max_record_bytes
            ));
        }
        if self.max_state_key_bytes == 0
            || self.max_state_key_bytes > crate::state::MAX_STATE_KEY_BYTES
        {
            return bad(format!(
                "max_state_key_bytes must be between 1 and {} (the state store's limit), not {}",
                crate::state::MAX_STATE_KEY_BYTES,
                self.max_state_key_bytes
            ));
        }
        let (max_emits, max_emit_bytes) = (
            outpost_sdk::abi::limits::MAX_EMITS_PER_CALL,
            outpost_sdk::abi::limits::MAX_EMIT_BYTES_PER_CALL,
        );
        if self.max_output_records_per_input == 0 || self.max_output_records_per_input > max_emits {
            return bad(format!(
                "max_output_records_per_input must be between 1 and {max_emits} (the ABI's limit), not {}",
                self.max_output_records_per_input
            ));
        }
        if self.max_output_bytes_per_input == 0 || self.max_output_bytes_per_input > max_emit_bytes
        {
            return bad(format!(
                "max_output_bytes_per_input must be between 1 and {max_emit_bytes} (the ABI's limit), not {}",
                self.max_output_bytes_per_input
            ));
        }
        if self.max_state_bytes == 0 {
            return bad("max_state_bytes must be at least 1".into());
        }
        if self.default_state_bytes == 0 || self.default_state_bytes > self.max_state_bytes {
            return bad(format!(
                "default_state_bytes must be between 1 and max_state_bytes ({}), not {}",
                self.max_state_bytes, self.default_state_bytes
            ));
        }
        if self.max_state_keys == 0 {
            return bad("max_state_keys must be at least 1".into());
        }
        if self.default_state_keys == 0 || self.default_state_keys > self.max_state_keys {
            return bad(format!(
                "default_state_keys must be between 1 and max_state_keys ({}), not {}",
                self.max_state_keys, self.default_state_keys
            ));
        }
        if self.max_state_value_bytes > crate::state::MAX_STATE_VALUE_BYTES {
            return bad(format!(
                "max_state_value_bytes must be at most {} (the state store's limit), not {}",
                crate::state::MAX_STATE_VALUE_BYTES,
                self.max_state_value_bytes
            ));
        }
        Ok(())
    }
}

/// Why one guest call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A wasm trap (`unreachable`, e.g. a Rust panic; out-of-bounds access; …).
    Trap,
    /// The call ran past its CPU deadline and was interrupted.
    Deadline,
    /// The memory cap was hit during the call.
    OutOfMemory,
    /// The wasm stack was exhausted.
    StackOverflow,
    /// The guest called WASI `proc_exit`.
    Exit,
    /// `outpost_on_record` returned non-zero.
    Error,
    /// The host refused the guest's doing (a bad pointer from `outpost_alloc`, an input over
    /// what wasm32 addresses).
    Host,
    /// The host could not serve the call: the state store failed to read (I/O error, full
    /// disk). Not the plugin's fault: the runner pauses and retries the record, never
    /// dead-letters it.
    HostUnavailable,
}

impl FailureKind {
    /// Every kind, for registering metrics.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Trap,
        FailureKind::Deadline,
        FailureKind::OutOfMemory,
        FailureKind::StackOverflow,
        FailureKind::Exit,
        FailureKind::Error,
        FailureKind::Host,
        FailureKind::HostUnavailable,
    ];

    /// The label value (`kind` of `outpost_plugin_failures_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Exit => "exit",
            FailureKind::Error => "error",
            FailureKind::Host => "host",
            FailureKind::HostUnavailable => "host_unavailable",
        }
    }

    /// Whether the instance must be rebuilt before the next call (its state may be broken).
    pub fn needs_restart(self) -> bool {
        !matches!(
            self,
            FailureKind::Error | FailureKind::Host | FailureKind::HostUnavailable
        )
    }
}

/// One failed call (a guest trap, a blown deadline, an error return, …): the plugin, what kind
/// and a message for people (status, dead-letter header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin}: {}: {message}", kind.as_str())]
pub struct CallFailure {
    pub plugin: Arc<str>,
    pub kind: FailureKind,
    pub message: String,
}

/// A validated, compiled module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) pre: InstancePre<StoreData>,
    sha256: [u8; 32],
    from_cache: bool,
    pub(crate) has_init: bool,
    pub(crate) has_initialize: bool,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("sha256", &cache::hex(&self.sha256))
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

impl CompiledModule {
    /// SHA-256 of the module bytes, lower-case hex.
    pub fn sha256_hex(&self) -> String {
        cache::hex(&self.sha256)
    }
    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

/// The plugin host. Cheap to clone; every clone shares one engine and one epoch ticker.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    linker: Linker<StoreData>,
    pub(crate) config: HostConfig,
    /// Epoch ticks so far (a coarse clock the WASI sleep uses to respect deadlines).
    pub(crate) ticks: Arc<AtomicU64>,
    /// Every host function by (module, name), with its type.
    imports: HashMap<(String, String), FuncType>,
    cache: Option<ModuleCache>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn error_chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn same_type(a: &FuncType, b: &FuncType) -> bool {
    a.params().len() == b.params().len()
        && a.results().len() == b.results().len()
        && a.params().zip(b.params()).all(|(x, y)| ValType::eq(&x, &y))
        && a.results()
            .zip(b.results())
            .all(|(x, y)| ValType::eq(&x, &y))
}

/// Advances the epoch of the host's engine until the host is gone.
fn epoch_ticker(host: Weak<HostInner>) {
    loop {
        std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
        match host.upgrade() {
            Some(inner) => {
                inner.engine.increment_epoch();
                inner.ticks.fetch_add(1, Ordering::Relaxed);
            }
            None => return,
        }
    }
}

impl Host {
    /// A host with its engine, its linker (WASI preview 1 + ABI v1) and its epoch ticker.
    pub fn new(config: HostConfig) -> Result<Host, PluginError> {
        config.validate()?;
        let mut wasm_config = wasmtime::Config::new();
        wasm_config
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK_BYTES);
        let engine = Engine::new(&wasm_config).map_err(|e| {
            PluginError::InvalidConfig(format!(
                "the wasm engine failed to start: {}",
                error_chain(&e)
            ))
        })?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| {
            PluginError::InvalidConfig(format!(
                "defining host functions failed: {}",
                error_chain(&e)
            ))
        };
        wasi::add_to_linker(&mut linker).map_err(link_error)?;
        abi::add_to_linker(&mut linker).map_err(link_error)?;
        let imports = {
            let dummy = StoreData::new(
                Arc::from("(host)"),
                Arc::new(store::Grants {
                    outputs: Vec::new(),
                    state: false,
                    max_record_bytes: 0,
                    max_state_key_bytes: 0,
                    max_state_value_bytes: 0,
                    output_records_per_input: 0,
                    output_bytes_per_input: 0,
                    state_quota: outpost_sdk::abi::StateQuota::default(),
                }),
                0,
                Arc::new(GuestLog::new(Arc::from("(host)"))),
                Arc::new(AtomicU64::new(0)),
            );
            let mut store = Store::new(&engine, dummy);
            let defined: Vec<(String, String, wasmtime::Extern)> = linker
                .iter(&mut store)
                .map(|(m, n, e)| (m.to_string(), n.to_string(), e))
                .collect();
            defined
                .into_iter()
                .filter_map(|(m, n, e)| match e {
                    wasmtime::Extern::Func(f) => Some(((m, n), f.ty(&store))),
                    _ => None,
                })
                .collect()
        };
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| ModuleCache::new(dir, &engine));
        let inner = Arc::new(HostInner {
            engine,
            linker,
            config,
            ticks: Arc::new(AtomicU64::new(0)),
            imports,
            cache,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("outpost-wasm-epoch".into())
            .spawn(move || epoch_ticker(weak))
            .map_err(|source| PluginError::Io {
                context: "starting the wasm epoch ticker thread".into(),
                source,
            })?;
        Ok(Host { inner })
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    pub(crate) fn inner(&self) -> &HostInner {
        &self.inner
    }

    /// [`Host::compile_named`] for a module whose plugin name is not known yet: errors name it
    /// `module <first 12 hex digits of its SHA-256>`.
    pub fn compile(&self, wasm: &[u8]) -> Result<CompiledModule, PluginError> {
        let sha = Sha256::digest(wasm);
        let label = format!("module {}", &cache::hex(&sha)[..12]);
        self.compile_named(&label, wasm)
    }

    /// Validates and compiles `wasm` (a binary module, or WAT text) for plugin `plugin`, or
    /// loads its compiled form from the cache. Checks size, exports and imports (see the
    /// module doc); errors name `plugin`.
    pub fn compile_named(&self, plugin: &str, wasm: &[u8]) -> Result<CompiledModule, PluginError> {
        let inner = &self.inner;
        let limit = inner.config.max_module_bytes;
        if wasm.len() > limit {
            return Err(PluginError::ModuleTooLarge {
                plugin: plugin.to_string(),
                size: wasm.len(),
                limit,
            });
        }
        let sha256: [u8; 32] = Sha256::digest(wasm).into();
        let cached = inner
            .cache
            .as_ref()
            .and_then(|c| c.load(&inner.engine, &sha256));
        let from_cache = cached.is_some();
        let module = match cached {
            Some(m) => m,
            None => self.compile_fresh(plugin, wasm)?,
        };
        let (has_init, has_initialize) = check_exports(plugin, &module)?;
        self.check_imports(plugin, &module)?;
        let pre = inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| PluginError::Instantiate {
                plugin: plugin.to_string(),
                detail: error_chain(&e),
            })?;
        if !from_cache {
            if let Some(cache) = &inner.cache {
                match cache.store(&module, &sha256) {
                    Ok(path) => {
                        tracing::debug!(plugin, path = %path.display(), "Cached a compiled module.")
                    }
                    Err(e) => {
                        tracing::warn!(plugin, error = %e, "Caching a compiled module failed; it is compiled again on the next start.")
                    }
                }
            }
        }
        Ok(CompiledModule {
            pre,
            sha256,
            from_cache,
            has_init,
            has_initialize,
        })
    }

    fn compile_fresh(&self, plugin: &str, wasm: &[u8]) -> Result<Module, PluginError> {
        let engine = &self.inner.engine;
        let malformed = |detail: String| PluginError::Malformed {
            plugin: plugin.to_string(),
            detail,
        };
        let too_complex = |detail: String| PluginError::TooComplex {
            plugin: plugin.to_string(),
            detail,
        };
        if wasm.starts_with(b"\0asm") {
            shape::check(wasm).map_err(too_complex)?;
            return Module::from_binary(engine, wasm).map_err(|e| malformed(error_chain(&e)));
        }
        let looks_like_text = std::str::from_utf8(wasm)
            .map(|t| t.trim_start().starts_with('(') || t.trim_start().starts_with(";;"))
            .unwrap_or(false);
        if looks_like_text {
            if wasm.len() > shape::MAX_WAT_BYTES {
                return Err(too_complex(format!(
                    "{} bytes of WAT text; at most {} (use the binary format)",
                    wasm.len(),
                    shape::MAX_WAT_BYTES
                )));
            }
            let binary = wat::parse_bytes(wasm).map_err(|e| malformed(e.to_string()))?;
            shape::check(&binary).map_err(too_complex)?;
            return Module::from_binary(engine, &binary).map_err(|e| malformed(error_chain(&e)));
        }
        Err(malformed(format!(
            "it does not start with the wasm magic bytes \\0asm (it starts with {:02x?}) and is not WAT text",
            &wasm[..wasm.len().min(8)]
        )))
    }

    fn check_imports(&self, plugin: &str, module: &Module) -> Result<(), PluginError> {
        for import in module.imports() {
            let (m, n) = (import.module().to_string(), import.name().to_string());
            let kind = match import.ty() {
                ExternType::Func(found) => match self.inner.imports.get(&(m.clone(), n.clone())) {
                    None => {
                        return Err(PluginError::UnknownImport {
                            plugin: plugin.to_string(),
                            module: m,
                            name: n,
                        })
                    }
                    Some(expected) if !same_type(&found, expected) => {
                        return Err(PluginError::ImportType {
                            plugin: plugin.to_string(),
                            module: m,
                            name: n,
                            found: found.to_string(),
                            expected: expected.to_string(),
                        })
                    }
                    Some(_) => continue,
                },
                ExternType::Memory(_) => "a memory",
                ExternType::Table(_) => "a table",
                ExternType::Global(_) => "a global",
                ExternType::Tag(_) => "a tag",
            };
            return Err(PluginError::ForbiddenImport {
                plugin: plugin.to_string(),
                module: m,
                name: n,
                kind,
            });
        }
        Ok(())
    }

    /// Instantiates `module` with `manifest`'s grants and limits and runs its init
    /// (`_initialize` if exported, the ABI version check, `outpost_init` with the manifest's
    /// config as JSON). Without a state store, `state_get` finds nothing (a throwaway check).
    pub fn instantiate(
        &self,
        manifest: &crate::plugins::manifest::Manifest,
        module: &CompiledModule,
    ) -> Result<Instance, PluginError> {
        Instance::new(self.clone(), manifest, module.clone(), None)
    }

    /// [`Host::instantiate`] reading committed state from `state` (namespace = plugin name),
    /// already during `outpost_init`.
    pub fn instantiate_with_state(
        &self,
        manifest: &crate::plugins::manifest::Manifest,
        module: &CompiledModule,
        state: StateStore,
    ) -> Result<Instance, PluginError> {
        Instance::new(self.clone(), manifest, module.clone(), Some(state))
    }
}

/// Checks the ABI exports; returns whether `outpost_init` and `_initialize` exist.
fn check_exports(plugin: &str, module: &Module) -> Result<(bool, bool), PluginError> {
    use ValType::I32;
    let required: [(&'static str, &[ValType], &[ValType]); 3] = [
        ("outpost_abi_version", &[], &[I32]),
        ("outpost_alloc", &[I32], &[I32]),
        ("outpost_on_record", &[I32, I32], &[I32]),
    ];
    let optional: [(&'static str, &[ValType], &[ValType]); 2] = [
        ("outpost_init", &[I32, I32], &[I32]),
        ("_initialize", &[], &[]),
    ];
    let describe = |params: &[ValType], results: &[ValType]| {
        let list = |v: &[ValType]| {
            v.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("({}) -> ({})", list(params), list(results))
    };
    let err = |export: &'static str, detail: String| PluginError::MissingExport {
        plugin: plugin.to_string(),
        export,
        detail,
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => {}
        Some(ExternType::Memory(_)) => {
            return Err(err("memory", "must be a 32-bit, non-shared memory".into()))
        }
        Some(other) => return Err(err("memory", format!("must be a memory, not {other:?}"))),
        None => {
            return Err(err(
                "memory",
                "is missing: the module must export its memory as `memory`".into(),
            ))
        }
    }
    let check = |name: &'static str,
                 params: &[ValType],
                 results: &[ValType]|
     -> Result<bool, PluginError> {
        match module.get_export(name) {
            None => Ok(false),
            Some(ExternType::Func(ft)) => {
                let ok = ft.params().len() == params.len()
                    && ft.results().len() == results.len()
                    && ft.params().zip(params).all(|(a, b)| ValType::eq(&a, b))
                    && ft.results().zip(results).all(|(a, b)| ValType::eq(&a, b));
                if ok {
                    Ok(true)
                } else {
                    Err(err(
                        name,
                        format!(
                            "has type {ft}, but ABI v1 requires {}",
                            describe(params, results)
                        ),
                    ))
                }
            }
            Some(_) => Err(err(
                name,
                format!("must be a function {}", describe(params, results)),
            )),
        }
    };
    for (name, params, results) in required {
        if !check(name, params, results)? {
            return Err(err(
                name,
                format!(
                    "is missing: ABI v1 requires a function {}",
                    describe(params, results)
                ),
            ));
        }
    }
    let has_init = check(optional[0].0, optional[0].1, optional[0].2)?;
    let has_initialize = check(optional[1].0, optional[1].1, optional[1].2)?;
    Ok((has_init, has_initialize))
}

#[cfg(test)]
mod tests;
