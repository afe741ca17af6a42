//! What one plugin instance's wasmtime `Store` carries: its grants and limits, the resource
//! limiter, the buffers of the call in progress (emits, state writes, error message) and of the
//! batch in progress (state writes of successful calls, not yet committed), a cache of committed
//! state, the plugin's state usage against its quota, and its stdout/stderr line buffers.
//!
//! # State usage
//! The quota (`sdk/ABI.md`, section 10) is checked against the committed usage (read from the
//! state store, which keeps it per namespace) with the batch's and the call's writes applied:
//! [`Batch::usage`] and [`CallState::usage`] are those totals, kept as each put and delete
//! replaces an entry of known size (a put of a key whose value is not in memory reads it from
//! the store first, as `state_get` would).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use outpost_sdk::abi::{StateQuota, StateUsage};
use wasmtime::{Memory, ResourceLimiter};

use super::guest_log::{GuestLog, LineBuffer, LogSource};
use crate::state::StateStore;

/// Most table elements a plugin's table may hold.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 200_000;
/// Bytes (keys + values + a per-entry estimate) the committed-state cache may hold before it
/// starts over.
pub(crate) const STATE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Per-entry overhead counted against [`STATE_CACHE_BYTES`].
const STATE_CACHE_ENTRY_OVERHEAD: usize = 64;

/// What the manifest grants, resolved once per instance.
#[derive(Debug)]
pub(crate) struct Grants {
    /// Declared output topics, in manifest order ([`Emitted::output`] indexes this).
    pub outputs: Vec<String>,
    /// Whether the plugin may use key-value state.
    pub state: bool,
    /// Largest emitted record, counted as the log counts it, provenance headers included, and
    /// as the ABI counts it (key + value + header block).
    pub max_record_bytes: usize,
    pub max_state_key_bytes: usize,
    pub max_state_value_bytes: usize,
    /// Most records and bytes (as the ABI counts them) one call may emit: the manifest's
    /// `output_records_per_input` / `output_bytes_per_input`, capped by the box.
    pub output_records_per_input: usize,
    pub output_bytes_per_input: usize,
    /// The plugin's state quota (its manifest's, capped by the box).
    pub state_quota: StateQuota,
}

/// One record the guest emitted during the current call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// Index into the plugin's declared outputs.
    pub output: usize,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The guest's headers, without the reserved `outpost-` ones.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Whether writes are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `_initialize`, `outpost_abi_version`, `outpost_init`: emits and state writes are denied.
    Init,
    /// `outpost_on_record`.
    Record,
}

/// The buffers of the call in progress.
#[derive(Debug, Default)]
pub(crate) struct CallState {
    pub emits: Vec<Emitted>,
    /// This call's emits and state writes against the ABI's per-call limits.
    pub budget: outpost_sdk::abi::CallBudget,
    /// Bytes this call emitted, as the ABI counts them (for the per-input output quota).
    pub emit_bytes: usize,
    /// State writes of this call: key → new value (`None` = deleted).
    pub writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The guest's `set_error` message.
    pub error: Option<String>,
    /// The last host call the host refused (DENIED / TOO_LARGE / INVALID), for the failure
    /// message if the guest then fails the record.
    pub refused: Option<super::abi::AbiError>,
    /// A host failure (INTERNAL): the call fails whatever the guest returns.
    pub internal: Option<String>,
    /// Bytes the host's provenance headers add to each record emitted by this call.
    pub provenance_bytes: usize,
    /// The CPU deadline of this call, in ms, and the ticker's tick count when it started
    /// (WASI `poll_oneoff` sleeps at most until the deadline).
    pub deadline_ms: u64,
    pub start_tick: u64,
    /// The last value `state_get` found but could not write because the guest's buffer was
    /// too small: the SDK asks again at once with a larger buffer.
    pub last_get: Option<(Vec<u8>, Vec<u8>)>,
    /// The plugin's state usage with this call's writes applied; `None` while the call wrote
    /// nothing (then it is the batch's).
    pub usage: Option<StateUsage>,
}

impl CallState {
    /// Forgets everything of the previous call.
    pub(crate) fn reset(&mut self, provenance_bytes: usize) {
        self.emits.clear();
        self.budget = outpost_sdk::abi::CallBudget::new();
        self.emit_bytes = 0;
        if !self.writes.is_empty() {
            self.writes.clear();
        }
        self.error = None;
        self.refused = None;
        self.internal = None;
        self.provenance_bytes = provenance_bytes;
        self.last_get = None;
        self.usage = None;
    }
}

/// The state writes of the batch's successful calls, not yet committed.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Key → new value (`None` = deleted); reads see them.
    pub writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Key plus value bytes of `writes` (a delete counts its key): what the commit will write.
    pub bytes: usize,
    /// The plugin's state usage with the batch's writes applied; `None` while the batch wrote
    /// nothing (then it is the committed usage).
    pub usage: Option<StateUsage>,
}

impl Batch {
    /// Adds the writes of a successful call (later writes of a key replace earlier ones).
    pub(crate) fn absorb(&mut self, call: &mut CallState) {
        for (key, value) in call.writes.drain() {
            let key_len = key.len();
            self.bytes += key_len + value.as_ref().map_or(0, Vec::len);
            if let Some(old) = self.writes.insert(key, value) {
                self.bytes = self
                    .bytes
                    .saturating_sub(key_len + old.as_ref().map_or(0, Vec::len));
            }
        }
        if let Some(usage) = call.usage.take() {
            self.usage = Some(usage);
        }
    }

    /// Forgets every write (committed, or dropped after a host failure).
    pub(crate) fn clear(&mut self) {
        self.writes.clear();
        self.bytes = 0;
        self.usage = None;
    }
}

/// Values of the plugin's committed state, as read from the store or committed by this
/// plugin's runner (`None` = the key does not exist). Only the plugin's own runner writes its
/// namespace, so an entry stays true until the runner commits a change, which then updates it.
/// When full it starts over (a cheap, simple bound; the store is the source of truth).
#[derive(Debug, Default)]
pub(crate) struct StateCache {
    map: HashMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl StateCache {
    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.map.get(key)
    }

    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let key_len = key.len();
        let size = key_len + value.as_ref().map_or(0, Vec::len) + STATE_CACHE_ENTRY_OVERHEAD;
        if self.bytes + size > STATE_CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        if let Some(old) = self.map.insert(key, value) {
            let old_size = key_len + old.map_or(0, |v| v.len()) + STATE_CACHE_ENTRY_OVERHEAD;
            self.bytes = self.bytes.saturating_sub(old_size);
        }
    }
}

/// Enforces the memory and table caps and remembers when the memory cap was hit.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub memory_bytes: usize,
    /// Set when a `memory.grow` was refused; read (and cleared) after the call.
    pub memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // `memory.grow` returns -1, as the spec says; a guest may cope. One that aborts
            // is reported as out of memory.
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The data of one plugin instance's `Store`.
#[derive(Debug)]
pub(crate) struct StoreData {
    pub plugin: Arc<str>,
    pub grants: Arc<Grants>,
    pub limiter: Limiter,
    /// The guest's exported memory, set right after instantiation.
    pub memory: Option<Memory>,
    pub phase: Phase,
    pub call: CallState,
    /// State writes of this batch's successful calls, not yet committed; reads see them.
    pub batch: Batch,
    /// Committed state; `None` when the instance runs without a store (reads find nothing).
    pub state: Option<StateStore>,
    /// Cache of committed state in front of `state`.
    pub cache: StateCache,
    /// Usage of the committed state, as the state store counts it; `None` until it is read
    /// (at the first write, or when the runner asks), and again once the store may have
    /// changed under the instance (see `Instance::forget_committed`).
    pub committed_usage: Option<StateUsage>,
    pub log: Arc<GuestLog>,
    pub stdout: LineBuffer,
    pub stderr: LineBuffer,
    /// The host's epoch ticks (advanced every `EPOCH_TICK_MS`), a cheap coarse clock.
    pub ticks: Arc<AtomicU64>,
    /// Reused buffer for a state key copied out of guest memory.
    pub key_buf: Vec<u8>,
}

impl StoreData {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Arc<Grants>,
        memory_bytes: usize,
        log: Arc<GuestLog>,
        ticks: Arc<AtomicU64>,
    ) -> StoreData {
        StoreData {
            plugin,
            grants,
            limiter: Limiter {
                memory_bytes,
                memory_refused: false,
            },
            memory: None,
            phase: Phase::Init,
            call: CallState::default(),
            batch: Batch::default(),
            state: None,
            cache: StateCache::default(),
            committed_usage: None,
            log,
            stdout: LineBuffer::new(LogSource::Stdout),
            stderr: LineBuffer::new(LogSource::Stderr),
            ticks,
            key_buf: Vec::new(),
        }
    }

    /// Prepares the buffers for a new guest call with this deadline.
    pub(crate) fn begin_call(&mut self, provenance_bytes: usize, deadline_ms: u64) {
        self.call.reset(provenance_bytes);
        self.call.deadline_ms = deadline_ms;
        self.call.start_tick = self.ticks.load(Ordering::Relaxed);
    }

    /// Usage of the committed state, read from the state store when not known yet (no store:
    /// nothing).
    pub(crate) fn committed_usage(&mut self) -> Result<StateUsage, crate::state::StateError> {
        if let Some(usage) = self.committed_usage {
            return Ok(usage);
        }
        let usage = match &self.state {
            Some(store) => {
                let u = store.usage(&self.plugin)?;
                StateUsage {
                    bytes: u.bytes,
                    keys: u.keys,
                }
            }
            None => StateUsage::default(),
        };
        self.committed_usage = Some(usage);
        Ok(usage)
    }

    /// The plugin's state usage with the batch's and this call's writes applied.
    pub(crate) fn pending_usage(&mut self) -> Result<StateUsage, crate::state::StateError> {
        match self.call.usage.or(self.batch.usage) {
            Some(usage) => Ok(usage),
            None => self.committed_usage(),
        }
    }

    /// Sends partial stdout/stderr lines to the log.
    pub(crate) fn flush_output(&mut self) {
        self.stdout.flush(&self.log);
        self.stderr.flush(&self.log);
    }
}

/// The guest bytes at `ptr .. ptr + len` (both u32), or `None` when outside `mem`. With
/// `len == 0` the pointer is not looked at.
pub(crate) fn guest_slice(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    if len == 0 {
        return Some(&[]);
    }
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    mem.get(start..end)
}

/// The writable guest bytes at `ptr .. ptr + len`, or `None` when outside `mem`. With
/// `len == 0` the pointer is not looked at.
pub(crate) fn guest_slice_mut(mem: &mut [u8], ptr: i32, len: usize) -> Option<&mut [u8]> {
    if len == 0 {
        return Some(&mut []);
    }
    let start = ptr as u32 as usize;
    let end = start.checked_add(len)?;
    mem.get_mut(start..end)
}

/// Reads a little-endian u32 at `ptr`.
pub(crate) fn read_u32(mem: &[u8], ptr: i32) -> Option<u32> {
    let b = guest_slice(mem, ptr, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes `bytes` at `ptr`; false when outside `mem`.
pub(crate) fn write_bytes(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> bool {
    match guest_slice_mut(mem, ptr, bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_pointers_outside_memory_are_refused_without_overflow() {
        let mem = [0u8; 16];
        assert_eq!(guest_slice(&mem, 0, 16).map(<[u8]>::len), Some(16));
        assert!(guest_slice(&mem, 1, 16).is_none());
        assert!(guest_slice(&mem, -1, 1).is_none());
        assert!(guest_slice(&mem, 8, -1).is_none());
        assert_eq!(guest_slice(&mem, 16, 0).map(<[u8]>::len), Some(0));
        assert_eq!(
            guest_slice(&mem, -1, 0).map(<[u8]>::len),
            Some(0),
            "len 0: pointer unused"
        );
        assert!(read_u32(&mem, 13).is_none());
    }

    #[test]
    fn a_batch_counts_the_bytes_it_will_write_and_keeps_the_last_calls_usage() {
        let mut batch = Batch::default();
        let mut call = CallState::default();
        call.writes.insert(b"a".to_vec(), Some(vec![0; 100]));
        call.writes.insert(b"b".to_vec(), None);
        call.usage = Some(StateUsage {
            bytes: 101,
            keys: 1,
        });
        batch.absorb(&mut call);
        assert_eq!(batch.bytes, 101 + 1, "a delete counts its key");
        assert!(call.writes.is_empty() && call.usage.is_none());
        call.writes.insert(b"a".to_vec(), Some(vec![0; 10]));
        batch.absorb(&mut call);
        assert_eq!(batch.bytes, 11 + 1, "a replaced write counts once");
        assert_eq!(
            batch.usage,
            Some(StateUsage {
                bytes: 101,
                keys: 1
            }),
            "a call that did not count keeps the batch's usage"
        );
        batch.clear();
        assert_eq!((batch.bytes, batch.usage, batch.writes.len()), (0, None, 0));
    }

    #[test]
    fn state_cache_starts_over_when_full_and_counts_replacements_once() {
        let mut cache = StateCache::default();
        cache.insert(b"a".to_vec(), Some(vec![0; 100]));
        cache.insert(b"a".to_vec(), Some(vec![0; 10]));
        assert_eq!(cache.bytes, 1 + 10 + STATE_CACHE_ENTRY_OVERHEAD);
        cache.insert(b"b".to_vec(), None);
        assert_eq!(cache.get(b"b"), Some(&None));
        cache.insert(b"big".to_vec(), Some(vec![0; STATE_CACHE_BYTES - 100]));
        assert!(cache.get(b"a").is_none(), "the cache started over");
        assert!(cache.get(b"big").is_some());
    }
}
