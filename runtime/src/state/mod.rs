//! The state store on sled: consumer offsets, per-plugin key-value state, cursors and
//! metadata (edge id, format version).
//!
//! SKELETON: the public API below is the contract other modules code against; what is durable
//! when is documented here once implemented.

use std::path::Path;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store transaction aborted: {0}")]
    Aborted(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt state entry {key:?}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// One change to a plugin's key-value state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// Offsets and state changes that commit together in one atomic step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// The consumer whose offsets move (e.g. `plugin:fraud-score`).
    pub consumer: String,
    /// (topic, next offset to read).
    pub offsets: Vec<(String, u64)>,
    /// The state namespace the ops apply to (e.g. the plugin name); ignored when `ops` is empty.
    pub namespace: String,
    pub ops: Vec<StateOp>,
}

/// Where a consumer resumes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub offset: u64,
    /// True when the stored offset was below the log start and the consumer skips ahead.
    pub skipped_from: Option<u64>,
}

/// The state store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    _db: sled::Db,
}

impl StateStore {
    /// Opens (or creates) the store under `dir` (its own sub-directory of the data dir).
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        unimplemented!("{dir:?}")
    }
    /// This box's edge id: generated once (or set from `OUTPOST_EDGE_ID`) and fsynced; it never
    /// changes afterwards unless an explicit id is given.
    pub fn edge_id(&self, explicit: Option<&str>) -> Result<String, StateError> {
        unimplemented!("{explicit:?}")
    }
    /// The stored offset of `consumer` on `topic`.
    pub fn offset(&self, consumer: &str, topic: &str) -> Result<Option<u64>, StateError> {
        unimplemented!("{consumer} {topic}")
    }
    /// Where `consumer` resumes on `topic` given the log's current start offset; logs a warning
    /// when it has to skip ahead.
    pub fn resume(&self, consumer: &str, topic: &str, log_start: u64) -> Result<Resume, StateError> {
        unimplemented!("{consumer} {topic} {log_start}")
    }
    /// Applies offsets and state ops in one atomic step.
    pub fn commit(&self, commit: &Commit) -> Result<(), StateError> {
        unimplemented!("{commit:?}")
    }
    /// Reads one key of a namespace's state.
    pub fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        unimplemented!("{namespace} {key:?}")
    }
    /// Deletes all state and offsets of a namespace/consumer (plugin upgrade with `--reset`).
    pub fn reset(&self, namespace: &str, consumer: &str) -> Result<(), StateError> {
        unimplemented!("{namespace} {consumer}")
    }
    /// Makes everything written so far durable: sled flush, then fsync of its files.
    pub fn sync(&self) -> Result<(), StateError> {
        unimplemented!()
    }
}
