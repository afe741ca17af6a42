//! The durable local log: named topics, each a totally ordered sequence of records with dense
//! `u64` offsets, stored as append-only segment files of CRC32C-checked batches.
//!
//! SKELETON: the public API below is the contract other modules code against; the on-disk
//! format, group commit, recovery and retention are documented here once implemented.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Data on disk failed its checksum or is malformed; never served as data.
    #[error("corrupt data in topic {topic:?}, segment {segment}, at byte {position}: {detail}")]
    Corrupt {
        topic: String,
        segment: String,
        position: u64,
        detail: String,
    },
    /// An fsync or write failed earlier: the topic refuses further writes rather than pretend.
    #[error("topic {0:?} is read-only after an I/O failure; restart to recover")]
    Poisoned(String),
    /// The log has been closed.
    #[error("the log is closed")]
    Closed,
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
    /// Settings for topics not matched in `topics`.
    #[serde(default)]
    pub default_topic: TopicConfig,
    /// Per-topic settings by exact name, or by prefix pattern ending in `*` (`"sensors.*"`).
    #[serde(default)]
    pub topics: std::collections::BTreeMap<String, TopicConfig>,
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

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            max_bytes: 0,
            min_free_bytes: default_min_free_bytes(),
            max_record_bytes: default_max_record_bytes(),
            retention_check_ms: default_retention_check_ms(),
            default_topic: TopicConfig::default(),
            topics: Default::default(),
        }
    }
}

impl LogConfig {
    /// Checks the settings; the error names the offending key (`log.topics."x".segment_bytes`).
    pub fn validate(&self) -> Result<(), String> {
        unimplemented!()
    }
    /// The settings that apply to `topic` (exact name, then longest matching prefix pattern).
    pub fn topic_config(&self, topic: &str) -> TopicConfig {
        unimplemented!("{topic}")
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

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
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
    /// offset is below it may go.
    fn protected_from(&self, topic: &str) -> Option<u64> {
        let _ = topic;
        None
    }
    /// Called once before segments of `topic` up to (excluding) `end_offset` are deleted, so
    /// consumers can make their offsets durable first. An error cancels the deletion.
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
    _inner: Arc<()>,
}

/// One topic. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Topic {
    _inner: Arc<()>,
}

impl Log {
    /// Opens (or creates) the log under `dir`, recovering every topic's tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        unimplemented!("{dir:?} {config:?}")
    }
    /// The topic if it exists.
    pub fn topic(&self, name: &str) -> Result<Topic, LogError> {
        unimplemented!("{name}")
    }
    /// The topic, created if it does not exist and creation is allowed.
    pub fn topic_or_create(&self, name: &str) -> Result<Topic, LogError> {
        unimplemented!("{name}")
    }
    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Topic> {
        unimplemented!()
    }
    /// Adds a guard that retention consults before deleting segments.
    pub fn add_retention_guard(&self, guard: Arc<dyn RetentionGuard>) {
        unimplemented!("{guard:?}")
    }
    /// Runs retention now over every topic.
    pub fn enforce_retention(&self) -> Result<RetentionReport, LogError> {
        unimplemented!()
    }
    /// Fsyncs everything and refuses further appends.
    pub fn close(&self) -> Result<(), LogError> {
        unimplemented!()
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        unimplemented!()
    }
    /// Appends records; returns once they are acknowledged under the topic's fsync policy
    /// (`always`: after the fsync that covers them). Blocking: call from a blocking context.
    pub fn append(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        unimplemented!("{records:?}")
    }
    /// [`Topic::append`] from async code (runs on the blocking pool).
    pub async fn append_async(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        unimplemented!("{records:?}")
    }
    /// Reads up to `max_records` records and about `max_bytes` bytes (at least one record if
    /// any) from `offset`. Only acknowledged records are returned.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Fetch, LogError> {
        unimplemented!("{offset} {max_records} {max_bytes}")
    }
    /// Waits until a record at `offset` or later is readable, or `timeout` passes. Returns the
    /// next offset at that moment. Never busy-polls.
    pub async fn wait_for(&self, offset: u64, timeout: Duration) -> u64 {
        unimplemented!("{offset} {timeout:?}")
    }
    /// First offset still stored.
    pub fn start_offset(&self) -> u64 {
        unimplemented!()
    }
    /// Offset the next appended record will get (visible records end here).
    pub fn next_offset(&self) -> u64 {
        unimplemented!()
    }
    /// The topic's numbers.
    pub fn stats(&self) -> TopicStats {
        unimplemented!()
    }
}

/// Checks a topic name: `[a-z0-9._-]`, 1 to 128 characters.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    unimplemented!("{name}")
}
