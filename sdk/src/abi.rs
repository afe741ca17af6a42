//! The byte-level side of ABI v1 (see `ABI.md`): the version number, host status codes, the
//! limits a v1 host enforces, the record and header encodings in both directions, and the rules
//! by which a host refuses a call ([`Refusal`], [`CallBudget`], [`StateQuota`] over
//! [`StateUsage`]).
//!
//! This module is the one home of the ABI's bytes and rules: Outpost's wasm host encodes the
//! records it passes and decodes the header blocks it receives with these functions and decides
//! refusals with these checks, and the native test harness ([`crate::testing`]) applies the same
//! checks. Everything here is plain safe Rust that builds on every target. Decoding never panics: every length is checked
//! against the bytes that are actually there, and a bad input comes back as an [`Error`] of kind
//! [`ErrorKind::InvalidInput`].

use crate::error::{Error, ErrorKind};
use crate::record::{Header, Record};

/// The ABI version this SDK implements; `outpost_abi_version` returns it.
pub const ABI_VERSION: i32 = 1;

/// The key length that means "this record has no key" (`0xFFFF_FFFF`, `-1` as an `i32`).
pub const NO_KEY: u32 = u32::MAX;

/// Status codes returned by the host imports. Non-negative values mean success.
pub mod status {
    /// `state_get`: the key does not exist.
    pub const NOT_FOUND: i32 = -1;
    /// The manifest does not grant this (undeclared output topic, state not enabled, a write
    /// during `outpost_init`).
    pub const DENIED: i32 = -2;
    /// A key, value, record or per-call total is over the host's limits.
    pub const TOO_LARGE: i32 = -3;
    /// Malformed arguments: a pointer or length outside memory, bad UTF-8 in a topic or header
    /// name, a malformed header block, an empty state key.
    pub const INVALID: i32 = -4;
    /// The host failed; the current call will fail and the record is retried or dead-lettered.
    pub const INTERNAL: i32 = -5;
    /// `state_put`: the plugin's state quota (bytes or keys, see [`StateQuota`]) would be
    /// exceeded.
    pub const QUOTA: i32 = -6;
}

/// The limits a v1 host enforces by default (a box may be configured lower, never higher than
/// its documentation says). The test harness enforces the same numbers.
pub mod limits {
    /// Longest topic name, in bytes.
    pub const MAX_TOPIC_LEN: usize = 249;
    /// Longest state key, in bytes (state keys must also be non-empty).
    pub const MAX_STATE_KEY_LEN: usize = 1024;
    /// Largest state value, in bytes.
    pub const MAX_STATE_VALUE_LEN: usize = 1 << 20;
    /// Largest emitted record (key + value + encoded headers), in bytes.
    pub const MAX_EMIT_RECORD_LEN: usize = 1 << 20;
    /// Most records one call may emit.
    pub const MAX_EMITS_PER_CALL: usize = 1024;
    /// Most bytes one call may emit in total.
    pub const MAX_EMIT_BYTES_PER_CALL: usize = 8 << 20;
    /// Most bytes of state (keys + values) one call may write in total.
    pub const MAX_STATE_BYTES_PER_CALL: usize = 8 << 20;
    /// Longest log or error message kept; the host truncates longer ones.
    pub const MAX_MESSAGE_LEN: usize = 4096;
    /// State quota in bytes (keys + values) of a plugin whose manifest does not ask for one
    /// (`limits.state_mib`); a box may configure another default and caps what a manifest asks.
    pub const DEFAULT_STATE_QUOTA_BYTES: u64 = 64 << 20;
    /// State quota in keys of a plugin whose manifest does not ask for one
    /// (`limits.state_keys`); a box may configure another default and caps what a manifest asks.
    pub const DEFAULT_STATE_QUOTA_KEYS: u64 = 1_000_000;
}

/// Header names starting with this prefix belong to the host; it drops them from emitted
/// records and sets its own (`outpost-plugin`, `outpost-source-topic`, ...).
pub const RESERVED_HEADER_PREFIX: &str = "outpost-";

/// Size of the fixed part of an encoded record: topic length, offset, timestamp, key length,
/// value length and header count.
const FIXED_RECORD_LEN: usize = 4 + 8 + 8 + 4 + 4 + 4;

/// Appends `record` in the v1 record encoding to `out`.
pub fn encode_record(out: &mut Vec<u8>, record: &Record<'_>) {
    out.reserve(encoded_record_len(record));
    encode_record_fields(
        out,
        record.topic,
        record.offset,
        record.timestamp_ms,
        record.key,
        record.value,
        record.headers.iter().map(|h| (h.name, h.value)),
    );
}

/// Appends one record in the v1 record encoding to `out`, from its fields: what
/// [`encode_record`] does for a host whose records are not [`Record`]s (Outpost's host encodes
/// its log records with this).
pub fn encode_record_fields<'h, I>(
    out: &mut Vec<u8>,
    topic: &str,
    offset: u64,
    timestamp_ms: u64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: I,
) where
    I: ExactSizeIterator<Item = (&'h str, &'h [u8])>,
{
    put_bytes(out, topic.as_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    match key {
        Some(key) => put_bytes(out, key),
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    put_bytes(out, value);
    encode_headers_into(out, headers);
}

/// The number of bytes [`encode_record`] writes for `record`.
pub fn encoded_record_len(record: &Record<'_>) -> usize {
    FIXED_RECORD_LEN
        + record.topic.len()
        + record.key.map_or(0, <[u8]>::len)
        + record.value.len()
        + record
            .headers
            .iter()
            .map(|h| 8 + h.name.len() + h.value.len())
            .sum::<usize>()
}

/// Decodes one record in the v1 encoding. The record borrows `bytes`. Bytes after the last
/// header are ignored (reserved for compatible extensions).
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, Error> {
    let mut r = Reader::new(bytes, "record");
    let topic = r.str("topic")?;
    let offset = r.u64("offset")?;
    let timestamp_ms = r.u64("timestamp")?;
    let key_len = r.u32("key length")?;
    let key = if key_len == NO_KEY {
        None
    } else {
        Some(r.take(key_len as usize, "key")?)
    };
    let value = r.bytes("value")?;
    let headers = r.headers()?;
    Ok(Record {
        topic,
        offset,
        timestamp_ms,
        key,
        value,
        headers,
    })
}

/// Encodes a header block (`u32 count`, then name/value pairs) as `emit` takes it. An empty
/// list encodes to nothing at all, which `emit` reads as "no headers".
pub fn encode_headers(headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    if !headers.is_empty() {
        encode_headers_into(&mut out, headers.iter().copied());
    }
    out
}

/// Decodes a header block as passed to `emit` (an empty slice means no headers). Bytes after
/// the last header are an error here, since the guest states the block's exact length.
pub fn decode_headers(bytes: &[u8]) -> Result<Vec<Header<'_>>, Error> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::new(bytes, "header block");
    let headers = r.headers()?;
    if r.remaining() != 0 {
        return Err(invalid(format!(
            "header block has {} bytes after its last header",
            r.remaining()
        )));
    }
    Ok(headers)
}

/// Appends a header block for `headers` (always with its count, even when zero).
pub fn encode_headers_into<'h, I>(out: &mut Vec<u8>, headers: I)
where
    I: ExactSizeIterator<Item = (&'h str, &'h [u8])>,
{
    put_len(out, headers.len());
    for (name, value) in headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths above u32::MAX cannot reach the ABI: wasm32 memory is at most 4 GiB and the host
    // limits are far below that. Saturating keeps the encoder total on 64-bit hosts.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

fn invalid(message: String) -> Error {
    Error::with_kind(ErrorKind::InvalidInput, message)
}

/// A cursor over encoded bytes; every read checks the remaining length first.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// What the bytes are (`record`, `header block`), for error messages.
    whole: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], whole: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            whole,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], Error> {
        if len > self.remaining() {
            return Err(invalid(format!(
                "{} truncated: {what} needs {len} bytes at byte {} but only {} remain",
                self.whole,
                self.pos,
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], Error> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn str(&mut self, what: &str) -> Result<&'a str, Error> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|e| invalid(format!("{what} is not UTF-8: {e}")))
    }

    fn headers(&mut self) -> Result<Vec<Header<'a>>, Error> {
        let count = self.u32("header count")? as usize;
        // Each header takes at least 8 bytes, so a count larger than that bound is a lie and must
        // not size an allocation.
        if count > self.remaining() / 8 {
            return Err(invalid(format!(
                "header count {count} does not fit in the {} remaining bytes",
                self.remaining()
            )));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.str("header name")?;
            let value = self.bytes("header value")?;
            headers.push(Header { name, value });
        }
        Ok(headers)
    }
}

/// Whether a header name is the host's (`outpost-…`): such headers are dropped from emitted
/// records.
pub fn is_reserved_header(name: &str) -> bool {
    name.starts_with(RESERVED_HEADER_PREFIX)
}

/// Why a v1 host refuses a call, and so which status it returns ([`Refusal::status`]). The
/// wasm host and the test harness decide with the same checks ([`check_topic`],
/// [`check_state_key`], [`check_state_value`], [`CallBudget`]); each words the message for its
/// own audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An emit or state write during `outpost_init`.
    WriteDuringInit,
    /// A topic name that is empty or longer than [`limits::MAX_TOPIC_LEN`].
    TopicLength {
        /// Its length in bytes.
        len: usize,
    },
    /// The manifest does not grant state.
    StateNotGranted,
    /// An empty state key.
    EmptyStateKey,
    /// A state key over the limit.
    StateKeyTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A state value over the limit.
    StateValueTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An emitted record over the limit.
    RecordTooLarge {
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// This call already emitted [`limits::MAX_EMITS_PER_CALL`] records or would pass
    /// [`limits::MAX_EMIT_BYTES_PER_CALL`] bytes.
    EmitBudget,
    /// This call would write more than [`limits::MAX_STATE_BYTES_PER_CALL`] bytes of state.
    StateBudget,
    /// A `state_put` would take the plugin's state past its quota ([`StateQuota::check`]).
    StateQuota {
        /// The plugin's state (committed and pending) as the put would leave it.
        usage: StateUsage,
        /// The quota it would exceed.
        quota: StateQuota,
    },
}

impl Refusal {
    /// The status a host import returns for this refusal.
    pub fn status(self) -> i32 {
        match self {
            Refusal::WriteDuringInit | Refusal::StateNotGranted => status::DENIED,
            Refusal::TopicLength { .. } | Refusal::EmptyStateKey => status::INVALID,
            Refusal::StateKeyTooLarge { .. }
            | Refusal::StateValueTooLarge { .. }
            | Refusal::RecordTooLarge { .. }
            | Refusal::EmitBudget
            | Refusal::StateBudget => status::TOO_LARGE,
            Refusal::StateQuota { .. } => status::QUOTA,
        }
    }
}

/// A topic name `emit` accepts: 1 to [`limits::MAX_TOPIC_LEN`] bytes.
pub fn check_topic(topic: &str) -> Result<(), Refusal> {
    if topic.is_empty() || topic.len() > limits::MAX_TOPIC_LEN {
        return Err(Refusal::TopicLength { len: topic.len() });
    }
    Ok(())
}

/// A state key the state calls accept: granted, non-empty and at most `limit` bytes.
pub fn check_state_key(granted: bool, key: &[u8], limit: usize) -> Result<(), Refusal> {
    if !granted {
        return Err(Refusal::StateNotGranted);
    }
    if key.is_empty() {
        return Err(Refusal::EmptyStateKey);
    }
    if key.len() > limit {
        return Err(Refusal::StateKeyTooLarge {
            len: key.len(),
            limit,
        });
    }
    Ok(())
}

/// A state value `state_put` accepts: at most `limit` bytes.
pub fn check_state_value(value: &[u8], limit: usize) -> Result<(), Refusal> {
    if value.len() > limit {
        return Err(Refusal::StateValueTooLarge {
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

/// The size of an emitted record as the ABI counts it: key, value and the encoded header block
/// (`header_block_len` bytes; 0 for no headers).
pub fn emit_record_len(key: Option<&[u8]>, value: &[u8], header_block_len: usize) -> usize {
    key.map_or(0, <[u8]>::len) + value.len() + header_block_len
}

/// What one call has emitted and written so far, against the per-call limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallBudget {
    emits: usize,
    emit_bytes: usize,
    state_bytes: usize,
}

impl CallBudget {
    /// A budget with nothing spent (the start of a call).
    pub fn new() -> Self {
        CallBudget::default()
    }

    /// Spends one emit of `len` bytes (see [`emit_record_len`]), or refuses it.
    pub fn emit(&mut self, len: usize) -> Result<(), Refusal> {
        if self.emits >= limits::MAX_EMITS_PER_CALL
            || self.emit_bytes + len > limits::MAX_EMIT_BYTES_PER_CALL
        {
            return Err(Refusal::EmitBudget);
        }
        self.emits += 1;
        self.emit_bytes += len;
        Ok(())
    }

    /// Spends a state write of `bytes` (key + value; the key alone for a delete), or refuses it.
    pub fn state_write(&mut self, bytes: usize) -> Result<(), Refusal> {
        if self.state_bytes + bytes > limits::MAX_STATE_BYTES_PER_CALL {
            return Err(Refusal::StateBudget);
        }
        self.state_bytes += bytes;
        Ok(())
    }
}

/// How much state a plugin holds: the sum over its keys of key bytes plus value bytes, and the
/// number of keys (ABI section 10). The host counts its committed state this way, plus the
/// writes of the calls not committed yet; the test harness counts the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StateUsage {
    /// Key bytes plus value bytes, over every key.
    pub bytes: u64,
    /// Keys.
    pub keys: u64,
}

impl StateUsage {
    /// The usage of one entry: `key_len + value_len` bytes and one key, or nothing when the key
    /// has no value (`None`: absent or deleted).
    pub fn entry(key_len: usize, value_len: Option<usize>) -> StateUsage {
        match value_len {
            Some(value_len) => StateUsage {
                bytes: key_len as u64 + value_len as u64,
                keys: 1,
            },
            None => StateUsage::default(),
        }
    }

    /// This usage with the entry `old` replaced by `new` (see [`StateUsage::entry`]): a put
    /// that replaces a value counts the difference, a delete frees the entry.
    pub fn replace(self, old: StateUsage, new: StateUsage) -> StateUsage {
        StateUsage {
            bytes: self
                .bytes
                .saturating_sub(old.bytes)
                .saturating_add(new.bytes),
            keys: self.keys.saturating_sub(old.keys).saturating_add(new.keys),
        }
    }
}

/// A plugin's state quota: the most bytes (keys + values) and keys its state may hold. From the
/// manifest's `limits.state_mib` and `limits.state_keys`, capped by the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateQuota {
    /// Most key plus value bytes.
    pub max_bytes: u64,
    /// Most keys.
    pub max_keys: u64,
}

impl Default for StateQuota {
    /// The defaults of a v1 host ([`limits::DEFAULT_STATE_QUOTA_BYTES`],
    /// [`limits::DEFAULT_STATE_QUOTA_KEYS`]).
    fn default() -> Self {
        StateQuota {
            max_bytes: limits::DEFAULT_STATE_QUOTA_BYTES,
            max_keys: limits::DEFAULT_STATE_QUOTA_KEYS,
        }
    }
}

impl StateQuota {
    /// Checks a `state_put` that takes the plugin's usage (committed plus pending) from
    /// `before` to `after`: refused when it grows the bytes past `max_bytes` or the keys past
    /// `max_keys`. A put that grows neither (a value replaced by one no larger) is never
    /// refused, even over a quota the box lowered since. Deletes are never refused.
    pub fn check(&self, before: StateUsage, after: StateUsage) -> Result<(), Refusal> {
        let bytes_over = after.bytes > before.bytes && after.bytes > self.max_bytes;
        let keys_over = after.keys > before.keys && after.keys > self.max_keys;
        if bytes_over || keys_over {
            return Err(Refusal::StateQuota {
                usage: after,
                quota: *self,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record<'static> {
        Record::new("pos.payments", br#"{"amount":12.5}"#)
            .with_key(b"card-1")
            .with_offset(42)
            .with_timestamp_ms(1_700_000_000_123)
            .with_header("trace", b"abc")
    }

    #[test]
    fn record_survives_an_encode_decode_round_trip() {
        let record = sample();
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &record);
        assert_eq!(bytes.len(), encoded_record_len(&record));
        assert_eq!(decode_record(&bytes).unwrap(), record);
    }

    #[test]
    fn record_encoding_matches_the_documented_bytes() {
        // The worked example of ABI.md, byte for byte.
        let record = Record::new("t", b"hi")
            .with_key(b"k")
            .with_offset(7)
            .with_timestamp_ms(1000)
            .with_header("h", b"v");
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &record);
        let expected: Vec<u8> = vec![
            1, 0, 0, 0, b't', // topic
            7, 0, 0, 0, 0, 0, 0, 0, // offset
            0xe8, 0x03, 0, 0, 0, 0, 0, 0, // timestamp_ms = 1000
            1, 0, 0, 0, b'k', // key
            2, 0, 0, 0, b'h', b'i', // value
            1, 0, 0, 0, // one header
            1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v',
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn missing_key_is_encoded_as_all_ones_length() {
        let record = Record::new("t", b"");
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &record);
        assert_eq!(&bytes[21..25], &[0xff, 0xff, 0xff, 0xff]);
        let decoded = decode_record(&bytes).unwrap();
        assert_eq!(decoded.key, None);
        assert!(decoded.headers.is_empty());
    }

    #[test]
    fn empty_key_differs_from_missing_key() {
        let record = Record::new("t", b"v").with_key(b"");
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &record);
        assert_eq!(decode_record(&bytes).unwrap().key, Some(&b""[..]));
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &sample());
        for len in 0..bytes.len() {
            let err = decode_record(&bytes[..len]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "at length {len}");
        }
    }

    #[test]
    fn trailing_bytes_after_the_headers_are_ignored() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &sample());
        bytes.extend_from_slice(&[9, 9, 9]);
        assert_eq!(decode_record(&bytes).unwrap(), sample());
    }

    #[test]
    fn absurd_header_count_is_rejected_without_allocating() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &Record::new("t", b"v"));
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_record(&bytes).unwrap_err();
        assert!(err.message().contains("header count"), "{err}");
    }

    #[test]
    fn topic_that_is_not_utf8_is_rejected() {
        let bytes = [2, 0, 0, 0, 0xff, 0xfe];
        let err = decode_record(&bytes).unwrap_err();
        assert!(err.message().contains("UTF-8"), "{err}");
    }

    #[test]
    fn corrupted_lengths_never_panic() {
        let mut base = Vec::new();
        encode_record(&mut base, &sample());
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bytes = base.clone();
                bytes[i] = v;
                let _ = decode_record(&bytes);
            }
        }
    }

    #[test]
    fn header_block_round_trips_and_empty_means_none() {
        let block = encode_headers(&[("a", b"1"), ("bb", b"")]);
        let headers = decode_headers(&block).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!((headers[0].name, headers[0].value), ("a", &b"1"[..]));
        assert_eq!((headers[1].name, headers[1].value), ("bb", &b""[..]));
        assert!(encode_headers(&[]).is_empty());
        assert!(decode_headers(&[]).unwrap().is_empty());
    }

    #[test]
    fn record_fields_encode_exactly_like_a_record() {
        let record = sample();
        let mut whole = Vec::new();
        encode_record(&mut whole, &record);
        let mut fields = Vec::new();
        encode_record_fields(
            &mut fields,
            record.topic,
            record.offset,
            record.timestamp_ms,
            record.key,
            record.value,
            record.headers.iter().map(|h| (h.name, h.value)),
        );
        assert_eq!(fields, whole);
    }

    #[test]
    fn refusals_map_to_the_documented_statuses() {
        assert_eq!(check_topic(""), Err(Refusal::TopicLength { len: 0 }));
        assert_eq!(Refusal::TopicLength { len: 0 }.status(), status::INVALID);
        assert_eq!(
            check_state_key(false, b"k", 8),
            Err(Refusal::StateNotGranted)
        );
        assert_eq!(Refusal::StateNotGranted.status(), status::DENIED);
        assert_eq!(check_state_key(true, b"", 8), Err(Refusal::EmptyStateKey));
        assert_eq!(
            check_state_key(true, b"123456789", 8).map_err(Refusal::status),
            Err(status::TOO_LARGE)
        );
        let mut budget = CallBudget::new();
        for _ in 0..limits::MAX_EMITS_PER_CALL {
            budget.emit(1).unwrap();
        }
        assert_eq!(budget.emit(1), Err(Refusal::EmitBudget));
        assert_eq!(
            CallBudget::new().state_write(limits::MAX_STATE_BYTES_PER_CALL + 1),
            Err(Refusal::StateBudget)
        );
    }

    #[test]
    fn state_usage_counts_key_and_value_bytes_and_a_replacement_counts_the_difference() {
        let entry = |k: usize, v: Option<usize>| StateUsage::entry(k, v);
        assert_eq!(entry(3, Some(10)), StateUsage { bytes: 13, keys: 1 });
        assert_eq!(entry(3, None), StateUsage::default());
        let usage = StateUsage::default().replace(entry(1, None), entry(1, Some(99)));
        assert_eq!(
            usage,
            StateUsage {
                bytes: 100,
                keys: 1
            }
        );
        let replaced = usage.replace(entry(1, Some(99)), entry(1, Some(9)));
        assert_eq!(replaced, StateUsage { bytes: 10, keys: 1 });
        let deleted = replaced.replace(entry(1, Some(9)), entry(1, None));
        assert_eq!(deleted, StateUsage::default());
        assert_eq!(
            deleted.replace(entry(5, Some(5)), entry(5, None)),
            StateUsage::default(),
            "never below zero"
        );
    }

    #[test]
    fn the_state_quota_refuses_only_growth_past_it() {
        let quota = StateQuota {
            max_bytes: 100,
            max_keys: 2,
        };
        let at = |bytes, keys| StateUsage { bytes, keys };
        assert_eq!(quota.check(at(50, 1), at(100, 2)), Ok(()));
        let refused = quota.check(at(50, 1), at(101, 2));
        assert_eq!(
            refused,
            Err(Refusal::StateQuota {
                usage: at(101, 2),
                quota
            })
        );
        assert_eq!(refused.map_err(Refusal::status), Err(status::QUOTA));
        assert!(quota.check(at(10, 2), at(20, 3)).is_err(), "a third key");
        // Over a quota lowered since: what does not grow is still allowed.
        assert_eq!(quota.check(at(500, 5), at(400, 5)), Ok(()));
        assert_eq!(quota.check(at(500, 5), at(500, 4)), Ok(()));
        assert!(quota.check(at(500, 5), at(501, 5)).is_err());
        assert_eq!(
            StateQuota::default(),
            StateQuota {
                max_bytes: limits::DEFAULT_STATE_QUOTA_BYTES,
                max_keys: limits::DEFAULT_STATE_QUOTA_KEYS
            }
        );
    }

    #[test]
    fn header_block_with_trailing_garbage_is_rejected() {
        let mut block = encode_headers(&[("a", b"1")]);
        block.push(0);
        assert!(decode_headers(&block).is_err());
    }
}
