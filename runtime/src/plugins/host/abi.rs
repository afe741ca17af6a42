//! The ABI v1 host imports (module `outpost`, see `sdk/ABI.md`) and the record encoding the
//! host passes to `outpost_on_record`.
//!
//! Every guest pointer/length pair is checked against the guest's memory before use; a pair
//! outside it gets `INVALID`, never a panic or a trap. A refused call (DENIED, TOO_LARGE,
//! INVALID, QUOTA) changes nothing and is remembered, so that if the guest then fails the
//! record, the dead letter's error names the refusal. Emits and state writes of a call are buffered and only
//! kept when the call returns 0 (see `Instance::call`). Puts and deletes keep the plugin's state
//! usage (see `store.rs`); a put that would take it past the quota gets `QUOTA`.

use outpost_sdk::abi::{Refusal, StateQuota, StateUsage};
use wasmtime::{Caller, Linker};

use super::guest_log::{truncate_utf8, LogLevel, LogSource};
use super::store::{guest_slice, guest_slice_mut, Emitted, Phase, StoreData};
use crate::state::StateError;

/// The import module name.
pub(crate) const MODULE: &str = "outpost";

// The ABI's numbers (version, status codes, per-call limits, the reserved header prefix, the
// "no key" length), its byte encodings and its refusal rules are the SDK's own (`sdk/src/abi.rs`),
// so host and guests cannot drift apart.
pub use outpost_sdk::abi::{limits, status, ABI_VERSION, NO_KEY, RESERVED_HEADER_PREFIX};

/// Why the host refused an `outpost` import: the call returns [`AbiError::status`] and changes
/// nothing, and if the guest then fails the record, the dead letter's error names the refusal.
#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    /// An emit or state write during init.
    #[error("{call} during init: writes are not allowed during init")]
    WriteDuringInit { call: &'static str },
    /// A pointer/length pair outside the guest's memory.
    #[error("{call}: the {what} pointer is outside memory")]
    OutsideMemory {
        call: &'static str,
        what: &'static str,
    },
    /// `state_get`'s output buffer is outside the guest's memory.
    #[error("state_get: the output buffer is outside memory")]
    OutputBufferOutsideMemory,
    /// The topic of an emit is not UTF-8.
    #[error("emit: the topic name is not UTF-8")]
    TopicNotUtf8,
    /// The topic of an emit is empty or too long.
    #[error("emit: topic names must be 1 to {} bytes", limits::MAX_TOPIC_LEN)]
    TopicLength,
    /// An emit to a topic the manifest does not declare.
    #[error("emit to {topic:?} denied: the topic is not a declared output (outputs: {outputs:?})")]
    NotAnOutput { topic: String, outputs: Vec<String> },
    /// A malformed header block.
    #[error("emit: {0}")]
    Headers(#[source] outpost_sdk::Error),
    /// An emitted record over `max_record_bytes`.
    #[error("emit to {topic:?}: the record is {size} bytes with the host's headers, over the limit of {limit} bytes")]
    RecordTooLarge {
        topic: String,
        size: usize,
        limit: usize,
    },
    /// Over the per-call emit budget.
    #[error(
        "emit to {topic:?}: one call may emit at most {} records and {} bytes",
        limits::MAX_EMITS_PER_CALL,
        limits::MAX_EMIT_BYTES_PER_CALL
    )]
    EmitBudget { topic: String },
    /// Over the plugin's own per-input output quota (`limits.output_records_per_input` /
    /// `limits.output_bytes_per_input`).
    #[error("emit to {topic:?}: over the plugin's output quota of {records} records and {bytes} bytes per input record (`limits.output_records_per_input`, `limits.output_bytes_per_input`)")]
    OutputQuota {
        topic: String,
        records: usize,
        bytes: usize,
    },
    /// State calls without `state = true`.
    #[error("{call} denied: the manifest does not grant state (`state = true`)")]
    StateNotGranted { call: &'static str },
    /// An empty state key.
    #[error("{call}: state keys must not be empty")]
    EmptyStateKey { call: &'static str },
    /// A state key over `max_state_key_bytes`.
    #[error("{call}: the key is {len} bytes, over the limit of {limit} bytes")]
    StateKeyTooLarge {
        call: &'static str,
        len: usize,
        limit: usize,
    },
    /// A state value over `max_state_value_bytes`.
    #[error("state_put: the value is {len} bytes, over the limit of {limit} bytes")]
    StateValueTooLarge { len: usize, limit: usize },
    /// A stored value too large to hand to a wasm32 guest.
    #[error("state_get: the value is over 2 GiB")]
    ValueOver2GiB,
    /// Over the per-call state budget.
    #[error(
        "{call}: one call may write at most {} bytes of state",
        limits::MAX_STATE_BYTES_PER_CALL
    )]
    StateBudget { call: &'static str },
    /// A put that would take the plugin's state past its quota.
    #[error(
        "state_put: the plugin's state quota of {} bytes and {} keys would be exceeded: with \
         this put its state would hold {} bytes in {} keys (delete keys to make room; \
         `limits.state_mib` and `limits.state_keys` in plugin.toml, capped by the box's \
         `plugins.max_state_mib` and `plugins.max_state_keys`)",
        quota.max_bytes,
        quota.max_keys,
        usage.bytes,
        usage.keys
    )]
    StateQuota {
        usage: StateUsage,
        quota: StateQuota,
    },
    /// Reading committed state failed (INTERNAL: the call fails whatever the guest returns).
    #[error("{call}: reading the state store failed: {source}")]
    StateStore {
        call: &'static str,
        #[source]
        source: StateError,
    },
}

impl AbiError {
    /// The status the import returns.
    pub fn status(&self) -> i32 {
        match self {
            AbiError::WriteDuringInit { .. }
            | AbiError::NotAnOutput { .. }
            | AbiError::StateNotGranted { .. } => status::DENIED,
            AbiError::OutsideMemory { .. }
            | AbiError::OutputBufferOutsideMemory
            | AbiError::TopicNotUtf8
            | AbiError::TopicLength
            | AbiError::Headers(_)
            | AbiError::EmptyStateKey { .. } => status::INVALID,
            AbiError::RecordTooLarge { .. }
            | AbiError::EmitBudget { .. }
            | AbiError::OutputQuota { .. }
            | AbiError::StateKeyTooLarge { .. }
            | AbiError::StateValueTooLarge { .. }
            | AbiError::ValueOver2GiB
            | AbiError::StateBudget { .. } => status::TOO_LARGE,
            AbiError::StateQuota { .. } => status::QUOTA,
            AbiError::StateStore { .. } => status::INTERNAL,
        }
    }

    /// The host's wording of a refusal by the ABI's shared rules (`outpost_sdk::abi`).
    fn from_rule(call: &'static str, topic: &str, refusal: Refusal) -> AbiError {
        match refusal {
            Refusal::WriteDuringInit => AbiError::WriteDuringInit { call },
            Refusal::TopicLength { .. } => AbiError::TopicLength,
            Refusal::StateNotGranted => AbiError::StateNotGranted { call },
            Refusal::EmptyStateKey => AbiError::EmptyStateKey { call },
            Refusal::StateKeyTooLarge { len, limit } => {
                AbiError::StateKeyTooLarge { call, len, limit }
            }
            Refusal::StateValueTooLarge { len, limit } => {
                AbiError::StateValueTooLarge { len, limit }
            }
            Refusal::RecordTooLarge { len, limit } => AbiError::RecordTooLarge {
                topic: topic.to_string(),
                size: len,
                limit,
            },
            Refusal::EmitBudget => AbiError::EmitBudget {
                topic: topic.to_string(),
            },
            Refusal::StateQuota { usage, quota } => AbiError::StateQuota { usage, quota },
            // `Refusal` is non-exhaustive; today the only one left is the state budget.
            _ => AbiError::StateBudget { call },
        }
    }
}

/// Encodes one input record for `outpost_on_record` into `out` (cleared first), in the SDK's
/// v1 record encoding (`outpost_sdk::abi::encode_record`).
pub(crate) fn encode_record(out: &mut Vec<u8>, topic: &str, record: &crate::log::Record) {
    out.clear();
    outpost_sdk::abi::encode_record_fields(
        out,
        topic,
        record.offset,
        record.timestamp_ms,
        record.key.as_deref(),
        &record.value,
        record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice())),
    );
}

/// Record headers: (name, value) pairs in order.
type Headers = Vec<(String, Vec<u8>)>;

/// Decodes an `emit` header block with the SDK's decoder (`u32 count`, then
/// `(u32 len, name, u32 len, value)` per header, nothing after). Reserved (`outpost-`) names
/// are dropped. Returns the kept headers and their size as the log counts it (names + values).
fn decode_headers(block: &[u8]) -> Result<(Headers, usize), AbiError> {
    let decoded = outpost_sdk::abi::decode_headers(block).map_err(AbiError::Headers)?;
    let mut headers = Vec::with_capacity(decoded.len());
    let mut size = 0;
    for h in decoded {
        if !outpost_sdk::abi::is_reserved_header(h.name) {
            size += h.name.len() + h.value.len();
            headers.push((h.name.to_string(), h.value.to_vec()));
        }
    }
    Ok((headers, size))
}

/// Remembers a refusal for the failure message and returns its status.
fn refuse(data: &mut StoreData, error: AbiError) -> i32 {
    let code = error.status();
    data.call.refused = Some(error);
    code
}

/// Runs `f` with the guest memory and the store data, or returns INVALID without a memory.
fn with_memory(
    caller: &mut Caller<'_, StoreData>,
    f: impl FnOnce(&mut [u8], &mut StoreData) -> i32,
) -> i32 {
    match caller.data().memory {
        Some(memory) => {
            let (mem, data) = memory.data_and_store_mut(caller);
            f(mem, data)
        }
        None => status::INVALID,
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    mut caller: Caller<'_, StoreData>,
    topic_ptr: i32,
    topic_len: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
    headers_ptr: i32,
    headers_len: i32,
) -> i32 {
    with_memory(&mut caller, |mem, data| {
        if data.phase == Phase::Init {
            return refuse(data, AbiError::WriteDuringInit { call: "emit" });
        }
        let outside = |what| AbiError::OutsideMemory { call: "emit", what };
        let Some(topic) = guest_slice(mem, topic_ptr, topic_len) else {
            return refuse(data, outside("topic"));
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return refuse(data, AbiError::TopicNotUtf8);
        };
        if let Err(rule) = outpost_sdk::abi::check_topic(topic) {
            return refuse(data, AbiError::from_rule("emit", topic, rule));
        }
        let Some(output) = data.grants.outputs.iter().position(|o| o == topic) else {
            let error = AbiError::NotAnOutput {
                topic: topic.to_string(),
                outputs: data.grants.outputs.clone(),
            };
            return refuse(data, error);
        };
        let key = if key_len == -1 {
            None
        } else {
            match guest_slice(mem, key_ptr, key_len) {
                Some(k) => Some(k),
                None => return refuse(data, outside("key")),
            }
        };
        let Some(value) = guest_slice(mem, value_ptr, value_len) else {
            return refuse(data, outside("value"));
        };
        let block = if headers_len == 0 {
            &[][..]
        } else {
            match guest_slice(mem, headers_ptr, headers_len) {
                Some(b) => b,
                None => return refuse(data, outside("headers")),
            }
        };
        let (headers, header_bytes) = match decode_headers(block) {
            Ok(h) => h,
            Err(error) => return refuse(data, error),
        };
        let abi_size = outpost_sdk::abi::emit_record_len(key, value, block.len());
        let log_size =
            key.map_or(0, <[u8]>::len) + value.len() + header_bytes + data.call.provenance_bytes;
        let limit = data.grants.max_record_bytes;
        if abi_size.max(log_size) > limit {
            let error = AbiError::RecordTooLarge {
                topic: topic.to_string(),
                size: abi_size.max(log_size),
                limit,
            };
            return refuse(data, error);
        }
        let grants = &data.grants;
        if data.call.emits.len() >= grants.output_records_per_input
            || data.call.emit_bytes + abi_size > grants.output_bytes_per_input
        {
            let error = AbiError::OutputQuota {
                topic: topic.to_string(),
                records: grants.output_records_per_input,
                bytes: grants.output_bytes_per_input,
            };
            return refuse(data, error);
        }
        if let Err(rule) = data.call.budget.emit(abi_size) {
            return refuse(data, AbiError::from_rule("emit", topic, rule));
        }
        data.call.emit_bytes += abi_size;
        data.call.emits.push(Emitted {
            output,
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers,
        });
        0
    })
}

/// Checks that state is granted and the key is valid; `Err` carries the status to return.
fn check_state_key<'m>(
    data: &mut StoreData,
    mem: &'m [u8],
    call: &'static str,
    key_ptr: i32,
    key_len: i32,
) -> Result<&'m [u8], i32> {
    if !data.grants.state {
        return Err(refuse(data, AbiError::StateNotGranted { call }));
    }
    let Some(key) = guest_slice(mem, key_ptr, key_len) else {
        return Err(refuse(data, AbiError::OutsideMemory { call, what: "key" }));
    };
    if let Err(rule) =
        outpost_sdk::abi::check_state_key(data.grants.state, key, data.grants.max_state_key_bytes)
    {
        return Err(refuse(data, AbiError::from_rule(call, "", rule)));
    }
    Ok(key)
}

/// The current value of `key` if it is known without the state store: this call's writes,
/// then the batch's, then the cache of committed state. `Some(None)` = known to be absent.
fn known<'d>(data: &'d StoreData, key: &[u8]) -> Option<&'d Option<Vec<u8>>> {
    data.call
        .writes
        .get(key)
        .or_else(|| data.batch.writes.get(key))
        .or_else(|| data.cache.get(key))
}

/// Reads `key` from the state store (committed state) and remembers it in the cache.
fn load(data: &mut StoreData, call: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, AbiError> {
    match &data.state {
        Some(store) => {
            let value = store
                .get(&data.plugin, key)
                .map_err(|source| AbiError::StateStore { call, source })?;
            data.cache.insert(key.to_vec(), value.clone());
            Ok(value)
        }
        None => Ok(None),
    }
}

/// Fails the call as the host's fault (INTERNAL): the state store could not be read.
fn internal(data: &mut StoreData, error: AbiError) -> i32 {
    data.call.internal = Some(error.to_string());
    refuse(data, error)
}

/// The plugin's state usage before a write of `key` (this call's and the batch's writes
/// applied) and the usage of `key`'s entry in it, reading from the state store what is not in
/// memory.
fn usage_before_write(
    data: &mut StoreData,
    call: &'static str,
    key: &[u8],
) -> Result<(StateUsage, StateUsage), AbiError> {
    let value_len = match known(data, key) {
        Some(value) => value.as_ref().map(Vec::len),
        None => load(data, call, key)?.map(|v| v.len()),
    };
    let usage = data
        .pending_usage()
        .map_err(|source| AbiError::StateStore { call, source })?;
    Ok((usage, StateUsage::entry(key.len(), value_len)))
}

/// Writes `value` to the guest's buffer if it fits (returns its length), else keeps it for the
/// SDK's second call with a larger buffer (and returns its length too).
fn give(
    data: &mut StoreData,
    mem: &mut [u8],
    key: &[u8],
    value: &[u8],
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    let Ok(len) = i32::try_from(value.len()) else {
        return refuse(data, AbiError::ValueOver2GiB);
    };
    if value.len() > out_cap as u32 as usize {
        data.call.last_get = Some((key.to_vec(), value.to_vec()));
        return len;
    }
    match guest_slice_mut(mem, out_ptr, value.len()) {
        Some(dst) => {
            dst.copy_from_slice(value);
            len
        }
        None => refuse(data, AbiError::OutputBufferOutsideMemory),
    }
}

fn state_get(
    mut caller: Caller<'_, StoreData>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    with_memory(&mut caller, |mem, data| {
        // The key is copied out of guest memory (into a reused buffer) because the value is
        // written into guest memory.
        let mut key = std::mem::take(&mut data.key_buf);
        key.clear();
        match check_state_key(data, mem, "state_get", key_ptr, key_len) {
            Ok(k) => key.extend_from_slice(k),
            Err(code) => {
                data.key_buf = key;
                return code;
            }
        }
        let rc = state_get_key(data, mem, &key, out_ptr, out_cap);
        data.key_buf = key;
        rc
    })
}

fn state_get_key(
    data: &mut StoreData,
    mem: &mut [u8],
    key: &[u8],
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    if let Some((k, v)) = data.call.last_get.take() {
        if k == key {
            return give(data, mem, key, &v, out_ptr, out_cap);
        }
    }
    // The usual case: the value is in memory; copy it straight into the guest's buffer.
    let value = match known(data, key) {
        Some(None) => return status::NOT_FOUND,
        Some(Some(v)) => {
            let (ptr, cap) = (out_ptr, out_cap as u32 as usize);
            if v.len() <= cap && i32::try_from(v.len()).is_ok() {
                if let Some(dst) = guest_slice_mut(mem, ptr, v.len()) {
                    dst.copy_from_slice(v);
                    return v.len() as i32;
                }
            }
            // Too large for the buffer, or a bad buffer: the slow path says which.
            v.clone()
        }
        None => match load(data, "state_get", key) {
            Ok(Some(v)) => v,
            Ok(None) => return status::NOT_FOUND,
            Err(error) => return internal(data, error),
        },
    };
    give(data, mem, key, &value, out_ptr, out_cap)
}

fn state_put(
    mut caller: Caller<'_, StoreData>,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> i32 {
    with_memory(&mut caller, |mem, data| {
        if data.phase == Phase::Init {
            return refuse(data, AbiError::WriteDuringInit { call: "state_put" });
        }
        let key = match check_state_key(data, mem, "state_put", key_ptr, key_len) {
            Ok(k) => k,
            Err(code) => return code,
        };
        let Some(value) = guest_slice(mem, value_ptr, value_len) else {
            let error = AbiError::OutsideMemory {
                call: "state_put",
                what: "value",
            };
            return refuse(data, error);
        };
        if let Err(rule) =
            outpost_sdk::abi::check_state_value(value, data.grants.max_state_value_bytes)
        {
            return refuse(data, AbiError::from_rule("state_put", "", rule));
        }
        let (before, old) = match usage_before_write(data, "state_put", key) {
            Ok(found) => found,
            Err(error) => return internal(data, error),
        };
        let after = before.replace(old, StateUsage::entry(key.len(), Some(value.len())));
        let rules = data
            .grants
            .state_quota
            .check(before, after)
            .and_then(|()| data.call.budget.state_write(key.len() + value.len()));
        if let Err(rule) = rules {
            return refuse(data, AbiError::from_rule("state_put", "", rule));
        }
        data.call.usage = Some(after);
        data.call.last_get = None;
        match data.call.writes.get_mut(key) {
            Some(slot) => match slot {
                Some(existing) => {
                    existing.clear();
                    existing.extend_from_slice(value);
                }
                None => *slot = Some(value.to_vec()),
            },
            None => {
                data.call.writes.insert(key.to_vec(), Some(value.to_vec()));
            }
        }
        0
    })
}

fn state_delete(mut caller: Caller<'_, StoreData>, key_ptr: i32, key_len: i32) -> i32 {
    with_memory(&mut caller, |mem, data| {
        if data.phase == Phase::Init {
            return refuse(
                data,
                AbiError::WriteDuringInit {
                    call: "state_delete",
                },
            );
        }
        let key = match check_state_key(data, mem, "state_delete", key_ptr, key_len) {
            Ok(k) => k,
            Err(code) => return code,
        };
        let (before, old) = match usage_before_write(data, "state_delete", key) {
            Ok(found) => found,
            Err(error) => return internal(data, error),
        };
        if let Err(rule) = data.call.budget.state_write(key.len()) {
            return refuse(data, AbiError::from_rule("state_delete", "", rule));
        }
        data.call.usage = Some(before.replace(old, StateUsage::default()));
        data.call.last_get = None;
        data.call.writes.insert(key.to_vec(), None);
        0
    })
}

/// A guest message as text: lossy UTF-8, cut to [`limits::MAX_MESSAGE_LEN`].
fn message(mem: &[u8], ptr: i32, len: i32) -> Option<String> {
    let len = (len as u32 as usize).min(limits::MAX_MESSAGE_LEN + 4);
    let bytes = guest_slice(mem, ptr, len as i32)?;
    let lossy = String::from_utf8_lossy(bytes);
    let mut text = super::guest_log::escape_control(&lossy).into_owned();
    truncate_utf8(&mut text, limits::MAX_MESSAGE_LEN);
    Some(text)
}

fn log(mut caller: Caller<'_, StoreData>, level: i32, ptr: i32, len: i32) {
    with_memory(&mut caller, |mem, data| {
        match message(mem, ptr, len) {
            Some(text) => data
                .log
                .push(LogLevel::from_abi(level), LogSource::Plugin, text),
            None => {
                refuse(
                    data,
                    AbiError::OutsideMemory {
                        call: "log",
                        what: "message",
                    },
                );
            }
        }
        0
    });
}

fn set_error(mut caller: Caller<'_, StoreData>, ptr: i32, len: i32) {
    with_memory(&mut caller, |mem, data| {
        match message(mem, ptr, len) {
            Some(text) => data.call.error = Some(text),
            None => {
                refuse(
                    data,
                    AbiError::OutsideMemory {
                        call: "set_error",
                        what: "message",
                    },
                );
            }
        }
        0
    });
}

fn now_ms() -> i64 {
    crate::kernel::now_ms() as i64
}

/// Adds the `outpost` imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "emit", emit)?;
    linker.func_wrap(MODULE, "state_get", state_get)?;
    linker.func_wrap(MODULE, "state_put", state_put)?;
    linker.func_wrap(MODULE, "state_delete", state_delete)?;
    linker.func_wrap(MODULE, "log", log)?;
    linker.func_wrap(MODULE, "now_ms", now_ms)?;
    linker.func_wrap(MODULE, "set_error", set_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(headers: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (headers.len() as u32).to_le_bytes().to_vec();
        for (n, v) in headers {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    #[test]
    fn header_block_drops_reserved_names_and_counts_kept_bytes() {
        let b = block(&[("trace", b"abc"), ("outpost-plugin", b"forged")]);
        let (headers, size) = decode_headers(&b).unwrap();
        assert_eq!(headers, vec![("trace".to_string(), b"abc".to_vec())]);
        assert_eq!(size, 8);
        assert_eq!(decode_headers(&[]).unwrap().0, vec![]);
    }

    #[test]
    fn malformed_header_blocks_are_rejected_not_panicked_on() {
        let good = block(&[("a", b"1"), ("b", b"22")]);
        for cut in 1..good.len() {
            assert!(decode_headers(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_headers(&trailing).is_err());
        let mut absurd = good.clone();
        absurd[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_headers(&absurd).is_err());
        let bad_utf8 = block(&[("\u{1}", b"")]);
        let mut bad = bad_utf8.clone();
        bad[8] = 0xff;
        assert!(decode_headers(&bad).is_err());
    }

    #[test]
    fn record_encoding_matches_the_abi_example() {
        let record = crate::log::Record {
            offset: 7,
            timestamp_ms: 1000,
            key: Some(b"k".to_vec()),
            value: b"hi".to_vec(),
            headers: vec![("h".to_string(), b"v".to_vec())],
        };
        let mut out = Vec::new();
        encode_record(&mut out, "t", &record);
        let expected: Vec<u8> = vec![
            1, 0, 0, 0, b't', 7, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
            b'k', 2, 0, 0, 0, b'h', b'i', 1, 0, 0, 0, 1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v',
        ];
        assert_eq!(out, expected);
        let keyless = crate::log::Record {
            key: None,
            headers: vec![],
            ..record
        };
        encode_record(&mut out, "t", &keyless);
        assert_eq!(&out[21..25], &[0xff; 4]);
    }
}
