//! A native test harness: runs a plugin under plain `cargo test` with an in-memory context that
//! behaves like the host (per-call transactions, dead letters, the v1 size limits, the state
//! quota, declared outputs, no writes during init) and a settable clock.
//!
//! ```
//! use outpost_sdk::{testing::Harness, Context, Error, Plugin, Record};
//!
//! #[derive(Default)]
//! struct Upper;
//! impl Plugin for Upper {
//!     fn on_record(&mut self, ctx: &mut dyn Context, r: &Record) -> Result<(), Error> {
//!         ctx.emit("upper", r.key, r.value_str()?.to_uppercase().as_bytes())
//!     }
//! }
//!
//! let mut h = Harness::<Upper>::new().allow_outputs(&["upper"]);
//! h.send("words", "k", "hello").unwrap();
//! assert_eq!(h.emitted()[0].value, b"HELLO");
//! assert!(h.send("words", "k", vec![0xff]).is_err()); // not UTF-8: dead-lettered
//! assert_eq!(h.dead_letters().len(), 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::abi::{self, limits, CallBudget, Refusal, StateQuota, StateUsage};
use crate::config::Config;
use crate::context::{Context, Level};
use crate::error::{Error, ErrorKind};
use crate::plugin::Plugin;
use crate::record::Record;

/// The clock's starting point: 2023-11-14T22:13:20Z, in epoch milliseconds.
pub const DEFAULT_NOW_MS: u64 = 1_700_000_000_000;

/// A record the plugin emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// Output topic.
    pub topic: String,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// The plugin's own headers (reserved `outpost-` headers removed, as the host does).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Emitted {
    /// The key as text (`None` if absent or not UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value as text (`None` if not UTF-8).
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Parses the value as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.value)?)
    }
}

/// A record whose call failed, as the host would send it to `<plugin>.dlq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Source topic (empty when the record bytes could not be decoded).
    pub topic: String,
    /// Source offset.
    pub offset: u64,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Vec<u8>,
    /// Why the call failed.
    pub error: Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Init,
    Record,
}

/// The in-memory context: committed state, this call's pending writes and emits, logs, clock.
#[derive(Debug)]
struct MemoryContext {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    pending_state: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending_emits: Vec<Emitted>,
    /// This call's emits and state writes against the per-call limits (the host's rule).
    budget: CallBudget,
    /// The state quota (the host's rule, [`StateQuota::check`]).
    quota: StateQuota,
    /// Usage of the committed state.
    usage: StateUsage,
    /// Usage of the committed state with this call's writes applied.
    pending_usage: StateUsage,
    emitted: Vec<Emitted>,
    keep_emitted: bool,
    emitted_count: u64,
    logs: Vec<(Level, String)>,
    now_ms: u64,
    outputs: Option<BTreeSet<String>>,
    state_allowed: bool,
    phase: Phase,
}

impl MemoryContext {
    fn new() -> Self {
        MemoryContext {
            state: BTreeMap::new(),
            pending_state: BTreeMap::new(),
            pending_emits: Vec::new(),
            budget: CallBudget::new(),
            quota: StateQuota::default(),
            usage: StateUsage::default(),
            pending_usage: StateUsage::default(),
            emitted: Vec::new(),
            keep_emitted: true,
            emitted_count: 0,
            logs: Vec::new(),
            now_ms: DEFAULT_NOW_MS,
            outputs: None,
            state_allowed: true,
            phase: Phase::Record,
        }
    }

    fn begin(&mut self, phase: Phase) {
        self.phase = phase;
        self.pending_state.clear();
        self.pending_emits.clear();
        self.budget = CallBudget::new();
        self.pending_usage = self.usage;
    }

    fn commit(&mut self) {
        self.usage = self.pending_usage;
        for (key, value) in std::mem::take(&mut self.pending_state) {
            match value {
                Some(value) => {
                    self.state.insert(key, value);
                }
                None => {
                    self.state.remove(&key);
                }
            }
        }
        self.emitted_count += self.pending_emits.len() as u64;
        if self.keep_emitted {
            self.emitted.append(&mut self.pending_emits);
        } else {
            self.pending_emits.clear();
        }
    }

    fn rollback(&mut self) {
        self.pending_state.clear();
        self.pending_emits.clear();
        self.pending_usage = self.usage;
    }

    /// The usage of `key`'s current entry, this call's writes included.
    fn entry_usage(&self, key: &[u8]) -> StateUsage {
        let value = match self.pending_state.get(key) {
            Some(pending) => pending.as_ref(),
            None => self.state.get(key),
        };
        StateUsage::entry(key.len(), value.map(Vec::len))
    }

    fn check_write(&self, op: &str) -> Result<(), Error> {
        if self.phase == Phase::Init {
            return Err(Error::with_kind(
                ErrorKind::Denied,
                format!("{op} failed: writes are not allowed during init"),
            ));
        }
        Ok(())
    }

    fn check_state_key(&self, op: &str, key: &[u8]) -> Result<(), Error> {
        abi::check_state_key(self.state_allowed, key, limits::MAX_STATE_KEY_LEN)
            .map_err(|r| refused(op, r))
    }

    fn add_state_bytes(&mut self, op: &str, bytes: usize) -> Result<(), Error> {
        self.budget.state_write(bytes).map_err(|r| refused(op, r))
    }
}

/// The error a host call `op` returns when the host refuses it (the wording of the harness;
/// the decision is the host's own rule, [`abi::Refusal`]).
fn refused(op: &str, refusal: Refusal) -> Error {
    let kind = match refusal.status() {
        abi::status::DENIED => ErrorKind::Denied,
        abi::status::TOO_LARGE => ErrorKind::TooLarge,
        abi::status::QUOTA => ErrorKind::QuotaExceeded,
        _ => ErrorKind::InvalidArgument,
    };
    let why = match refusal {
        Refusal::WriteDuringInit => "writes are not allowed during init".to_owned(),
        Refusal::TopicLength { .. } => {
            format!("topic names must be 1 to {} bytes", limits::MAX_TOPIC_LEN)
        }
        Refusal::StateNotGranted => "the manifest does not grant state".to_owned(),
        Refusal::EmptyStateKey => "state keys must not be empty".to_owned(),
        Refusal::StateKeyTooLarge { len, limit } => {
            format!("key of {len} bytes is over the {limit}-byte limit")
        }
        Refusal::StateValueTooLarge { len, limit } => {
            format!("value of {len} bytes is over the {limit}-byte limit")
        }
        Refusal::RecordTooLarge { len, limit } => {
            format!("record of {len} bytes is over the {limit}-byte limit")
        }
        Refusal::EmitBudget => format!(
            "one call may emit at most {} records and {} bytes",
            limits::MAX_EMITS_PER_CALL,
            limits::MAX_EMIT_BYTES_PER_CALL
        ),
        Refusal::StateBudget => format!(
            "this call wrote more than {} bytes of state",
            limits::MAX_STATE_BYTES_PER_CALL
        ),
        Refusal::StateQuota { usage, quota } => format!(
            "the state quota of {} bytes and {} keys would be exceeded ({} bytes and {} keys \
             with this write)",
            quota.max_bytes, quota.max_keys, usage.bytes, usage.keys
        ),
    };
    Error::with_kind(kind, format!("{op} failed: {why}"))
}

impl Context for MemoryContext {
    fn emit_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), Error> {
        let op = format!("emit to {topic}");
        if self.phase == Phase::Init {
            return Err(refused(&op, Refusal::WriteDuringInit));
        }
        abi::check_topic(topic).map_err(|r| refused(&op, r))?;
        if let Some(outputs) = &self.outputs {
            if !outputs.contains(topic) {
                return Err(Error::with_kind(
                    ErrorKind::Denied,
                    format!("{op} failed: the topic is not a declared output"),
                ));
            }
        }
        let block = if headers.is_empty() {
            0
        } else {
            4 + headers
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>()
        };
        let size = abi::emit_record_len(key, value, block);
        if size > limits::MAX_EMIT_RECORD_LEN {
            return Err(refused(
                &op,
                Refusal::RecordTooLarge {
                    len: size,
                    limit: limits::MAX_EMIT_RECORD_LEN,
                },
            ));
        }
        self.budget.emit(size).map_err(|r| refused(&op, r))?;
        self.pending_emits.push(Emitted {
            topic: topic.to_owned(),
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: headers
                .iter()
                .filter(|(n, _)| !abi::is_reserved_header(n))
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
        });
        Ok(())
    }

    fn state_get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, Error> {
        buf.clear();
        self.check_state_key("state_get", key)?;
        let value = match self.pending_state.get(key) {
            Some(pending) => pending.as_ref(),
            None => self.state.get(key),
        };
        match value {
            Some(value) => {
                buf.extend_from_slice(value);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.check_write("state_put")?;
        self.check_state_key("state_put", key)?;
        abi::check_state_value(value, limits::MAX_STATE_VALUE_LEN)
            .map_err(|r| refused("state_put", r))?;
        let old = self.entry_usage(key);
        let after = self
            .pending_usage
            .replace(old, StateUsage::entry(key.len(), Some(value.len())));
        self.quota
            .check(self.pending_usage, after)
            .map_err(|r| refused("state_put", r))?;
        self.add_state_bytes("state_put", key.len() + value.len())?;
        self.pending_usage = after;
        match self.pending_state.get_mut(key) {
            Some(slot) => match slot {
                Some(existing) => {
                    existing.clear();
                    existing.extend_from_slice(value);
                }
                None => *slot = Some(value.to_vec()),
            },
            None => {
                self.pending_state
                    .insert(key.to_vec(), Some(value.to_vec()));
            }
        }
        Ok(())
    }

    fn state_delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.check_write("state_delete")?;
        self.check_state_key("state_delete", key)?;
        self.add_state_bytes("state_delete", key.len())?;
        let old = self.entry_usage(key);
        self.pending_usage = self.pending_usage.replace(old, StateUsage::default());
        self.pending_state.insert(key.to_vec(), None);
        Ok(())
    }

    fn log(&mut self, level: Level, message: &str) {
        let mut message = message.to_owned();
        if message.len() > limits::MAX_MESSAGE_LEN {
            let mut cut = limits::MAX_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.logs.push((level, message));
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

/// Runs a [`Plugin`] natively the way the host runs it in wasm.
///
/// Each `feed`/`send` is one call: on `Ok` its state writes are committed and its emits become
/// visible in [`emitted`](Harness::emitted); on `Err` both are discarded and the record is
/// listed in [`dead_letters`](Harness::dead_letters). If no `init` happened before the first
/// record, the plugin is initialised with `{}` first, as the wasm glue does.
pub struct Harness<P> {
    plugin: P,
    ctx: MemoryContext,
    init: Option<Result<(), Error>>,
    next_offsets: BTreeMap<String, u64>,
    dead_letters: Vec<DeadLetter>,
}

impl<P> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &std::any::type_name::<P>())
            .field("initialised", &self.init)
            .field("state_keys", &self.ctx.state.len())
            .field("emitted", &self.ctx.emitted_count)
            .field("dead_letters", &self.dead_letters.len())
            .field("now_ms", &self.ctx.now_ms)
            .finish()
    }
}

impl<P: Plugin + Default> Harness<P> {
    /// A harness around `P::default()`, not initialised yet.
    pub fn new() -> Self {
        Harness::with_plugin(P::default())
    }

    /// A harness around `P::default()`, initialised with `config_json`.
    pub fn start(config_json: &str) -> Result<Self, Error> {
        let mut harness = Harness::new();
        harness.init(config_json)?;
        Ok(harness)
    }
}

impl<P: Plugin + Default> Default for Harness<P> {
    fn default() -> Self {
        Harness::new()
    }
}

impl<P: Plugin> Harness<P> {
    /// A harness around a given plugin value, not initialised yet.
    pub fn with_plugin(plugin: P) -> Self {
        Harness {
            plugin,
            ctx: MemoryContext::new(),
            init: None,
            next_offsets: BTreeMap::new(),
            dead_letters: Vec::new(),
        }
    }

    /// Restricts emits to these topics, like the manifest's `outputs` (default: any topic).
    pub fn allow_outputs(mut self, topics: &[&str]) -> Self {
        self.ctx.outputs = Some(topics.iter().map(|t| (*t).to_owned()).collect());
        self
    }

    /// Grants or refuses state, like the manifest's `state` (default: granted).
    pub fn allow_state(mut self, allowed: bool) -> Self {
        self.ctx.state_allowed = allowed;
        self
    }

    /// Sets the state quota, like the manifest's `limits.state_mib` and `limits.state_keys`
    /// (default: the host's defaults, [`StateQuota::default`]). A `state_put` that would take
    /// the state past it fails with [`ErrorKind::QuotaExceeded`].
    pub fn state_quota(mut self, max_bytes: u64, max_keys: u64) -> Self {
        self.ctx.quota = StateQuota {
            max_bytes,
            max_keys,
        };
        self
    }

    /// Calls the plugin's `init` with `config_json`. Writes are denied during init.
    pub fn init(&mut self, config_json: &str) -> Result<(), Error> {
        self.ctx.begin(Phase::Init);
        let result = self
            .plugin
            .init(&mut self.ctx, &Config::new(config_json.as_bytes()));
        self.ctx.rollback();
        self.ctx.phase = Phase::Record;
        self.init = Some(result.clone());
        result
    }

    fn ensure_init(&mut self) -> Result<(), Error> {
        if self.init.is_none() {
            // Like the wasm glue: a record before init means init with an empty config.
            let _ = self.init("{}");
        }
        match &self.init {
            Some(Err(e)) => Err(e.clone().context("the plugin's init failed")),
            _ => Ok(()),
        }
    }

    /// Handles one record as the host would: one transactional call.
    pub fn feed(&mut self, record: &Record<'_>) -> Result<(), Error> {
        let result = self.ensure_init().and_then(|()| {
            self.ctx.begin(Phase::Record);
            self.plugin.on_record(&mut self.ctx, record)
        });
        match &result {
            Ok(()) => self.ctx.commit(),
            Err(e) => {
                self.ctx.rollback();
                self.dead_letters.push(DeadLetter {
                    topic: record.topic.to_owned(),
                    offset: record.offset,
                    key: record.key.map(<[u8]>::to_vec),
                    value: record.value.to_vec(),
                    error: e.clone(),
                });
            }
        }
        result
    }

    /// Handles one record given in the ABI's byte encoding (what `outpost_on_record` gets);
    /// bytes that do not decode fail the call like they do in wasm.
    pub fn feed_encoded(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match abi::decode_record(bytes) {
            Ok(record) => self.feed(&record),
            Err(e) => {
                let e = e.context("cannot decode the input record");
                self.dead_letters.push(DeadLetter {
                    topic: String::new(),
                    offset: 0,
                    key: None,
                    value: bytes.to_vec(),
                    error: e.clone(),
                });
                Err(e)
            }
        }
    }

    /// Feeds a record on `topic` with `key` and `value`, the next offset of that topic and the
    /// harness clock as its timestamp.
    pub fn send(&mut self, topic: &str, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let offset = match self.next_offsets.get_mut(topic) {
            Some(next) => {
                let offset = *next;
                *next += 1;
                offset
            }
            None => {
                self.next_offsets.insert(topic.to_owned(), 1);
                0
            }
        };
        let record = Record::new(topic, value.as_ref())
            .with_key(key.as_bytes())
            .with_offset(offset)
            .with_timestamp_ms(self.ctx.now_ms);
        self.feed(&record)
    }

    /// Feeds `value` serialised as JSON (see [`send`](Harness::send)).
    #[cfg(feature = "json")]
    pub fn send_json<T: serde::Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::new(format!("cannot serialise test record: {e}")))?;
        self.send(topic, key, bytes)
    }

    /// Everything emitted by successful calls so far, in order.
    pub fn emitted(&self) -> &[Emitted] {
        &self.ctx.emitted
    }

    /// The emitted records on one topic, in order.
    pub fn emitted_to(&self, topic: &str) -> Vec<&Emitted> {
        self.ctx
            .emitted
            .iter()
            .filter(|e| e.topic == topic)
            .collect()
    }

    /// Removes and returns everything emitted so far.
    pub fn take_emitted(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.ctx.emitted)
    }

    /// How many records successful calls emitted, including discarded ones (see
    /// [`keep_emitted`](Harness::keep_emitted)).
    pub fn emitted_count(&self) -> u64 {
        self.ctx.emitted_count
    }

    /// Whether to keep emitted records for inspection (default `true`); benchmarks turn it off
    /// and read [`emitted_count`](Harness::emitted_count).
    pub fn keep_emitted(&mut self, keep: bool) {
        self.ctx.keep_emitted = keep;
    }

    /// The records whose calls failed, with their errors.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// The committed state value of `key`.
    pub fn state(&self, key: &[u8]) -> Option<&[u8]> {
        self.ctx.state.get(key).map(Vec::as_slice)
    }

    /// All committed state, sorted by key.
    pub fn state_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ctx
            .state
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The number of committed state keys.
    pub fn state_len(&self) -> usize {
        self.ctx.state.len()
    }

    /// How much committed state the plugin holds, as the quota counts it.
    pub fn state_usage(&self) -> StateUsage {
        self.ctx.usage
    }

    /// Sets a committed state value directly (seeding a test; the quota is not checked).
    pub fn set_state(&mut self, key: &[u8], value: &[u8]) {
        let ctx = &mut self.ctx;
        let new = StateUsage::entry(key.len(), Some(value.len()));
        let old = ctx.state.insert(key.to_vec(), value.to_vec());
        let old = StateUsage::entry(key.len(), old.as_ref().map(Vec::len));
        ctx.usage = ctx.usage.replace(old, new);
        ctx.pending_usage = ctx.usage;
    }

    /// Everything the plugin logged, in order.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.ctx.logs
    }

    /// The harness clock (epoch milliseconds); starts at [`DEFAULT_NOW_MS`].
    pub fn now_ms(&self) -> u64 {
        self.ctx.now_ms
    }

    /// Sets the clock.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.ctx.now_ms = now_ms;
    }

    /// Moves the clock forward.
    pub fn advance_ms(&mut self, ms: u64) {
        self.ctx.now_ms += ms;
    }

    /// The plugin instance.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// The plugin instance, mutably.
    pub fn plugin_mut(&mut self) -> &mut P {
        &mut self.plugin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts records per key in state, emits the count, and fails on the value `fail`.
    #[derive(Default)]
    struct Counter {
        inits: u32,
    }

    impl Plugin for Counter {
        fn init(&mut self, ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
            self.inits += 1;
            if config.as_str()?.contains("refuse") {
                return Err(Error::new("refused config"));
            }
            ctx.log(Level::Info, "counter ready");
            Ok(())
        }

        fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
            let key = record.key.ok_or("no key")?;
            let count = match ctx.state_get(key)? {
                Some(v) => std::str::from_utf8(&v)?.parse::<u64>()? + 1,
                None => 1,
            };
            ctx.state_put(key, count.to_string().as_bytes())?;
            ctx.emit("counts", Some(key), count.to_string().as_bytes())?;
            if record.value == b"fail" {
                return Err(Error::new("asked to fail"));
            }
            Ok(())
        }
    }

    #[test]
    fn failed_call_discards_its_state_and_emits_and_dead_letters_the_record() {
        let mut h = Harness::<Counter>::start("{}").unwrap();
        h.send("in", "a", "x").unwrap();
        let err = h.send("in", "a", "fail").unwrap_err();
        assert_eq!(err.message(), "asked to fail");
        h.send("in", "a", "x").unwrap();
        let values: Vec<_> = h.emitted().iter().map(|e| e.value_str().unwrap()).collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(h.state(b"a"), Some(&b"2"[..]));
        assert_eq!(h.dead_letters().len(), 1);
        assert_eq!(h.dead_letters()[0].offset, 1);
    }

    #[test]
    fn record_before_init_initialises_with_an_empty_config() {
        let mut h = Harness::<Counter>::new();
        h.send("in", "a", "x").unwrap();
        assert_eq!(h.plugin().inits, 1);
        assert_eq!(h.logs(), &[(Level::Info, "counter ready".to_owned())]);
    }

    #[test]
    fn refused_config_fails_init_and_every_later_record() {
        assert!(Harness::<Counter>::start(r#"{"refuse":true}"#).is_err());
        let mut h = Harness::<Counter>::new();
        assert!(h.init(r#"{"refuse":true}"#).is_err());
        let err = h.send("in", "a", "x").unwrap_err();
        assert!(err.message().contains("init failed"), "{err}");
    }

    #[test]
    fn undeclared_output_is_denied() {
        let mut h = Harness::<Counter>::new().allow_outputs(&["other"]);
        let err = h.send("in", "a", "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Denied);
        assert_eq!(h.state_len(), 0);
    }

    #[test]
    fn state_can_be_refused_like_the_manifest_does() {
        let mut h = Harness::<Counter>::new().allow_state(false);
        assert_eq!(
            h.send("in", "a", "x").unwrap_err().kind(),
            ErrorKind::Denied
        );
    }

    #[test]
    fn writes_during_init_are_denied() {
        #[derive(Default)]
        struct EagerWriter;
        impl Plugin for EagerWriter {
            fn init(&mut self, ctx: &mut dyn Context, _: &Config) -> Result<(), Error> {
                ctx.state_put(b"k", b"v")
            }
        }
        let err = Harness::<EagerWriter>::start("{}").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Denied);
    }

    #[test]
    fn size_limits_match_the_abi() {
        #[derive(Default)]
        struct Big;
        impl Plugin for Big {
            fn on_record(&mut self, ctx: &mut dyn Context, r: &Record<'_>) -> Result<(), Error> {
                let n: usize = r.value_str()?.parse()?;
                match r.topic {
                    "emit" => ctx.emit("out", None, &vec![0; n]),
                    "key" => ctx.state_put(&vec![b'k'; n], b""),
                    "value" => ctx.state_put(b"k", &vec![0; n]),
                    _ => Ok(()),
                }
            }
        }
        let mut h = Harness::<Big>::new();
        h.send("emit", "", limits::MAX_EMIT_RECORD_LEN.to_string())
            .unwrap();
        let too_big = (limits::MAX_EMIT_RECORD_LEN + 1).to_string();
        assert_eq!(
            h.send("emit", "", &too_big).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        h.send("key", "", limits::MAX_STATE_KEY_LEN.to_string())
            .unwrap();
        let too_long = (limits::MAX_STATE_KEY_LEN + 1).to_string();
        assert_eq!(
            h.send("key", "", &too_long).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        assert_eq!(
            h.send("key", "", "0").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let too_big = (limits::MAX_STATE_VALUE_LEN + 1).to_string();
        assert_eq!(
            h.send("value", "", &too_big).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }

    #[test]
    fn state_past_the_quota_is_refused_and_deletes_free_it() {
        /// Key `<op><key>`: `p` puts a 10-byte value, `d` deletes, `P` puts then fails.
        #[derive(Default)]
        struct Writer;
        impl Plugin for Writer {
            fn on_record(&mut self, ctx: &mut dyn Context, r: &Record<'_>) -> Result<(), Error> {
                let key = r.key.ok_or("no key")?;
                match key.split_first() {
                    Some((b'p', k)) => ctx.state_put(k, &[7; 10]),
                    Some((b'd', k)) => ctx.state_delete(k),
                    Some((b'P', k)) => {
                        ctx.state_put(k, &[7; 10])?;
                        Err(Error::new("failed after the put"))
                    }
                    _ => Err(Error::new("bad op")),
                }
            }
        }
        // Two entries of 11 bytes fit 22 bytes; a third key does not fit 2 keys either.
        let mut h = Harness::<Writer>::new().state_quota(22, 2);
        h.send("in", "pa", "").unwrap();
        h.send("in", "pb", "").unwrap();
        assert_eq!(h.state_usage(), StateUsage { bytes: 22, keys: 2 });
        let err = h.send("in", "pc", "").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
        assert!(err.message().contains("quota"), "{err}");
        h.send("in", "pa", "").unwrap(); // replacing a value with one as large fits
                                         // A failed call's write does not count; a delete frees its entry.
        assert!(h.send("in", "Pa", "").is_err());
        h.send("in", "da", "").unwrap();
        assert_eq!(h.state_usage(), StateUsage { bytes: 11, keys: 1 });
        h.send("in", "pc", "").unwrap();
        assert_eq!(h.state_len(), 2);
        let mut keys = Harness::<Writer>::new().state_quota(1000, 1);
        keys.send("in", "pa", "").unwrap();
        assert_eq!(
            keys.send("in", "pb", "").unwrap_err().kind(),
            ErrorKind::QuotaExceeded
        );
        keys.set_state(b"seeded", b"x");
        assert_eq!(keys.state_usage(), StateUsage { bytes: 18, keys: 2 });
    }

    #[test]
    fn too_many_emits_in_one_call_are_refused() {
        #[derive(Default)]
        struct Chatty;
        impl Plugin for Chatty {
            fn on_record(&mut self, ctx: &mut dyn Context, _: &Record<'_>) -> Result<(), Error> {
                for _ in 0..=limits::MAX_EMITS_PER_CALL {
                    ctx.emit("out", None, b"x")?;
                }
                Ok(())
            }
        }
        let mut h = Harness::<Chatty>::new();
        assert_eq!(
            h.send("in", "", "").unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        assert!(h.emitted().is_empty());
    }

    #[test]
    fn reads_see_the_calls_own_writes_and_deletes() {
        #[derive(Default)]
        struct ReadBack;
        impl Plugin for ReadBack {
            fn on_record(&mut self, ctx: &mut dyn Context, _: &Record<'_>) -> Result<(), Error> {
                ctx.state_put(b"k", b"1")?;
                let seen = ctx.state_get(b"k")?;
                ctx.state_delete(b"k")?;
                let gone = ctx.state_get(b"k")?;
                ctx.emit("out", None, format!("{seen:?} {gone:?}").as_bytes())
            }
        }
        let mut h = Harness::<ReadBack>::new();
        h.set_state(b"k", b"0");
        h.send("in", "", "").unwrap();
        assert_eq!(h.emitted()[0].value_str(), Some("Some([49]) None"));
        assert_eq!(h.state(b"k"), None);
    }

    #[test]
    fn reserved_headers_are_dropped_from_emits() {
        #[derive(Default)]
        struct Tagger;
        impl Plugin for Tagger {
            fn on_record(&mut self, ctx: &mut dyn Context, _: &Record<'_>) -> Result<(), Error> {
                ctx.emit_with_headers(
                    "out",
                    None,
                    b"",
                    &[("outpost-plugin", b"fake"), ("mine", b"1")],
                )
            }
        }
        let mut h = Harness::<Tagger>::new();
        h.send("in", "", "").unwrap();
        assert_eq!(
            h.emitted()[0].headers,
            vec![("mine".to_owned(), b"1".to_vec())]
        );
    }

    #[test]
    fn send_numbers_offsets_per_topic_and_stamps_the_clock() {
        #[derive(Default)]
        struct Stamp;
        impl Plugin for Stamp {
            fn on_record(&mut self, ctx: &mut dyn Context, r: &Record<'_>) -> Result<(), Error> {
                let now = ctx.now_ms();
                ctx.emit(
                    "out",
                    None,
                    format!("{}@{}/{}", r.topic, r.offset, r.timestamp_ms - now).as_bytes(),
                )
            }
        }
        let mut h = Harness::<Stamp>::new();
        h.send("a", "", "").unwrap();
        h.send("b", "", "").unwrap();
        h.advance_ms(5);
        h.send("a", "", "").unwrap();
        let values: Vec<_> = h.emitted().iter().map(|e| e.value_str().unwrap()).collect();
        assert_eq!(values, ["a@0/0", "b@0/0", "a@1/0"]);
        assert_eq!(h.now_ms(), DEFAULT_NOW_MS + 5);
    }

    #[test]
    fn undecodable_bytes_are_dead_lettered() {
        let mut h = Harness::<Counter>::new();
        let err = h.feed_encoded(&[1, 2, 3]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(h.dead_letters().len(), 1);
        let mut bytes = Vec::new();
        abi::encode_record(&mut bytes, &Record::new("in", b"x").with_key(b"k"));
        h.feed_encoded(&bytes).unwrap();
        assert_eq!(h.emitted().len(), 1);
    }

    #[test]
    fn discarding_emits_still_counts_them() {
        let mut h = Harness::<Counter>::new();
        h.keep_emitted(false);
        h.send("in", "a", "x").unwrap();
        h.send("in", "a", "x").unwrap();
        assert!(h.emitted().is_empty());
        assert_eq!(h.emitted_count(), 2);
    }
}
