//! One running plugin instance: its `Store`, the typed entry points looked up once, and the
//! per-record call path (encode → `outpost_alloc` → copy → `outpost_on_record`).

use std::sync::Arc;

use wasmtime::{Memory, Store, Trap, TypedFunc};

use outpost_sdk::abi::{StateQuota, StateUsage};

use super::abi::{self, ABI_VERSION};
use super::guest_log::{GuestLog, LogLevel, LogSource};
use super::store::{Batch, Emitted, Grants, Phase, StoreData};
use super::wasi::ProcExit;
use super::{
    error_chain, CallFailure, CompiledModule, FailureKind, Host, PluginError, EPOCH_TICK_MS,
    HEADER_PLUGIN, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC, INIT_DEADLINE_FACTOR,
    MAX_WASM_STACK_BYTES,
};
use crate::log::Record;
use crate::plugins::manifest::Manifest;
use crate::state::{StateOp, StateStore};

/// What every incarnation of a plugin's instance shares.
#[derive(Debug)]
struct Settings {
    plugin: Arc<str>,
    grants: Arc<Grants>,
    memory_bytes: usize,
    memory_mib: u64,
    deadline_ms: u64,
    deadline_ticks: u64,
    /// The manifest's `[config]` table as JSON, for `outpost_init`.
    config_json: Vec<u8>,
}

/// The entry points of one instantiation.
struct Entry {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_record: TypedFunc<(i32, i32), i32>,
}

/// A plugin instance ready to take records. Owned by one thread at a time.
pub struct Instance {
    host: Host,
    module: CompiledModule,
    settings: Arc<Settings>,
    store: Store<StoreData>,
    entry: Entry,
    /// Reused buffer for encoding records.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.settings.plugin)
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Ticks of [`EPOCH_TICK_MS`] that guarantee at least `ms` before the interrupt.
fn ticks_for(ms: u64) -> u64 {
    ms.div_ceil(EPOCH_TICK_MS) + 1
}

/// Turns a wasmtime error out of a guest call into a failure kind and a message.
fn classify(
    err: &wasmtime::Error,
    data: &mut StoreData,
    settings: &Settings,
    deadline_ms: u64,
) -> CallFailure {
    let memory_refused = std::mem::take(&mut data.limiter.memory_refused);
    let (kind, mut message) = if let Some(exit) = err.downcast_ref::<ProcExit>() {
        (FailureKind::Exit, exit.to_string())
    } else {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => (
                FailureKind::Deadline,
                format!(
                    "the call ran past its CPU deadline of {deadline_ms} ms and was interrupted"
                ),
            ),
            Some(Trap::StackOverflow) => (
                FailureKind::StackOverflow,
                format!(
                    "the wasm call stack was exhausted (limit {} KiB): unbounded recursion?",
                    MAX_WASM_STACK_BYTES / 1024
                ),
            ),
            Some(trap) if memory_refused => (
                FailureKind::OutOfMemory,
                format!(
                    "the plugin hit its memory limit of {} MiB and then trapped: {trap}",
                    settings.memory_mib
                ),
            ),
            Some(trap) => (FailureKind::Trap, format!("wasm trap: {trap}")),
            None if memory_refused => (
                FailureKind::OutOfMemory,
                format!(
                    "the plugin hit its memory limit of {} MiB: {}",
                    settings.memory_mib,
                    error_chain(err)
                ),
            ),
            None => (FailureKind::Trap, error_chain(err)),
        }
    };
    if let Some(said) = data.call.error.take() {
        message.push_str("; the plugin said: ");
        message.push_str(&said);
    }
    data.flush_output();
    CallFailure {
        plugin: Arc::clone(&settings.plugin),
        kind,
        message,
    }
}

/// A per-input output quota: what the manifest asks for, capped by the box (whose cap is the
/// default).
fn quota(asked: Option<u64>, cap: usize) -> usize {
    asked.map_or(cap, |n| usize::try_from(n).unwrap_or(usize::MAX).min(cap))
}

/// A failure of an init-time call as a [`PluginError`].
fn init_error(plugin: &str, what: &str, failure: CallFailure) -> PluginError {
    PluginError::Init {
        plugin: plugin.to_string(),
        detail: format!("{what}: {}", failure.message),
    }
}

impl Instance {
    pub(super) fn new(
        host: Host,
        manifest: &Manifest,
        module: CompiledModule,
        state: Option<StateStore>,
    ) -> Result<Instance, PluginError> {
        let cfg = &host.inner().config;
        let plugin: Arc<str> = Arc::from(manifest.name.as_str());
        let memory_mib = manifest
            .limits
            .memory_mib
            .unwrap_or(cfg.default_memory_mib)
            .clamp(1, cfg.max_memory_mib);
        let deadline_ms = manifest
            .limits
            .deadline_ms
            .unwrap_or(cfg.default_deadline_ms)
            .clamp(1, cfg.max_deadline_ms);
        let state_quota = StateQuota {
            max_bytes: manifest
                .limits
                .state_mib
                .map_or(cfg.default_state_bytes, |mib| mib.saturating_mul(1 << 20))
                .clamp(1, cfg.max_state_bytes),
            max_keys: manifest
                .limits
                .state_keys
                .unwrap_or(cfg.default_state_keys)
                .clamp(1, cfg.max_state_keys),
        };
        let config_json = manifest.config_json();
        let settings = Arc::new(Settings {
            plugin: Arc::clone(&plugin),
            grants: Arc::new(Grants {
                outputs: manifest.outputs.clone(),
                state: manifest.state,
                max_record_bytes: cfg.max_record_bytes,
                max_state_key_bytes: cfg.max_state_key_bytes,
                max_state_value_bytes: cfg.max_state_value_bytes,
                output_records_per_input: quota(
                    manifest.limits.output_records_per_input,
                    cfg.max_output_records_per_input,
                ),
                output_bytes_per_input: quota(
                    manifest.limits.output_bytes_per_input,
                    cfg.max_output_bytes_per_input,
                ),
                state_quota,
            }),
            memory_bytes: (memory_mib * 1024 * 1024) as usize,
            memory_mib,
            deadline_ms,
            deadline_ticks: ticks_for(deadline_ms),
            config_json,
        });
        let log = Arc::new(GuestLog::new(plugin));
        let (store, entry) = Self::boot(&host, &module, &settings, log, Default::default(), state)?;
        Ok(Instance {
            host,
            module,
            settings,
            store,
            entry,
            scratch: Vec::new(),
        })
    }

    /// Builds a store, instantiates, runs `_initialize`, checks the ABI version, looks up the
    /// entry points and runs `outpost_init`.
    fn boot(
        host: &Host,
        module: &CompiledModule,
        settings: &Arc<Settings>,
        log: Arc<GuestLog>,
        batch: Batch,
        state: Option<StateStore>,
    ) -> Result<(Store<StoreData>, Entry), PluginError> {
        let plugin = &*settings.plugin;
        let mut data = StoreData::new(
            Arc::clone(&settings.plugin),
            Arc::clone(&settings.grants),
            settings.memory_bytes,
            log,
            Arc::clone(&host.inner().ticks),
        );
        data.batch = batch;
        data.state = state;
        let mut store = Store::new(&host.inner().engine, data);
        store.limiter(|d| &mut d.limiter);
        let init_ms = settings.deadline_ms.saturating_mul(INIT_DEADLINE_FACTOR);
        let init_ticks = ticks_for(init_ms);
        store.data_mut().begin_call(0, init_ms);
        store.set_epoch_deadline(init_ticks);
        let instance = match module.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => {
                let detail = if store.data().limiter.memory_refused {
                    format!(
                        "its initial memory is larger than its limit of {} MiB ({})",
                        settings.memory_mib,
                        error_chain(&e)
                    )
                } else {
                    error_chain(&e)
                };
                return Err(PluginError::Instantiate {
                    plugin: plugin.to_string(),
                    detail,
                });
            }
        };
        let missing = |export: &'static str, e: wasmtime::Error| PluginError::MissingExport {
            plugin: plugin.to_string(),
            export,
            detail: error_chain(&e),
        };
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| {
            PluginError::MissingExport {
                plugin: plugin.to_string(),
                export: "memory",
                detail: "is missing".into(),
            }
        })?;
        store.data_mut().memory = Some(memory);
        if module.has_initialize {
            let f = instance
                .get_typed_func::<(), ()>(&mut store, "_initialize")
                .map_err(|e| missing("_initialize", e))?;
            if let Err(e) = f.call(&mut store, ()) {
                let failure = classify(&e, store.data_mut(), settings, init_ms);
                return Err(init_error(plugin, "_initialize failed", failure));
            }
        }
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "outpost_abi_version")
            .map_err(|e| missing("outpost_abi_version", e))?;
        store.data_mut().begin_call(0, init_ms);
        store.set_epoch_deadline(init_ticks);
        match version.call(&mut store, ()) {
            Ok(ABI_VERSION) => {}
            Ok(found) => {
                return Err(PluginError::AbiVersion {
                    plugin: plugin.to_string(),
                    found,
                    supported: ABI_VERSION,
                })
            }
            Err(e) => {
                let failure = classify(&e, store.data_mut(), settings, init_ms);
                return Err(init_error(plugin, "outpost_abi_version failed", failure));
            }
        }
        let entry = Entry {
            memory,
            alloc: instance
                .get_typed_func::<i32, i32>(&mut store, "outpost_alloc")
                .map_err(|e| missing("outpost_alloc", e))?,
            on_record: instance
                .get_typed_func::<(i32, i32), i32>(&mut store, "outpost_on_record")
                .map_err(|e| missing("outpost_on_record", e))?,
        };
        if module.has_init {
            let init = instance
                .get_typed_func::<(i32, i32), i32>(&mut store, "outpost_init")
                .map_err(|e| missing("outpost_init", e))?;
            store.data_mut().begin_call(0, init_ms);
            store.set_epoch_deadline(init_ticks);
            let config = &settings.config_json;
            let ptr = Self::copy_in(&mut store, &entry, config, settings, init_ms)
                .map_err(|f| init_error(plugin, "passing the config failed", f))?;
            store.set_epoch_deadline(init_ticks);
            match init.call(&mut store, (ptr, config.len() as i32)) {
                Ok(0) => {}
                Ok(rc) => {
                    let data = store.data_mut();
                    data.flush_output();
                    let mut detail = match data.call.error.take() {
                        Some(msg) => msg,
                        None => format!("outpost_init returned {rc} without a message"),
                    };
                    if let Some(refused) = data.call.refused.take() {
                        detail.push_str(&format!(" (last refused host call: {refused})"));
                    }
                    return Err(PluginError::Init {
                        plugin: plugin.to_string(),
                        detail,
                    });
                }
                Err(e) => {
                    let failure = classify(&e, store.data_mut(), settings, init_ms);
                    return Err(init_error(plugin, "outpost_init failed", failure));
                }
            }
        }
        let data = store.data_mut();
        data.phase = Phase::Record;
        data.call.reset(0);
        data.limiter.memory_refused = false;
        Ok((store, entry))
    }

    /// `outpost_alloc(len)` and a copy of `bytes` to the returned address; the pointer.
    fn copy_in(
        store: &mut Store<StoreData>,
        entry: &Entry,
        bytes: &[u8],
        settings: &Settings,
        deadline_ms: u64,
    ) -> Result<i32, CallFailure> {
        let len = i32::try_from(bytes.len()).map_err(|_| CallFailure {
            plugin: Arc::clone(&settings.plugin),
            kind: FailureKind::Host,
            message: format!(
                "the input is {} bytes, more than wasm32 can address",
                bytes.len()
            ),
        })?;
        let ptr = match entry.alloc.call(&mut *store, len) {
            Ok(p) => p,
            Err(e) => {
                let mut failure = classify(&e, store.data_mut(), settings, deadline_ms);
                failure.message = format!("outpost_alloc({len}) failed: {}", failure.message);
                return Err(failure);
            }
        };
        if ptr == 0 && len > 0 {
            // ABI v1: an allocator that cannot serve the input fails the call as out of memory.
            let memory_refused = std::mem::take(&mut store.data_mut().limiter.memory_refused);
            let why = if memory_refused {
                format!(
                    ": the plugin hit its memory limit of {} MiB",
                    settings.memory_mib
                )
            } else {
                String::new()
            };
            return Err(CallFailure {
                plugin: Arc::clone(&settings.plugin),
                kind: FailureKind::OutOfMemory,
                message: format!("outpost_alloc({len}) returned 0{why}"),
            });
        }
        if entry
            .memory
            .write(&mut *store, ptr as u32 as usize, bytes)
            .is_err()
        {
            return Err(CallFailure {
                plugin: Arc::clone(&settings.plugin),
                kind: FailureKind::Host,
                message: format!(
                    "outpost_alloc({len}) returned {:#x}, which is not {len} bytes inside the plugin's memory",
                    ptr as u32
                ),
            });
        }
        Ok(ptr)
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.settings.plugin
    }

    /// The declared output topics; [`Emitted::output`] indexes this.
    pub fn outputs(&self) -> &[String] {
        &self.settings.grants.outputs
    }

    /// The CPU deadline per call, in ms (after capping).
    pub fn deadline_ms(&self) -> u64 {
        self.settings.deadline_ms
    }

    /// The memory cap, in MiB (after capping).
    pub fn memory_mib(&self) -> u64 {
        self.settings.memory_mib
    }

    /// The plugin's log (shared by every incarnation of this instance).
    pub fn log(&self) -> &Arc<GuestLog> {
        &self.store.data().log
    }

    /// Lets `state_get` read committed state from `state` (namespace = plugin name).
    pub fn set_state_store(&mut self, state: StateStore) {
        self.store.data_mut().state = Some(state);
    }

    /// Calls `outpost_on_record` with one input record of `topic`.
    ///
    /// On success the call's emits wait in [`Instance::drain_emits`] and its state writes join
    /// the batch ([`Instance::take_state_ops`]). On failure both are discarded; when
    /// [`FailureKind::needs_restart`] says so, call [`Instance::restart`] before the next call.
    pub fn call(&mut self, topic: &str, record: &Record) -> Result<(), CallFailure> {
        abi::encode_record(&mut self.scratch, topic, record);
        let provenance = HEADER_PLUGIN.len()
            + self.settings.plugin.len()
            + HEADER_SOURCE_TOPIC.len()
            + topic.len()
            + HEADER_SOURCE_OFFSET.len()
            + digits(record.offset);
        let ticks = self.settings.deadline_ticks;
        self.store
            .data_mut()
            .begin_call(provenance, self.settings.deadline_ms);
        self.store.set_epoch_deadline(ticks);
        let deadline_ms = self.settings.deadline_ms;
        let result = Self::copy_in(
            &mut self.store,
            &self.entry,
            &self.scratch,
            &self.settings,
            deadline_ms,
        )
        .and_then(|ptr| {
            self.store.set_epoch_deadline(ticks);
            self.entry
                .on_record
                .call(&mut self.store, (ptr, self.scratch.len() as i32))
                .map_err(|e| classify(&e, self.store.data_mut(), &self.settings, deadline_ms))
        });
        let data = self.store.data_mut();
        // A host function failed during the call (the state store could not be read): whatever
        // the guest made of it (an error return, a panic), the host is at fault, not the guest.
        let host_failure = data.call.internal.take();
        let outcome = match result {
            _ if host_failure.is_some() => Err(CallFailure {
                plugin: Arc::clone(&self.settings.plugin),
                kind: FailureKind::HostUnavailable,
                message: host_failure.unwrap_or_default(),
            }),
            Ok(0) => {
                data.batch.absorb(&mut data.call);
                return Ok(());
            }
            Ok(rc) => {
                let memory_refused = std::mem::take(&mut data.limiter.memory_refused);
                let mut message = match data.call.error.take() {
                    Some(msg) => msg,
                    None => format!("outpost_on_record returned {rc} without a message"),
                };
                if let Some(refused) = data.call.refused.take() {
                    message.push_str(&format!(" (last refused host call: {refused})"));
                }
                let kind = if memory_refused {
                    message.push_str(&format!(
                        " (the plugin hit its memory limit of {} MiB)",
                        self.settings.memory_mib
                    ));
                    FailureKind::OutOfMemory
                } else {
                    FailureKind::Error
                };
                Err(CallFailure {
                    plugin: Arc::clone(&self.settings.plugin),
                    kind,
                    message,
                })
            }
            Err(failure) => Err(failure),
        };
        let data = self.store.data_mut();
        data.call.reset(0);
        data.limiter.memory_refused = false;
        outcome
    }

    /// The records the last successful call emitted.
    pub fn drain_emits(&mut self) -> std::vec::Drain<'_, Emitted> {
        self.store.data_mut().call.emits.drain(..)
    }

    /// Whether successful calls left state writes that are not committed yet.
    pub fn has_pending_state(&self) -> bool {
        !self.store.data().batch.writes.is_empty()
    }

    /// Key plus value bytes of the state writes not committed yet (a delete counts its key):
    /// about what the batch's commit will write.
    pub fn pending_state_bytes(&self) -> usize {
        self.store.data().batch.bytes
    }

    /// The plugin's state quota (its manifest's, capped by the box).
    pub fn state_quota(&self) -> StateQuota {
        self.settings.grants.state_quota
    }

    /// How much committed state the plugin holds (read from the state store when not known
    /// yet; without a store, nothing).
    pub fn state_usage(&mut self) -> Result<StateUsage, PluginError> {
        Ok(self.store.data_mut().committed_usage()?)
    }

    /// Forgets every committed state value read so far, and the committed usage, so the next
    /// reads go to the state store (after a host failure the store may hold older values than
    /// were read).
    pub fn forget_committed(&mut self) {
        let data = self.store.data_mut();
        data.cache.clear();
        data.committed_usage = None;
        data.batch.usage = None;
    }

    /// Takes the batch's state writes as ops (one per key, its final value) for a commit.
    pub fn take_state_ops(&mut self) -> Vec<StateOp> {
        let batch = &mut self.store.data_mut().batch;
        let ops = batch
            .writes
            .drain()
            .map(|(key, value)| match value {
                Some(value) => StateOp::Put { key, value },
                None => StateOp::Delete { key },
            })
            .collect();
        batch.clear();
        ops
    }

    /// Tells the instance that `ops` (from [`Instance::take_state_ops`]) are committed, so its
    /// cache of committed state serves them without reading the store, and its committed usage
    /// is the store's again.
    pub fn committed(&mut self, ops: Vec<StateOp>) {
        let data = self.store.data_mut();
        let cache = &mut data.cache;
        for op in ops {
            match op {
                StateOp::Put { key, value } => cache.insert(key, Some(value)),
                StateOp::Delete { key } => cache.insert(key, None),
            }
        }
        // The store kept the namespace's usage through the commit (usually without reading
        // sled); if it cannot say now, the next write asks again.
        data.committed_usage = None;
        let _ = data.committed_usage();
    }

    /// Replaces the store with a fresh instantiation (after a trap), keeping the batch's
    /// uncommitted state writes, the cache of committed state, the state store and the log.
    pub fn restart(&mut self) -> Result<(), PluginError> {
        let data = self.store.data_mut();
        data.flush_output();
        let batch = std::mem::take(&mut data.batch);
        let cache = std::mem::take(&mut data.cache);
        let committed_usage = data.committed_usage;
        let state = data.state.clone();
        let log = Arc::clone(&data.log);
        log.push(
            LogLevel::Info,
            LogSource::Host,
            "restarting the plugin instance after a failed call".into(),
        );
        match Self::boot(
            &self.host,
            &self.module,
            &self.settings,
            Arc::clone(&log),
            batch,
            state,
        ) {
            Ok((mut store, entry)) => {
                store.data_mut().cache = cache;
                store.data_mut().committed_usage = committed_usage;
                self.store = store;
                self.entry = entry;
                Ok(())
            }
            Err(e) => {
                log.push(
                    LogLevel::Error,
                    LogSource::Host,
                    format!("restart failed: {e}"),
                );
                Err(e)
            }
        }
    }

    /// Current size of the guest's linear memory, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.entry.memory.data_size(&self.store)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.store.data_mut().flush_output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_never_cut_a_deadline_short() {
        assert_eq!(ticks_for(1), 2);
        assert_eq!(ticks_for(10), 2);
        assert_eq!(ticks_for(11), 3);
        assert_eq!(ticks_for(100), 11);
    }

    #[test]
    fn decimal_digits_are_counted() {
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
        assert_eq!(digits(u64::MAX), 20);
    }
}
