//! The ABI v1 host imports (module `outpost`, see `sdk/ABI.md`) and the record encoding the
//! host passes to `outpost_on_record`.
//!
//! Every guest pointer/length pair is checked against the guest's memory before use; a pair
//! outside it gets `INVALID`, never a panic or a trap. A refused call (DENIED, TOO_LARGE,
//! INVALID) changes nothing and is remembered, so that if the guest then fails the record, the
//! dead letter's error names the refusal. Emits and state writes of a call are buffered and only
//! kept when the call returns 0 (see `Instance::call`).

use wasmtime::{Caller, Linker};

use super::guest_log::{truncate_utf8, LogLevel, LogSource};
use super::store::{guest_slice, guest_slice_mut, Emitted, Phase, StoreData};

/// The import module name.
pub(crate) const MODULE: &str = "outpost";

// The ABI's numbers (version, status codes, per-call limits, the reserved header prefix, the
// "no key" length) are the SDK's own constants, so host and guests cannot drift apart.
pub use outpost_sdk::abi::{limits, status, ABI_VERSION, NO_KEY, RESERVED_HEADER_PREFIX};

/// Encodes one input record for `outpost_on_record` into `out` (cleared first):
/// `u32 topic_len, topic, u64 offset, u64 timestamp_ms, u32 key_len (0xFFFFFFFF = none), key,
/// u32 value_len, value, u32 header_count, (u32 name_len, name, u32 value_len, value)*`, all
/// little-endian.
pub(crate) fn encode_record(out: &mut Vec<u8>, topic: &str, record: &crate::log::Record) {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.clear();
    put(out, topic.as_bytes());
    out.extend_from_slice(&record.offset.to_le_bytes());
    out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => put(out, key),
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    put(out, &record.value);
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        put(out, name.as_bytes());
        put(out, value);
    }
}

/// Record headers: (name, value) pairs in order.
type Headers = Vec<(String, Vec<u8>)>;

/// Decodes an `emit` header block: `u32 count`, then `(u32 len, name, u32 len, value)` per
/// header, nothing after. Reserved (`outpost-`) names are dropped. Returns the kept headers
/// and their size as the log counts it (names + values).
fn decode_headers(block: &[u8]) -> Result<(Headers, usize), &'static str> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        take(b, 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    let mut b = block;
    if b.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let count = len(&mut b).ok_or("the header block is shorter than its count")?;
    if count > b.len() / 8 {
        return Err("the header count does not fit the header block");
    }
    let mut headers = Vec::with_capacity(count);
    let mut size = 0;
    for _ in 0..count {
        let n = len(&mut b).ok_or("a header name length is cut off")?;
        let name = take(&mut b, n).ok_or("a header name is cut off")?;
        let name = std::str::from_utf8(name).map_err(|_| "a header name is not UTF-8")?;
        let n = len(&mut b).ok_or("a header value length is cut off")?;
        let value = take(&mut b, n).ok_or("a header value is cut off")?;
        if !name.starts_with(RESERVED_HEADER_PREFIX) {
            size += name.len() + value.len();
            headers.push((name.to_string(), value.to_vec()));
        }
    }
    if !b.is_empty() {
        return Err("the header block has bytes after its last header");
    }
    Ok((headers, size))
}

/// Remembers a refusal for the failure message and returns its status.
fn refuse(data: &mut StoreData, code: i32, why: String) -> i32 {
    data.call.refused = Some(why);
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
            return refuse(
                data,
                status::DENIED,
                "emit during init: writes are not allowed during init".into(),
            );
        }
        let Some(topic) = guest_slice(mem, topic_ptr, topic_len) else {
            return refuse(
                data,
                status::INVALID,
                "emit: the topic pointer is outside memory".into(),
            );
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return refuse(
                data,
                status::INVALID,
                "emit: the topic name is not UTF-8".into(),
            );
        };
        if topic.is_empty() || topic.len() > limits::MAX_TOPIC_LEN {
            return refuse(
                data,
                status::INVALID,
                format!(
                    "emit: topic names must be 1 to {} bytes",
                    limits::MAX_TOPIC_LEN
                ),
            );
        }
        let Some(output) = data.grants.outputs.iter().position(|o| o == topic) else {
            let why = format!(
                "emit to {topic:?} denied: the topic is not a declared output (outputs: {:?})",
                data.grants.outputs
            );
            return refuse(data, status::DENIED, why);
        };
        let key = if key_len == -1 {
            None
        } else {
            match guest_slice(mem, key_ptr, key_len) {
                Some(k) => Some(k),
                None => {
                    return refuse(
                        data,
                        status::INVALID,
                        "emit: the key pointer is outside memory".into(),
                    )
                }
            }
        };
        let Some(value) = guest_slice(mem, value_ptr, value_len) else {
            return refuse(
                data,
                status::INVALID,
                "emit: the value pointer is outside memory".into(),
            );
        };
        let block = if headers_len == 0 {
            &[][..]
        } else {
            match guest_slice(mem, headers_ptr, headers_len) {
                Some(b) => b,
                None => {
                    return refuse(
                        data,
                        status::INVALID,
                        "emit: the headers pointer is outside memory".into(),
                    )
                }
            }
        };
        let (headers, header_bytes) = match decode_headers(block) {
            Ok(h) => h,
            Err(why) => return refuse(data, status::INVALID, format!("emit: {why}")),
        };
        let key_bytes = key.map_or(0, <[u8]>::len);
        let abi_size = key_bytes + value.len() + block.len();
        let log_size = key_bytes + value.len() + header_bytes + data.call.provenance_bytes;
        let limit = data.grants.max_record_bytes;
        if abi_size.max(log_size) > limit {
            let why = format!(
                "emit to {topic:?}: the record is {} bytes with the host's headers, over the limit of {limit} bytes",
                abi_size.max(log_size)
            );
            return refuse(data, status::TOO_LARGE, why);
        }
        if data.call.emits.len() >= limits::MAX_EMITS_PER_CALL
            || data.call.emit_bytes + abi_size > limits::MAX_EMIT_BYTES_PER_CALL
        {
            let why = format!(
                "emit to {topic:?}: one call may emit at most {} records and {} bytes",
                limits::MAX_EMITS_PER_CALL,
                limits::MAX_EMIT_BYTES_PER_CALL
            );
            return refuse(data, status::TOO_LARGE, why);
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
    op: &str,
    key_ptr: i32,
    key_len: i32,
) -> Result<&'m [u8], i32> {
    if !data.grants.state {
        return Err(refuse(
            data,
            status::DENIED,
            format!("{op} denied: the manifest does not grant state (`state = true`)"),
        ));
    }
    let Some(key) = guest_slice(mem, key_ptr, key_len) else {
        return Err(refuse(
            data,
            status::INVALID,
            format!("{op}: the key pointer is outside memory"),
        ));
    };
    if key.is_empty() {
        return Err(refuse(
            data,
            status::INVALID,
            format!("{op}: state keys must not be empty"),
        ));
    }
    if key.len() > data.grants.max_state_key_bytes {
        let why = format!(
            "{op}: the key is {} bytes, over the limit of {} bytes",
            key.len(),
            data.grants.max_state_key_bytes
        );
        return Err(refuse(data, status::TOO_LARGE, why));
    }
    Ok(key)
}

/// The current value of `key` if it is known without the state store: this call's writes,
/// then the batch's, then the cache of committed state. `Some(None)` = known to be absent.
fn known<'d>(data: &'d StoreData, key: &[u8]) -> Option<&'d Option<Vec<u8>>> {
    data.call
        .writes
        .get(key)
        .or_else(|| data.batch.get(key))
        .or_else(|| data.cache.get(key))
}

/// Reads `key` from the state store (committed state) and remembers it in the cache.
fn load(data: &mut StoreData, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match &data.state {
        Some(store) => {
            let value = store
                .get(&data.plugin, key)
                .map_err(|e| format!("state_get: reading the state store failed: {e}"))?;
            data.cache.insert(key.to_vec(), value.clone());
            Ok(value)
        }
        None => Ok(None),
    }
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
        return refuse(
            data,
            status::TOO_LARGE,
            "state_get: the value is over 2 GiB".into(),
        );
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
        None => refuse(
            data,
            status::INVALID,
            "state_get: the output buffer is outside memory".into(),
        ),
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
        None => match load(data, key) {
            Ok(Some(v)) => v,
            Ok(None) => return status::NOT_FOUND,
            Err(why) => {
                data.call.internal = Some(why.clone());
                return refuse(data, status::INTERNAL, why);
            }
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
            return refuse(
                data,
                status::DENIED,
                "state_put during init: writes are not allowed during init".into(),
            );
        }
        let key = match check_state_key(data, mem, "state_put", key_ptr, key_len) {
            Ok(k) => k,
            Err(code) => return code,
        };
        let Some(value) = guest_slice(mem, value_ptr, value_len) else {
            return refuse(
                data,
                status::INVALID,
                "state_put: the value pointer is outside memory".into(),
            );
        };
        if value.len() > data.grants.max_state_value_bytes {
            let why = format!(
                "state_put: the value is {} bytes, over the limit of {} bytes",
                value.len(),
                data.grants.max_state_value_bytes
            );
            return refuse(data, status::TOO_LARGE, why);
        }
        let bytes = key.len() + value.len();
        if data.call.state_bytes + bytes > limits::MAX_STATE_BYTES_PER_CALL {
            let why = format!(
                "state_put: one call may write at most {} bytes of state",
                limits::MAX_STATE_BYTES_PER_CALL
            );
            return refuse(data, status::TOO_LARGE, why);
        }
        data.call.state_bytes += bytes;
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
                status::DENIED,
                "state_delete during init: writes are not allowed during init".into(),
            );
        }
        let key = match check_state_key(data, mem, "state_delete", key_ptr, key_len) {
            Ok(k) => k,
            Err(code) => return code,
        };
        if data.call.state_bytes + key.len() > limits::MAX_STATE_BYTES_PER_CALL {
            let why = format!(
                "state_delete: one call may write at most {} bytes of state",
                limits::MAX_STATE_BYTES_PER_CALL
            );
            return refuse(data, status::TOO_LARGE, why);
        }
        data.call.state_bytes += key.len();
        data.call.last_get = None;
        data.call.writes.insert(key.to_vec(), None);
        0
    })
}

/// A guest message as text: lossy UTF-8, cut to [`limits::MAX_MESSAGE_LEN`].
fn message(mem: &[u8], ptr: i32, len: i32) -> Option<String> {
    let len = (len as u32 as usize).min(limits::MAX_MESSAGE_LEN + 4);
    let bytes = guest_slice(mem, ptr, len as i32)?;
    let mut text = String::from_utf8_lossy(bytes).into_owned();
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
                    status::INVALID,
                    "log: the message pointer is outside memory".into(),
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
                    status::INVALID,
                    "set_error: the message pointer is outside memory".into(),
                );
            }
        }
        0
    });
}

fn now_ms() -> i64 {
    super::guest_log::now_ms() as i64
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
