//! The durable local log: named topics, each a totally ordered sequence of records with dense
//! `u64` offsets, stored as append-only segment files of CRC32C-checked batches.
//!
//! # Layout on disk
//! ```text
//! <log dir>/<topic>/<base offset, 20 digits>.log     batches, appended only
//! <log dir>/<topic>/<base offset, 20 digits>.index   sparse offset index of that segment
//! ```
//! A topic name is `[a-z0-9._-]{1,128}` (not `.` or `..`), so it is its own directory name.
//! The segment with the highest base offset is the *active* one; all others are *sealed* and
//! never written again. A segment's last offset is the next segment's base minus one.
//!
//! # Batch format (version 2)
//! One `append` call makes one batch. All integers are little-endian.
//! ```text
//! byte  size  field
//!  0     4    magic "OPLB"
//!  4     4    length: bytes after this field (the batch is 8 + length bytes)
//!  8     4    crc32c (Castagnoli) of bytes 4..8 (the length) followed by bytes 12 .. 8+length,
//!             i.e. crc32c_append(crc32c(length field), everything below)
//! 12     1    format version = 2
//! 13     1    attributes = 0 (reserved; any set bit is rejected)
//! 14     2    reserved = 0
//! 16     8    base offset (offset of the first record)
//! 24     4    record count (>= 1); record i has offset base + i
//! 28     8    append time, ms since the epoch (drives roll and retention by age)
//! 36     8    base timestamp, ms (the first record's timestamp)
//! 44     …    records
//! ```
//! A record is a sequence of unsigned LEB128 varints and bytes:
//! ```text
//! length (of the rest of the record)
//! timestamp delta (zigzag-encoded, wrapping `timestamp - base timestamp`)
//! key length + 1 (0 = no key), key bytes
//! value length, value bytes
//! header count, then per header: name length, name (UTF-8), value length, value bytes
//! ```
//! Header order is kept. A batch is served only after its checksum matched and its records
//! parsed to exactly fill it; a batch failing either is never turned into records. Every byte
//! that decides what a batch is lies under the checksum: the magic and the version are
//! checked for their exact values, everything else is covered by the CRC.
//!
//! # Index format
//! `<base>.index` holds 8-byte entries `(u32 offset - base, u32 byte position)`, one for the
//! first batch and then for the first batch starting at least 4 KiB after the previous entry.
//! Both fields strictly increase. The index is a cache and no source of truth: entries are
//! written (not fsynced) as batches are appended; a read checks that the batch an entry points
//! at has that base offset and rebuilds the index from the log when it does not; a missing or
//! unparsable index is rebuilt on first use. Segments are at most 1 GiB (`segment_bytes`), so
//! positions fit 32 bits.
//!
//! # Torn tails and recovery
//! On open only the last segment is scanned: from its last index entry that points at a
//! plausible batch (or from byte 0). Each batch must have the magic, a sane length that fits
//! the file, the expected base offset (dense from the previous batch), a matching checksum and
//! well-formed records. The first batch that fails — a torn write, zeros from preallocation,
//! garbage — and everything after it is cut off (`ftruncate`), with a warning naming the
//! position, bytes and offset; the rest is fsynced before it becomes visible. Sealed segments
//! are not scanned on open (only their file names and sizes are read).
//!
//! # Lost and damaged ranges
//! A read never skips silently. Damage found in a segment while reading — a batch failing its
//! checks (`damaged`), or a sealed segment that ends early: end of file, a partial batch or
//! only zeros, as after power loss on a `never` topic, and a segment file missing between two
//! others (`lost`) — makes the range from the first offset that cannot be read up to the
//! *next readable offset* unreadable: the next batch after it that verifies and that a later
//! index entry points at, else the next segment's base (or the visible end). A read that
//! meets such a range after some records returns those and stops at it; a read that starts in
//! it (or at it) fails with [`LogError::Gap`] naming the range and the next readable offset,
//! and the caller decides to go on there (`log.on_read_gap`). Each range is logged once as an
//! ERROR and recorded once per run in [`GAPS_TOPIC`] (reason `lost` or `damaged`) by the log
//! itself, whoever read it; `outpost_log_read_gaps_total{topic}` counts the reads answered
//! with a gap.
//!
//! # Durability and visibility
//! Per topic (`fsync`): `always` acknowledges an append only after an `fdatasync` covering its
//! batch. Appenders encode their batch outside any lock, then under the topic's write lock
//! get their offsets and queue the batch bytes, and wait for `durable >= their end`. If no
//! fsync is under way the appender becomes the *leader*: it writes every queued batch with one
//! `pwrite`, fsyncs, wakes each covered waiter on its own (`unpark`, so they do not file
//! through one mutex), and while others still wait it runs the next round at once (up to 8 in
//! a row) before passing the role to a waiter (group commit). No lock is held during an
//! fsync, so the next group queues meanwhile, and no write competes with a running fsync.
//! `interval_ms` and `never` topics write each batch with its own `pwrite` under the lock. `{ interval_ms = N }` acknowledges
//! after the write; a background thread fsyncs at most every N ms. `never` leaves write-back
//! to the OS; only [`Log::close`] fsyncs it. Readers see records up to the *visible end*: the
//! durable end for `always`, the written end otherwise. Before a segment is sealed it is
//! fsynced (unless `never`), and the topic directory is fsynced when a segment file is
//! created. A failed fsync (or a write failing for any reason but a full disk) poisons the
//! topic: further appends fail with [`LogError::Poisoned`] until restart; reads go on.
//!
//! # A full file system
//! A write refused with `ENOSPC` or `EDQUOT` is no fsync failure and poisons nothing: the
//! active segment is cut back (`ftruncate`) to the end of the last batch written whole, the
//! batches queued for that write are taken back (their appenders get
//! [`LogError::StorageFull`] and their records back) and the topic's end is where it was, so
//! nothing acknowledged is touched. Appends work again as soon as there is room, without a
//! restart. A log opened on a full file system serves what it holds: a topic that cannot be
//! created then is created on its first append that finds room, and [`Log::close`] succeeds
//! when everything acknowledged is durable.
//!
//! # Versions
//! Readers accept only the format versions they know and report any other as damaged data
//! with a message naming the version. A new layout gets a new version number; a build that
//! writes version N+1 keeps reading version N batches, and old segments age out by retention.
//! - Version 1: the same layout, but its checksum covers bytes 12.. only, so a flipped length
//!   field went unnoticed by the checksum. Still read, verified by that rule.
//! - Version 2 (written by this build): the checksum also covers the length field.
//!
//! # Retention and budget
//! Retention (see `retention.rs`) deletes whole sealed segments, oldest first, by age
//! (`retention_ms`, judged by the newest *append* time in the segment, so a device with a
//! wrong clock cannot make records expire early or never) and by size (`retention_bytes`),
//! never at or above an offset a [`RetentionGuard`] protects, and only after every guard's
//! `before_delete` agreed. An idle active segment older than `segment_ms` is rolled by the
//! retention pass so that it can age out too. The global budget (`max_bytes`,
//! `min_free_bytes`) refuses appends with [`LogError::StorageFull`] before anything is
//! written. With an [`EvictionPolicy`] set, pressure on the budget evicts the oldest segments
//! of the lowest-ranked topics first, guards or not, each with a gap marker in
//! [`GAPS_TOPIC`] (see `evict.rs`).
//!
//! # Threads
//! Each open [`Log`] runs two background threads: `outpost-log-sync` (the `interval_ms`
//! fsyncs) and `outpost-log-retention` (retention every `retention_check_ms`, and eviction
//! whenever an append leaves the log above the high-water mark). They stop when
//! the log is closed or its last handle is dropped.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod budget;
mod config;
mod evict;
mod format;
mod index;
mod retention;
mod segment;
mod topic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::{self, Counter, Gauge};
pub use evict::{
    EvictionPolicy, EvictionRank, EvictionReport, GapMarker, GAPS_TOPIC, REASON_DAMAGED,
    REASON_DISK_BUDGET, REASON_LOST,
};
use topic::TopicInner;

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic name breaks the naming rule.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    /// The topic does not exist (and was not created).
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic exists but auto-creation is off / creation refused by config.
    #[error("topic {0:?} may not be created: `log.auto_create_topics` is false and it is not configured")]
    CreationRefused(String),
    /// The disk budget is exhausted; nothing was written.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// A record or batch is larger than the configured maximum.
    #[error("record too large: {size} bytes, the limit is {limit} bytes (`log.max_record_bytes`)")]
    RecordTooLarge { size: usize, limit: usize },
    /// Data on disk failed its checksum or is malformed; never served as data. Reads answer
    /// [`LogError::Gap`] instead, which also names the next readable offset.
    #[error("corrupt data in topic {topic:?}, segment {segment}, at byte {position}: {detail}")]
    Corrupt {
        topic: String,
        segment: String,
        position: u64,
        detail: String,
    },
    /// A read met a range of the topic that cannot be read: `lost` (a sealed segment that ends
    /// early, a segment file that is missing) or `damaged` (a batch failing its checksum or
    /// format checks). Offsets `from_offset..next_offset` are not served; the next readable
    /// offset is `next_offset`. Returned only when the read has no records before the range
    /// (a read that has some returns them and stops at the range).
    #[error("topic {topic:?}: offsets {from_offset}..{next_offset} are {reason} and cannot be read ({detail}); the next readable offset is {next_offset}")]
    Gap {
        topic: String,
        /// First offset of the range that cannot be read.
        from_offset: u64,
        /// The next readable offset (the end of the range, exclusive).
        next_offset: u64,
        /// [`REASON_LOST`] or [`REASON_DAMAGED`].
        reason: &'static str,
        /// What was found, with the segment file and byte position.
        detail: String,
    },
    /// An fsync or write failed earlier: the topic refuses further writes rather than pretend.
    #[error("topic {0:?} is read-only after an I/O failure; restart to recover")]
    Poisoned(String),
    /// The log has been closed.
    #[error("the log is closed")]
    Closed,
    /// `append` was called with no records.
    #[error("an append needs at least one record")]
    EmptyAppend,
    /// The configuration given to [`Log::open`] failed [`LogConfig::validate`].
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// When an append is acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FsyncPolicy {
    /// `"always"` or `"never"`.
    Named(NamedFsync),
    /// `{ interval_ms = N }`: fsync at most every N ms; acks do not wait.
    Interval {
        /// Milliseconds between background fsyncs.
        interval_ms: u64,
    },
}

/// The named fsync policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedFsync {
    /// Acknowledge only after fsync (group commit).
    Always,
    /// Never fsync explicitly; the OS writes back when it likes.
    Never,
}

/// Per-topic settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Durability: `"always"`, `"never"` or `{ interval_ms = N }`.
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// Roll the active segment when it reaches this many bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Roll the active segment when its first record is this old (ms).
    #[serde(default = "default_segment_ms")]
    pub segment_ms: u64,
    /// Delete whole segments whose newest record is older than this (ms); 0 = keep forever.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: u64,
    /// Delete oldest whole segments while the topic is larger than this; 0 = no limit.
    #[serde(default)]
    pub retention_bytes: u64,
}

fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Named(NamedFsync::Always)
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_segment_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_retention_ms() -> u64 {
    7 * 24 * 3600 * 1000
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            fsync: default_fsync(),
            segment_bytes: default_segment_bytes(),
            segment_ms: default_segment_ms(),
            retention_ms: default_retention_ms(),
            retention_bytes: 0,
        }
    }
}

/// Settings of the whole log (the `[log]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Create a topic on its first write. When false only topics listed in `topics` exist.
    #[serde(default = "default_true")]
    pub auto_create_topics: bool,
    /// Global disk budget for all segment files, in bytes; 0 = no limit.
    #[serde(default)]
    pub max_bytes: u64,
    /// Refuse appends when the data dir's file system has less free space than this.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Largest single record (key + value + headers), in bytes.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// How often retention runs, in ms.
    #[serde(default = "default_retention_check_ms")]
    pub retention_check_ms: u64,
    /// With an eviction policy installed (the forwarding classes): eviction starts when the
    /// log passes this share of `max_bytes` (or free space falls below `min_free_bytes` * 100 /
    /// this), in percent, 1-100.
    #[serde(default = "default_eviction_high_water_percent")]
    pub eviction_high_water_percent: u8,
    /// Eviction frees until the log is back at this share of `max_bytes` (free space
    /// `min_free_bytes` * 100 / this), in percent, 1 up to the high-water mark.
    #[serde(default = "default_eviction_low_water_percent")]
    pub eviction_low_water_percent: u8,
    /// Settings for topics not matched in `topics`.
    #[serde(default)]
    pub default_topic: TopicConfig,
    /// Per-topic settings by exact name, or by prefix pattern ending in `*` (`"sensors.*"`).
    #[serde(default)]
    pub topics: std::collections::BTreeMap<String, TopicConfig>,
    /// Answer topics: what sinks send back to devices (`fraud.scores` → POS verdicts,
    /// `recommendations` → signage offers). Unless `topics` has an entry for one, it takes
    /// `default_topic` with `answer_fsync` as its fsync policy.
    #[serde(default = "default_answer_topics")]
    pub answer_topics: Vec<String>,
    /// The fsync policy of the answer topics. An interval lets a sink send an answer the
    /// moment the plugin appended it instead of after an fsync; nothing is lost by it, since a
    /// plugin runner fsyncs its `interval` outputs before it commits its input offsets.
    #[serde(default = "default_answer_fsync")]
    pub answer_fsync: FsyncPolicy,
    /// What the box's own consumers (plugin runners, the forwarder, MQTT sinks) do when a read
    /// meets a lost or damaged range ([`LogError::Gap`]): `"skip"` goes on at the next readable
    /// offset, `"stop"` halts that consumer with the gap in its status. Either way the range
    /// is recorded once in `outpost.gaps`.
    #[serde(default)]
    pub on_read_gap: ReadGapPolicy,
}

/// What a consumer does on a [`LogError::Gap`] (`log.on_read_gap`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadGapPolicy {
    /// Go on at the gap's `next_offset` (the range is in `outpost.gaps` and the status).
    #[default]
    Skip,
    /// Halt the consumer, its status showing the gap, until it is restarted.
    Stop,
}

fn default_answer_topics() -> Vec<String> {
    vec!["fraud.scores".into(), "recommendations".into()]
}
fn default_answer_fsync() -> FsyncPolicy {
    FsyncPolicy::Interval { interval_ms: 100 }
}

fn default_true() -> bool {
    true
}
fn default_min_free_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_record_bytes() -> usize {
    1024 * 1024
}
fn default_retention_check_ms() -> u64 {
    60_000
}
fn default_eviction_high_water_percent() -> u8 {
    90
}
fn default_eviction_low_water_percent() -> u8 {
    80
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            max_bytes: 0,
            min_free_bytes: default_min_free_bytes(),
            max_record_bytes: default_max_record_bytes(),
            retention_check_ms: default_retention_check_ms(),
            eviction_high_water_percent: default_eviction_high_water_percent(),
            eviction_low_water_percent: default_eviction_low_water_percent(),
            default_topic: TopicConfig::default(),
            topics: Default::default(),
            answer_topics: default_answer_topics(),
            answer_fsync: default_answer_fsync(),
            on_read_gap: ReadGapPolicy::default(),
        }
    }
}

/// A record to append. The timestamp defaults to now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<u64>,
}

impl NewRecord {
    /// The bytes this record counts against `log.max_record_bytes`: key, value, and every
    /// header's name and value (framing and the timestamp are free). The one home of that rule:
    /// the log refuses by it, and every producer (HTTP, MQTT, plugins) checks it before.
    pub fn payload_size(&self) -> usize {
        format::payload_size(self.key.as_deref(), &self.value, &self.headers)
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The bytes this record counted against `log.max_record_bytes` (and counts against fetch
    /// byte limits and the forwarder's budgets): see [`NewRecord::payload_size`].
    pub fn payload_size(&self) -> usize {
        format::payload_size(self.key.as_deref(), &self.value, &self.headers)
    }
}

/// A failed [`Topic::try_append`]: why, and the records it was given.
#[derive(Debug)]
pub struct AppendFailed {
    pub error: LogError,
    pub records: Vec<NewRecord>,
}

/// What an append returns once it is acknowledged under the topic's fsync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// Offset of the first appended record.
    pub first_offset: u64,
    /// Offset of the last appended record.
    pub last_offset: u64,
}

/// Result of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The records, in offset order, starting at the requested offset or at the log start if
    /// the requested offset was already deleted.
    pub records: Vec<Record>,
    /// The offset to fetch next.
    pub next_offset: u64,
    /// The first offset still stored (records below it were removed by retention).
    pub start_offset: u64,
}

/// A snapshot of one topic's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicStats {
    pub name: String,
    /// First offset still stored.
    pub first_offset: u64,
    /// Offset the next record will get (only visible, i.e. acknowledged, records count).
    pub next_offset: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Appended records per second, averaged over the last few seconds.
    pub records_per_sec: f64,
}

/// Asked by retention before it deletes a segment (e.g. by the state store and the forwarder).
pub trait RetentionGuard: Send + Sync + std::fmt::Debug {
    /// The lowest offset of `topic` that must not be deleted yet, if any. Segments whose last
    /// offset is below it may go. Eviction under the disk budget does not ask (see
    /// [`EvictionPolicy`]): it writes a gap marker instead.
    fn protected_from(&self, topic: &str) -> Option<u64> {
        let _ = topic;
        None
    }
    /// Called once before segments of `topic` up to (excluding) `end_offset` are deleted, by
    /// retention or by eviction, so consumers can make their offsets durable first. An error
    /// cancels the deletion.
    fn before_delete(&self, topic: &str, end_offset: u64) -> Result<(), String> {
        let _ = (topic, end_offset);
        Ok(())
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// The log: a set of topics under one directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

/// One topic. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Topic {
    inner: Arc<TopicInner>,
}

/// Where the log gets the time (ms since the epoch) it stamps on batches and judges roll and
/// retention by age with: the kernel's clock seam, re-exported for the log's users.
pub use crate::kernel::clock::{Clock, ManualClock, SystemClock};
pub(crate) use crate::kernel::lock::{lock, read_lock, write_lock};

pub(crate) fn io_error(context: String, source: std::io::Error) -> LogError {
    LogError::Io { context, source }
}

/// What every topic of one log shares.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
    budget: budget::Budget,
    guards: RwLock<Vec<Arc<dyn RetentionGuard>>>,
    /// Segment files of all topics.
    segments: AtomicU64,
    segments_gauge: Gauge,
    truncated: Counter,
    retention_deleted: Counter,
    fsync_nanos: Mutex<u64>,
    fsync_seconds: Gauge,
    /// The eviction policy, if one is set (see `evict.rs`).
    eviction: RwLock<evict::Policy>,
    /// A policy is set (read on every append without a lock).
    has_policy: AtomicBool,
    /// One eviction pass at a time.
    evicting: Mutex<()>,
    /// When the last eviction pass could not free what was needed (until one does).
    futile_since: Mutex<Option<Instant>>,
    /// That was logged already.
    futile_warned: AtomicBool,
    /// The retention thread was woken for eviction and has not run it yet.
    kick_pending: AtomicBool,
    /// The log these topics belong to (set right after it is made), for eviction from an
    /// append.
    log: OnceLock<Weak<LogInner>>,
    /// Wakes the background threads.
    stop: Arc<Stop>,
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn guards(&self) -> Vec<Arc<dyn RetentionGuard>> {
        read_lock(&self.guards).clone()
    }

    fn add_fsync_time(&self, d: Duration) {
        let mut total = lock(&self.fsync_nanos);
        *total = total.saturating_add(d.as_nanos() as u64);
        self.fsync_seconds.set(*total as f64 / 1e9);
    }
}

/// Wakes the background threads when the log closes or goes away, and the retention thread
/// when eviction is due.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    kicked: AtomicBool,
    cv: Condvar,
}

impl Stop {
    /// Wakes the retention thread for an eviction pass.
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let _guard = lock(&self.stopped);
        self.cv.notify_all();
    }
    /// Sleeps up to `timeout` or until kicked; true if the log stopped.
    fn wait_or_kick(&self, timeout: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |stopped| {
                !*stopped && !self.kicked.load(Ordering::Acquire)
            })
            .unwrap_or_else(|e| e.into_inner());
        self.kicked.store(false, Ordering::Release);
        *guard
    }
    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.cv.notify_all();
    }
    fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }
    /// Sleeps up to `timeout`; true if the log stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

#[derive(Debug)]
struct LogInner {
    shared: Arc<Shared>,
    topics: RwLock<BTreeMap<String, Arc<TopicInner>>>,
    stop: Arc<Stop>,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

impl LogInner {
    fn topic_list(&self) -> Vec<Arc<TopicInner>> {
        read_lock(&self.topics).values().cloned().collect()
    }

    fn open_topic(&self, name: &str) -> Result<Arc<TopicInner>, LogError> {
        let mut topics = write_lock(&self.topics);
        if let Some(t) = topics.get(name) {
            return Ok(Arc::clone(t));
        }
        let config = self.shared.config.topic_config(name);
        let t = Arc::new(TopicInner::open(Arc::clone(&self.shared), name, config)?);
        topics.insert(name.to_string(), Arc::clone(&t));
        Ok(t)
    }
}

/// Interval fsyncs of `interval_ms` topics.
fn sync_loop(log: Weak<LogInner>, stop: Arc<Stop>) {
    loop {
        let mut sleep = Duration::from_secs(1);
        {
            let Some(inner) = log.upgrade() else { return };
            if inner.shared.is_closed() {
                return;
            }
            for t in inner.topic_list() {
                let Some(mut due) = t.interval_sync_due() else {
                    continue;
                };
                if due.is_zero() {
                    if let Err(e) = t.sync_all() {
                        tracing::error!(topic = %t.name, error = %e, "A background fsync failed.");
                    }
                    due = t.interval_sync_due().unwrap_or(sleep);
                }
                sleep = sleep.min(due);
            }
        }
        if stop.wait(sleep.max(Duration::from_millis(1))) {
            return;
        }
    }
}

/// Periodic retention, and eviction whenever an append found the log above the high-water
/// mark.
fn retention_loop(log: Weak<LogInner>, stop: Arc<Stop>, every: Duration) {
    let mut last_round = Instant::now();
    loop {
        if stop.wait_or_kick(every.saturating_sub(last_round.elapsed())) {
            return;
        }
        let Some(inner) = log.upgrade() else { return };
        if last_round.elapsed() >= every {
            last_round = Instant::now();
            for t in inner.topic_list() {
                // The log may have been closed or dropped while this pass was under way.
                if inner.shared.is_closed() || stop.is_stopped() {
                    return;
                }
                if let Err(e) = t.enforce_retention() {
                    tracing::warn!(topic = %t.name, error = %e, "Retention failed; it is tried again next round.");
                }
            }
        }
        inner.shared.kick_pending.store(false, Ordering::Release);
        if inner.shared.is_closed() || stop.is_stopped() {
            return;
        }
        if let Err(e) = inner.evict(0, false) {
            tracing::warn!(error = %e, "Eviction failed; it is tried again next round.");
        }
    }
}

impl Log {
    /// Opens (or creates) the log under `dir`, recovering every topic's tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        Log::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// [`Log::open`] with a clock of the caller's choosing (tests).
    pub fn open_with_clock(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Log, LogError> {
        config.validate().map_err(LogError::InvalidConfig)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(format!("creating log directory {}", dir.display()), e))?;
        let reg = metrics::global();
        let stop = Arc::new(Stop::default());
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            budget: budget::Budget::new(
                dir.to_path_buf(),
                config.max_bytes,
                config.min_free_bytes,
                reg.counter(
                    "outpost_log_storage_full_total",
                    "Appends refused because the disk budget was exhausted.",
                    &[],
                ),
            )
            .with_water_marks(
                config.eviction_high_water_percent,
                config.eviction_low_water_percent,
            ),
            clock,
            closed: AtomicBool::new(false),
            guards: RwLock::new(Vec::new()),
            segments: AtomicU64::new(0),
            segments_gauge: reg.gauge("outpost_log_segments", "Segment files of all topics.", &[]),
            truncated: reg.counter(
                "outpost_log_recovery_truncated_bytes_total",
                "Bytes of torn or corrupt tails cut off by recovery.",
                &[],
            ),
            retention_deleted: reg.counter(
                "outpost_log_retention_deleted_bytes_total",
                "Bytes of segments deleted by retention.",
                &[],
            ),
            fsync_nanos: Mutex::new(0),
            fsync_seconds: reg.gauge(
                "outpost_log_fsync_seconds_total",
                "Time spent in fsyncs of log files, in seconds.",
                &[],
            ),
            config,
            eviction: RwLock::new(None),
            has_policy: AtomicBool::new(false),
            evicting: Mutex::new(()),
            futile_since: Mutex::new(None),
            futile_warned: AtomicBool::new(false),
            kick_pending: AtomicBool::new(false),
            log: OnceLock::new(),
            stop: Arc::clone(&stop),
        });
        let inner = Arc::new(LogInner {
            shared: Arc::clone(&shared),
            topics: RwLock::new(BTreeMap::new()),
            stop,
        });
        let _ = shared.log.set(Arc::downgrade(&inner));
        let entries = std::fs::read_dir(dir)
            .map_err(|e| io_error(format!("listing log directory {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| io_error(format!("listing log directory {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && config::topic_name_problem(&name).is_none() {
                match inner.open_topic(&name) {
                    // A topic directory without a segment yet, on a full file system.
                    Err(LogError::Io { context, source }) if topic::is_disk_full(&source) => {
                        tracing::warn!(topic = %name, error = %source, context = %context, "A topic without segments cannot get its first one: the file system is full. It is created on its first append with room.");
                    }
                    other => {
                        other?;
                    }
                }
            }
        }
        let configured: Vec<String> = shared
            .config
            .topics
            .keys()
            .filter(|k| !k.ends_with('*'))
            .cloned()
            .collect();
        for name in configured {
            match inner.open_topic(&name) {
                // A full file system: the topic is created on its first append with room.
                Err(LogError::Io { context, source }) if topic::is_disk_full(&source) => {
                    tracing::warn!(topic = %name, error = %source, context = %context, "A configured topic cannot be created: the file system is full. The log serves what it holds; appends are refused until space is freed.");
                }
                other => {
                    other?;
                }
            }
        }
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map(drop)
                .map_err(|e| io_error(format!("starting thread {name}"), e))
        };
        let (weak, stop) = (Arc::downgrade(&inner), Arc::clone(&inner.stop));
        spawn("outpost-log-sync", Box::new(move || sync_loop(weak, stop)))?;
        let (weak, stop) = (Arc::downgrade(&inner), Arc::clone(&inner.stop));
        let every = Duration::from_millis(shared.config.retention_check_ms.max(1));
        spawn(
            "outpost-log-retention",
            Box::new(move || retention_loop(weak, stop, every)),
        )?;
        Ok(Log { inner })
    }

    /// The topic if it exists.
    pub fn topic(&self, name: &str) -> Result<Topic, LogError> {
        validate_topic_name(name)?;
        read_lock(&self.inner.topics)
            .get(name)
            .map(|t| Topic {
                inner: Arc::clone(t),
            })
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    /// The topic, created if it does not exist and creation is allowed.
    pub fn topic_or_create(&self, name: &str) -> Result<Topic, LogError> {
        validate_topic_name(name)?;
        if let Some(t) = read_lock(&self.inner.topics).get(name) {
            return Ok(Topic {
                inner: Arc::clone(t),
            });
        }
        let config = &self.inner.shared.config;
        if !config.auto_create_topics && config.configured(name).is_none() {
            return Err(LogError::CreationRefused(name.to_string()));
        }
        if self.inner.shared.is_closed() {
            return Err(LogError::Closed);
        }
        match self.inner.open_topic(name) {
            Ok(inner) => Ok(Topic { inner }),
            Err(LogError::Io { context, source }) if topic::is_disk_full(&source) => {
                self.inner.shared.budget.count_full();
                Err(LogError::StorageFull(format!(
                    "topic {name:?} cannot be created: {context}: {source}; it is created once space is freed"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The largest record (by [`NewRecord::payload_size`]) an append accepts
    /// (`log.max_record_bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.inner.shared.config.max_record_bytes
    }

    /// What consumers do when a read meets a lost or damaged range (`log.on_read_gap`).
    pub fn on_read_gap(&self) -> ReadGapPolicy {
        self.inner.shared.config.on_read_gap
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Topic> {
        self.inner
            .topic_list()
            .into_iter()
            .map(|inner| Topic { inner })
            .collect()
    }

    /// Adds a guard that retention consults before deleting segments.
    pub fn add_retention_guard(&self, guard: Arc<dyn RetentionGuard>) {
        write_lock(&self.inner.shared.guards).push(guard);
    }

    /// Sets the policy that ranks topics for eviction under the disk budget (replacing any
    /// earlier one). Without one, nothing is evicted and a full budget only refuses appends.
    pub fn set_eviction_policy(&self, policy: Arc<dyn EvictionPolicy>) {
        *write_lock(&self.inner.shared.eviction) = Some(policy);
        self.inner.shared.has_policy.store(true, Ordering::Release);
        self.inner.shared.kick_eviction_if_pressed();
    }

    /// Runs one eviction pass now if the log is above the high-water mark (see `evict.rs`).
    pub fn enforce_eviction(&self) -> Result<EvictionReport, LogError> {
        self.inner.evict(0, false)
    }

    /// Runs retention now over every topic. Every topic is tried; the first error is returned.
    pub fn enforce_retention(&self) -> Result<RetentionReport, LogError> {
        let mut report = RetentionReport::default();
        let mut first_error = None;
        for t in self.inner.topic_list() {
            match t.enforce_retention() {
                Ok(r) => {
                    report.segments_deleted += r.segments_deleted;
                    report.bytes_deleted += r.bytes_deleted;
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, error = %e, "Retention failed for a topic.");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Fsyncs everything and refuses further appends. Every topic is tried; the first error
    /// is returned.
    pub fn close(&self) -> Result<(), LogError> {
        self.inner.shared.closed.store(true, Ordering::Release);
        self.inner.stop.stop();
        let mut first_error = None;
        for t in self.inner.topic_list() {
            if let Err(e) = t.close() {
                tracing::error!(topic = %t.name, error = %e, "Closing a topic failed.");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Bytes of all segment files of all topics (what `max_bytes` limits).
    pub fn total_bytes(&self) -> u64 {
        self.inner.shared.budget.total()
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The settings this topic runs with.
    pub fn config(&self) -> &TopicConfig {
        &self.inner.config
    }
    /// Appends records; returns once they are acknowledged under the topic's fsync policy
    /// (`always`: after the fsync that covers them). Blocking: call from a blocking context.
    /// All records go into one batch with one write.
    pub fn append(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        self.inner.append(records)
    }
    /// [`Topic::append`] that hands the records back when it fails (a full disk, a closed
    /// log…), so the caller can retry later without keeping a copy of them.
    pub fn try_append(&self, records: Vec<NewRecord>) -> Result<AppendAck, AppendFailed> {
        self.inner.try_append_with(records, true)
    }
    /// [`Topic::append`] from async code (runs on the blocking pool).
    pub async fn append_async(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.append(records))
            .await
            .map_err(|e| {
                io_error(
                    "the append task failed".into(),
                    std::io::Error::other(e.to_string()),
                )
            })?
    }
    /// Reads up to `max_records` records and about `max_bytes` bytes (at least one record if
    /// any) from `offset`. Only acknowledged records are returned. Bytes count keys, values
    /// and header names and values. An `offset` below the log start reads from the start
    /// ([`Fetch::start_offset`]); one at or past the end returns no records and `next_offset`
    /// = `offset` clamped to the end.
    pub fn read(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Fetch, LogError> {
        self.inner.read(offset, max_records, max_bytes)
    }
    /// Waits until a record at `offset` or later is readable, or `timeout` passes. Returns the
    /// next offset at that moment. Never busy-polls.
    pub async fn wait_for(&self, offset: u64, timeout: Duration) -> u64 {
        let mut rx = self.inner.visible_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|end| *end > offset)).await;
        self.inner.next_offset()
    }
    /// First offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.inner.start_offset()
    }
    /// Offset the next appended record will get (visible records end here).
    pub fn next_offset(&self) -> u64 {
        self.inner.next_offset()
    }
    /// The topic's numbers.
    pub fn stats(&self) -> TopicStats {
        self.inner.stats()
    }
    /// The topic's durability policy: on `always` an append returns (and becomes readable)
    /// after its fsync; on the others readers see records before their fsync.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.inner.config.fsync
    }
    /// Test hook: the written and the durable end.
    #[cfg(test)]
    pub(crate) fn ends_for_test(&self) -> (u64, u64) {
        self.inner.ends_for_test()
    }
    /// Fsyncs everything appended so far, whatever the topic's policy.
    pub fn sync(&self) -> Result<(), LogError> {
        self.inner.sync_all()
    }
}

/// Checks a topic name: `[a-z0-9._-]`, 1 to 128 characters, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    match config::topic_name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests;
